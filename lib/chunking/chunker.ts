// The content-defined chunker (SPEC §3.4), streaming: bytes go in block by block,
// absolute chunk end offsets come out. casync's semantics by default; desync's
// variant (§3.5: first test at min+1, no discriminator clamp) as an option.
// The per-byte loop runs in a WASM kernel (lib/wasm/chunker.wat); a pure-JS kernel
// with the same contract is the reference. Both avoid `%`: V8 turns `h % d` on
// unsigned values into float math, ~6x slower (research/node-deps.md §2.3).
import { BUZHASH_TABLE, WINDOW_SIZE, rol32, windowHash } from './buzhash.js';
import { CHUNK_SIZE_LIMIT_MAX, type ChunkParams } from '../format/caibx.js';
import { UsageError } from '../errors.js';
import { parseSize } from '../util/size.js';
import { CHUNKER_WASM_BASE64 } from './chunker-wasm.js';

export type ChunkerVariant = 'casync' | 'desync';
export type ChunkerKernel = 'wasm' | 'js';

export interface ChunkerOptions {
  variant?: ChunkerVariant;
  kernel?: ChunkerKernel;
  /** Largest block scanned at once (bytes); also the size of each input area. Default 1 MiB. */
  blockSize?: number;
}

export const DEFAULT_CHUNK_PARAMS: ChunkParams = { min: 16384, avg: 65536, max: 262144 };
export const DEFAULT_BLOCK_SIZE = 1024 * 1024;

/** Throws a UsageError unless the parameters are usable by the variant. */
export function checkChunkParams(params: ChunkParams, variant: ChunkerVariant = 'casync'): void {
  const { min, avg, max } = params;
  for (const [name, v] of [
    ['min', min],
    ['avg', avg],
    ['max', max],
  ] as const) {
    if (!Number.isInteger(v) || v < 1 || v > CHUNK_SIZE_LIMIT_MAX) {
      throw new UsageError(`chunk size ${name} ${v} is not an integer in 1..${CHUNK_SIZE_LIMIT_MAX}`);
    }
  }
  if (min > avg || avg > max)
    throw new UsageError(`chunk sizes must satisfy min <= avg <= max (got ${min}:${avg}:${max})`);
  if (variant === 'desync' && min < WINDOW_SIZE)
    throw new UsageError(`the desync chunker needs min >= ${WINDOW_SIZE} (got ${min})`);
  // casync fails with EINVAL here: its first cut test (48) would be past max.
  if (max < WINDOW_SIZE && !(min === avg && avg === max)) {
    throw new UsageError(
      `chunk size max ${max} is below the ${WINDOW_SIZE}-byte window (only fixed-size min=avg=max allows that)`,
    );
  }
}

/** Numbers without a unit below this are refused: casync reads "16:64:256" as bytes, desync's -m as KiB. */
const UNITLESS_MIN = 1024;

/**
 * Parses casync's --chunk-size: "MIN:AVG:MAX" or "AVG" (then min = AVG/4, max = AVG*4,
 * clamped to 1..128 MiB). Suffixes K, M, G are powers of 1024; a plain number is bytes.
 * A plain number below 1 KiB is refused with both spellings, because desync's
 * `-m 16:64:256` means KiB and would silently give 94-byte chunks here. The result is checked.
 */
export function parseChunkSize(text: string, variant: ChunkerVariant = 'casync'): ChunkParams {
  const parts = text.split(':').map((p) => p.trim());
  const plain = (p: string): boolean => /^\d+$/.test(p);
  if (parts.some((p) => plain(p) && Number(p) < UNITLESS_MIN)) {
    const spell = (unit: string): string => parts.map((p) => (plain(p) ? p + unit : p)).join(':');
    throw new UsageError(
      `chunk size "${text}": a size below ${UNITLESS_MIN} needs a unit (desync's -m counts KiB, casync bytes): ` +
        `write ${spell('K')} for KiB, or ${spell('B')} for bytes`,
    );
  }
  const sizes = parts.map((part) => parseSize(part, `invalid chunk size in "${text}"`));
  let params: ChunkParams;
  if (sizes.length === 3) params = { min: sizes[0], avg: sizes[1], max: sizes[2] };
  else if (sizes.length === 1) {
    const avg = sizes[0];
    const clamp = (v: number): number => Math.min(Math.max(v, 1), CHUNK_SIZE_LIMIT_MAX);
    params = { min: clamp(Math.floor(avg / 4)), avg, max: clamp(avg * 4) };
  } else throw new UsageError(`invalid chunk size "${text}" (expected MIN:AVG:MAX or AVG)`);
  checkChunkParams(params, variant);
  return params;
}

