// The casync index container (.caibx for blobs, .caidx for archives), SPEC §1.
// Read strictly (as casync does) and written byte-identically to casync.
// Chunks are held in two flat arrays (end offsets, packed IDs) so that an index
// of millions of chunks costs 40 bytes per chunk, not an object per chunk.
import { open } from 'node:fs/promises';
import { IndexFormatError } from '../errors.js';
import { digestFromFlags, flagsForDigest, toHex, type DigestName } from './digest.js';
import { DEFAULT_MAX_TARGET_SIZE } from '../util/defaults.js';

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
  /** The first n chunks as an index of their own (views, no copy). */
  head(n: number): ChunkIndex {
    const k = Math.max(0, Math.min(n, this.count));
    return new ChunkIndex(this.featureFlags, this.params, this.ends.subarray(0, k), this.ids.subarray(0, k * ID_SIZE));
  }
  /** True when `head`'s chunks are this index's first chunks (same ends, same IDs). */
  startsWith(head: ChunkIndex): boolean {
    const n = head.count;
    if (n > this.count || head.digest !== this.digest) return false;
    for (let i = 0; i < n; i++) if (this.ends[i] !== head.ends[i]) return false;
    return Buffer.compare(asBytes(this.ids.subarray(0, n * ID_SIZE)), asBytes(head.ids)) === 0;
  }
  /** True when this is an archive (.caidx) index rather than a blob index. */
  get isArchive(): boolean {
    return (this.featureFlags & ARCHIVE_FLAGS) !== 0n;
  }
}

const asBytes = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

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
  /** Largest blob an index may describe (default DEFAULT_MAX_TARGET_SIZE): an index beyond it is refused as it is read. */
  maxTargetSize?: number;
}

/** Default largest target: 64 GiB, systemd-pull's own limit for an image. */
export { DEFAULT_MAX_TARGET_SIZE };
/** Most chunks an index may have at all: 64 M (2.5 GiB of table), whatever the target size allows. */
const MAX_INDEX_CHUNKS = 64 * 1024 * 1024;
/** Table entries allocated up front for an announced length; beyond, the table grows as items arrive. */
const PREALLOCATE_CHUNKS = 4 * 1024 * 1024;

/**
 * Reads an index as its bytes arrive (a download, or a whole buffer), strict
 * like casync: fixed header values, strictly increasing offsets, chunk sizes
 * within max, known flags only, a tail that agrees with the table, nothing
 * after it. Memory follows what the header allows, not what the source sends:
 * no item may end past maxTargetSize, the table can have no more than
 * maxTargetSize / chunk_size_min + 1 items (smaller chunks are cut by no casync
 * chunker), and an item or byte beyond what is allowed fails at once, so an
 * endless or oversized body is refused after a bounded read.
 */
export class IndexParser {
  private readonly src?: string;
  private readonly maxTarget: number;
  private readonly header = Buffer.alloc(HEADER_SIZE);
  private readonly record = Buffer.alloc(ITEM_SIZE);
  private recordFill = 0;
  /** Bytes consumed so far. */
  private offset = 0;
  private flags = 0n;
  private params: ChunkParams = { min: 0, avg: 0, max: 0 };
  private maxChunks = 0;
  private ends = new Float64Array(0);
  private ids = new Uint8Array(0);
  private n = 0;
  private prev = 0;
  private tailSeen = false;
  private expected?: number;

  constructor(
    private readonly opts: ParseOptions = {},
    expectedBytes?: number,
  ) {
    this.src = opts.source;
    this.maxTarget = opts.maxTargetSize ?? DEFAULT_MAX_TARGET_SIZE;
    // A known length (Content-Length) sizes the table once, checked against the header's limits when it is read.
    if (expectedBytes !== undefined && expectedBytes >= EMPTY_INDEX_SIZE) this.expected = expectedBytes;
  }

  private fail(field: string, offset: number, detail: string): never {
    throw new IndexFormatError(field, offset, detail, this.src);
  }

  /** Most bytes a valid index can have, once the header is read (undefined before). */
  get maxBytes(): number | undefined {
    return this.offset >= HEADER_SIZE ? indexFileSize(this.maxChunks) : undefined;
  }

  /** Target bytes the chunks read so far cover (the end of the last one). */
  get parsedBytes(): number {
    return this.prev;
  }

  /**
   * The chunks read so far as an index (views, no copy): the start of the table while the rest is still on its
   * way. Undefined before the header is read. Not a whole index: its size is where the chunks read so far end.
   */
  prefix(): ChunkIndex | undefined {
    if (this.offset < HEADER_SIZE) return undefined;
    const n = this.n;
    return new ChunkIndex(this.flags, this.params, this.ends.subarray(0, n), this.ids.subarray(0, n * ID_SIZE));
  }

