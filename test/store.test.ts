// Chunk stores: casync's own chunk files, both local layouts, corrupt, truncated
// and oversized chunk files, atomic writes (a real full tmpfs), and the HTTP store
// against a real server on 127.0.0.1 with faults.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LocalStore } from '../lib/store/local-store.js';
import { HttpStore, normalizeStoreUrl } from '../lib/store/http-store.js';
import { openStore, openWritableStore } from '../lib/store/open-store.js';
import { compressChunk, decompressChunk } from '../lib/store/compression.js';
import { chunkId, toHex } from '../lib/format/digest.js';
import { ChunkVerifyError, DeltadError, OriginError, UsageError } from '../lib/errors.js';
import { HttpClient } from '../lib/fetch/http-client.js';
import { ChunkIndexBuilder } from '../lib/format/caibx.js';
import { StoreSource } from '../lib/assemble/remote-source.js';
import { BufferPool } from '../lib/util/buffer-pool.js';
import { loadVectors, storePath } from './helpers/vectors.js';
import { startOrigin } from './helpers/origin.js';
import { mountTinyTmpfs } from './helpers/tmpfs.js';
import { tmpDir } from './helpers/tmp.js';
import { seededBytes, textBytes } from './helpers/images.js';

/** A chunk of `n` bytes that compresses (so zstd frames have real blocks). */
const sampleChunk = (n: number, seed = 1): Buffer => textBytes(n, seed);

const ZSTD_MAGIC = '28b52ffd';

test("casync's kept chunk files decode to their size and ID (zstd, both digests)", async () => {
  const vectors = loadVectors().filter((v) => v.kept_chunk_files.length > 0 && !/gzip|xz/.test(v.vector));
  assert.ok(vectors.length >= 4, 'kept chunk files present');
  let n = 0;
  for (const v of vectors) {
    const store = new LocalStore(storePath(v), { digest: v.digest, maxChunkSize: v.chunk_size_max });
    for (const k of v.kept_chunk_files) {
      const stored = await readFile(store.chunkPath(k.id));
      assert.equal(stored.length, k.file_size);
      assert.equal(stored.subarray(0, 4).toString('hex'), ZSTD_MAGIC);
      const data = await store.get({ id: Buffer.from(k.id, 'hex'), size: k.size });
      assert.ok(data, `${v.vector} chunk ${k.index} present`);
      assert.equal(data.length, k.size);
      assert.equal(toHex(chunkId(v.digest, data)), k.id);
      // Without a size from the index, the store's max bounds the output.
      assert.equal((await store.get({ id: Buffer.from(k.id, 'hex') }))?.length, k.size);
      n++;
    }
  }
  assert.ok(n >= 8);
});

test('old casync stores: gzip chunks read, xz chunks give a clear error', async () => {
  const [gz] = loadVectors().filter((v) => v.vector === 'tiny-gzip');
  const [xz] = loadVectors().filter((v) => v.vector === 'tiny-xz');
  const gzStore = new LocalStore(storePath(gz));
  const k = gz.kept_chunk_files[0];
  assert.equal((await readFile(gzStore.chunkPath(k.id))).subarray(0, 2).toString('hex'), '1f8b');
  const data = await gzStore.get({ id: Buffer.from(k.id, 'hex'), size: k.size });
  assert.equal(data?.length, 1000);

  const xzStore = new LocalStore(storePath(xz));
  const kx = xz.kept_chunk_files[0];
  await assert.rejects(xzStore.get({ id: Buffer.from(kx.id, 'hex'), size: kx.size }), (err: unknown) => {
    assert.ok(err instanceof ChunkVerifyError);
    assert.match(err.message, /xz-compressed chunk not supported/);
    assert.ok(err.message.includes(kx.id));
    return true;
  });
});

