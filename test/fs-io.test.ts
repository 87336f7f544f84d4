// lib/util/fs-io.ts: short transfers are looped over, and a replaced file is
// either the old one or the new one, never written through a planted symlink.
import assert from 'node:assert/strict';
import { open, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { FileHandle } from 'node:fs/promises';
import { readFully, replaceFile, writeFileAtomic, writeFully } from '../lib/util/fs-io.js';
import { tmpDir } from './helpers/tmp.js';

test('readFully and writeFully loop over short reads and writes, and stop at end of file', async (t) => {
  const dir = await tmpDir(t, 'fsio');
  const path = join(dir, 'f');
  const data = Buffer.from(Array.from({ length: 10_000 }, (_, i) => i % 251));
  const fh = await open(path, 'w+');
  // A handle that moves at most 7 bytes per call, as a pipe or an interrupted call may.
  const stingy = {
    write: (b: Uint8Array, off: number, len: number, pos: number) => fh.write(b, off, Math.min(len, 7), pos),
    read: (b: Uint8Array, off: number, len: number, pos: number) => fh.read(b, off, Math.min(len, 7), pos),
  } as unknown as FileHandle;
  await writeFully(stingy, data, 100);
  const back = Buffer.alloc(20_000);
  assert.equal(await readFully(stingy, back, 100), data.length, 'stops at end of file');
  assert.ok(back.subarray(0, data.length).equals(data));
  await fh.close();
});

test('replaceFile: the new content or the old, never a symlink followed, no temp file left', async (t) => {
  const dir = await tmpDir(t, 'fsio');
  const path = join(dir, 'index.caibx');
  const victim = join(dir, 'seed.img');
  await writeFile(victim, 'seed');
  await writeFile(path, 'old');
  // A failing writer leaves the old file and no temp file.
  await assert.rejects(
    replaceFile(path, async (fh) => {
      await fh.writeFile('half');
      throw new Error('disk on fire');
    }),
    /disk on fire/,
  );
  assert.equal(await readFile(path, 'utf8'), 'old');
  assert.deepEqual((await readdir(dir)).sort(), ['index.caibx', 'seed.img']);
  // A symlink at the target is replaced, never written through.
  await rm(path);
  await symlink(victim, path);
  await writeFileAtomic(path, 'new');
  assert.equal(await readFile(path, 'utf8'), 'new');
  assert.equal(await readFile(victim, 'utf8'), 'seed', 'the file the symlink pointed to is untouched');
  assert.deepEqual((await readdir(dir)).sort(), ['index.caibx', 'seed.img']);
});
