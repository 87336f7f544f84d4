// The block route: assembles the target in target order from seed blocks,
// zero blocks, and pack frames (fetched as byte ranges of the pack with the
// one fetch/retry loop, decompressed with the release dictionary, checked
// block by block). Target chunks go to the same sinks as the chunk route (a
// partial file that resumes, or the ordered stream) as soon as they are
// complete and verified against the target chunk index, so a stale pack is an
// error before its first wrong chunk is handed on. Seed blocks and pack blocks
// are checked by those chunk IDs; only a chunk that fails has its seed blocks
// hashed, to find the ones that changed since the seed was indexed (they cost a
// frame fetch, not a wrong byte), and then its pack blocks fetched again and
// checked against their hashes (a frame damaged on its way). Without a chunk
// index (assembleBlocks) every block is hashed: seed blocks as they are read,
// pack blocks as they are decoded.
//
// Pack requests are planned in pack order, which is the order tasks need them
// (distinct blocks are numbered by first occurrence), and started ahead of the
// tasks while the frames delivered but not yet used, plus those on their way,
// stay under a budget (several round trips' worth of the link): the link stays
// busy while seed blocks are read. The first request carries the pack header
// and one frame only: it shows whether the server does multi-range before the
// others are sent (refused, they are planned again as single ranges, which then
// run side by side). Frames are kept as they arrive and decoded, several per
// zstd call, by the first task that uses them.
// Memory: a few tasks of ~2 MiB in flight, and the frame budget.
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
import { BufferPool, SlotPool } from '../util/buffer-pool.js';
import { HashThread } from '../util/hash-thread.js';
import { FrameDecompressor } from './frame-codec.js';
import {
  ZERO_BLOCK,
  blockHashMatches,
  blockLength,
  checkPackHeader,
  frameOf,
  MAX_INDEX_BYTES,
  parseBlockIndex,
  sha256,
  type BlockIndex,
} from './format.js';
import { PackLayout, packBlockOf, packRuns, planPackRequests, seedOf, type BlockPlan, type PackIndex } from './plan.js';
import { unlessAborted } from '../util/abort.js';
import { forEachConcurrent } from '../util/async-pool.js';
import { readFully } from '../util/fs-io.js';
import { newProgress } from '../assemble/progress.js';

/** The release dictionary, downloaded and checked against the block index. */
export interface PackDictionary {
  decoder: FrameDecompressor;
  /** Bytes downloaded for it (0 when the release has none). */
  bytes: number;
}

export interface BlockRouteOptions {
  http: HttpClient;
  packUrl: string;
  dictUrl: string;
  /**
   * The block index's URL: a plan without its whole index (dropIndexTables) fetches it again from here when a chunk
   * fails its ID, to hash the chunk's seed blocks against it and check the frames fetched again.
   */
  indexUrl?: string;
  /** The dictionary, when its download was started already (fetchDictionary); else the route fetches it. */
  dictionary?: Promise<PackDictionary>;
  /** Try multi-range requests first (default true; falls back to single ranges when refused). */
  multi?: boolean;
  /** Prices requests and gaps, and sizes the frames kept on their way (default: the default link). */
  cost?: CostModel;
  /** The release's SHA-256 (hex), when known: must match the block index before anything is fetched. */
  sha256?: string;
  /** Tasks in flight (default 4). */
  concurrency?: number;
  /** Largest target span of one task (the stream's window); default 2 MiB. */
  maxSpan?: number;
  /** Where task buffers come from (default a pool of the route's own). */
  buffers?: BufferPool;
  retry?: RetryPolicy;
  /**
   * Chunk checks on a hashing thread of the route's own, reading the task buffers in shared memory in place
   * (default false). It takes ~1 s of CPU per 600 MB off this thread, which has the seed reads, the decoding and
   * the stream's digest, but costs 15-19 MiB at the peak: over the 128 MiB the sidecar has, and on two cores it
   * did not bring the update under its wall-time target either (bench/RESULTS.md, "The merged tree (session 5)").
   */
  hashThread?: boolean;
  onWarning?: (message: string) => void;
  signal?: AbortSignal;
}

/** Target bytes per task: enough for sequential seed reads, small enough to bound memory. */
const TASK_BYTES = 2 * 1024 * 1024;
/** Stored frame bytes delivered ahead of their first task or on their way, at least (see frameBudget). */
const AHEAD_BYTES = 6 * 1024 * 1024;
/** Round trips of the link the frame budget covers at least. */
const AHEAD_ROUND_TRIPS = 4;
/** Arenas of the decoded blocks kept for later tasks. */
const KEPT_ARENA_BYTES = 256 * 1024;
/** Uncompressed bytes decoded in one zstd call at most. */
const DECODE_BATCH_BYTES = 1024 * 1024;

interface Task {
  first: number;
  count: number;
  start: number;
  end: number;
  /** Distinct blocks this task takes from the pack (a view of one table for all tasks). */
  fromPack: Int32Array;
}

interface PackRequest {
  frames: number[];
  /** Stored bytes of its frames. */
  bytes: number;
  started?: Promise<void>;
}

