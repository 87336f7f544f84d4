// lib/util/fs-io.ts: short transfers are looped over, and a replaced file is
// either the old one or the new one (also after a crash), never written through
// a planted symlink, with errors about the path the caller gave.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtemp, open, readdir, readFile, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { FileHandle } from 'node:fs/promises';
import { FileError } from '../lib/errors.js';
import {
  createExclusive,
  readFully,
  renameInto,
  replaceFile,
  sweepStaleTemporaries,
  writeFileAtomic,
  writeFully,
} from '../lib/util/fs-io.js';
import { mountTinyTmpfs } from './helpers/tmpfs.js';
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

test('replaceFile: a symlink planted at a fixed temporary name is removed, never written through', async (t) => {
  const dir = await tmpDir(t, 'fsio');
  const path = join(dir, 'journal');
  const victim = join(dir, 'seed.img');
  await writeFile(victim, 'seed');
  await symlink(victim, join(dir, 'journal.tmp'));
  await writeFileAtomic(path, 'bitmap', { temp: 'journal.tmp', durable: false });
  assert.equal(await readFile(path, 'utf8'), 'bitmap');
  assert.equal(await readFile(victim, 'utf8'), 'seed');
  assert.deepEqual((await readdir(dir)).sort(), ['journal', 'seed.img']);
  // The two ends on their own refuse what is planted: a link at the new name, a rename that cannot be done.
  await symlink(victim, join(dir, 'fresh'));
  await assert.rejects(createExclusive(join(dir, 'fresh')), { code: 'EEXIST' });
  await assert.rejects(renameInto(join(dir, 'gone'), join(dir, 'target')), (err: FileError) => {
    assert.equal(err.code, 'ERR_DELTAD_FILE');
    assert.match(err.message, new RegExp(`^${join(dir, 'target')}: `), 'names the target, not the temporary file');
    return true;
  });
  // A store layout's prefix: random names a cleaner recognises.
  await writeFileAtomic(join(dir, 'chunk'), 'x', { temp: { prefix: '.tmp-cacnk-' } });
  await assert.rejects(writeFileAtomic(join(dir, 'bad'), 'x', { temp: 'sub/bad.tmp' }), /bad temporary file name/);
});

test('replaceFile: a crash before the rename leaves the old file whole; a fixed temporary name is reused', async (t) => {
  const dir = await tmpDir(t, 'fsio');
  const path = join(dir, 'index.caibx');
  await writeFile(path, 'old');
  const lib = new URL('../lib/util/fs-io.js', import.meta.url).href;
  // The child writes half of the new content, flushes it, and dies by SIGKILL before it could rename.
  const script = `
    const { replaceFile } = await import(${JSON.stringify(lib)});
    await replaceFile(${JSON.stringify(path)}, async (fh) => {
      await fh.write(Buffer.from('new, but only ha'));
      await fh.sync();
      process.kill(process.pid, 'SIGKILL');
      await new Promise(() => {});
    }, { temp: '.index.caibx.tmp' });`;
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(child.signal, 'SIGKILL', child.stderr);
  assert.equal(await readFile(path, 'utf8'), 'old', 'the old file is intact');
  assert.equal(await readFile(join(dir, '.index.caibx.tmp'), 'utf8'), 'new, but only ha', 'the torn temp file');
  await writeFileAtomic(path, 'new', { temp: '.index.caibx.tmp' });
  assert.equal(await readFile(path, 'utf8'), 'new');
  assert.deepEqual(await readdir(dir), ['index.caibx'], 'the leftover is gone');
});

test('writeFileAtomic on a full disk: an error naming the path, the old file intact, no temp file', async (t) => {
  const mnt = await mountTinyTmpfs(t, '64k');
  if (!mnt) return;
  const path = join(mnt, 'index.caibx');
  await writeFile(path, 'old');
  await assert.rejects(writeFileAtomic(path, Buffer.alloc(256 * 1024, 7)), (err: FileError) => {
    assert.ok(err instanceof FileError);
    assert.equal(err.code, 'ERR_DELTAD_NO_SPACE');
    assert.equal(err.errno, 'ENOSPC');
    assert.equal(err.message, `${path}: cannot write: no space left on device`);
    return true;
  });
  assert.equal(await readFile(path, 'utf8'), 'old');
  assert.deepEqual(await readdir(mnt), ['index.caibx']);
});

test('replaceFile: a rename that fails (the target is a mount point) names the path, leaves no temp file', async (t) => {
  // Not tmpDir(): the unmount must run before the directory is removed.
  const dir = await mkdtemp(join(tmpdir(), 'deltad-fsio-'));
  const path = join(dir, 'os.raw');
  const other = join(dir, 'other');
  await writeFile(path, 'old');
  await writeFile(other, 'mounted');
  let mounted = false;
  t.after(async () => {
    if (mounted) execFileSync('umount', [path]);
    await rm(dir, { recursive: true, force: true });
  });
  try {
    execFileSync('mount', ['--bind', other, path], { stdio: 'pipe' });
    mounted = true;
  } catch (err) {
    if (process.env.CI) throw new Error(`cannot bind-mount for the rename test: ${(err as Error).message}`);
    return t.skip('bind mounts need root');
  }
  await assert.rejects(writeFileAtomic(path, 'new'), (err: FileError) => {
    assert.ok(err instanceof FileError);
    assert.equal(err.errno, 'EBUSY');
    assert.equal(err.message, `${path}: cannot write: device or resource busy`);
    return true;
  });
  assert.equal(await readFile(path, 'utf8'), 'mounted');
  assert.deepEqual((await readdir(dir)).sort(), ['os.raw', 'other']);
});

test('a sweeping write removes temporary files a crash left over an hour ago, and nothing else', async (t) => {
  const dir = await tmpDir(t, 'fsio-sweep');
  const hourAgo = new Date(Date.now() - 2 * 3600_000);
  const stale = join(dir, '.entry.0123456789ab.tmp');
  const fresh = join(dir, '.entry.ba9876543210.tmp'); // maybe another writer's, still at work
  const other = join(dir, '.notes.tmp');
  for (const f of [stale, fresh, other]) await writeFile(f, 'x');
  await utimes(stale, hourAgo, hourAgo);
  await utimes(other, hourAgo, hourAgo);
  // A symlink of the temporary shape is not followed: the link goes, its target stays.
  const target = join(dir, 'kept.img');
  await writeFile(target, 'seed');
  const link = join(dir, '.link.aaaaaaaaaaaa.tmp');
  await symlink(target, link);
  await writeFileAtomic(join(dir, 'entry'), 'new', { durable: false, sweep: true });
  const left = (await readdir(dir)).sort();
  assert.deepEqual(left, ['.entry.ba9876543210.tmp', '.link.aaaaaaaaaaaa.tmp', '.notes.tmp', 'entry', 'kept.img']);
  assert.equal(await readFile(target, 'utf8'), 'seed');
  // Once per directory and process: a stale file that appears later stays until the next start.
  await writeFile(stale, 'x');
  await utimes(stale, hourAgo, hourAgo);
  await writeFileAtomic(join(dir, 'entry'), 'newer', { durable: false, sweep: true });
  assert.ok((await readdir(dir)).includes('.entry.0123456789ab.tmp'));
  assert.equal(await sweepStaleTemporaries(dir), 1);
});
