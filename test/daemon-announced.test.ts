// An image's preparation (index, SHA256SUMS, HEAD, range and block index
// probes): its requests go out together, and a SHA256SUMS passing through the
// sidecar starts it for the image sysupdate asks for next (daemon/announced.ts).
// A real origin on 127.0.0.1 with three releases, the daemon seeded with v1,
// real requests. The image request after the manifest shares that one
// preparation: the origin sees one index download, one HEAD and one of each
// probe for it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildServer } from '../daemon/server.js';
import { defaultConfig, type DaemonConfig } from '../daemon/config.js';
import { createLogger } from '../daemon/log.js';
import { createNotifier } from '../daemon/notify.js';
import { announcedImages, MAX_ANNOUNCED } from '../daemon/announced.js';
import { compareVersions, TransferNames } from '../daemon/sysupdate-names.js';
import type { Transfer } from '../daemon/sysupdate-transfers.js';
import { startOrigin, type AccessEntry, type Origin } from './helpers/origin.js';
import { makeReleases, type Release } from './helpers/fleet.js';
import { fileTmpDir } from './helpers/tmp.js';
import { IMAGE_START_BYTES } from '../lib/delta/release.js';

/** The sidecar's range probe of an image: its first bytes, kept for the first chunks. */
const RANGE_PROBE = `bytes=0-${IMAGE_START_BYTES - 1}`;

const SIZE = 2 * 1024 * 1024;
const dir = fileTmpDir('announced');

interface Fixture {
  releases: Release[];
  origin: Origin;
  seedDir: string;
}

let shared: Promise<Fixture> | undefined;
function fixture(): Promise<Fixture> {
  shared ??= (async () => {
    const originDir = join(dir, 'origin');
    const seedDir = join(dir, 'system');
    await Promise.all([mkdir(originDir), mkdir(seedDir)]);
    const releases = await makeReleases(originDir, SIZE, 3);
    await copyFile(join(originDir, 'os_1.img'), join(seedDir, 'os_1.img'));
    return { releases, origin: await startOrigin({ root: originDir }), seedDir };
  })();
  return shared;
}

test.after(async () => {
  if (shared) await (await shared).origin.close();
});

