// `deltad proxy`: the fleet caching proxy (docs/FLEET.md). One lab server runs
// it; every machine's sidecar uses it as its origin.
import type { Command } from '../command.js';
import { configOptions, configUsage, httpOptionsOf, loadConfig, splitListen } from '../config.js';
import { createLogger } from '../log.js';
import { createProxy } from '../proxy.js';
import { UsageError } from '../../lib/errors.js';

export const command: Command = {
  name: 'proxy',
  usage: `Usage: deltad proxy --upstream URL --cache DIR [--listen ADDR:PORT] [config options]

Serves every path from the upstream. Images with an index upstream (--image-pattern,
--index-suffix) are assembled from a content-addressed chunk cache: each chunk is
fetched from the upstream at most once (while cached) for all clients and versions.
Small files (SHA256SUMS, signatures, indexes) are revalidated on every request
and served stale (X-Deltad-Stale: 1) when the upstream is down.

Also serves a casync/desync chunk store at /.deltad/store (casync extract
--store=http://HOST:PORT/.deltad/store; desync -s http://HOST:PORT/.deltad/store/),
the batch endpoint /.deltad/batch, /.deltad/info, /.deltad/status and /metrics.

Clients outside --allow get 403; the default allows loopback and private networks
(127.0.0.0/8 ::1 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7 fe80::/10).

Options:
  --cache DIR              same as --proxy-cache

Example:
  deltad proxy --upstream https://updates.example.org/ --cache /var/cache/deltad-proxy \\
    --listen 0.0.0.0:3130 --proxy-cache-size 50G

${configUsage}`,
  options: { ...configOptions, cache: { type: 'string' } },
  async run(ctx) {
    const values = { ...ctx.values };
    if (values.cache !== undefined) values['proxy-cache'] ??= values.cache;
    delete values.cache;
    const config = loadConfig({ values });
    if (!config.upstream)
      throw new UsageError(
        'no upstream configured: give --upstream URL (or "upstream = URL" in the configuration file)',
      );
    const log = createLogger(ctx.stderr);
    const proxy = await createProxy({
      upstream: config.upstream,
      upstreamStore: config.upstreamStore || undefined,
      cacheDir: config.proxyCache,
      cacheMaxBytes: config.proxyCacheSize,
      allow: config.allow,
      maxPerClient: config.clientConcurrency,
      imagePatterns: config.imagePatterns,
      indexSuffix: config.indexSuffix,
      indexNames: config.indexNames,
      concurrency: config.concurrency,
      maxTargetSize: config.maxTargetSize,
      httpOptions: httpOptionsOf(config),
      logger: log,
    });
    const { host, port } = splitListen(config.listen);
    await proxy.app.listen({ host, port });
    const addr = proxy.app.server.address();
    const where =
      typeof addr === 'object' && addr
        ? `${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`
        : config.listen;
    log.info(
      `deltad proxy on ${where}; upstream ${config.upstream}; cache ${config.proxyCache} (limit ${config.proxyCacheSize} bytes); allow ${config.allow.join(' ')}`,
    );
    // Tests and scripts wait for this line to learn the port.
    ctx.stdout.write(`listening ${where}\n`);
    await new Promise<void>((resolve) => {
      for (const sig of ['SIGTERM', 'SIGINT'] as const) {
        process.once(sig, () => {
          log.info(`stopping: ${sig}`);
          void proxy.close().then(resolve);
        });
      }
    });
    return 0;
  },
};
