// The fleet proxy's routes as fastify plugins (docs/FLEET.md), each over the
// shared ProxyContext that daemon/proxy.ts wires up:
//   statusRoutes    /.deltad/info, /.deltad/status, /metrics
//   storeRoutes     /.deltad/store/<4hex>/<id>.cacnk (casync/desync chunk store)
//   batchRoutes     /.deltad/batch (many chunks in one framed answer)
//   upstreamRoutes  anything else: the same path on the configured upstream
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BodyTooLargeError, IndexFormatError, UsageError } from '../lib/errors.js';
import { openExtractStream } from '../lib/delta/extract.js';
import { batchResponse } from '../lib/fleet/batch-response.js';
import { BATCH_CONTENT_TYPE, MAX_BATCH_IDS, parseIdList } from '../lib/fleet/batch-wire.js';
import type { CachingStore } from '../lib/fleet/caching-store.js';
import type { ChunkCache } from '../lib/fleet/chunk-cache.js';
import type { IndexRegistry } from '../lib/fleet/index-registry.js';
import type { MetadataCache } from '../lib/fleet/metadata-cache.js';
import type { ChunkIndex } from '../lib/format/caibx.js';
import { fromHex } from '../lib/format/digest.js';
import type { HttpClient } from '../lib/fetch/http-client.js';
import { findIndex, listedSha256 } from '../lib/fetch/release-files.js';
import { compressChunk } from '../lib/store/compression.js';
import { MultipartFraming, parseRangeHeader, type Span } from './byte-ranges.js';
import type { Logger } from './log.js';
import { renderMetrics, type DaemonCounters } from './metrics.js';
import { resolveOriginTarget, siblingUrl, UnsafePathError } from './origin-path.js';
import { proxy as streamThrough } from './passthrough.js';
import { VERSION } from '../lib/util/version.js';

/** Where the chunk store is served; desync/casync are pointed at `http://host:port/.deltad/store`. */
export const STORE_PREFIX = '/.deltad/store';
export const BATCH_PATH = '/.deltad/batch';
export const INFO_PATH = '/.deltad/info';
/** Response header on every proxy answer, so a sidecar can tell it talks to a deltad proxy. */
export const PROXY_HEADER = 'x-deltad-proxy';

export interface ProxyCounters {
  staleServed: number;
  batchRequests: number;
  storeRequests: number;
}

/** What the routes share (built by createProxy). */
export interface ProxyContext {
  upstream: string;
  upstreamStore?: string;
  indexSuffix: string;
  /** Index file names tried for an image, from the `index-name` templates (daemon/index-names.ts). */
  indexNames(imageName: string): string[];
  concurrency?: number;
  isImage(name: string): boolean;
  http: HttpClient;
  cache: ChunkCache;
  chunks: CachingStore;
  meta: MetadataCache;
  indexes: IndexRegistry;
  counters: DaemonCounters;
  extra: ProxyCounters;
  log: Logger;
  status(): unknown;
}

interface Opts {
  ctx: ProxyContext;
}

export async function statusRoutes(app: FastifyInstance, { ctx }: Opts): Promise<void> {
  app.get(INFO_PATH, async () => ({
    service: 'deltad-proxy',
    version: VERSION,
    store: `${STORE_PREFIX}/`,
    batch: BATCH_PATH,
    maxBatch: MAX_BATCH_IDS,
  }));
  app.get('/.deltad/status', async () => ctx.status());
  app.get('/metrics', async (_req, reply) => {
    const s = ctx.cache.stats;
    reply.type('text/plain; version=0.0.4');
    return renderMetrics(
      ctx.counters,
      {
        deltad_proxy_cache_bytes: ['Compressed bytes in the chunk cache', s.bytes],
        deltad_proxy_cache_limit_bytes: ['Chunk cache size limit', s.maxBytes],
        deltad_proxy_cache_chunks: ['Chunks in the cache', s.entries],
      },
      {
        deltad_proxy_cache_hits_total: ['Chunk cache hits since start', s.hits],
        deltad_proxy_cache_misses_total: ['Chunk cache misses since start', s.misses],
        deltad_proxy_upstream_chunk_fetches_total: ['Chunks fetched from the upstream', s.fetches],
        deltad_proxy_shared_fetches_total: ['Chunk requests that joined a fetch under way', s.joined],
        deltad_proxy_cache_write_errors_total: ['Failed cache writes (e.g. disk full)', s.writeErrors],
        deltad_proxy_cache_evictions_total: ['Chunks evicted (LRU)', s.evictions],
        deltad_proxy_stale_served_total: ['Metadata answers served stale (upstream down)', ctx.extra.staleServed],
        deltad_proxy_batch_requests_total: ['Batch requests answered', ctx.extra.batchRequests],
        deltad_proxy_store_requests_total: ['Chunk store requests answered', ctx.extra.storeRequests],
      },
    );
  });
}

