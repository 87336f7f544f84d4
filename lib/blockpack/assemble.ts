// The block route: assembles the target in target order from seed blocks
// (hashed again as they are read: a seed that changed since it was indexed
// costs a frame fetch, not a wrong byte), zero blocks, and pack frames
// (fetched as byte ranges of the pack with the one fetch/retry loop,
// decompressed with the release dictionary, checked block by block). Target
// chunks go to the same sinks as the chunk route (a partial file that resumes,
// or the ordered stream) as soon as they are complete and verified against
// the target chunk index, so a stale pack is an error before its first wrong
// chunk is handed on. Memory: a few tasks of ~2 MiB in flight, and the frames
// delivered ahead of the task that first uses them (bounded per request).
import { open, type FileHandle } from 'node:fs/promises';
import { ChunkIndex } from '../format/caibx.js';
import { chunkId, flagsForDigest } from '../format/digest.js';
import { OriginError, PackError } from '../errors.js';
import type { HttpClient } from '../fetch/http-client.js';
import { RangeFetcher, type FetchStats, type RangeRequest } from '../fetch/range-fetcher.js';
import { defaultCostModel, type CostModel } from '../plan/cost.js';
import { fetchUnits, type RetryPolicy, type UnitSpec } from '../assemble/unit-fetch.js';
import { PartialFile } from '../assemble/partial-file.js';
import type { AssemblySink } from '../assemble/sink.js';
import type { ExtractProgress } from '../assemble/progress.js';
import { BufferPool } from '../util/buffer-pool.js';
import { FrameDecompressor } from './frame-codec.js';
import {
  HASH_BYTES,
  MAX_FRAME_BLOCKS,
  ZERO_BLOCK,
  blockHash,
  blockLength,
  checkPackHeader,
  frameOf,
  sha256,
  type BlockIndex,
} from './format.js';
import { PackLayout, packRuns, planPackRequests, type BlockPlan } from './plan.js';
import { unlessAborted } from '../util/abort.js';
import { forEachConcurrent } from '../util/async-pool.js';
import { readFully } from '../util/fs-io.js';
import { newProgress } from '../assemble/progress.js';

export interface BlockRouteOptions {
  http: HttpClient;
  packUrl: string;
  dictUrl: string;
  /** Try multi-range requests first (default true; falls back to single ranges when refused). */
  multi?: boolean;
  /** Prices requests and gaps (default: the default link). */
  cost?: CostModel;
  /** The release's SHA-256 (hex), when known: must match the block index before anything is fetched. */
  sha256?: string;
  /** Tasks (and so pack requests) in flight (default 4). */
  concurrency?: number;
  /** Largest target span of one task (the stream's window); default 2 MiB. */
  maxSpan?: number;
  retry?: RetryPolicy;
  onWarning?: (message: string) => void;
  signal?: AbortSignal;
}

/** Target bytes per task: enough for sequential seed reads, small enough to bound memory. */
const TASK_BYTES = 2 * 1024 * 1024;
/** Frame bytes delivered ahead of the tasks that first use them before the requests wait. */
const AHEAD_BYTES = 4 * 1024 * 1024;

interface Task {
  first: number;
  count: number;
  start: number;
  end: number;
  /** Distinct blocks this task takes from the pack. */
  fromPack: number[];
}

interface PackRequest {
  frames: number[];
  started?: Promise<void>;
}

/** One run of the block route into a sink. */
export class BlockAssembly {
  /** Dictionary and pack traffic. */
  get stats(): FetchStats {
    return {
      requests: this.dictStats.requests + this.fetcher.stats.requests,
      bytes: this.dictStats.bytes + this.fetcher.stats.bytes,
    };
  }
  seedMismatches = 0;
  /** Frames fetched (planned and on demand). */
  framesFetched = 0;
  wroteAny = false;

