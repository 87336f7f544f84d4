// The casync index container (.caibx for blobs, .caidx for archives), SPEC §1.
// Read strictly (as casync does) and written byte-identically to casync.
// Chunks are held in two flat arrays (end offsets, packed IDs) so that an index
// of millions of chunks costs 40 bytes per chunk, not an object per chunk.
import { open } from 'node:fs/promises';
import { IndexFormatError } from '../errors.js';
import { digestFromFlags, flagsForDigest, toHex, type DigestName } from './digest.js';

export const CA_FORMAT_INDEX = 0x96824d9c7b129ff9n;
export const CA_FORMAT_TABLE = 0xe75b9e112f17417dn;
export const CA_FORMAT_TABLE_TAIL_MARKER = 0x4b4f050e5549ecd1n;
const U64_MAX = 0xffffffffffffffffn;

export const HEADER_SIZE = 64; // INDEX record (48) + TABLE header (16)
export const ITEM_SIZE = 40;
export const TAIL_SIZE = 40;
export const ID_SIZE = 32;
export const EMPTY_INDEX_SIZE = HEADER_SIZE + TAIL_SIZE; // 104
export const CHUNK_SIZE_LIMIT_MAX = 128 * 1024 * 1024;
/** Largest index deltad will read: 64 M chunks (2.5 GiB of table). Guards memory. */
export const MAX_INDEX_BYTES = EMPTY_INDEX_SIZE + ITEM_SIZE * 64 * 1024 * 1024;

/** True when `head` (at least the first 16 bytes of a file) starts like a casync index. */
export function startsLikeIndex(head: Uint8Array): boolean {
  if (head.length < 16) return false;
  const view = new DataView(head.buffer, head.byteOffset, 16);
  return view.getBigUint64(0, true) === 48n && view.getBigUint64(8, true) === CA_FORMAT_INDEX;
}

// Known feature bits: WITH_* (bits 0..32) and the four high bits (SPEC §1.3).
const KNOWN_FLAGS = 0x1ffffffffn | 0xf000000000000000n;
/** Feature bits that only a .caidx (archive) index sets. */
const ARCHIVE_FLAGS = 0x1ffffffffn;

export interface ChunkParams {
  min: number;
  avg: number;
  max: number;
}

/** An index: feature flags, chunker parameters, and the chunk table. */
export class ChunkIndex {
  readonly featureFlags: bigint;
  readonly params: ChunkParams;
  readonly digest: DigestName;
  /** ends[i] = exclusive end offset of chunk i in the blob. */
  readonly ends: Float64Array;
  /** ids[32*i .. 32*i+32) = chunk i's ID. */
  readonly ids: Uint8Array;

  constructor(featureFlags: bigint, params: ChunkParams, ends: Float64Array, ids: Uint8Array) {
    if (ids.length !== ends.length * ID_SIZE) throw new Error('ChunkIndex: ids/ends length mismatch');
    this.featureFlags = featureFlags;
    this.params = { min: params.min, avg: params.avg, max: params.max };
    this.digest = digestFromFlags(featureFlags);
    this.ends = ends;
    this.ids = ids;
  }

  get count(): number {
    return this.ends.length;
  }
  /** Size of the indexed blob in bytes. */
  get size(): number {
    return this.ends.length === 0 ? 0 : this.ends[this.ends.length - 1];
  }
  start(i: number): number {
    return i === 0 ? 0 : this.ends[i - 1];
  }
  end(i: number): number {
    return this.ends[i];
  }
  chunkSize(i: number): number {
    return this.ends[i] - (i === 0 ? 0 : this.ends[i - 1]);
  }
  id(i: number): Uint8Array {
    return this.ids.subarray(i * ID_SIZE, (i + 1) * ID_SIZE);
  }
  idHex(i: number): string {
    return toHex(this.id(i));
  }
  /** Index of the chunk containing byte `offset` (binary search). */
  chunkAt(offset: number): number {
    let lo = 0;
    let hi = this.ends.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid] <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
  /** True when this is an archive (.caidx) index rather than a blob index. */
  get isArchive(): boolean {
    return (this.featureFlags & ARCHIVE_FLAGS) !== 0n;
  }
}

