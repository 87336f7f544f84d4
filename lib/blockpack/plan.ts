// The block-path planner: every distinct block of the target comes from a seed
// block with the same hash, or from its pack frame. Needed frames become byte
// ranges of the pack: adjacent frames coalesce, nearby ones merge across small
// gaps, and ranges are grouped into multi-range requests (or, when the server
// cannot do multi-range, into single ranges whose gaps are merged as far as a
// cost model of bytes and requests says it pays).
import type { ChunkIndex } from '../format/caibx.js';
import type { RangeRequest } from '../fetch/range-fetcher.js';
import { defaultCostModel, type CostModel } from '../plan/cost.js';
import {
  HASH_BYTES,
  PACK_HEADER_SIZE,
  ZERO_BLOCK,
  blockLength,
  frameOf,
  type BlockIndex,
  type FrameTable,
} from './format.js';
import type { SeedBlocks } from './seed-blocks.js';
import { addToRuns, type Run } from '../util/runs.js';
import { freeNow } from '../util/buffer-pool.js';
import { PackError } from '../errors.js';

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

/** What the assembly needs of a block index once planned: its header and frame tables, not its per-block tables. */
export type PackIndex = Omit<BlockIndex, 'distinctOf' | 'hashes'> & {
  /** The distinct block of a short last block (its length is the image's tail), else ZERO_BLOCK. */
  shortDistinct: number;
};

/** `BlockPlan.sources` value of a target block that comes from distinct block d of the pack. */
export const fromPack = (d: number): number => -2 - d;
/** The distinct block of a `sources` value that is from the pack (<= -2). */
export const packBlockOf = (s: number): number => -2 - s;

export interface BlockPlan {
  index: PackIndex;
  /** Bytes of the block index as fetched (they count as download). */
  indexBytes: number;
  /**
   * The seeds planned against (their block hashes are not kept: a seed block is checked when read, by its hash or
   * its chunk's ID).
   */
  seeds: readonly PlannedSeed[];
  /**
   * Per target block, where it comes from: g >= 0, the seed block numbered g over all seeds in order (seed k's block
   * b is seedStart[k] + b); ZERO_BLOCK; or fromPack(d), distinct block d of the pack. One table of 4 bytes per block
   * is all the assembly needs: the index's per-block and per-distinct-block tables (12 bytes per block) are not.
   */
  sources: Int32Array;
  /**
   * The whole block index (per-block distinct numbers and hashes), while kept: assembleBlocks checks every block
   * against its hash. The engine plans without it (PlanBlocksOptions.keepIndex); its route fetches the index again only
   * when a chunk fails its ID, to find the seed blocks that changed (BlockRouteOptions.indexUrl).
   */
  full?: BlockIndex;
  /** First seed block number of each seed, and one past the last seed's. */
  seedStart: readonly number[];
  /** Frames to fetch, ascending. */
  frames: number[];
  totals: BlockPlanTotals;
}

export interface PlannedSeed {
  path: string;
  size: number;
}

/** The seed of a `local` number g (>= 0). */
export function seedOf(plan: Pick<BlockPlan, 'seedStart'>, g: number): number {
  let k = plan.seedStart.length - 2;
  while (plan.seedStart[k] > g) k--;
  return k;
}

export interface BlockCost {
  mode: 'blocks' | 'blocks-single';
  /** Everything downloaded: index, dictionary, pack ranges with gaps and framing. */
  bytes: number;
  requests: number;
}

/** The pack as a sequence of "chunks" for range planning: 0 = the pack header, f+1 = frame f. */
export class PackLayout implements Pick<ChunkIndex, 'start' | 'end' | 'chunkAt'> {
  constructor(private readonly frames: FrameTable) {}
  start(i: number): number {
    return i === 0 ? 0 : this.frames.start(i - 1);
  }
  end(i: number): number {
    return i === 0 ? PACK_HEADER_SIZE : this.frames.start(i - 1) + this.frames.length(i - 1);
  }
  chunkAt(offset: number): number {
    return offset < PACK_HEADER_SIZE ? 0 : this.frames.at(offset) + 1;
  }
}

const view = (u: Uint8Array): DataView => new DataView(u.buffer, u.byteOffset, u.byteLength);

