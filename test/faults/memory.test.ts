// Fault class: an origin that tries to make the client use unbounded memory or
// disk. An index body that never ends, and a valid index describing 2^50 bytes,
// are refused after a bounded read (peak RSS of the CLI under 200 MB, from
// VmHWM); a target larger than the free space is refused in words before
// anything is allocated. OUT stays byte-identical, nothing is left beside it.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type ServerResponse } from 'node:http';
import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { listenLocal } from '../helpers/listen.js';
import { CA_FORMAT_INDEX, CA_FORMAT_TABLE, HEADER_SIZE, ITEM_SIZE, serializeIndex } from '../../lib/format/caibx.js';
import { indexBuffer } from '../../lib/chunking/indexer.js';
import { mountTinyTmpfs } from '../helpers/tmpfs.js';
import { Releases } from '../../lib/delta/release.js';
import { HttpClient } from '../../lib/fetch/http-client.js';
import { IndexFormatError } from '../../lib/errors.js';
import { deltad } from './run-cli.js';
import { tmpDir } from '../helpers/tmp.js';
import { seededBytes } from '../helpers/images.js';

const RSS_LIMIT = 200 * 1024 * 1024;
const PREVIOUS = Buffer.from('the previous image\n');

function header(min: number, avg: number, max: number): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  h.writeBigUInt64LE(48n, 0);
  h.writeBigUInt64LE(CA_FORMAT_INDEX, 8);
  h.writeBigUInt64LE(0xb000000000000000n, 16); // SHA-512/256, no archive flags
  h.writeBigUInt64LE(BigInt(min), 24);
  h.writeBigUInt64LE(BigInt(avg), 32);
  h.writeBigUInt64LE(BigInt(max), 40);
  h.writeBigUInt64LE(0xffffffffffffffffn, 48);
  h.writeBigUInt64LE(CA_FORMAT_TABLE, 56);
  return h;
}

/** Valid table items of `step` bytes each, from item `first`, `n` of them. */
function items(first: number, n: number, step: number): Buffer {
  const b = seededBytes(n * ITEM_SIZE, `items:${first}`);
  for (let k = 0; k < n; k++) b.writeBigUInt64LE(BigInt((first + k + 1) * step), k * ITEM_SIZE);
  return b;
}

/** An origin on 127.0.0.1 answering every request with `serve`; closed after the test. */
async function startServer(
  t: TestContext,
  serve: (res: ServerResponse) => void,
): Promise<{ url: string; sent: () => number }> {
  let sent = 0;
  const server = createServer((_req, res) => {
    const write = res.write.bind(res);
    res.write = ((chunk: Buffer, ...rest: never[]) => {
      sent += chunk.length;
      return write(chunk, ...rest);
    }) as typeof res.write;
    serve(res);
  });
  const base = await listenLocal(t, server);
  return { url: base, sent: () => sent };
}

async function outDir(t: TestContext): Promise<{ dir: string; out: string }> {
  const dir = await tmpDir(t, 'fault-mem');
  const out = join(dir, 'out.img');
  await writeFile(out, PREVIOUS);
  return { dir, out };
}

async function assertUntouched(dir: string, out: string): Promise<void> {
  assert.ok((await readFile(out)).equals(PREVIOUS), 'OUT is byte-identical');
  assert.deepEqual(await readdir(dir), ['out.img'], 'nothing left beside OUT');
}

test('an index body that never ends (no Content-Length) is refused after a bounded read', {
  timeout: 60_000,
}, async (t) => {
  const step = 64 * 1024;
  const perWrite = 16 * 1024;
  const origin = await startServer(t, (res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    res.write(header(16 * 1024, 64 * 1024, 256 * 1024));
    let n = 0;
    const pump = (): void => {
      while (!res.destroyed && res.write(items(n, perWrite, step))) n += perWrite;
      if (!res.destroyed)
        res.once('drain', () => {
          n += perWrite;
          pump();
        });
    };
    res.on('error', () => {});
    pump();
  });
  const { dir, out } = await outDir(t);
  const r = await deltad(['extract', '--range-url', `${origin.url}/os.img`, `${origin.url}/os.img.caibx`, out], {
    timeoutMs: 50_000,
    env: { XDG_CACHE_HOME: join(dir, '.xdg') },
  });
  await rm(join(dir, '.xdg'), { recursive: true, force: true });
  assert.equal(r.code, 1, r.stderr);
  assert.match(
    r.stderr,
    /invalid index: item\[\d+\]\.offset .*describes more than 68719476736 bytes, the largest target allowed/,
  );
  t.diagnostic(`peak RSS of the CLI: ${(r.peakRss / 2 ** 20).toFixed(0)} MiB`);
  assert.ok(r.peakRss > 0 && r.peakRss < RSS_LIMIT, `peak RSS ${(r.peakRss / 2 ** 20).toFixed(0)} MiB`);
  await assertUntouched(dir, out);
  // A smaller limit stops it sooner: the client decides.
  const small = await deltad(
    ['extract', '--max-target-size', '1G', '--range-url', `${origin.url}/os.img`, `${origin.url}/os.img.caibx`, out],
    { timeoutMs: 50_000, env: { XDG_CACHE_HOME: join(dir, '.xdg') } },
  );
  await rm(join(dir, '.xdg'), { recursive: true, force: true });
  assert.equal(small.code, 1, small.stderr);
  assert.match(small.stderr, /describes more than 1073741824 bytes/);
  await assertUntouched(dir, out);
});

