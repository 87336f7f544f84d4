// The assembly engine: runs a plan. Local work (seed runs, zero chunks,
// repeats) and remote batches go through two in-order queues with bounded
// concurrency; every chunk is verified against its ID before it is handed to
// the sink (a file being written, or an ordered stream). A seed chunk that
// does not match is reported and fetched remotely instead.
import { setMaxListeners } from 'node:events';
import type { ChunkIndex } from '../format/caibx.js';
import { chunkId } from '../format/digest.js';
import { ChunkMissingError } from '../errors.js';
import type { Plan, Segment } from '../plan/planner.js';
import type { RemoteSource, Run } from './remote-source.js';
import { readSeedRange } from '../seed/seed.js';
import type { ExtractProgress } from './progress.js';
import type { AssemblySink } from './sink.js';

export type { AssemblySink } from './sink.js';
import { encodeBatch } from '../store/chunk-encoder.js';
import { BufferPool, SharedBuffer } from '../util/buffer-pool.js';
import { unlessAborted } from '../util/abort.js';
import { forEachConcurrent } from '../util/async-pool.js';
import { addToRuns } from '../util/runs.js';

export interface AssemblerOptions {
  plan: Plan;
  sink: AssemblySink;
  /** Missing chunks, and seed chunks that turn out wrong, come from here (without one they fail the assembly). */
  remote?: RemoteSource;
  /** Concurrent remote batches. */
  concurrency: number;
  /**
   * Chunk bytes remote batches in flight may hold at once (default 64 MiB): each batch is charged its largest
   * chunk, which it holds whole at some point. One batch always runs, whatever its size.
   */
  maxFetchBytes?: number;
  /** Concurrent seed reads (default 4, so reads overlap hashing). */
  localConcurrency?: number;
  /** Largest target span of one task (the stream's window); default unlimited. */
  maxSpan?: number;
  /** Counters, updated as chunks are verified; network counters mirror the remote source's stats. */
  progress: ExtractProgress;
  onWarning?: (message: string) => void;
  signal?: AbortSignal;
  /** The pool the remote source takes chunk buffers from (and, for a holding sink, seed reads too): they are handed back once written or released. */
  chunkBuffers?: BufferPool;
}

type Task =
  | { kind: 'seed'; first: number; count: number; seed: number; seedFirst: number }
  | { kind: 'zero'; first: number; count: number }
  | { kind: 'self'; first: number; count: number; source: number }
  | { kind: 'remote'; runs: Run[] };

/** A remote task per batch, made as the queue reaches it (a store source's batches are one chunk each). */
function* remoteTasks(batches: Iterable<Run[]>): Generator<Task> {
  for (const runs of batches) yield { kind: 'remote', runs };
}

/** Bytes read from a seed per task: large enough for sequential I/O, small enough to bound memory. */
const SEED_TASK_BYTES = 2 * 1024 * 1024;
/** Written-but-not-yet-completed bytes before network reading pauses. */
const MAX_PENDING_WRITE_BYTES = 4 * 1024 * 1024;
/** Repeated chunks kept in memory for their copies (stream sinks). */
const MAX_RETAINED_BYTES = 64 * 1024 * 1024;
/** Default cap of chunk bytes held by remote batches in flight: 128 MiB chunks must not multiply by the concurrency. */
const DEFAULT_MAX_FETCH_BYTES = 64 * 1024 * 1024;

export class Assembler {
  private readonly index: ChunkIndex;
  private readonly ctl = new AbortController();
  private error: unknown;
  /** Chunks that later repeats copy from → their completion. */
  private readonly sources = new Map<number, { promise: Promise<void>; resolve: () => void; refs: number }>();
  private readonly retained = new Map<number, Buffer>();
  private retainedBytes = 0;
  private pendingWrites = 0;
  private drainWaiters: (() => void)[] = [];
  private zeros: Buffer = Buffer.alloc(0);
  /**
   * Seed reads and fetched chunks alike (one pool, so that neither keeps idle buffers while the other allocates):
   * reused once a file sink has written them, or once a holding sink releases them (fewer garbage buffers, lower
   * RSS).
   */
  private readonly buffers: BufferPool;
  seedMismatches = 0;
  /** True once any chunk reached the sink. */
  wroteAny = false;

  constructor(private readonly opts: AssemblerOptions) {
    this.index = opts.plan.target;
    this.buffers = opts.chunkBuffers ?? new BufferPool();
    // Every request in flight listens on this signal.
    setMaxListeners(0, this.ctl.signal);
    opts.signal?.addEventListener('abort', this.onAbort, { once: true });
    if (opts.signal?.aborted) this.ctl.abort(opts.signal.reason);
  }

