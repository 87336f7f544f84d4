// The fleet proxy's chunk cache: casync layout on disk, LRU size limit,
// corrupt files healed, full disks survived (injected ENOSPC and a real tiny
// tmpfs), single-flight fetches, wrong upstream bytes never cached.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readdir, writeFile, readFile, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { ChunkCache } from '../lib/fleet/chunk-cache.js';
import { chunkId, toHex } from '../lib/format/digest.js';
import { ChunkVerifyError } from '../lib/errors.js';
import { decompressChunk } from '../lib/store/compression.js';
import { mountTinyTmpfs } from './helpers/tmpfs.js';
import { tmpDir } from './helpers/tmp.js';
import { seededBytes } from './helpers/images.js';

/** A test body run with a fresh directory, removed after the test. */
function withDir(fn: (dir: string) => Promise<void>): (t: TestContext) => Promise<void> {
  return async (t) => fn(await tmpDir(t, 'cache'));
}

let chunksMade = 0;
/** A new pseudo-random (incompressible) chunk and its ID. */
function makeChunk(size: number): { id: Buffer; data: Buffer; hex: string } {
  const data = seededBytes(size, `cache-chunk:${++chunksMade}`);
  const id = chunkId('sha512-256', data);
  return { id, data, hex: toHex(id) };
}

/** Every file under dir, relative. */
async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true }))
    if (e.isFile()) out.push(join(e.parentPath, e.name).slice(dir.length + 1));
  return out.sort();
}

test(
  'put/get: casync store layout, zstd files, verified round trip',
  withDir(async (dir) => {
    const cache = await ChunkCache.open(dir, { maxBytes: 1 << 20 });
    const c = makeChunk(5000);
    assert.equal(await cache.get({ id: c.id, size: 5000 }), null);
    assert.equal(await cache.put(c.id, c.data), true);
    assert.equal(await cache.put(c.id, c.data), false, 'second put is a no-op');
    assert.deepEqual(await listFiles(dir), [`${c.hex.slice(0, 4)}/${c.hex}.cacnk`]);
    const onDisk = await readFile(join(dir, c.hex.slice(0, 4), `${c.hex}.cacnk`));
    assert.ok(decompressChunk(onDisk, 5000).equals(c.data));
    assert.ok((await cache.get({ id: c.id, size: 5000 }))!.equals(c.data));
    const s = cache.stats;
    assert.equal(s.entries, 1);
    assert.equal(s.bytes, onDisk.length);
    assert.equal(s.hits, 1);
    assert.equal(s.misses, 1);
  }),
);

test(
  'LRU: the least recently used chunks go first when over the limit',
  withDir(async (dir) => {
    const chunks = Array.from({ length: 5 }, () => makeChunk(10_000));
    // Each compressed random chunk is a little over 10 000 bytes: room for 3.
    const cache = await ChunkCache.open(dir, { maxBytes: 3 * 10_100 });
    for (const c of chunks.slice(0, 3)) assert.ok(await cache.put(c.id, c.data));
    assert.ok(await cache.get({ id: chunks[0].id })); // 0 becomes most recent
    await cache.put(chunks[3].id, chunks[3].data); // evicts 1
    await cache.put(chunks[4].id, chunks[4].data); // evicts 2
    const present = chunks.map((c) => cache.contains(c.hex));
    assert.deepEqual(present, [true, false, false, true, true]);
    assert.equal(cache.stats.evictions, 2);
    assert.ok(cache.stats.bytes <= cache.maxBytes);
    assert.equal((await listFiles(dir)).length, 3);
  }),
);

