// The sidecar behind a fleet proxy, end to end: an upstream (test origin with
// its access log) -> `deltad proxy` (in-process, with an access log of its
// own) -> `deltad serve` seeded with v1 -> curl downloads v2. The sidecar
// detects the proxy once and fetches its missing chunks through the batch
// endpoint: a handful of requests, not one per chunk. A sidecar whose origin
// is a plain server still uses byte ranges and probes only once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildServer } from '../daemon/server.js';
import { defaultConfig } from '../daemon/config.js';
import { createLogger } from '../daemon/log.js';
import { createNotifier } from '../daemon/notify.js';
import { BATCH_PATH, INFO_PATH } from '../daemon/proxy.js';
import { startOrigin } from './helpers/origin.js';
import { releaseSite, startTestProxy } from './helpers/fleet.js';
import { requireTool, run } from './helpers/sysupdate-client.js';
import { tmpDir } from './helpers/tmp.js';

const SIZE = 4 * 1024 * 1024;
const hasCurl = (await run('curl', ['--version'], 5_000)).code === 0;

test('a sidecar whose origin is a deltad proxy fetches missing chunks in a few batch requests; a plain origin still gets ranges', {
  timeout: 60_000,
}, async (t) => {
  if (!requireTool(t, hasCurl, 'curl')) return;
  const dir = await tmpDir(t, 'proxy-origin');
  const { root, seedDir, v1, v2 } = await releaseSite(dir, SIZE, 'upstream');
  const upstream = await startOrigin({ root });
  t.after(() => upstream.close());

  const proxyLog: { method: string; url: string }[] = [];
  const { url: proxyUrl } = await startTestProxy(t, upstream.url, join(dir, 'proxy-cache'), {}, (proxy) =>
    proxy.app.addHook('onRequest', async (req) => void proxyLog.push({ method: req.method, url: req.url })),
  );

  const startSidecar = async (origin: string) => {
    const cacheDir = await mkdtemp(join(dir, 'cache-'));
    const logs: string[] = [];
    const log = createLogger({ write: (s: string) => logs.push(s) } as unknown as NodeJS.WritableStream, {});
    const config = { ...defaultConfig({}), origin, seedGlobs: [join(seedDir, '*.img')], cacheDir, idleTimeout: 0 };
    const { app, ctx } = await buildServer(config, { log, notifier: createNotifier({ env: {} }) });
    await app.listen({ host: '127.0.0.1', port: 0 });
    t.after(() => app.close());
    return { url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}`, ctx, logs };
  };
  const download = async (url: string, out: string) => {
    const r = await run(
      'curl',
      ['-sS', '-f', '--max-time', '30', '-o', out, '-w', '%{http_code} %{size_download}', url],
      35_000,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `200 ${SIZE}`);
    assert.ok((await readFile(out)).equals(v2.data), `${out} is byte-identical to v2`);
  };

  // Through the proxy.
  const viaProxy = await startSidecar(proxyUrl);
  await download(`${viaProxy.url}/${v2.name}`, join(dir, 'via-proxy.img'));
  const v1Chunks = new Set(Array.from({ length: v1.index.count }, (_, i) => v1.index.idHex(i)));
  const newChunks = new Set(
    Array.from({ length: v2.index.count }, (_, i) => v2.index.idHex(i)).filter((id) => !v1Chunks.has(id)),
  );
  const batches = proxyLog.filter((e) => e.method === 'POST' && e.url === BATCH_PATH).length;
  assert.ok(batches >= 1 && batches < newChunks.size, `${batches} batch requests for ${newChunks.size} missing chunks`);
  assert.equal(proxyLog.filter((e) => e.url.startsWith('/.deltad/store/')).length, 0, 'no single-chunk store requests');
  // Index (KDE's {stem}.caibx asked first, then {name}.caibx), SHA256SUMS, the proxy probe, the HEAD and the range
  // probe sent alongside the index (the first request of a daemon does not wait for the proxy probe's answer to
  // send it), and the batches: nothing per chunk.
  const sidecarRequests = proxyLog.map((e) => `${e.method} ${e.url}`).sort();
  const stem = v2.name.replace(/\.img$/, '');
  assert.deepEqual(
    sidecarRequests.filter((r) => r !== `POST ${BATCH_PATH}`),
    [
      `GET ${INFO_PATH}`,
      `GET /${stem}.caibx`,
      `GET /${v2.name}.caibx`,
      'GET /SHA256SUMS',
      `HEAD /${v2.name}`,
      `GET /${v2.name}`,
    ].sort(),
    sidecarRequests.join(', '),
  );
  assert.equal(viaProxy.ctx.counters.fallbacks, 0);
  assert.equal(viaProxy.ctx.counters.assembliesCompleted, 1);
  assert.ok(
    viaProxy.logs.some((l) => l.includes('origin is a deltad proxy')),
    viaProxy.logs.join(''),
  );
  // The proxy fetched only the missing chunks from the upstream, as byte ranges of v2.
  const upstreamImage = upstream.log.filter((e) => e.path === `/${v2.name}`);
  assert.ok(
    upstreamImage.every((e) => e.status === 206 || e.method === 'HEAD'),
    'the upstream never sent the whole image',
  );
  const imageBytes = upstreamImage.reduce((n, e) => n + e.bytes, 0);
  assert.ok(imageBytes > 0 && imageBytes < SIZE * 0.4, `upstream sent ${imageBytes} image bytes`);

  // The probe is not repeated: the plan query reuses the detected store.
  const plan = (await (await fetch(`${viaProxy.url}/.deltad/plan/${v2.name}`)).json()) as { chosen: string };
  assert.equal(plan.chosen, 'store');
  assert.equal(proxyLog.filter((e) => e.url === INFO_PATH).length, 1, 'one probe for the daemon');

  // A plain origin: the probe answers 404 (asked once, not per request) and missing chunks come as ranges.
  const plain = await startSidecar(`${upstream.url}/`);
  const before = upstream.log.length;
  await download(`${plain.url}/${v2.name}`, join(dir, 'plain-1.img'));
  const plainRanges = upstream.log.slice(before).filter((e) => e.path === `/${v2.name}` && e.status === 206);
  assert.ok(plainRanges.length >= 1, 'byte ranges of the image');
  const probes = () => upstream.log.filter((e) => e.path === INFO_PATH);
  assert.equal(probes().length, 1);
  assert.equal(probes()[0].status, 404);
  const plan2 = await fetch(`${plain.url}/.deltad/plan/${v2.name}`);
  assert.equal(plan2.status, 200);
  await plan2.arrayBuffer();
  assert.equal(probes().length, 1, 'a negative answer is not asked again within a minute');
  assert.equal(plain.ctx.counters.fallbacks, 0);
});
