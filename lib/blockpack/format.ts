// The block pack formats (docs/BLOCKPACK.md): the block index (.bpidx) that
// says, per aligned block of a release image, whether it is zero, which
// distinct block it is, its truncated hash and which pack frame holds it;
// and the pack header (.bpk). Everything read is bounds-checked: a malformed
// or lying file fails with the field and byte offset, never with a crash.
import { hash } from 'node:crypto';
import { constants, zstdCompressSync, zstdDecompressSync } from 'node:zlib';
import { IndexFormatError } from '../errors.js';
import { freeNow } from '../util/buffer-pool.js';

export const INDEX_MAGIC = Buffer.from('DBLKIDX\0', 'latin1');
export const PACK_MAGIC = Buffer.from('DBLKPCK\0', 'latin1');
export const FORMAT_VERSION = 1;
export const INDEX_HEADER_SIZE = 224;
export const PACK_HEADER_SIZE = 64;
/** Bytes of SHA-256(block) kept per distinct block; the whole image is checked against its full SHA-256. */
export const HASH_BYTES = 8;
export const MIN_BLOCK_SIZE = 512;
export const MAX_BLOCK_SIZE = 1024 * 1024;
/** Largest frame (in blocks) a reader accepts: bounds the memory one frame can demand. */
export const MAX_FRAME_BLOCKS = 256;
/** Most blocks an index may describe (256 GiB at 4 KiB blocks): bounds what a lying header can make a reader allocate. */
export const MAX_BLOCKS = 64 * 1024 * 1024;
/** Largest block index fetched (64 MiB: a ~30 TiB image at 4 KiB blocks). */
export const MAX_INDEX_BYTES = 64 * 1024 * 1024;
/** zstd frame magic; stored frames omit it (saves 4 bytes per frame) and readers put it back. */
export const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

/** Block kinds in `BlockIndex.distinctOf`. */
export const ZERO_BLOCK = -1;

/** What a block index records about a release: the image, its pack and dictionary, and every block. */
export interface BlockTable {
  blockSize: number;
  imageSize: number;
  /** SHA-256 of the whole image: the final check of every assembly. */
  imageSha256: Buffer;
  packSize: number;
  packSha256: Buffer;
  dictSize: number;
  dictSha256: Buffer;
  /** Per block: ZERO_BLOCK, or the number of its distinct block (numbered by first occurrence). */
  distinctOf: Int32Array;
  distinctCount: number;
  /** HASH_BYTES per distinct block: the first bytes of SHA-256 of its content. */
  hashes: Uint8Array;
}

/** Everything a client knows about a release's pack, from its block index. */
export interface BlockIndex extends BlockTable {
  blockCount: number;
  frameCount: number;
  /** Where each frame is in the pack and which distinct blocks it holds. */
  frames: FrameTable;
}

/** Frames per checkpoint of FrameTable (the offset of every this many-th frame is kept). */
const FRAMES_PER_CHECKPOINT = 64;

/**
 * The frame table of a block index, compact: it lives as long as the assembly. Per frame 2 bytes, its stored length
 * (frames longer than 64 KiB aside); the pack offset of every 64th frame; and the frames of more than one block
 * aside (most hold one). ~2.2 bytes per frame, not 8 as two 32-bit tables: 4.8 MiB less for a 4.9 GB image's
 * 890,000 frames. Offsets are summed from the last checkpoint (at most 63 lengths).
 */
export class FrameTable {
  constructor(
    readonly count: number,
    private readonly packSize: number,
    /** Stored length of each frame, or 0: in `longLengths` (a frame is never empty). */
    private readonly lengths: Uint16Array,
    /** Frames longer than 0xffff bytes, ascending, and their lengths. */
    private readonly longFrames: Uint32Array,
    private readonly longLengths: Float64Array,
    /** Offset of frame k * FRAMES_PER_CHECKPOINT. */
    private readonly checkpoints: Float64Array,
    /** Frames of more than one block, ascending. */
    private readonly multi: Uint32Array,
    /** extra[j]: blocks beyond one per frame in the multi-block frames before multi[j] (extra[multi.length]: all). */
    private readonly extra: Uint32Array,
  ) {}

  /** Stored bytes of frame f. */
  length(f: number): number {
    const n = this.lengths[f];
    return n !== 0 ? n : this.longLengths[lowerBound(this.longFrames, f)];
  }

