// The extract's partial file and resume journal on their own: what they write
// beside the output must never reach another file through a planted symlink.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lstat, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { indexBuffer } from '../lib/indexer.js';
import { PartialFile, partialPaths } from '../lib/partial-file.js';

test('partial file: a symlink at the journal\'s temp path is replaced, the file it points to (a seed) is untouched', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'deltad-partial-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const data = Buffer.alloc(256 * 1024);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7919) >>> 5;
  const index = indexBuffer(data, { params: { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 }, digest: 'sha512-256' });
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