  private readonly index: BlockIndex;
  private readonly bs: number;
  private readonly ctl = new AbortController();
  private readonly fetcher: RangeFetcher;
  private readonly cost: CostModel;
  private readonly state: { multi: boolean };
  private readonly retry: RetryPolicy;
  private readonly dictStats: FetchStats = { requests: 0, bytes: 0 };
  private decoder?: Promise<FrameDecompressor>;
  private headerChecked = false;
  /** Tasks still to use each distinct block from the pack. */
  private readonly uses: Int32Array;
  /** Whether a distinct block's first use is still to come (its bytes count as delivered ahead). */
  private readonly unused: Uint8Array;
  /** Decompressed pack blocks still to be used. */
  private readonly blocks = new Map<number, Buffer>();
  /** Per frame: its planned request, and the promise of its delivery. */
  private readonly requestOf = new Map<number, PackRequest>();
  private readonly arrival = new Map<number, { promise: Promise<void>; resolve: () => void }>();
  private requests: PackRequest[] = [];
  /** Seed blocks that did not verify: taken from the pack from then on. */
  private readonly seedFailed = new Set<number>();
  private readonly seedHandles = new Map<number, Promise<FileHandle>>();
  /** Task buffers, reused when the sink does not keep them. */
  private readonly buffers: BufferPool;
  /** Delivered frame bytes not yet used by their first task. */
  private ahead = 0;
  private waiters: (() => void)[] = [];
  /** Tasks (by number) waiting for frames, and the oldest task not done. */
  private readonly waiting = new Set<number>();
  private oldest = 0;
  private error: unknown;

  constructor(
    private readonly plan: BlockPlan,
    /** The chunk index asked for; with `verifyChunks`, every chunk must hash to its ID in it. */
    private readonly target: ChunkIndex,
    private readonly sink: AssemblySink,
    private readonly progress: ExtractProgress,
    private readonly opts: BlockRouteOptions,
    private readonly verifyChunks = true,
  ) {
    this.index = plan.index;
    this.bs = plan.index.blockSize;
    this.fetcher = new RangeFetcher(opts.http, opts.packUrl, plan.index.packSize);
    this.cost = opts.cost ?? defaultCostModel;
    this.state = { multi: opts.multi ?? true };
    this.retry = opts.retry ?? { attempts: opts.http.attempts, retryBaseMs: opts.http.retryBaseMs };
    this.uses = new Int32Array(plan.index.distinctCount);
    this.unused = new Uint8Array(plan.index.distinctCount);
    this.buffers = new BufferPool((opts.concurrency ?? 4) * TASK_BYTES);
    opts.signal?.addEventListener('abort', () => this.ctl.abort(opts.signal!.reason), { once: true });
    if (opts.signal?.aborted) this.ctl.abort(opts.signal.reason);
  }

