// The one fastify app factory for deltad's HTTP services (the sysupdate sidecar
// and the fleet proxy): request counting and a log line per request, refusals
// as one plain-text line, schema validation errors as 400s in the same words,
// and an error handler that never leaks a stack trace. Routes come as plugins.
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyServerOptions } from 'fastify';
import type { Logger } from './log.js';
import type { DaemonCounters } from './metrics.js';

declare module 'fastify' {
  interface FastifyReply {
    /** Answers `status` with one plain-text line naming why, counted as a refusal. */
    refuse(status: number, why: string): FastifyReply;
  }
}

export interface AppOptions {
  /** Names the service in answers ("deltad", "deltad proxy"). */
  service: string;
  log: Logger;
  counters: DaemonCounters;
  /** Called for every refusal (beyond counting it). */
  onRefuse?: (status: number, why: string) => void;
  fastify?: FastifyServerOptions;
}

export function createApp(opts: AppOptions): FastifyInstance {
  const { service, log, counters } = opts;
  const app = Fastify({
    logger: false,
    exposeHeadRoutes: false,
    routerOptions: { maxParamLength: 4096 },
    ...opts.fastify,
  });
  app.decorateReply('refuse', function (this: FastifyReply, status: number, why: string) {
    counters.rejected++;
    opts.onRefuse?.(status, why);
    return this.code(status)
      .type('text/plain; charset=utf-8')
      .send(`${service}: ${status === 400 ? 'bad request: ' : ''}${why}\n`);
  });
  app.addHook('onRequest', async (req, reply) => {
    counters.requests++;
    const started = Date.now();
    reply.raw.once('close', () => {
      const res = reply.raw;
      const how = res.writableFinished ? `${res.statusCode}` : `${res.headersSent ? res.statusCode : '-'} aborted`;
      log.info(`${req.method} ${req.raw.url} ${how} ${Date.now() - started} ms`);
    });
  });
  app.setErrorHandler(async (err: Error & { statusCode?: number; validation?: unknown }, req, reply) => {
    if (err.validation) return reply.refuse(400, err.message);
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    log.error(`${req.method} ${req.raw.url}: ${err.message}`);
    return reply.code(status).type('text/plain; charset=utf-8').send(`${service}: ${err.message}\n`);
  });
  return app;
}
