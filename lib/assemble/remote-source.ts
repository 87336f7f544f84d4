// Where missing chunks come from: byte ranges of the target image, or chunk
// stores. Both hand the assembler verified chunk bytes, retry transient
// failures with backoff, and retry a chunk with wrong content once before
// failing with its ID. A range source that finds the server does not honour
// ranges can hand over to a store source (auto mode).
import type { ChunkIndex } from '../format/caibx.js';
import { chunkId } from '../format/digest.js';
import { ChunkMissingError, ChunkVerifyError } from '../errors.js';
import type { HttpClient } from '../fetch/http-client.js';
import { RangeFetcher, type FetchStats } from '../fetch/range-fetcher.js';
import { inFlightFor } from '../fetch/link-monitor.js';
import { defaultCostModel, type CostModel } from '../plan/cost.js';
import type { ChunkStore, TakeBuffer } from '../store/types.js';
import type { BufferPool } from '../util/buffer-pool.js';
import { addToRuns, runsOf, unitsOf, type Run } from '../util/runs.js';
import { fetchUnits, type RetryPolicy, type UnitSpec } from './unit-fetch.js';

export type { Run };

export type Deliver = (i: number, data: Buffer) => void;

export interface RemoteSource {
  readonly kind: 'range' | 'store';
  readonly stats: FetchStats;
  /**
   * Groups runs of missing chunks (ascending) into fetch tasks, none spanning more than maxSpan target bytes; a
   * source may make them as they are iterated (once).
   */
  batches(runs: readonly Run[], maxSpan: number): Iterable<Run[]>;
  /**
   * Fetches the chunks of one batch; deliver receives each verified chunk once.
   * drain, when given, is awaited between network reads (write backpressure).
   */
  fetch(
    runs: readonly Run[],
    deliver: Deliver,
    signal: AbortSignal,
    drain?: () => Promise<void> | undefined,
  ): Promise<void>;
  /** Requests worth keeping in flight now (at least `base`): bandwidth-delay product over the request size. */
  inFlight?(base: number): number;
}

/** Most requests in flight for one source on any link (HTTP/2 streams; HTTP/1.1 queues at its pool). */
const MAX_IN_FLIGHT = 64;

/** Slots for a source from its client's link estimate and its own mean request size so far. */
function inFlightOf(http: HttpClient, stats: FetchStats, base: number): number {
  if (stats.requests < 4) return base;
  const bounds = { min: base, max: Math.max(base, MAX_IN_FLIGHT) };
  return inFlightFor(http.linkEstimate(), stats.bytes / stats.requests, bounds);
}

export type { RetryPolicy } from './unit-fetch.js';

function verifyChunk(index: ChunkIndex, i: number, data: Buffer): boolean {
  return data.length === index.chunkSize(i) && chunkId(index.digest, data).equals(index.id(i));
}

export interface RangeSourceOptions {
  retry: RetryPolicy;
  /** Try multi-range requests (default true; cleared when the server refuses them). */
  multi?: boolean;
  /** Prices requests and gaps (default: the default link). */
  cost?: CostModel;
  /** Requests in flight, for pricing (default 8). */
  parallelism?: number;
  onWarning?: (m: string) => void;
  /** Takes over when the server ignores ranges (auto mode with a store). */
  fallback?: RemoteSource;
  /** Chunk buffers (the assembler hands them back once written). */
  buffers?: BufferPool;
  /** The image's size, when `index` is only the start of its table (default: the index's size). */
  size?: number;
  /** The image's first bytes, fetched already (the range probe): chunks within them are not asked again. */
  start?: Buffer;
}

export class RangeSource implements RemoteSource {
  readonly kind = 'range';
  readonly fetcher: RangeFetcher;
  /** Cleared when the server turns out not to do multi-range. */
  readonly state: { multi: boolean };
  private readonly cost: CostModel;
  private readonly parallelism: number;
  private handedOver = false;

  constructor(
    private readonly index: ChunkIndex,
    private readonly http: HttpClient,
    readonly url: string,
    private readonly opts: RangeSourceOptions,
  ) {
    this.fetcher = new RangeFetcher(http, url, opts.size ?? index.size);
    this.state = { multi: opts.multi ?? true };
    this.cost = opts.cost ?? defaultCostModel;
    this.parallelism = opts.parallelism ?? 8;
  }

  get multi(): boolean {
    return this.state.multi;
  }

  /** This source's traffic, including a store it handed over to. */
  get stats(): FetchStats {
    const f = this.opts.fallback?.stats;
    return f
      ? { requests: this.fetcher.stats.requests + f.requests, bytes: this.fetcher.stats.bytes + f.bytes }
      : this.fetcher.stats;
  }

