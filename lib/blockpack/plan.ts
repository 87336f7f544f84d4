// The block-path planner: every distinct block of the target comes from a seed
// block with the same hash, or from its pack frame. Needed frames become byte
// ranges of the pack: adjacent frames coalesce, nearby ones merge across small
// gaps, and ranges are grouped into multi-range requests (or, when the server
// cannot do multi-range, into single ranges whose gaps are merged as far as a
// cost model of bytes and requests says it pays).
import type { ChunkIndex } from '../format/caibx.js';
import type { RangeRequest } from '../fetch/range-fetcher.js';
import { bodyBytes, defaultCostModel, type CostModel } from '../plan/cost.js';
import { HASH_BYTES, ZERO_BLOCK, blockLength, frameOf, type BlockIndex } from './format.js';
import type { SeedBlocks } from './seed-blocks.js';

export interface BlockPlanTotals {
  blocks: number;
  zeroBlocks: number;
  zeroBytes: number;
  /** Target bytes from seed blocks. */
  fromSeeds: number;
  /** Target bytes from pack frames. */
  fromPack: number;
  /** Frames to fetch and their stored bytes. */
  frames: number;
  frameBytes: number;
}

export interface BlockPlan {
  index: BlockIndex;
  /** Bytes of the block index as fetched (they count as download). */
  indexBytes: number;
  seeds: readonly SeedBlocks[];
  /** Per distinct block: the seed holding it (-1: none) and the block number there. */
  localSeed: Int32Array;
  localBlock: Int32Array;
  /** Frames to fetch, ascending. */
  frames: number[];
  totals: BlockPlanTotals;
}

export interface BlockCost {
  mode: 'blocks' | 'blocks-single';
  /** Everything downloaded: index, dictionary, pack ranges with gaps and framing. */
  bytes: number;
  requests: number;
}

