// The sysupdate sidecar end to end: a real origin on 127.0.0.1 publishing v1,
// v2 (+ .caibx, SHA256SUMS), the daemon seeded with v1, and real clients
// (systemd-pull as systemd-sysupdate runs it, curl). Also the fallbacks (no
// index, no ranges, corrupt seed, origin dying, wrong checksum), sharing of one
// assembly, cancellation, pass-through, and hostile request targets.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { connect } from 'node:net';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { buildServer } from '../daemon/server.js';
import { defaultConfig, type DaemonConfig } from '../daemon/config.js';
import { createLogger } from '../daemon/log.js';
import { createNotifier } from '../daemon/notify.js';
import type { ImageTimeouts } from '../daemon/image-service.js';
import { IndexCache } from '../lib/seed/index-cache.js';
import { serializeIndex } from '../lib/format/caibx.js';
import { startOrigin, type Origin } from './helpers/origin.js';
import { makeReleases, type Release } from './helpers/fleet.js';
import { requireTool, run, SYSTEMD_PULL, systemdPull } from './helpers/sysupdate-client.js';
import { fileTmpDir } from './helpers/tmp.js';
import { settled } from './helpers/settled.js';
import { IMAGE_START_BYTES } from '../lib/delta/release.js';

/** The sidecar's range probe of an image: its first bytes, kept for the first chunks. */
const RANGE_PROBE = `bytes=0-${IMAGE_START_BYTES - 1}`;

const SIZE = 4 * 1024 * 1024;
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

interface Fixture {
  dir: string;
  originDir: string;
  seedDir: string;
  outDir: string;
  releases: Release[];
  origin: Origin;
}

/** The shared fixture's files (origin, seeds), removed after the file's last test. */
const dir = fileTmpDir('sysupdate');
/** One origin with three releases (os_1..3.img), seeds dir holding v1. Shared by the tests of this file. */
let shared: Promise<Fixture> | undefined;
function fixture(): Promise<Fixture> {
  shared ??= (async () => {
    const originDir = join(dir, 'origin');
    const seedDir = join(dir, 'system');
    const outDir = join(dir, 'out');
    await Promise.all([mkdir(originDir), mkdir(seedDir), mkdir(outDir)]);
    const releases = await makeReleases(originDir, SIZE, 3);
    await copyFile(join(originDir, 'os_1.img'), join(seedDir, 'os_1.img'));
    // sysupdate's temporary files must never be used as seeds.
    await writeFile(join(seedDir, '.sysupdate.partial.os_2.img'), releases[0].data.subarray(0, 1000));
    const origin = await startOrigin({ root: originDir });
    return { dir, originDir, seedDir, outDir, releases, origin };
  })();
  return shared;
}

test.after(async () => {
  if (!shared) return;
  const f = await shared;
  await f.origin.close();
});

interface Daemon {
  url: string;
  ctx: Awaited<ReturnType<typeof buildServer>>['ctx'];
  logs: string[];
  close(): Promise<void>;
}

async function startDaemon(
  t: { after(fn: () => Promise<void>): void },
  f: Fixture,
  over: Partial<DaemonConfig> = {},
  originUrl = f.origin.url,
  timeouts?: Partial<ImageTimeouts>,
  shareBufferBytes?: number,
  releaseFreshMs?: number,
): Promise<Daemon> {
  const cacheDir = await mkdtemp(join(f.dir, 'cache-'));
  const config: DaemonConfig = {
    ...defaultConfig({}),
    origin: `${originUrl}/`,
    seedGlobs: [join(f.seedDir, '*.img')],
    cacheDir,
    idleTimeout: 0,
    ...over,
  };
  const logs: string[] = [];
  const log = createLogger({ write: (s: string) => logs.push(s) } as unknown as NodeJS.WritableStream, {});
  const { app, ctx } = await buildServer(config, {
    log,
    notifier: createNotifier({ env: {} }),
    timeouts,
    shareBufferBytes,
    releaseFreshMs,
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const addr = app.server.address() as { port: number };
  const close = async () => {
    await app.close();
  };
  t.after(close);
  return { url: `http://127.0.0.1:${addr.port}`, ctx, logs, close };
}

/** Bytes of every file under `dir`. */
async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    // Files may be renamed away while we look (index cache writes): those count as nothing.
    if (e.isFile()) total += (await stat(join(e.parentPath, e.name)).catch(() => ({ size: 0 }))).size;
  }
  return total;
}

