// A slow index does not force a full download: the sidecar sends the headers
// with the length from a HEAD of the image, and the delta follows once the
// index arrives. An index that never arrives, or that describes another size
// than the HEAD said, gives the origin's full image, verified, under the same
// headers. Real origin on 127.0.0.1 with a per-path delay, real curl.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildServer } from '../daemon/server.js';
import { defaultConfig } from '../daemon/config.js';
import { createLogger } from '../daemon/log.js';
import { createNotifier } from '../daemon/notify.js';
import { DEFAULT_TIMEOUTS, type ImageTimeouts } from '../daemon/image-service.js';
import { indexBuffer } from '../lib/chunking/indexer.js';
import { serializeIndex } from '../lib/format/caibx.js';
import { startOrigin, type Origin } from './helpers/origin.js';
import { FLEET_PARAMS, releaseSite, type Release } from './helpers/fleet.js';
import { requireTool, run } from './helpers/sysupdate-client.js';
import { fileTmpDir } from './helpers/tmp.js';

const SIZE = 4 * 1024 * 1024;
const hasCurl = (await run('curl', ['--version'], 5_000)).code === 0;

interface Fixture {
  dir: string;
  root: string;
  seedDir: string;
  v2: Release;
  origin: Origin;
}

/** The shared fixture's files (origin, seeds), removed after the file's last test. */
const dir = fileTmpDir('slow-index');
let shared: Promise<Fixture> | undefined;
function fixture(): Promise<Fixture> {
  shared ??= (async () => {
    const { root, seedDir, v2 } = await releaseSite(dir, SIZE);
    return { dir, root, seedDir, v2, origin: await startOrigin({ root }) };
  })();
  return shared;
}

test.after(async () => {
  if (!shared) return;
  const f = await shared;
  await f.origin.close();
});