  /** Offset of frame f in the pack (start(count) = the pack's size). */
  start(f: number): number {
    if (f >= this.count) return this.packSize;
    let k = f - (f % FRAMES_PER_CHECKPOINT);
    let off = this.checkpoints[k / FRAMES_PER_CHECKPOINT];
    for (; k < f; k++) off += this.length(k);
    return off;
  }

  /** First distinct block of frame f (first(count) = distinct_count). */
  first(f: number): number {
    return f + this.extra[lowerBound(this.multi, f)];
  }

  /** Distinct blocks in frame f. */
  blocks(f: number): number {
    return this.first(f + 1) - this.first(f);
  }

  /** The frame holding distinct block d. */
  of(d: number): number {
    const { multi, extra } = this;
    // The last multi-block frame starting at or before d.
    let lo = 0;
    let hi = multi.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (multi[mid] + extra[mid] <= d) lo = mid + 1;
      else hi = mid;
    }
    const j = lo - 1;
    if (j >= 0 && d < multi[j] + extra[j + 1] + 1) return multi[j];
    // Single-block frames from there on: frame f holds distinct block f + extra[j + 1].
    return d - extra[j + 1];
  }

  /** The frame holding pack byte `offset` (>= the first frame's start), or count past the last. */
  at(offset: number): number {
    if (offset >= this.packSize) return this.count;
    const cp = this.checkpoints;
    let lo = 0;
    let hi = cp.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (cp[mid] <= offset) lo = mid;
      else hi = mid - 1;
    }
    let f = lo * FRAMES_PER_CHECKPOINT;
    let end = cp[lo] + this.length(f);
    while (end <= offset) end += this.length(++f);
    return f;
  }
}

