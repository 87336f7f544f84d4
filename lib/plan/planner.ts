// The plan: every target chunk mapped to where its bytes come from. For each
// position the longest run of consecutive matching chunks in any seed wins;
// what no seed has is an all-zero chunk (null seed), a repeat of an earlier
// target chunk (self seed), or remote. Adjacent chunks of one kind coalesce
// into segments, so adjacent remote chunks become one byte range.
import { ID_SIZE, type ChunkIndex } from '../format/caibx.js';
import { chunkId } from '../format/digest.js';
import { IdTable } from '../format/id-table.js';
import type { Seed } from '../seed/seed.js';

export type Segment =
  /** target chunks [first, first+count) = seed chunks [seedFirst, seedFirst+count) */
  | { kind: 'seed'; first: number; count: number; seed: number; seedFirst: number }
  | { kind: 'zero'; first: number; count: number }
  /** target chunks [first, first+count) repeat the earlier target chunks [source, source+count) */
  | { kind: 'self'; first: number; count: number; source: number }
  | { kind: 'remote'; first: number; count: number };

export interface PlanTotals {
  /** Target chunks and bytes in the planned range. */
  chunks: number;
  bytes: number;
  fromSeeds: number;
  fromSelf: number;
  fromZero: number;
  missingBytes: number;
  missingChunks: number;
  /** Remote segments: runs of adjacent missing chunks. */
  missingRuns: number;
}

export interface Plan {
  target: ChunkIndex;
  seeds: readonly Seed[];
  /** Planned target chunks: [firstChunk, endChunk). */
  firstChunk: number;
  endChunk: number;
  segments: Segment[];
  totals: PlanTotals;
}

export interface PlanOptions {
  /** Target chunk range to plan (default all). */
  firstChunk?: number;
  endChunk?: number;
  selfSeed?: boolean;
  nullSeed?: boolean;
  /** Chunks already in place (a resumed partial file, an earlier route): left out of the plan, never a repeat's source. */
  skip?: (i: number) => boolean;
}

/** Candidate positions kept per chunk ID in a seed (repeats beyond this add little). */
const MAX_CANDIDATES = 4;

function idsEqual(a: Buffer, ai: number, b: Buffer, bi: number): boolean {
  return a.compare(b, bi * ID_SIZE, bi * ID_SIZE + ID_SIZE, ai * ID_SIZE, ai * ID_SIZE + ID_SIZE) === 0;
}

const asBuffer = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

/**
 * Seed lookups already built, by seed index: an update plans several times against the same seeds (the first chunks
 * before the first byte, the whole target, each route's own plan), and a 4 GiB seed has 70 000 chunks.
 */
const lookups = new WeakMap<ChunkIndex, IdTable>();

/** Lookup of chunk ID → positions in one seed (at most MAX_CANDIDATES per ID); only read once built. */
function seedLookup(index: ChunkIndex): IdTable {
  let t = lookups.get(index);
  if (t) return t;
  t = new IdTable(index.ids, index.count);
  for (let i = 0; i < index.count; i++) t.add(i, MAX_CANDIDATES);
  lookups.set(index, t);
  return t;
}

/** Chunks up to this size are always checked; it is far above the chunker's 48-byte window. */
const SMALL_CHUNK = 4096;

/**
 * Chunk IDs of all-zero blocks, computed once per distinct size when first
 * asked. Only sizes an all-zero chunk can have are hashed: a content-defined
 * cut inside zeros sees a window of zeros, which the cut test either always or
 * never accepts, so such a chunk is min or max bytes long, or the last chunk,
 * or small (hashing every size would cost a second per update).
 */
export class ZeroIds {
  private readonly bySize = new Map<number, Buffer>();
  constructor(private readonly digest: ChunkIndex['digest']) {}
  matches(index: ChunkIndex, i: number): boolean {
    const size = index.chunkSize(i);
    const possible =
      size <= SMALL_CHUNK || size === index.params.min || size === index.params.max || i === index.count - 1;
    if (!possible) return false;
    let id = this.bySize.get(size);
    if (!id) {
      id = chunkId(this.digest, Buffer.alloc(size));
      this.bySize.set(size, id);
    }
    return id.equals(index.id(i));
  }
}

