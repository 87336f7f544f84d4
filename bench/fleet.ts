// Fleet benchmark: N clients update v1 → v2 concurrently, either each straight
// from the upstream (byte ranges, the engine's range mode) or all through one
// `deltad proxy` (the batch store). Reports upstream bytes and requests and wall
// time per run. Everything runs on 127.0.0.1 with generated images.
//
//   node dist/bench/fleet.js [--size-mib 32] [--clients 1,5,20]
import { parseArgs } from 'node:util';
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createProxy } from '../daemon/proxy.js';
import { DEFAULT_ALLOW } from '../daemon/access.js';
import { HttpClient } from '../lib/fetch/http-client.js';
import { extractToFile } from '../lib/delta/extract.js';
import { openProxyStore } from '../lib/fleet/batch-store.js';
import { startOrigin } from '../test/helpers/origin.js';
import { makeReleases, type Release } from '../test/helpers/fleet.js';

const { values } = parseArgs({
  options: { 'size-mib': { type: 'string', default: '32' }, clients: { type: 'string', default: '1,5,20' } },
});
const sizeMiB = Number(values['size-mib']);
const counts = String(values.clients).split(',').map(Number);

interface Row {
  clients: number;
  via: 'direct' | 'proxy';
  upstreamBytes: number;
  upstreamRequests: number;
  wallMs: number;
}

async function runOnce(
  root: string,
  work: string,
  v1: Release,
  v2: Release,
  clients: number,
  via: Row['via'],
): Promise<Row> {
  const origin = await startOrigin({ root });
  const upstream = origin.url.endsWith('/') ? origin.url : origin.url + '/';
  const proxy =
    via === 'proxy'
      ? await createProxy({
          upstream,
          cacheDir: join(work, 'proxy-cache'),
          cacheMaxBytes: 4 * 2 ** 30,
          allow: DEFAULT_ALLOW,
          maxPerClient: 256,
          imagePatterns: ['*.img'],
          indexSuffix: '.caibx',
        })
      : undefined;
  let base = upstream;
  if (proxy) {
    await proxy.app.listen({ host: '127.0.0.1', port: 0 });
    base = `http://127.0.0.1:${(proxy.app.server.address() as { port: number }).port}/`;
  }
  const sha256 = createHash('sha256').update(v2.data).digest('hex');
  const seed = join(work, v1.name);
  const started = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async (_, n) => {
      const http = new HttpClient();
      try {
        const out = join(work, `client-${n}.img`);
        const store = proxy ? await openProxyStore(base, { client: http }) : null;
        const index = `${base}${v2.name}.caibx`;
        const common = { seeds: [{ path: seed, index: v1.index }], http, sha256, cacheDir: join(work, `cache-${n}`) };
        if (store) await extractToFile(index, out, { ...common, stores: [store], mode: 'store' });
        else await extractToFile(index, out, { ...common, rangeUrl: `${base}${v2.name}`, mode: 'range' });
        await rm(out);
      } finally {
        await http.close();
      }
    }),
  );
  const wallMs = performance.now() - started;
  await proxy?.close();
  const s = origin.stats('/');
  await origin.close();
  await rm(join(work, 'proxy-cache'), { recursive: true, force: true });
  return { clients, via, upstreamBytes: s.bytes, upstreamRequests: s.requests, wallMs };
}

const work = await mkdtemp(join(tmpdir(), 'deltad-bench-fleet-'));
try {
  const root = join(work, 'origin');
  await mkdir(root);
  const [v1, v2] = await makeReleases(root, sizeMiB * 1024 * 1024, 2, 24);
  await copyFile(join(root, v1.name), join(work, v1.name));
  const missing = new Set<string>();
  const have = new Set(Array.from({ length: v1.index.count }, (_, i) => v1.index.idHex(i)));
  let missingBytes = 0;
  for (let i = 0; i < v2.index.count; i++) {
    const id = v2.index.idHex(i);
    if (!have.has(id) && !missing.has(id)) {
      missing.add(id);
      missingBytes += v2.index.chunkSize(i);
    }
  }
  console.log(
    `image ${sizeMiB} MiB, ${v2.index.count} chunks; v2 needs ${missing.size} chunks (${(missingBytes / 2 ** 20).toFixed(2)} MiB) not in v1; load before: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  console.log('| clients | via | upstream MiB | upstream requests | wall s |');
  console.log('|---:|---|---:|---:|---:|');
  for (const n of counts) {
    for (const via of ['direct', 'proxy'] as const) {
      const r = await runOnce(root, work, v1, v2, n, via);
      console.log(
        `| ${r.clients} | ${r.via} | ${(r.upstreamBytes / 2 ** 20).toFixed(2)} | ${r.upstreamRequests} | ${(r.wallMs / 1000).toFixed(2)} |`,
      );
    }
  }
  console.log(
    `load after: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
} finally {
  await rm(work, { recursive: true, force: true });
}