test(
  'reopen: rebuilds the LRU from disk by mtime, removes stale temp files, ignores foreign files',
  withDir(async (dir) => {
    const chunks = Array.from({ length: 3 }, () => makeChunk(10_000));
    const first = await ChunkCache.open(dir, { maxBytes: 1 << 20 });
    for (const c of chunks) await first.put(c.id, c.data);
    // Make chunk 2 the oldest on disk, then leave a torn temp file and a stray file.
    const old = new Date(Date.now() - 3600_000);
    await utimes(join(dir, chunks[2].hex.slice(0, 4), `${chunks[2].hex}.cacnk`), old, old);
    await writeFile(join(dir, chunks[0].hex.slice(0, 4), `.tmp-${chunks[0].hex}-dead`), 'torn');
    await mkdir(join(dir, 'zz'));
    await writeFile(join(dir, 'zz', 'notes.txt'), 'x');
    const second = await ChunkCache.open(dir, { maxBytes: 2 * 10_100 });
    assert.deepEqual(
      chunks.map((c) => second.contains(c.hex)),
      [true, true, false],
      'oldest evicted to fit the new limit',
    );
    const files = await listFiles(dir);
    assert.ok(!files.some((f) => f.includes('.tmp-')), 'temp file removed');
    assert.ok(files.includes('zz/notes.txt'), 'foreign files left alone');
  }),
);

test(
  'a corrupt or truncated cache file is a miss and is deleted, never returned',
  withDir(async (dir) => {
    const cache = await ChunkCache.open(dir, { maxBytes: 1 << 20 });
    const a = makeChunk(4096);
    const b = makeChunk(4096);
    await cache.put(a.id, a.data);
    await cache.put(b.id, b.data);
    const pa = join(dir, a.hex.slice(0, 4), `${a.hex}.cacnk`);
    const pb = join(dir, b.hex.slice(0, 4), `${b.hex}.cacnk`);
    const full = await readFile(pa);
    await writeFile(pa, full.subarray(0, full.length - 7)); // truncated
    await writeFile(pb, await readFile(pa)); // valid zstd, wrong content
    assert.equal(await cache.get({ id: a.id, size: 4096 }), null);
    assert.equal(await cache.get({ id: b.id, size: 4096 }), null);
    assert.equal(cache.stats.discarded, 2);
    assert.equal(cache.contains(a.hex) || cache.contains(b.hex), false);
    assert.deepEqual(await listFiles(dir), []);
  }),
);

test(
  'disk full (injected ENOSPC): put fails softly, leaves no file, getOrFetch still serves',
  withDir(async (dir) => {
    let failing = true;
    const cache = await ChunkCache.open(dir, {
      maxBytes: 1 << 20,
      writeBackoffMs: 50,
      writeFile: async (fh, data) => {
        if (failing) {
          await fh.write(data.subarray(0, 100)); // a torn partial write, then the error
          throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
        }
        await fh.writeFile(data);
      },
    });
    const c = makeChunk(8000);
    assert.equal(await cache.put(c.id, c.data), false);
    assert.deepEqual(await listFiles(dir), [], 'no partial file left behind');
    assert.equal(cache.stats.writeErrors, 1);
    assert.equal(cache.stats.writesSuspended, true);
    assert.match(cache.stats.lastWriteError ?? '', /ENOSPC/);
    const got = await cache.getOrFetch({ id: c.id, size: 8000 }, async () => ({ data: c.data }));
    assert.ok(got!.equals(c.data), 'served uncached');
    assert.equal(cache.contains(c.hex), false);
    // Space comes back: after the backoff the cache writes again.
    failing = false;
    await new Promise((r) => setTimeout(r, 60));
    assert.equal(await cache.put(c.id, c.data), true);
    assert.ok((await cache.get({ id: c.id }))!.equals(c.data));
  }),
);

test('disk full (real tmpfs of 64 KiB): serving continues, every cached chunk is whole', async (t) => {
  const mnt = await mountTinyTmpfs(t);
  if (!mnt) return;
  const cache = await ChunkCache.open(mnt, { maxBytes: 10 << 20, writeBackoffMs: 0 });
  const chunks = Array.from({ length: 12 }, () => makeChunk(16_000));
  for (const c of chunks) {
    const got = await cache.getOrFetch({ id: c.id, size: c.data.length }, async () => ({ data: c.data }));
    assert.ok(got!.equals(c.data));
  }
  assert.ok(cache.stats.writeErrors > 0, 'the tmpfs filled up');
  assert.ok(cache.stats.entries > 0, 'some chunks were cached');
  // Whatever is in the cache reads back whole and verified.
  for (const c of chunks) {
    if (!cache.contains(c.hex)) continue;
    assert.ok((await cache.get({ id: c.id, size: c.data.length }))!.equals(c.data));
  }
  assert.equal(cache.stats.discarded, 0);
  assert.ok(!(await listFiles(mnt)).some((f) => f.includes('.tmp-')), 'no temp files left');
});

