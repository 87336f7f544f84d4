// The daemon's HTTP app (fastify), thin over lib/: health, metrics, the
// update-size query, and GET/HEAD of any origin path, as a delta for images
// and a pass-through for everything else. Request paths are resolved only
// against the configured origin; Host headers and absolute-form targets are
// never used. The routes are the plugin in daemon/sidecar-routes.ts.
import type { FastifyInstance } from 'fastify';
import type { DaemonConfig } from './config.js';
import { createApp } from './http-app.js';
import { createDaemonContext, type DaemonContext, type ServerOptions } from './sidecar-context.js';
import { sidecarRoutes } from './sidecar-routes.js';

export { PLAN_PREFIX } from './sidecar-routes.js';
export { createDaemonContext, type DaemonContext, type ServerOptions } from './sidecar-context.js';

/**
 * Idle keep-alive connections are kept this long (fastify's default is 72 s): one holds off the idle exit, and a
 * close waits for those that were busy when it began. Clients reconnect cheaply.
 */
const KEEP_ALIVE_MS = 5_000;

export async function buildServer(
  config: DaemonConfig,
  opts: ServerOptions = {},
): Promise<{ app: FastifyInstance; ctx: DaemonContext }> {
  const ctx = await createDaemonContext(config, opts);
  const app = createApp({
    service: 'deltad',
    log: ctx.log,
    counters: ctx.counters,
    // In-flight downloads finish on close; idle keep-alive connections are closed.
    fastify: { forceCloseConnections: 'idle', keepAliveTimeout: KEEP_ALIVE_MS },
  });
  app.addHook('onClose', async () => {
    if (!opts.http) await ctx.http.close();
  });
  // Absolute-form targets ("GET http://host/x") must never select an upstream.
  app.addHook('onRequest', async (req, reply) => {
    if (!req.raw.url?.startsWith('/'))
      return reply.refuse(400, 'only origin-form request targets ("/path") are accepted');
  });
  await opts.extraRoutes?.(app, ctx);
  await app.register(sidecarRoutes, { ctx });
  return { app, ctx };
}
