// The daemon's HTTP app (fastify), thin over lib/: health, metrics, the
// update-size query, and GET/HEAD of any origin path, as a delta for images
// and a pass-through for everything else. Request paths are resolved only
// against the configured origin; Host headers and absolute-form targets are
// never used. Other servers (the fleet proxy) reuse it via `extraRoutes`, or
// call `createDaemonContext` + `registerOriginRoutes` on their own app.
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { join } from 'node:path';
import { HttpClient } from '../lib/fetch/http-client.js';
import { AssemblyRegistry } from './assemblies.js';
import { requireOrigin, type DaemonConfig } from './config.js';
import { globToRegExp } from './glob.js';
import { DEFAULT_TIMEOUTS, ImageService, type ImageTimeouts } from './image-service.js';
import { silentLogger, type Logger } from './log.js';
import { newCounters, renderMetrics, type DaemonCounters } from './metrics.js';
import { createNotifier, type Notifier } from './notify.js';
import { passThroughUrl, resolveOriginTarget, UnsafePathError, type OriginTarget } from './origin-path.js';
import { passThrough, type PassThroughContext } from './passthrough.js';
import { SeedCatalog } from './seeds.js';
import { SysupdateTransfers } from './sysupdate-names.js';
import { planTotals, registerUpdateSizeRoute } from './update-size.js';

export const PLAN_PREFIX = '/.deltad/plan/';

export interface DaemonContext {
  config: DaemonConfig;
  origin: string;
  http: HttpClient;
  counters: DaemonCounters;
  log: Logger;
  notifier: Notifier;
  seeds: SeedCatalog;
  assemblies: AssemblyRegistry;
  images: ImageService;
  /** The sysupdate transfers that go through deltad: version and installed names. */
  transfers: SysupdateTransfers;
  passThrough: PassThroughContext;
  /** True when a file name is served as a delta (image patterns). */
  isImage(name: string): boolean;
}

export interface ServerOptions {
  log?: Logger;
  notifier?: Notifier;
  /** Shared HTTP client (default: a new one, closed with the app). */
  http?: HttpClient;
  /** Registers more routes (before the catch-all origin route; specific routes win). */
  extraRoutes?: (app: FastifyInstance, ctx: DaemonContext) => void | Promise<void>;
  /** Deadlines of image serving (default DEFAULT_TIMEOUTS; tests shorten them). */
  timeouts?: Partial<ImageTimeouts>;
}

export async function createDaemonContext(config: DaemonConfig, opts: ServerOptions = {}): Promise<DaemonContext> {
  const origin = requireOrigin(config);
  const log = opts.log ?? silentLogger;
  const http = opts.http ?? new HttpClient({ connections: Math.max(8, config.concurrency), userAgent: 'deltad/0.1 (sysupdate sidecar)' });
  const counters = newCounters();
  const notifier = opts.notifier ?? createNotifier({ log });
  const transfers = new SysupdateTransfers(config.sysupdateRoot, origin, config.imagePatterns, (err) => {
    log.warn(`cannot read sysupdate transfers under ${config.sysupdateRoot}: ${err.message}`);
  });
  const seeds = new SeedCatalog(config.seedGlobs, config.cacheDir, log, {
    indexNames: config.indexNames,
    installedNames: async (name) => (await transfers.current()).installedNames(name),
  });
  const timeouts = { ...DEFAULT_TIMEOUTS, ...opts.timeouts };
  const assemblies = new AssemblyRegistry(join(config.cacheDir, 'spool'), timeouts.stallMs);
  await assemblies.init();
  const passThroughCtx: PassThroughContext = { http, counters, mode: config.passthrough };
  const images = new ImageService({ config, http, counters, log, notifier, seeds, assemblies, passThrough: passThroughCtx, timeouts });
  const patterns = config.imagePatterns.map(globToRegExp);
  return {
    config, origin, http, counters, log, notifier, seeds, assemblies, images, transfers,
    passThrough: passThroughCtx,
    isImage: (name) => patterns.some((re) => re.test(name)),
  };
}