  /** Checks, before any fetch, that the pack can describe the target at all. */
  static check(plan: BlockPlan, target: Pick<ChunkIndex, 'size'>, sha256?: string): void {
    const { index } = plan;
    const expected = index.imageSha256.toString('hex');
    if (sha256 && sha256.toLowerCase() !== expected) {
      throw new PackError(
        `block index is for an image with SHA-256 ${expected}, the release has ${sha256} (stale or swapped index)`,
      );
    }
    if (index.imageSize !== target.size) {
      throw new PackError(
        `block index is for a ${index.imageSize}-byte image, the target index describes ${target.size} bytes (stale or swapped pack)`,
      );
    }
    // Distinct blocks are numbered in order of first occurrence: frames then arrive in the order tasks need them.
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

  /** Assembles every target chunk the sink does not hold yet. */
  async run(): Promise<void> {
    BlockAssembly.check(this.plan, this.target, this.opts.sha256);
    const tasks = this.tasks();
    this.planRequests(tasks);
    try {
      await this.runTasks(tasks);
    } finally {
      await Promise.allSettled(this.requests.map((r) => r.started));
      for (const fh of this.seedHandles.values()) await (await fh.catch(() => null))?.close().catch(() => {});
    }
    if (this.error !== undefined) throw this.error;
    this.ctl.signal.throwIfAborted();
  }

  private tasks(): Task[] {
    const { target, sink, index, plan, bs } = this;
    const span = Math.max(1, Math.min(TASK_BYTES, this.opts.maxSpan ?? TASK_BYTES));
    const out: Task[] = [];
    let i = 0;
    while (i < target.count) {
      if (sink.has(i)) {
        i++;
        continue;
      }
      const first = i;
      const start = target.start(i);
      while (i < target.count && !sink.has(i) && (i === first || target.end(i) - start <= span)) i++;
      const end = target.end(i - 1);
      const fromPack: number[] = [];
      const seen = new Set<number>();
      for (let b = Math.floor(start / bs); b * bs < end; b++) {
        const d = index.distinctOf[b];
        if (d === ZERO_BLOCK || plan.localSeed[d] >= 0 || seen.has(d)) continue;
        seen.add(d);
        fromPack.push(d);
        if (this.uses[d]++ === 0) this.unused[d] = 1;
      }
      out.push({ first, count: i - first, start, end, fromPack });
    }
    return out;
  }

  /** The pack requests for every frame a task needs, planned once in pack order. */
  private planRequests(tasks: Task[]): void {
    const frames = new Set<number>();
    for (const t of tasks) for (const d of t.fromPack) frames.add(frameOf(this.index, d));
    const sorted = [...frames].sort((a, b) => a - b);
    const reqs = planPackRequests(this.index, sorted, {
      multi: this.state.multi,
      cost: this.cost,
      parallelism: this.opts.concurrency ?? 4,
    });
    this.requests = reqs.map((r) => ({ frames: framesOf(r) }));
    for (const r of this.requests) for (const f of r.frames) this.requestOf.set(f, r);
  }

  private async runTasks(tasks: Task[]): Promise<void> {
    const done = new Uint8Array(tasks.length);
    await forEachConcurrent(this.admitted(tasks), this.opts.concurrency ?? 4, async (k) => {
      await this.guard(tasks[k], k); // never throws
      done[k] = 1;
      while (this.oldest < tasks.length && done[this.oldest]) this.oldest++;
      this.wake();
    });
  }

  /** Task numbers in order, each once the sink admits its span; none once aborted. */
  private async *admitted(tasks: Task[]): AsyncGenerator<number> {
    for (let k = 0; k < tasks.length; k++) {
      if (this.ctl.signal.aborted) return;
      const t = tasks[k];
      const admitted = this.sink.admit?.(t.start, t.end, t.first);
      if (admitted) await unlessAborted(admitted, this.ctl.signal).catch(() => {});
      if (this.ctl.signal.aborted) return;
      yield k;
    }
  }

  private async guard(t: Task, k: number): Promise<void> {
    try {
      this.ctl.signal.throwIfAborted();
      await this.runTask(t, k);
    } catch (err) {
      if (this.error === undefined) this.error = this.ctl.signal.aborted ? this.ctl.signal.reason : err;
      this.ctl.abort(err);
      this.wake();
    }
  }

  private async runTask(t: Task, k: number): Promise<void> {
    const { index, bs } = this;
    // Pack blocks first (their requests run while the seeds are read).
    const packReady = t.fromPack.length > 0 ? this.awaitBlocks(t.fromPack, k) : Promise.resolve();
    packReady.catch(() => {});
    const size = t.end - t.start;
    const data = this.sink.holdsData ? Buffer.allocUnsafeSlow(size) : this.buffers.take(size);
    try {
      const seedBad = await this.readSeeds(t, data);
      await packReady;
      this.ctl.signal.throwIfAborted();
      // Seed blocks that failed their hash (here or in an earlier task) come from the pack too.
      const rescued =
        seedBad.size > 0 ? await this.fetchBlocksNow([...new Set(seedBad.values())]) : new Map<number, Buffer>();
      let fromSeeds = 0;
      let fromZero = 0;
      let fromPack = 0;
      for (let b = Math.floor(t.start / bs); b * bs < t.end; b++) {
        const bStart = b * bs;
        const from = Math.max(t.start, bStart);
        const to = Math.min(t.end, bStart + blockLength(index, b));
        const d = index.distinctOf[b];
        if (d === ZERO_BLOCK) {
          data.fill(0, from - t.start, to - t.start);
          fromZero += to - from;
        } else if (this.plan.localSeed[d] >= 0 && !seedBad.has(b)) {
          fromSeeds += to - from; // read in place by readSeeds
        } else {
          const block = this.blocks.get(d) ?? rescued.get(d);
          if (!block) throw new Error(`block route: distinct block ${d} of target block ${b} is not at hand`);
          block.copy(data, from - t.start, from - bStart, to - bStart);
          fromPack += to - from;
        }
      }
      for (const d of t.fromPack) this.used(d);
      if (this.verifyChunks) this.verify(t, data);
      this.ctl.signal.throwIfAborted();
      this.wroteAny = true;
      await this.put(t, data);
      const p = this.progress;
      p.fromSeeds += fromSeeds;
      p.fromZero += fromZero;
      p.fromNetwork += fromPack;
      p.done += size;
    } finally {
      if (!this.sink.holdsData) this.buffers.give(data);
    }
  }

  /** Hands the task's chunks to the sink; into a fresh sparse file, chunks of zero blocks only are left as holes. */
  private async put(t: Task, data: Buffer): Promise<void> {
    if (!this.sink.zeroFilled) return this.sink.put(t.first, t.count, data);
    const { target } = this;
    let run = -1;
    for (let i = t.first; i <= t.first + t.count; i++) {
      const hole = i < t.first + t.count && this.allZero(target.start(i), target.end(i));
      const end = i === t.first + t.count;
      if (run >= 0 && (hole || end)) {
        await this.sink.put(run, i - run, data.subarray(target.start(run) - t.start, target.start(i) - t.start));
        run = -1;
      }
      if (!hole && !end && run < 0) run = i;
    }
  }

  private allZero(start: number, end: number): boolean {
    const { index, bs } = this;
    for (let b = Math.floor(start / bs); b * bs < end; b++) if (index.distinctOf[b] !== ZERO_BLOCK) return false;
    return true;
  }

  /** Every chunk of the task must be the target's: a pack for another image fails here, before its chunk is handed on. */
  private verify(t: Task, data: Buffer): void {
    const target = this.target;
    for (let i = t.first; i < t.first + t.count; i++) {
      const bytes = data.subarray(target.start(i) - t.start, target.end(i) - t.start);
      if (!chunkId(target.digest, bytes).equals(target.id(i))) {
        throw new PackError(
          `the block pack's image is not the target index's image (chunk ${target.idHex(i)} at byte ${target.start(i)} does not match its ID); stale or swapped pack`,
        );
      }
    }
  }

  /**
   * Reads the task's seed blocks into place in `data` (runs of consecutive blocks of one seed in
   * one read; a block cut by the task's edge through a one-block scratch buffer), each checked
   * against its hash. Returns target block → distinct block for the blocks that did not verify.
   */
  private async readSeeds(t: Task, data: Buffer): Promise<Map<number, number>> {
    const { index, plan, bs } = this;
    const bad = new Map<number, number>();
    const inside = (b: number): boolean => b * bs >= t.start && b * bs + blockLength(index, b) <= t.end;
    const lastBlock = Math.ceil(t.end / bs);
    let scratch: Buffer | undefined;
    for (let b = Math.floor(t.start / bs); b < lastBlock; ) {
      const d = index.distinctOf[b];
      if (d === ZERO_BLOCK || plan.localSeed[d] < 0) {
        b++;
        continue;
      }
      const seed = plan.localSeed[d];
      let n = 1;
      if (inside(b)) {
        while (b + n < lastBlock && inside(b + n)) {
          const e = index.distinctOf[b + n];
          if (e === ZERO_BLOCK || plan.localSeed[e] !== seed || plan.localBlock[e] !== plan.localBlock[d] + n) break;
          n++;
        }
      }
      const fh = await this.seedHandle(seed);
      const direct = inside(b);
      const buf = direct
        ? data.subarray(b * bs - t.start, (b + n) * bs - t.start)
        : (scratch ??= Buffer.allocUnsafe(bs));
      // Short only when the seed shrank: the missing blocks fail their hash below.
      const got = await readFully(fh, buf, plan.localBlock[d] * bs);
      buf.fill(0, got);
      for (let k = 0; k < n; k++) {
        const e = index.distinctOf[b + k];
        const block = buf.subarray(k * bs, (k + 1) * bs);
        let ok = !this.seedFailed.has(e);
        if (ok && !hashMatches(index, e, block)) {
          ok = false;
          this.seedFailed.add(e);
          this.seedMismatches++;
          this.opts.onWarning?.(
            `seed ${plan.seeds[seed].path}: block ${plan.localBlock[e]} at byte ${plan.localBlock[e] * bs} does not match its hash; fetching it from the pack`,
          );
        }
        if (!ok) bad.set(b + k, e);
        else if (!direct) {
          const from = Math.max(t.start, b * bs);
          const to = Math.min(t.end, b * bs + blockLength(index, b));
          buf.copy(data, from - t.start, from - b * bs, to - b * bs);
        }
      }
      b += n;
    }
    return bad;
  }

  private seedHandle(seed: number): Promise<FileHandle> {
    let fh = this.seedHandles.get(seed);
    if (!fh) {
      fh = open(this.plan.seeds[seed].path, 'r');
      this.seedHandles.set(seed, fh);
    }
    return fh;
  }

  /** Waits until the given distinct blocks have arrived, starting the requests that carry them. */
  private async awaitBlocks(ds: readonly number[], k: number): Promise<void> {
    const frames = [...new Set(ds.map((d) => frameOf(this.index, d)))];
    const waits: Promise<void>[] = [];
    for (const f of frames) {
      if (ds.every((d) => frameOf(this.index, d) !== f || this.blocks.has(d))) continue;
      waits.push(this.arrived(f));
      const req = this.requestOf.get(f)!;
      req.started ??= this.startRequest(req);
    }
    if (waits.length === 0) return;
    this.waiting.add(k);
    this.wake();
    try {
      await unlessAborted(
        Promise.all(waits).then(() => {}),
        this.ctl.signal,
      );
    } finally {
      this.waiting.delete(k);
    }
  }

  private arrived(f: number): Promise<void> {
    let a = this.arrival.get(f);
    if (!a) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      a = { promise, resolve };
      this.arrival.set(f, a);
    }
    return a.promise;
  }

