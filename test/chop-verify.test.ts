// chop and verify: filling a store from a file and checking files and stores
// against an index, including interop both ways with the real Debian casync.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, truncate, unlink, writeFile, appendFile, readdir } from 'node:fs/promises';
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ChunkIndexBuilder, readIndexFile, serializeIndex, type ChunkIndex } from '../lib/format/caibx.js';
import { chunkId, toHex, type DigestName } from '../lib/format/digest.js';
import type { ChunkRequest, WritableChunkStore } from '../lib/store/types.js';
import { ChunkVerifyError, DeltadError } from '../lib/errors.js';
import { LocalStore } from '../lib/store/local-store.js';
import { HttpStore } from '../lib/store/http-store.js';
import { HttpClient } from '../lib/fetch/http-client.js';
import { chopFile } from '../lib/tools/chop.js';
import { verifyFile, verifyStore } from '../lib/tools/verify.js';
import { startOrigin } from './helpers/origin.js';
import { REPO_ROOT } from './helpers/repo.js';
import { tmpDir } from './helpers/tmp.js';
import { seededBytes } from './helpers/images.js';

/** A few MiB with the shapes images have: random data, zero runs, repeated blocks, text. */
function makeImage(size: number, label = 'img'): Buffer {
  const out = Buffer.alloc(size);
  let o = 0;
  for (let k = 0; o < size; k++) {
    const kind = k % 4;
    const len = Math.min(size - o, 150_000 + ((k * 37_311) % 200_000));
    if (kind === 0 || kind === 2) {
      seededBytes(len, `${label}:${k}`).copy(out, o);
    } else if (kind === 3) {
      for (let p = 0; p < len; ) p += out.write(`${label} line ${k} ${p} the quick brown fox\n`, o + p);
    } // kind 1: zeros
    o += len;
  }
  // One exact repeat of an earlier region, 64K-aligned, so duplicate chunks exist.
  out.copy(out, 2 * 65_536 * 8, 0, 65_536 * 4);
  return out;
}

/** A fixed-size split (64 KiB, shorter last chunk) as a casync-compatible index. */
function fixedIndex(buf: Uint8Array, digest: DigestName = 'sha512-256', chunk = 65_536): ChunkIndex {
  const b = ChunkIndexBuilder.forDigest(digest, { min: 16_384, avg: 65_536, max: 262_144 });
  for (let o = 0; o < buf.length; o += chunk) {
    const end = Math.min(buf.length, o + chunk);
    b.add(end, chunkId(digest, buf.subarray(o, end)));
  }
  return b.finish();
}

function distinctIds(index: ChunkIndex): number {
  return new Set(Array.from({ length: index.count }, (_, i) => index.idHex(i))).size;
}

function casyncAvailable(t: { skip: (msg: string) => void }): boolean {
  const r = spawnSync('casync', ['--version'], { stdio: 'pipe' });
  if (r.status === 0) return true;
  if (process.env.CI) throw new Error('casync is required in CI (scripts/test-deps.sh installs it)');
  t.skip('casync not installed');
  return false;
}

test('chop fills a store; a second chop finds everything; verifyStore accepts it', async (t) => {
  const dir = await tmpDir(t, 'chop');
  const img = makeImage(3 * 1024 * 1024 + 12_345);
  await writeFile(join(dir, 'img'), img);
  const index = fixedIndex(img);
  const unique = distinctIds(index);
  assert.ok(unique < index.count, 'the image has duplicate chunks');
  const store = new LocalStore(join(dir, 'img.castr'));
  const progress: number[] = [];
  const r1 = await chopFile(index, join(dir, 'img'), store, {
    onProgress: (done, total) => {
      assert.equal(total, img.length);
      progress.push(done);
    },
  });
  assert.deepEqual(
    { chunks: r1.chunks, unique: r1.unique, written: r1.written, existing: r1.existing, bytesIn: r1.bytesIn },
    { chunks: index.count, unique, written: unique, existing: 0, bytesIn: img.length },
  );
  assert.equal(progress.at(-1), img.length);
  let files = 0;
  for await (const _ of store.ids()) files++;
  assert.equal(files, unique);

  const r2 = await chopFile(index, join(dir, 'img'), store, { concurrency: 2 });
  assert.equal(r2.written, 0);
  assert.equal(r2.existing, unique);
  assert.equal(r2.bytesStored, 0);

  const v = await verifyStore(index, store, { concurrency: 4 });
  assert.deepEqual(v, { ok: true, checked: unique, missing: [], corrupt: [] });
});

