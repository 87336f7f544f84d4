// The fleet proxy against a real upstream on 127.0.0.1: its chunk store (read
// by the real casync), the batch endpoint and its client, single-flight,
// revalidated metadata with stale fallback, a lying upstream, a full disk, and
// access control (allow-list, absolute-form targets, odd Host, traversal, caps).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { connect } from 'node:net';
import { join } from 'node:path';
import { request } from 'undici';
import type { ProxyOptions, ProxyServer } from '../daemon/proxy.js';
import { HttpClient } from '../lib/fetch/http-client.js';
import { openProxyStore } from '../lib/fleet/batch-store.js';
import { OriginError } from '../lib/errors.js';
import { chunkRelativePath } from '../lib/store/chunk-file.js';
import { compressChunk, decompressChunk } from '../lib/store/compression.js';
import { makeReleases, rangeFetchesOf, startTestProxy, type Release } from './helpers/fleet.js';
import { startOrigin, type Origin } from './helpers/origin.js';
import { VERSION } from '../lib/util/version.js';
import { tmpDir } from './helpers/tmp.js';

const run = promisify(execFile);

interface Fixture {
  dir: string;
  upstream: Origin;
  releases: Release[];
  proxy: ProxyServer;
  url: string;
}

async function setup(t: TestContext, over: Partial<ProxyOptions> = {}, size = 2 * 1024 * 1024): Promise<Fixture> {
  const dir = await tmpDir(t, 'proxy');
  const origin = join(dir, 'origin');
  await mkdir(origin);
  const releases = await makeReleases(origin, size, 2);
  const upstream = await startOrigin({ root: origin });
  t.after(() => upstream.close());
  const { proxy, url } = await startTestProxy(t, upstream.url, join(dir, 'cache'), over);
  return { dir, upstream, releases, proxy, url: url.slice(0, -1) };
}

async function get(url: string, headers: Record<string, string> = {}) {
  const res = await request(url, { headers, headersTimeout: 10_000, bodyTimeout: 10_000 });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers, body };
}

/** Sends raw bytes over one connection and returns the status line (for targets undici would not send). */
function rawRequest(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => s.write(text));
    let got = '';
    s.setTimeout(5000, () => s.destroy(new Error('raw request timed out')));
    s.on('data', (b) => {
      got += b.toString('latin1');
      if (got.includes('\r\n')) {
        s.destroy();
        resolve(got.split('\r\n')[0]);
      }
    });
    s.on('error', reject);
    s.on('close', () => resolve(got.split('\r\n')[0]));
  });
}

test('casync extract reads the proxy chunk store (chunks located through the index that passed through)', {
  timeout: 60_000,
}, async (t) => {
  const f = await setup(t);
  const [v1] = f.releases;
  const out = join(f.dir, 'out.img');
  // casync fetches the index through the proxy (which learns the chunk locations), then every chunk from the store.
  await run('casync', ['extract', `--store=${f.url}/.deltad/store`, `${f.url}/${v1.name}.caibx`, out], {
    timeout: 50_000,
  });
  assert.ok((await readFile(out)).equals(v1.data), 'casync output equals the image');
  const s = f.proxy.status();
  assert.equal(s.cache.entries, new Set(Array.from({ length: v1.index.count }, (_, i) => v1.index.idHex(i))).size);
  // Second extract: all from the cache, no chunk bytes from the upstream.
  const before = f.upstream.log.filter((e) => e.status === 206).length;
  await run('casync', ['extract', `--store=${f.url}/.deltad/store`, `${f.url}/${v1.name}.caibx`, out + '2'], {
    timeout: 50_000,
  });
  assert.ok((await readFile(out + '2')).equals(v1.data));
  assert.equal(f.upstream.log.filter((e) => e.status === 206).length, before);
});

test('store endpoint: exact path rule, HEAD, 404 for unknown chunks', { timeout: 30_000 }, async (t) => {
  const f = await setup(t);
  const [v1] = f.releases;
  const hex = v1.index.idHex(0);
  assert.equal(
    (await get(`${f.url}/.deltad/store/${chunkRelativePath(hex, true)}`)).status,
    404,
    'unknown before its index passed through',
  );
  assert.equal((await get(`${f.url}/${v1.name}.caibx`)).status, 200);
  const ok = await get(`${f.url}/.deltad/store/${chunkRelativePath(hex, true)}`);
  assert.equal(ok.status, 200);
  assert.equal(ok.body.subarray(0, 4).toString('hex'), '28b52ffd', 'zstd .cacnk');
  assert.equal(ok.headers['x-deltad-proxy'], VERSION);
  const head = await request(`${f.url}/.deltad/store/${chunkRelativePath(hex, true)}`, { method: 'HEAD' });
  await head.body.dump();
  assert.equal(head.statusCode, 200);
  assert.equal((await get(`${f.url}/.deltad/store/${hex.slice(0, 4)}/${hex}`)).status, 400, 'uncompressed name');
  assert.equal((await get(`${f.url}/.deltad/store/abcd/${hex}.cacnk`)).status, 400, 'wrong prefix dir');
  assert.equal((await get(`${f.url}/.deltad/store/${chunkRelativePath('0'.repeat(64), true)}`)).status, 404);
});