async function curl(args: string[], timeoutMs = 30_000) {
  return run('curl', ['-sS', '--max-time', String(timeoutMs / 1000), ...args], timeoutMs + 5_000);
}

const hasCurl = (await run('curl', ['--version'], 5_000)).code === 0;

test('systemd-pull through the daemon: v2 assembled from the v1 seed, byte-identical, far fewer origin bytes', {
  timeout: 60_000,
}, async (t) => {
  if (!requireTool(t, Boolean(SYSTEMD_PULL), 'systemd-pull')) return;
  const f = await fixture();
  const d = await startDaemon(t, f);
  const v2 = f.releases[1];
  const before = f.origin.stats('/os_2.img');
  const out = join(f.outDir, 'pull-hash.img');
  // Literal hash: what systemd-sysupdate passes for an image listed in SHA256SUMS.
  const r = await systemdPull(`${d.url}/os_2.img`, out, sha256(v2.data));
  assert.equal(r.code, 0, r.stderr);
  assert.ok((await readFile(out)).equals(v2.data), 'byte-identical to v2');
  const imageBytes = f.origin.stats('/os_2.img').bytes - before.bytes;
  assert.ok(
    imageBytes > 0 && imageBytes < SIZE * 0.4,
    `origin served ${imageBytes} image bytes for a ${SIZE}-byte image`,
  );
  assert.equal(d.ctx.counters.assembliesCompleted, 1);
  assert.ok(d.ctx.counters.bytesReused > SIZE * 0.5, `reused ${d.ctx.counters.bytesReused}`);
  assert.ok(
    !f.origin.log.some((e) => e.path === '/os_2.img' && !e.range && e.method === 'GET'),
    'the full image was never fetched',
  );

  // The manifest, fetched the way sysupdate does (--verify=no): passed through by a 307.
  const sumsOut = join(f.outDir, 'SHA256SUMS');
  const r2 = await systemdPull(`${d.url}/SHA256SUMS`, sumsOut, 'no');
  assert.equal(r2.code, 0, r2.stderr);
  assert.ok((await readFile(sumsOut)).equals(await readFile(join(f.originDir, 'SHA256SUMS'))));
  assert.equal(d.ctx.counters.passthroughs, 1);

  // The plan endpoint agrees with what happened: most bytes from seeds, and the image bytes the origin served within
  // 1% (what /v1/updatesize tells Discover): the update's own range probe, then the rest, which is what an update
  // started now would take, with the probe's first bytes at hand (the missing chunks within them not asked again).
  const probe = Math.min(IMAGE_START_BYTES, SIZE);
  const plan = (await (await fetch(`${d.url}/.deltad/plan/os_2.img`)).json()) as Record<string, number>;
  assert.equal(plan.targetSize, SIZE);
  assert.ok(plan.bytesFromSeeds > SIZE * 0.5 && plan.bytesFromNetwork < SIZE * 0.4, JSON.stringify(plan));
  assert.ok(
    Math.abs(probe + plan.bytesFromNetwork - imageBytes) <= imageBytes * 0.01,
    `planned ${plan.bytesFromNetwork} network bytes after the ${probe}-byte probe, the origin served ${imageBytes}`,
  );
  const metrics = await (await fetch(`${d.url}/metrics`)).text();
  assert.match(metrics, /^deltad_assemblies_completed_total 1$/m);
  assert.match(metrics, /^deltad_fallbacks_total 0$/m);
});