/** The chunk store: exactly `<prefix>/<4hex>/<64hex>.cacnk`, like desync's chunk server. */
export async function storeRoutes(app: FastifyInstance, { ctx }: Opts): Promise<void> {
  app.route<{ Params: { dir: string; file: string } }>({
    method: ['GET', 'HEAD'],
    url: `${STORE_PREFIX}/:dir/:file`,
    schema: {
      params: {
        type: 'object',
        properties: {
          dir: { type: 'string', pattern: '^[0-9a-f]{4}$' },
          file: { type: 'string', pattern: '^[0-9a-f]{64}\\.cacnk$' },
        },
        required: ['dir', 'file'],
      },
    },
    handler: async (req, reply) => {
      ctx.extra.storeRequests++;
      const { dir, file } = req.params;
      const hex = file.slice(0, -'.cacnk'.length);
      if (dir !== hex.slice(0, 4)) return reply.refuse(400, `expected ${STORE_PREFIX}/<4hex>/<64hex>.cacnk`);
      const id = fromHex(hex);
      if (req.method === 'HEAD') return reply.code((await ctx.chunks.has(id)) ? 200 : 404).send();
      // Verified first (a damaged cache file is dropped and fetched again), then the cached .cacnk or compressed here.
      const data = await ctx.chunks.get({ id });
      if (!data) return reply.code(404).type('text/plain').send(`chunk ${hex} not found\n`);
      const body = (await ctx.cache.getCompressed(hex)) ?? compressChunk(data);
      ctx.counters.bytesServed += body.length;
      return reply.type('application/octet-stream').send(body);
    },
  });
}

export async function batchRoutes(app: FastifyInstance, { ctx }: Opts): Promise<void> {
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  const answer = async (ids: Buffer[], reply: FastifyReply) => {
    ctx.extra.batchRequests++;
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': BATCH_CONTENT_TYPE, 'cache-control': 'no-store', [PROXY_HEADER]: VERSION });
    for await (const part of batchResponse(ids, ctx.chunks, ctx.cache, (m) => ctx.log.warn(m))) {
      ctx.counters.bytesServed += part.length;
      if (!res.write(part)) await new Promise<void>((r) => res.once('drain', r));
    }
    res.end();
  };
  app.post(BATCH_PATH, async (req, reply) => {
    if (!Buffer.isBuffer(req.body)) {
      return reply.refuse(400, 'batch request body must be application/octet-stream (raw 32-byte chunk IDs)');
    }
    let ids: Buffer[];
    try {
      ids = parseIdList(req.body);
    } catch (err) {
      if (err instanceof UsageError) return reply.refuse(400, err.message);
      throw err;
    }
    await answer(ids, reply);
  });
  app.get<{ Querystring: { ids: string } }>(BATCH_PATH, {
    schema: {
      querystring: {
        type: 'object',
        properties: { ids: { type: 'string', pattern: `^[0-9a-f]{64}(,[0-9a-f]{64}){0,${MAX_BATCH_IDS - 1}}$` } },
        required: ['ids'],
      },
    },
    handler: async (req, reply) => answer(req.query.ids.split(',').map(fromHex), reply),
  });
}

/** Everything else: the same path on the upstream (images from the chunk cache when an index is beside them). */
export async function upstreamRoutes(app: FastifyInstance, { ctx }: Opts): Promise<void> {
  app.route({
    method: ['GET', 'HEAD'],
    url: '/*',
    handler: async (req, reply) => {
      let target;
      try {
        target = resolveOriginTarget(ctx.upstream, req.raw.url ?? '');
      } catch (err) {
        if (err instanceof UnsafePathError) return reply.refuse(400, err.message);
        throw err;
      }
      if (target.relPath.startsWith('.deltad/'))
        return reply.code(404).type('text/plain').send('unknown deltad endpoint\n');
      const ac = new AbortController();
      reply.raw.once('close', () => ac.abort());
      const method = req.method as 'GET' | 'HEAD';
      const passThrough = (sha256?: Promise<string | undefined>) => {
        reply.hijack();
        return streamThrough(
          { http: ctx.http, counters: ctx.counters, mode: 'proxy' },
          method,
          target.url,
          reply.raw,
          ac.signal,
          sha256,
        );
      };
      if (ctx.isImage(target.name)) {
        const index = await imageIndex(ctx, target.url, target.name, ac.signal);
        if (index) return serveImage(ctx, req, reply, target.url, index, ac.signal);
        // Passed through whole, but checked like any image: against its SHA256SUMS entry, when there is one.
        return passThrough(method === 'GET' ? listedSha256Of(ctx, target.url, target.name, ac.signal) : undefined);
      }
      const isIndex = target.name.endsWith(ctx.indexSuffix);
      let entry;
      try {
        entry = await ctx.meta.file(target.url, { index: isIndex, signal: ac.signal });
      } catch (err) {
        if (err instanceof BodyTooLargeError) return passThrough();
        // Not an index the proxy can use: the upstream's bytes all the same, as they are.
        if (err instanceof IndexFormatError) {
          ctx.log.warn(err.message);
          return passThrough();
        }
        ctx.log.warn(`${target.url}: ${(err as Error).message}`);
        return reply
          .code(502)
          .type('text/plain')
          .send(`deltad proxy: upstream unreachable and no cached copy: ${(err as Error).message}\n`);
      }
      // An index passing through tells where its image's chunks are (store and batch requests by ID).
      if (entry.index) ctx.indexes.register(target.url, entry.index);
      if (entry.stale) {
        ctx.extra.staleServed++;
        reply.header('x-deltad-stale', '1').header('warning', '110 deltad "Response is Stale"');
      }
      if (entry.etag) reply.header('etag', entry.etag);
      if (entry.lastModified) reply.header('last-modified', entry.lastModified);
      reply.header('cache-control', 'no-cache');
      reply.code(entry.status).type(entry.contentType ?? 'application/octet-stream');
      ctx.counters.bytesServed += method === 'HEAD' ? 0 : entry.body.length;
      return reply.send(entry.body);
    },
  });
}