/** Downloads the release dictionary and checks it against the block index (before any frame is fetched). */
export async function fetchDictionary(
  http: HttpClient,
  dictUrl: string,
  index: Pick<BlockIndex, 'dictSize' | 'dictSha256'>,
  signal?: AbortSignal,
): Promise<PackDictionary> {
  if (index.dictSize === 0) return { decoder: new FrameDecompressor(Buffer.alloc(0)), bytes: 0 };
  const dict = await http.getBuffer(dictUrl, { maxBytes: index.dictSize, signal });
  if (dict.status !== 200)
    throw new OriginError(
      `GET ${dictUrl}: HTTP ${dict.status} (the block index names a dictionary the server does not have)`,
    );
  if (dict.body.length !== index.dictSize || !sha256(dict.body).equals(index.dictSha256)) {
    throw new PackError(
      `${dictUrl}: dictionary does not match the block index (${dict.body.length} bytes; corrupt, stale or swapped)`,
    );
  }
  return { decoder: new FrameDecompressor(dict.body), bytes: dict.body.length };
}

/** One run of the block route into a sink. */
export class BlockAssembly {
  /** Dictionary and pack traffic. */
  get stats(): FetchStats {
    return {
      requests: this.dictStats.requests + this.indexStats.requests + this.fetcher.stats.requests,
      bytes: this.dictStats.bytes + this.indexStats.bytes + this.fetcher.stats.bytes,
    };
  }
  seedMismatches = 0;
  /** Frames fetched (planned and on demand). */
  framesFetched = 0;
  wroteAny = false;

