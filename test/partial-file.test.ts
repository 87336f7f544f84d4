// The extract's partial file and resume journal on their own: what they write
// beside the output must never reach another file through a planted symlink.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { link, lstat, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { indexBuffer } from '../lib/chunking/indexer.js';
import { PartialFile, partialPaths } from '../lib/assemble/partial-file.js';
import { tmpDir } from './helpers/tmp.js';
import { seededBytes } from './helpers/images.js';

test("partial file: a symlink at the journal's temp path is replaced, the file it points to (a seed) is untouched", async (t) => {
  const dir = await tmpDir(t, 'partial');
  const data = seededBytes(256 * 1024, 'partial');
  const index = indexBuffer(data, {
    params: { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 },
    digest: 'sha512-256',
  });
  const seed = join(dir, 'seed.img');
  const seedBytes = Buffer.from('the previous image, which must survive\n');
  await writeFile(seed, seedBytes);
  const out = join(dir, 'out.img');
  const { journal } = partialPaths(out);
  await symlink(seed, `${journal}.tmp`);

  const { file } = await PartialFile.open(out, index, true);
  await file.put(0, 1, data.subarray(0, index.chunkSize(0)));
  await file.keep();
  assert.ok((await readFile(seed)).equals(seedBytes), 'the seed behind the symlink is unchanged');
  assert.ok((await lstat(journal)).isFile(), 'the journal was still written, as a file of its own');
});

test('partial file: a hard link to another file (a seed) at the partial path is never written through, fresh or resumed', async (t) => {
  const dir = await tmpDir(t, 'partial');
  const data = seededBytes(256 * 1024, 'partial');
  const index = indexBuffer(data, {
    params: { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 },
    digest: 'sha512-256',
  });
  assert.ok(index.count > 1);
  const out = join(dir, 'out.img');
  const { partial } = partialPaths(out);
  // A journal for this target, as an interrupted run leaves it.
  const first = await PartialFile.open(out, index, true);
  await first.file.put(0, 1, data.subarray(0, index.chunkSize(0)));
  await first.file.keep();
  // The partial path now names a seed of the same size (hard link).
  const seed = join(dir, 'seed.img');
  const seedBytes = Buffer.alloc(data.length, 0x5a);
  await writeFile(seed, seedBytes);
  await rm(partial);
  await link(seed, partial);
  for (const resume of [true, false]) {
    const { file } = await PartialFile.open(out, index, resume);
    await file.put(1, 1, data.subarray(index.start(1), index.end(1)));
    await file.discard();
    assert.ok((await readFile(seed)).equals(seedBytes), `the seed is unchanged (resume ${resume})`);
    await link(seed, partial).catch(() => {});
  }
});