async function startSidecar(
  t: { after(fn: () => Promise<void>): void },
  f: Fixture,
  origin: Origin,
  timeouts?: Partial<ImageTimeouts>,
) {
  const cacheDir = await mkdtemp(join(f.dir, 'cache-'));
  const logs: string[] = [];
  const log = createLogger({ write: (s: string) => logs.push(s) } as unknown as NodeJS.WritableStream, {});
  const config = {
    ...defaultConfig({}),
    origin: `${origin.url}/`,
    seedGlobs: [join(f.seedDir, '*.img')],
    cacheDir,
    idleTimeout: 0,
  };
  const { app, ctx } = await buildServer(config, { log, notifier: createNotifier({ env: {} }), timeouts });
  await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => app.close());
  return { url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}`, ctx, logs };
}

/** curl as a client with its low-speed abort (30 B/s for 60 s, as systemd-pull); returns [time to first byte, size]. */
async function download(url: string, out: string, expected: Buffer): Promise<number> {
  const r = await run(
    'curl',
    ['-sS', '-f', '--max-time', '40', '-o', out, '-w', '%{http_code} %{size_download} %{time_starttransfer}', url],
    45_000,
  );
  assert.equal(r.code, 0, r.stderr);
  const [code, size, firstByte] = r.stdout.split(' ');
  assert.equal(`${code} ${size}`, `200 ${expected.length}`);
  assert.ok((await readFile(out)).equals(expected), `${out} is byte-identical`);
  return Number(firstByte);
}

const fullGets = (origin: Origin, path: string, from: number) =>
  origin.log.slice(from).filter((e) => e.path === path && e.method === 'GET' && !e.range).length;

test('an index slower than the deadline: headers with the HEAD length at once, then still a delta', {
  timeout: 30_000,
}, async (t) => {
  if (!requireTool(t, hasCurl, 'curl')) return;
  const f = await fixture();
  t.after(() => f.origin.clearFaults());
  const img = `/${f.v2.name}`;
  const d = await startSidecar(t, f, f.origin);
  const delayMs = 2 * DEFAULT_TIMEOUTS.prepareMs;
  f.origin.fault({ kind: 'delay', path: `${img}.caibx`, delayMs });
  const before = f.origin.log.length;
  const firstByte = await download(`${d.url}${img}`, join(f.dir, 'slow.img'), f.v2.data);
  assert.ok(firstByte < delayMs / 1000, `headers after ${firstByte} s, before the index (${delayMs} ms)`);
  const imageBytes = f.origin.log
    .slice(before)
    .filter((e) => e.path === img)
    .reduce((n, e) => n + e.bytes, 0);
  assert.ok(
    imageBytes > 0 && imageBytes < SIZE * 0.4,
    `origin sent ${imageBytes} image bytes for a ${SIZE}-byte image: a delta`,
  );
  assert.equal(fullGets(f.origin, img, before), 0, 'the full image was never fetched');
  assert.equal(d.ctx.counters.fallbacks, 0);
  assert.equal(d.ctx.counters.assembliesCompleted, 1);
  assert.ok(
    d.logs.some((l) => l.includes("headers sent with the origin's length")),
    d.logs.join(''),
  );
});

test('an index and a HEAD both slower than the deadline (an origin under load): still a delta, no full download', {
  timeout: 30_000,
}, async (t) => {
  if (!requireTool(t, hasCurl, 'curl')) return;
  const f = await fixture();
  t.after(() => f.origin.clearFaults());
  const img = `/${f.v2.name}`;
  const d = await startSidecar(t, f, f.origin);
  const delayMs = 2 * DEFAULT_TIMEOUTS.prepareMs;
  f.origin.fault({ kind: 'delay', path: `${img}.caibx`, delayMs: delayMs + 500 });
  // The first request for the image itself is the HEAD sent beside the index.
  f.origin.fault({ kind: 'delay', path: img, delayMs });
  const before = f.origin.log.length;
  await download(`${d.url}${img}`, join(f.dir, 'slow-head.img'), f.v2.data);
  assert.equal(fullGets(f.origin, img, before), 0, 'the full image was never fetched');
  assert.equal(d.ctx.counters.fallbacks, 0, d.logs.join(''));
  assert.equal(d.ctx.counters.assembliesCompleted, 1);
});

test('an index that never arrives, or describes another size: the full image, verified, under the early headers', {
  timeout: 40_000,
}, async (t) => {
  if (!requireTool(t, hasCurl, 'curl')) return;
  const f = await fixture();
  t.after(() => f.origin.clearFaults());
  const img = `/${f.v2.name}`;
  // The index request hangs (headers, then no body) for longer than the whole first-byte budget.
  f.origin.fault({ kind: 'stall', path: `${img}.caibx`, times: Infinity, stallMs: 15_000 });
  const d = await startSidecar(t, f, f.origin, { firstByteMs: 2_000 });
  const before = f.origin.log.length;
  const firstByte = await download(`${d.url}${img}`, join(f.dir, 'never.img'), f.v2.data);
  assert.ok(firstByte < 15, `first byte after ${firstByte} s`);
  assert.equal(fullGets(f.origin, img, before), 1, 'streamed whole from the origin');
  assert.equal(d.ctx.counters.fallbacks, 1);
  assert.equal(d.ctx.counters.assembliesStarted, 0);
  assert.ok(
    d.logs.some((l) => /not fetched within .*streaming the full image/.test(l)),
    d.logs.join(''),
  );
  f.origin.clearFaults();

  // A late index for a shorter image than the one the HEAD announced: never served as a delta.
  const lyingRoot = join(f.dir, 'origin-lying');
  await mkdir(lyingRoot);
  await copyFile(join(f.root, f.v2.name), join(lyingRoot, f.v2.name));
  await copyFile(join(f.root, 'SHA256SUMS'), join(lyingRoot, 'SHA256SUMS'));
  const shorter = indexBuffer(f.v2.data.subarray(0, SIZE - 65_536), { params: FLEET_PARAMS, digest: 'sha512-256' });
  await writeFile(join(lyingRoot, `${f.v2.name}.caibx`), serializeIndex(shorter));
  const lying = await startOrigin({ root: lyingRoot });
  t.after(() => lying.close());
  const d2 = await startSidecar(t, f, lying);
  lying.fault({ kind: 'delay', path: `${img}.caibx`, delayMs: 2 * DEFAULT_TIMEOUTS.prepareMs });
  await download(`${d2.url}${img}`, join(f.dir, 'mismatch.img'), f.v2.data);
  assert.equal(fullGets(lying, img, 0), 1, 'streamed whole from the origin');
  assert.equal(d2.ctx.counters.assembliesStarted, 0);
  assert.ok(
    d2.logs.some((l) => /its index describes \d+ bytes, the origin's HEAD said/.test(l)),
    d2.logs.join(''),
  );
});