  private readonly index: PackIndex;
  private readonly bs: number;
  /** The whole block index (distinct numbers and hashes of every block): the plan's, or fetched again on demand. */
  private full?: BlockIndex;
  private fullLoad?: Promise<BlockIndex>;
  private readonly ctl = new AbortController();
  private readonly fetcher: RangeFetcher;
  private readonly cost: CostModel;
  private readonly state: { multi: boolean };
  private readonly retry: RetryPolicy;
  private readonly dictStats: FetchStats = { requests: 0, bytes: 0 };
  /** The block index fetched again (fullIndex). */
  private readonly indexStats: FetchStats = { requests: 0, bytes: 0 };
  private dict?: Promise<PackDictionary>;
  private decoder?: FrameDecompressor;
  private headerChecked = false;
  /** Whether the requests not started yet were planned for multi-range answers. */
  private plannedMulti = false;
  /** The first request is done: the server's answers to ranges are known. */
  private firstDone = false;
  /** Tasks still to use each distinct block from the pack. */
  private uses: Uint8Array | Int32Array;
  /** Decoded pack blocks still to be used. */
  private readonly blocks = new Map<number, Buffer>();
  /** Frames as stored, delivered and not decoded yet. */
  private readonly stored = new Map<number, Buffer>();
  /** Frames asked for again after they failed to decode or verify (a second failure is an error). */
  private readonly refetched = new Set<number>();
  private readonly refetching = new Map<number, Promise<void>>();
  /** Per frame waited for: the promise of its delivery (gone once delivered). */
  private readonly arrival = new Map<number, { promise: Promise<void>; resolve: () => void }>();
  /** The planned requests, in pack order (requestOf finds a frame's). */
  private requests: PackRequest[] = [];
  /** Planned requests before this one have been started. */
  private nextRequest = 0;
  /** Stored bytes of planned frames asked for and not delivered yet. */
  private inFlight = 0;
  /** Stored bytes of frames delivered and not decoded yet. */
  private ahead = 0;
  private readonly budget: number;
  /** Seed blocks (plan.sources numbers) that did not verify: taken from the pack from then on. */
  private readonly seedFailed = new Set<number>();
  private readonly seedHandles = new Map<number, Promise<FileHandle>>();
  /** Task buffers, reused when the sink does not keep them (in shared memory with a hashing thread). */
  private readonly buffers: BufferPool;
  private readonly hashThread: HashThread | undefined;
  /** The hashing thread while it works (gone after a failure: chunks are then checked here). */
  private hasher: HashThread | undefined;
  /**
   * Buffers of frames as stored, reused once decoded: a frame waits for its task long enough to be promoted,
   * so fresh ones would be old garbage that V8 frees only with a full collection, tens of MiB behind.
   */
  private readonly frameBuffers: BufferPool;
  /** Decoded blocks kept for later tasks: slots reused as each block's last task is done with it. */
  private readonly kept: SlotPool;
  /** Where frames are decoded, reused (every block is copied out before the next decode). */
  private decodeOut?: Buffer;
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
    this.full = plan.full;
    this.bs = plan.index.blockSize;
    this.fetcher = new RangeFetcher(opts.http, opts.packUrl, plan.index.packSize);
    this.cost = opts.cost ?? defaultCostModel;
    this.state = { multi: opts.multi ?? true };
    this.retry = opts.retry ?? { attempts: opts.http.attempts, retryBaseMs: opts.http.retryBaseMs };
    // 1 byte per distinct block; a block more tasks use than that holds makes it 4 (see tasks()).
    this.uses = new Uint8Array(plan.index.distinctCount);
    this.hashThread = verifyChunks && (opts.hashThread ?? false) ? new HashThread() : undefined;
    this.hasher = this.hashThread;
    // A hashing thread reads task buffers in place, so they must be in shared memory: the chunk route's pool is
    // used again only when it is of the same kind.
    const shared = this.hasher !== undefined;
    this.buffers =
      opts.buffers?.isShared === shared ? opts.buffers : new BufferPool((opts.concurrency ?? 4) * TASK_BYTES, shared);
    const { rttMs, bytesPerSec } = this.cost.link;
    this.budget = Math.max(AHEAD_BYTES, Math.round((AHEAD_ROUND_TRIPS * rttMs * bytesPerSec) / 1000));
    this.frameBuffers = new BufferPool(this.budget);
    this.kept = new SlotPool(this.bs, Math.max(1, Math.floor(KEPT_ARENA_BYTES / this.bs)));
    opts.signal?.addEventListener('abort', this.onAbort, { once: true });
    if (opts.signal?.aborted) this.ctl.abort(opts.signal.reason);
  }

  private readonly onAbort = (): void => this.ctl.abort(this.opts.signal!.reason);

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
  }

  /** Assembles every target chunk the sink does not hold yet. */
  async run(): Promise<void> {
    BlockAssembly.check(this.plan, this.target, this.opts.sha256);
    const tasks = this.tasks();
    this.planRequests(tasks);
    // The dictionary comes while the first seed blocks are read; no frame is asked for before it is checked. The
    // first request goes out at once, before any task needs it: frames are link-bound, seed blocks CPU-bound.
    if (this.requests.length > 0) void this.dictionary().catch(() => {});
    this.pump();
    try {
      await this.runTasks(tasks);
    } finally {
      await Promise.allSettled(this.requests.map((r) => r.started));
      await Promise.allSettled(this.refetching.values());
      for (const fh of this.seedHandles.values()) await (await fh.catch(() => null))?.close().catch(() => {});
      await this.hashThread?.close();
      // The caller's signal outlives this run (the chunk route may go on after it): it must not keep the tables.
      this.opts.signal?.removeEventListener('abort', this.onAbort);
      // Its native zstd context goes now, not when the collector finds it (a later run opens another).
      this.decoder?.close();
    }
    if (this.error !== undefined) throw this.error;
    this.ctl.signal.throwIfAborted();
  }

  private tasks(): Task[] {
    const { target, sink, plan, bs } = this;
    const span = Math.max(1, Math.min(TASK_BYTES, this.opts.maxSpan ?? TASK_BYTES));
    const out: Task[] = [];
    // Every task's pack blocks in one table, not an array each (8 bytes a number, kept for the whole run): a block
    // cut by a task's edge is in both tasks, so there are at most as many more as there are tasks (or chunks).
    let packBlocks = 0;
    for (let b = 0; b < plan.sources.length; b++) if (plan.sources[b] < ZERO_BLOCK) packBlocks++;
    const all = new Int32Array(packBlocks > 0 ? packBlocks + target.count : 0);
    let used = 0;
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
      const from = used;
      const seen = new Set<number>();
      for (let b = Math.floor(start / bs); b * bs < end; b++) {
        const s = plan.sources[b];
        if (s >= ZERO_BLOCK) continue;
        const d = packBlockOf(s);
        if (seen.has(d)) continue;
        seen.add(d);
        all[used++] = d;
        if (this.uses[d] === 0xff && this.uses instanceof Uint8Array) this.uses = Int32Array.from(this.uses);
        this.uses[d]++;
      }
      out.push({ first, count: i - first, start, end, fromPack: all.subarray(from, used) });
    }
    return out;
  }

  /** The pack requests for every frame a task needs, in pack order: the first frame alone, then the rest. */
  private planRequests(tasks: Task[]): void {
    const needed = new Uint8Array(this.index.frameCount);
    for (const t of tasks) for (const d of t.fromPack) needed[frameOf(this.index, d)] = 1;
    const sorted: number[] = [];
    for (let f = 0; f < needed.length; f++) if (needed[f]) sorted.push(f);
    this.requests = sorted.length > 0 ? [this.request(sorted.slice(0, 1)), ...this.group(sorted.slice(1))] : [];
  }

  /** The planned request carrying frame f (binary search: requests hold ascending frames, in pack order). */
  private requestOf(f: number): PackRequest {
    const { requests } = this;
    let lo = 0;
    let hi = requests.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (requests[mid].frames[0] <= f) lo = mid;
      else hi = mid - 1;
    }
    return requests[lo];
  }

  /** Frames (ascending) grouped into the requests the cost model plans for them, for the server as known now. */
  private group(frames: readonly number[]): PackRequest[] {
    this.plannedMulti = this.state.multi;
    const reqs = planPackRequests(this.index, frames, {
      multi: this.state.multi,
      cost: this.cost,
      parallelism: this.opts.concurrency ?? 4,
    });
    // A request for the pack header alone carries no frame: the first request asks for the header anyway.
    return reqs.map((r) => this.request(framesOf(r))).filter((r) => r.frames.length > 0);
  }

  private request(frames: number[]): PackRequest {
    return { frames, bytes: frames.reduce((n, f) => n + this.storedLength(f), 0) };
  }

  /** The server turned out to refuse multi-range: the requests not started yet become single-range requests. */
  private replan(): void {
    const out: PackRequest[] = [];
    for (const r of this.requests) {
      if (r.started) out.push(r);
      else out.push(...this.group(r.frames));
    }
    this.plannedMulti = false;
    this.requests = out;
    this.nextRequest = out.findIndex((r) => !r.started);
    if (this.nextRequest < 0) this.nextRequest = out.length;
  }

  private async runTasks(tasks: Task[]): Promise<void> {
    const done = new Uint8Array(tasks.length);
    await forEachConcurrent(this.admitted(tasks), this.opts.concurrency ?? 4, async (k) => {
      await this.guard(tasks[k], k); // never throws
      done[k] = 1;
      tasks[k].fromPack = NONE; // its list of pack blocks is not needed any more (tasks are made all at once)
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
      this.fail(err);
    }
  }

  private fail(err: unknown): void {
    if (this.error === undefined) this.error = this.ctl.signal.aborted ? this.ctl.signal.reason : err;
    this.ctl.abort(err);
    this.wake();
  }

  private async runTask(t: Task, k: number): Promise<void> {
    const { index, bs } = this;
    // Pack blocks first (their requests run while the seeds are read).
    const packReady = t.fromPack.length > 0 ? this.awaitBlocks(t.fromPack, k) : Promise.resolve();
    packReady.catch(() => {});
    const size = t.end - t.start;
    const data = this.buffers.take(size);
    // A holding sink releases the buffer itself once it has sent it; until put, or without one, it is ours.
    let handed = false;
    try {
      const seedBad = await this.readSeeds(t, data);
      await packReady;
      // Pack blocks only this task uses are put in place as they are decoded; the others are taken from `blocks`.
      const placed = await this.decodeFor(t, data);
      this.ctl.signal.throwIfAborted();
      // Seed blocks known to have changed (here or in an earlier task) come from the pack too.
      if (seedBad.size > 0) await this.fromPackNow(t, data, seedBad);
      let fromSeeds = 0;
      let fromZero = 0;
      let fromPack = 0;
      for (let b = Math.floor(t.start / bs); b * bs < t.end; b++) {
        const bStart = b * bs;
        const from = Math.max(t.start, bStart);
        const to = Math.min(t.end, bStart + blockLength(index, b));
        const s = this.plan.sources[b];
        const d = packBlockOf(s);
        if (s === ZERO_BLOCK) {
          data.fill(0, from - t.start, to - t.start);
          fromZero += to - from;
        } else if (seedBad.has(b) || placed.has(d)) {
          fromPack += to - from; // put in place by fromPackNow or decodeFor
        } else if (s >= 0) {
          fromSeeds += to - from; // read in place by readSeeds
        } else {
          const block = this.blocks.get(d);
          if (!block) throw new Error(`block route: distinct block ${d} of target block ${b} is not at hand`);
          block.copy(data, from - t.start, from - bStart, to - bStart);
          fromPack += to - from;
        }
      }
      for (const d of t.fromPack) this.used(d);
      if (this.verifyChunks) {
        const bad = await this.verify(t, data);
        if (bad.length > 0) await this.repair(t, data, bad, seedBad);
      }
      this.ctl.signal.throwIfAborted();
      this.wroteAny = true;
      handed = this.sink.holdsData;
      await this.put(t, data);
      const p = this.progress;
      p.fromSeeds += fromSeeds;
      p.fromZero += fromZero;
      p.fromNetwork += fromPack;
      p.done += size;
    } finally {
      if (!handed) this.buffers.give(data);
    }
  }

  /** Hands the task's chunks to the sink; into a fresh sparse file, chunks of zero blocks only are left as holes. */
  private async put(t: Task, data: Buffer): Promise<void> {
    if (!this.sink.zeroFilled) return this.sink.put(t.first, t.count, data, () => this.buffers.give(data));
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
    const { plan, bs } = this;
    for (let b = Math.floor(start / bs); b * bs < end; b++) if (plan.sources[b] !== ZERO_BLOCK) return false;
    return true;
  }

  /**
   * The task's chunks that do not match their ID in the target index, hashed on the hashing thread when the
   * task buffer is in shared memory (SHA-512/256, casync's default, runs at ~430 MB/s without SHA-NI for it:
   * 1.4 s of this thread's time per 600 MB; bench/RESULTS.md, "Block path wall time (session 5)").
   */
  private async verify(t: Task, data: Buffer): Promise<number[]> {
    const { target } = this;
    const chunks: number[] = [];
    for (let i = t.first; i < t.first + t.count; i++) chunks.push(i);
    if (!this.hasher || !HashThread.reaches(data)) return this.stillBad(t, data, chunks);
    let ids: Buffer;
    try {
      ids = await this.hasher.digests(
        target.digest,
        data,
        chunks.map((i) => target.end(i) - t.start),
      );
    } catch (err) {
      // A thread that failed (it could not start, ran out of memory) costs this thread's time, not the update.
      this.opts.onWarning?.(`block route: ${(err as Error).message}; checking chunks on the main thread`);
      this.hasher = undefined;
      return this.stillBad(t, data, chunks);
    }
    return chunks.filter((i, k) => !ids.subarray(k * 32, k * 32 + 32).equals(target.id(i)));
  }

  /** Which of the given chunks of the task do not hash to their ID. */
  private stillBad(t: Task, data: Buffer, chunks: readonly number[]): number[] {
    const { target } = this;
    return chunks.filter(
      (i) =>
        !chunkId(target.digest, data.subarray(target.start(i) - t.start, target.end(i) - t.start)).equals(target.id(i)),
    );
  }

  /**
   * Chunks that failed their ID: the seed blocks in them are hashed now, and those that changed since the
   * seed was indexed are taken from the pack; then their pack blocks (decoded unchecked) are fetched again,
   * checked against their hashes. A chunk that still does not match is a pack for another image.
   */
  private async repair(t: Task, data: Buffer, bad: number[], fromPack: Set<number>): Promise<void> {
    const { plan, target, bs } = this;
    const changed = new Set<number>();
    for (const i of bad) {
      for (let b = Math.floor(target.start(i) / bs); b * bs < target.end(i); b++) {
        const g = plan.sources[b];
        if (g < 0 || fromPack.has(b)) continue;
        if (this.seedFailed.has(g) || !(await this.seedBlockMatches(b))) changed.add(b);
      }
    }
    if (changed.size > 0) {
      await this.fromPackNow(t, data, changed);
      bad = this.stillBad(t, data, bad);
    }
    const again = new Set<number>();
    for (const i of bad) {
      for (let b = Math.floor(target.start(i) / bs); b * bs < target.end(i); b++) {
        if (plan.sources[b] < ZERO_BLOCK && !fromPack.has(b)) again.add(b);
      }
    }
    if (again.size > 0) {
      await this.fromPackNow(t, data, again);
      bad = this.stillBad(t, data, bad);
    }
    if (bad.length > 0) {
      const i = bad[0];
      throw new PackError(
        `the block pack's image is not the target index's image (chunk ${target.idHex(i)} at byte ${target.start(i)} does not match its ID); stale or swapped pack`,
      );
    }
  }

  /**
   * Reads the seed block of target block b whole and checks it against the block's hash in the whole index (fetched
   * again if the plan let it go); a mismatch is remembered and warned about.
   */
  private async seedBlockMatches(b: number): Promise<boolean> {
    const { plan, bs } = this;
    const full = await this.fullIndex();
    const g = plan.sources[b];
    const seed = seedOf(plan, g);
    const at = (g - plan.seedStart[seed]) * bs;
    const block = Buffer.alloc(bs);
    const fh = await this.seedHandle(seed);
    let got = 0;
    while (got < bs) {
      const { bytesRead } = await fh.read(block, got, bs - got, at + got);
      if (bytesRead === 0) break; // a seed that shrank: the block fails its hash
      got += bytesRead;
    }
    if (blockHashMatches(full, full.distinctOf[b], block)) return true;
    this.seedChanged(g);
    return false;
  }

  /** Seed block g (a plan.sources number) does not match its hash. */
  private seedChanged(g: number): void {
    const { plan, bs } = this;
    if (this.seedFailed.has(g)) return;
    this.seedFailed.add(g);
    this.seedMismatches++;
    const seed = seedOf(plan, g);
    const block = g - plan.seedStart[seed];
    this.opts.onWarning?.(
      `seed ${plan.seeds[seed].path}: block ${block} at byte ${block * bs} does not match its hash; fetching it from the pack`,
    );
  }

  /** Puts target blocks into place from the pack, outside the planned requests. */
  private async fromPackNow(t: Task, data: Buffer, targetBlocks: Set<number>): Promise<void> {
    const { index, plan, bs } = this;
    // A seed block's distinct number is in the whole index only (a pack block's is in its source).
    const full = [...targetBlocks].some((b) => plan.sources[b] >= 0) ? await this.fullIndex() : undefined;
    const blocks = new Map<number, number>();
    for (const b of targetBlocks) {
      const s = plan.sources[b];
      blocks.set(b, s >= 0 ? full!.distinctOf[b] : packBlockOf(s));
    }
    const rescued = await this.fetchBlocksNow([...new Set(blocks.values())]);
    // Later tasks that use a pack block take the checked one too.
    for (const [d, block] of rescued) {
      const old = this.blocks.get(d);
      if (!old) continue;
      this.blocks.set(d, this.keep(block));
      this.kept.give(old);
    }
    for (const [b, d] of blocks) {
      const from = Math.max(t.start, b * bs);
      const to = Math.min(t.end, b * bs + blockLength(index, b));
      rescued.get(d)!.copy(data, from - t.start, from - b * bs, to - b * bs);
    }
  }

  /**
   * Reads the task's seed blocks into place in `data` (runs of consecutive blocks of one seed in
   * one read; a block cut by the task's edge through a one-block scratch buffer). Without a chunk
   * index to check them, each block is checked against its hash (in the plan's whole index). Returns the
   * target blocks known not to match: they come from the pack.
   */
  private async readSeeds(t: Task, data: Buffer): Promise<Set<number>> {
    const { index, plan, bs } = this;
    const full = this.verifyChunks ? undefined : await this.fullIndex();
    const bad = new Set<number>();
    const inside = (b: number): boolean => b * bs >= t.start && b * bs + blockLength(index, b) <= t.end;
    const lastBlock = Math.ceil(t.end / bs);
    let scratch: Buffer | undefined;
    for (let b = Math.floor(t.start / bs); b < lastBlock; ) {
      const g = plan.sources[b];
      if (g < 0) {
        b++;
        continue;
      }
      const seed = seedOf(plan, g);
      // A run stays in one seed: the numbers of the next seed's blocks follow on.
      const seedEnd = plan.seedStart[seed + 1];
      let n = 1;
      if (inside(b)) {
        while (b + n < lastBlock && inside(b + n) && g + n < seedEnd) {
          if (plan.sources[b + n] !== g + n) break;
          n++;
        }
      }
      const fh = await this.seedHandle(seed);
      const direct = inside(b);
      const buf = direct
        ? data.subarray(b * bs - t.start, (b + n) * bs - t.start)
        : (scratch ??= Buffer.allocUnsafe(bs));
      // Short only when the seed shrank: the missing blocks fail their check.
      const got = await readFully(fh, buf, (g - plan.seedStart[seed]) * bs);
      buf.fill(0, got);
      for (let k = 0; k < n; k++) {
        let ok = !this.seedFailed.has(g + k);
        if (ok && full && !blockHashMatches(full, full.distinctOf[b + k], buf.subarray(k * bs, (k + 1) * bs))) {
          ok = false;
          this.seedChanged(g + k);
        }
        if (!ok) bad.add(b + k);
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

  /** Waits until the frames of the given distinct blocks have arrived, starting the requests that carry them. */
  private async awaitBlocks(ds: Iterable<number>, k: number): Promise<void> {
    const waits: Promise<void>[] = [];
    const frames = this.framesMissing(ds).filter((f) => !this.stored.has(f));
    for (const f of frames) waits.push(this.arrived(f));
    // After the first answer (the requests may have been planned again by then).
    const demand = (): void => {
      for (const f of frames) {
        const req = this.requestOf(f);
        req.started ??= this.startRequest(req);
      }
      this.pump();
    };
    if (this.firstDone) demand();
    else if (frames.length > 0) this.startFirst().then(demand, () => {});
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

  /** Frames holding any of the distinct blocks that are not decoded yet, ascending. */
  private framesMissing(ds: Iterable<number>): number[] {
    const frames = new Set<number>();
    for (const d of ds) if (!this.blocks.has(d)) frames.add(frameOf(this.index, d));
    return [...frames].sort((a, b) => a - b);
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

  /**
   * Starts planned requests in pack order while the frames delivered but not decoded, and those on their way,
   * stay within the budget; the requests after the first wait until its answer showed the pack is served.
   */
  private pump(): void {
    if (!this.firstDone) {
      if (this.requests.length > 0) void this.startFirst().catch(() => {});
      return;
    }
    while (this.nextRequest < this.requests.length && !this.ctl.signal.aborted) {
      const req = this.requests[this.nextRequest];
      if (!req.started) {
        const busy = this.ahead + this.inFlight;
        if (this.nextRequest > 0 && busy > 0 && busy + req.bytes > this.budget) return;
        req.started = this.startRequest(req);
      }
      this.nextRequest++;
    }
  }

  /** The first request, started once; the others follow when it is done. */
  private startFirst(): Promise<void> {
    const first = this.requests[0];
    if (!first.started) {
      first.started = this.startRequest(first);
      first.started.then(
        () => {
          this.firstDone = true;
          if (this.plannedMulti && !this.state.multi) this.replan();
          this.pump();
        },
        () => {},
      );
    }
    return first.started;
  }

  private startRequest(req: PackRequest): Promise<void> {
    this.inFlight += req.bytes;
    const p = (async () => {
      await this.fetchFrames(req, req.frames, this.stored);
    })();
    p.catch((err) => this.fail(err));
    return p;
  }

  /**
   * The whole block index: the plan's, or, when the plan let it go (dropIndexTables), fetched again from
   * opts.indexUrl, only when a chunk fails its ID (rare: a seed changed since it was indexed, a damaged frame).
   * It must describe the same image and pack as the plan's.
   */
  private fullIndex(): Promise<BlockIndex> {
    if (this.full) return Promise.resolve(this.full);
    this.fullLoad ??= (async () => {
      const url = this.opts.indexUrl;
      if (!url) throw new PackError('block route: the plan kept no block index to check blocks against');
      const res = await this.opts.http.getBuffer(url, { maxBytes: MAX_INDEX_BYTES, signal: this.ctl.signal });
      this.indexStats.requests++;
      this.indexStats.bytes += res.body.length;
      if (res.status !== 200)
        throw new OriginError(`GET ${url}: HTTP ${res.status} (the block index, fetched again to check blocks)`);
      const full = parseBlockIndex(res.body, url, true);
      const { index } = this;
      if (
        !full.imageSha256.equals(index.imageSha256) ||
        !full.packSha256.equals(index.packSha256) ||
        full.packSize !== index.packSize ||
        full.frameCount !== index.frameCount ||
        full.distinctCount !== index.distinctCount
      )
        throw new PackError(`${url}: the block index changed since the update was planned (stale or swapped index)`);
      this.full = full;
      return full;
    })();
    return this.fullLoad;
  }

  private dictionary(): Promise<PackDictionary> {
    this.dict ??= (async () => {
      const { index, opts } = this;
      const dict = await (opts.dictionary ?? fetchDictionary(opts.http, opts.dictUrl, index, this.ctl.signal));
      if (index.dictSize > 0) {
        this.dictStats.requests++;
        this.dictStats.bytes += dict.bytes;
      }
      this.decoder = dict.decoder;
      return dict;
    })();
    return this.dict;
  }

  /**
   * Fetches frames through the fetch loop into `into` (stored, not decoded: the first task that needs a frame
   * decodes it). Frames of a planned request `req` count against the budget until they are decoded.
   */
  private async fetchFrames(
    req: PackRequest | undefined,
    frames: readonly number[],
    into: Map<number, Buffer>,
  ): Promise<void> {
    const { index, opts } = this;
    await this.dictionary();
    const layout = new PackLayout(index.frames);
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
          this.frameBuffers.give(data);
          return undefined;
        }
        const f = u - 1;
        this.framesFetched++;
        if (req) this.inFlight -= data.length;
        // A frame fetched for one task only (into its own map) is not the planned delivery the others wait for.
        if (into !== this.stored) into.set(f, data);
        else {
          if (!this.stored.has(f) && this.needed(f)) {
            this.stored.set(f, data);
            this.ahead += data.length;
          } else this.frameBuffers.give(data);
          const a = this.arrival.get(f);
          this.arrival.delete(f);
          a?.resolve();
        }
        this.pump();
        return undefined;
      },
      describe: (u) => (u === 0 ? 'the pack header' : `frame ${u - 1} at byte ${index.frames.start(u - 1)}`),
      alloc: (size) => this.frameBuffers.take(size),
      free: (buf) => this.frameBuffers.give(buf),
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

  /** Whether a task still needs a block of frame f that is not decoded yet. */
  private needed(f: number): boolean {
    const { index } = this;
    for (let d = index.frames.first(f), end = d + index.frames.blocks(f); d < end; d++)
      if (this.uses[d] > 0 && !this.blocks.has(d)) return true;
    return false;
  }

  /** Decodes the delivered frames of the given distinct blocks (a frame that fails is asked for once more). */
  private async decodeFor(t: Task, data: Buffer): Promise<Set<number>> {
    const placed = new Set<number>();
    const mine = new Set(t.fromPack);
    for (;;) {
      const frames = this.framesMissing(t.fromPack.filter((d) => !placed.has(d)));
      if (frames.length === 0) return placed;
      const again = frames.filter((f) => this.refetching.has(f));
      if (again.length > 0) {
        await Promise.all(again.map((f) => this.refetching.get(f)));
        continue;
      }
      const lost = frames.find((f) => !this.stored.has(f));
      if (lost !== undefined) throw new Error(`block route: frame ${lost} is neither delivered nor decoded`);
      // The decode buffer is reused: blocks are copied out. One only this task uses goes straight into its place in
      // `data`; one a later task uses too into a slot of `kept`.
      const own = new Map<number, Buffer>();
      const failed = this.decode(
        frames,
        this.stored,
        (d, block) => {
          if (mine.has(d) && this.uses[d] === 1 && !placed.has(d)) own.set(d, block);
          else if (this.uses[d] > 0 && !this.blocks.has(d)) this.blocks.set(d, this.keep(block));
        },
        !this.verifyChunks,
        () => {
          if (own.size === 0) return;
          this.place(t, data, own, placed);
          own.clear();
        },
      );
      // Decoding copied them (a raw frame too): their buffers are free.
      for (const f of frames) {
        const stored = this.stored.get(f)!;
        this.ahead -= stored.length;
        this.stored.delete(f);
        this.frameBuffers.give(stored);
      }
      this.wake();
      this.pump();
      if (failed.size === 0) continue;
      for (const [f, err] of failed) if (this.refetched.has(f)) throw err;
      const retry = [...failed.keys()];
      for (const f of retry) this.refetched.add(f);
      const p = this.fetchFrames(undefined, retry, this.stored).finally(() => {
        for (const f of retry) this.refetching.delete(f);
      });
      for (const f of retry) this.refetching.set(f, p);
      await p;
    }
  }

  /** Copies the task's target blocks whose distinct block is in `blocks` into `data` (now: views of the decode buffer). */
  private place(t: Task, data: Buffer, blocks: ReadonlyMap<number, Buffer>, placed: Set<number>): void {
    const { index, bs } = this;
    for (let b = Math.floor(t.start / bs); b * bs < t.end; b++) {
      const s = this.plan.sources[b];
      const block = s < ZERO_BLOCK ? blocks.get(packBlockOf(s)) : undefined;
      if (!block) continue;
      const bStart = b * bs;
      const from = Math.max(t.start, bStart);
      const to = Math.min(t.end, bStart + blockLength(index, b));
      block.copy(data, from - t.start, from - bStart, to - bStart);
    }
    for (const d of blocks.keys()) placed.add(d);
  }

  /**
   * Decodes frames from `stored` (a batch at a time) and, with `check`, checks every block against its
   * hash (without, the chunk IDs check them); gives each good frame's blocks to `keep`, which must copy what it
   * keeps (they are views of the reused decode buffer, which the next batch overwrites: `batchDone` runs after
   * each batch's). Returns the frames that failed, with the error that names them.
   */
  private decode(
    frames: readonly number[],
    stored: ReadonlyMap<number, Buffer>,
    keep: (d: number, block: Buffer) => void,
    check: boolean,
    batchDone?: () => void,
  ): Map<number, PackError> {
    const failed = new Map<number, PackError>();
    const decoder = this.decoder!;
    let batch: number[] = [];
    let bytes = 0;
    const flush = (): void => {
      if (batch.length === 0) return;
      const lengths = batch.map((f) => this.frameLength(f));
      const total = lengths.reduce((n, l) => n + l, 0);
      if (!this.decodeOut || this.decodeOut.length <= total)
        this.decodeOut = Buffer.allocUnsafeSlow(Math.max(total, DECODE_BATCH_BYTES) + 1);
      const contents = decoder.decompressManyInto(
        batch.map((f) => stored.get(f)!),
        lengths,
        this.decodeOut,
      );
      const good = contents && (!check || batch.every((f, k) => this.blocksMatch(f, contents[k]) === undefined));
      for (let k = 0; k < batch.length; k++) {
        const f = batch[k];
        let content = good ? contents[k] : undefined;
        if (!content) {
          // One by one, to name the frame that is bad.
          const where = `${this.opts.packUrl}: frame ${f} at byte ${this.index.frames.start(f)}`;
          try {
            content = decoder.decompress(stored.get(f)!, lengths[k], where);
          } catch (err) {
            if (!(err instanceof PackError)) throw err;
            failed.set(f, err);
            continue;
          }
          const err = check ? this.blocksMatch(f, content) : undefined;
          if (err) {
            failed.set(f, err);
            continue;
          }
        }
        const first = this.index.frames.first(f);
        for (let d = first, off = 0, end = first + this.index.frames.blocks(f); d < end; d++) {
          const len = this.lengthOf(d);
          keep(d, content.subarray(off, off + len));
          off += len;
        }
      }
      batchDone?.();
      batch = [];
      bytes = 0;
    };
    for (const f of frames) {
      const len = this.frameLength(f);
      if (bytes + len > DECODE_BATCH_BYTES) flush();
      batch.push(f);
      bytes += len;
    }
    flush();
    return failed;
  }

  /** Undefined when every block of frame f's content matches its hash, else the error that says which does not. */
  private blocksMatch(f: number, content: Buffer): PackError | undefined {
    const { index } = this;
    const first = index.frames.first(f);
    for (let d = first, off = 0, end = first + index.frames.blocks(f); d < end; d++) {
      const len = this.lengthOf(d);
      if (!blockHashMatches(this.full!, d, content.subarray(off, off + len)))
        return new PackError(
          `${this.opts.packUrl}: frame ${f} at byte ${index.frames.start(f)}: block ${d - first} does not match its hash in the block index`,
        );
      off += len;
    }
    return undefined;
  }

  /** Blocks fetched for one task only (seed blocks that changed), outside the planned requests. */
  private async fetchBlocksNow(ds: readonly number[]): Promise<Map<number, Buffer>> {
    // Checked against their hashes (a frame damaged on its way is asked for again).
    await this.fullIndex();
    const got = new Map<number, Buffer>();
    const wanted = new Set(ds);
    let frames = [...new Set(ds.map((d) => frameOf(this.index, d)))].sort((a, b) => a - b);
    if (this.requests.length > 0) await this.startFirst();
    for (let attempt = 0; ; attempt++) {
      const stored = new Map<number, Buffer>();
      await this.fetchFrames(undefined, frames, stored);
      const failed = this.decode(
        frames,
        stored,
        (d, block) => void (wanted.has(d) && got.set(d, Buffer.from(block))),
        true,
      );
      for (const b of stored.values()) this.frameBuffers.give(b);
      if (failed.size === 0) return got;
      if (attempt > 0) throw failed.values().next().value!;
      frames = [...failed.keys()];
    }
  }

  /** Uncompressed bytes of frame f. */
  private frameLength(f: number): number {
    let n = 0;
    const first = this.index.frames.first(f);
    for (let d = first, end = first + this.index.frames.blocks(f); d < end; d++) n += this.lengthOf(d);
    return n;
  }

  private storedLength(f: number): number {
    return this.index.frames.length(f);
  }

  private lengthOf(d: number): number {
    const { index } = this;
    return d === index.shortDistinct ? blockLength(index, index.blockCount - 1) : this.bs;
  }

  /** A copy of a decoded block in a slot of `kept`. */
  private keep(block: Buffer): Buffer {
    const copy = this.kept.take(block.length);
    block.copy(copy);
    return copy;
  }

  /** A task is done with pack block d. */
  private used(d: number): void {
    if (--this.uses[d] === 0) {
      const block = this.blocks.get(d);
      this.blocks.delete(d);
      if (block) this.kept.give(block);
    }
    this.wake();
  }

  /**
   * Backpressure for the pack requests: they wait while more than the budget was delivered that no task
   * decoded yet, unless the oldest task waits for a frame (then only reading on can help).
   */
  private drain(): Promise<void> | undefined {
    const go = (): boolean => this.ahead <= this.budget || this.waiting.has(this.oldest) || this.ctl.signal.aborted;
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

const NONE = new Int32Array(0);

function framesOf(req: RangeRequest): number[] {
  const out: number[] = [];
  for (const r of req.chunks) for (let k = 0; k < r.count; k++) if (r.first + k > 0) out.push(r.first + k - 1);
  return out;
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
function blockChunks(index: Pick<BlockIndex, 'blockSize' | 'imageSize'>): ChunkIndex {
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