/** A WritableChunkStore that is not a LocalStore: chop must go through put(). */
class MemoryStore implements WritableChunkStore {
  readonly location = 'memory';
  readonly chunks = new Map<string, Buffer>();
  async get(req: ChunkRequest): Promise<Buffer | null> {
    return this.chunks.get(toHex(req.id)) ?? null;
  }
  async has(id: Uint8Array): Promise<boolean> {
    return this.chunks.has(toHex(id));
  }
  async put(id: Uint8Array, data: Uint8Array): Promise<boolean> {
    if (this.chunks.has(toHex(id))) return false;
    this.chunks.set(toHex(id), Buffer.from(data));
    return true;
  }
}

test('chop: inline, on worker threads, and into a generic store, the same chunks', async (t) => {
  const dir = await tmpDir(t, 'chop');
  const img = makeImage(9 * 1024 * 1024 + 99, 'th');
  await writeFile(join(dir, 'img'), img);
  const index = fixedIndex(img);
  const listing = async (s: LocalStore) => {
    const ids: string[] = [];
    for await (const hex of s.ids()) ids.push(hex);
    return ids.sort();
  };
  const inline = new LocalStore(join(dir, 'a'));
  const threaded = new LocalStore(join(dir, 'b'));
  const r0 = await chopFile(index, join(dir, 'img'), inline, { threads: 0 });
  const r2 = await chopFile(index, join(dir, 'img'), threaded, { threads: 2, concurrency: 3 });
  assert.deepEqual(r2, r0);
  assert.ok(r0.bytesStored < r0.bytesIn, 'stored bytes are the compressed sizes');
  assert.deepEqual(await listing(threaded), await listing(inline));
  assert.equal((await verifyStore(index, threaded)).ok, true);

  const mem = new MemoryStore();
  const rMem = await chopFile(index, join(dir, 'img'), mem, { threads: 1 });
  assert.equal(rMem.written, r0.written);
  assert.equal(
    rMem.bytesStored,
    [...mem.chunks.values()].reduce((n, b) => n + b.length, 0),
  );
  for (let i = 0; i < index.count; i++) {
    assert.ok(mem.chunks.get(index.idHex(i))?.equals(img.subarray(index.start(i), index.end(i))), `chunk ${i}`);
  }
});

test('verifyStore reports missing and corrupt chunks by chunk number and ID', async (t) => {
  const dir = await tmpDir(t, 'chop');
  const img = makeImage(1024 * 1024, 'vs');
  await writeFile(join(dir, 'img'), img);
  const index = fixedIndex(img);
  const store = new LocalStore(join(dir, 's'));
  await chopFile(index, join(dir, 'img'), store);
  await unlink(store.chunkPath(index.id(3)));
  await writeFile(store.chunkPath(index.id(7)), Buffer.from('garbage'));
  const progress: number[] = [];
  const v = await verifyStore(index, store, { onProgress: (d) => progress.push(d) });
  assert.equal(v.ok, false);
  assert.deepEqual(
    v.missing.map((m) => [m.chunk, m.id]),
    [[3, index.idHex(3)]],
  );
  assert.deepEqual(
    v.corrupt.map((m) => [m.chunk, m.id]),
    [[7, index.idHex(7)]],
  );
  assert.match(v.corrupt[0].reason, /unknown format/);
  assert.equal(progress.at(-1), v.checked);
});

