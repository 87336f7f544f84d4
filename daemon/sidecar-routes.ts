// The sysupdate sidecar's routes (a fastify plugin over the DaemonContext):
//   /healthz, /metrics                 health and Prometheus counters
//   /.deltad/plan/<path>               what a delta of <path> would cost (JSON)
//   /v1/updatesize?version=V           the same for version V, as kde-linux-sysupdated answers (update-size.ts)
//   GET/HEAD /<path>                   an image as a delta, anything else passed through (a SHA256SUMS
//                                      starts preparing the newest image it lists, announced.ts)
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { MANIFEST_NAME, prepareAnnounced } from './announced.js';
import { renderMetrics } from './metrics.js';
import { resolveOriginTarget, UnsafePathError, type OriginTarget } from './origin-path.js';
import { passThrough, withQuery } from './passthrough.js';
import type { DaemonContext } from './sidecar-context.js';
import { planTotals, registerUpdateSizeRoute } from './update-size.js';

export const PLAN_PREFIX = '/.deltad/plan/';

/** Health, metrics, the update-size query and the catch-all origin route. */
export async function sidecarRoutes(app: FastifyInstance, { ctx }: { ctx: DaemonContext }): Promise<void> {
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
          if (method === 'GET' && target.name === MANIFEST_NAME)
            prepareAnnounced(ctx, target).catch((err: Error) =>
              ctx.log.warn(`${target.relPath}: cannot prepare the images it lists: ${err.message}`),
            );
          await passThrough(ctx.passThrough, method, withQuery(target.url, req.raw.url), reply.raw);
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
}

function resolveOrRefuse(
  ctx: DaemonContext,
  req: FastifyRequest,
  reply: FastifyReply,
  prefix = '/',
): OriginTarget | undefined {
  try {
    return resolveOriginTarget(ctx.origin, req.raw.url ?? '', prefix);
  } catch (err) {
    if (!(err instanceof UnsafePathError)) throw err;
    reply.refuse(400, err.message);
    return undefined;
  }
}