for (const uncompressed of [false, true]) {
  test(`local store round trip (${uncompressed ? 'uncompressed raw files' : 'zstd .cacnk'})`, async (t) => {
    const dir = await tmpDir(t, 'store');
    const store = new LocalStore(join(dir, 'x.castr'), { uncompressed });
    const chunks = [
      sampleChunk(70_000, 1),
      sampleChunk(1, 2),
      seededBytes(50_000, 'store:incompressible'),
      sampleChunk(262_144, 3),
    ];
    for (const data of chunks) {
      const id = chunkId('sha512-256', data);
      assert.equal(await store.has(id), false);
      assert.equal(await store.get({ id, size: data.length }), null);
      assert.equal(await store.put(id, data), true);
      assert.equal(await store.put(id, data), false, 'second put is a no-op');
      assert.equal(await store.has(id), true);
      const hex = toHex(id);
      const name = join(dir, 'x.castr', hex.slice(0, 4), uncompressed ? hex : `${hex}.cacnk`);
      const stored = await readFile(name);
      if (uncompressed) assert.ok(stored.equals(data));
      else assert.equal(stored.subarray(0, 4).toString('hex'), ZSTD_MAGIC);
      assert.ok((await store.get({ id, size: data.length }))?.equals(data));
    }
    // Junk beside the chunks is not listed; temp files are gone.
    const prefix = toHex(chunkId('sha512-256', chunks[0])).slice(0, 4);
    await writeFile(join(dir, 'x.castr', prefix, 'README'), 'not a chunk');
    await writeFile(join(dir, 'x.castr', prefix, `${'f'.repeat(64)}.cacnk`), 'wrong prefix');
    await mkdir(join(dir, 'x.castr', 'zzzz'));
    const listed: string[] = [];
    for await (const hex of store.ids()) listed.push(hex);
    const expected = chunks.map((c) => toHex(chunkId('sha512-256', c))).sort();
    assert.deepEqual(listed.sort(), expected);
    for (const p of await readdir(join(dir, 'x.castr'))) {
      if (p === 'zzzz') continue;
      for (const name of await readdir(join(dir, 'x.castr', p)))
        assert.ok(!name.startsWith('.tmp'), `leftover ${name}`);
    }
    // The other variant reads the same directory: casync accepts both names.
    const other = new LocalStore(join(dir, 'x.castr'), { uncompressed: !uncompressed });
    assert.ok((await other.get({ id: chunkId('sha512-256', chunks[2]), size: 50_000 }))?.equals(chunks[2]));
  });
}

test('sha256 stores verify with the configured digest', async (t) => {
  const dir = await tmpDir(t, 'store');
  const data = sampleChunk(10_000);
  const id = chunkId('sha256', data);
  const store = new LocalStore(dir, { digest: 'sha256' });
  await store.put(id, data);
  assert.ok((await store.get({ id, size: data.length }))?.equals(data));
  // The same file read as a sha512-256 store does not verify.
  await assert.rejects(new LocalStore(dir).get({ id, size: data.length }), ChunkVerifyError);
});

/** Stores `data`'s chunk, then replaces its file with `bytes`; returns what get() throws. */
async function getAfterReplacing(
  dir: string,
  data: Buffer,
  bytes: (stored: Buffer) => Buffer,
  size = data.length,
): Promise<ChunkVerifyError> {
  const store = new LocalStore(dir);
  const id = chunkId('sha512-256', data);
  await store.put(id, data);
  const path = store.chunkPath(id);
  await writeFile(path, bytes(await readFile(path)));
  try {
    await store.get({ id, size });
  } catch (err) {
    assert.ok(err instanceof ChunkVerifyError, `expected ChunkVerifyError, got ${err}`);
    assert.ok(err.message.includes(toHex(id)), 'names the ID');
    assert.ok(err.message.includes(path), 'names the file');
    assert.equal(err.chunkId, toHex(id));
    return err;
  }
  assert.fail('get() accepted a bad chunk file');
}

test('corrupt chunk files are rejected naming the ID and the file', async (t) => {
  const dir = await tmpDir(t, 'store');
  const data = sampleChunk(100_000);
  // A valid frame of other content: decodes fine, wrong digest.
  let err = await getAfterReplacing(join(dir, 'a'), data, () =>
    compressChunk(Buffer.concat([data.subarray(1), Buffer.from('!')])),
  );
  assert.match(err.message, /does not match its ID/);
  // Flipped bits inside the compressed payload.
  err = await getAfterReplacing(join(dir, 'b'), seededBytes(20_000, 'store:replacement'), (s) => {
    const c = Buffer.from(s);
    c[c.length - 100] ^= 0xff;
    return c;
  });
  assert.match(err.message, /does not match its ID|corrupt zstd/);
  // Truncated .cacnk.
  err = await getAfterReplacing(join(dir, 'c'), data, (s) => s.subarray(0, s.length - 5));
  assert.match(err.message, /truncated zstd frame/);
  // Data after the frame, as casync rejects.
  err = await getAfterReplacing(join(dir, 'd'), data, (s) => Buffer.concat([s, compressChunk(Buffer.from('more'))]));
  assert.match(err.message, /trailing data after the zstd frame/);
  // Not a compressed file at all.
  err = await getAfterReplacing(join(dir, 'e'), data, () => Buffer.from('hello world, not zstd'));
  assert.match(err.message, /unknown format/);
  // Empty file.
  err = await getAfterReplacing(join(dir, 'f'), data, () => Buffer.alloc(0));
  assert.match(err.message, /unknown format/);
  // The index says another size.
  err = await getAfterReplacing(join(dir, 'g'), data, (s) => s, data.length + 1);
  assert.match(err.message, /has 100000 bytes, the index says 100001/);
});