  private readonly onAbort = (): void => this.ctl.abort(this.opts.signal!.reason);

  async run(): Promise<void> {
    const { local, remote } = this.tasks();
    // Remote slots follow the link: a source may keep more requests in flight than `concurrency` on a long fat link.
    const remoteSlots = (): number => this.opts.remote?.inFlight?.(this.opts.concurrency) ?? this.opts.concurrency;
    try {
      await Promise.all([this.runQueue(local, this.opts.localConcurrency ?? 4), this.runQueue(remote, remoteSlots)]);
    } finally {
      // The caller's signal outlives this run (a lead's runs before the block route): it must not keep the buffers.
      this.opts.signal?.removeEventListener('abort', this.onAbort);
    }
    if (this.error !== undefined) throw this.error;
    this.ctl.signal.throwIfAborted();
  }

  /**
   * The local and remote tasks, each made as its queue reaches it: a 4 GiB image's plan has thousands of seed runs
   * and missing runs, and a task object for each (and a run for each missing one), all at once, were held for the
   * whole update. Only the repeats' sources are counted up front (a source's bytes are kept once it arrives).
   */
  private tasks(): { local: Iterable<Task>; remote: Iterable<Task> } {
    const { segments } = this.opts.plan;
    let missing = false;
    for (const seg of segments) {
      if (seg.kind === 'self') for (let k = 0; k < seg.count; k++) this.reference(seg.source + k);
      else if (seg.kind === 'remote' && !missing) {
        missing = true;
        if (!this.opts.remote)
          throw new ChunkMissingError(
            this.index.idHex(seg.first),
            'any source: it is in no seed and there is no remote source (give --range-url or --store)',
          );
      }
    }
    let remote: Iterable<Task> = [];
    if (missing) {
      // A remote segment is a run of missing chunks already.
      const runs: Run[] = segments.filter((s) => s.kind === 'remote');
      remote = remoteTasks(this.opts.remote!.batches(runs, this.opts.maxSpan ?? Infinity));
    }
    return { local: this.localTasks(segments), remote };
  }

  private *localTasks(segments: readonly Segment[]): Generator<Task> {
    for (const seg of segments) {
      if (seg.kind === 'seed') yield* this.splitSeed(seg);
      else if (seg.kind !== 'remote') yield seg;
    }
  }

  private *splitSeed(seg: Extract<Segment, { kind: 'seed' }>): Generator<Task> {
    const idx = this.index;
    let k = 0;
    while (k < seg.count) {
      let n = 1;
      let bytes = idx.chunkSize(seg.first + k);
      while (k + n < seg.count && bytes + idx.chunkSize(seg.first + k + n) <= SEED_TASK_BYTES)
        bytes += idx.chunkSize(seg.first + k + n++);
      yield { kind: 'seed', first: seg.first + k, count: n, seed: seg.seed, seedFirst: seg.seedFirst + k };
      k += n;
    }
  }

  private reference(j: number): void {
    const s = this.sources.get(j);
    if (s) return void s.refs++;
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.sources.set(j, { promise, resolve, refs: 1 });
  }

  private span(t: Task): { start: number; end: number; first: number } {
    const idx = this.index;
    if (t.kind === 'remote') {
      const last = t.runs[t.runs.length - 1];
      return { start: idx.start(t.runs[0].first), end: idx.end(last.first + last.count - 1), first: t.runs[0].first };
    }
    return { start: idx.start(t.first), end: idx.end(t.first + t.count - 1), first: t.first };
  }

  /** Runs tasks in order, `slots` at once, remote ones within the fetch-bytes budget; guard() never throws. */
  private async runQueue(tasks: Iterable<Task>, slots: number | (() => number)): Promise<void> {
    const detached: Promise<void>[] = [];
    const budget = this.opts.maxFetchBytes ?? DEFAULT_MAX_FETCH_BYTES;
    const opts = { concurrency: slots, weight: (t: Task) => this.fetchBytes(t), budget };
    await forEachConcurrent(this.admitted(tasks, detached), opts, (t) => this.guard(t));
    await Promise.all(detached);
  }

