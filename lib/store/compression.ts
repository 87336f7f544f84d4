// Chunk file (.cacnk) encoding, SPEC §4.2: one zstd frame per chunk, written by
// us at level 3. Reading detects the format from magic bytes like casync: zstd
// (with or without a content-size field), gzip for old casync stores; xz is
// refused with a clear error. Output is always bounded by the caller's limit,
// so a hostile chunk file cannot inflate without end.
import { constants, gunzipSync, zstdCompressSync, zstdDecompressSync } from 'node:zlib';
import { ChunkEncodingError } from '../errors.js';
import { ZstdInto } from '../util/zstd-into.js';

export const DEFAULT_ZSTD_LEVEL = 3;

/**
 * casync frames declare a 2 MiB window; windows above the output limit are still
 * legal zstd, so allow up to 16 MiB (desync/zstd -19 territory) or the limit if
 * larger, but never zstd's 128 MiB maximum for small chunks: it bounds memory.
 */
const MIN_WINDOW_LOG = 24;
const MAX_WINDOW_LOG = 27;
/** First output buffer when only an upper bound is known (a typical chunk is 64 KiB). */
const INITIAL_OUTPUT = 128 * 1024;

/** Compresses one chunk into a single zstd frame (with its content size, which casync ignores). */
export function compressChunk(data: Uint8Array, level = DEFAULT_ZSTD_LEVEL): Buffer {
  return zstdCompressSync(data, {
    params: { [constants.ZSTD_c_compressionLevel]: level },
    pledgedSrcSize: data.length,
  });
}

/** zstd's ZSTD_COMPRESSBOUND: the most bytes a frame of `size` input bytes can take. */
export function zstdCompressBound(size: number): number {
  const small = 128 * 1024;
  return size + Math.floor(size / 256) + (size < small ? Math.floor((small - size) / 2048) : 0);
}

/** Largest stored (compressed) size a chunk of up to `maxSize` bytes can have. */
export function maxEncodedSize(maxSize: number): number {
  // zstd's bound; gzip's worst case (stored blocks) is smaller than this plus its 18-byte framing.
  return zstdCompressBound(maxSize) + 64;
}

/**
 * Length of the zstd frame that starts `data` (RFC 8878 3.1.1: header, blocks up
 * to the last one, optional checksum), or -1 when `data` ends inside it. zlib
 * would decode a second frame after the first as more output; casync refuses
 * it, and so does deltad.
 */
export function zstdFrameLength(data: Uint8Array): number {
  if (data.length < 5) return -1;
  const fhd = data[4];
  if (fhd & 0x08) throw new ChunkEncodingError('corrupt zstd data: reserved bit set in the frame header');
  const singleSegment = (fhd >> 5) & 1;
  let pos = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][fhd & 3] + [singleSegment, 2, 4, 8][fhd >> 6];
  for (;;) {
    if (pos + 3 > data.length) return -1;
    const header = data[pos] | (data[pos + 1] << 8) | (data[pos + 2] << 16);
    const type = (header >> 1) & 3;
    if (type === 3) throw new ChunkEncodingError(`corrupt zstd data: reserved block type at byte ${pos}`);
    pos += 3 + (type === 1 ? 1 : header >>> 3); // an RLE block stores one byte
    if (header & 1) break; // last block
  }
  pos += fhd & 0x04 ? 4 : 0; // content checksum
  return pos > data.length ? -1 : pos;
}

export type ChunkEncoding = 'zstd' | 'gzip' | 'xz' | 'unknown';

export function detectEncoding(data: Uint8Array): ChunkEncoding {
  if (data.length >= 4 && data[0] === 0x28 && data[1] === 0xb5 && data[2] === 0x2f && data[3] === 0xfd) return 'zstd';
  if (data.length >= 2 && data[0] === 0x1f && data[1] === 0x8b) return 'gzip';
  if (
    data.length >= 6 &&
    data[0] === 0xfd &&
    data[1] === 0x37 &&
    data[2] === 0x7a &&
    data[3] === 0x58 &&
    data[4] === 0x5a &&
    data[5] === 0x00
  )
    return 'xz';
  return 'unknown';
}

/** Where decoded chunks go: a buffer of exactly `size` bytes (a pool's, reused once the chunk is written). */
export type TakeBuffer = (size: number) => Buffer;