test('curl GET and HEAD; the installed image is adopted as a seed without chunking', { timeout: 60_000 }, async (t) => {
  if (!requireTool(t, hasCurl, 'curl')) return;
  const f = await fixture();
  const d = await startDaemon(t, f);
  const v2 = f.releases[1];
  const head = await curl(['-I', `${d.url}/os_2.img`]);
  assert.equal(head.code, 0, head.stderr);
  assert.match(head.stdout, /^HTTP\/1\.1 200/);
  assert.match(head.stdout, new RegExp(`^content-length: ${SIZE}\\r?$`, 'mi'));
  assert.equal(d.ctx.counters.assembliesStarted, 0, 'HEAD assembles nothing');

  const out = join(f.outDir, 'curl.img');
  const get = await curl(['-f', '-o', out, '-w', '%{http_code} %{size_download}', `${d.url}/os_2.img`]);
  assert.equal(get.code, 0, get.stderr);
  assert.equal(get.stdout, `200 ${SIZE}`);
  assert.ok((await readFile(out)).equals(v2.data));
  const adoptDir = join(d.ctx.config.cacheDir, 'adopt');
  // Kept when the assembly's result settles, just after the last byte went out (a .tmp, then the rename).
  const kept = await settled(adoptDir, ['os_2.img.caibx']);
  assert.deepEqual(kept, ['os_2.img.caibx'], 'index kept for the image being installed');

  // "sysupdate installs it": the file appears under the seed glob; the next request adopts its index.
  const installed = join(f.seedDir, 'os_2.img');
  await copyFile(out, installed);
  t.after(() => rm(installed, { force: true }));
  const out3 = join(f.outDir, 'curl3.img');
  const get3 = await curl(['-f', '-o', out3, `${d.url}/os_3.img`]);
  assert.equal(get3.code, 0, get3.stderr);
  assert.ok((await readFile(out3)).equals(f.releases[2].data));
  assert.ok(
    d.logs.some((l) => l.includes(`seed ${installed}: adopted the index`)),
    d.logs.join(''),
  );
  assert.deepEqual(await settled(adoptDir, ['os_3.img.caibx']), ['os_3.img.caibx']);
});

test('start-up indexing: seeds are chunked in the background with the last target chunking, once', {
  timeout: 30_000,
}, async (t) => {
  const f = await fixture();
  const d = await startDaemon(t, f);
  const v2 = f.releases[1].index;
  await d.ctx.seeds.remember('os_2.img', v2); // as after a delta served by an earlier daemon
  await d.ctx.seeds.warm();
  const cache = new IndexCache(d.ctx.config.cacheDir);
  const key = { params: v2.params, digest: v2.digest };
  const cached = await cache.get(join(f.seedDir, 'os_1.img'), key);
  assert.ok(
    cached && serializeIndex(cached).equals(serializeIndex(f.releases[0].index)),
    'the seed index is cached and right',
  );
  assert.ok(
    d.logs.some((l) => /seed indexes ready for 1 seed/.test(l)),
    d.logs.join(''),
  );
  assert.equal(
    await cache.get(join(f.seedDir, '.sysupdate.partial.os_2.img'), key),
    null,
    "sysupdate's temporary file is not a seed",
  );
  // A second warm-up finds everything cached: no chunking, the same index.
  await d.ctx.seeds.warm();
  assert.ok(serializeIndex((await cache.get(join(f.seedDir, 'os_1.img'), key))!).equals(serializeIndex(cached)));
});