test(
  'single-flight: concurrent misses of one chunk run one fetch',
  withDir(async (dir) => {
    const cache = await ChunkCache.open(dir, { maxBytes: 1 << 20 });
    const c = makeChunk(3000);
    let calls = 0;
    const fetch = async () => {
      calls++;
      await new Promise((r) => setTimeout(r, 30));
      return { data: c.data };
    };
    const results = await Promise.all(
      Array.from({ length: 10 }, () => cache.getOrFetch({ id: c.id, size: 3000 }, fetch)),
    );
    assert.equal(calls, 1);
    for (const r of results) assert.ok(r!.equals(c.data));
    assert.equal(cache.stats.fetches, 1);
    assert.equal(cache.stats.joined, 9);
    // Later callers hit the cache without fetching.
    assert.ok(await cache.getOrFetch({ id: c.id }, fetch));
    assert.equal(calls, 1);
  }),
);

test(
  'wrong bytes from the fetch: every waiter gets ChunkVerifyError, nothing cached, next call refetches',
  withDir(async (dir) => {
    const cache = await ChunkCache.open(dir, { maxBytes: 1 << 20 });
    const c = makeChunk(3000);
    const evil = Buffer.from(c.data);
    evil[100] ^= 1;
    let calls = 0;
    const bad = async () => {
      calls++;
      await new Promise((r) => setTimeout(r, 10));
      return { data: evil };
    };
    const settled = await Promise.allSettled(
      [1, 2, 3].map(() => cache.getOrFetch({ id: c.id, size: 3000 }, bad, 'http://upstream/x')),
    );
    assert.equal(calls, 1);
    for (const s of settled) {
      assert.equal(s.status, 'rejected');
      assert.ok((s as PromiseRejectedResult).reason instanceof ChunkVerifyError);
      assert.match(String((s as PromiseRejectedResult).reason.message), /does not match.*http:\/\/upstream\/x/);
    }
    assert.equal(cache.contains(c.hex), false);
    assert.deepEqual(await listFiles(dir), []);
    const good = await cache.getOrFetch({ id: c.id, size: 3000 }, async () => ({ data: c.data }));
    assert.ok(good!.equals(c.data));
    // A fetch that reports "missing" is not cached either.
    const m = makeChunk(100);
    assert.equal(await cache.getOrFetch({ id: m.id }, async () => null), null);
  }),
);

test(
  'a batch with a wrong chunk first still yields every good chunk, then throws the wrong one',
  withDir(async (dir) => {
    const cache = await ChunkCache.open(dir, { maxBytes: 1 << 20 });
    const chunks = Array.from({ length: 6 }, () => makeChunk(2000));
    const evil = Buffer.from(chunks[0].data);
    evil[10] ^= 1;
    // The upstream answers the wrong chunk at once, the others a little later.
    async function* fetchMany(reqs: readonly unknown[]) {
      yield { index: 0, data: evil };
      await new Promise((r) => setTimeout(r, 20));
      for (let i = 1; i < reqs.length; i++) yield { index: i, data: chunks[i].data };
    }
    const got: number[] = [];
    const reqs = chunks.map((c) => ({ id: c.id, size: 2000 }));
    await assert.rejects(
      (async () => {
        for await (const { index, data } of cache.getOrFetchMany(reqs, fetchMany)) {
          assert.ok(data.equals(chunks[index].data));
          got.push(index);
        }
      })(),
      ChunkVerifyError,
    );
    assert.deepEqual(got.sort(), [1, 2, 3, 4, 5], 'the good chunks were all yielded before the error');
    assert.equal(cache.contains(chunks[0].hex), false);
  }),
);
