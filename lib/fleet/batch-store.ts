// Client of a deltad proxy's chunk endpoints (docs/FLEET.md): single chunks
// from its casync store path, many chunks per request from its batch endpoint
// (lib/batch-wire.ts), so a sidecar fetching thousands of chunks makes a
// handful of requests. Everything yielded is decoded and verified here.
import { concurrentEmit } from '../util/async-pool.js';
import { HttpClient } from '../fetch/http-client.js';
import { OriginError } from '../errors.js';
import { toHex } from '../format/digest.js';
import { BATCH_CONTENT_TYPE, BATCH_REQUEST_TYPE, FrameType, MAX_BATCH_IDS, readFrames } from './batch-wire.js';
import type { ChunkRequest, ChunkStore } from '../store/types.js';
import { HttpStore } from '../store/http-store.js';
import { decodeChunk, resolveFormat, type StoreFormat } from '../store/chunk-file.js';

/** What `GET /.deltad/info` says about a deltad proxy. */
export interface ProxyInfo {
  service: 'deltad-proxy';
  version: string;
  /** Path of the casync chunk store, e.g. "/.deltad/store/". */
  store: string;
  /** Path of the batch endpoint. */
  batch: string;
  maxBatch: number;
}

export interface BatchStoreOptions extends StoreFormat {
  client?: HttpClient;
  /** IDs per batch request (default and maximum: what the proxy announces). */
  batchSize?: number;
  /** Batch requests in flight at once (default 2). */
  parallel?: number;
}

/**
 * Asks `origin` (any URL on the server) whether it is a deltad proxy. Returns
 * its info, or null for anything else (404, not JSON, unreachable).
 */
export async function detectDeltadProxy(
  origin: string,
  client: HttpClient,
  signal?: AbortSignal,
): Promise<ProxyInfo | null> {
  try {
    const res = await client.getBuffer(new URL('/.deltad/info', origin).href, {
      signal,
      maxBytes: 64 * 1024,
      gate: false,
    });
    if (res.status !== 200) return null;
    const info = JSON.parse(res.body.toString('utf8')) as ProxyInfo;
    if (info.service !== 'deltad-proxy' || typeof info.batch !== 'string' || typeof info.store !== 'string')
      return null;
    return info;
  } catch {
    return null;
  }
}

/** A BatchStore when `origin` is a deltad proxy, else null: the sidecar's automatic choice. */
export async function openProxyStore(
  origin: string,
  opts: BatchStoreOptions & { signal?: AbortSignal } = {},
): Promise<BatchStore | null> {
  const client = opts.client ?? new HttpClient();
  const info = await detectDeltadProxy(origin, client, opts.signal);
  if (!info) {
    if (!opts.client) await client.close();
    return null;
  }
  return new BatchStore(origin, info, { ...opts, client });
}

export class BatchStore implements ChunkStore {
  readonly location: string;
  private readonly batchUrl: string;
  private readonly single: HttpStore;
  private readonly client: HttpClient;
  private readonly format: Required<StoreFormat>;
  private readonly batchSize: number;
  private readonly parallel: number;

  constructor(origin: string, info: ProxyInfo, opts: BatchStoreOptions = {}) {
    this.client = opts.client ?? new HttpClient();
    this.batchUrl = new URL(info.batch, origin).href;
    this.location = this.batchUrl;
    this.single = new HttpStore(new URL(info.store, origin).href, { ...opts, client: this.client });
    this.format = resolveFormat(opts);
    this.batchSize = Math.max(1, Math.min(opts.batchSize ?? info.maxBatch, info.maxBatch, MAX_BATCH_IDS));
    this.parallel = opts.parallel ?? 2;
  }

  get(req: ChunkRequest, signal?: AbortSignal): Promise<Buffer | null> {
    return this.single.get(req, signal);
  }

  has(id: Uint8Array, signal?: AbortSignal): Promise<boolean> {
    return this.single.has(id, signal);
  }

  /** Splits the requests into batches, runs `parallel` of them at once, yields chunks as frames arrive. */
  async *getMany(reqs: ChunkRequest[], signal?: AbortSignal): AsyncGenerator<{ index: number; data: Buffer }> {
    const batches: number[][] = [];
    for (let i = 0; i < reqs.length; i += this.batchSize)
      batches.push(Array.from({ length: Math.min(this.batchSize, reqs.length - i) }, (_, k) => i + k));
    yield* concurrentEmit<number[], { index: number; data: Buffer }>(batches, this.parallel, (batch, emit) =>
      this.fetchBatch(reqs, batch, (index, data) => emit({ index, data }), signal),
    );
  }

  /**
   * One batch, retried for what has not arrived yet when the response breaks
   * off (transient errors). ERROR frames fail the batch after its other chunks.
   */
  private async fetchBatch(
    reqs: ChunkRequest[],
    positions: number[],
    emit: (index: number, data: Buffer) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    const byId = new Map<string, number[]>();
    for (const p of positions) {
      const hex = toHex(reqs[p].id);
      byId.set(hex, [...(byId.get(hex) ?? []), p]);
    }
    const answered = new Set<string>();
    await this.client.withRetry(async () => {
      const want = [...byId.keys()].filter((hex) => !answered.has(hex));
      if (want.length === 0) return;
      const res = await this.client.request(this.batchUrl, {
        method: 'POST',
        headers: { 'content-type': BATCH_REQUEST_TYPE },
        body: Buffer.concat(want.map((hex) => Buffer.from(hex, 'hex'))),
        signal,
      });
      if (res.statusCode !== 200 || !String(res.headers['content-type'] ?? '').startsWith(BATCH_CONTENT_TYPE)) {
        await res.body.dump();
        throw new OriginError(
          `POST ${this.batchUrl}: HTTP ${res.statusCode} (${res.headers['content-type'] ?? 'no content type'})`,
          {
            status: res.statusCode,
            transient: res.statusCode >= 500 || res.statusCode === 429,
          },
        );
      }
      const errors: string[] = [];
      try {
        for await (const frame of readFrames(res.body, this.batchUrl)) {
          const hex = toHex(frame.id);
          const where = byId.get(hex);
          if (!where || answered.has(hex))
            throw new OriginError(`${this.batchUrl}: frame for chunk ${hex} that was not asked for (or twice)`);
          answered.add(hex);
          if (frame.type === FrameType.Missing) continue;
          if (frame.type === FrameType.Error) {
            errors.push(`${hex}: ${frame.payload.toString('utf8')}`);
            continue;
          }
          const req = reqs[where[0]];
          if (req.size !== undefined && frame.size !== req.size)
            throw new OriginError(
              `${this.batchUrl}: chunk ${hex} announced as ${frame.size} bytes, the index says ${req.size}`,
            );
          const data = decodeChunk(frame.payload, true, req, this.format, this.batchUrl);
          for (const p of where) emit(p, data);
        }
      } finally {
        res.body.destroy();
      }
      if (errors.length)
        throw new OriginError(
          `${this.batchUrl}: the proxy could not fetch ${errors.length} chunk(s): ${errors.slice(0, 3).join('; ')}`,
        );
    }, signal);
  }

  async close(): Promise<void> {
    await this.single.close();
  }
}
