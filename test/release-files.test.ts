// Release files (index, SHA256SUMS) are fetched by one piece of code,
// lib/fetch/release-files.ts, for the CLI (loadIndex), the sidecar's release
// preparation (Releases) and the fleet proxy (its metadata cache). These tests
// give all three the same hostile or unchanged origin on 127.0.0.1 and check
// that they get the same bounds, errors and revalidation.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type ServerResponse } from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listenLocal } from './helpers/listen.js';
import { request } from 'undici';
import { CA_FORMAT_INDEX, CA_FORMAT_TABLE, HEADER_SIZE, ITEM_SIZE } from '../lib/format/caibx.js';
import { loadIndex } from '../lib/delta/extract.js';
import { Releases } from '../lib/delta/release.js';
import { HttpClient } from '../lib/fetch/http-client.js';
import { MetadataCache } from '../lib/fleet/metadata-cache.js';
import { BodyTooLargeError, IndexFormatError } from '../lib/errors.js';
import type { Logger } from '../daemon/log.js';
import { makeReleases, startTestProxy } from './helpers/fleet.js';
import { startOrigin } from './helpers/origin.js';

const GiB = 1024 ** 3;
const STEP = 256 * 1024;

/** An index header with chunk sizes 16K:64K:256K. */
function indexHeader(): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  h.writeBigUInt64LE(48n, 0);
  h.writeBigUInt64LE(CA_FORMAT_INDEX, 8);
  h.writeBigUInt64LE(0xb000000000000000n, 16); // SHA-512/256, no archive flags
  h.writeBigUInt64LE(16n * 1024n, 24);
  h.writeBigUInt64LE(64n * 1024n, 32);
  h.writeBigUInt64LE(BigInt(STEP), 40);
  h.writeBigUInt64LE(0xffffffffffffffffn, 48);
  h.writeBigUInt64LE(CA_FORMAT_TABLE, 56);
  return h;
}

/** `n` valid table items of STEP bytes each, from item `first`. */
function items(first: number, n: number): Buffer {
  const b = randomBytes(n * ITEM_SIZE);
  for (let k = 0; k < n; k++) b.writeBigUInt64LE(BigInt((first + k + 1) * STEP), k * ITEM_SIZE);
  return b;
}

/**
 * An origin whose os.img.caibx never ends (no Content-Length), beside a small os.img listed in SHA256SUMS; counts
 * the index bytes it managed to send.
 */
async function endlessIndexOrigin(t: TestContext): Promise<{ url: string; image: Buffer; indexSent: () => number }> {
  const image = randomBytes(200 * 1024);
  const sums = `${createHash('sha256').update(image).digest('hex')}  os.img\n`;
  let indexSent = 0;
  const endless = (res: ServerResponse): void => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    res.on('error', () => {});
    res.write(indexHeader());
    let n = 0;
    const pump = (): void => {
      while (!res.destroyed) {
        const b = items(n, 1024);
        n += 1024;
        indexSent += b.length;
        if (!res.write(b)) return void res.once('drain', pump);
      }
    };
    pump();
  };
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path === '/os.img.caibx') return endless(res);
    const body = path === '/os.img' ? image : path === '/SHA256SUMS' ? Buffer.from(sums) : undefined;
    if (!body) return void res.writeHead(404, { 'content-length': 0 }).end();
    res.writeHead(200, { 'content-length': body.length });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  const base = await listenLocal(t, server);
  return { url: base, image, indexSent: () => indexSent };
}