test('decompression is bounded: a small file that inflates hugely is refused', async (t) => {
  const dir = await tmpDir(t, 'store');
  const bomb = compressChunk(Buffer.alloc(64 * 1024 * 1024));
  assert.ok(bomb.length < 10_000);
  assert.throws(() => decompressChunk(bomb, 262_144), /decompresses to more than 262144 bytes/);
  // Through a store: no size from the index, the store's max chunk size applies.
  const data = sampleChunk(1000);
  const store = new LocalStore(join(dir, 'h'), { maxChunkSize: 262_144 });
  const id = chunkId('sha512-256', data);
  await store.put(id, data);
  await writeFile(store.chunkPath(id), bomb);
  await assert.rejects(store.get({ id }), /decompresses to more than 262144 bytes/);
  // A stored file bigger than any chunk of the limit could compress to is not even read.
  await writeFile(store.chunkPath(id), Buffer.concat([bomb, Buffer.alloc(400_000)]));
  await assert.rejects(store.get({ id }), /more than a chunk of at most 262144 bytes can take/);
});

test('a failed write leaves neither a partial chunk nor a temp file', async (t) => {
  const dir = await tmpDir(t, 'store');
  const store = new LocalStore(dir);
  const data = sampleChunk(5000);
  const id = chunkId('sha512-256', data);
  // A directory squatting on the final name makes the rename fail.
  await mkdir(store.chunkPath(id), { recursive: true });
  await assert.rejects(store.put(id, data), (err: unknown) => {
    assert.ok(err instanceof DeltadError);
    assert.ok(err.message.includes(store.chunkPath(id)));
    return true;
  });
  const names = await readdir(join(dir, toHex(id).slice(0, 4)));
  assert.deepEqual(names, [`${toHex(id)}.cacnk`], 'only the squatting directory, no temp file');
});

test('disk full (real tmpfs): clear ENOSPC error, no partial chunk, no temp file', async (t) => {
  const mnt = await mountTinyTmpfs(t);
  if (!mnt) return;
  const store = new LocalStore(mnt, { uncompressed: true });
  let failure: unknown;
  for (let i = 0; i < 40 && !failure; i++) {
    const data = seededBytes(16 * 1024, `store:16k:${i}`);
    await store.put(chunkId('sha512-256', data), data).catch((err) => (failure = err));
  }
  assert.ok(failure instanceof DeltadError, 'the tmpfs filled up');
  assert.equal(failure.code, 'ERR_DELTAD_NO_SPACE');
  assert.match(failure.message, /no space left on device writing chunk/);
  // Every chunk that is listed is whole and verifies; no temp files are left.
  let whole = 0;
  for await (const hex of store.ids()) {
    const data = await store.get({ id: Buffer.from(hex, 'hex'), size: 16 * 1024 });
    assert.ok(data);
    whole++;
  }
  assert.ok(whole > 0);
  for (const p of await readdir(mnt)) {
    for (const name of await readdir(join(mnt, p))) assert.ok(!name.startsWith('.tmp'), `leftover ${name}`);
  }
});

