// Chunk file (.cacnk) encoding, SPEC §4.2: one zstd frame per chunk, written by
// us at level 3. Reading detects the format from magic bytes like casync: zstd
// (with or without a content-size field), gzip for old casync stores; xz is
// refused with a clear error. Output is always bounded by the caller's limit,
// so a hostile chunk file cannot inflate without end.
import { gunzipSync } from 'node:zlib';
import zstd from 'zstd-napi/binding.js';
import { ChunkEncodingError } from '../errors.js';

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

let cctx: zstd.CCtx | undefined;
let scratch = Buffer.alloc(0);
let dctx: zstd.DCtx | undefined;
let dctxWindowLog = 0;

/** Compresses one chunk into a single zstd frame (with its content size, which casync ignores). */
export function compressChunk(data: Uint8Array, level = DEFAULT_ZSTD_LEVEL): Buffer {
  cctx ??= new zstd.CCtx();
  const bound = zstd.compressBound(data.length);
  // One reused scratch buffer per thread: compressBound-sized garbage per chunk inflates RSS.
  if (scratch.length < bound) scratch = Buffer.allocUnsafeSlow(bound);
  const n = cctx.compress(scratch, data, level);
  return Buffer.from(scratch.subarray(0, n));
}

/** Largest stored (compressed) size a chunk of up to `maxSize` bytes can have. */
export function maxEncodedSize(maxSize: number): number {
  // zstd's bound; gzip's worst case (stored blocks) is smaller than this plus its 18-byte framing.
  return zstd.compressBound(maxSize) + 64;
}

export type ChunkEncoding = 'zstd' | 'gzip' | 'xz' | 'unknown';

export function detectEncoding(data: Uint8Array): ChunkEncoding {
  if (data.length >= 4 && data[0] === 0x28 && data[1] === 0xb5 && data[2] === 0x2f && data[3] === 0xfd) return 'zstd';
  if (data.length >= 2 && data[0] === 0x1f && data[1] === 0x8b) return 'gzip';
  if (data.length >= 6 && data[0] === 0xfd && data[1] === 0x37 && data[2] === 0x7a && data[3] === 0x58 && data[4] === 0x5a && data[5] === 0x00) return 'xz';
  return 'unknown';
}

/**
 * Decodes a stored chunk to its bytes. `limit` is the most bytes it may have
 * (the index's size for this chunk, or its max chunk size); more is an error,
 * detected without producing more than limit+1 bytes. Empty chunks are
 * rejected, as casync does.
 */
export function decompressChunk(data: Uint8Array, limit: number): Buffer {
  const encoding = detectEncoding(data);
  let out: Buffer;
  switch (encoding) {
    case 'zstd':
      out = decompressZstd(data, limit);
      break;
    case 'gzip':
      out = decompressGzip(data, limit);
      break;
    case 'xz':
      throw new ChunkEncodingError('xz-compressed chunk not supported (recreate the store with zstd, casync\'s default)');
    default: {
      const head = Buffer.from(data.subarray(0, 6)).toString('hex') || 'empty file';
      throw new ChunkEncodingError(`not a compressed chunk: unknown format (first bytes ${head})`);
    }
  }
  if (out.length === 0) throw new ChunkEncodingError('chunk decompresses to 0 bytes (empty chunks are invalid)');
  return out;
}

function decoder(limit: number): zstd.DCtx {
  const windowLog = Math.min(MAX_WINDOW_LOG, Math.max(MIN_WINDOW_LOG, Math.ceil(Math.log2(limit + 1))));
  dctx ??= new zstd.DCtx();
  // Drop any half-decoded frame a previous failure left behind.
  dctx.reset(zstd.ResetDirective.sessionOnly);
  if (windowLog !== dctxWindowLog) {
    dctx.setParameter(zstd.DParameter.windowLogMax, windowLog);
    dctxWindowLog = windowLog;
  }
  return dctx;
}

function decompressZstd(data: Uint8Array, limit: number): Buffer {
  const d = decoder(limit);
  // One byte of headroom tells "exactly limit" from "more than limit". Start
  // small when the limit is only an upper bound and grow by doubling.
  const cap = limit + 1;
  let out = Buffer.allocUnsafe(Math.min(cap, Math.max(INITIAL_OUTPUT, data.length * 8)));
  let produced = 0;
  let consumed = 0;
  for (;;) {
    if (produced === out.length) {
      if (out.length === cap) throw new ChunkEncodingError(`chunk decompresses to more than ${limit} bytes`);
      const bigger = Buffer.allocUnsafe(Math.min(cap, out.length * 2));
      out.copy(bigger, 0, 0, produced);
      out = bigger;
    }
    let step: [number, number, number];
    try {
      step = d.decompressStream(out.subarray(produced), data.subarray(consumed));
    } catch (err) {
      throw new ChunkEncodingError(`corrupt zstd data: ${(err as Error).message}`);
    }
    const [remaining, wrote, read] = step;
    produced += wrote;
    consumed += read;
    if (remaining === 0) break; // frame complete and flushed
    if (wrote === 0 && read === 0 && produced < out.length) {
      throw new ChunkEncodingError(`truncated zstd frame (the ${data.length}-byte file ends inside the frame)`);
    }
  }
  if (produced > limit) throw new ChunkEncodingError(`chunk decompresses to more than ${limit} bytes`);
  if (consumed !== data.length) {
    throw new ChunkEncodingError(`${data.length - consumed} bytes of trailing data after the zstd frame`);
  }
  return produced === out.length ? out : out.subarray(0, produced);
}

function decompressGzip(data: Uint8Array, limit: number): Buffer {
  try {
    return gunzipSync(data, { maxOutputLength: limit });
  } catch (err) {
    const e = err as { code?: string; message: string };
    if (e.code === 'ERR_BUFFER_TOO_LARGE') throw new ChunkEncodingError(`chunk decompresses to more than ${limit} bytes`);
    throw new ChunkEncodingError(`corrupt gzip data: ${e.message}`);
  }
}