test('an endless index is refused the same way, at the same byte, by the CLI, the sidecar and the fleet proxy', {
  timeout: 60_000,
}, async (t) => {
  const origin = await endlessIndexOrigin(t);
  const indexUrl = `${origin.url}/os.img.caibx`;
  const http = new HttpClient();
  t.after(() => http.close());
  const refusal = (what: string) => (err: unknown) => {
    assert.ok(err instanceof IndexFormatError, `${what}: ${String(err)}`);
    assert.match(err.message, /describes more than 1073741824 bytes, the largest target allowed/, what);
    return true;
  };

  // The CLI's index download (deltad extract / plan: INDEX as a URL).
  let cli: Error | undefined;
  await assert.rejects(
    loadIndex(indexUrl, { http, maxTargetSize: GiB }).catch((err: Error) => {
      cli = err;
      throw err;
    }),
    refusal('CLI'),
  );
  const afterCli = origin.indexSent();

  // The sidecar's release preparation.
  const releases = new Releases(http, { maxTargetSize: GiB });
  const target = {
    url: `${origin.url}/os.img`,
    name: 'os.img',
    indexUrls: [indexUrl],
    sumsUrl: `${origin.url}/SHA256SUMS`,
  };
  await assert.rejects(
    releases.prepare(target).catch((err: Error) => {
      assert.equal(err.message, cli!.message, 'the same error as the CLI');
      throw err;
    }),
    refusal('sidecar'),
  );

  // The proxy: it refuses the index the same way (logged), and passes the image through whole, checked.
  const warnings: string[] = [];
  const logger: Logger = { error() {}, warn: (m) => warnings.push(m), notice() {}, info() {} };
  const dir = await mkdtemp(join(tmpdir(), 'deltad-release-files-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const { url: proxyUrl } = await startTestProxy(t, origin.url, join(dir, 'cache'), { logger, maxTargetSize: GiB });
  const res = await request(`${proxyUrl}os.img`, { headersTimeout: 20_000, bodyTimeout: 20_000 });
  const body = Buffer.from(await res.body.arrayBuffer());
  assert.equal(res.statusCode, 200);
  assert.ok(body.equals(origin.image), 'the image, passed through whole');
  assert.ok(warnings.includes(cli!.message), `the proxy logged the CLI's error: ${warnings.join(' | ')}`);

  // 1 GiB of 256 KiB chunks is 4096 items (160 KiB): each client stopped soon after (socket buffers aside).
  assert.ok(afterCli < 16 * 1024 * 1024, `${afterCli} index bytes sent to the CLI`);
  assert.ok(origin.indexSent() < 3 * 16 * 1024 * 1024, `${origin.indexSent()} index bytes sent in all`);
});

test('an index announced beyond its limits is refused before its body; a small file beyond its limit likewise', {
  timeout: 30_000,
}, async (t) => {
  const announced = 10 * 1024 * 1024;
  const server = createServer((req, res) => {
    res.on('error', () => {});
    res.writeHead(200, { 'content-length': String(announced) });
    res.write(req.url?.endsWith('.caibx') ? indexHeader() : Buffer.alloc(HEADER_SIZE));
  });
  const base = await listenLocal(t, server);
  const http = new HttpClient();
  t.after(() => http.close());
  // 1 GiB in chunks of at least 16 KiB is at most 65537 items: far less than 10 MiB of index.
  const tooBig = (err: unknown) =>
    err instanceof IndexFormatError &&
    /file size at byte 0: 10485760 bytes announced, more than the \d+ bytes an index of at most 1073741824 bytes/.test(
      err.message,
    );
  await assert.rejects(loadIndex(`${base}/x.caibx`, { http, maxTargetSize: GiB }), tooBig, 'CLI');
  await assert.rejects(new Releases(http, { maxTargetSize: GiB }).file(`${base}/x.caibx`, { index: true }), tooBig);
  const dir = await mkdtemp(join(tmpdir(), 'deltad-release-files-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const meta = new MetadataCache(dir, http, 64 * 1024 * 1024, GiB);
  await assert.rejects(meta.file(`${base}/x.caibx`, { index: true }), tooBig, 'proxy');
  // SHA256SUMS and other small files: 1 MiB for the sidecar, the proxy's cache limit for the proxy.
  await assert.rejects(
    new Releases(http).file(`${base}/SHA256SUMS`),
    (err: unknown) =>
      err instanceof BodyTooLargeError && /10485760 bytes exceeds the 1048576-byte limit/.test(err.message),
  );
  await assert.rejects(
    new MetadataCache(dir, http, 1024 * 1024).file(`${base}/SHA256SUMS`),
    (err: unknown) => err instanceof BodyTooLargeError,
  );
});

test('revalidation is one implementation: the sidecar and the proxy both get a 304 and keep the index parsed once', {
  timeout: 30_000,
}, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'deltad-release-files-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const originDir = join(dir, 'origin');
  await mkdir(originDir);
  const [v1] = await makeReleases(originDir, 1024 * 1024, 1);
  const upstream = await startOrigin({ root: originDir });
  t.after(() => upstream.close());
  const http = new HttpClient();
  t.after(() => http.close());
  const indexUrl = `${upstream.url}/${v1.name}.caibx`;
  const statuses = () => upstream.log.filter((e) => e.path === `/${v1.name}.caibx`).map((e) => e.status);

  // The sidecar: nothing kept fresh (freshMs 0), so every preparation revalidates.
  const releases = new Releases(http, { freshMs: 0 });
  const a = await releases.file(indexUrl, { index: true });
  const b = await releases.file(indexUrl, { index: true });
  assert.deepEqual(statuses(), [200, 304]);
  assert.equal(b, a, 'the 304 answers with the copy kept');
  assert.equal(a.index?.count, v1.index.count);

  // The proxy's cache: the same conditional GET, the index parsed as it arrived and reused on the 304.
  const meta = new MetadataCache(join(dir, 'meta'), http);
  const first = await meta.file(indexUrl, { index: true });
  const second = await meta.file(indexUrl, { index: true });
  assert.deepEqual(statuses(), [200, 304, 200, 304]);
  assert.ok(first.body.length > 0, 'the proxy keeps the body it passes on');
  assert.equal(second.index, first.index, 'not parsed again');
  assert.equal(second.digest, a.digest, 'the same digest as the sidecar computed');
  // After a restart the copy on disk is revalidated too; with the upstream down it is served stale.
  const restarted = new MetadataCache(join(dir, 'meta'), http);
  const third = await restarted.file(indexUrl, { index: true });
  assert.deepEqual(statuses(), [200, 304, 200, 304, 304]);
  assert.equal(third.index?.count, v1.index.count);
  upstream.down = true;
  const stale = await restarted.file(indexUrl, { index: true });
  assert.equal(stale.stale, true);
  assert.equal(stale.index, third.index);
  // A copy damaged on disk is never served, even with its index parsed in memory: an outage is an error, and
  // with the upstream back the file is fetched again whole (no conditional request for a copy it lacks).
  const copy = join(dir, 'meta', createHash('sha256').update(indexUrl).digest('hex'));
  const raw = await readFile(copy);
  raw[raw.length - 1] ^= 0xff;
  await writeFile(copy, raw);
  await assert.rejects(restarted.file(indexUrl, { index: true }));
  upstream.down = false;
  const healed = await restarted.file(indexUrl, { index: true });
  assert.deepEqual(statuses().slice(-1), [200]);
  assert.equal(healed.digest, a.digest);
  assert.ok(!(await readFile(copy)).equals(raw), 'the cache holds the good copy again');
});