/** The cut discriminator d (SPEC §3.2): a cut where h mod d == d-1. casync clamps it to [min, max]. */
export function discriminator(params: ChunkParams, variant: ChunkerVariant = 'casync'): number {
  const d = Math.trunc(params.avg / (-1.42888852e-7 * params.avg + 1.33237515));
  if (variant === 'desync') return d;
  return Math.min(Math.max(d, params.min), params.max);
}

/** Constants of the division-free test "h mod d == d-1" (see chunker.wat). */
export interface CutTest {
  inverse: number;
  shift: number;
  limit: number;
  /** Whether h = 0xffffffff is a cut (only when d divides 2^32). */
  allOnesCuts: boolean;
}

export function cutTest(d: number): CutTest {
  if (!Number.isInteger(d) || d < 1 || d > 0xffffffff) throw new RangeError(`discriminator ${d} out of range`);
  let shift = 0;
  let odd = d;
  while ((odd & 1) === 0 && shift < 31) {
    odd /= 2;
    shift++;
  }
  // Newton's iteration for the inverse of an odd number mod 2^32: each step doubles the correct bits.
  let inv = odd;
  for (let i = 0; i < 5; i++) inv = Math.imul(inv, 2 - Math.imul(odd, inv));
  return { inverse: inv >>> 0, shift, limit: Math.floor(0xffffffff / d), allOnesCuts: odd === 1 };
}

/**
 * A scanner over one memory area: `bytes` holds the data; scan(from, to) returns
 * the first q in [from, to] (indices into bytes, from >= 48) whose preceding
 * 48 bytes satisfy the cut test, or -1.
 */
interface ScanKernel {
  readonly bytes: Uint8Array;
  scan(from: number, to: number): number;
}

const TABLES_SIZE = 2048; // T and T16, u32 each, at the start of WASM memory

let wasmModule: WebAssembly.Module | undefined;

interface ChunkerWasmExports {
  memory: WebAssembly.Memory;
  configure(inverse: number, shift: number, limit: number, allOnesCuts: number, zeroHash: number): void;
  scan(from: number, to: number): number;
}

function wasmKernel(test: CutTest, dataSize: number): ScanKernel {
  wasmModule ??= new WebAssembly.Module(Buffer.from(CHUNKER_WASM_BASE64, 'base64'));
  const ex = new WebAssembly.Instance(wasmModule).exports as unknown as ChunkerWasmExports;
  const needed = Math.ceil((TABLES_SIZE + dataSize) / 65536) - ex.memory.buffer.byteLength / 65536;
  if (needed > 0) ex.memory.grow(needed);
  const tables = new Uint32Array(ex.memory.buffer, 0, 512);
  for (let b = 0; b < 256; b++) {
    tables[b] = BUZHASH_TABLE[b];
    tables[256 + b] = rol32(BUZHASH_TABLE[b], 16);
  }
  ex.configure(
    test.inverse | 0,
    test.shift,
    test.limit | 0,
    test.allOnesCuts ? 1 : 0,
    windowHash(new Uint8Array(WINDOW_SIZE)) | 0,
  );
  const scan = ex.scan;
  return {
    bytes: new Uint8Array(ex.memory.buffer, TABLES_SIZE, dataSize),
    scan: (from, to) => {
      const q = scan(from + TABLES_SIZE, to + TABLES_SIZE);
      return q < 0 ? -1 : q - TABLES_SIZE;
    },
  };
}

const T = Int32Array.from(BUZHASH_TABLE);
const T16 = Int32Array.from(BUZHASH_TABLE, (v) => rol32(v, 16));

/** The reference: rolls through every byte, no shortcuts. */
function jsKernel(test: CutTest, dataSize: number): ScanKernel {
  const bytes = new Uint8Array(dataSize);
  const inverse = test.inverse | 0;
  const shift = test.shift;
  const limit = test.limit;
  const allOnesCuts = test.allOnesCuts;
  return {
    bytes,
    scan(from, to) {
      let h = 0;
      for (let p = from - WINDOW_SIZE; p < from; p++) h = ((h << 1) | (h >>> 31)) ^ T[bytes[p]];
      for (let q = from; ; q++) {
        const m = Math.imul((h + 1) | 0, inverse);
        const r = shift === 0 ? m >>> 0 : ((m >>> shift) | (m << (32 - shift))) >>> 0;
        if (r <= limit && (h !== -1 || allOnesCuts)) return q;
        if (q >= to) return -1;
        h = ((h << 1) | (h >>> 31)) ^ T16[bytes[q - WINDOW_SIZE]] ^ T[bytes[q]];
      }
    },
  };
}

/**
 * Streaming chunker. Input arrives either by push(data) (copied) or, without a
 * copy, by writing into block(area) and calling scanBlock(area, n). There are two
 * input areas so a reader can fill one while the other is scanned. Every call
 * returns the absolute end offsets of the chunks completed so far; finish()
 * returns the last one. The result does not depend on how the input is split.
 */