  /** The first pack request goes alone (it shows whether multi-range works and checks the header); the rest follow. */
  private startRequest(req: PackRequest): Promise<void> {
    const first = this.requests[0];
    const p = (async () => {
      if (req !== first) {
        first.started ??= this.startRequest(first);
        await first.started;
      }
      await this.fetchFrames(req, req.frames);
    })();
    p.catch((err) => {
      if (this.error === undefined) this.error = err;
      this.ctl.abort(err);
      this.wake();
    });
    return p;
  }

  private dictionary(): Promise<FrameDecompressor> {
    this.decoder ??= (async () => {
      const { index, opts } = this;
      if (index.dictSize === 0) return new FrameDecompressor(Buffer.alloc(0));
      const dict = await opts.http.getBuffer(opts.dictUrl, { maxBytes: index.dictSize, signal: this.ctl.signal });
      this.dictStats.requests++;
      this.dictStats.bytes += dict.body.length;
      if (dict.status !== 200)
        throw new OriginError(
          `GET ${opts.dictUrl}: HTTP ${dict.status} (the block index names a dictionary the server does not have)`,
        );
      if (dict.body.length !== index.dictSize || !sha256(dict.body).equals(index.dictSha256)) {
        throw new PackError(
          `${opts.dictUrl}: dictionary does not match the block index (${dict.body.length} bytes; corrupt, stale or swapped)`,
        );
      }
      return new FrameDecompressor(dict.body);
    })();
    return this.decoder;
  }

