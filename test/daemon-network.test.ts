// The sysupdate sidecar against real update servers on 127.0.0.1: an origin
// that redirects everything to a mirror still gives a delta; a release with the
// kill switch (X-KDE-Delta: false) gets the full image passed through, logged
// at notice level; pass-through keeps the query string.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { buildServer } from '../daemon/server.js';
import { defaultConfig } from '../daemon/config.js';
import { createLogger } from '../daemon/log.js';
import { createNotifier } from '../daemon/notify.js';
import { startOrigin, type Origin } from './helpers/origin.js';
import { releaseSite, type Release } from './helpers/fleet.js';
import { fileTmpDir } from './helpers/tmp.js';
import { IMAGE_START_BYTES } from '../lib/delta/release.js';

/** The sidecar's range probe of an image: its first bytes, kept for the first chunks. */
const RANGE_PROBE = `bytes=0-${IMAGE_START_BYTES - 1}`;

const SIZE = 3 * 1024 * 1024;

interface Fixture {
  dir: string;
  seedDir: string;
  v2: Release;
  origin: Origin;
  mirror: Origin;
}

/** The shared fixture's files (origin, seeds), removed after the file's last test. */
const dir = fileTmpDir('daemon-network');
let shared: Promise<Fixture> | undefined;
function fixture(): Promise<Fixture> {
  shared ??= (async () => {
    const { root, seedDir, v2 } = await releaseSite(dir, SIZE);
    const [origin, mirror] = await Promise.all([startOrigin({ root }), startOrigin({ root })]);
    return { dir, seedDir, v2, origin, mirror };
  })();
  return shared;
}

after(async () => {
  if (!shared) return;
  const f = await shared;
  await Promise.all([f.origin.close(), f.mirror.close()]);
});

async function startSidecar(t: { after(fn: () => Promise<void>): void }, f: Fixture) {
  const cacheDir = await mkdtemp(join(f.dir, 'cache-'));
  const logs: string[] = [];
  const sink = { write: (s: string) => logs.push(s) } as unknown as NodeJS.WritableStream;
  const log = createLogger(sink, { JOURNAL_STREAM: '1:1' });
  const seedGlobs = [join(f.seedDir, '*.img')];
  const config = { ...defaultConfig({}), origin: `${f.origin.url}/`, seedGlobs, cacheDir, idleTimeout: 0 };
  const { app, ctx } = await buildServer(config, { log, notifier: createNotifier({ env: {} }) });
  await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => app.close());
  return { url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}`, ctx, logs };
}

function reset(f: Fixture): void {
  for (const o of [f.origin, f.mirror]) {
    o.redirect = undefined;
    o.headers = undefined;
    o.log.length = 0;
  }
}

test('an origin that redirects everything to a mirror: the sidecar serves a delta', { timeout: 30_000 }, async (t) => {
  const f = await fixture();
  reset(f);
  f.origin.redirect = { to: f.mirror.url };
  const d = await startSidecar(t, f);
  const res = await fetch(`${d.url}/${f.v2.name}`);
  assert.equal(res.status, 200);
  assert.ok(Buffer.from(await res.arrayBuffer()).equals(f.v2.data), 'identical bytes');
  assert.equal(d.ctx.counters.fallbacks, 0, d.logs.join(''));
  // The assembly is counted when its result settles, just after the last byte went out.
  for (let k = 0; k < 100 && d.ctx.counters.assembliesCompleted === 0; k++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(d.ctx.counters.assembliesCompleted, 1, d.logs.join(''));
  const ranged = f.mirror.log.filter((e) => e.path === `/${f.v2.name}` && e.range);
  const bytes = ranged.reduce((n, e) => n + e.bytes, 0);
  assert.ok(ranged.length > 0 && bytes < SIZE / 2, `the mirror served ${bytes} bytes of ranges`);
  assert.ok(
    f.origin.log.every((e) => e.status === 302 && e.bytes === 0),
    'the origin only redirected',
  );
  const full = f.mirror.log.some((e) => e.path === `/${f.v2.name}` && e.method === 'GET' && !e.range);
  assert.ok(!full, 'no full download');
});

test('kill switch: X-KDE-Delta: false gives the full image, logged at notice level', { timeout: 30_000 }, async (t) => {
  const f = await fixture();
  reset(f);
  f.origin.headers = (p) => (p === `/${f.v2.name}` ? { 'x-kde-delta': 'false' } : undefined);
  const d = await startSidecar(t, f);
  const res = await fetch(`${d.url}/${f.v2.name}`, { redirect: 'manual' });
  assert.equal(res.status, 307);
  assert.equal(res.headers.get('location'), `${f.origin.url}/${f.v2.name}`);
  await res.body?.cancel();
  assert.equal(d.ctx.counters.assembliesStarted, 0);
  // The image's range probe and the block index's one-byte probe, nothing else.
  const probes = [RANGE_PROBE, 'bytes=0-0'];
  assert.ok(!f.origin.log.some((e) => e.range && !probes.includes(e.range)), 'no range beyond the probes');
  const notice = d.logs.some((l) => l.startsWith('<5>') && l.includes('switches deltas off (x-kde-delta: false)'));
  assert.ok(notice, d.logs.join(''));
  // Following the redirect gives the full image.
  const full = await fetch(`${d.url}/${f.v2.name}`);
  assert.ok(Buffer.from(await full.arrayBuffer()).equals(f.v2.data));
});

test('kill switch with a slow index: the HEAD switches deltas off before the index arrives', {
  timeout: 30_000,
}, async (t) => {
  const f = await fixture();
  reset(f);
  t.after(() => f.origin.clearFaults());
  f.origin.headers = (p) => (p === `/${f.v2.name}` ? { 'x-kde-delta': 'false' } : undefined);
  f.origin.fault({ kind: 'delay', path: `/${f.v2.name}.caibx`, delayMs: 3_000 });
  const d = await startSidecar(t, f);
  const res = await fetch(`${d.url}/${f.v2.name}`, { redirect: 'manual' });
  assert.equal(res.status, 307);
  await res.body?.cancel();
  assert.equal(d.ctx.counters.assembliesStarted, 0);
  assert.ok(
    d.logs.some((l) => l.includes('switches deltas off')),
    d.logs.join(''),
  );
});

test('pass-through: a 307 to the origin with the query string kept', async (t) => {
  const f = await fixture();
  reset(f);
  const d = await startSidecar(t, f);
  const res = await fetch(`${d.url}/SHA256SUMS?token=a%20b&x=1`, { redirect: 'manual' });
  assert.equal(res.status, 307);
  assert.equal(res.headers.get('location'), `${f.origin.url}/SHA256SUMS?token=a%20b&x=1`);
  await res.body?.cancel();
});