test('batch endpoint: concurrent sidecar BatchStores get every chunk verified; each chunk fetched upstream once', {
  timeout: 30_000,
}, async (t) => {
  const f = await setup(t);
  const v2 = f.releases[1];
  const client = new HttpClient();
  t.after(() => client.close());
  const info = await get(`${f.url}/.deltad/info`);
  assert.equal(JSON.parse(info.body.toString()).service, 'deltad-proxy');
  // Sidecars fetch both indexes through the proxy, then all chunks of v2 at once.
  for (const r of f.releases) assert.equal((await get(`${f.url}/${r.name}.caibx`)).status, 200);
  const reqs = Array.from({ length: v2.index.count }, (_, i) => ({ id: v2.index.id(i), size: v2.index.chunkSize(i) }));
  const results = await Promise.all(
    Array.from({ length: 4 }, async () => {
      const store = await openProxyStore(`${f.url}/some/path/`, { client, batchSize: 7 });
      assert.ok(store, 'proxy detected');
      const got = new Map<number, Buffer>();
      for await (const { index, data } of store.getMany(reqs)) got.set(index, data);
      return got;
    }),
  );
  for (const got of results) {
    assert.equal(got.size, v2.index.count);
    for (let i = 0; i < v2.index.count; i++)
      assert.ok(got.get(i)!.equals(v2.data.subarray(v2.index.start(i), v2.index.end(i))));
  }
  for (let i = 0; i < v2.index.count; i++) {
    const fetched = rangeFetchesOf(f.upstream.log, `/${v2.name}`, v2.index.start(i), v2.index.end(i));
    assert.ok(fetched <= 1, `chunk ${i} fetched ${fetched} times`);
  }
  const chunkBytes = f.upstream.log.filter((e) => e.status === 206).reduce((n, e) => n + e.bytes, 0);
  assert.ok(chunkBytes <= v2.data.length, `upstream sent ${chunkBytes} range bytes for a ${v2.data.length}-byte image`);
  assert.ok(
    f.proxy.status().cache.joined + f.proxy.status().cache.hits > 0,
    'other clients shared fetches or hit the cache',
  );
  // Non-proxy origins are not mistaken for one.
  assert.equal(await openProxyStore(f.upstream.url, { client }), null);
  // GET form and malformed requests.
  const one = await get(`${f.url}/.deltad/batch?ids=${v2.index.idHex(0)},${'0'.repeat(64)}`);
  assert.equal(one.status, 200);
  assert.equal(one.headers['content-type'], 'application/vnd.deltad.chunks');
  assert.equal((await get(`${f.url}/.deltad/batch?ids=XYZ`)).status, 400);
  const bad = await request(`${f.url}/.deltad/batch`, {
    method: 'POST',
    body: Buffer.alloc(33),
    headers: { 'content-type': 'application/octet-stream' },
  });
  await bad.body.dump();
  assert.equal(bad.statusCode, 400);
});

test('metadata: revalidated every time, new release seen at once, stale when the upstream is down, 404 stays 404', {
  timeout: 30_000,
}, async (t) => {
  const f = await setup(t);
  const first = await get(`${f.url}/SHA256SUMS`);
  assert.equal(first.status, 200);
  assert.ok(first.body.equals(await readFile(join(f.dir, 'origin', 'SHA256SUMS'))));
  const again = await get(`${f.url}/SHA256SUMS`);
  assert.ok(again.body.equals(first.body));
  const sums = f.upstream.log.filter((e) => e.path === '/SHA256SUMS');
  assert.deepEqual(
    sums.map((e) => e.status),
    [200, 304],
    'second request revalidated with a conditional GET',
  );
  // A new release upstream is served at once.
  await writeFile(join(f.dir, 'origin', 'SHA256SUMS'), 'new release\n');
  assert.equal((await get(`${f.url}/SHA256SUMS`)).body.toString(), 'new release\n');
  assert.equal((await get(`${f.url}/SHA256SUMS.gpg`)).status, 404, 'a 404 stays a 404');
  // Upstream down: the cached copy, marked stale; uncached files fail clearly.
  f.upstream.down = true;
  const stale = await get(`${f.url}/SHA256SUMS`);
  assert.equal(stale.status, 200);
  assert.equal(stale.body.toString(), 'new release\n');
  assert.equal(stale.headers['x-deltad-stale'], '1');
  assert.match(String(stale.headers.warning), /^110 /);
  const missing = await get(`${f.url}/never-fetched.txt`);
  assert.equal(missing.status, 502);
  assert.match(missing.body.toString(), /upstream unreachable and no cached copy/);
  assert.equal(f.proxy.status().staleServed, 1);
});

