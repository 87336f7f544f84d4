// Everything the sysupdate sidecar's routes share: configuration, the origin
// HTTP client, counters, seeds, assemblies, release preparation and the image
// service. Built once per daemon by createDaemonContext.
import type { FastifyInstance } from 'fastify';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { HttpClient } from '../lib/fetch/http-client.js';
import { Releases } from '../lib/delta/release.js';
import { AssemblyRegistry } from './assemblies.js';
import { httpOptionsOf, requireOrigin, type DaemonConfig } from './config.js';
import { globToRegExp } from './glob.js';
import { DEFAULT_TIMEOUTS, ImageService, type ImageServiceDeps, type ImageTimeouts } from './image-service.js';
import { silentLogger, type Logger } from './log.js';
import { newCounters } from './metrics.js';
import { createNotifier, type Notifier } from './notify.js';
import type { PassThroughContext } from './passthrough.js';
import { SeedCatalog } from './seeds.js';
import { SysupdateTransfers } from './sysupdate-names.js';
import { VERSION } from '../lib/util/version.js';

/** What the image service is given, plus what the routes need beside it. */
export interface DaemonContext extends Omit<ImageServiceDeps, 'timeouts'> {
  origin: string;
  images: ImageService;
  /** The sysupdate transfers that go through deltad: version and installed names. */
  transfers: SysupdateTransfers;
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
  /** Bytes an assembly buffers for its clients beyond the slowest one (default MAX_BUFFERED; tests shrink it). */
  shareBufferBytes?: number;
  /** How long the origin's answers about a release are reused without asking again (default DEFAULT_FRESH_MS). */
  releaseFreshMs?: number;
}

export async function createDaemonContext(config: DaemonConfig, opts: ServerOptions = {}): Promise<DaemonContext> {
  const origin = requireOrigin(config);
  const log = opts.log ?? silentLogger;
  const http =
    opts.http ??
    new HttpClient({
      connections: Math.max(8, config.concurrency),
      userAgent: `deltad/${VERSION} (sysupdate sidecar)`,
      ...httpOptionsOf(config),
    });
  const counters = newCounters(http.stats);
  const notifier = opts.notifier ?? createNotifier({ log });
  const transfers = new SysupdateTransfers(config.sysupdateRoot, origin, config.imagePatterns, (err) => {
    log.warn(`cannot read sysupdate transfers under ${config.sysupdateRoot}: ${err.message}`);
  });
  const seeds = new SeedCatalog(config.seedGlobs, config.cacheDir, log, {
    indexNames: config.indexNames,
    installedNames: async (name) => (await transfers.current()).installedNames(name),
  });
  const timeouts = { ...DEFAULT_TIMEOUTS, ...opts.timeouts };
  const assemblies = new AssemblyRegistry(timeouts.stallMs, opts.shareBufferBytes);
  // Earlier versions spooled whole images here; nothing uses it now.
  await rm(join(config.cacheDir, 'spool'), { recursive: true, force: true });
  const passThroughCtx: PassThroughContext = { http, counters, mode: config.passthrough };
  // One preparation per image for all requests in a burst (index, SHA256SUMS, probes).
  const releases = new Releases(http, { freshMs: opts.releaseFreshMs, maxTargetSize: config.maxTargetSize });
  const deps = { config, http, counters, log, notifier, seeds, assemblies, releases, passThrough: passThroughCtx };
  const images = new ImageService({ ...deps, timeouts });
  const patterns = config.imagePatterns.map(globToRegExp);
  return { ...deps, origin, images, transfers, isImage: (name) => patterns.some((re) => re.test(name)) };
}
