// A ChunkStore over plain images: it knows where chunks live in images whose
// indexes it was shown (`addImage`), and fetches them with HTTP byte ranges,
// coalescing adjacent chunks of one batch into one range request. This is how
// the fleet proxy fetches by chunk ID (store and batch endpoints, assembly)
// from an upstream that has images and indexes but no chunk store. Like every
// ChunkStore it returns verified data only: each chunk is hashed against the
// ID it was asked for (an image that changed under its index is caught here).
import type { HttpClient } from '../fetch/http-client.js';
import { RangeFetcher } from '../fetch/range-fetcher.js';
import { ChunkVerifyError, OriginError } from '../errors.js';
import { chunkId, toHex } from '../format/digest.js';
import type { ChunkIndex } from '../format/caibx.js';
import type { ChunkRequest, ChunkStore } from '../store/types.js';
import { concurrentEmit } from '../util/async-pool.js';

interface Location {
  url: string;
  offset: number;
  size: number;
}

export interface ImageRangeStoreOptions {
  client: HttpClient;
  /** Largest single range request (default 8 MiB); longer runs are split. */
  maxRangeBytes?: number;
  /** Parallel range requests per getMany (default 4). */
  concurrency?: number;
}

export class ImageRangeStore implements ChunkStore {
  readonly location = 'byte ranges of upstream images';
  private readonly client: HttpClient;
  private readonly maxRangeBytes: number;
  private readonly concurrency: number;
  /** Chunk ID (hex) → where it was last seen. Chunks shared by versions need one location. */
  private readonly locations = new Map<string, Location>();
  private readonly images = new Map<string, ChunkIndex>();

  constructor(opts: ImageRangeStoreOptions) {
    this.client = opts.client;
    this.maxRangeBytes = opts.maxRangeBytes ?? 8 * 1024 * 1024;
    this.concurrency = opts.concurrency ?? 4;
  }

  /** Records where the chunks of `index` are: in the image at `url`. Idempotent per (url, index). */
  addImage(url: string, index: ChunkIndex): void {
    if (this.images.get(url) === index) return;
    this.images.set(url, index);
    for (let i = 0; i < index.count; i++) {
      this.locations.set(index.idHex(i), { url, offset: index.start(i), size: index.chunkSize(i) });
    }
  }

  /** The chunk, verified; null when no image shown holds it; ChunkVerifyError when the image's bytes are not it. */
  async get(req: ChunkRequest, signal?: AbortSignal): Promise<Buffer | null> {
    for await (const { data } of this.getMany([req], signal)) return data;
    return null;
  }

  async has(id: Uint8Array): Promise<boolean> {
    return this.locations.has(toHex(id));
  }

  /**
   * Verified chunks, in any order; chunks of unknown location are not yielded. Chunks whose
   * image bytes are not them are not yielded either: once the rest are out, the first of them
   * is thrown as a ChunkVerifyError (an upstream that changed is an error, not a miss).
   */
  async *getMany(reqs: ChunkRequest[], signal?: AbortSignal): AsyncGenerator<{ index: number; data: Buffer }> {
    let bad: ChunkVerifyError | undefined;
    for await (const { index, data, wrong } of this.fetchMany(reqs, signal)) {
      if (!wrong) yield { index, data };
      else bad ??= new ChunkVerifyError(toHex(reqs[index].id), wrong, this.locations.get(toHex(reqs[index].id))?.url);
    }
    if (bad) throw bad;
  }

  /** Every located chunk with its bytes, and why they are not the chunk asked for (undefined when they are). */
  private async *fetchMany(
    reqs: ChunkRequest[],
    signal?: AbortSignal,
  ): AsyncGenerator<{ index: number; data: Buffer; wrong?: string }> {
    const located = reqs
      .map((req, index) => ({ index, loc: this.locations.get(toHex(req.id)) }))
      .filter((r): r is { index: number; loc: Location } => r.loc !== undefined)
      .sort((a, b) => (a.loc.url < b.loc.url ? -1 : a.loc.url > b.loc.url ? 1 : a.loc.offset - b.loc.offset));
    // Runs of chunks that are contiguous in one image, each at most maxRangeBytes.
    const runs: { url: string; start: number; end: number; parts: typeof located }[] = [];
    for (const r of located) {
      const last = runs[runs.length - 1];
      if (
        last &&
        last.url === r.loc.url &&
        last.end === r.loc.offset &&
        r.loc.offset + r.loc.size - last.start <= this.maxRangeBytes
      ) {
        last.end = r.loc.offset + r.loc.size;
        last.parts.push(r);
      } else if (last && last.url === r.loc.url && last.end > r.loc.offset) {
        last.parts.push(r); // the same chunk requested twice
      } else {
        runs.push({ url: r.loc.url, start: r.loc.offset, end: r.loc.offset + r.loc.size, parts: [r] });
      }
    }
    type Part = { index: number; data: Buffer; wrong?: string };
    yield* concurrentEmit<(typeof runs)[number], Part>(runs, this.concurrency, async (run, emit) => {
      const body = await this.fetchRange(run.url, run.start, run.end, signal);
      const digest = this.images.get(run.url)!.digest;
      for (const p of run.parts) {
        const data = body.subarray(p.loc.offset - run.start, p.loc.offset - run.start + p.loc.size);
        emit({ index: p.index, data, wrong: check(reqs[p.index], data, digest) });
      }
    });
  }

  /** One single-range request through the shared RangeFetcher (which validates status, Content-Range and length). */
  private fetchRange(url: string, start: number, end: number, signal?: AbortSignal): Promise<Buffer> {
    const fetcher = new RangeFetcher(this.client, url, this.images.get(url)!.size);
    return this.client.withRetry(async () => {
      const body = Buffer.allocUnsafe(end - start);
      let got = 0;
      await fetcher.fetch(
        [{ start, end }],
        (offset, data) => {
          data.copy(body, offset - start);
          got += data.length;
        },
        signal,
      );
      if (got !== end - start)
        throw new OriginError(`GET ${url}: truncated range (${got} of ${end - start} bytes)`, { transient: true });
      return body;
    }, signal);
  }
}

/** Why `data` is not the chunk `req` asks for, or undefined when it is. */
function check(req: ChunkRequest, data: Buffer, digest: ChunkIndex['digest']): string | undefined {
  if (req.size !== undefined && data.length !== req.size) return `has ${data.length} bytes, the index says ${req.size}`;
  if (!chunkId(digest, data).equals(req.id))
    return 'content does not match its ID (the upstream image changed under its index)';
  return undefined;
}
