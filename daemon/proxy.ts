// The fleet proxy (`deltad proxy`, docs/FLEET.md): one lab server runs it and
// every sidecar's origin points at it. This module wires the pieces (chunk
// cache, upstream stores, metadata cache, index registry, access control) and
// registers the route plugins of daemon/proxy-routes.ts. Chunks come from the
// cache, else from the upstream (its chunk store when configured, else byte
// ranges of images whose indexes passed through), are verified, cached, and
// shared by concurrent clients (one upstream fetch each).
import type { FastifyInstance } from 'fastify';
import { join } from 'node:path';
import { HttpClient, type HttpClientOptions } from '../lib/fetch/http-client.js';
import { CachingStore } from '../lib/fleet/caching-store.js';
import { ChunkCache, type ChunkCacheOptions } from '../lib/fleet/chunk-cache.js';
import { ImageRangeStore } from '../lib/fleet/image-range-store.js';
import { IndexRegistry } from '../lib/fleet/index-registry.js';
import { MAX_BATCH_IDS } from '../lib/fleet/batch-wire.js';
import { MetadataCache } from '../lib/fleet/metadata-cache.js';
import { HttpStore } from '../lib/store/http-store.js';
import { VERSION } from '../lib/util/version.js';
import { AllowList, ClientLimiter, refuseTarget } from './access.js';
import { globToRegExp } from './glob.js';
import { indexFileNames } from './index-names.js';
import { createApp } from './http-app.js';
import { silentLogger, type Logger } from './log.js';
import { newCounters } from './metrics.js';
import {
  BATCH_PATH,
  INFO_PATH,
  PROXY_HEADER,
  STORE_PREFIX,
  batchRoutes,
  statusRoutes,
  storeRoutes,
  upstreamRoutes,
  type ProxyContext,
} from './proxy-routes.js';

export { BATCH_PATH, INFO_PATH, PROXY_HEADER, STORE_PREFIX };
export const PROXY_VERSION = VERSION;

export interface ProxyOptions {
  /** Upstream base URL (ends with '/'); request paths are resolved against it and nothing else. */
  upstream: string;
  /** The upstream's casync chunk store, if it has one; else chunks come as byte ranges of the images. */
  upstreamStore?: string;
  /** TLS trust and transfer limits of upstream requests (ca-file, low-speed limit). */
  httpOptions?: HttpClientOptions;
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
  /** `index-name` templates (default: the image name plus indexSuffix). */
  indexNames?: readonly string[];
  /** Parallel upstream requests per assembly (default 8). */
  concurrency?: number;
  /** Largest image an index may describe (default 64 GiB): an index beyond it is refused as it arrives. */
  maxTargetSize?: number;
  logger?: Logger;
  /** Replaces the cache's file writer (tests inject ENOSPC). */
  cacheWriteFile?: ChunkCacheOptions['writeFile'];
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
  const http = new HttpClient({ ...opts.httpOptions, connections: Math.max(8, opts.concurrency ?? 8) });
  const cache = await ChunkCache.open(join(opts.cacheDir, 'chunks'), {
    maxBytes: opts.cacheMaxBytes,
    writeFile: opts.cacheWriteFile,
  });
  const ranges = new ImageRangeStore({ client: http, concurrency: opts.concurrency });
  const upstreamStores = opts.upstreamStore ? [new HttpStore(opts.upstreamStore, { client: http }), ranges] : [ranges];
  const allow = new AllowList(opts.allow);
  const limiter = new ClientLimiter(opts.maxPerClient);
  const imageNames = opts.imagePatterns.map(globToRegExp);
  const counters = newCounters(http.stats);
  let refused = 0;

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
      refused,
      staleServed: ctx.extra.staleServed,
    };
  };
  const ctx: ProxyContext = {
    upstream: opts.upstream,
    upstreamStore: opts.upstreamStore,
    indexSuffix: opts.indexSuffix,
    indexNames: (name) => indexFileNames(name, opts.indexNames ?? [`{name}${opts.indexSuffix}`]),
    concurrency: opts.concurrency,
    isImage: (name) => imageNames.some((re) => re.test(name)),
    http,
    cache,
    chunks: new CachingStore(cache, upstreamStores, { concurrency: opts.concurrency }),
    meta: new MetadataCache(join(opts.cacheDir, 'meta'), http, undefined, opts.maxTargetSize),
    indexes: new IndexRegistry(ranges, opts.indexSuffix),
    counters,
    extra: { staleServed: 0, batchRequests: 0, storeRequests: 0 },
    log,
    status,
  };

  const app = createApp({
    service: 'deltad proxy',
    log,
    counters,
    onRefuse: (code, why) => {
      refused++;
      log.warn(`refused (${code}): ${why}`);
    },
    fastify: { bodyLimit: MAX_BATCH_IDS * 32 + 1024 },
  });
  app.addHook('onRequest', async (req, reply) => {
    reply.header(PROXY_HEADER, PROXY_VERSION);
    const client = req.socket.remoteAddress;
    const refusal = refuseTarget(req.raw.method ?? '', req.raw.url ?? '', req.raw.rawHeaders);
    if (refusal) return reply.refuse(400, refusal);
    if (!allow.allows(client)) return reply.refuse(403, `client ${client} is not in the allow-list`);
    const release = limiter.acquire(client!);
    if (!release) {
      reply.header('retry-after', '1');
      return reply.refuse(429, `client ${client} has ${opts.maxPerClient} requests in flight`);
    }
    reply.raw.once('close', release);
  });
  await app.register(statusRoutes, { ctx });
  await app.register(storeRoutes, { ctx });
  await app.register(batchRoutes, { ctx });
  await app.register(upstreamRoutes, { ctx });

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