  /** The tasks in order, each once the sink admits its span; none once aborted. Repeats go to `detached`. */
  private async *admitted(tasks: Iterable<Task>, detached: Promise<void>[]): AsyncGenerator<Task> {
    for (const t of tasks) {
      if (this.ctl.signal.aborted) return;
      const s = this.span(t);
      // The stream's window only moves when earlier chunks arrive: after a failure they never will.
      const admitted = this.opts.sink.admit?.(s.start, s.end, s.first);
      if (admitted) await unlessAborted(admitted, this.ctl.signal).catch(() => {});
      if (this.ctl.signal.aborted) return;
      // Repeats only wait for earlier chunks; they hold no slot, so they never block the queue.
      if (t.kind === 'self') detached.push(this.guard(t));
      else yield t;
    }
  }

  /** What a remote task holds in memory at once at least: its largest chunk (0 for local tasks, bounded elsewhere). */
  private fetchBytes(t: Task): number {
    if (t.kind !== 'remote') return 0;
    let largest = 0;
    for (const r of t.runs)
      for (let i = r.first; i < r.first + r.count; i++) largest = Math.max(largest, this.index.chunkSize(i));
    return largest;
  }

  /** Runs a task; the first failure stops everything. */
  private async guard(t: Task): Promise<void> {
    try {
      this.ctl.signal.throwIfAborted();
      if (t.kind === 'seed') await this.seedTask(t);
      else if (t.kind === 'zero') await this.zeroTask(t);
      else if (t.kind === 'self') await this.selfTask(t);
      else await this.fetchRemote(t.runs);
    } catch (err) {
      if (this.error === undefined) this.error = this.ctl.signal.aborted ? this.ctl.signal.reason : err;
      this.ctl.abort(err);
    }
  }

  /**
   * Hands verified chunks to the sink and wakes repeats waiting for them. `release` runs once the bytes are no
   * longer needed: after the write for a file sink, when a holding sink says so (if ever).
   */
  private async put(first: number, count: number, data: Buffer, release?: () => void): Promise<void> {
    this.pendingWrites += data.length;
    this.wroteAny = true;
    const idx = this.index;
    const base = idx.start(first);
    // Copies for later repeats are made before the sink has the bytes: once it has, it may release them for reuse.
    const copied: number[] = [];
    if (this.sources.size > 0 && this.opts.sink.retainRepeats) {
      for (let i = first; i < first + count; i++) {
        if (!this.sources.has(i) || this.retainedBytes + idx.chunkSize(i) > MAX_RETAINED_BYTES) continue;
        const copy = Buffer.from(data.subarray(idx.start(i) - base, idx.end(i) - base));
        this.retained.set(i, copy);
        this.retainedBytes += copy.length;
        copied.push(i);
      }
    }
    const holds = this.opts.sink.holdsData;
    try {
      await this.opts.sink.put(first, count, data, holds ? release : undefined);
    } catch (err) {
      for (const i of copied) {
        this.retainedBytes -= this.retained.get(i)?.length ?? 0;
        this.retained.delete(i);
      }
      throw err;
    } finally {
      if (!holds) release?.();
      this.pendingWrites -= data.length;
      if (this.pendingWrites < MAX_PENDING_WRITE_BYTES) for (const w of this.drainWaiters.splice(0)) w();
    }
    this.opts.progress.done += data.length;
    for (let i = first; i < first + count; i++) this.sources.get(i)?.resolve();
  }

  private drain = (): Promise<void> | undefined => {
    if (this.pendingWrites < MAX_PENDING_WRITE_BYTES) return undefined;
    return new Promise((r) => this.drainWaiters.push(r));
  };

  private verify(i: number, data: Buffer): boolean {
    return data.length === this.index.chunkSize(i) && chunkId(this.index.digest, data).equals(this.index.id(i));
  }