/** Number of elements of the ascending `a` that are below v. */
function lowerBound(a: Uint32Array, v: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export function sha256(data: Uint8Array): Buffer {
  return hash('sha256', data, 'buffer');
}

/** The truncated block hash stored in the index. */
export function blockHash(data: Uint8Array): Buffer {
  return sha256(data).subarray(0, HASH_BYTES);
}

/**
 * Whether `data` hashes to distinct block d's hash in the index. A check runs once per block (150,000 per 600 MB),
 * so the digest comes as a latin1 ('binary') string, compared in place: a Buffer and its views cost more than the hashing
 * of a 4 KiB block (bench/RESULTS.md, "Block path CPU (session 6)").
 */
export function blockHashMatches(index: Pick<BlockTable, 'hashes'>, d: number, data: Uint8Array): boolean {
  const digest = hash('sha256', data, 'binary');
  const at = d * HASH_BYTES;
  for (let k = 0; k < HASH_BYTES; k++) if (digest.charCodeAt(k) !== index.hashes[at + k]) return false;
  return true;
}

/** Length of block b of an image (only the last block may be short). */
export function blockLength(idx: Pick<BlockIndex, 'blockSize' | 'imageSize'>, b: number): number {
  return Math.min(idx.blockSize, idx.imageSize - b * idx.blockSize);
}

/** Frame holding distinct block d. */
export function frameOf(idx: Pick<BlockIndex, 'frames'>, d: number): number {
  return idx.frames.of(d);
}

// --- varints (LEB128, at most 7 bytes here: values < 2^49) -----------------

class ByteWriter {
  private buf = Buffer.alloc(1 << 16);
  length = 0;
  private ensure(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
  varint(v: number): void {
    this.ensure(8);
    while (v >= 0x80) {
      this.buf[this.length++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.length++] = v;
  }
  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  result(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

class ByteReader {
  pos = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly fail: (field: string, offset: number, detail: string) => never,
  ) {}
  /** A number of the field `${name}[${i}]${part}` (the name is only made for an error: one per block is garbage). */
  varint(name: string, i: number, part = ''): number {
    let v = 0;
    let mul = 1;
    for (let k = 0; k < 7; k++) {
      if (this.pos >= this.buf.length)
        this.fail(`${name}[${i}]${part}`, INDEX_HEADER_SIZE, `index body ends inside a number (body byte ${this.pos})`);
      const b = this.buf[this.pos++];
      v += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) return v;
      mul *= 0x80;
    }
    return this.fail(`${name}[${i}]${part}`, INDEX_HEADER_SIZE, `number too long at body byte ${this.pos}`);
  }
  bytes(n: number, field: string): Buffer {
    if (this.pos + n > this.buf.length)
      this.fail(
        field,
        INDEX_HEADER_SIZE,
        `index body ends early (needs ${n} bytes at body byte ${this.pos}, has ${this.buf.length - this.pos})`,
      );
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
}

// --- block index -------------------------------------------------------------

/** What the publisher writes: the block table plus each frame's block count and stored length. */
export interface IndexContent extends BlockTable {
  frameBlocks: number[];
  frameLengths: number[];
}

/**
 * Body encoding of block references: 0 = zero block, 1 = the next new distinct
 * block, k >= 2 = a repeat of distinct block (next - k + 1). Mostly 1s and 0s,
 * so the zstd-compressed body costs well under a byte per block.
 */
export function serializeBlockIndex(c: IndexContent): Buffer {
  const w = new ByteWriter();
  let next = 0;
  for (let b = 0; b < c.distinctOf.length; b++) {
    const d = c.distinctOf[b];
    if (d === ZERO_BLOCK) w.varint(0);
    else if (d === next) {
      w.varint(1);
      next++;
    } else w.varint(next - d + 1);
  }
  for (let f = 0; f < c.frameBlocks.length; f++) {
    w.varint(c.frameBlocks[f]);
    w.varint(c.frameLengths[f]);
  }
  w.bytes(c.hashes);
  const raw = w.result();
  const body = zstdCompressSync(raw, {
    params: { [constants.ZSTD_c_compressionLevel]: 19 },
    pledgedSrcSize: raw.length,
  });
  const h = Buffer.alloc(INDEX_HEADER_SIZE);
  INDEX_MAGIC.copy(h, 0);
  h.writeUInt32LE(FORMAT_VERSION, 8);
  h.writeUInt32LE(c.blockSize, 12);
  h.writeUInt32LE(HASH_BYTES, 16);
  h.writeUInt32LE(0, 20); // flags
  h.writeBigUInt64LE(BigInt(c.imageSize), 24);
  h.writeBigUInt64LE(BigInt(c.distinctOf.length), 32);
  h.writeBigUInt64LE(BigInt(c.distinctCount), 40);
  h.writeBigUInt64LE(BigInt(c.frameBlocks.length), 48);
  h.writeBigUInt64LE(BigInt(c.packSize), 56);
  h.writeBigUInt64LE(BigInt(c.dictSize), 64);
  h.writeBigUInt64LE(BigInt(body.length), 72);
  h.writeBigUInt64LE(BigInt(raw.length), 80);
  c.imageSha256.copy(h, 88);
  c.packSha256.copy(h, 120);
  c.dictSha256.copy(h, 152);
  sha256(body).copy(h, 184);
  return Buffer.concat([h, body]);
}

/**
 * Parses and cross-checks a block index; `source` names it in errors. `consume`: `buf` is the caller's no more and
 * is freed as soon as it is decompressed, before the tables are made (10 MB less at the peak for a 4.9 GB image).
 */
export function parseBlockIndex(buf: Buffer, source?: string, consume = false): BlockIndex {
  const fail = (field: string, offset: number, detail: string): never => {
    throw new IndexFormatError(field, offset, detail, source);
  };
  if (buf.length < INDEX_HEADER_SIZE)
    fail('file size', buf.length, `${buf.length} bytes, a block index is at least ${INDEX_HEADER_SIZE}`);
  if (!buf.subarray(0, 8).equals(INDEX_MAGIC)) fail('magic', 0, 'not a deltad block index');
  const version = buf.readUInt32LE(8);
  if (version !== FORMAT_VERSION)
    fail('version', 8, `version ${version} is not supported (expected ${FORMAT_VERSION})`);
  const blockSize = buf.readUInt32LE(12);
  if (blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE || (blockSize & (blockSize - 1)) !== 0)
    fail('block_size', 12, `${blockSize} is not a power of two in ${MIN_BLOCK_SIZE}..${MAX_BLOCK_SIZE}`);
  if (buf.readUInt32LE(16) !== HASH_BYTES) fail('hash_bytes', 16, `${buf.readUInt32LE(16)} (expected ${HASH_BYTES})`);
  if (buf.readUInt32LE(20) !== 0) fail('flags', 20, `unknown flags 0x${buf.readUInt32LE(20).toString(16)}`);
  const u64 = (off: number, field: string, max = Number.MAX_SAFE_INTEGER): number => {
    const v = buf.readBigUInt64LE(off);
    if (v > BigInt(max)) fail(field, off, `${v} exceeds ${max}`);
    return Number(v);
  };
  const imageSize = u64(24, 'image_size');
  const blockCount = u64(32, 'block_count');
  if (blockCount !== Math.ceil(imageSize / blockSize))
    fail('block_count', 32, `${blockCount} blocks cannot cover ${imageSize} bytes of ${blockSize}-byte blocks`);
  if (blockCount > MAX_BLOCKS) fail('block_count', 32, `${blockCount} blocks exceeds the limit of ${MAX_BLOCKS}`);
  const distinctCount = u64(40, 'distinct_count', blockCount);
  const frameCount = u64(48, 'frame_count', distinctCount);
  if ((distinctCount === 0) !== (frameCount === 0))
    fail('frame_count', 48, `${frameCount} frames for ${distinctCount} distinct blocks`);
  const packSize = u64(56, 'pack_size');
  const dictSize = u64(64, 'dict_size', 64 * 1024 * 1024);
  const bodyLength = u64(72, 'body_length');
  // Bounded by what the counts can need, so a lying header cannot make us allocate more.
  const rawLength = u64(80, 'body_raw_length', blockCount * 4 + frameCount * 7 + distinctCount * HASH_BYTES);
  if (INDEX_HEADER_SIZE + bodyLength !== buf.length)
    fail('body_length', 72, `header says ${bodyLength} body bytes, file has ${buf.length - INDEX_HEADER_SIZE}`);
  const body = buf.subarray(INDEX_HEADER_SIZE);
  if (!sha256(body).equals(buf.subarray(184, 216)))
    fail('body_sha256', 184, 'the index body does not match its SHA-256 (corrupt or truncated)');
  let raw = Buffer.alloc(0);
  try {
    const limit = Math.max(1, rawLength);
    raw = zstdDecompressSync(body, {
      maxOutputLength: limit,
      chunkSize: Math.max(64, limit),
      rejectGarbageAfterEnd: true,
    });
  } catch (err) {
    fail(
      'body',
      INDEX_HEADER_SIZE,
      `zstd: ${(err as Error).message} (or larger than the ${rawLength} bytes the header says)`,
    );
  }
  if (raw.length !== rawLength)
    fail('body_raw_length', 80, `body decompresses to ${raw.length} bytes, header says ${rawLength}`);
  const imageSha256 = Buffer.from(buf.subarray(88, 120));
  const packSha256 = Buffer.from(buf.subarray(120, 152));
  const dictSha256 = Buffer.from(buf.subarray(152, 184));
  if (consume) freeNow(buf);

  const r = new ByteReader(raw, fail);
  const distinctOf = new Int32Array(blockCount);
  let next = 0;
  for (let b = 0; b < blockCount; b++) {
    const k = r.varint('block', b);
    if (k === 0) distinctOf[b] = ZERO_BLOCK;
    else if (k === 1) {
      if (next >= distinctCount)
        fail(`block[${b}]`, INDEX_HEADER_SIZE, `more new blocks than distinct_count ${distinctCount}`);
      distinctOf[b] = next++;
    } else {
      if (k - 1 > next)
        fail(`block[${b}]`, INDEX_HEADER_SIZE, `repeats distinct block ${next - k + 1}, which does not exist`);
      distinctOf[b] = next - k + 1;
    }
  }
  if (next !== distinctCount) fail('distinct_count', 40, `header says ${distinctCount}, the blocks introduce ${next}`);
  // A short last block can only be its own distinct block: its hash covers fewer bytes.
  const lengths = new Uint16Array(frameCount);
  const checkpoints = new Float64Array(Math.ceil(frameCount / FRAMES_PER_CHECKPOINT) || 1);
  checkpoints[0] = PACK_HEADER_SIZE;
  const longFrames: number[] = [];
  const longLengths: number[] = [];
  const multi: number[] = [];
  const extra: number[] = [0];
  let d = 0;
  let off = PACK_HEADER_SIZE;
  for (let f = 0; f < frameCount; f++) {
    const n = r.varint('frame', f, '.blocks');
    const len = r.varint('frame', f, '.length');
    if (n < 1 || n > MAX_FRAME_BLOCKS || d + n > distinctCount)
      fail(`frame[${f}].blocks`, INDEX_HEADER_SIZE, `${n} blocks (at distinct block ${d} of ${distinctCount})`);
    if (len < 1 || len > n * blockSize + 1024)
      fail(`frame[${f}].length`, INDEX_HEADER_SIZE, `${len} bytes for ${n} blocks of ${blockSize}`);
    if (f % FRAMES_PER_CHECKPOINT === 0) checkpoints[f / FRAMES_PER_CHECKPOINT] = off;
    if (len <= 0xffff) lengths[f] = len;
    else {
      longFrames.push(f);
      longLengths.push(len);
    }
    if (n > 1) {
      multi.push(f);
      extra.push(extra[extra.length - 1] + n - 1);
    }
    d += n;
    off += len;
  }
  if (d !== distinctCount)
    fail('frame table', INDEX_HEADER_SIZE, `frames hold ${d} distinct blocks, header says ${distinctCount}`);
  if (off !== packSize)
    fail('pack_size', 56, `frames end at byte ${off} of the pack, header says the pack has ${packSize}`);
  const hashes = new Uint8Array(r.bytes(distinctCount * HASH_BYTES, 'hashes'));
  if (r.pos !== raw.length) fail('body', INDEX_HEADER_SIZE, `${raw.length - r.pos} bytes after the hashes`);
  // Parsed (the hashes copied): ~9 bytes per block freed now, not at the next full collection.
  freeNow(raw);
  return {
    blockSize,
    imageSize,
    blockCount,
    imageSha256,
    packSize,
    packSha256,
    dictSize,
    dictSha256,
    distinctOf,
    distinctCount,
    hashes,
    frameCount,
    frames: new FrameTable(
      frameCount,
      packSize,
      lengths,
      Uint32Array.from(longFrames),
      Float64Array.from(longLengths),
      checkpoints,
      Uint32Array.from(multi),
      Uint32Array.from(extra),
    ),
  };
}

// --- pack header ---------------------------------------------------------------

export interface PackHeader {
  blockSize: number;
  frameCount: number;
  imageSize: number;
  imageSha256: Buffer;
}

export function serializePackHeader(p: PackHeader): Buffer {
  const h = Buffer.alloc(PACK_HEADER_SIZE);
  PACK_MAGIC.copy(h, 0);
  h.writeUInt32LE(FORMAT_VERSION, 8);
  h.writeUInt32LE(p.blockSize, 12);
  h.writeBigUInt64LE(BigInt(p.frameCount), 16);
  h.writeBigUInt64LE(BigInt(p.imageSize), 24);
  p.imageSha256.copy(h, 32);
  return h;
}

/** Checks that a pack header belongs to the release the index describes (a stale or swapped pack fails here). */
export function checkPackHeader(
  h: Buffer,
  idx: Pick<BlockIndex, 'blockSize' | 'frameCount' | 'imageSize' | 'imageSha256'>,
  source: string,
): void {
  const fail = (field: string, offset: number, detail: string): never => {
    throw new IndexFormatError(field, offset, detail, source);
  };
  if (h.length !== PACK_HEADER_SIZE) fail('header', 0, `${h.length} bytes (expected ${PACK_HEADER_SIZE})`);
  if (!h.subarray(0, 8).equals(PACK_MAGIC)) fail('magic', 0, 'not a deltad block pack');
  if (h.readUInt32LE(8) !== FORMAT_VERSION) fail('version', 8, `version ${h.readUInt32LE(8)} is not supported`);
  if (h.readUInt32LE(12) !== idx.blockSize)
    fail('block_size', 12, `${h.readUInt32LE(12)}, the index says ${idx.blockSize}`);
  if (h.readBigUInt64LE(16) !== BigInt(idx.frameCount))
    fail('frame_count', 16, `${h.readBigUInt64LE(16)}, the index says ${idx.frameCount}`);
  if (h.readBigUInt64LE(24) !== BigInt(idx.imageSize))
    fail('image_size', 24, `${h.readBigUInt64LE(24)}, the index says ${idx.imageSize}`);
  if (!h.subarray(32, 64).equals(idx.imageSha256))
    fail('image_sha256', 32, 'the pack was made for another image than the index (stale or swapped pack)');
}
