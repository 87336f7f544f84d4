// Fleet-proxy test fixtures: generated image releases (v1, v2 sharing most chunks)
// with their .caibx indexes and SHA256SUMS, a `deltad proxy` on 127.0.0.1, and a
// count of the upstream's range fetches per chunk. The upstream is the test origin
// (helpers/origin.ts).
import { createHash } from 'node:crypto';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { indexBuffer } from '../../lib/chunking/indexer.js';
import { serializeIndex, type ChunkIndex } from '../../lib/format/caibx.js';
import type { TestContext } from 'node:test';
import { createProxy, type ProxyOptions, type ProxyServer } from '../../daemon/proxy.js';
import { DEFAULT_ALLOW } from '../../daemon/access.js';
import type { AccessEntry } from './origin.js';
import { rewritten, seededBytes, spreadRegions } from './images.js';

export const FLEET_PARAMS = { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };

export interface Release {
  name: string;
  data: Buffer;
  index: ChunkIndex;
}

/**
 * Writes `os_<v>.img` (+ `.caibx`) for each version into dir, each version a
 * copy of the previous with `edits` regions of 30 000 bytes rewritten (spread over
 * the image), and a SHA256SUMS listing the images. Seeded: the same bytes every run.
 */
export async function makeReleases(dir: string, size: number, versions: number, edits = 6): Promise<Release[]> {
  const out: Release[] = [];
  let data = seededBytes(size, `release:${size}`);
  for (let v = 1; v <= versions; v++) {
    if (v > 1) data = rewritten(data, spreadRegions(size, edits, 30_000), `release:${size}:v${v}`);
    const name = `os_${v}.img`;
    const index = indexBuffer(data, { params: FLEET_PARAMS, digest: 'sha512-256' });
    await writeFile(join(dir, name), data);
    await writeFile(join(dir, `${name}.caibx`), serializeIndex(index));
    out.push({ name, data, index });
  }
  const sums = out.map((r) => `${createHash('sha256').update(r.data).digest('hex')}  ${r.name}\n`).join('');
  await writeFile(join(dir, 'SHA256SUMS'), sums);
  return out;
}

/**
 * A release site under `dir`: `root` (default origin/) holds v1 and v2 of a `size`-byte image (makeReleases), and
 * system/ holds v1, the installed image the sidecar's seeds come from.
 */
export async function releaseSite(
  dir: string,
  size: number,
  rootName = 'origin',
): Promise<{ root: string; seedDir: string; v1: Release; v2: Release }> {
  const root = join(dir, rootName);
  const seedDir = join(dir, 'system');
  await Promise.all([mkdir(root), mkdir(seedDir)]);
  const [v1, v2] = await makeReleases(root, size, 2);
  await copyFile(join(root, v1.name), join(seedDir, v1.name));
  return { root, seedDir, v1, v2 };
}

/** Range requests in the log whose byte span covers the chunk at [start, end). */
export function rangeFetchesOf(log: AccessEntry[], path: string, start: number, end: number): number {
  let n = 0;
  for (const e of log) {
    if (e.path !== path || e.status !== 206 || !e.range) continue;
    const m = /^bytes=(\d+)-(\d+)$/.exec(e.range);
    if (m && Number(m[1]) <= start && Number(m[2]) + 1 >= end) n++;
  }
  return n;
}

/**
 * A `deltad proxy` on 127.0.0.1 in front of `upstream`, closed after the test.
 * `beforeListen` may add fastify hooks. `url` ends with '/'.
 */
export async function startTestProxy(
  t: TestContext,
  upstream: string,
  cacheDir: string,
  over: Partial<ProxyOptions> = {},
  beforeListen?: (proxy: ProxyServer) => void,
): Promise<{ proxy: ProxyServer; url: string }> {
  const proxy = await createProxy({
    upstream: upstream.endsWith('/') ? upstream : upstream + '/',
    cacheDir,
    cacheMaxBytes: 256 * 1024 * 1024,
    allow: DEFAULT_ALLOW,
    maxPerClient: 64,
    imagePatterns: ['*.img'],
    indexSuffix: '.caibx',
    ...over,
  });
  t.after(() => proxy.close());
  beforeListen?.(proxy);
  await proxy.app.listen({ host: '127.0.0.1', port: 0 });
  return { proxy, url: `http://127.0.0.1:${(proxy.app.server.address() as AddressInfo).port}/` };
}