test('upstream down: cached chunks still served, uncached chunks fail clearly', { timeout: 30_000 }, async (t) => {
  const f = await setup(t);
  const [v1] = f.releases;
  await get(`${f.url}/${v1.name}.caibx`);
  const cachedId = v1.index.idHex(0);
  assert.equal((await get(`${f.url}/.deltad/store/${chunkRelativePath(cachedId, true)}`)).status, 200);
  f.upstream.down = true;
  assert.equal(
    (await get(`${f.url}/.deltad/store/${chunkRelativePath(cachedId, true)}`)).status,
    200,
    'served from the cache',
  );
  const other = v1.index.idHex(v1.index.count - 1);
  const res = await get(`${f.url}/.deltad/store/${chunkRelativePath(other, true)}`);
  assert.equal(res.status, 500);
  assert.match(res.body.toString(), /ECONNRE|socket|closed|other side/i);
});

test('upstream returns wrong bytes: not cached, not served (store 500, batch ERROR frames, client error)', {
  timeout: 30_000,
}, async (t) => {
  const f = await setup(t);
  const [v1] = f.releases;
  await get(`${f.url}/${v1.name}.caibx`);
  f.upstream.fault({ kind: 'wrong-bytes', rangedOnly: true, times: Infinity }); // every byte range lies
  const hex = v1.index.idHex(1);
  const res = await get(`${f.url}/.deltad/store/${chunkRelativePath(hex, true)}`);
  assert.equal(res.status, 500);
  assert.match(res.body.toString(), /does not match its ID/);
  const client = new HttpClient({ attempts: 1 });
  t.after(() => client.close());
  const store = await openProxyStore(f.url, { client });
  const reqs = [{ id: v1.index.id(2), size: v1.index.chunkSize(2) }];
  await assert.rejects(
    async () => {
      for await (const _ of store!.getMany(reqs)) assert.fail('a wrong chunk was yielded');
    },
    (err: Error) => err instanceof OriginError && /could not fetch 1 chunk/.test(err.message),
  );
  assert.equal(f.proxy.cache.stats.entries, 0, 'nothing cached');
  assert.deepEqual(await readdir(join(f.dir, 'cache', 'chunks')), []);
  // Once the upstream is honest again, the same chunk is fetched and served.
  f.upstream.clearFaults();
  const good = await get(`${f.url}/.deltad/store/${chunkRelativePath(hex, true)}`);
  assert.equal(good.status, 200);
});

test('disk full: chunks are served without being cached, and nothing partial is left', {
  timeout: 30_000,
}, async (t) => {
  const f = await setup(t, {
    cacheWriteFile: async () => {
      throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
    },
  });
  const [v1] = f.releases;
  await get(`${f.url}/${v1.name}.caibx`);
  const client = new HttpClient();
  t.after(() => client.close());
  const store = await openProxyStore(f.url, { client });
  const reqs = Array.from({ length: v1.index.count }, (_, i) => ({ id: v1.index.id(i), size: v1.index.chunkSize(i) }));
  let n = 0;
  for await (const _ of store!.getMany(reqs)) n++;
  assert.equal(n, v1.index.count);
  const s = f.proxy.status().cache;
  assert.equal(s.entries, 0);
  assert.ok(s.writeErrors >= 1);
  assert.match(s.lastWriteError ?? '', /ENOSPC/);
  const left = await readdir(join(f.dir, 'cache', 'chunks'), { recursive: true });
  assert.ok(!left.some((p) => p.includes('.tmp-') || p.endsWith('.cacnk')), `left: ${left.join(' ')}`);
  const metrics = await get(`${f.url}/metrics`);
  assert.match(metrics.body.toString(), /deltad_proxy_cache_write_errors_total [1-9]/);
});