  /** Fetches frames through the fetch loop; each verified frame's still-needed blocks are kept for their tasks. */
  private async fetchFrames(
    req: PackRequest | undefined,
    frames: readonly number[],
    keep?: Map<number, Buffer>,
  ): Promise<void> {
    const { index, opts } = this;
    const decoder = await this.dictionary();
    const layout = new PackLayout(index.frameStart);
    const spec: UnitSpec = {
      layout,
      plan: (units, multi) => {
        const runs = packRuns(units.filter((u) => u > 0).map((u) => u - 1)).filter(
          (r) => r.first > 0 || !this.headerChecked,
        );
        return this.cost.planRequests(layout, runs, multi, opts.concurrency ?? 4);
      },
      accept: (u, data) => {
        if (u === 0) {
          checkPackHeader(data, index, opts.packUrl);
          this.headerChecked = true;
          return undefined;
        }
        const f = u - 1;
        let blocks: Buffer[];
        try {
          blocks = unpackFrame(index, decoder, f, data, (d) => this.lengthOf(d), opts.packUrl);
        } catch (err) {
          if (err instanceof PackError) return err;
          throw err;
        }
        this.framesFetched++;
        for (let d = index.frameFirst[f]; d < index.frameFirst[f + 1]; d++) {
          const block = blocks[d - index.frameFirst[f]];
          if (keep) keep.set(d, block);
          else if (this.uses[d] > 0 && !this.blocks.has(d)) {
            this.blocks.set(d, block);
            if (req && this.unused[d]) this.ahead += block.length;
          }
        }
        this.arrival.get(f)?.resolve();
        return undefined;
      },
      describe: (u) => (u === 0 ? 'the pack header' : `frame ${u - 1} at byte ${index.frameStart[u - 1]}`),
    };
    const units = [...(this.headerChecked ? [] : [0]), ...frames.map((f) => f + 1)];
    await fetchUnits(this.fetcher, spec, units, {
      retry: this.retry,
      state: this.state,
      signal: this.ctl.signal,
      onWarning: opts.onWarning,
      drain: req && (() => this.drain()),
    });
    // Every first request asks for the header; a server that never sent it is not serving this pack.
    if (!this.headerChecked) throw new OriginError(`${opts.packUrl}: the server did not send the pack header`);
  }