test('openStore picks the store by scheme', async () => {
  assert.ok(openStore('http://127.0.0.1:1/store') instanceof HttpStore);
  assert.ok(openStore('https://example.invalid/s.castr/') instanceof HttpStore);
  const local = openStore('some/dir.castr');
  assert.ok(local instanceof LocalStore);
  assert.ok(local.location.endsWith('/some/dir.castr') && local.location.startsWith('/'));
  assert.equal(openStore('file:///var/lib/x.castr').location, '/var/lib/x.castr');
  assert.throws(() => openStore('s3://bucket/store'), UsageError);
  assert.throws(() => openStore(''), UsageError);
  assert.throws(() => openWritableStore('http://127.0.0.1:1/store'), /read-only/);
  assert.equal(normalizeStoreUrl('http://h/a/store.castr//?token=1;x'), 'http://h/a/store.castr');
  const s = new HttpStore('http://h/a/s.castr/');
  assert.equal(s.chunkUrl('ab'.repeat(32)), `http://h/a/s.castr/abab/${'ab'.repeat(32)}.cacnk`);
  // IDs never become paths of their own.
  assert.throws(() => s.chunkUrl('../../etc/passwd'), /invalid chunk id/);
  assert.throws(() => (local as LocalStore).chunkPath('../../etc/passwd'), /invalid chunk id/);
  assert.throws(() => (local as LocalStore).chunkPath('AB'.repeat(32)), /invalid chunk id/);
  await assert.rejects(local.get({ id: new Uint8Array(31) }), /invalid chunk id/);
  await s.close();
});

// ---- HTTP store against a real origin on 127.0.0.1 (test/helpers/origin.ts) ----

const FAST_RETRY = { attempts: 3, retryBaseMs: 10, timeoutMs: 5000 };

/** A local store with a few chunks, served over HTTP; returns chunks and their IDs. */
async function servedStore(
  t: { after: (fn: () => Promise<void>) => void },
  uncompressed = false,
  chunks = [sampleChunk(64 * 1024, 5), seededBytes(30_000, 'store:30k'), sampleChunk(3, 6)],
) {
  const dir = await tmpDir(t, 'store');
  const local = new LocalStore(join(dir, 'pub', 'img.castr'), { uncompressed });
  const ids = chunks.map((c) => chunkId('sha512-256', c));
  for (let i = 0; i < chunks.length; i++) await local.put(ids[i], chunks[i]);
  const origin = await startOrigin({ root: join(dir, 'pub') });
  t.after(() => origin.close());
  const client = new HttpClient(FAST_RETRY);
  t.after(() => client.close());
  const store = new HttpStore(`${origin.url}/img.castr/?x=1`, { client, uncompressed });
  /** The URL path of chunk i, as the origin logs it. */
  const pathOf = (i: number) => new URL(store.chunkUrl(ids[i])).pathname;
  return { origin, store, local, chunks, ids, pathOf };
}

test('HTTP store: GET verified chunks, HEAD for has(), 404 → null', { timeout: 20_000 }, async (t) => {
  for (const uncompressed of [false, true]) {
    const { origin, store, chunks, ids, pathOf } = await servedStore(t, uncompressed);
    for (let i = 0; i < chunks.length; i++) {
      assert.ok((await store.get({ id: ids[i], size: chunks[i].length }))?.equals(chunks[i]));
      assert.equal(await store.has(ids[i]), true);
    }
    const absent = chunkId('sha512-256', Buffer.from('absent'));
    assert.equal(await store.get({ id: absent, size: 6 }), null);
    assert.equal(await store.has(absent), false);
    const hex = toHex(ids[0]);
    assert.equal(pathOf(0), `/img.castr/${hex.slice(0, 4)}/${hex}${uncompressed ? '' : '.cacnk'}`);
    assert.equal(origin.log.filter((l) => l.method === 'GET')[0].path, pathOf(0));
    assert.deepEqual(
      origin.log.filter((l) => l.status === 404).map((l) => l.method),
      ['GET', 'HEAD'],
    );
  }
});

test('HTTP store: chunks that come in many reads, several at once, each decode to their own bytes', {
  timeout: 20_000,
}, async (t) => {
  // Incompressible: each .cacnk is ~the chunk's size, many socket reads, joined in the store's reused buffer.
  const big = [700_000, 300_000, 1_200_000, 500_000].map((n, k) => seededBytes(n, `store:big:${k}`));
  const { store, chunks, ids } = await servedStore(t, false, big);
  for (let round = 0; round < 2; round++) {
    const got = await Promise.all(chunks.map((c, i) => store.get({ id: ids[i], size: c.length })));
    for (let i = 0; i < chunks.length; i++) assert.ok(got[i]?.equals(chunks[i]), `round ${round}, chunk ${i}`);
  }
});