export class Chunker {
  readonly params: ChunkParams;
  readonly variant: ChunkerVariant;
  readonly blockSize: number;
  private readonly kernel: ScanKernel;
  /** Length from a chunk's start to its first tested window end. */
  private readonly firstTest: number;
  /** The last 48 bytes of the stream so far (zeros at the start: never tested). */
  private readonly tail = new Uint8Array(WINDOW_SIZE);
  private streamPos = 0;
  private chunkStart = 0;
  private nextTest: number;

  constructor(params: ChunkParams, opts: ChunkerOptions = {}) {
    this.variant = opts.variant ?? 'casync';
    checkChunkParams(params, this.variant);
    this.params = { min: params.min, avg: params.avg, max: params.max };
    this.blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
    if (!Number.isInteger(this.blockSize) || this.blockSize < 1 || this.blockSize > 256 * 1024 * 1024) {
      throw new RangeError(`chunker block size ${this.blockSize} out of range`);
    }
    const test = cutTest(discriminator(params, this.variant));
    const dataSize = 2 * (WINDOW_SIZE + this.blockSize);
    this.kernel = (opts.kernel ?? 'wasm') === 'wasm' ? wasmKernel(test, dataSize) : jsKernel(test, dataSize);
    this.firstTest = this.variant === 'desync' ? params.min + 1 : Math.max(params.min, WINDOW_SIZE);
    this.nextTest = this.firstTest;
  }

  /** Starts a new stream (offset 0), keeping the kernel and its memory. */
  reset(): void {
    this.tail.fill(0);
    this.streamPos = 0;
    this.chunkStart = 0;
    this.nextTest = this.firstTest;
  }

  /** Absolute offset of the next byte to be scanned (= bytes scanned so far). */
  get position(): number {
    return this.streamPos;
  }

  /** Input area 0 or 1 (blockSize bytes) to write the next block into. */
  block(area: 0 | 1): Uint8Array {
    const start = this.areaStart(area);
    return this.kernel.bytes.subarray(start, start + this.blockSize);
  }

  /** Scans the first n bytes of block(area) as the next part of the stream. */
  scanBlock(area: 0 | 1, n: number): number[] {
    if (!Number.isInteger(n) || n < 0 || n > this.blockSize)
      throw new RangeError(`block length ${n} out of range 0..${this.blockSize}`);
    const cuts: number[] = [];
    if (n === 0) return cuts;
    const bytes = this.kernel.bytes;
    const start = this.areaStart(area);
    bytes.set(this.tail, start - WINDOW_SIZE);
    // index in bytes = absolute offset - delta
    const delta = this.streamPos - start;
    const blockEnd = this.streamPos + n;
    const max = this.params.max;
    for (;;) {
      const maxEnd = this.chunkStart + max;
      const to = Math.min(maxEnd, blockEnd);
      let cut = -1;
      if (this.nextTest <= to) {
        const q = this.kernel.scan(this.nextTest - delta, to - delta);
        if (q >= 0) cut = q + delta;
        else this.nextTest = to + 1;
      }
      if (cut < 0 && maxEnd <= blockEnd) cut = maxEnd;
      if (cut < 0) break;
      cuts.push(cut);
      this.chunkStart = cut;
      this.nextTest = cut + this.firstTest;
    }
    this.streamPos = blockEnd;
    const end = start + n;
    this.tail.set(bytes.subarray(end - WINDOW_SIZE, end));
    return cuts;
  }

  /** Scans a copy of data (any length). */
  push(data: Uint8Array): number[] {
    const cuts: number[] = [];
    for (let off = 0; off < data.length; off += this.blockSize) {
      const piece = data.subarray(off, off + this.blockSize);
      this.block(0).set(piece);
      for (const c of this.scanBlock(0, piece.length)) cuts.push(c);
    }
    return cuts;
  }

  /** End of input: the end of the last chunk, if any bytes are left over. */
  finish(): number[] {
    if (this.streamPos === this.chunkStart) return [];
    this.chunkStart = this.streamPos;
    return [this.streamPos];
  }

  private areaStart(area: 0 | 1): number {
    return WINDOW_SIZE + area * (WINDOW_SIZE + this.blockSize);
  }
}

/** All chunk end offsets of a complete buffer. */
export function chunkEnds(data: Uint8Array, params: ChunkParams, opts: ChunkerOptions = {}): number[] {
  const chunker = new Chunker(params, {
    ...opts,
    blockSize: opts.blockSize ?? Math.min(DEFAULT_BLOCK_SIZE, Math.max(1, data.length)),
  });
  const cuts = chunker.push(data);
  for (const c of chunker.finish()) cuts.push(c);
  return cuts;
}