test('two clients share one assembly; a client that disconnects cancels it', { timeout: 60_000 }, async (t) => {
  const f = await fixture();
  const d = await startDaemon(t, f);
  const v2 = f.releases[1];
  // Client A holds its download open (paused after the first bytes) while client B, arriving just after, asks for
  // the same image: the start of the image is still kept for it.
  const a = await fetch(`${d.url}/os_2.img`);
  const readerA = a.body!.getReader();
  const first = await readerA.read();
  const b = Buffer.from(await (await fetch(`${d.url}/os_2.img`)).arrayBuffer());
  const partsA: Uint8Array[] = [first.value!];
  for (let r = await readerA.read(); !r.done; r = await readerA.read()) partsA.push(r.value);
  assert.ok(Buffer.concat(partsA).equals(v2.data) && b.equals(v2.data));
  assert.equal(d.ctx.counters.assembliesStarted, 1, 'one assembly for both');
  assert.ok(d.logs.some((l) => l.includes('sharing the assembly of an earlier request')));

  // No image-sized file of the daemon's own: the cache holds seed indexes only.
  assert.ok((await dirBytes(d.ctx.config.cacheDir)) < SIZE / 10, 'nothing image-sized in the cache directory');

  // Stall every range request so the assembly cannot finish; the client leaves after a few bytes.
  f.origin.fault({ kind: 'stall', path: '/os_3.img', rangedOnly: true, skip: 1, times: Infinity, stallMs: 20_000 });
  t.after(() => f.origin.clearFaults());
  await new Promise<void>((resolve, reject) => {
    const req = httpRequest(`${d.url}/os_3.img`, (res) => {
      res.once('data', () => {
        req.destroy();
        resolve();
      });
    });
    req.on('error', (err) => (req.destroyed ? resolve() : reject(err)));
    req.end();
  });
  const deadline = Date.now() + 5_000;
  while (d.ctx.assemblies.active.length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.equal(d.ctx.assemblies.active.length, 0, 'assembly cancelled');
  assert.equal(d.ctx.counters.assemblyFailures, 0, 'a cancellation is not a failure');
});

test('fallbacks: no index, no range support, corrupt seed: the client still gets the right image', {
  timeout: 60_000,
}, async (t) => {
  if (!requireTool(t, Boolean(SYSTEMD_PULL), 'systemd-pull')) return;
  const f = await fixture();
  const v2 = f.releases[1];
  // No index: a 307 to the origin (systemd-pull follows it) or, in proxy mode, the full file.
  for (const passthrough of ['redirect', 'proxy'] as const) {
    const d = await startDaemon(t, f, { indexNames: ['{name}.missing'], passthrough });
    const out = join(f.outDir, `noindex-${passthrough}.img`);
    const r = await systemdPull(`${d.url}/os_2.img`, out, sha256(v2.data));
    assert.equal(r.code, 0, r.stderr);
    assert.ok((await readFile(out)).equals(v2.data));
    assert.equal(d.ctx.counters.fallbacks, 1);
    assert.equal(d.ctx.counters.assembliesStarted, 0);
  }

  // An origin that ignores Range: found out before the first byte, passed through whole.
  f.origin.ranges = 'none';
  try {
    const d = await startDaemon(t, f);
    const out = join(f.outDir, 'noranges.img');
    const r = await systemdPull(`${d.url}/os_2.img`, out, sha256(v2.data));
    assert.equal(r.code, 0, r.stderr);
    assert.ok((await readFile(out)).equals(v2.data));
    assert.equal(d.ctx.counters.fallbacks, 1);
    assert.ok(d.logs.some((l) => /does not serve byte ranges/.test(l)));
  } finally {
    f.origin.ranges = 'multi';
  }

  // A corrupt seed (v1 with flipped bytes): its bad chunks are fetched instead.
  const corruptDir = join(f.dir, 'corrupt-seed');
  await mkdir(corruptDir, { recursive: true });
  const bad = Buffer.from(f.releases[0].data);
  for (let o = 100_000; o < bad.length; o += 700_000) bad[o] ^= 0x55;
  await writeFile(join(corruptDir, 'os_1.img'), bad);
  // Its index claims the true v1 chunks (a lying seed index, as after silent disk corruption).
  const d = await startDaemon(t, f, { seedGlobs: [join(corruptDir, '*.img')] });
  await d.ctx.seeds.remember('os_1.img', f.releases[0].index);
  const out = join(f.outDir, 'corrupt-seed.img');
  const r = await systemdPull(`${d.url}/os_2.img`, out, sha256(v2.data));
  assert.equal(r.code, 0, r.stderr);
  assert.ok((await readFile(out)).equals(v2.data));
});

test('never a wrong image: origin dying mid-assembly, lying origin, wrong SHA256SUMS', {
  timeout: 90_000,
}, async (t) => {
  if (!requireTool(t, Boolean(SYSTEMD_PULL), 'systemd-pull') || !requireTool(t, hasCurl, 'curl')) return;
  const f = await fixture();
  const v2 = f.releases[1];
  t.after(() => f.origin.clearFaults());

  // The origin cuts every range request after the probe: the engine retries, then gives up.
  f.origin.fault({ kind: 'cut', path: '/os_2.img', rangedOnly: true, skip: 1, times: Infinity, afterBytes: 1000 });
  const d = await startDaemon(t, f);
  const out = join(f.outDir, 'dying.img');
  const r = await curl(['-o', out, '-w', '%{http_code} %{size_download}', `${d.url}/os_2.img`], 60_000);
  const got = await readFile(out).catch(() => Buffer.alloc(0));
  assert.notEqual(r.code, 0, 'curl reports a failed transfer');
  assert.ok(got.length < SIZE, `truncated (${got.length} bytes), never complete`);
  assert.ok(v2.data.subarray(0, got.length).equals(got), 'what arrived is a prefix of v2');
  assert.equal(d.ctx.counters.assemblyFailures, 1);
  f.origin.clearFaults();

  // A lying origin (wrong bytes in a range): every chunk is verified and refetched; the result is right.
  f.origin.fault({ kind: 'wrong-bytes', path: '/os_2.img', rangedOnly: true, skip: 1, times: 1 });
  const out2 = join(f.outDir, 'lying.img');
  const r2 = await systemdPull(`${d.url}/os_2.img`, out2, sha256(v2.data));
  assert.equal(r2.code, 0, r2.stderr);
  assert.ok((await readFile(out2)).equals(v2.data));
  f.origin.clearFaults();

  // SHA256SUMS lists another hash than the image has: the final bytes are held back.
  const sumsDir = join(f.dir, 'origin-badsums');
  await mkdir(sumsDir, { recursive: true });
  await copyFile(join(f.originDir, 'os_2.img'), join(sumsDir, 'os_2.img'));
  await copyFile(join(f.originDir, 'os_2.img.caibx'), join(sumsDir, 'os_2.img.caibx'));
  await writeFile(join(sumsDir, 'SHA256SUMS'), `${'0'.repeat(64)}  os_2.img\n`);
  const badOrigin = await startOrigin({ root: sumsDir });
  t.after(() => badOrigin.close());
  const d2 = await startDaemon(t, f, {}, badOrigin.url);
  const out3 = join(f.outDir, 'badsums.img');
  const r3 = await curl(['-o', out3, `${d2.url}/os_2.img`], 60_000);
  assert.notEqual(r3.code, 0);
  const got3 = await readFile(out3).catch(() => Buffer.alloc(0));
  assert.ok(got3.length < SIZE, `held back: ${got3.length} of ${SIZE} bytes`);
});

test('slow first byte: headers within 2 s, then after the deadline the full image streamed under them; a stall after bytes cuts the download', {
  timeout: 60_000,
}, async (t) => {
  if (!requireTool(t, hasCurl, 'curl')) return;
  const f = await fixture();
  t.after(() => f.origin.clearFaults());
  const v3 = f.releases[2];
  // No seeds: the first byte needs the network, and every range request stalls; the range probe answers 206 but is
  // cut after a byte, so no chunk comes from it either.
  f.origin.fault({ kind: 'cut', path: '/os_3.img', rangedOnly: true, afterBytes: 1 });
  f.origin.fault({ kind: 'stall', path: '/os_3.img', rangedOnly: true, times: Infinity, stallMs: 20_000 });
  const d = await startDaemon(t, f, { seedGlobs: [join(f.dir, 'no-seeds', '*.img')] }, f.origin.url, {
    firstByteMs: 2_500,
  });
  const out = join(f.outDir, 'slow-first.img');
  const r = await curl([
    '-f',
    '-o',
    out,
    '-w',
    '%{time_starttransfer} %{time_total} %{size_download}',
    `${d.url}/os_3.img`,
  ]);
  assert.equal(r.code, 0, r.stderr);
  const [headers, total, n] = r.stdout.split(' ').map(Number);
  assert.equal(n, SIZE);
  assert.ok((await readFile(out)).equals(v3.data), 'the origin file, verified, under the same headers');
  assert.ok(headers < 2.5, `headers after ${headers} s`);
  assert.ok(total >= 4, `body only after the first-byte deadline (${total} s)`);
  assert.equal(d.ctx.counters.fallbacks, 1);
  f.origin.clearFaults();

  // With the v1 seed the first bytes flow, then the network stalls: the watchdog ends it.
  f.origin.fault({ kind: 'cut', path: '/os_2.img', rangedOnly: true, afterBytes: 1 });
  f.origin.fault({ kind: 'stall', path: '/os_2.img', rangedOnly: true, times: Infinity, stallMs: 20_000 });
  const d2 = await startDaemon(t, f, {}, f.origin.url, { stallMs: 1_500 });
  const out2 = join(f.outDir, 'stalled.img');
  const r2 = await curl(['-o', out2, `${d2.url}/os_2.img`]);
  assert.notEqual(r2.code, 0, 'the client sees a failed transfer');
  const got = await readFile(out2);
  assert.ok(got.length > 0 && got.length < SIZE, `${got.length} bytes, truncated`);
  assert.ok(f.releases[1].data.subarray(0, got.length).equals(got));
  assert.ok(
    d2.logs.some((l) => /stalled: no verified byte/.test(l)),
    d2.logs.join(''),
  );
});

test('pass-through keeps origin statuses; hostile targets and Host headers never leave the origin', {
  timeout: 30_000,
}, async (t) => {
  if (!requireTool(t, hasCurl, 'curl')) return;
  const f = await fixture();
  const redirect = await startDaemon(t, f);
  const proxy = await startDaemon(t, f, { passthrough: 'proxy' });
  const sums = await readFile(join(f.originDir, 'SHA256SUMS'));

  const r = await fetch(`${redirect.url}/SHA256SUMS`, { redirect: 'manual' });
  assert.equal(r.status, 307);
  assert.equal(r.headers.get('location'), `${f.origin.url}/SHA256SUMS`);
  const p = await fetch(`${proxy.url}/SHA256SUMS`);
  assert.equal(p.status, 200);
  assert.ok(Buffer.from(await p.arrayBuffer()).equals(sums));
  // sysupdate probes signature names and moves on only on a 404.
  assert.equal((await fetch(`${proxy.url}/SHA256SUMS.sha256.asc`)).status, 404);
  assert.equal((await fetch(`${redirect.url}/SHA256SUMS.gpg`)).status, 404, 'followed redirect ends in the origin 404');
  const headSums = await fetch(`${proxy.url}/SHA256SUMS`, { method: 'HEAD' });
  assert.equal(headSums.headers.get('content-length'), String(sums.length));

  for (const path of [
    '/../../etc/passwd',
    '/%2e%2e/%2e%2e/etc/passwd',
    '/x%2f..%2f..%2fetc%2fpasswd',
    '/a/..%5c..%5cetc/passwd',
  ]) {
    const c = await curl(['--path-as-is', '-o', '/dev/null', '-w', '%{http_code}', `${redirect.url}${path}`]);
    assert.equal(c.stdout, '400', path);
  }
  // Raw requests: an absolute-form target and a foreign Host header.
  const raw = (port: number, text: string) =>
    new Promise<string>((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => s.end(text));
      let buf = '';
      s.on('data', (d) => (buf += d));
      s.on('end', () => resolve(buf));
      s.on('error', reject);
      s.setTimeout(5_000, () => s.destroy(new Error('timeout')));
    });
  const port = Number(new URL(redirect.url).port);
  const abs = await raw(
    port,
    'GET http://evil.example/SHA256SUMS HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n',
  );
  assert.match(abs, /^HTTP\/1\.1 400/);
  const host = await raw(port, 'GET /SHA256SUMS HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n');
  assert.match(host, /^HTTP\/1\.1 307/);
  assert.match(
    host,
    new RegExp(`^location: ${f.origin.url}/SHA256SUMS\\r$`, 'mi'),
    'resolved against the configured origin only',
  );
  const proxyPort = Number(new URL(proxy.url).port);
  const before = f.origin.log.length;
  const absProxy = await raw(
    proxyPort,
    'GET http://evil.example/SHA256SUMS HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n',
  );
  assert.match(absProxy, /^HTTP\/1\.1 400/);
  assert.equal(f.origin.log.length, before, 'nothing was fetched for the refused request');
  assert.ok(redirect.ctx.counters.rejected >= 5);
});