  push(bytes: Uint8Array): void {
    const chunk = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let at = 0;
    if (this.offset < HEADER_SIZE) {
      const take = Math.min(HEADER_SIZE - this.offset, chunk.length);
      this.header.set(chunk.subarray(0, take), this.offset);
      this.offset += take;
      at = take;
      if (this.offset < HEADER_SIZE) return;
      this.readHeader();
    }
    while (at < chunk.length) {
      if (this.tailSeen) this.fail('trailing data', this.offset, `${chunk.length - at} bytes after the tail`);
      if (this.recordFill === 0 && chunk.length - at >= ITEM_SIZE) {
        this.readRecord(chunk, at);
        at += ITEM_SIZE;
        this.offset += ITEM_SIZE;
        continue;
      }
      const take = Math.min(ITEM_SIZE - this.recordFill, chunk.length - at);
      this.record.set(chunk.subarray(at, at + take), this.recordFill);
      this.recordFill += take;
      at += take;
      if (this.recordFill < ITEM_SIZE) return;
      this.readRecord(this.record, 0);
      this.recordFill = 0;
      this.offset += ITEM_SIZE;
    }
  }

  finish(): ChunkIndex {
    const length = this.offset + this.recordFill;
    if (length < EMPTY_INDEX_SIZE)
      this.fail('file size', length, `file is ${length} bytes, an index is at least ${EMPTY_INDEX_SIZE}`);
    if (!this.tailSeen) {
      const off = this.offset;
      this.fail(
        this.recordFill === 0 ? 'table' : 'table item',
        off,
        `truncated: table ends without a tail (${length - HEADER_SIZE} bytes after the header)`,
      );
    }
    // A table sized from the announced length is full: the index takes its arrays as they are. A copy would double
    // them while it is made, and leave the views prefix() handed out (an arriving index's head, kept for the whole
    // update) holding the parser's arrays beside the index's: 2.7 MiB each for a 4 GiB image.
    const n = this.n;
    if (n === this.ends.length) return new ChunkIndex(this.flags, this.params, this.ends, this.ids);
    return new ChunkIndex(this.flags, this.params, this.ends.slice(0, n), this.ids.slice(0, n * ID_SIZE));
  }

  private readHeader(): void {
    const h = this.header;
    const u64 = (off: number): bigint => h.readBigUInt64LE(off);
    if (u64(0) !== 48n) this.fail('INDEX.size', 0, `expected 48, got ${u64(0)}`);
    if (u64(8) !== CA_FORMAT_INDEX)
      this.fail('INDEX.type', 8, `bad magic 0x${u64(8).toString(16)} (not a casync index)`);
    const flags = u64(16);
    if ((flags & ~KNOWN_FLAGS) !== 0n)
      this.fail('feature_flags', 16, `unknown feature bits 0x${(flags & ~KNOWN_FLAGS).toString(16)}`);
    if (this.opts.allowArchive === false && (flags & ARCHIVE_FLAGS) !== 0n)
      this.fail('feature_flags', 16, 'this is an archive index (.caidx), not a blob index (.caibx)');
    const names = ['chunk_size_min', 'chunk_size_avg', 'chunk_size_max'] as const;
    const vals: number[] = [];
    for (let k = 0; k < 3; k++) {
      const v = u64(24 + 8 * k);
      if (v < 1n || v > BigInt(CHUNK_SIZE_LIMIT_MAX))
        this.fail(names[k], 24 + 8 * k, `${v} is outside 1..${CHUNK_SIZE_LIMIT_MAX}`);
      vals.push(Number(v));
    }
    const [min, avg, max] = vals;
    if (min > avg) this.fail('chunk_size_avg', 32, `min ${min} > avg ${avg}`);
    if (avg > max) this.fail('chunk_size_max', 40, `avg ${avg} > max ${max}`);
    if (u64(48) !== U64_MAX) this.fail('TABLE.size', 48, `expected 0xffffffffffffffff, got 0x${u64(48).toString(16)}`);
    if (u64(56) !== CA_FORMAT_TABLE) this.fail('TABLE.type', 56, `bad magic 0x${u64(56).toString(16)}`);
    this.flags = flags;
    this.params = { min, avg, max };
    this.maxChunks = Math.min(MAX_INDEX_CHUNKS, Math.floor(this.maxTarget / min) + 1);
    const limit = indexFileSize(this.maxChunks);
    if (this.expected !== undefined) {
      if (this.expected > limit)
        this.fail(
          'file size',
          0,
          `${this.expected} bytes announced, more than the ${limit} bytes an index of at most ${this.maxTarget} bytes in chunks of at least ${min} can have`,
        );
      this.grow(Math.min(PREALLOCATE_CHUNKS, Math.ceil(Math.max(0, this.expected - EMPTY_INDEX_SIZE) / ITEM_SIZE)));
    }
  }