/** Incrementally collects chunks (as a chunker emits them) into a ChunkIndex. */
export class ChunkIndexBuilder {
  private ends: Float64Array;
  private ids: Uint8Array;
  private n = 0;
  constructor(
    readonly featureFlags: bigint,
    readonly params: ChunkParams,
    expectedChunks = 1024,
  ) {
    const cap = Math.max(16, expectedChunks);
    this.ends = new Float64Array(cap);
    this.ids = new Uint8Array(cap * ID_SIZE);
  }
  static forDigest(digest: DigestName, params: ChunkParams, expectedChunks?: number): ChunkIndexBuilder {
    return new ChunkIndexBuilder(flagsForDigest(digest), params, expectedChunks);
  }
  get count(): number {
    return this.n;
  }
  add(end: number, id: Uint8Array): void {
    if (this.n === this.ends.length) {
      const ends = new Float64Array(this.ends.length * 2);
      ends.set(this.ends);
      const ids = new Uint8Array(ends.length * ID_SIZE);
      ids.set(this.ids);
      this.ends = ends;
      this.ids = ids;
    }
    this.ends[this.n] = end;
    this.ids.set(id, this.n * ID_SIZE);
    this.n++;
  }
  finish(): ChunkIndex {
    return new ChunkIndex(
      this.featureFlags,
      this.params,
      this.ends.slice(0, this.n),
      this.ids.slice(0, this.n * ID_SIZE),
    );
  }
}

export interface ParseOptions {
  /** Name used in error messages (file path or URL). */
  source?: string;
  /** Accept archive (.caidx) flags; default true. Callers that need a blob set false. */
  allowArchive?: boolean;
}

/**
 * Parses a complete index file. Strict like casync: fixed header values, a tail
 * that agrees with the table length, strictly increasing offsets, chunk sizes
 * within max, known flags only, nothing after the tail.
 */