  /** Blocks fetched for one task only (seed blocks that failed their hash), outside the planned requests. */
  private async fetchBlocksNow(ds: readonly number[]): Promise<Map<number, Buffer>> {
    const got = new Map<number, Buffer>();
    const frames = [...new Set(ds.map((d) => frameOf(this.index, d)))].sort((a, b) => a - b);
    const first = this.requests[0];
    if (first) {
      first.started ??= this.startRequest(first);
      await first.started;
    }
    await this.fetchFrames(undefined, frames, got);
    return got;
  }

  private lengthOf(d: number): number {
    const { index } = this;
    const last = index.blockCount - 1;
    return index.imageSize % this.bs !== 0 && index.distinctOf[last] === d ? blockLength(index, last) : this.bs;
  }

  /** A task is done with pack block d. */
  private used(d: number): void {
    if (this.unused[d]) {
      this.unused[d] = 0;
      this.ahead -= this.blocks.get(d)?.length ?? 0;
    }
    if (--this.uses[d] === 0) this.blocks.delete(d);
    this.wake();
  }

  /**
   * Backpressure for the pack requests: they wait while more than AHEAD_BYTES were delivered that
   * no task used yet, unless the oldest task waits for a frame (then only reading on can help).
   */
  private drain(): Promise<void> | undefined {
    const limit = Math.max(AHEAD_BYTES, 2 * MAX_FRAME_BLOCKS * this.bs);
    const go = (): boolean => this.ahead <= limit || this.waiting.has(this.oldest) || this.ctl.signal.aborted;
    if (go()) return undefined;
    return new Promise((resolve) => {
      const check = (): void => {
        if (go()) resolve();
        else this.waiters.push(check);
      };
      this.waiters.push(check);
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}

function framesOf(req: RangeRequest): number[] {
  const out: number[] = [];
  for (const r of req.chunks) for (let k = 0; k < r.count; k++) if (r.first + k > 0) out.push(r.first + k - 1);
  return out;
}

function hashMatches(index: BlockIndex, d: number, data: Uint8Array): boolean {
  return blockHash(data).equals(Buffer.from(index.hashes.buffer, index.hashes.byteOffset + d * HASH_BYTES, HASH_BYTES));
}

/** Decompresses frame f and checks each of its blocks against the index; returns the blocks in order. */
function unpackFrame(
  index: BlockIndex,
  decoder: FrameDecompressor,
  f: number,
  stored: Buffer,
  lengthOf: (d: number) => number,
  packUrl: string,
): Buffer[] {
  const first = index.frameFirst[f];
  const last = index.frameFirst[f + 1];
  let length = 0;
  for (let d = first; d < last; d++) length += lengthOf(d);
  const where = `${packUrl}: frame ${f} at byte ${index.frameStart[f]}`;
  const content = decoder.decompress(stored, length, where);
  const blocks: Buffer[] = [];
  for (let d = first, off = 0; d < last; d++) {
    const block = content.subarray(off, off + lengthOf(d));
    off += block.length;
    if (!hashMatches(index, d, block))
      throw new PackError(`${where}: block ${d - first} does not match its hash in the block index`);
    blocks.push(block);
  }
  return blocks;
}

export interface AssembleBlocksOptions extends Omit<BlockRouteOptions, 'retry'> {
  /** Total attempts per transient failure (default the client's). */
  attempts?: number;
  retryBaseMs?: number;
}

export interface AssembleBlocksResult {
  sha256: string;
  fromSeeds: number;
  fromPack: number;
  /** Seed blocks that no longer matched their hash (fetched instead). */
  seedMismatches: number;
  /** Downloaded by the assembly: dictionary and pack ranges (the index is in plan.indexBytes). */
  networkBytes: number;
  networkRequests: number;
  frames: number;
  wallMs: number;
}

/** Chunks of this many blocks stand for the target when no chunk index is at hand (assembleBlocks). */
const BLOCKS_PER_CHUNK = 64;

/** plan.index's image as a chunk table of fixed-size chunks, for the sinks (block hashes and the SHA-256 verify). */
function blockChunks(index: BlockIndex): ChunkIndex {
  const size = index.blockSize * BLOCKS_PER_CHUNK;
  const n = Math.ceil(index.imageSize / size);
  const ends = new Float64Array(n);
  for (let i = 0; i < n; i++) ends[i] = Math.min(index.imageSize, (i + 1) * size);
  return new ChunkIndex(flagsForDigest('sha256'), { min: size, avg: size, max: size }, ends, new Uint8Array(n * 32));
}

/**
 * Assembles plan.index's image into `out` on its own (no target chunk index: every block is
 * checked against its hash and the whole file against the block index's SHA-256 before the
 * rename). The engine (lib/delta) runs BlockAssembly into its own sinks instead.
 */
export async function assembleBlocks(
  plan: BlockPlan,
  out: string,
  opts: AssembleBlocksOptions,
): Promise<AssembleBlocksResult> {
  const started = Date.now();
  BlockAssembly.check(plan, { size: plan.index.imageSize }, opts.sha256);
  const target = blockChunks(plan.index);
  const { file } = await PartialFile.open(out, target, false);
  const progress = newProgress(target.size);
  const retry = {
    attempts: opts.attempts ?? opts.http.attempts,
    retryBaseMs: opts.retryBaseMs ?? opts.http.retryBaseMs,
  };
  const route = new BlockAssembly(plan, target, file, progress, { ...opts, retry }, false);
  try {
    await route.run();
    const sum = (await file.commit(0o644, plan.index.imageSha256.toString('hex')))!;
    return {
      sha256: sum,
      fromSeeds: progress.fromSeeds,
      fromPack: progress.fromNetwork,
      seedMismatches: route.seedMismatches,
      networkBytes: route.stats.bytes,
      networkRequests: route.stats.requests,
      frames: route.framesFetched,
      wallMs: Date.now() - started,
    };
  } catch (err) {
    await file.discard();
    throw err;
  }
}