export async function buildServer(config: DaemonConfig, opts: ServerOptions = {}): Promise<{ app: FastifyInstance; ctx: DaemonContext }> {
  const ctx = await createDaemonContext(config, opts);
  const app = Fastify({
    logger: false,
    exposeHeadRoutes: false,
    routerOptions: { maxParamLength: 4096 },
    // In-flight downloads finish on close; idle keep-alive connections are closed.
    forceCloseConnections: 'idle',
  });
  app.addHook('onClose', async () => {
    await ctx.assemblies.close();
    if (!opts.http) await ctx.http.close();
  });
  await opts.extraRoutes?.(app, ctx);
  registerOriginRoutes(app, ctx);
  return { app, ctx };
}

/** Health, metrics, plan, and the catch-all origin route, with request accounting and logging. */
export function registerOriginRoutes(app: FastifyInstance, ctx: DaemonContext): void {
  app.addHook('onRequest', async (req, reply) => {
    ctx.counters.requests++;
    const started = Date.now();
    reply.raw.once('close', () => {
      const res = reply.raw;
      const how = res.writableFinished ? `${res.statusCode}` : `${res.headersSent ? res.statusCode : '-'} aborted`;
      ctx.log.info(`${req.method} ${req.raw.url} ${how} ${Date.now() - started} ms`);
    });
    // Absolute-form targets ("GET http://host/x") must never select an upstream.
    if (!req.raw.url?.startsWith('/')) return refuse(ctx, reply, 'only origin-form request targets ("/path") are accepted');
  });

  app.get('/healthz', async (_req, reply) => reply.type('text/plain; charset=utf-8').send('ok\n'));

  app.get('/metrics', async (_req, reply) => {
    const text = renderMetrics(ctx.counters, {
      deltad_assemblies_in_flight: ['Assemblies currently running', ctx.assemblies.active.length],
    });
    return reply.type('text/plain; version=0.0.4; charset=utf-8').send(text);
  });

  app.get(`${PLAN_PREFIX}*`, async (req, reply) => {
    const target = resolveOrRefuse(ctx, req, reply, PLAN_PREFIX);
    if (!target) return reply;
    const report = await ctx.images.plan(target);
    if (!report) {
      const names = ctx.config.indexNames.join(', ');
      return reply.code(404).send({ error: `no index of ${target.url} on the origin (${names})` });
    }
    return reply.send({ path: target.relPath, url: target.url, ...planTotals(report), ...report });
  });

  registerUpdateSizeRoute(app, ctx);

  app.route({
    method: ['GET', 'HEAD'],
    url: '/*',
    handler: async (req, reply) => {
      const target = resolveOrRefuse(ctx, req, reply);
      if (!target) return reply;
      const method = req.method as 'GET' | 'HEAD';
      reply.hijack();
      try {
        if (ctx.isImage(target.name)) await ctx.images.serve(method, target, reply.raw);
        else {
          ctx.counters.passthroughs++;
          await passThrough(ctx.passThrough, method, passThroughUrl(target), reply.raw);
        }
      } catch (err) {
        ctx.log.error(`${method} ${target.relPath}: ${(err as Error).message}`);
        if (!reply.raw.headersSent) {
          reply.raw.writeHead(502, { 'content-type': 'text/plain; charset=utf-8' });
          reply.raw.end(`deltad: ${(err as Error).message}\n`);
        } else reply.raw.destroy();
      }
    },
  });

  app.setErrorHandler(async (err: Error & { statusCode?: number }, req, reply) => {
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    ctx.log.error(`${req.method} ${req.raw.url}: ${err.message}`);
    return reply.code(status).type('text/plain; charset=utf-8').send(`deltad: ${err.message}\n`);
  });
}

function resolveOrRefuse(ctx: DaemonContext, req: FastifyRequest, reply: FastifyReply, prefix = '/'): OriginTarget | undefined {
  try {
    return resolveOriginTarget(ctx.origin, req.raw.url ?? '', prefix);
  } catch (err) {
    if (!(err instanceof UnsafePathError)) throw err;
    refuse(ctx, reply, err.message);
    return undefined;
  }
}

function refuse(ctx: DaemonContext, reply: FastifyReply, why: string): FastifyReply {
  ctx.counters.rejected++;
  return reply.code(400).type('text/plain; charset=utf-8').send(`deltad: bad request: ${why}\n`);
}
