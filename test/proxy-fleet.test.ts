// A fleet updating through one proxy: one upstream (test/helpers/origin.ts with
// its access log), one proxy, six sidecars (own seed directories: four with the
// previous version, one with an unrelated file, one with nothing) extracting the
// new version concurrently through the engine with the proxy's batch store.
// Every client ends byte-identical; the upstream sent each chunk once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { request } from 'undici';
import { HttpClient } from '../lib/fetch/http-client.js';
import { extractToFile, loadIndex } from '../lib/delta/extract.js';
import { openProxyStore } from '../lib/fleet/batch-store.js';
import { startOrigin } from './helpers/origin.js';
import { makeReleases, startTestProxy } from './helpers/fleet.js';
import { tmpDir } from './helpers/tmp.js';
import { seededBytes } from './helpers/images.js';

test('six sidecars update concurrently through one proxy: identical images, each chunk fetched upstream once', {
  timeout: 90_000,
}, async (t) => {
  const dir = await tmpDir(t, 'fleet');
  const root = join(dir, 'origin');
  await mkdir(root);
  const [v1, v2] = await makeReleases(root, 4 * 1024 * 1024, 2, 8);
  const origin = await startOrigin({ root });
  t.after(() => origin.close());
  const { url: proxyUrl } = await startTestProxy(t, origin.url, join(dir, 'proxy-cache'));
  const sha256 = createHash('sha256').update(v2.data).digest('hex');

  const sidecars = await Promise.all(
    ['v1', 'v1', 'v1', 'v1', 'unrelated', 'none'].map(async (seed, n) => {
      const home = join(dir, `sidecar-${n}`);
      await mkdir(home);
      const seeds = [];
      if (seed === 'v1') {
        await copyFile(join(root, v1.name), join(home, v1.name));
        seeds.push({ path: join(home, v1.name), index: v1.index });
      } else if (seed === 'unrelated') {
        await writeFile(join(home, 'old.img'), seededBytes(1024 * 1024, 'fleet:old'));
        seeds.push({ path: join(home, 'old.img') });
      }
      return { home, seeds };
    }),
  );

  const results = await Promise.all(
    sidecars.map(async ({ home, seeds }) => {
      const http = new HttpClient();
      try {
        // What the sidecar does: the index through the proxy, then the proxy detected and its batch store used.
        const index = await loadIndex(`${proxyUrl}${v2.name}.caibx`, { http });
        const store = await openProxyStore(proxyUrl, { client: http });
        assert.ok(store, 'the sidecar detects the proxy');
        const out = join(home, v2.name);
        const r = await extractToFile(index, out, {
          seeds,
          stores: [store],
          mode: 'store',
          http,
          sha256,
          cacheDir: join(home, 'cache'),
        });
        return { out, r };
      } finally {
        await http.close();
      }
    }),
  );
  for (const { out } of results) assert.ok((await readFile(out)).equals(v2.data), `${out} is byte-identical`);

  // The upstream sent each chunk of v2 at most once, however many clients needed it.
  const img = `/${v2.name}`;
  const covered = new Map<string, number>();
  for (const e of origin.log) {
    if (e.path !== img || e.status !== 206 || !e.range) continue;
    const m = /^bytes=(\d+)-(\d+)$/.exec(e.range);
    assert.ok(m, `single ranges from the proxy (${e.range})`);
    const start = Number(m[1]);
    const end = Number(m[2]) + 1;
    for (let i = v2.index.chunkAt(start); i < v2.index.count && v2.index.start(i) < end; i++) {
      const id = v2.index.idHex(i);
      covered.set(id, (covered.get(id) ?? 0) + 1);
    }
  }
  for (const [id, n] of covered) assert.equal(n, 1, `chunk ${id} fetched ${n} times`);
  // The sidecar with no seed needed every chunk, so every unique chunk of v2 came through exactly once.
  const unique = new Set(Array.from({ length: v2.index.count }, (_, i) => v2.index.idHex(i)));
  assert.ok(covered.size <= unique.size);
  const rangeBytes = origin.log
    .filter((e) => e.path === img && e.status === 206)
    .reduce((n, e) => n + Number(/-(\d+)$/.exec(e.range!)![1]) + 1 - Number(/=(\d+)-/.exec(e.range!)![1]), 0);
  assert.ok(
    rangeBytes <= v2.data.length,
    `upstream sent ${rangeBytes} image bytes for ${results.length} clients of a ${v2.data.length}-byte image`,
  );
  assert.ok(
    origin.log.every((e) => e.path !== img || e.status === 206),
    'only byte ranges of the image',
  );
  assert.equal(
    origin.log.filter((e) => e.path === `/${v1.name}`).length,
    0,
    'v1 never fetched: its chunks were local or came via v2',
  );
  // The proxy counts every upstream byte and request, chunks and ranges included (status and /metrics).
  const traffic = (await (await request(`${proxyUrl}.deltad/status`)).body.json()) as {
    upstreamBytes: number;
    upstreamRequests: number;
  };
  assert.equal(
    traffic.upstreamBytes,
    origin.log.reduce((n, e) => n + e.bytes, 0),
    'upstreamBytes = what the upstream sent',
  );
  assert.equal(traffic.upstreamRequests, origin.log.length, 'upstreamRequests = what the upstream answered');
  const metrics = await (await request(`${proxyUrl}metrics`)).body.text();
  assert.match(metrics, new RegExp(`deltad_origin_bytes_total ${traffic.upstreamBytes}\\n`));

  // Whole-image GET and a multi-range GET through the proxy: assembled from the (now warm) cache.
  const imageRequests = () => origin.log.filter((e) => e.path === img).length;
  const before = imageRequests();
  const whole = await request(`${proxyUrl}${v2.name}`, { headersTimeout: 10_000, bodyTimeout: 10_000 });
  assert.equal(whole.statusCode, 200);
  assert.equal(whole.headers['content-length'], String(v2.data.length));
  assert.ok(Buffer.from(await whole.body.arrayBuffer()).equals(v2.data));
  const ranged = await request(`${proxyUrl}${v2.name}`, { headers: { range: 'bytes=10-19,1000000-1000099' } });
  assert.equal(ranged.statusCode, 206);
  const text = Buffer.from(await ranged.body.arrayBuffer());
  assert.match(String(ranged.headers['content-type']), /^multipart\/byteranges; boundary=/);
  assert.ok(text.includes(v2.data.subarray(10, 20)) && text.includes(v2.data.subarray(1000000, 1000100)));
  assert.match(text.toString('latin1'), new RegExp(`Content-Range: bytes 1000000-1000099/${v2.data.length}`));
  const single = await request(`${proxyUrl}${v2.name}`, { headers: { range: 'bytes=4000-4999' } });
  assert.equal(single.statusCode, 206);
  assert.ok(Buffer.from(await single.body.arrayBuffer()).equals(v2.data.subarray(4000, 5000)));
  assert.equal(imageRequests(), before, 'served from the cache: nothing more from the upstream');

  const status = JSON.parse(
    Buffer.from(await (await request(`${proxyUrl}.deltad/status`)).body.arrayBuffer()).toString(),
  );
  assert.ok(status.cache.hitRate > 0 && status.bytesServed > v2.data.length);
});
