// A read-through ChunkStore: the chunk cache first, then upstream sources in
// order, with single-flight (concurrent readers of one chunk share one upstream
// fetch) and batching (the misses of one getMany go upstream together, so a
// byte-range source can coalesce them). Everything it returns was verified.
import { concurrentEmit } from '../util/async-pool.js';
import type { ChunkCache } from './chunk-cache.js';
import type { ChunkRequest, ChunkStore } from '../store/types.js';

export interface CachingStoreOptions {
  /** Parallel get() calls against an upstream store without getMany (default 8). */
  concurrency?: number;
}

export class CachingStore implements ChunkStore {
  readonly location: string;
  private readonly concurrency: number;

  constructor(
    readonly cache: ChunkCache,
    private readonly upstream: ChunkStore[],
    opts: CachingStoreOptions = {},
  ) {
    this.location = `${cache.location} (cache of ${upstream.map((s) => s.location).join(', ')})`;
    this.concurrency = opts.concurrency ?? 8;
  }

  get(req: ChunkRequest, signal?: AbortSignal): Promise<Buffer | null> {
    return this.cache.getOrFetch(
      req,
      async () => {
        for await (const { data } of this.fetchUpstream([req], signal)) return { data };
        return null;
      },
      this.upstreamNames,
    );
  }

  private get upstreamNames(): string {
    return this.upstream.map((s) => s.location).join(', ');
  }

  async has(id: Uint8Array, signal?: AbortSignal): Promise<boolean> {
    if (await this.cache.has(id)) return true;
    for (const s of this.upstream) if (await s.has(id, signal)) return true;
    return false;
  }

  getMany(reqs: ChunkRequest[], signal?: AbortSignal): AsyncIterable<{ index: number; data: Buffer }> {
    return this.cache.getOrFetchMany(reqs, (missing) => this.fetchUpstream(missing, signal), this.upstreamNames);
  }

  /** Asks each upstream source in turn for what the previous ones did not have. */
  private async *fetchUpstream(
    reqs: ChunkRequest[],
    signal?: AbortSignal,
  ): AsyncGenerator<{ index: number; data: Buffer }> {
    let left = reqs.map((_, i) => i);
    for (const store of this.upstream) {
      if (left.length === 0) return;
      const found = new Set<number>();
      const sub = left.map((i) => reqs[i]);
      for await (const { index, data } of store.getMany
        ? store.getMany(sub, signal)
        : this.getEach(store, sub, signal)) {
        found.add(left[index]);
        yield { index: left[index], data };
      }
      left = left.filter((i) => !found.has(i));
    }
  }

  /** getMany for stores that only have get(): bounded parallel single fetches. */
  private async *getEach(
    store: ChunkStore,
    reqs: ChunkRequest[],
    signal?: AbortSignal,
  ): AsyncGenerator<{ index: number; data: Buffer }> {
    const positions = reqs.map((_, i) => i);
    yield* concurrentEmit<number, { index: number; data: Buffer }>(positions, this.concurrency, async (index, emit) => {
      const data = await store.get(reqs[index], signal);
      if (data) emit({ index, data });
    });
  }
}
