// Where missing chunks come from: byte ranges of the target image, or chunk
// stores. Both hand the assembler verified chunk bytes, retry transient
// failures with backoff, and retry a chunk with wrong content once before
// failing with its ID. A range source that finds the server does not honour
// ranges can hand over to a store source (auto mode).
import { setTimeout as sleep } from 'node:timers/promises';
import type { ChunkIndex } from '../format/caibx.js';
import { chunkId } from '../format/digest.js';
import { ChunkMissingError, ChunkVerifyError, OriginError, MultiRangeUnsupportedError, RangeUnsupportedError } from '../errors.js';
import { isTransient, type HttpClient } from '../fetch/http-client.js';
import { ChunkCollector, RangeFetcher, planRangeRequests, type FetchStats, type RangePlanOptions } from '../fetch/range-fetcher.js';
import type { ChunkStore } from '../store/types.js';
import type { BufferPool } from '../util/buffer-pool.js';

export interface Run {
  first: number;
  count: number;
}

export type Deliver = (i: number, data: Buffer) => void;

export interface RemoteSource {
  readonly kind: 'range' | 'store';
  readonly stats: FetchStats;
  /** Groups runs of missing chunks (ascending) into fetch tasks, none spanning more than maxSpan target bytes. */
  batches(runs: readonly Run[], maxSpan: number): Run[][];
  /**
   * Fetches the chunks of one batch; deliver receives each verified chunk once.
   * drain, when given, is awaited between network reads (write backpressure).
   */
  fetch(runs: readonly Run[], deliver: Deliver, signal: AbortSignal, drain?: () => Promise<void> | undefined): Promise<void>;
}

export interface RetryPolicy {
  /** Total attempts for transient failures. */
  attempts: number;
  retryBaseMs: number;
}

const chunksOf = (runs: readonly Run[]): number[] => runs.flatMap((r) => Array.from({ length: r.count }, (_, k) => r.first + k));

function runsOf(chunks: readonly number[]): Run[] {
  const runs: Run[] = [];
  for (const i of chunks) {
    const last = runs[runs.length - 1];
    if (last && last.first + last.count === i) last.count++;
    else runs.push({ first: i, count: 1 });
  }
  return runs;
}

function verifyChunk(index: ChunkIndex, i: number, data: Buffer): boolean {
  return data.length === index.chunkSize(i) && chunkId(index.digest, data).equals(index.id(i));
}

export class RangeSource implements RemoteSource {
  readonly kind = 'range';
  readonly fetcher: RangeFetcher;
  /** Cleared when the server turns out not to do multi-range. */
  multi: boolean;

  constructor(
    private readonly index: ChunkIndex,
    http: HttpClient,
    readonly url: string,
    private readonly retry: RetryPolicy,
    private readonly planOpts: Omit<RangePlanOptions, 'multi' | 'maxSpan'> & { multi?: boolean } = {},
    private readonly onWarning?: (m: string) => void,
    /** Takes over when the server ignores ranges (auto mode with a store). */
    private readonly fallback?: RemoteSource,
    /** Chunk buffers (the assembler hands them back once written). */
    private readonly buffers?: BufferPool,
  ) {
    this.fetcher = new RangeFetcher(http, url, index.size);
    this.multi = planOpts.multi ?? true;
  }

  /** This source's traffic, including a store it handed over to. */
  get stats(): FetchStats {
    const f = this.fallback?.stats;
    return f ? { requests: this.fetcher.stats.requests + f.requests, bytes: this.fetcher.stats.bytes + f.bytes } : this.fetcher.stats;
  }

  private handedOver = false;

  batches(runs: readonly Run[], maxSpan: number): Run[][] {
    return planRangeRequests(this.index, runs, { ...this.planOpts, multi: this.multi, maxSpan }).map((r) => r.chunks);
  }