export function planChunks(target: ChunkIndex, seeds: readonly Seed[], opts: PlanOptions = {}): Plan {
  const first = opts.firstChunk ?? 0;
  const end = opts.endChunk ?? target.count;
  const tIds = asBuffer(target.ids);
  const lookups = seeds.map((s) => seedLookup(s.index));
  const seedIds = seeds.map((s) => asBuffer(s.index.ids));
  const zero = opts.nullSeed === false ? null : new ZeroIds(target.digest);
  // Target chunk ID → its first planned position (a later repeat copies it).
  const earlier = opts.selfSeed === false ? null : new IdTable(target.ids, end - first);
  const segments: Segment[] = [];
  const totals: PlanTotals = {
    chunks: 0,
    bytes: 0,
    fromSeeds: 0,
    fromSelf: 0,
    fromZero: 0,
    missingBytes: 0,
    missingChunks: 0,
    missingRuns: 0,
  };

  const push = (seg: Segment): void => {
    const prev = segments[segments.length - 1];
    if (prev && prev.kind === seg.kind && prev.first + prev.count === seg.first) {
      if (prev.kind === 'zero' || prev.kind === 'remote') return void (prev.count += seg.count);
      if (
        prev.kind === 'seed' &&
        seg.kind === 'seed' &&
        prev.seed === seg.seed &&
        prev.seedFirst + prev.count === seg.seedFirst
      )
        return void (prev.count += seg.count);
      if (prev.kind === 'self' && seg.kind === 'self' && prev.source + prev.count === seg.source)
        return void (prev.count += seg.count);
    }
    segments.push(seg);
  };
  const remember = (i: number): void => {
    earlier?.add(i, 1);
  };

  const skip = opts.skip;
  let i = first;
  while (i < end) {
    if (skip?.(i)) {
      i++;
      continue;
    }
    // Longest run of consecutive matches over all seeds and candidate positions.
    let best = 0;
    let bestSeed = -1;
    let bestPos = 0;
    for (let s = 0; s < seeds.length; s++) {
      const cands = lookups[s].find(target.ids, i);
      const sIdx = seeds[s].index;
      for (const p of cands) {
        let k = 0;
        while (
          i + k < end &&
          p + k < sIdx.count &&
          !(k > 0 && skip?.(i + k)) &&
          target.chunkSize(i + k) === sIdx.chunkSize(p + k) &&
          idsEqual(tIds, i + k, seedIds[s], p + k)
        )
          k++;
        if (k > best) {
          best = k;
          bestSeed = s;
          bestPos = p;
        }
      }
    }
    if (best > 0) {
      let bytes = 0;
      for (let k = 0; k < best; k++) {
        remember(i + k);
        bytes += target.chunkSize(i + k);
      }
      push({ kind: 'seed', first: i, count: best, seed: bestSeed, seedFirst: bestPos });
      totals.fromSeeds += bytes;
      i += best;
      continue;
    }
    const size = target.chunkSize(i);
    const found = earlier ? earlier.first(target.ids, i) : -1;
    const source = found >= 0 ? found : undefined;
    if (zero?.matches(target, i)) {
      push({ kind: 'zero', first: i, count: 1 });
      totals.fromZero += size;
    } else if (source !== undefined) {
      push({ kind: 'self', first: i, count: 1, source });
      totals.fromSelf += size;
    } else {
      push({ kind: 'remote', first: i, count: 1 });
      totals.missingBytes += size;
      totals.missingChunks++;
    }
    remember(i);
    i++;
  }
  totals.chunks = segments.reduce((n, s) => n + s.count, 0);
  totals.bytes = totals.fromSeeds + totals.fromSelf + totals.fromZero + totals.missingBytes;
  totals.missingRuns = segments.reduce((n, s) => n + (s.kind === 'remote' ? 1 : 0), 0);
  return { target, seeds, firstChunk: first, endChunk: end, segments, totals };
}