async function startDaemon(t: { after(fn: () => Promise<void>): void }, f: Fixture, over: Partial<DaemonConfig> = {}) {
  const cacheDir = await mkdtemp(join(dir, 'cache-'));
  const sysupdateRoot = await mkdtemp(join(dir, 'root-'));
  const config: DaemonConfig = {
    ...defaultConfig({}),
    origin: `${f.origin.url}/`,
    seedGlobs: [join(f.seedDir, '*.img')],
    cacheDir,
    sysupdateRoot,
    idleTimeout: 0,
    ...over,
  };
  const logs: string[] = [];
  const log = createLogger({ write: (s: string) => logs.push(s) } as unknown as NodeJS.WritableStream, {});
  const { app, ctx } = await buildServer(config, { log, notifier: createNotifier({ env: {} }) });
  await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => app.close());
  return { url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}`, ctx, logs };
}

/** Waits (bounded) until the origin log from `from` on has an entry `pred` accepts. */
async function seen(origin: Origin, from: number, pred: (e: AccessEntry) => boolean, ms = 10_000): Promise<boolean> {
  for (const until = Date.now() + ms; Date.now() < until; await sleep(20)) {
    if (origin.log.slice(from).some(pred)) return true;
  }
  return false;
}

const count = (log: AccessEntry[], pred: (e: AccessEntry) => boolean) => log.filter(pred).length;

test('the preparation asks everything at once: the probes do not wait for the index', {
  timeout: 60_000,
}, async (t) => {
  const f = await fixture();
  const v2 = f.releases[1];
  const d = await startDaemon(t, f);
  const from = f.origin.log.length;
  f.origin.fault({ kind: 'delay', path: '/os_2.img.caibx', delayMs: 1_000, times: 1 });
  t.after(() => f.origin.clearFaults());
  const got = fetch(`${d.url}/os_2.img`).then(async (r) => Buffer.from(await r.arrayBuffer()));
  const index = await seen(f.origin, from, (e) => e.path === '/os_2.img.caibx');
  assert.ok(index, 'the index is asked for');
  const entry = f.origin.log.slice(from).find((e) => e.path === '/os_2.img.caibx')!;
  // While the index is held back, every other request of the preparation has reached the origin.
  const probes = [
    (e: AccessEntry) => e.path === '/SHA256SUMS',
    (e: AccessEntry) => e.path === '/os_2.img' && e.method === 'HEAD',
    (e: AccessEntry) => e.path === '/os_2.img' && e.range === RANGE_PROBE,
    (e: AccessEntry) => e.path === '/os_2.img.bpidx' && e.range === 'bytes=0-0',
  ];
  for (const [i, probe] of probes.entries()) assert.ok(await seen(f.origin, from, probe, 800), `request ${i} sent`);
  assert.equal(entry.status, 0, 'the index was still held back when they came');
  assert.ok((await got).equals(v2.data), 'the image is v2');
});

test('a SHA256SUMS through the daemon prepares the newest image it lists; its request shares that preparation', {
  timeout: 60_000,
}, async (t) => {
  const f = await fixture();
  const v3 = f.releases[2];
  const d = await startDaemon(t, f);
  const from = f.origin.log.length;
  // As sysupdate's systemd-pull gets it in the default redirect mode: the daemon answers 307, the client goes on.
  const sums = await fetch(`${d.url}/SHA256SUMS`, { redirect: 'manual' });
  assert.equal(sums.status, 307);
  await sums.body?.cancel();
  assert.ok(
    await seen(f.origin, from, (e) => e.path === '/os_3.img' && e.range === RANGE_PROBE),
    'the newest image is prepared before it is asked for',
  );
  const res = await fetch(`${d.url}/os_3.img`);
  assert.equal(res.status, 200);
  assert.ok(Buffer.from(await res.arrayBuffer()).equals(v3.data), 'the image is v3, verified');
  const log = f.origin.log.slice(from);
  assert.equal(
    count(log, (e) => e.path === '/os_3.img.caibx'),
    1,
    'one index download',
  );
  assert.equal(
    count(log, (e) => e.path === '/os_3.img' && e.method === 'HEAD'),
    1,
    'one HEAD',
  );
  assert.equal(
    count(log, (e) => e.path === '/os_3.img' && e.range === RANGE_PROBE),
    1,
    'one range probe',
  );
  assert.equal(
    count(log, (e) => e.path === '/os_3.img.bpidx'),
    1,
    'one block index probe',
  );
  assert.equal(
    count(log, (e) => e.path === '/SHA256SUMS'),
    1,
    'the manifest once, by the daemon',
  );
  assert.equal(
    count(log, (e) => e.path === '/os_2.img.caibx'),
    0,
    'an older version is not prepared',
  );
  assert.ok(!log.some((e) => e.path === '/os_3.img' && e.method === 'GET' && !e.range), 'no full download');
  assert.equal(d.ctx.counters.assembliesStarted, 1);
  assert.ok(
    d.logs.some((l) => l.includes('os_3.img: SHA256SUMS lists it; preparing it ahead')),
    d.logs.join(''),
  );
});

test("the daemon's own SHA256SUMS read keeps the client's query; the origin stays the configured one", {
  timeout: 30_000,
}, async (t) => {
  const f = await fixture();
  const d = await startDaemon(t, f);
  const from = f.origin.log.length;
  const sums = await fetch(`${d.url}/SHA256SUMS?token=a%2Fb&x=1`, {
    redirect: 'manual',
    headers: { host: 'elsewhere.example' },
  });
  assert.equal(sums.status, 307);
  await sums.body?.cancel();
  assert.ok(
    await seen(f.origin, from, (e) => e.path === '/os_3.img' && e.range === RANGE_PROBE),
    'the newest image is prepared',
  );
  const reads = f.origin.log.slice(from).filter((e) => e.path === '/SHA256SUMS');
  assert.ok(reads.length > 0, 'the daemon read the manifest');
  assert.equal(reads[0].search, '?token=a%2Fb&x=1', 'the first read is the one the client asked for');
  assert.equal(reads[0].requestHeaders.host, new URL(f.origin.url).host, 'the configured origin, not the Host header');
});

test('systemd-sysupdate check-new with an update pending: the preparation is bounded, and an update soon after reuses it', {
  timeout: 60_000,
}, async (t) => {
  const f = await fixture();
  const v3 = f.releases[2];
  const d = await startDaemon(t, f);
  // check-new: per transfer, systemd-pull fetches the manifest and (Verify=yes) its signature, then sysupdate exits.
  const checkNew = async () => {
    for (const name of ['SHA256SUMS', 'SHA256SUMS.gpg']) {
      const r = await fetch(`${d.url}/${name}`, { redirect: 'manual' });
      await r.body?.cancel();
    }
  };
  let from = f.origin.log.length;
  await checkNew();
  assert.ok(await seen(f.origin, from, (e) => e.path === '/os_3.img.bpidx'));
  await sleep(300);
  const paid = f.origin.log.slice(from).map((e) => `${e.method} ${e.path}${e.range ? ` ${e.range}` : ''}`);
  // What a check nobody follows up costs: the manifest, whether the origin is a deltad proxy, and for the newest
  // image its index (after a 404 for the first index name, which a fresh cache directory does not know yet), a
  // HEAD, the range probe (the image's first 128 KiB, kept for its first chunks) and the block index's one-byte
  // probe. No other image or block pack bytes, nothing about older versions.
  assert.deepEqual(paid.sort(), [
    'GET /.deltad/info',
    'GET /SHA256SUMS',
    'GET /os_3.caibx',
    `GET /os_3.img ${RANGE_PROBE}`,
    'GET /os_3.img.bpidx bytes=0-0',
    'GET /os_3.img.caibx',
    'HEAD /os_3.img',
  ]);
  // A second check within the freshness window costs nothing more about the image.
  from = f.origin.log.length;
  await checkNew();
  await sleep(300);
  assert.deepEqual(
    f.origin.log.slice(from).map((e) => e.path),
    [],
    'answers still fresh',
  );
  // The update that follows: the manifest again, then the image, which shares the preparation.
  from = f.origin.log.length;
  await checkNew();
  const res = await fetch(`${d.url}/os_3.img`);
  assert.ok(Buffer.from(await res.arrayBuffer()).equals(v3.data), 'the image is v3, verified');
  assert.equal(
    count(f.origin.log.slice(from), (e) => e.path === '/os_3.img.caibx'),
    0,
    'no second index download',
  );
});

test('a manifest whose newest image is installed prepares nothing', { timeout: 30_000 }, async (t) => {
  const f = await fixture();
  // The seeds hold os_3.img (under another directory's glob), the newest the manifest lists.
  const seeds = await mkdtemp(join(dir, 'seeds3-'));
  await copyFile(join(dir, 'origin', 'os_3.img'), join(seeds, 'os_3.img'));
  const d = await startDaemon(t, f, { seedGlobs: [join(seeds, '*.img')] });
  const from = f.origin.log.length;
  const sums = await fetch(`${d.url}/SHA256SUMS`, { redirect: 'manual' });
  await sums.body?.cancel();
  // The daemon reads the manifest itself; after that nothing about an image may follow.
  assert.ok(await seen(f.origin, from, (e) => e.path === '/SHA256SUMS'));
  await sleep(300);
  const log = f.origin.log.slice(from);
  assert.deepEqual(
    log.map((e) => e.path),
    ['/SHA256SUMS'],
    'only the manifest was fetched',
  );
});

test('an image the manifest lists but the origin does not have: passed through, the daemon unharmed', {
  timeout: 30_000,
}, async (t) => {
  const f = await fixture();
  const root = await mkdtemp(join(dir, 'missing-'));
  await writeFile(join(root, 'SHA256SUMS'), `${'b'.repeat(64)}  os_9.img\n`);
  const origin = await startOrigin({ root });
  t.after(() => origin.close());
  const d = await startDaemon(t, { ...f, origin });
  const sums = await fetch(`${d.url}/SHA256SUMS`, { redirect: 'manual' });
  await sums.body?.cancel();
  // Prepared ahead: every answer is a 404 (index, HEAD, range and block index probes).
  assert.ok(await seen(origin, 0, (e) => e.path === '/os_9.img' && e.range === RANGE_PROBE));
  await sleep(200);
  const res = await fetch(`${d.url}/os_9.img`, { redirect: 'manual' });
  assert.equal(res.status, 307, 'no index: the image is passed through');
  await res.body?.cancel();
  assert.equal(await (await fetch(`${d.url}/healthz`)).text(), 'ok\n');
});

test('the index name that answered is asked first by the next daemon run (kept in the cache directory)', {
  timeout: 30_000,
}, async (t) => {
  const f = await fixture();
  const cacheDir = await mkdtemp(join(dir, 'cache-kept-'));
  const indexAsks = (from: number) =>
    f.origin.log
      .slice(from)
      .filter((e) => e.path.endsWith('.caibx'))
      .map((e) => e.path);
  const first = await startDaemon(t, f, { cacheDir });
  let from = f.origin.log.length;
  // A HEAD prepares the image (index, SHA256SUMS, HEAD) without assembling it.
  const r1 = await fetch(`${first.url}/os_2.img`, { method: 'HEAD' });
  assert.equal(r1.status, 200);
  assert.deepEqual(indexAsks(from), ['/os_2.caibx', '/os_2.img.caibx'], 'configured order: {stem}.caibx misses');
  const kept = join(cacheDir, 'index-name');
  let text: string | undefined;
  for (const until = Date.now() + 5_000; Date.now() < until && text === undefined; await sleep(20))
    text = await readFile(kept, 'utf8').catch(() => undefined);
  assert.equal(text, '{name}.caibx\n');
  // The next run (a socket-activated daemon starts anew for every update) asks the kept name first.
  const second = await startDaemon(t, f, { cacheDir });
  from = f.origin.log.length;
  const r2 = await fetch(`${second.url}/os_2.img`, { method: 'HEAD' });
  assert.equal(r2.status, 200);
  assert.deepEqual(indexAsks(from), ['/os_2.img.caibx'], 'no miss');
  // A kept name that is no longer configured is ignored: the configured order again.
  await writeFile(kept, '{other}.caibx\n');
  const third = await startDaemon(t, f, { cacheDir });
  from = f.origin.log.length;
  await (await fetch(`${third.url}/os_2.img`, { method: 'HEAD' })).arrayBuffer();
  assert.deepEqual(indexAsks(from), ['/os_2.caibx', '/os_2.img.caibx']);
});

function transfer(match: string, target: string): Transfer {
  return {
    name: '50-root',
    suffix: '.transfer',
    file: '/usr/lib/sysupdate.d/50-root.transfer',
    dir: 'usr/lib/sysupdate.d',
    sourceType: 'url-file',
    sourcePath: 'http://127.0.0.1:1/',
    matchPatterns: [match],
    targetType: 'regular-file',
    targetPath: '/var/lib/images',
    targetPatterns: [target],
  };
}

test('announced images: newest version per transfer, images only, not installed, bounded', () => {
  const isImage = (n: string) => n.endsWith('.erofs');
  const none = new TransferNames([], {});
  const names = ['os_9.erofs', 'os_10.erofs', 'os_10.erofs.caibx', 'os_2.erofs', 'notes.txt', 'a/os_11.erofs'];
  assert.deepEqual(announcedImages(names, isImage, none, new Set()), ['os_10.erofs'], 'newest by version order');
  assert.deepEqual(announcedImages(names, isImage, none, new Set(['os_10.erofs'])), [], 'installed: nothing');
  const kde = new TransferNames(
    [
      { t: transfer('kde-linux_@v_root-x86-64.erofs', 'kde-linux_@v.erofs'), rest: '' },
      { t: transfer('kde-linux_@v.efi.erofs', 'kde-linux_@v.efi.erofs'), rest: '' },
    ],
    {},
  );
  const listed = [
    'kde-linux_202501020000_root-x86-64.erofs',
    'kde-linux_202501030000_root-x86-64.erofs',
    'kde-linux_202501030000.efi.erofs',
    'other_5.erofs',
  ];
  assert.deepEqual(
    announcedImages(listed, isImage, kde, new Set()).sort(),
    ['kde-linux_202501030000.efi.erofs', 'kde-linux_202501030000_root-x86-64.erofs'],
    'one per transfer, the newest; a name no transfer matches is left out',
  );
  assert.deepEqual(
    announcedImages(listed, isImage, kde, new Set(['kde-linux_202501030000.erofs'])),
    ['kde-linux_202501030000.efi.erofs'],
    'installed under the name sysupdate gives it: not prepared',
  );
  const many = new TransferNames(
    Array.from({ length: MAX_ANNOUNCED + 3 }, (_, i) => ({
      t: transfer(`p${i}_@v.erofs`, `p${i}_@v.erofs`),
      rest: '',
    })),
    {},
  );
  const all = Array.from({ length: MAX_ANNOUNCED + 3 }, (_, i) => `p${i}_1.erofs`);
  assert.equal(announcedImages(all, isImage, many, new Set()).length, MAX_ANNOUNCED, 'at most MAX_ANNOUNCED');
});

test('version order: numbers as numbers, ~ before anything, a longer version after its prefix', () => {
  const ordered = ['1~rc1', '1', '1.0', '1.2', '1.10', '2', '10', '202501030000'];
  for (let i = 0; i + 1 < ordered.length; i++) {
    assert.equal(compareVersions(ordered[i], ordered[i + 1]), -1, `${ordered[i]} < ${ordered[i + 1]}`);
    assert.equal(compareVersions(ordered[i + 1], ordered[i]), 1, `${ordered[i + 1]} > ${ordered[i]}`);
  }
  assert.equal(compareVersions('007', '7'), 0);
});
