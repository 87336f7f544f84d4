// The fleet proxy's HTTP layer (`deltad proxy`, docs/FLEET.md). One lab server
// runs it; every sidecar's origin points at it. Routes:
//   /.deltad/info, /.deltad/status, /metrics     what it is, cache and traffic figures
//   /.deltad/store/<4hex>/<id>.cacnk             casync/desync chunk store (GET, HEAD)
//   /.deltad/batch                               many chunks in one framed response
//   anything else                                the same path on the configured upstream:
//     images with an index upstream -> assembled from the chunk cache (ranges, multi-range)
//     other files -> revalidated metadata cache, stale copy when the upstream is down
// Chunks come from the cache, else from the upstream (its chunk store when
// configured, else byte ranges of images whose indexes passed through), are
// verified, cached, and shared by concurrent clients (one upstream fetch each).
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { ServerResponse } from 'node:http';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { HttpClient } from '../lib/fetch/http-client.js';
import { ChunkCache } from '../lib/fleet/chunk-cache.js';
import { MetadataCache } from '../lib/fleet/metadata-cache.js';
import { CachingStore } from '../lib/fleet/caching-store.js';
import { ImageRangeStore } from '../lib/fleet/image-range-store.js';
import { HttpStore } from '../lib/store/http-store.js';
import { compressChunk } from '../lib/store/compression.js';
import { parseIndex, type ChunkIndex } from '../lib/format/caibx.js';
import { fromHex, isChunkIdHex, toHex } from '../lib/format/digest.js';
import { openExtractStream } from '../lib/delta/extract.js';
import { BATCH_CONTENT_TYPE, BATCH_MAGIC, FrameType, MAX_BATCH_IDS, encodeEnd, encodeFrame, parseIdList } from '../lib/fleet/batch-wire.js';
import type { ChunkRequest } from '../lib/store/types.js';
import { AllowList, ClientLimiter, refuseTarget } from './access.js';
import { MultipartFraming, parseRangeHeader, type Span } from './byte-ranges.js';
import { globToRegExp } from './glob.js';
import { newCounters, renderMetrics } from './metrics.js';
import { proxy as streamThrough } from './passthrough.js';
import { resolveOriginTarget, siblingUrl, UnsafePathError } from './origin-path.js';
import { findSha256 } from '../lib/format/sha256sums.js';
import { silentLogger, type Logger } from './log.js';
import { MetadataTooLargeError } from '../lib/errors.js';
import { VERSION } from '../lib/util/version.js';

export const PROXY_VERSION = VERSION;
/** Where the chunk store is served; desync/casync are pointed at `http://host:port/.deltad/store`. */
export const STORE_PREFIX = '/.deltad/store';
export const BATCH_PATH = '/.deltad/batch';
export const INFO_PATH = '/.deltad/info';
/** Response header on every proxy answer, so a sidecar can tell it talks to a deltad proxy. */
export const PROXY_HEADER = 'x-deltad-proxy';

export interface ProxyOptions {
  /** Upstream base URL (ends with '/'); request paths are resolved against it and nothing else. */
  upstream: string;
  /** The upstream's casync chunk store, if it has one; else chunks come as byte ranges of the images. */
  upstreamStore?: string;
  cacheDir: string;
  /** Chunk cache size limit in bytes. */
  cacheMaxBytes: number;
  /** Client networks allowed (CIDR). */
  allow: readonly string[];
  /** Concurrent requests per client address. */
  maxPerClient: number;
  /** File-name globs of images served from chunks when an index exists beside them. */
  imagePatterns: readonly string[];
  indexSuffix: string;
  /** Parallel upstream requests per assembly (default 8). */
  concurrency?: number;
  logger?: Logger;
  /** Replaces the cache's file writer (tests inject ENOSPC). */
  cacheWriteFile?: (path: string, data: Uint8Array) => Promise<void>;
}

export interface ProxyServer {
  app: FastifyInstance;
  cache: ChunkCache;
  http: HttpClient;
  status(): ProxyStatus;
  close(): Promise<void>;
}