test('a late client gets its own assembly; a slow client bounds what is buffered', { timeout: 60_000 }, async (t) => {
  const f = await fixture();
  const v2 = f.releases[1];
  const d = await startDaemon(t, f, {}, f.origin.url, undefined, 256 * 1024);
  // A reads its first bytes and then stops reading: the shared assembly may run at most the buffer ahead of it.
  const a = await fetch(`${d.url}/os_2.img`);
  const readerA = a.body!.getReader();
  const partsA: Uint8Array[] = [(await readerA.read()).value!];
  const [assembly] = d.ctx.assemblies.active;
  const waitUntil = async (ok: () => boolean) => {
    const deadline = Date.now() + 10_000;
    while (!ok() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  };
  await waitUntil(() => assembly.written > 0);
  // B arrives after A took its first bytes: byte 0 has left the buffer, so B has an assembly of its own and is not
  // held back by A, which still reads nothing.
  const b = Buffer.from(await (await fetch(`${d.url}/os_2.img`)).arrayBuffer());
  assert.ok(b.equals(v2.data), 'B got the whole image');
  for (let r = await readerA.read(); !r.done; r = await readerA.read()) partsA.push(r.value);
  assert.ok(Buffer.concat(partsA).equals(v2.data), 'A got the whole image');
  // The engine's chunks arrive whole, so the buffer may exceed its bound by one of them (at most 1 MiB here).
  assert.ok(assembly.peakBuffered <= 256 * 1024 + 1024 * 1024, `buffered at most ${assembly.peakBuffered} bytes`);
  // C starts while D is far into its download: byte 0 is gone, so C gets an assembly of its own.
  const started = d.ctx.counters.assembliesStarted;
  const dRes = await fetch(`${d.url}/os_2.img`);
  const readerD = dRes.body!.getReader();
  const partsD: Uint8Array[] = [];
  let got = 0;
  while (got < 1024 * 1024) {
    const r = await readerD.read();
    partsD.push(r.value!);
    got += r.value!.length;
  }
  const c = Buffer.from(await (await fetch(`${d.url}/os_2.img`)).arrayBuffer());
  for (let r = await readerD.read(); !r.done; r = await readerD.read()) partsD.push(r.value);
  assert.ok(c.equals(v2.data) && Buffer.concat(partsD).equals(v2.data), 'C and D got the whole image');
  assert.equal(d.ctx.counters.assembliesStarted - started, 2, 'the late client C had an assembly of its own');
});

test('clients that keep arriving past the join grace still share one assembly', { timeout: 60_000 }, async (t) => {
  const f = await fixture();
  const v2 = f.releases[1];
  // A buffer far smaller than the image: without holding the start, byte 0 would be gone within milliseconds.
  const d = await startDaemon(t, f, {}, f.origin.url, undefined, 64 * 1024);
  const get = async () => Buffer.from(await (await fetch(`${d.url}/os_2.img`)).arrayBuffer());
  const started = d.ctx.counters.assembliesStarted;
  // Two at once, then one every 600 ms: the last arrives well past the 2 s join grace, each within 1 s of the last.
  const bodies = [get(), get()];
  for (let i = 0; i < 4; i++) {
    await new Promise((r) => setTimeout(r, 600));
    bodies.push(get());
  }
  const got = await Promise.all(bodies);
  assert.ok(
    got.every((b) => b.equals(v2.data)),
    'every client got v2',
  );
  assert.equal(d.ctx.counters.assembliesStarted - started, 1, 'one assembly for the whole burst');
  assert.deepEqual(d.ctx.assemblies.active, [], 'nothing left running once the clients have every byte');
});

test('a request still being prepared when the assembly starts joins it (the start is held for it)', {
  timeout: 60_000,
}, async (t) => {
  const f = await fixture();
  const v2 = f.releases[1];
  t.after(() => f.origin.clearFaults());
  // No freshness: each request prepares on its own, and the second SHA256SUMS fetch comes 3 s late, past the join
  // grace and the quiet time; the other request's assembly would have dropped byte 0 long before.
  const d = await startDaemon(t, f, {}, f.origin.url, undefined, 64 * 1024, 0);
  f.origin.fault({ kind: 'delay', path: '/SHA256SUMS', skip: 1, delayMs: 3_000 });
  const get = async () => Buffer.from(await (await fetch(`${d.url}/os_2.img`)).arrayBuffer());
  const started = d.ctx.counters.assembliesStarted;
  const [bodyA, bodyB] = await Promise.all([get(), get()]);
  assert.ok(bodyA.equals(v2.data) && bodyB.equals(v2.data), 'both got v2');
  assert.equal(d.ctx.counters.assembliesStarted - started, 1, 'the late-prepared request joined the running assembly');
});

test("a request that falls back to the full image does not hold the start of another client's assembly", {
  timeout: 60_000,
}, async (t) => {
  const f = await fixture();
  const v2 = f.releases[1];
  t.after(() => f.origin.clearFaults());
  // No freshness, so A and B prepare apart; A's index is refused (403), so A streams the full image, which trickles.
  const d = await startDaemon(t, f, { passthrough: 'proxy' }, f.origin.url, undefined, 64 * 1024, 0);
  f.origin.fault({ kind: 'status', path: '/os_2.img.caibx', status: 403 });
  // The image path's first unranged request is A's HEAD, the second A's full GET (the range probe carries the image's
  // first 128 KiB: trickled, B's probe would wait for it).
  f.origin.fault({ kind: 'trickle', path: '/os_2.img', unrangedOnly: true, skip: 1, intervalMs: 200 });
  const a = new AbortController();
  const slow = fetch(`${d.url}/os_2.img`, { signal: a.signal }).catch(() => undefined);
  t.after(() => a.abort());
  await new Promise((r) => setTimeout(r, 300));
  const started = performance.now();
  const b = Buffer.from(await (await fetch(`${d.url}/os_2.img`)).arrayBuffer());
  const seconds = (performance.now() - started) / 1000;
  assert.ok(b.equals(v2.data), 'B got v2');
  // Held for A, B's assembly would pause at its 64 KiB buffer for the whole 15 s hold.
  assert.ok(seconds < 8, `B took ${seconds.toFixed(1)} s`);
  assert.equal(d.ctx.counters.fallbacks, 1, 'A fell back');
  a.abort();
  await slow;
});

test('a burst of clients shares one preparation: one index, one SHA256SUMS, one HEAD, one range probe', {
  timeout: 60_000,
}, async (t) => {
  const f = await fixture();
  const v2 = f.releases[1];
  const d = await startDaemon(t, f);
  const from = f.origin.log.length;
  const bodies = await Promise.all(
    Array.from({ length: 20 }, async () => Buffer.from(await (await fetch(`${d.url}/os_2.img`)).arrayBuffer())),
  );
  assert.ok(
    bodies.every((b) => b.equals(v2.data)),
    'every client got v2',
  );
  const log = f.origin.log.slice(from);
  const count = (pred: (e: (typeof log)[number]) => boolean) => log.filter(pred).length;
  assert.equal(
    count((e) => e.path === '/os_2.img.caibx'),
    1,
    'one index download',
  );
  assert.equal(
    count((e) => e.path === '/SHA256SUMS'),
    1,
    'one SHA256SUMS fetch',
  );
  assert.equal(
    count((e) => e.path === '/os_2.img' && e.method === 'HEAD'),
    1,
    'one HEAD',
  );
  assert.equal(
    count((e) => e.path === '/os_2.img' && e.range === RANGE_PROBE),
    1,
    'one range probe',
  );
  assert.equal(d.ctx.counters.assembliesStarted, 1, 'one assembly for the burst');
  // Origin traffic is counted once, by the HTTP client: every body byte the origin sent, ranges included.
  const sent = log.reduce((n, e) => n + e.bytes, 0);
  assert.equal(d.ctx.counters.originBytes, sent, 'deltad_origin_bytes_total is what the origin sent');
  assert.equal(d.ctx.counters.originRequests, log.length, 'deltad_origin_requests_total is what the origin answered');
  // Every response ended with its last byte, so none keeps its connection busy past the close (which then waited
  // out the keep-alive, 5 s, or 72 s before it was set, when a response ended only with the engine's wind-down).
  const closing = performance.now();
  await d.close();
  const seconds = (performance.now() - closing) / 1000;
  assert.ok(seconds < 3, `the daemon closed ${seconds.toFixed(1)} s after the burst`);
});

test('a request after a verified download is verified again against the current SHA256SUMS', {
  timeout: 60_000,
}, async (t) => {
  const f = await fixture();
  const v2 = f.releases[1];
  const dir = join(f.dir, 'origin-newsums');
  await mkdir(dir, { recursive: true });
  await copyFile(join(f.originDir, 'os_2.img'), join(dir, 'os_2.img'));
  await copyFile(join(f.originDir, 'os_2.img.caibx'), join(dir, 'os_2.img.caibx'));
  await writeFile(join(dir, 'SHA256SUMS'), `${sha256(v2.data)}  os_2.img\n`);
  const origin = await startOrigin({ root: dir });
  t.after(() => origin.close());
  // Answers about the release are not reused: every request revalidates SHA256SUMS.
  const d = await startDaemon(t, f, {}, origin.url, undefined, undefined, 0);
  /** The body as received, and whether the transfer ended cleanly. */
  const download = async () => {
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), 30_000);
    try {
      const res = await fetch(`${d.url}/os_2.img`, { signal: ac.signal });
      const parts: Buffer[] = [];
      try {
        for await (const b of res.body!) parts.push(Buffer.from(b));
        return { body: Buffer.concat(parts), complete: true };
      } catch {
        return { body: Buffer.concat(parts), complete: false };
      }
    } finally {
      clearTimeout(timer);
    }
  };
  const first = await download();
  assert.ok(first.complete && first.body.equals(v2.data), 'the first download is v2, verified');
  // The release's checksum changes (the image was replaced but its index was not): the spool verified against the old one must not be handed out.
  await writeFile(join(dir, 'SHA256SUMS'), `${'0'.repeat(64)}  os_2.img\n`);
  const second = await download();
  assert.ok(
    !second.complete && second.body.length < v2.data.length,
    `held back: ${second.body.length} of ${v2.data.length} bytes`,
  );
});