test('store source: chunks are decoded into buffers of the pool, reused once handed back', {
  timeout: 20_000,
}, async (t) => {
  const { store, chunks, ids } = await servedStore(t);
  const b = ChunkIndexBuilder.forDigest('sha512-256', { min: 1, avg: 64 * 1024, max: 256 * 1024 }, chunks.length);
  let end = 0;
  for (let i = 0; i < chunks.length; i++) b.add((end += chunks[i].length), ids[i]);
  const index = b.finish();
  const pool = new BufferPool();
  let taken = 0;
  const take = pool.take.bind(pool);
  pool.take = (n) => {
    taken++;
    return take(n);
  };
  const source = new StoreSource(index, [store], store.client, 1, undefined, pool);
  const got: Buffer[] = [];
  await source.fetch(
    [{ first: 0, count: chunks.length }],
    (i, data) => void (got[i] = data),
    AbortSignal.timeout(10_000),
  );
  // Decoded straight into them: one buffer per chunk, no copy made after decoding.
  assert.equal(taken, chunks.length);
  for (let i = 0; i < chunks.length; i++) {
    assert.ok(got[i].equals(chunks[i]), `chunk ${i}`);
    // The pool's: a buffer handed back is the next one of its size class.
    pool.give(got[i]);
    assert.equal(pool.take(chunks[i].length).buffer, got[i].buffer, `chunk ${i} in a pool buffer`);
  }
});

test('HTTP store: a 500 is retried, persistent 5xx and 4xx fail naming URL and status', {
  timeout: 20_000,
}, async (t) => {
  const { origin, store, chunks, ids, pathOf } = await servedStore(t);
  origin.fault({ path: pathOf(0), kind: 'status', status: 500 });
  origin.fault({ path: pathOf(1), kind: 'status', status: 503, times: Infinity });
  origin.fault({ path: pathOf(2), kind: 'status', status: 403, times: Infinity });
  const requests = (i: number, method = 'GET') => origin.log.filter((l) => l.path === pathOf(i) && l.method === method);

  assert.ok((await store.get({ id: ids[0], size: chunks[0].length }))?.equals(chunks[0]));
  assert.deepEqual(
    requests(0).map((l) => l.status),
    [500, 200],
  );

  await assert.rejects(store.get({ id: ids[1], size: chunks[1].length }), (err: unknown) => {
    assert.ok(err instanceof OriginError);
    assert.equal(err.status, 503);
    assert.ok(err.message.includes(store.chunkUrl(ids[1])));
    return true;
  });
  assert.equal(requests(1).length, FAST_RETRY.attempts, 'retried up to the limit');
  await assert.rejects(store.has(ids[1]), /HEAD .* HTTP 503/);

  await assert.rejects(store.get({ id: ids[2], size: chunks[2].length }), (err: unknown) => {
    assert.ok(err instanceof OriginError);
    assert.equal(err.status, 403);
    assert.ok(err.message.includes(store.chunkUrl(ids[2])));
    return true;
  });
  assert.equal(requests(2).length, 1, '4xx is not retried');
});

test('HTTP store: a lying server (wrong bytes, oversized body, cut body) is rejected', {
  timeout: 20_000,
}, async (t) => {
  const { origin, store, local, chunks, ids, pathOf } = await servedStore(t);
  origin.fault({ path: pathOf(0), kind: 'wrong-bytes' });
  await assert.rejects(store.get({ id: ids[0], size: chunks[0].length }), (err: unknown) => {
    assert.ok(err instanceof ChunkVerifyError);
    assert.equal(err.chunkId, toHex(ids[0]));
    assert.ok(err.message.includes(store.chunkUrl(ids[0])));
    return true;
  });
  // A 3-byte chunk cannot come in a 200 kB body: refused before reading it.
  await writeFile(local.chunkPath(ids[2]), seededBytes(200_000, 'store:oversized'));
  await assert.rejects(store.get({ id: ids[2], size: 3 }), /exceeds the \d+-byte limit/);
  // A body cut short is a transient error: retried, then the chunk arrives whole.
  origin.fault({ path: pathOf(1), kind: 'cut' });
  assert.ok((await store.get({ id: ids[1], size: chunks[1].length }))?.equals(chunks[1]));
  assert.deepEqual(
    origin.log.filter((l) => l.path === pathOf(1)).map((l) => l.fault ?? 'ok'),
    ['cut', 'ok'],
  );
});