export interface ProxyStatus {
  upstream: string;
  upstreamStore: string | null;
  cache: ChunkCache['stats'] & { hitRate: number };
  upstreamBytes: number;
  upstreamRequests: number;
  bytesServed: number;
  requests: number;
  refused: number;
  staleServed: number;
}

export async function createProxy(opts: ProxyOptions): Promise<ProxyServer> {
  const log = opts.logger ?? silentLogger;
  const http = new HttpClient({ connections: Math.max(8, opts.concurrency ?? 8) });
  const cache = await ChunkCache.open(join(opts.cacheDir, 'chunks'), { maxBytes: opts.cacheMaxBytes, writeFile: opts.cacheWriteFile });
  const meta = new MetadataCache(join(opts.cacheDir, 'meta'), http);
  const ranges = new ImageRangeStore({ client: http, concurrency: opts.concurrency });
  const upstreamStores = opts.upstreamStore ? [new HttpStore(opts.upstreamStore, { client: http }), ranges] : [ranges];
  const chunks = new CachingStore(cache, upstreamStores, { concurrency: opts.concurrency });
  const allow = new AllowList(opts.allow);
  const limiter = new ClientLimiter(opts.maxPerClient);
  const imageNames = opts.imagePatterns.map(globToRegExp);
  const counters = newCounters();
  const extra = { refused: 0, staleServed: 0, batchRequests: 0, storeRequests: 0 };
  /** Parsed indexes by URL, keyed on the body's digest so a new release replaces the old. */
  const indexes = new Map<string, { digest: string; index: ChunkIndex }>();

  const app = Fastify({ logger: false, bodyLimit: MAX_BATCH_IDS * 32 + 1024 });
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  app.addHook('onRequest', async (req, reply) => {
    counters.requests++;
    reply.header(PROXY_HEADER, PROXY_VERSION);
    const client = req.socket.remoteAddress;
    const refusal = refuseTarget(req.raw.method ?? '', req.raw.url ?? '', req.raw.rawHeaders);
    if (refusal) return refuse(reply, 400, refusal);
    if (!allow.allows(client)) return refuse(reply, 403, `client ${client} is not in the allow-list`);
    const release = limiter.acquire(client!);
    if (!release) {
      reply.header('retry-after', '1');
      return refuse(reply, 429, `client ${client} has ${opts.maxPerClient} requests in flight`);
    }
    reply.raw.once('close', release);
  });

  function refuse(reply: FastifyReply, status: number, why: string): FastifyReply {
    extra.refused++;
    counters.rejected++;
    log.warn(`refused (${status}): ${why}`);
    return reply.code(status).type('text/plain; charset=utf-8').send(`deltad proxy: ${why}\n`);
  }

  const status = (): ProxyStatus => {
    const s = cache.stats;
    return {
      upstream: opts.upstream,
      upstreamStore: opts.upstreamStore ?? null,
      cache: { ...s, hitRate: s.hits + s.misses ? s.hits / (s.hits + s.misses) : 0 },
      upstreamBytes: http.stats.bytes,
      upstreamRequests: http.stats.requests,
      bytesServed: counters.bytesServed,
      requests: counters.requests,
      refused: extra.refused,
      staleServed: extra.staleServed,
    };
  };

  app.get(INFO_PATH, async () => ({
    service: 'deltad-proxy',
    version: PROXY_VERSION,
    store: `${STORE_PREFIX}/`,
    batch: BATCH_PATH,
    maxBatch: MAX_BATCH_IDS,
  }));
  app.get('/.deltad/status', async () => status());
  app.get('/metrics', async (_req, reply) => {
    counters.originBytes = http.stats.bytes;
    counters.originRequests = http.stats.requests;
    const s = cache.stats;
    reply.type('text/plain; version=0.0.4');
    return renderMetrics(counters, {
      deltad_proxy_cache_bytes: ['Compressed bytes in the chunk cache', s.bytes],
      deltad_proxy_cache_limit_bytes: ['Chunk cache size limit', s.maxBytes],
      deltad_proxy_cache_chunks: ['Chunks in the cache', s.entries],
      deltad_proxy_cache_hits: ['Chunk cache hits since start', s.hits],
      deltad_proxy_cache_misses: ['Chunk cache misses since start', s.misses],
      deltad_proxy_upstream_chunk_fetches: ['Chunks fetched from the upstream', s.fetches],
      deltad_proxy_shared_fetches: ['Chunk requests that joined a fetch under way', s.joined],
      deltad_proxy_cache_write_errors: ['Failed cache writes (e.g. disk full)', s.writeErrors],
      deltad_proxy_cache_evictions: ['Chunks evicted (LRU)', s.evictions],
      deltad_proxy_stale_served: ['Metadata answers served stale (upstream down)', extra.staleServed],
    });
  });

  // The chunk store: exactly `<prefix>/<4hex>/<64hex>.cacnk`, like desync's chunk server.
  app.route({
    method: ['GET', 'HEAD'],
    url: `${STORE_PREFIX}/:dir/:file`,
    handler: async (req: FastifyRequest<{ Params: { dir: string; file: string } }>, reply) => {
      extra.storeRequests++;
      const { dir, file } = req.params;
      const hex = file.endsWith('.cacnk') ? file.slice(0, -6) : '';
      if (!isChunkIdHex(hex) || dir !== hex.slice(0, 4)) return reply.code(400).type('text/plain').send(`expected ${STORE_PREFIX}/<4hex>/<64hex>.cacnk\n`);
      const id = fromHex(hex);
      if (req.method === 'HEAD') {
        return reply.code((await chunks.has(id)) ? 200 : 404).send();
      }
      const body = await compressedChunk({ id });
      if (!body) return reply.code(404).type('text/plain').send(`chunk ${hex} not found\n`);
      counters.bytesServed += body.length;
      return reply.type('application/octet-stream').send(body);
    },
  });

  /** The .cacnk bytes of a chunk, verified first (a damaged cache file is dropped and fetched again), then read back or compressed. */
  async function compressedChunk(req: ChunkRequest): Promise<Buffer | null> {
    const hex = toHex(req.id);
    const data = await chunks.get(req);
    if (!data) return null;
    return (await cache.getCompressed(hex)) ?? compressChunk(data);
  }

  const batch = async (ids: Buffer[], reply: FastifyReply) => {
    extra.batchRequests++;
    const unique = [...new Map(ids.map((id) => [toHex(id), id])).values()];
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': BATCH_CONTENT_TYPE, 'cache-control': 'no-store', [PROXY_HEADER]: PROXY_VERSION });
    let frames = 0;
    const send = async (parts: Buffer[]) => {
      frames++;
      for (const p of parts) {
        counters.bytesServed += p.length;
        if (!res.write(p)) await new Promise<void>((r) => res.once('drain', r));
      }
    };
    res.write(BATCH_MAGIC);
    const done = new Set<number>();
    try {
      for await (const { index, data } of chunks.getMany(unique.map((id) => ({ id })))) {
        done.add(index);
        const body = (await cache.getCompressed(toHex(unique[index]))) ?? compressChunk(data);
        await send(encodeFrame(FrameType.Chunk, unique[index], data.length, body));
      }
      for (let i = 0; i < unique.length; i++) if (!done.has(i)) await send(encodeFrame(FrameType.Missing, unique[i], 0));
    } catch (err) {
      const msg = Buffer.from((err as Error).message);
      for (let i = 0; i < unique.length; i++) if (!done.has(i)) await send(encodeFrame(FrameType.Error, unique[i], 0, msg));
      log.warn(`batch: ${(err as Error).message}`);
    }
    res.end(encodeEnd(frames));
  };
  app.post(BATCH_PATH, async (req, reply) => {
    let ids: Buffer[];
    try {
      if (!Buffer.isBuffer(req.body)) throw new Error('batch request body must be application/octet-stream (raw 32-byte chunk IDs)');
      ids = parseIdList(req.body);
    } catch (err) {
      return reply.code(400).type('text/plain').send(`${(err as Error).message}\n`);
    }
    await batch(ids, reply);
  });
  app.get(BATCH_PATH, async (req: FastifyRequest<{ Querystring: { ids?: string } }>, reply) => {
    const list = (req.query.ids ?? '').split(',').filter(Boolean);
    if (list.length === 0 || list.length > MAX_BATCH_IDS || !list.every(isChunkIdHex)) {
      return reply.code(400).type('text/plain').send(`expected ?ids=<64hex>,<64hex>,... (1 to ${MAX_BATCH_IDS} lowercase chunk IDs)\n`);
    }
    await batch(list.map(fromHex), reply);
  });

  // Everything else: the same path on the upstream.
  app.route({
    method: ['GET', 'HEAD'],
    url: '/*',
    handler: async (req, reply) => {
      let target;
      try {
        target = resolveOriginTarget(opts.upstream, req.raw.url ?? '');
      } catch (err) {
        if (err instanceof UnsafePathError) return refuse(reply, 400, err.message);
        throw err;
      }
      if (target.relPath.startsWith('.deltad/')) return reply.code(404).type('text/plain').send('unknown deltad endpoint\n');
      const ac = new AbortController();
      reply.raw.once('close', () => ac.abort());
      if (imageNames.some((re) => re.test(target.name))) {
        const index = await imageIndex(target.url + opts.indexSuffix, ac.signal);
        if (index) return serveImage(req, reply, target.url, index, ac.signal);
        reply.hijack();
        // Passed through whole, but checked like any image: against its SHA256SUMS entry, when there is one.
        const sha256 = req.method === 'GET' ? listedSha256(target.url, target.name, ac.signal) : undefined;
        return streamThrough({ http, counters, mode: 'proxy' }, req.method as 'GET' | 'HEAD', target.url, reply.raw, ac.signal, sha256);
      }
      let entry;
      try {
        entry = await meta.fetch(target.url, ac.signal);
      } catch (err) {
        if (err instanceof MetadataTooLargeError) {
          reply.hijack();
          return streamThrough({ http, counters, mode: 'proxy' }, req.method as 'GET' | 'HEAD', target.url, reply.raw, ac.signal);
        }
        log.warn(`${target.url}: ${(err as Error).message}`);
        return reply.code(502).type('text/plain').send(`deltad proxy: upstream unreachable and no cached copy: ${(err as Error).message}\n`);
      }
      // An index passing through tells where its image's chunks are (store and batch requests by ID).
      if (entry.status === 200 && target.name.endsWith(opts.indexSuffix)) registerIndex(target.url, entry.body);
      if (entry.stale) {
        extra.staleServed++;
        reply.header('x-deltad-stale', '1').header('warning', '110 deltad "Response is Stale"');
      }
      if (entry.etag) reply.header('etag', entry.etag);
      if (entry.lastModified) reply.header('last-modified', entry.lastModified);
      reply.header('cache-control', 'no-cache');
      reply.code(entry.status).type(entry.contentType ?? 'application/octet-stream');
      counters.bytesServed += req.method === 'HEAD' ? 0 : entry.body.length;
      return reply.send(entry.body);
    },
  });

  /** The image's SHA-256 from the (cached) SHA256SUMS beside it; undefined when none lists it or it cannot be had. */
  async function listedSha256(url: string, name: string, signal: AbortSignal): Promise<string | undefined> {
    try {
      const sums = await meta.fetch(siblingUrl(url, 'SHA256SUMS'), signal);
      return sums.status === 200 ? findSha256(sums.body.toString('utf8'), name) : undefined;
    } catch {
      return undefined;
    }
  }

  /** The upstream index of an image (revalidated), registered for chunk lookups; null when there is none. */
  async function imageIndex(indexUrl: string, signal: AbortSignal): Promise<ChunkIndex | null> {
    let entry;
    try {
      entry = await meta.fetch(indexUrl, signal);
    } catch {
      return null;
    }
    if (entry.status !== 200) return null;
    return registerIndex(indexUrl, entry.body);
  }

  /** Parses an index (once per content) and records its chunk locations in the image beside it. */
  function registerIndex(indexUrl: string, body: Buffer): ChunkIndex | null {
    const digest = createHash('sha256').update(body).digest('hex');
    const known = indexes.get(indexUrl);
    if (known?.digest === digest) return known.index;
    let index: ChunkIndex;
    try {
      index = parseIndex(body, { source: indexUrl, allowArchive: false });
    } catch (err) {
      log.warn((err as Error).message);
      return null;
    }
    indexes.set(indexUrl, { digest, index });
    ranges.addImage(indexUrl.slice(0, -opts.indexSuffix.length), index);
    return index;
  }

  async function serveImage(req: FastifyRequest, reply: FastifyReply, url: string, index: ChunkIndex, signal: AbortSignal): Promise<void> {
    const size = index.size;
    const spans = parseRangeHeader(req.headers.range, size);
    if (spans === 'unsatisfiable') {
      return void reply.code(416).header('content-range', `bytes */${size}`).send();
    }
    reply.hijack();
    const res = reply.raw;
    const base = { 'accept-ranges': 'bytes', [PROXY_HEADER]: PROXY_VERSION, 'cache-control': 'no-cache' };
    const whole = spans === null;
    const parts: Span[] = spans ?? [{ start: 0, end: size }];
    const framing = parts.length > 1 ? new MultipartFraming(parts, size) : null;
    const assemble = (i: number) => openExtractStream(index, {
      stores: [chunks], mode: 'store', http, concurrency: opts.concurrency, start: parts[i].start, end: parts[i].end, signal,
    });
    // The first verified byte (or the failure) comes before the headers: an image that cannot be made is a 502, not a cut.
    let first: ReturnType<typeof assemble> | undefined;
    if (req.method !== 'HEAD') {
      first = assemble(0);
      try {
        await firstReadable(first);
      } catch (err) {
        counters.assemblyFailures++;
        const why = (err as Error).message.split('\n')[0];
        if (!signal.aborted) log.warn(`${url}: cannot assemble: ${why}`);
        const text = `deltad proxy: cannot assemble ${url}: ${why}\n`;
        res.writeHead(502, { [PROXY_HEADER]: PROXY_VERSION, 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text) });
        return void res.end(text);
      }
      // Until the pipeline below listens: an error meanwhile must not be an unhandled 'error' event.
      first.on('error', () => {});
    }
    if (whole) res.writeHead(200, { ...base, 'content-type': 'application/octet-stream', 'content-length': String(size) });
    else if (!framing) res.writeHead(206, { ...base, 'content-type': 'application/octet-stream', 'content-length': String(parts[0].end - parts[0].start), 'content-range': `bytes ${parts[0].start}-${parts[0].end - 1}/${size}` });
    else res.writeHead(206, { ...base, 'content-type': framing.contentType, 'content-length': String(framing.contentLength()) });
    if (req.method === 'HEAD') return void res.end();
    counters.assembliesStarted++;
    try {
      for (let i = 0; i < parts.length; i++) {
        if (framing) await writeAll(res, framing.partHeader(i));
        const stream = i === 0 && first ? first : assemble(i);
        stream.on('data', (b: Buffer) => (counters.bytesServed += b.length));
        await pipeline(stream, res, { end: false });
      }
      if (framing) await writeAll(res, framing.trailer());
      res.end();
      counters.assembliesCompleted++;
    } catch (err) {
      // Headers are out: the client can only see a cut transfer, never wrong bytes.
      counters.assemblyFailures++;
      if (!signal.aborted) log.warn(`${url}: ${(err as Error).message}`);
      res.destroy();
    }
  }

  return {
    app,
    cache,
    http,
    status,
    async close() {
      await app.close();
      await http.close();
    },
  };
}

/** Resolves when the stream has its first byte (or ends empty), rejects with the error that destroys it first. */
function firstReadable(stream: Readable): Promise<void> {
  return new Promise((resolve, reject) => {
    const settle = (err?: Error) => {
      stream.off('readable', onReady);
      stream.off('error', settle);
      if (err) reject(err);
      else resolve();
    };
    const onReady = () => settle();
    stream.once('readable', onReady);
    stream.once('error', settle);
  });
}

function writeAll(res: ServerResponse, b: Buffer): Promise<void> {
  return new Promise((resolve, reject) => res.write(b, (err) => (err ? reject(err) : resolve())));
}