test("the sidecar's release preparation reads an endless index only as far as its limit", {
  timeout: 30_000,
}, async (t) => {
  const step = 64 * 1024;
  const origin = await startServer(t, (res) => {
    res.writeHead(200);
    res.on('error', () => {});
    res.write(header(16 * 1024, 64 * 1024, 256 * 1024));
    let n = 0;
    const pump = (): void => {
      while (!res.destroyed && res.write(items(n, 4096, step))) n += 4096;
      if (!res.destroyed)
        res.once('drain', () => {
          n += 4096;
          pump();
        });
    };
    pump();
  });
  const http = new HttpClient();
  t.after(() => http.close());
  const releases = new Releases(http, { maxTargetSize: 1024 ** 3 });
  const target = {
    url: `${origin.url}/os.img`,
    name: 'os.img',
    indexUrls: [`${origin.url}/os.img.caibx`],
    sumsUrl: `${origin.url}/SHA256SUMS`,
  };
  await assert.rejects(releases.prepare(target, Promise.resolve(undefined)), (err: unknown) => {
    assert.ok(err instanceof IndexFormatError, String(err));
    assert.match(err.message, /describes more than 1073741824 bytes/);
    return true;
  });
  // 1 GiB of 64 KiB chunks is 16384 items: the client stopped soon after (socket buffers aside).
  assert.ok(origin.sent() < 16 * 1024 * 1024, `${origin.sent()} bytes sent`);
});

test('a valid 335 MB index describing 2^50 bytes is refused from its announced length, before its body', {
  timeout: 30_000,
}, async (t) => {
  const chunk = 128 * 1024 * 1024;
  const count = 2 ** 50 / chunk; // 8 M chunks: a 335 MB index
  const length = 104 + count * ITEM_SIZE;
  const origin = await startServer(t, (res) => {
    res.writeHead(200, { 'content-length': String(length) });
    res.on('error', () => {});
    res.write(header(chunk, chunk, chunk));
    let n = 0;
    const pump = (): void => {
      while (!res.destroyed && n < count && res.write(items(n, 4096, chunk))) n += 4096;
      if (!res.destroyed && n < count)
        res.once('drain', () => {
          n += 4096;
          pump();
        });
    };
    pump();
  });
  const { dir, out } = await outDir(t);
  const r = await deltad(['extract', '--range-url', `${origin.url}/os.img`, `${origin.url}/os.img.caibx`, out], {
    env: { XDG_CACHE_HOME: join(dir, '.xdg') },
  });
  await rm(join(dir, '.xdg'), { recursive: true, force: true });
  assert.equal(r.code, 1, r.stderr);
  assert.match(
    r.stderr,
    new RegExp(
      `invalid index: file size at byte 0: ${length} bytes announced, more than the \\d+ bytes an index of at most 68719476736 bytes`,
    ),
  );
  t.diagnostic(`peak RSS of the CLI: ${(r.peakRss / 2 ** 20).toFixed(0)} MiB`);
  assert.ok(r.peakRss > 0 && r.peakRss < RSS_LIMIT, `peak RSS ${(r.peakRss / 2 ** 20).toFixed(0)} MiB`);
  assert.ok(origin.sent() < 64 * 1024 * 1024, `the client stopped reading early (${origin.sent()} bytes sent)`);
  await assertUntouched(dir, out);
});

test('a target larger than the free space is refused in words before anything is allocated', {
  timeout: 30_000,
}, async (t) => {
  const mnt = await mountTinyTmpfs(t, '1m');
  if (!mnt) return;
  const data = seededBytes(3 * 1024 * 1024, 'memory:image');
  const index = indexBuffer(data, {
    params: { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 },
    digest: 'sha512-256',
  });
  const origin = await startServer(t, (res) => {
    const body = serializeIndex(index);
    res.writeHead(200, { 'content-length': String(body.length) });
    res.end(body);
  });
  const out = join(mnt, 'out.img');
  await writeFile(out, PREVIOUS);
  const cache = await tmpDir(t, 'fault-mem-xdg');
  const r = await deltad(['extract', '--range-url', `${origin.url}/os.img`, `${origin.url}/os.img.caibx`, out], {
    env: { XDG_CACHE_HOME: cache },
  });
  assert.equal(r.code, 1, r.stderr);
  assert.match(
    r.stderr,
    new RegExp(
      `${out}: the image needs 3\\.0 MiB \\(${data.length} bytes\\), but ${mnt} has only [\\d.]+ \\w+ free; free [\\d.]+ \\w+ or write it elsewhere`,
    ),
  );
  await assertUntouched(mnt, out);
});
