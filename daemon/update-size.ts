// GET /v1/updatesize?version=V, as kde-linux-sysupdated answers it (Discover's
// KDE Linux backend asks it): the bytes that updating to version V would take
// from the network, as plain text (a decimal number, nothing else). The
// version is turned into image names through the sysupdate transfers that go
// through deltad (sysupdate-names.ts), and each image is planned exactly as
// /.deltad/plan/<path> does; several image transfers add up.
// Statuses: 400 without a valid version; 404 when no transfer maps it or the
// origin has no index for it (kde-linux-sysupdated answers 500 there; clients
// treat every non-2xx alike); 502 when the origin cannot be asked.
import type { FastifyInstance } from 'fastify';
import type { PlanReport } from '../lib/delta/extract.js';
import type { DaemonConfig } from './config.js';
import type { ImageService } from './image-service.js';
import type { Logger } from './log.js';
import { resolveOriginTarget } from './origin-path.js';
import { isValidVersion, type SysupdateTransfers } from './sysupdate-names.js';

/** What the route needs of the daemon (a DaemonContext has all of it). */
export interface UpdateSizeDeps {
  origin: string;
  config: Pick<DaemonConfig, 'sysupdateRoot'>;
  transfers: SysupdateTransfers;
  images: Pick<ImageService, 'plan'>;
  log: Logger;
  isImage(name: string): boolean;
}

export const UPDATE_SIZE_PATH = '/v1/updatesize';

/** Bytes from seeds and from the network for the fetch mode the plan chose (shared with the plan endpoint). */
export interface PlanTotals {
  bytesFromSeeds: number;
  bytesFromNetwork: number;
  requestsToNetwork: number;
}

export function planTotals(report: PlanReport): PlanTotals {
  const chosen = report.modes.find(
    (m) => m.mode === report.chosen || (report.chosen === 'range' && m.mode === 'range-single'),
  );
  return {
    bytesFromSeeds: report.fromSeeds + report.fromSelf + report.fromZero,
    bytesFromNetwork: chosen?.bytes ?? 0,
    requestsToNetwork: chosen?.requests ?? 0,
  };
}

export function registerUpdateSizeRoute(app: FastifyInstance, ctx: UpdateSizeDeps): void {
  app.get(UPDATE_SIZE_PATH, async (req, reply) => {
    const text = (code: number, body: string) => reply.code(code).type('text/plain; charset=utf-8').send(body);
    const version = (req.query as Record<string, unknown>).version;
    if (typeof version !== 'string' || version === '') return text(400, 'version parameter not set');
    if (!isValidVersion(version)) return text(400, `invalid version "${version.slice(0, 100)}"`);
    const paths = (await ctx.transfers.current()).imagePaths(version, ctx.isImage);
    if (paths.length === 0) {
      const where = `${ctx.config.sysupdateRoot.replace(/\/$/, '')}/{etc,run,usr/local/lib,usr/lib}/sysupdate.d`;
      const what = `no url-file image transfer under the origin ${ctx.origin} in ${where}`;
      return text(404, `${what} maps version ${version} to an image`);
    }
    let total = 0;
    for (const path of paths) {
      const target = resolveOriginTarget(ctx.origin, `/${path.split('/').map(encodeURIComponent).join('/')}`);
      let report;
      try {
        report = await ctx.images.plan(target);
      } catch (err) {
        ctx.log.error(`${UPDATE_SIZE_PATH}?version=${version}: ${target.url}: ${(err as Error).message}`);
        return text(502, `cannot plan ${target.url}: ${(err as Error).message}`);
      }
      if (!report) return text(404, `no index of ${target.url} on the origin: version ${version} is not published`);
      total += planTotals(report).bytesFromNetwork;
    }
    return text(200, String(total));
  });
}
