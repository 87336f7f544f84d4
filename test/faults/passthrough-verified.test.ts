// Fault class: the sidecar passing an image through (passthrough = proxy)
// when it cannot make a delta. The origin's file is checked against the
// SHA256SUMS entry like any delta: a replaced image reaches the client cut
// short, never complete; the right image arrives whole.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { buildServer } from '../../daemon/server.js';
import { defaultConfig, type DaemonConfig } from '../../daemon/config.js';
import { createNotifier } from '../../daemon/notify.js';
import { startOrigin } from '../helpers/origin.js';
import { makeReleases, type Release } from '../helpers/fleet.js';
import { tmpDir } from '../helpers/tmp.js';
import { seededBytes } from '../helpers/images.js';

async function setup(
  t: TestContext,
  over: Partial<DaemonConfig>,
): Promise<{ url: string; originDir: string; release: Release }> {
  const dir = await tmpDir(t, 'fault-pass');
  const originDir = join(dir, 'origin');
  await mkdir(originDir);
  const [release] = await makeReleases(originDir, 1024 * 1024, 1);
  const origin = await startOrigin({ root: originDir });
  const config: DaemonConfig = {
    ...defaultConfig({}),
    origin: `${origin.url}/`,
    seedGlobs: [],
    cacheDir: join(dir, 'cache'),
    idleTimeout: 0,
    passthrough: 'proxy',
    ...over,
  };
  const { app } = await buildServer(config, {
    notifier: createNotifier({ env: {} }),
    timeouts: { prepareMs: 500, headerMs: 800 },
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(async () => {
    await app.close();
    await origin.close();
  });
  return { url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}`, originDir, release };
}

/** GET through the sidecar: status, announced length and the bytes that arrived before the end or the cut. */
async function fetchImage(url: string): Promise<{ status: number; length: number; body: Buffer; cut: boolean }> {
  const res = await request(url, { headersTimeout: 10_000, bodyTimeout: 10_000 });
  const parts: Buffer[] = [];
  let cut = false;
  try {
    for await (const p of res.body) parts.push(p as Buffer);
  } catch {
    cut = true;
  }
  return { status: res.statusCode, length: Number(res.headers['content-length']), body: Buffer.concat(parts), cut };
}

for (const [why, over] of [
  ['no index', { indexSuffix: '.missing' }],
  ['an unreadable index', {}],
] as const) {
  test(`proxied pass-through (${why}): a replaced image is cut short, the listed one arrives whole`, {
    timeout: 30_000,
  }, async (t) => {
    const f = await setup(t, over);
    const imagePath = join(f.originDir, f.release.name);
    if (why === 'an unreadable index') await writeFile(`${imagePath}.caibx`, seededBytes(500, 'not an index'));
    const good = await fetchImage(`${f.url}/${f.release.name}`);
    assert.equal(good.status, 200);
    assert.ok(!good.cut && good.body.equals(f.release.data), 'the image listed in SHA256SUMS passes whole');
    // Replaced on the origin (same size), SHA256SUMS unchanged.
    const other = Buffer.from(f.release.data);
    other[other.length >> 1] ^= 0xff;
    await writeFile(imagePath, other);
    const bad = await fetchImage(`${f.url}/${f.release.name}`);
    assert.equal(bad.status, 200);
    assert.equal(bad.length, other.length);
    assert.ok(bad.cut, 'the connection was cut');
    assert.ok(bad.body.length < other.length, `only ${bad.body.length} of ${other.length} bytes arrived`);
  });
}