  async fetch(runs: readonly Run[], deliver: Deliver, signal: AbortSignal, drain?: () => Promise<void> | undefined): Promise<void> {
    if (this.handedOver && this.fallback) return this.fallback.fetch(runs, deliver, signal, drain);
    let todo = chunksOf(runs);
    const wrongOnce = new Set<number>();
    let failures = 0;
    while (todo.length > 0) {
      signal.throwIfAborted();
      const wrong: number[] = [];
      const collector = new ChunkCollector(this.index, todo, (i, data) => {
        if (verifyChunk(this.index, i, data)) return deliver(i, data);
        if (wrongOnce.has(i)) throw new ChunkVerifyError(this.index.idHex(i), `at target offset ${this.index.start(i)} has the wrong content twice`, this.url);
        wrongOnce.add(i);
        wrong.push(i);
      }, this.buffers && ((n) => this.buffers!.take(n)));
      let error: unknown;
      try {
        for (const req of planRangeRequests(this.index, runsOf(todo), { ...this.planOpts, multi: this.multi })) {
          await this.fetcher.fetch(req.ranges, (off, data) => collector.write(off, data), signal, drain);
        }
      } catch (err) {
        error = err;
      }
      const left = [...collector.missing(), ...wrong].sort((a, b) => a - b);
      // Attempts count failures in a row: a connection that breaks after delivering chunks made progress.
      if (left.length < todo.length) failures = 0;
      if (error instanceof MultiRangeUnsupportedError) {
        this.multi = false;
        this.onWarning?.(`${error.message}; falling back to single-range requests`);
      } else if (error instanceof RangeUnsupportedError && this.fallback) {
        this.handedOver = true;
        this.onWarning?.(`${error.message}; fetching from the chunk store instead`);
        return this.fallback.fetch(runsOf(left), deliver, signal, drain);
      } else if (error) {
        if (!isTransient(error) || signal.aborted || ++failures >= this.retry.attempts) throw error;
        await sleep(this.retry.retryBaseMs * failures, undefined, { signal });
      } else if (left.length > 0 && wrong.length === 0) {
        // A well-formed answer that left out asked-for bytes: the server is not trustworthy.
        if (++failures >= this.retry.attempts) {
          throw new OriginError(`${this.url}: the server did not send chunk ${this.index.idHex(left[0])} at offset ${this.index.start(left[0])}`);
        }
      }
      todo = left;
    }
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
  ) {
    this.httpBytesBase = http.stats.bytes;
  }

  /** Requests are counted here (one per get/getMany to an HTTP store); bytes come from the client, so a client shared with concurrent work over-counts. */
  get stats(): FetchStats {
    return { requests: this.requests, bytes: this.http.stats.bytes - this.httpBytesBase, localBytes: this.localBytes };
  }

  private isRemote(store: ChunkStore): boolean {
    return /^https?:/i.test(store.location);
  }

  private count(store: ChunkStore): void {
    if (this.isRemote(store)) this.requests++;
  }

  /** Hands a chunk on, counting the bytes that came from a local directory. */
  private take(store: ChunkStore, deliver: Deliver, i: number, data: Buffer): void {
    if (!this.isRemote(store)) this.localBytes += data.length;
    deliver(i, data);
  }

  batches(runs: readonly Run[]): Run[][] {
    const all = chunksOf(runs);
    const size = this.stores.some((s) => s.getMany) ? this.batchSize : 1;
    const out: Run[][] = [];
    for (let k = 0; k < all.length; k += size) out.push(runsOf(all.slice(k, k + size)));
    return out;
  }

  async fetch(runs: readonly Run[], deliver: Deliver, signal: AbortSignal): Promise<void> {
    let todo = chunksOf(runs);
    for (const store of this.stores) {
      if (todo.length === 0) return;
      todo = await this.fromStore(store, todo, deliver, signal);
    }
    if (todo.length > 0) throw new ChunkMissingError(this.index.idHex(todo[0]), this.stores.map((s) => s.location).join(', '));
  }

  /** Returns the chunks this store did not have. */
  private async fromStore(store: ChunkStore, chunks: number[], deliver: Deliver, signal: AbortSignal): Promise<number[]> {
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
      const data = await this.getVerifiedOnce(store, chunks[k], signal);
      if (data) this.take(store, deliver, chunks[k], data);
      else rest.push(chunks[k]);
    }
    return rest;
  }

  /** store.get verifies; wrong content is retried once, then fails naming the chunk. */
  private async getVerifiedOnce(store: ChunkStore, i: number, signal: AbortSignal): Promise<Buffer | null> {
    const req = { id: this.index.id(i), size: this.index.chunkSize(i) };
    try {
      this.count(store);
      return await store.get(req, signal);
    } catch (err) {
      if (!(err instanceof ChunkVerifyError)) throw err;
      this.count(store);
      return store.get(req, signal);
    }
  }
}