/** The image's SHA-256 from the (cached) SHA256SUMS beside it; undefined when none lists it or it cannot be had. */
function listedSha256Of(
  ctx: ProxyContext,
  url: string,
  name: string,
  signal: AbortSignal,
): Promise<string | undefined> {
  return listedSha256(ctx.meta, siblingUrl(url, 'SHA256SUMS'), name, signal).catch(() => undefined);
}

/**
 * The upstream index of an image (revalidated), under the first of its index names that answers, registered for
 * chunk lookups; null when there is none (or it cannot be had: the image is then passed through).
 */
async function imageIndex(
  ctx: ProxyContext,
  imageUrl: string,
  imageName: string,
  signal: AbortSignal,
): Promise<ChunkIndex | null> {
  const urls = ctx.indexNames(imageName).map((name) => new URL(encodeURIComponent(name), imageUrl).href);
  try {
    const found = await findIndex(ctx.meta, urls, signal);
    return found ? ctx.indexes.register(found.url, found.index, imageUrl) : null;
  } catch (err) {
    if (err instanceof IndexFormatError) ctx.log.warn(err.message);
    return null;
  }
}

/** An image (whole, one range or several as multipart/byteranges) assembled from the chunk cache. */
async function serveImage(
  ctx: ProxyContext,
  req: FastifyRequest,
  reply: FastifyReply,
  url: string,
  index: ChunkIndex,
  signal: AbortSignal,
): Promise<void> {
  const { counters } = ctx;
  const size = index.size;
  const spans = parseRangeHeader(req.headers.range, size);
  if (spans === 'unsatisfiable') {
    return void reply.code(416).header('content-range', `bytes */${size}`).send();
  }
  reply.hijack();
  const res = reply.raw;
  const base = { 'accept-ranges': 'bytes', [PROXY_HEADER]: VERSION, 'cache-control': 'no-cache' };
  const whole = spans === null;
  const parts: Span[] = spans ?? [{ start: 0, end: size }];
  const framing = parts.length > 1 ? new MultipartFraming(parts, size) : null;
  const type = 'application/octet-stream';
  const assemble = (i: number) =>
    openExtractStream(index, {
      stores: [ctx.chunks],
      mode: 'store',
      http: ctx.http,
      concurrency: ctx.concurrency,
      start: parts[i].start,
      end: parts[i].end,
      signal,
    });
  // The first verified byte (or the failure) comes before the headers: an image that cannot be made is a 502, not a
  // cut.
  let first: ReturnType<typeof assemble> | undefined;
  if (req.method !== 'HEAD') {
    first = assemble(0);
    try {
      await firstReadable(first);
    } catch (err) {
      counters.assemblyFailures++;
      const why = (err as Error).message.split('\n')[0];
      if (!signal.aborted) ctx.log.warn(`${url}: cannot assemble: ${why}`);
      const text = `deltad proxy: cannot assemble ${url}: ${why}\n`;
      res.writeHead(502, {
        [PROXY_HEADER]: VERSION,
        'content-type': 'text/plain; charset=utf-8',
        'content-length': Buffer.byteLength(text),
      });
      return void res.end(text);
    }
    // Until the pipeline below listens: an error meanwhile must not be an unhandled 'error' event.
    first.on('error', () => {});
  }
  if (whole) res.writeHead(200, { ...base, 'content-type': type, 'content-length': String(size) });
  else if (!framing) {
    const { start, end } = parts[0];
    res.writeHead(206, {
      ...base,
      'content-type': type,
      'content-length': String(end - start),
      'content-range': `bytes ${start}-${end - 1}/${size}`,
    });
  } else
    res.writeHead(206, {
      ...base,
      'content-type': framing.contentType,
      'content-length': String(framing.contentLength()),
    });
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
    if (!signal.aborted) ctx.log.warn(`${url}: ${(err as Error).message}`);
    res.destroy();
  }
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
