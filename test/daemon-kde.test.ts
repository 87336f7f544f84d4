// deltad as a drop-in for kde-linux-sysupdated, against a real origin laid out
// like KDE Linux's (kde-linux_<v>_root-x86-64.erofs with the index named
// kde-linux_<v>_root-x86-64.caibx, origin URL without a trailing slash), a
// systemd 252-style transfer (*.conf) installing kde-linux_<v>.erofs into a
// seed directory, and the index beside the installed seed as KDE installs it:
// /v1/updatesize, the index beside a seed used instead of chunking, adoption
// across names, a bounded adopt/, query strings on pass-through, and no
// MaxListenersExceededWarning on a delta download.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildServer } from '../daemon/server.js';
import { defaultConfig, loadConfig, type DaemonConfig } from '../daemon/config.js';
import { createLogger } from '../daemon/log.js';
import { createNotifier } from '../daemon/notify.js';
import { ADOPT_LIMITS } from '../daemon/seeds.js';
import { expandPattern, patternRegExp } from '../daemon/sysupdate-names.js';
import { indexFileNames } from '../daemon/index-names.js';
import { IndexCache } from '../lib/seed/index-cache.js';
import { indexBuffer } from '../lib/chunking/indexer.js';
import { serializeIndex } from '../lib/format/caibx.js';
import { startOrigin, type Origin } from './helpers/origin.js';
import { FLEET_PARAMS, makeReleases, type Release } from './helpers/fleet.js';
import { requireTool, SYSTEMD_PULL, systemdPull } from './helpers/sysupdate-client.js';
import { tmpDir, fileTmpDir } from './helpers/tmp.js';
import { settled } from './helpers/settled.js';

const SIZE = 4 * 1024 * 1024;
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const erofs = (v: number) => `kde-linux_${v}_root-x86-64.erofs`;

interface Fixture {
  dir: string;
  root: string;
  seedDir: string;
  releases: Release[];
  origin: Origin;
  originUrl: string;
}

/** The shared fixture's files (origin, seeds), removed after the file's last test. */
const dir = fileTmpDir('kde');
let shared: Promise<Fixture> | undefined;
function fixture(): Promise<Fixture> {
  shared ??= (async () => {
    const originDir = join(dir, 'origin');
    const published = join(originDir, 'kde-linux');
    const seedDir = join(dir, 'system');
    const root = join(dir, 'root');
    await Promise.all([
      mkdir(published, { recursive: true }),
      mkdir(seedDir),
      mkdir(join(root, 'usr/lib/sysupdate.d'), { recursive: true }),
    ]);
    const releases = await makeReleases(published, SIZE, 3);
    // KDE's names: X_root-x86-64.erofs with X_root-x86-64.caibx; SHA256SUMS lists the images only.
    for (const [i, r] of releases.entries()) {
      await rename(join(published, r.name), join(published, erofs(i + 1)));
      await rename(join(published, `${r.name}.caibx`), join(published, `kde-linux_${i + 1}_root-x86-64.caibx`));
    }
    const sums = releases.map((r, i) => `${sha256(r.data)}  ${erofs(i + 1)}\n`).join('');
    await writeFile(join(published, 'SHA256SUMS'), sums);
    // Installed v1 with the index beside it, as KDE's caibx transfer installs it.
    await writeFile(join(seedDir, 'kde-linux_1.erofs'), releases[0].data);
    await writeFile(join(seedDir, 'kde-linux_1.erofs.caibx'), serializeIndex(releases[0].index));
    const origin = await startOrigin({ root: originDir });
    const originUrl = `${origin.url}/kde-linux`;
    await writeFile(
      join(root, 'usr/lib/sysupdate.d/50-root-x86-64-erofs.conf'),
      `[Source]
Type=url-file
Path=${originUrl}
MatchPattern=kde-linux_@v_root-%a.erofs

[Target]
Type=regular-file
Path=${seedDir}
MatchPattern=kde-linux_@v.erofs
`,
    );
    await writeFile(join(dir, 'empty.conf'), '');
    return { dir, root, seedDir, releases, origin, originUrl };
  })();
  return shared;
}

test.after(async () => {
  if (!shared) return;
  const f = await shared;
  await f.origin.close();
});