/** The pack as a sequence of "chunks" for range planning: 0 = the pack header, f+1 = frame f. */
export class PackLayout implements Pick<ChunkIndex, 'start' | 'end' | 'chunkAt'> {
  constructor(private readonly frameStart: Float64Array) {}
  start(i: number): number {
    return i === 0 ? 0 : this.frameStart[i - 1];
  }
  end(i: number): number {
    return this.frameStart[i];
  }
  chunkAt(offset: number): number {
    let lo = 0;
    let hi = this.frameStart.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.frameStart[mid] <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/** Open-addressing table from a truncated block hash to (seed, block). */
class HashTable {
  private readonly keysLo: Uint32Array;
  private readonly keysHi: Uint32Array;
  private readonly seed: Int32Array;
  private readonly block: Int32Array;
  private readonly mask: number;
  constructor(capacity: number) {
    let n = 1024;
    while (n < capacity * 2) n *= 2;
    this.mask = n - 1;
    this.keysLo = new Uint32Array(n);
    this.keysHi = new Uint32Array(n);
    this.seed = new Int32Array(n).fill(-1);
    this.block = new Int32Array(n);
  }
  private slot(lo: number, hi: number): number {
    let i = (Math.imul(lo, 0x9e3779b1) ^ hi) & this.mask;
    while (this.seed[i] !== -1 && (this.keysLo[i] !== lo || this.keysHi[i] !== hi)) i = (i + 1) & this.mask;
    return i;
  }
  /** Keeps the first (seed, block) for a hash. */
  add(lo: number, hi: number, seed: number, block: number): void {
    const i = this.slot(lo, hi);
    if (this.seed[i] !== -1) return;
    this.keysLo[i] = lo;
    this.keysHi[i] = hi;
    this.seed[i] = seed;
    this.block[i] = block;
  }
  find(lo: number, hi: number): number {
    return this.slot(lo, hi);
  }
  seedAt(i: number): number {
    return this.seed[i];
  }
  blockAt(i: number): number {
    return this.block[i];
  }
}

const view = (u: Uint8Array): DataView => new DataView(u.buffer, u.byteOffset, u.byteLength);

/** Maps the target's distinct blocks to seed blocks; what no seed has is fetched from the pack. */
export function planBlocks(index: BlockIndex, seeds: readonly SeedBlocks[], indexBytes: number): BlockPlan {
  const bs = index.blockSize;
  const table = new HashTable(seeds.reduce((n, s) => n + s.hashes.length / HASH_BYTES, 0));
  seeds.forEach((s, k) => {
    if (s.blockSize !== bs) return;
    const dv = view(s.hashes);
    // Only whole blocks: a short last block of a seed is never a target's whole block.
    const whole = Math.floor(s.size / bs);
    for (let b = 0; b < whole; b++)
      table.add(dv.getUint32(b * HASH_BYTES, true), dv.getUint32(b * HASH_BYTES + 4, true), k, b);
  });

  const localSeed = new Int32Array(index.distinctCount).fill(-1);
  const localBlock = new Int32Array(index.distinctCount);
  const th = view(index.hashes);
  const lastIsShort = index.imageSize % bs !== 0;
  const shortDistinct = lastIsShort ? index.distinctOf[index.blockCount - 1] : ZERO_BLOCK;
  for (let d = 0; d < index.distinctCount; d++) {
    if (d === shortDistinct) continue;
    const slot = table.find(th.getUint32(d * HASH_BYTES, true), th.getUint32(d * HASH_BYTES + 4, true));
    if (table.seedAt(slot) === -1) continue;
    localSeed[d] = table.seedAt(slot);
    localBlock[d] = table.blockAt(slot);
  }

  const totals: BlockPlanTotals = {
    blocks: index.blockCount,
    zeroBlocks: 0,
    zeroBytes: 0,
    fromSeeds: 0,
    fromPack: 0,
    frames: 0,
    frameBytes: 0,
  };
  const need = new Uint8Array(index.frameCount);
  for (let b = 0; b < index.blockCount; b++) {
    const d = index.distinctOf[b];
    const len = blockLength(index, b);
    if (d === ZERO_BLOCK) {
      totals.zeroBlocks++;
      totals.zeroBytes += len;
    } else if (localSeed[d] >= 0) totals.fromSeeds += len;
    else {
      totals.fromPack += len;
      need[frameOf(index, d)] = 1;
    }
  }
  const frames: number[] = [];
  for (let f = 0; f < index.frameCount; f++) {
    if (!need[f]) continue;
    frames.push(f);
    totals.frameBytes += index.frameStart[f + 1] - index.frameStart[f];
  }
  totals.frames = frames.length;
  return { index, indexBytes, seeds, localSeed, localBlock, frames, totals };
}

/** Runs of pack "chunks" (PackLayout numbering) for a set of frames, the header first. */
export function packRuns(frames: readonly number[]): { first: number; count: number }[] {
  const runs = [{ first: 0, count: 1 }];
  for (const f of frames) {
    const last = runs[runs.length - 1];
    if (last.first + last.count === f + 1) last.count++;
    else runs.push({ first: f + 1, count: 1 });
  }
  return runs;
}

export interface RequestPlanOptions {
  multi: boolean;
  /** Prices requests and gaps (default: the default link). */
  cost?: CostModel;
  /** Pack requests in flight (default 4). */
  parallelism?: number;
}

/** Stored bytes of one pack request at most: several are on their way at once, and the next can start early. */
export const PACK_REQUEST_BYTES = 1536 * 1024;

/** The pack requests for a set of frames (header first), gaps merged as the cost model says. */
export function planPackRequests(
  index: BlockIndex,
  frames: readonly number[],
  opts: RequestPlanOptions,
): RangeRequest[] {
  const cost = opts.cost ?? defaultCostModel;
  return cost.planRequests(new PackLayout(index.frameStart), packRuns(frames), opts.multi, opts.parallelism ?? 4, {
    maxRequestBytes: PACK_REQUEST_BYTES,
  });
}

/** What the block path costs for this plan: everything the client downloads and the requests for it. */
export function costOf(plan: BlockPlan, opts: RequestPlanOptions): BlockCost {
  const mode = opts.multi ? 'blocks' : 'blocks-single';
  // Nothing to fetch: the index was all it took.
  if (plan.frames.length === 0) return { mode, bytes: plan.indexBytes, requests: 1 };
  const reqs = planPackRequests(plan.index, plan.frames, opts);
  const dictRequests = plan.index.dictSize > 0 ? 1 : 0;
  return {
    mode,
    bytes: plan.indexBytes + plan.index.dictSize + bodyBytes(reqs),
    requests: 1 + dictRequests + reqs.length,
  };
}