export function parseIndex(buf: Uint8Array, opts: ParseOptions = {}): ChunkIndex {
  const src = opts.source;
  const fail = (field: string, offset: number, detail: string): never => {
    throw new IndexFormatError(field, offset, detail, src);
  };
  if (buf.length < EMPTY_INDEX_SIZE) fail('file size', buf.length, `file is ${buf.length} bytes, an index is at least ${EMPTY_INDEX_SIZE}`);
  if (buf.length > MAX_INDEX_BYTES) fail('file size', 0, `file is ${buf.length} bytes, more than the ${MAX_INDEX_BYTES}-byte limit`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const u64 = (off: number): bigint => dv.getBigUint64(off, true);

  if (u64(0) !== 48n) fail('INDEX.size', 0, `expected 48, got ${u64(0)}`);
  if (u64(8) !== CA_FORMAT_INDEX) fail('INDEX.type', 8, `bad magic 0x${u64(8).toString(16)} (not a casync index)`);
  const flags = u64(16);
  if ((flags & ~KNOWN_FLAGS) !== 0n) fail('feature_flags', 16, `unknown feature bits 0x${(flags & ~KNOWN_FLAGS).toString(16)}`);
  if (opts.allowArchive === false && (flags & ARCHIVE_FLAGS) !== 0n) fail('feature_flags', 16, 'this is an archive index (.caidx), not a blob index (.caibx)');
  const params = { min: 0, avg: 0, max: 0 };
  const names = ['chunk_size_min', 'chunk_size_avg', 'chunk_size_max'] as const;
  const vals: number[] = [];
  for (let k = 0; k < 3; k++) {
    const v = u64(24 + 8 * k);
    if (v < 1n || v > BigInt(CHUNK_SIZE_LIMIT_MAX)) fail(names[k], 24 + 8 * k, `${v} is outside 1..${CHUNK_SIZE_LIMIT_MAX}`);
    vals.push(Number(v));
  }
  [params.min, params.avg, params.max] = vals;
  if (params.min > params.avg) fail('chunk_size_avg', 32, `min ${params.min} > avg ${params.avg}`);
  if (params.avg > params.max) fail('chunk_size_max', 40, `avg ${params.avg} > max ${params.max}`);
  if (u64(48) !== U64_MAX) fail('TABLE.size', 48, `expected 0xffffffffffffffff, got 0x${u64(48).toString(16)}`);
  if (u64(56) !== CA_FORMAT_TABLE) fail('TABLE.type', 56, `bad magic 0x${u64(56).toString(16)}`);

  // Find the tail: the first record whose first u64 is 0 (chunk ends are >= 1).
  const body = buf.length - HEADER_SIZE;
  let n = 0;
  for (;; n++) {
    const off = HEADER_SIZE + n * ITEM_SIZE;
    if (off + TAIL_SIZE > buf.length) fail(off >= buf.length ? 'table' : 'table item', off, `truncated: table ends without a tail (${body} bytes after the header)`);
    if (u64(off) === 0n) break;
  }
  const tail = HEADER_SIZE + n * ITEM_SIZE;
  if (u64(tail + 8) !== 0n) fail('tail.zero_fill2', tail + 8, `expected 0, got ${u64(tail + 8)}`);
  if (u64(tail + 16) !== 48n) fail('tail.index_offset', tail + 16, `expected 48, got ${u64(tail + 16)}`);
  const tableSize = BigInt(16 + ITEM_SIZE * n + TAIL_SIZE);
  if (u64(tail + 24) !== tableSize) fail('tail.table_size', tail + 24, `expected ${tableSize} for ${n} chunks, got ${u64(tail + 24)}`);
  if (u64(tail + 32) !== CA_FORMAT_TABLE_TAIL_MARKER) fail('tail.marker', tail + 32, `bad marker 0x${u64(tail + 32).toString(16)}`);
  if (tail + TAIL_SIZE !== buf.length) fail('trailing data', tail + TAIL_SIZE, `${buf.length - tail - TAIL_SIZE} bytes after the tail`);

  const ends = new Float64Array(n);
  const ids = new Uint8Array(n * ID_SIZE);
  let prev = 0n;
  const max = BigInt(params.max);
  for (let i = 0; i < n; i++) {
    const off = HEADER_SIZE + i * ITEM_SIZE;
    const end = u64(off);
    if (end <= prev) fail(`item[${i}].offset`, off, `offsets must strictly increase (${end} after ${prev})`);
    if (end - prev > max) fail(`item[${i}].offset`, off, `chunk of ${end - prev} bytes exceeds chunk_size_max ${max}`);
    if (end > BigInt(Number.MAX_SAFE_INTEGER)) fail(`item[${i}].offset`, off, `offset ${end} is too large`);
    ends[i] = Number(end);
    ids.set(buf.subarray(off + 8, off + 8 + ID_SIZE), i * ID_SIZE);
    prev = end;
  }
  return new ChunkIndex(flags, params, ends, ids);
}

/** Serializes an index exactly as casync writes it. */
export function serializeIndex(idx: ChunkIndex): Buffer {
  const n = idx.count;
  const out = Buffer.alloc(EMPTY_INDEX_SIZE + n * ITEM_SIZE);
  out.writeBigUInt64LE(48n, 0);
  out.writeBigUInt64LE(CA_FORMAT_INDEX, 8);
  out.writeBigUInt64LE(idx.featureFlags, 16);
  out.writeBigUInt64LE(BigInt(idx.params.min), 24);
  out.writeBigUInt64LE(BigInt(idx.params.avg), 32);
  out.writeBigUInt64LE(BigInt(idx.params.max), 40);
  out.writeBigUInt64LE(U64_MAX, 48);
  out.writeBigUInt64LE(CA_FORMAT_TABLE, 56);
  for (let i = 0; i < n; i++) {
    const off = HEADER_SIZE + i * ITEM_SIZE;
    out.writeBigUInt64LE(BigInt(idx.ends[i]), off);
    out.set(idx.id(i), off + 8);
  }
  const tail = HEADER_SIZE + n * ITEM_SIZE;
  // zero fills already 0
  out.writeBigUInt64LE(48n, tail + 16);
  out.writeBigUInt64LE(BigInt(16 + ITEM_SIZE * n + TAIL_SIZE), tail + 24);
  out.writeBigUInt64LE(CA_FORMAT_TABLE_TAIL_MARKER, tail + 32);
  return out;
}

/** Reads and parses an index file, refusing oversized files before reading them. */
export async function readIndexFile(path: string, opts: ParseOptions = {}): Promise<ChunkIndex> {
  const fh = await open(path, 'r');
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new IndexFormatError('file', 0, 'not a regular file', path);
    if (st.size > MAX_INDEX_BYTES) throw new IndexFormatError('file size', 0, `${st.size} bytes exceeds the ${MAX_INDEX_BYTES}-byte limit`, path);
    const buf = await fh.readFile();
    return parseIndex(buf, { source: path, ...opts });
  } finally {
    await fh.close();
  }
}

/** Total bytes of an index of n chunks (for download-size accounting). */
export function indexFileSize(n: number): number {
  return EMPTY_INDEX_SIZE + n * ITEM_SIZE;
}
