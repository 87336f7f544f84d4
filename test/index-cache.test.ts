// The seed index cache: built once, never stale (file changed, other chunking),
// corrupt entries rebuilt, adopted indexes served without chunking.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { IndexCache, type ChunkingKey } from '../lib/seed/index-cache.js';
import { indexBuffer } from '../lib/chunking/indexer.js';
import { serializeIndex } from '../lib/format/caibx.js';
import { tmpDir } from './helpers/tmp.js';
import { seededBytes } from './helpers/images.js';

const KEY: ChunkingKey = { params: { min: 4096, avg: 16384, max: 65536 }, digest: 'sha512-256' };

test('index cache: hit, stale on change, other chunking, corrupt entry, adopt', async (t) => {
  const dir = await tmpDir(t, 'index-cache');
  const cache = new IndexCache(join(dir, 'cache'));
  const file = join(dir, 'seed.img');
  await writeFile(file, seededBytes(300_000, 'index-cache:seed'));
  let builds = 0;
  const build = async (path: string, key: ChunkingKey) => {
    builds++;
    return indexBuffer(await readFile(path), { params: key.params, digest: key.digest });
  };
  const a = await cache.getOrBuild(file, KEY, build);
  const b = await cache.getOrBuild(file, KEY, build);
  assert.equal(builds, 1, 'second call served from the cache');
  assert.ok(serializeIndex(a).equals(serializeIndex(b)));

  // Other parameters or digest: another entry, built anew.
  await cache.getOrBuild(file, { ...KEY, digest: 'sha256' }, build);
  await cache.getOrBuild(file, { ...KEY, params: { min: 8192, avg: 32768, max: 131072 } }, build);
  assert.equal(builds, 3);

  // The file changes (same size, new mtime): the old entry is not served.
  await writeFile(file, seededBytes(300_000, 'index-cache:seed changed'));
  await utimes(file, new Date(), new Date(Date.now() + 5000));
  const c = await cache.getOrBuild(file, KEY, build);
  assert.equal(builds, 4);
  assert.ok(!serializeIndex(c).equals(serializeIndex(a)));

  // A corrupt entry is ignored and rebuilt.
  const entries = await readdir(cache.dir);
  for (const e of entries) await writeFile(join(cache.dir, e), 'garbage');
  await cache.getOrBuild(file, KEY, build);
  assert.equal(builds, 5);
  assert.ok(
    (await readdir(cache.dir)).every((e) => e.endsWith('.caibx')),
    'no temp files left behind',
  );

  // adopt: a known index is served without chunking; a wrong-size index is refused.
  const other = join(dir, 'new.img');
  const bytes = seededBytes(200_000, 'index-cache:new');
  await writeFile(other, bytes);
  const idx = indexBuffer(bytes, { params: KEY.params, digest: KEY.digest });
  await cache.adopt(other, idx);
  const got = await cache.getOrBuild(other, KEY, build);
  assert.equal(builds, 5);
  assert.ok(serializeIndex(got).equals(serializeIndex(idx)));
  await assert.rejects(cache.adopt(file, idx), /cannot adopt an index of 200000 bytes for a file of 300000 bytes/);
});