  private grow(want: number): void {
    const cap = Math.min(this.maxChunks, Math.max(want, 1024));
    if (cap <= this.ends.length) return;
    const ends = new Float64Array(cap);
    ends.set(this.ends.subarray(0, this.n));
    const ids = new Uint8Array(cap * ID_SIZE);
    ids.set(this.ids.subarray(0, this.n * ID_SIZE));
    this.ends = ends;
    this.ids = ids;
  }

  /** One 40-byte record at `buf[at]`: a chunk item, or the tail (first u64 zero: chunk ends are at least 1). */
  private readRecord(buf: Buffer, at: number): void {
    const lo = buf.readUInt32LE(at);
    const hi = buf.readUInt32LE(at + 4);
    const off = this.offset;
    if (lo === 0 && hi === 0) return this.readTail(buf, at, off);
    const i = this.n;
    if (hi >= 0x200000) this.fail(`item[${i}].offset`, off, `offset ${buf.readBigUInt64LE(at)} is too large`);
    const end = hi * 0x100000000 + lo;
    if (end <= this.prev)
      this.fail(`item[${i}].offset`, off, `offsets must strictly increase (${end} after ${this.prev})`);
    if (end - this.prev > this.params.max)
      this.fail(
        `item[${i}].offset`,
        off,
        `chunk of ${end - this.prev} bytes exceeds chunk_size_max ${this.params.max}`,
      );
    if (end > this.maxTarget)
      this.fail(
        `item[${i}].offset`,
        off,
        `the index describes more than ${this.maxTarget} bytes, the largest target allowed`,
      );
    if (i >= this.maxChunks)
      this.fail(
        'table',
        off,
        `more than ${this.maxChunks} chunks (${this.maxTarget} bytes in chunks of at least ${this.params.min})`,
      );
    if (i === this.ends.length) this.grow(this.ends.length * 2);
    this.ends[i] = end;
    this.ids.set(buf.subarray(at + 8, at + ITEM_SIZE), i * ID_SIZE);
    this.prev = end;
    this.n++;
  }

  private readTail(buf: Buffer, at: number, off: number): void {
    const u64 = (k: number): bigint => buf.readBigUInt64LE(at + k);
    if (u64(8) !== 0n) this.fail('tail.zero_fill2', off + 8, `expected 0, got ${u64(8)}`);
    if (u64(16) !== 48n) this.fail('tail.index_offset', off + 16, `expected 48, got ${u64(16)}`);
    const tableSize = BigInt(16 + ITEM_SIZE * this.n + TAIL_SIZE);
    if (u64(24) !== tableSize)
      this.fail('tail.table_size', off + 24, `expected ${tableSize} for ${this.n} chunks, got ${u64(24)}`);
    if (u64(32) !== CA_FORMAT_TABLE_TAIL_MARKER)
      this.fail('tail.marker', off + 32, `bad marker 0x${u64(32).toString(16)}`);
    this.tailSeen = true;
  }
}

/** Parses a complete index (see IndexParser for the rules). */
export function parseIndex(buf: Uint8Array, opts: ParseOptions = {}): ChunkIndex {
  if (buf.length > MAX_INDEX_BYTES) {
    throw new IndexFormatError(
      'file size',
      0,
      `file is ${buf.length} bytes, more than the ${MAX_INDEX_BYTES}-byte limit`,
      opts.source,
    );
  }
  const parser = new IndexParser(opts, buf.length);
  if (buf.length >= EMPTY_INDEX_SIZE) parser.push(buf);
  return parser.finish();
}

/** Reads and parses an index file, refusing oversized files before reading them. */
export async function readIndexFile(path: string, opts: ParseOptions = {}): Promise<ChunkIndex> {
  const fh = await open(path, 'r');
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new IndexFormatError('file', 0, 'not a regular file', path);
    if (st.size > MAX_INDEX_BYTES)
      throw new IndexFormatError('file size', 0, `${st.size} bytes exceeds the ${MAX_INDEX_BYTES}-byte limit`, path);
    const buf = await fh.readFile();
    return parseIndex(buf, { source: path, ...opts });
  } finally {
    await fh.close();
  }
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

/** Total bytes of an index of n chunks (for download-size accounting). */
export function indexFileSize(n: number): number {
  return EMPTY_INDEX_SIZE + n * ITEM_SIZE;
}