/**
 * Decodes a stored chunk to its bytes. `limit` is the most bytes it may have
 * (the index's size for this chunk, or its max chunk size); more is an error,
 * detected without producing more than limit+1 bytes. Empty chunks are
 * rejected, as casync does. `exact`: the limit is the chunk's size (the
 * index's), so its buffer can be made before decoding. With `take`, the bytes
 * come in a buffer it gave.
 */
export function decompressChunk(data: Uint8Array, limit: number, take?: TakeBuffer, exact = false): Buffer {
  const encoding = detectEncoding(data);
  let out: Buffer;
  switch (encoding) {
    case 'zstd':
      out = decompressZstd(data, limit, take, exact);
      break;
    case 'gzip':
      out = intoTaken(decompressGzip(data, limit), take);
      break;
    case 'xz':
      throw new ChunkEncodingError(
        "xz-compressed chunk not supported (recreate the store with zstd, casync's default)",
      );
    default: {
      const head = Buffer.from(data.subarray(0, 6)).toString('hex') || 'empty file';
      throw new ChunkEncodingError(`not a compressed chunk: unknown format (first bytes ${head})`);
    }
  }
  if (out.length === 0) throw new ChunkEncodingError('chunk decompresses to 0 bytes (empty chunks are invalid)');
  return out;
}

function intoTaken(data: Buffer, take: TakeBuffer | undefined): Buffer {
  if (!take || data.length === 0) return data;
  const out = take(data.length);
  out.set(data);
  return out;
}

/**
 * The content size a zstd frame header declares (RFC 8878 3.1.1.1.4), or -1 when it has none. The header is
 * checked by zstdFrameLength first. Sizes beyond 2^53 come out as Infinity (more than any limit).
 */
export function zstdContentSize(data: Uint8Array): number {
  const fhd = data[4];
  const singleSegment = (fhd >> 5) & 1;
  const fieldSize = [singleSegment, 2, 4, 8][fhd >> 6];
  if (fieldSize === 0) return -1;
  const at = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][fhd & 3];
  const view = new DataView(data.buffer, data.byteOffset + at, fieldSize);
  if (fieldSize === 1) return view.getUint8(0);
  if (fieldSize === 2) return view.getUint16(0, true) + 256;
  if (fieldSize === 4) return view.getUint32(0, true);
  const high = view.getUint32(4, true);
  return high >= 1 << 21 ? Number.POSITIVE_INFINITY : high * 2 ** 32 + view.getUint32(0, true);
}

function decompressZstd(data: Uint8Array, limit: number, take: TakeBuffer | undefined, exact: boolean): Buffer {
  const frameLength = zstdFrameLength(data);
  if (frameLength < 0)
    throw new ChunkEncodingError(`truncated zstd frame (the ${data.length}-byte file ends inside the frame)`);
  if (frameLength < data.length) {
    throw new ChunkEncodingError(`${data.length - frameLength} bytes of trailing data after the zstd frame`);
  }
  const windowLog = Math.min(MAX_WINDOW_LOG, Math.max(MIN_WINDOW_LOG, Math.ceil(Math.log2(limit + 1))));
  const declared = zstdContentSize(data);
  if (declared > limit) throw new ChunkEncodingError(`chunk decompresses to more than ${limit} bytes`);
  // A frame decodes straight into its buffer when its size is known: declared in its header (deltad's, desync's)
  // or the index's (casync's frames declare none).
  const size = declared > 0 ? declared : exact ? limit : 0;
  const decoder = size > 0 ? zstdDecoder(windowLog) : undefined;
  if (decoder) return decoder.decode(data, take ? take(size) : Buffer.allocUnsafe(size));
  return intoTaken(zstdDecompressOnce(data, limit, windowLog), take);
}

/** zlib's one-shot decoder: a new zstd context per call and output buffers it allocates. */
function zstdDecompressOnce(data: Uint8Array, limit: number, windowLog: number): Buffer {
  try {
    return zstdDecompressSync(data, {
      // More than `limit` bytes fails as soon as it is produced.
      maxOutputLength: limit,
      // One output buffer when the limit is the chunk's size; otherwise start small and grow.
      chunkSize: Math.max(64, Math.min(limit + 1, Math.max(INITIAL_OUTPUT, data.length * 8))),
      params: { [constants.ZSTD_d_windowLogMax]: windowLog },
      rejectGarbageAfterEnd: true,
    });
  } catch (err) {
    const e = err as { code?: string; message: string };
    throw zstdError(e.code, e.message, limit, data.length);
  }
}