test('verifyFile: a good file, a changed byte, a truncated and an extended file', async (t) => {
  const dir = await tmpDir(t, 'chop');
  const img = makeImage(2 * 1024 * 1024 + 777, 'vf');
  const path = join(dir, 'img');
  await writeFile(path, img);
  const index = fixedIndex(img);
  const good = await verifyFile(index, path);
  assert.deepEqual(good, { ok: true, checked: index.count, fileSize: img.length, indexSize: img.length, bad: [] });

  const changed = Buffer.from(img);
  changed[5 * 65_536 + 100] ^= 1;
  await writeFile(path, changed);
  const r = await verifyFile(index, path);
  assert.equal(r.ok, false);
  assert.deepEqual(
    r.bad.map((b) => [b.chunk, b.offset, b.id]),
    [[5, 5 * 65_536, index.idHex(5)]],
  );
  assert.deepEqual(await verifyFile(index, path, { threads: 0 }), r);

  await writeFile(path, img);
  await truncate(path, 10 * 65_536 + 5);
  const short = await verifyFile(index, path, { threads: 2, concurrency: 1 });
  assert.equal(short.ok, false);
  assert.equal(short.fileSize, 10 * 65_536 + 5);
  assert.equal(short.bad[0].chunk, 10);
  assert.equal(short.bad.length, index.count - 10, 'every chunk past the end is reported');
  assert.match(short.bad[0].reason, /file ends at byte 655365/);

  await writeFile(path, img);
  await appendFile(path, 'extra');
  const long = await verifyFile(index, path);
  assert.equal(long.ok, false);
  assert.equal(long.bad.length, 0);
  assert.equal(long.fileSize, img.length + 5);
});