  inFlight(base: number): number {
    if (this.handedOver && this.opts.fallback?.inFlight) return this.opts.fallback.inFlight(base);
    return inFlightOf(this.http, this.fetcher.stats, base);
  }

  /**
   * One batch per range request, planned as the assembler's queue reaches it: a 4 GiB image's requests with their
   * ranges, all at once, were held for the whole update. The plan is fixed when iteration starts (multi-range or
   * not): a refusal later on is handled per batch, as fetch() plans its chunks again.
   */
  *batches(runs: readonly Run[], maxSpan: number): Generator<Run[]> {
    for (const r of this.cost.requests(this.index, runs, this.state.multi, this.parallelism, { maxSpan }))
      yield r.chunks;
  }

  async fetch(
    runs: readonly Run[],
    deliver: Deliver,
    signal: AbortSignal,
    drain?: () => Promise<void> | undefined,
  ): Promise<void> {
    const { index, url, opts } = this;
    const fallback = opts.fallback;
    if (this.handedOver && fallback) return fallback.fetch(runs, deliver, signal, drain);
    const buffers = opts.buffers;
    let units = unitsOf(runs);
    const start = opts.start;
    if (start && units.length > 0 && index.end(units[0]) <= start.length) {
      // Verified like any answer; one that does not match (the image changed since) is simply fetched.
      units = units.filter((i) => {
        if (index.end(i) > start.length) return true;
        const data = start.subarray(index.start(i), index.end(i));
        if (!verifyChunk(index, i, data)) return true;
        deliver(i, buffers ? buffers.adopt(data) : Buffer.from(data));
        return false;
      });
      if (units.length === 0) return;
    }
    /** Chunks the range URL sent wrong once, and those wrong twice that the chunk store takes over. */
    const wrongOnce = new Set<number>();
    const forStore: number[] = [];
    const spec: UnitSpec = {
      layout: index,
      plan: (units, multi) => this.cost.requests(index, runsOf(units), multi, this.parallelism),
      accept: (i, data) => {
        if (verifyChunk(index, i, data)) return void deliver(i, data);
        buffers?.give(data); // wrong bytes: nobody else has this buffer
        const where = `at target offset ${index.start(i)}`;
        if (!wrongOnce.has(i) || !fallback) {
          wrongOnce.add(i);
          return new ChunkVerifyError(index.idHex(i), `${where} has the wrong content twice`, url);
        }
        // Per chunk, not per update: another source may have it intact.
        opts.onWarning?.(
          `chunk ${index.idHex(i)} ${where} has the wrong content twice (from ${url}); ` +
            'fetching it from the chunk store',
        );
        forStore.push(i);
        return undefined;
      },
      describe: (i) => `chunk ${index.idHex(i)} at offset ${index.start(i)}`,
      alloc: buffers && ((n) => buffers.take(n)),
      free: buffers && ((b) => buffers.give(b)),
    };
    await fetchUnits(this.fetcher, spec, units, {
      retry: opts.retry,
      state: this.state,
      signal,
      drain,
      onWarning: opts.onWarning,
      handOver:
        fallback &&
        (async (err, left) => {
          this.handedOver = true;
          opts.onWarning?.(`${err.message}; fetching from the chunk store instead`);
          await fallback.fetch(runsOf([...left, ...forStore.splice(0)].sort((a, b) => a - b)), deliver, signal, drain);
        }),
    });
    if (forStore.length > 0) await fallback!.fetch(runsOf(forStore.sort((a, b) => a - b)), deliver, signal, drain);
  }
}

export class StoreSource implements RemoteSource {
  readonly kind = 'store';
  /** Bytes received by the client when this source was made (stores count into the client's stats). */
  private readonly httpBytesBase: number;
  private requests = 0;
  private localBytes = 0;

  constructor(
    private readonly index: ChunkIndex,
    private readonly stores: readonly ChunkStore[],
    /** The client HTTP stores use: its counters give the network bytes. */
    private readonly http: HttpClient,
    private readonly batchSize = 32,
    /** Told about a chunk a store answered wrongly twice (the next store is asked). */
    private readonly onWarning?: (m: string) => void,
    /** Chunk buffers the decoded chunks are copied into (the assembler hands them back once written). */
    private readonly buffers?: BufferPool,
  ) {
    this.httpBytesBase = http.stats.bytes;
    this.takeBuffer = buffers && ((n) => buffers.take(n));
  }

  /** Where stores decode chunks: the pool's buffers. */
  private readonly takeBuffer: TakeBuffer | undefined;