test('access: clients outside the allow-list get 403', { timeout: 15_000 }, async (t) => {
  const f = await setup(t, { allow: ['10.0.0.0/8', '192.168.0.0/16'] });
  const res = await get(`${f.url}/SHA256SUMS`);
  assert.equal(res.status, 403);
  assert.match(res.body.toString(), /127\.0\.0\.1 is not in the allow-list/);
  assert.equal(f.upstream.log.length, 0, 'nothing reached the upstream');
});

test('access: other hosts, odd Host headers and traversal are refused; per-client cap', {
  timeout: 15_000,
}, async (t) => {
  const f = await setup(t, { maxPerClient: 1 });
  const port = Number(new URL(f.url).port);
  assert.match(
    await rawRequest(port, 'GET http://example.com/SHA256SUMS HTTP/1.1\r\nHost: example.com\r\n\r\n'),
    / 400 /,
  );
  assert.match(
    await rawRequest(port, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n'),
    /^(HTTP\/1.1 4\d\d |)$/,
  );
  assert.match(await rawRequest(port, 'GET /SHA256SUMS HTTP/1.1\r\nHost: evil.com/x@y\r\n\r\n'), / 400 /);
  assert.match(await rawRequest(port, 'GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n'), / 400 /);
  assert.match(await rawRequest(port, 'GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n'), / 400 /);
  assert.match(await rawRequest(port, 'GET //example.com/x HTTP/1.1\r\nHost: x\r\n\r\n'), / 400 /);
  assert.equal(f.upstream.log.length, 0, 'nothing reached the upstream');
  assert.equal((await get(`${f.url}/SHA256SUMS`)).status, 200, 'a plain request works');
  // Cap of 1: a second request while one is held open gets 429.
  const slow = connect(port, '127.0.0.1');
  await new Promise<void>((r) => slow.once('connect', () => r()));
  // An unfinished POST holds the one slot while its body is awaited.
  slow.write(
    'POST /.deltad/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 32\r\n\r\n',
  );
  await new Promise((r) => setTimeout(r, 100));
  const capped = await get(`${f.url}/SHA256SUMS`);
  slow.destroy();
  assert.equal(capped.status, 429);
  assert.equal(capped.headers['retry-after'], '1');
});

test('store endpoint: a cache file damaged on disk is never served; the chunk is fetched again and the cache heals', {
  timeout: 30_000,
}, async (t) => {
  const f = await setup(t);
  const [v1] = f.releases;
  await get(`${f.url}/${v1.name}.caibx`);
  const hex = v1.index.idHex(0);
  const path = `${f.url}/.deltad/store/${chunkRelativePath(hex, true)}`;
  const first = await get(path);
  assert.equal(first.status, 200);
  // Bit rot in the cached .cacnk file (a valid zstd frame whose content is not the chunk).
  const file = join(f.dir, 'cache', 'chunks', chunkRelativePath(hex, true));
  await writeFile(file, compressChunk(Buffer.from('not the chunk')));
  const again = await get(path);
  assert.equal(again.status, 200);
  assert.ok(
    decompressChunk(again.body, v1.index.chunkSize(0)).equals(v1.data.subarray(0, v1.index.chunkSize(0))),
    'the served .cacnk holds the chunk',
  );
  assert.ok(
    decompressChunk(await readFile(file), v1.index.chunkSize(0)).equals(v1.data.subarray(0, v1.index.chunkSize(0))),
    'the cache file was replaced',
  );
});

test("index names: an upstream with only KDE's <stem>.caibx still has its images served from chunks", async (t) => {
  const f = await setup(t, { indexNames: ['{stem}.caibx', '{name}.caibx'] });
  const v2 = f.releases[1];
  // Only the primary name: os_2.caibx for os_2.img.
  const originDir = join(f.dir, 'origin');
  await writeFile(join(originDir, 'os_2.caibx'), await readFile(join(originDir, 'os_2.img.caibx')));
  await rm(join(originDir, 'os_2.img.caibx'));
  const whole = await get(`${f.url}/os_2.img`);
  assert.equal(whole.status, 200);
  assert.ok(whole.body.equals(v2.data), 'byte-identical');
  const s = f.proxy.status() as { cache: { fetches: number } };
  assert.ok(s.cache.fetches > 0, 'assembled from chunks (fetched into the cache), not streamed through');
  assert.ok(
    f.upstream.log.some((e) => e.path === '/os_2.caibx' && e.status === 200),
    'the primary index name was asked',
  );
  assert.ok(!f.upstream.log.some((e) => e.path === '/os_2.img' && !e.range), 'the whole image was never fetched');
});