async function startDaemon(t: { after(fn: () => Promise<void>): void }, f: Fixture, over: Partial<DaemonConfig> = {}) {
  const cacheDir = await mkdtemp(join(f.dir, 'cache-'));
  // The origin exactly as Path= has it (no trailing slash), through the real config parser.
  const parsed = loadConfig({ values: { origin: f.originUrl, config: join(f.dir, 'empty.conf') }, env: {} }).origin;
  const config: DaemonConfig = {
    ...defaultConfig({}),
    origin: parsed,
    seedGlobs: [join(f.seedDir, '*.erofs')],
    cacheDir,
    idleTimeout: 0,
    sysupdateRoot: f.root,
    ...over,
  };
  const logs: string[] = [];
  const log = createLogger({ write: (s: string) => logs.push(s) } as unknown as NodeJS.WritableStream, {});
  const { app, ctx } = await buildServer(config, { log, notifier: createNotifier({ env: {} }) });
  await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => app.close());
  return { url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}`, ctx, logs };
}

test('/v1/updatesize?version=V: plain-text network bytes, the same as the plan endpoint; 400/404', {
  timeout: 60_000,
}, async (t) => {
  const f = await fixture();
  const d = await startDaemon(t, f);
  const res = await fetch(`${d.url}/v1/updatesize?version=2`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
  const body = await res.text();
  assert.match(body, /^\d+$/, 'a bare decimal number');
  const plan = (await (await fetch(`${d.url}/.deltad/plan/${erofs(2)}`)).json()) as Record<string, number>;
  assert.equal(Number(body), plan.bytesFromNetwork, 'the same figure as /.deltad/plan/');
  assert.ok(plan.bytesFromSeeds > SIZE * 0.5 && Number(body) > 0 && Number(body) < SIZE * 0.4, JSON.stringify(plan));
  // The index beside the seed was used: the seed was never chunked into the cache.
  const cache = new IndexCache(d.ctx.config.cacheDir);
  const key = { params: FLEET_PARAMS, digest: 'sha512-256' as const };
  const seed = join(f.seedDir, 'kde-linux_1.erofs');
  assert.equal(await cache.get(seed, key), null, 'no chunking of a seed whose index lies beside it');
  assert.ok(
    f.origin.log.some((e) => e.path === '/kde-linux/kde-linux_2_root-x86-64.caibx'),
    'KDE index name fetched',
  );
  // Start-up indexing skips it too.
  await d.ctx.seeds.remember(erofs(2), f.releases[1].index);
  await d.ctx.seeds.warm();
  const ready = /seed indexes ready for 1 seed\(s\) \(1 with the index beside it\)/;
  assert.ok(
    d.logs.some((l) => ready.test(l)),
    d.logs.join(''),
  );
  assert.equal(await cache.get(seed, key), null);

  const missing = await fetch(`${d.url}/v1/updatesize`);
  assert.equal(missing.status, 400);
  assert.equal(await missing.text(), 'version parameter not set');
  assert.equal((await fetch(`${d.url}/v1/updatesize?version=..%2Fetc`)).status, 400);
  const unknown = await fetch(`${d.url}/v1/updatesize?version=99`);
  assert.equal(unknown.status, 404);
  assert.match(await unknown.text(), /kde-linux_99_root-x86-64\.erofs.*version 99 is not published/);
});

test('a delta download is adopted under the installed name; the next update needs no chunking; adopt/ bounded', {
  timeout: 60_000,
}, async (t) => {
  if (!requireTool(t, Boolean(SYSTEMD_PULL), 'systemd-pull')) return;
  const f = await fixture();
  const d = await startDaemon(t, f);
  const warnings: Error[] = [];
  const onWarning = (w: Error) => warnings.push(w);
  process.on('warning', onWarning);
  t.after(() => void process.off('warning', onWarning));

  const out = join(f.dir, 'pulled.erofs');
  const r = await systemdPull(`${d.url}/${erofs(2)}`, out, sha256(f.releases[1].data));
  assert.equal(r.code, 0, r.stderr);
  assert.ok((await readFile(out)).equals(f.releases[1].data));
  const adoptDir = join(d.ctx.config.cacheDir, 'adopt');
  // Kept just after the image is verified, which may be a moment after the client has it all.
  const want = ['kde-linux_2.erofs.caibx'];
  assert.deepEqual(await settled(adoptDir, want), want, 'kept under the name sysupdate installs it as');

  // "sysupdate installs it" (without an index beside it): the next update adopts the delivered index.
  const installed = join(f.seedDir, 'kde-linux_2.erofs');
  await copyFile(out, installed);
  t.after(() => rm(installed, { force: true }));
  const size = await (await fetch(`${d.url}/v1/updatesize?version=3`)).text();
  assert.match(size, /^\d+$/);
  assert.ok(
    d.logs.some((l) => l.includes(`seed ${installed}: adopted the index`)),
    d.logs.join(''),
  );
  assert.deepEqual(await readdir(adoptDir), []);
  const cache = new IndexCache(d.ctx.config.cacheDir);
  const adopted = await cache.get(installed, { params: FLEET_PARAMS, digest: 'sha512-256' });
  assert.ok(adopted && serializeIndex(adopted).equals(serializeIndex(f.releases[1].index)));
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(
    warnings.filter((w) => w.name === 'MaxListenersExceededWarning').map((w) => w.message),
    [],
  );

  for (let i = 0; i < ADOPT_LIMITS.entries + 4; i++) await d.ctx.seeds.remember(erofs(100 + i), f.releases[0].index);
  const kept = await readdir(adoptDir);
  assert.equal(kept.length, ADOPT_LIMITS.entries);
  assert.ok(kept.includes(`kde-linux_${100 + ADOPT_LIMITS.entries + 3}.erofs.caibx`), 'the newest stay');
});

test('an index beside a seed with other chunking is not used: the seed is chunked, the image is right', {
  timeout: 60_000,
}, async (t) => {
  const f = await fixture();
  const other = join(f.dir, 'other-seeds');
  await mkdir(other, { recursive: true });
  await copyFile(join(f.seedDir, 'kde-linux_1.erofs'), join(other, 'kde-linux_1.erofs'));
  const params = { min: 8 * 1024, avg: 32 * 1024, max: 128 * 1024 };
  const wrong = indexBuffer(f.releases[0].data, { params, digest: 'sha512-256' });
  await writeFile(join(other, 'kde-linux_1.erofs.caibx'), serializeIndex(wrong));
  const d = await startDaemon(t, f, { seedGlobs: [join(other, '*.erofs')] });
  const res = await fetch(`${d.url}/${erofs(2)}`);
  assert.equal(res.status, 200);
  assert.ok(Buffer.from(await res.arrayBuffer()).equals(f.releases[1].data));
  assert.ok(
    d.logs.some((l) => /does not fit \(other chunking/.test(l)),
    d.logs.join(''),
  );
  const cache = new IndexCache(d.ctx.config.cacheDir);
  const key = { params: FLEET_PARAMS, digest: 'sha512-256' as const };
  assert.ok(await cache.get(join(other, 'kde-linux_1.erofs'), key), 'chunked instead');
  assert.ok(d.ctx.counters.bytesReused > SIZE * 0.5);
});

test('pass-through keeps the query string (307 and proxy)', { timeout: 30_000 }, async (t) => {
  const f = await fixture();
  const redirect = await startDaemon(t, f);
  const r = await fetch(`${redirect.url}/SHA256SUMS?channel=testing&x=%2F`, { redirect: 'manual' });
  assert.equal(r.status, 307);
  assert.equal(r.headers.get('location'), `${f.originUrl}/SHA256SUMS?channel=testing&x=%2F`);
  const proxy = await startDaemon(t, f, { passthrough: 'proxy' });
  const p = await fetch(`${proxy.url}/SHA256SUMS?channel=testing`);
  assert.equal(p.status, 200);
  await p.arrayBuffer();
  const seen = f.origin.log.some((e) => e.path === '/kde-linux/SHA256SUMS' && e.search === '?channel=testing');
  assert.ok(seen, 'the origin saw the query');
});

test('index-name templates and sysupdate patterns', async (t) => {
  const dir = await tmpDir(t, 'kde-conf');
  const conf = join(dir, 'empty.conf');
  await writeFile(conf, '');
  const def = defaultConfig({}).indexNames;
  assert.deepEqual(indexFileNames('X_root-x86-64.erofs', def), ['X_root-x86-64.caibx', 'X_root-x86-64.erofs.caibx']);
  assert.deepEqual(indexFileNames('os_2.raw', def), ['os_2.caibx', 'os_2.raw.caibx']);
  const legacy = loadConfig({ values: { 'index-suffix': '.idx', config: conf }, env: {} });
  assert.deepEqual(indexFileNames('os_2.raw', legacy.indexNames), ['os_2.raw.idx'], 'index-suffix is {name}<suffix>');
  const named = loadConfig({ values: { 'index-name': '{stem}.cidx, {name}.caibx', config: conf }, env: {} });
  assert.deepEqual(named.indexNames, ['{stem}.cidx', '{name}.caibx']);
  const withName = (v: string) => () => loadConfig({ values: { 'index-name': v, config: conf }, env: {} });
  assert.throws(withName('fixed.caibx'), /must contain \{name\} or \{stem\}/);
  assert.throws(withName('../{name}'), /only letters/);

  const spec = { '%': '%', a: 'x86-64', w: '42' };
  assert.equal(expandPattern('kde-linux_@v_root-%a.erofs', '7', spec), 'kde-linux_7_root-x86-64.erofs');
  assert.equal(expandPattern('os_@v+@t.efi', '7', spec), undefined, 'a tries counter cannot be made up');
  assert.equal(expandPattern('os_@v_%H.raw', '7', spec), undefined, 'an unknown specifier');
  const re = patternRegExp('kde-linux_@v_root-%a.erofs', spec);
  assert.equal(re?.exec('kde-linux_202501_root-x86-64.erofs')?.[1], '202501');
  assert.equal(re?.exec('kde-linux_1_root-x86-64.erofs.caibx'), null);
});