  /** Requests are counted here (one per get/getMany to an HTTP store); bytes come from the client, so a client shared with concurrent work over-counts. */
  get stats(): FetchStats {
    return { requests: this.requests, bytes: this.http.stats.bytes - this.httpBytesBase, localBytes: this.localBytes };
  }

  private isRemote(store: ChunkStore): boolean {
    return /^https?:/i.test(store.location);
  }

  inFlight(base: number): number {
    return inFlightOf(this.http, this.stats, base);
  }

  private count(store: ChunkStore): void {
    if (this.isRemote(store)) this.requests++;
  }

  /**
   * Hands a chunk on, counting the bytes that came from a local directory. Stores decode into the pool's buffers
   * (reused after the write); a chunk that came in a fresh buffer (a batch, a store that does not take buffers)
   * would live through the write and so wait for a full collection: copied into a pool buffer, it dies young.
   */
  private take(store: ChunkStore, deliver: Deliver, i: number, data: Buffer): void {
    if (!this.isRemote(store)) this.localBytes += data.length;
    deliver(i, this.buffers ? this.buffers.adopt(data) : data);
  }

  /**
   * `batchSize` chunks a batch with a store that takes batches, else one. Made as they are iterated: a 4 GiB image
   * can miss tens of thousands of chunks, and a task and its runs each for all of them at once were megabytes.
   */
  *batches(runs: readonly Run[]): Generator<Run[]> {
    const size = this.stores.some((s) => s.getMany) ? this.batchSize : 1;
    let batch: Run[] = [];
    let n = 0;
    for (const r of runs) {
      for (let i = r.first; i < r.first + r.count; i++) {
        addToRuns(batch, i);
        if (++n === size) {
          yield batch;
          batch = [];
          n = 0;
        }
      }
    }
    if (n > 0) yield batch;
  }

  async fetch(runs: readonly Run[], deliver: Deliver, signal: AbortSignal): Promise<void> {
    let todo = unitsOf(runs);
    /** Chunks some store answered wrongly (oversized, garbage, wrong content) twice: the last such error. */
    const failed = new Map<number, ChunkVerifyError>();
    for (const store of this.stores) {
      if (todo.length === 0) return;
      todo = await this.fromStore(store, todo, deliver, signal, failed);
    }
    if (todo.length === 0) return;
    const bad = failed.get(todo[0]);
    if (bad)
      throw new ChunkVerifyError(
        this.index.idHex(todo[0]),
        `could not be fetched intact from any source (${bad.message}, also when asked again)`,
      );
    throw new ChunkMissingError(this.index.idHex(todo[0]), this.stores.map((s) => s.location).join(', '));
  }

  /** Returns the chunks this store did not have or could not give intact. */
  private async fromStore(
    store: ChunkStore,
    chunks: number[],
    deliver: Deliver,
    signal: AbortSignal,
    failed: Map<number, ChunkVerifyError>,
  ): Promise<number[]> {
    const reqs = chunks.map((i) => ({ id: this.index.id(i), size: this.index.chunkSize(i) }));
    const found = new Set<number>();
    if (store.getMany && chunks.length > 1) {
      this.count(store);
      for await (const { index, data } of store.getMany(reqs, signal)) {
        if (found.has(index) || !verifyChunk(this.index, chunks[index], data)) continue;
        found.add(index);
        this.take(store, deliver, chunks[index], data);
      }
      // Whatever the batch left out is tried one by one (it may be missing, or the batch may have been cut).
    }
    const rest: number[] = [];
    for (let k = 0; k < chunks.length; k++) {
      if (found.has(k)) continue;
      let data: Buffer | null;
      try {
        data = await this.getVerifiedOnce(store, chunks[k], signal);
      } catch (err) {
        if (!(err instanceof ChunkVerifyError)) throw err;
        // Per chunk, not per update: the next store may have it intact.
        failed.set(chunks[k], err);
        if (this.stores.indexOf(store) < this.stores.length - 1)
          this.onWarning?.(`${err.message}, also when asked again; trying the next store`);
        data = null;
      }
      if (data) this.take(store, deliver, chunks[k], data);
      else rest.push(chunks[k]);
    }
    return rest;
  }

  /** store.get verifies; an answer that is wrong (oversized, garbage, other content) is asked for once more. */
  private async getVerifiedOnce(store: ChunkStore, i: number, signal: AbortSignal): Promise<Buffer | null> {
    const req = { id: this.index.id(i), size: this.index.chunkSize(i) };
    try {
      this.count(store);
      return await store.get(req, signal, this.takeBuffer);
    } catch (err) {
      if (!(err instanceof ChunkVerifyError)) throw err;
      this.count(store);
      return store.get(req, signal, this.takeBuffer);
    }
  }
}