/**
 * Open-addressing table from a block hash to the first seed block with it. A slot holds only the block's number
 * over all seeds (4 bytes; 3/4 of the slots used at most, the table not rounded up to a power of two): the key is
 * read back from the seed's own hashes, so a 4.5 GB seed (1.1 M blocks) costs 5.6 MiB here, not 64.
 */
class SeedBlockTable {
  private readonly slots: Int32Array;
  /** First table block number of each seed, and one past the last seed's. */
  readonly base: number[] = [];
  private readonly views: DataView[];

  constructor(seeds: readonly SeedBlocks[]) {
    let total = 0;
    for (const s of seeds) {
      this.base.push(total);
      total += s.hashes.length / HASH_BYTES;
    }
    this.base.push(total);
    this.slots = new Int32Array(Math.max(1024, Math.ceil((total * 4) / 3) + 1));
    this.views = seeds.map((s) => view(s.hashes));
  }

  /** Frees the slots now (4 bytes per seed block), not at the next full collection. */
  free(): void {
    freeNow(this.slots);
  }

  /** Keeps the first block for a hash. */
  add(seed: number, block: number): void {
    const dv = this.views[seed];
    const lo = dv.getUint32(block * HASH_BYTES, true);
    const hi = dv.getUint32(block * HASH_BYTES + 4, true);
    const i = this.slot(lo, hi);
    if (this.slots[i] === 0) this.slots[i] = this.base[seed] + block + 1;
  }

  /** The table block number with this hash (seed k's block b is base[k] + b), or -1. */
  find(lo: number, hi: number): number {
    return this.slots[this.slot(lo, hi)] - 1;
  }

  /** The slot holding this hash, or the empty slot where it would go. */
  private slot(lo: number, hi: number): number {
    const n = this.slots.length;
    let i = ((Math.imul(lo, 0x9e3779b1) ^ hi) >>> 0) % n;
    for (;;) {
      const g = this.slots[i] - 1;
      if (g < 0) return i;
      const seed = this.seedOf(g);
      const at = (g - this.base[seed]) * HASH_BYTES;
      const dv = this.views[seed];
      if (dv.getUint32(at, true) === lo && dv.getUint32(at + 4, true) === hi) return i;
      i = i + 1 === n ? 0 : i + 1;
    }
  }

  seedOf(g: number): number {
    let k = this.base.length - 2;
    while (this.base[k] > g) k--;
    return k;
  }
}

export interface PlanBlocksOptions {
  /**
   * Keep the whole index in the plan (`full`, default true). Without, the index's per-block tables and the seeds'
   * block hashes are freed as soon as they are used (the caller must not use them afterwards): the planning peak of a
   * 4.9 GB image is ~17 MiB lower, and the plan is 4 bytes per block.
   */
  keepIndex?: boolean;
}