test('chop refuses a file that does not match its index, naming chunk, offset and ID', async (t) => {
  const dir = await tmpDir(t, 'chop');
  const img = makeImage(1024 * 1024, 'mm');
  const index = fixedIndex(img);
  const changed = Buffer.from(img);
  changed[9 * 65_536 + 1] ^= 0x80;
  await writeFile(join(dir, 'img'), changed);
  const store = new LocalStore(join(dir, 's'));
  await assert.rejects(chopFile(index, join(dir, 'img'), store), (err: unknown) => {
    assert.ok(err instanceof ChunkVerifyError);
    assert.equal(err.chunkId, index.idHex(9));
    assert.match(err.message, /chunk #9 at offset 589824/);
    assert.ok(err.message.includes(join(dir, 'img')));
    return true;
  });
  // Whatever was stored before the failure is whole and verifies.
  let n = 0;
  for await (const hex of store.ids()) {
    assert.ok(await store.get({ id: Buffer.from(hex, 'hex') }));
    n++;
  }
  assert.ok(n <= 9);

  await writeFile(join(dir, 'img'), img.subarray(0, img.length - 1));
  await assert.rejects(chopFile(index, join(dir, 'img'), store), (err: unknown) => {
    assert.ok(err instanceof DeltadError);
    assert.match(err.message, /file is 1048575 bytes but the index describes 1048576 bytes/);
    return true;
  });
});

test('chop stops when aborted', async (t) => {
  const dir = await tmpDir(t, 'chop');
  const img = makeImage(1024 * 1024, 'ab');
  await writeFile(join(dir, 'img'), img);
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(
    chopFile(fixedIndex(img), join(dir, 'img'), new LocalStore(join(dir, 's')), { signal: ac.signal }),
    { name: 'AbortError' },
  );
});

test('verifyStore over HTTP: a served store verifies, a 404 is missing', { timeout: 20_000 }, async (t) => {
  const dir = await tmpDir(t, 'chop');
  const img = makeImage(1024 * 1024, 'http');
  await writeFile(join(dir, 'img'), img);
  const index = fixedIndex(img, 'sha256');
  const local = new LocalStore(join(dir, 'pub', 's.castr'), { digest: 'sha256' });
  await chopFile(index, join(dir, 'img'), local);
  await unlink(local.chunkPath(index.id(0)));
  const origin = await startOrigin({ root: join(dir, 'pub') });
  t.after(() => origin.close());
  const client = new HttpClient({ attempts: 2, retryBaseMs: 10, timeoutMs: 5000 });
  t.after(() => client.close());
  const v = await verifyStore(index, new HttpStore(`${origin.url}/s.castr`, { client, digest: 'sha256' }), {
    concurrency: 4,
  });
  assert.equal(v.ok, false);
  assert.deepEqual(
    v.missing.map((m) => m.chunk),
    [0],
  );
  assert.equal(v.corrupt.length, 0);
  assert.equal(v.checked, distinctIds(index));
  assert.equal(origin.log.filter((l) => l.method === 'GET').length, distinctIds(index));
});

for (const uncompressed of [false, true]) {
  test(`casync extract reproduces the file from a store made by chopFile (${uncompressed ? 'raw' : 'zstd'})`, {
    timeout: 60_000,
  }, async (t) => {
    if (!casyncAvailable(t)) return;
    const dir = await tmpDir(t, 'chop');
    const img = makeImage(4 * 1024 * 1024 + 4321, `cx${uncompressed}`);
    await writeFile(join(dir, 'img'), img);
    const index = fixedIndex(img);
    await writeFile(join(dir, 'img.caibx'), serializeIndex(index));
    const store = new LocalStore(join(dir, 'img.castr'), { uncompressed });
    await chopFile(index, join(dir, 'img'), store);
    execFileSync('casync', ['extract', `--store=${store.dir}`, join(dir, 'img.caibx'), join(dir, 'out')], {
      stdio: 'pipe',
      timeout: 50_000,
    });
    assert.ok((await readFile(join(dir, 'out'))).equals(img));
  });
}

test('verifyStore and chop accept the index and store made by casync make', { timeout: 60_000 }, async (t) => {
  if (!casyncAvailable(t)) return;
  const dir = await tmpDir(t, 'chop');
  const img = makeImage(4 * 1024 * 1024, 'cm');
  await writeFile(join(dir, 'img'), img);
  execFileSync('casync', ['make', `--store=${join(dir, 'c.castr')}`, join(dir, 'img.caibx'), join(dir, 'img')], {
    stdio: 'pipe',
    timeout: 50_000,
  });
  const index = await readIndexFile(join(dir, 'img.caibx'));
  const store = new LocalStore(join(dir, 'c.castr'), { digest: index.digest, maxChunkSize: index.params.max });
  const v = await verifyStore(index, store);
  assert.equal(v.ok, true);
  assert.equal(v.checked, distinctIds(index));
  assert.ok(v.checked > 10);
  const names = await readdir(join(dir, 'c.castr'));
  assert.ok(names.every((n) => /^[0-9a-f]{4}$/.test(n)));
  // Our chop agrees with casync's store chunk for chunk: nothing left to write.
  const r = await chopFile(index, join(dir, 'img'), store);
  assert.equal(r.written, 0);
  assert.equal(r.existing, v.checked);
  assert.equal((await verifyFile(index, join(dir, 'img'))).ok, true);
});

test('deltad chop and deltad verify (CLI): exit codes and JSON results', { timeout: 30_000 }, async (t) => {
  const dir = await tmpDir(t, 'chop');
  const img = makeImage(2 * 1024 * 1024, 'cli');
  await writeFile(join(dir, 'img'), img);
  const index = fixedIndex(img);
  await writeFile(join(dir, 'img.caibx'), serializeIndex(index));
  const cli = (...args: string[]) =>
    spawnSync(process.execPath, [join(REPO_ROOT, 'dist', 'daemon', 'cli.js'), ...args], {
      encoding: 'utf8',
      timeout: 20_000,
    });
  const chop = cli('chop', '--json', '--store', join(dir, 's.castr'), join(dir, 'img.caibx'), join(dir, 'img'));
  assert.equal(chop.status, 0, chop.stderr);
  assert.equal(JSON.parse(chop.stdout).written, distinctIds(index));

  const good = cli('verify', '--json', '--store', join(dir, 's.castr'), join(dir, 'img.caibx'), join(dir, 'img'));
  assert.equal(good.status, 0, good.stderr);
  assert.equal(JSON.parse(good.stdout).ok, true);

  await unlink(new LocalStore(join(dir, 's.castr')).chunkPath(index.id(1)));
  const bad = cli('verify', '--store', join(dir, 's.castr'), join(dir, 'img.caibx'));
  assert.equal(bad.status, 1);
  assert.match(bad.stdout, new RegExp(`missing chunk #1 \\(${index.idHex(1)}\\)`));

  assert.equal(cli('chop', join(dir, 'img.caibx'), join(dir, 'img')).status, 2, 'no --store is a usage error');
});