/** zstd's error in a message of ours (the codes node:zlib gives, as the one-shot decoder and the handle report them). */
function zstdError(code: string | undefined, message: string, limit: number, inputBytes: number): ChunkEncodingError {
  if (code === 'ERR_BUFFER_TOO_LARGE' || code === 'ZSTD_error_dstSize_tooSmall')
    return new ChunkEncodingError(`chunk decompresses to more than ${limit} bytes`);
  if (code === 'Z_BUF_ERROR')
    return new ChunkEncodingError(`truncated zstd frame (the ${inputBytes}-byte file ends inside the frame)`);
  return new ChunkEncodingError(`corrupt zstd data: ${message}`);
}

/**
 * One reused zstd context (`util/zstd-into.ts`): decodes a frame into a buffer of its size (declared, or the index's).
 * A frame with its size declared and all of it at hand is decoded in one pass into that buffer; one without
 * (casync's) goes through the context's window buffer (up to 2^windowLog bytes, kept for the next frame).
 */
class ZstdDecoder {
  private readonly zstd: ZstdInto;
  /** Catches output beyond the buffer (zstd itself refuses more than a declared size; this does not rely on it). */
  private readonly spare = Buffer.alloc(64);

  constructor(windowLog: number) {
    const zstd = ZstdInto.open({ chunkSize: 64, params: { [constants.ZSTD_d_windowLogMax]: windowLog } });
    if (!zstd) throw new ChunkEncodingError('this Node.js runtime has no usable zstd decoder handle');
    this.zstd = zstd;
  }

  decode(data: Uint8Array, out: Buffer): Buffer {
    const { zstd } = this;
    let failure = zstd.write(constants.ZSTD_e_end, data, 0, data.length, out, 0, out.length);
    let left = zstd.outLeft;
    const unread = zstd.inLeft;
    if (!failure && left === 0 && unread === 0) {
      failure = zstd.write(constants.ZSTD_e_end, data, data.length, 0, this.spare, 0, this.spare.length);
      left = zstd.outLeft - this.spare.length; // negative: output beyond the buffer
    }
    if (failure || left < 0 || unread !== 0) {
      dropDecoder(this);
      if (failure) throw zstdError(failure.code, failure.message, out.length, data.length);
      throw new ChunkEncodingError(`chunk decompresses to more than ${out.length} bytes`);
    }
    zstd.reset();
    // Shorter than expected: the caller's size check names it.
    return left === 0 ? out : out.subarray(0, out.length - left);
  }

  close(): void {
    this.zstd.close();
  }
}

/** Decoders by window limit (in practice one: chunks up to 16 MiB all get 2^24). Decoding is synchronous. */
const decoders = new Map<number, ZstdDecoder>();

/** Cleared when this runtime's ZstdDecompress lacks the handle: every frame then takes the one-shot path. */
let handleUsable = true;

function zstdDecoder(windowLog: number): ZstdDecoder | undefined {
  let d = decoders.get(windowLog);
  if (!d && handleUsable) {
    try {
      d = new ZstdDecoder(windowLog);
    } catch {
      handleUsable = false;
      return undefined;
    }
    decoders.set(windowLog, d);
  }
  return d;
}

/** A decoder that failed is not reused: a fresh context decodes the next frame. */
function dropDecoder(d: ZstdDecoder): void {
  for (const [k, v] of decoders) if (v === d) decoders.delete(k);
  d.close();
}

function decompressGzip(data: Uint8Array, limit: number): Buffer {
  try {
    return gunzipSync(data, { maxOutputLength: limit });
  } catch (err) {
    const e = err as { code?: string; message: string };
    if (e.code === 'ERR_BUFFER_TOO_LARGE')
      throw new ChunkEncodingError(`chunk decompresses to more than ${limit} bytes`);
    throw new ChunkEncodingError(`corrupt gzip data: ${e.message}`);
  }
}