  private async seedTask(t: Extract<Task, { kind: 'seed' }>): Promise<void> {
    const seed = this.opts.plan.seeds[t.seed];
    const sIdx = seed.index;
    const base = sIdx.start(t.seedFirst);
    const size = sIdx.end(t.seedFirst + t.count - 1) - base;
    const pool = this.buffers;
    const taken = pool.take(size);
    // Until the runs below hold it, a failed read or an abort hands the buffer straight back.
    const giveBackIfAborted = (): void => {
      if (!this.ctl.signal.aborted) return;
      pool.give(taken);
      this.ctl.signal.throwIfAborted();
    };
    const data = await readSeedRange(seed, base, base + size, taken).catch((err: unknown) => {
      pool.give(taken);
      throw err;
    });
    giveBackIfAborted();
    const ends: number[] = [];
    for (let k = 0; k < t.count; k++) ends.push(sIdx.end(t.seedFirst + k) - base);
    // Hashed on this thread: with SHA-NI it keeps up with the seed reads, and a hashing worker's isolate would be
    // ~14 MiB of RSS (bench/RESULTS.md, "Extract memory (session 4)").
    const { ids } = encodeBatch({
      data,
      ends,
      compress: ends.map(() => false),
      digest: this.index.digest,
      level: 0,
    });
    giveBackIfAborted();
    const tIds = this.index.ids;
    const matches = (k: number): boolean => {
      const i = t.first + k;
      if (sIdx.chunkSize(t.seedFirst + k) !== this.index.chunkSize(i)) return false;
      for (let b = 0; b < 32; b++) if (ids[k * 32 + b] !== tIds[i * 32 + b]) return false;
      return true;
    };
    const bad: Run[] = [];
    // The runs are slices of one buffer: it is reused once the sink is done with every one.
    const shared = new SharedBuffer(() => pool.give(data));
    // Verified chunks are handed on in contiguous runs, one write per run.
    let runStart = -1;
    const flush = async (end: number): Promise<void> => {
      if (runStart < 0) return;
      const from = sIdx.start(t.seedFirst + runStart) - base;
      const to = sIdx.end(t.seedFirst + end - 1) - base;
      await this.put(t.first + runStart, end - runStart, data.subarray(from, to), shared.hold());
      this.opts.progress.fromSeeds += to - from;
      runStart = -1;
    };
    try {
      for (let k = 0; k < t.count; k++) {
        if (matches(k)) {
          if (runStart < 0) runStart = k;
          continue;
        }
        await flush(k);
        this.seedMismatches++;
        const from = this.opts.remote ? 'fetching it remotely' : 'and there is no remote source';
        this.opts.onWarning?.(
          `seed ${seed.path}: chunk ${this.index.idHex(t.first + k)} at offset ${sIdx.start(t.seedFirst + k)} does not match its ID; ${from}`,
        );
        addToRuns(bad, t.first + k);
      }
      await flush(t.count);
    } finally {
      shared.drop();
    }
    if (bad.length > 0) await this.fetchRemote(bad);
  }

  private async zeroTask(t: Extract<Task, { kind: 'zero' }>): Promise<void> {
    const idx = this.index;
    for (let i = t.first; i < t.first + t.count; i++) {
      const size = idx.chunkSize(i);
      this.opts.progress.fromZero += size;
      if (this.opts.sink.zeroFilled && !this.sources.has(i)) {
        this.opts.progress.done += size;
        continue;
      }
      if (this.zeros.length < size) this.zeros = Buffer.alloc(size);
      await this.put(i, 1, this.zeros.subarray(0, size));
    }
  }

  private async selfTask(t: Extract<Task, { kind: 'self' }>): Promise<void> {
    for (let k = 0; k < t.count; k++) {
      const i = t.first + k;
      const j = t.source + k;
      const src = this.sources.get(j)!;
      await unlessAborted(src.promise, this.ctl.signal);
      let data = this.retained.get(j) ?? null;
      if (!data) {
        const back = await this.opts.sink.readBack(j);
        data = back && this.verify(i, back) ? back : null;
      }
      if (--src.refs === 0 && this.retained.has(j)) {
        this.retainedBytes -= this.retained.get(j)!.length;
        this.retained.delete(j);
      }
      if (!data) {
        await this.fetchRemote([{ first: i, count: 1 }]);
        continue;
      }
      this.opts.progress.fromSelf += data.length;
      await this.put(i, 1, data);
    }
  }

  /** Fetches chunks from the remote source (missing ones, and seed chunks that did not verify). */
  private async fetchRemote(runs: Run[]): Promise<void> {
    const idx = this.index;
    const { remote, progress } = this.opts;
    if (!remote)
      throw new ChunkMissingError(
        idx.idHex(runs[0].first),
        `any source: offset ${idx.start(runs[0].first)} is not available locally and there is no remote source`,
      );
    const writes: Promise<unknown>[] = [];
    const syncNet = (): void => {
      progress.networkBytes = remote.stats.bytes;
      progress.networkRequests = remote.stats.requests;
    };
    const pool = this.opts.chunkBuffers;
    try {
      await remote
        .fetch(
          runs,
          (i, data) => {
            progress.fromNetwork += data.length;
            syncNet();
            const write = this.put(i, 1, data, pool && (() => pool.give(data)));
            // A write that fails while chunks are still being read is reported below, not as an unhandled rejection.
            write.catch(() => {});
            writes.push(write);
          },
          this.ctl.signal,
          this.drain,
        )
        .finally(syncNet);
    } finally {
      await Promise.allSettled(writes);
    }
    await Promise.all(writes);
  }
}