/** Maps the target's distinct blocks to seed blocks; what no seed has is fetched from the pack. */
export function planBlocks(
  index: BlockIndex,
  seeds: readonly SeedBlocks[],
  indexBytes: number,
  opts: PlanBlocksOptions = {},
): BlockPlan {
  const keep = opts.keepIndex ?? true;
  const bs = index.blockSize;
  checkOrder(index);
  const table = new SeedBlockTable(seeds);
  seeds.forEach((s, k) => {
    if (s.blockSize !== bs) return;
    // Only whole blocks: a short last block of a seed is never a target's whole block.
    const whole = Math.floor(s.size / bs);
    for (let b = 0; b < whole; b++) table.add(k, b);
  });

  // The seed block of each distinct block (-1: none). When the index is used up, over the hash it was found by
  // (HASH_BYTES per distinct block, the first 4 of them): 4 bytes per distinct block less at the planning peak.
  const { hashes } = index;
  const inPlace = !keep && hashes.byteOffset % 4 === 0;
  const local = inPlace
    ? new Int32Array(hashes.buffer, hashes.byteOffset, (index.distinctCount * HASH_BYTES) / 4)
    : new Int32Array(index.distinctCount);
  const stride = inPlace ? HASH_BYTES / 4 : 1;
  const th = view(hashes);
  const lastIsShort = index.imageSize % bs !== 0;
  const shortDistinct = lastIsShort ? index.distinctOf[index.blockCount - 1] : ZERO_BLOCK;
  for (let d = 0; d < index.distinctCount; d++) {
    const g =
      d === shortDistinct ? -1 : table.find(th.getUint32(d * HASH_BYTES, true), th.getUint32(d * HASH_BYTES + 4, true));
    local[d * stride] = g;
  }
  table.free();
  if (!keep) for (const s of seeds) freeNow(s.hashes);

  const totals: BlockPlanTotals = {
    blocks: index.blockCount,
    zeroBlocks: 0,
    zeroBytes: 0,
    fromSeeds: 0,
    fromPack: 0,
    frames: 0,
    frameBytes: 0,
  };
  const sources = new Int32Array(index.blockCount);
  const need = new Uint8Array(index.frameCount);
  for (let b = 0; b < index.blockCount; b++) {
    const d = index.distinctOf[b];
    const len = blockLength(index, b);
    if (d === ZERO_BLOCK) {
      sources[b] = ZERO_BLOCK;
      totals.zeroBlocks++;
      totals.zeroBytes += len;
    } else if (local[d * stride] >= 0) {
      sources[b] = local[d * stride];
      totals.fromSeeds += len;
    } else {
      sources[b] = fromPack(d);
      totals.fromPack += len;
      need[frameOf(index, d)] = 1;
    }
  }
  if (!keep) {
    freeNow(hashes);
    freeNow(index.distinctOf);
  }
  if (!inPlace) freeNow(local);
  const frames: number[] = [];
  for (let f = 0; f < index.frameCount; f++) {
    if (!need[f]) continue;
    frames.push(f);
    totals.frameBytes += index.frames.length(f);
  }
  totals.frames = frames.length;
  const planned = seeds.map((s) => ({ path: s.path, size: s.size }));
  const { distinctOf: _d, hashes: _h, ...pack } = index;
  return {
    index: { ...pack, shortDistinct },
    indexBytes,
    seeds: planned,
    sources,
    full: keep ? index : undefined,
    seedStart: table.base,
    frames,
    totals,
  };
}

/**
 * Distinct blocks must be numbered in order of first occurrence (the index's encoding makes them so): frames then
 * arrive in the order tasks need them.
 */
function checkOrder(index: BlockIndex): void {
  let next = 0;
  for (let b = 0; b < index.blockCount; b++) {
    const d = index.distinctOf[b];
    if (d === ZERO_BLOCK || d < next) continue;
    if (d !== next)
      throw new PackError(
        `block index: block ${b} is distinct block ${d}, expected ${next} (not in order of first occurrence)`,
      );
    next++;
  }
}

/** Runs of pack "chunks" (PackLayout numbering) for a set of frames, the header first. */
export function packRuns(frames: readonly number[]): Run[] {
  // Not through a copy of `frames`: arrays that large are made in the old generation, garbage until a full GC.
  const runs: Run[] = [{ first: 0, count: 1 }];
  for (const f of frames) addToRuns(runs, f + 1);
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
  index: Pick<BlockIndex, 'frames'>,
  frames: readonly number[],
  opts: RequestPlanOptions,
): RangeRequest[] {
  const cost = opts.cost ?? defaultCostModel;
  return cost.planRequests(new PackLayout(index.frames), packRuns(frames), opts.multi, opts.parallelism ?? 4, {
    maxRequestBytes: PACK_REQUEST_BYTES,
  });
}

/** What the block path costs for this plan: everything the client downloads and the requests for it. */
export function costOf(plan: BlockPlan, opts: RequestPlanOptions): BlockCost {
  const mode = opts.multi ? 'blocks' : 'blocks-single';
  // Nothing to fetch: the index was all it took.
  if (plan.frames.length === 0) return { mode, bytes: plan.indexBytes, requests: 1 };
  const cost = opts.cost ?? defaultCostModel;
  // Counted, not planned: the requests themselves are planned by the route that runs.
  const reqs = cost.traffic(
    new PackLayout(plan.index.frames),
    packRuns(plan.frames),
    opts.multi,
    opts.parallelism ?? 4,
    {
      maxRequestBytes: PACK_REQUEST_BYTES,
    },
  );
  const dictRequests = plan.index.dictSize > 0 ? 1 : 0;
  return {
    mode,
    bytes: plan.indexBytes + plan.index.dictSize + reqs.bytes,
    requests: 1 + dictRequests + reqs.requests,
  };
}
