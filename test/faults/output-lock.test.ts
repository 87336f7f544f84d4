// Fault class: two writers of one output. A second `deltad extract` to the
// same OUT while the first runs is refused before it touches anything; a lock
// left by a dead run is taken over; a partial file swapped behind the run's
// back is never renamed into place.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, readdir, rename, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Origin } from '../helpers/origin.js';
import { type DeltaFixture, withDeltaFixture } from '../helpers/delta-images.js';
import { PartialFile, partialPaths } from '../../lib/assemble/partial-file.js';
import { OutputReplacedError } from '../../lib/errors.js';
import { deltad } from './run-cli.js';

let fx: DeltaFixture;
let origin: Origin;
let casync = true;
withDeltaFixture(2 * 1024 * 1024, (s) => {
  casync = s !== null;
  if (s) ({ fx, origin } = s);
});

const PREVIOUS = Buffer.from('the previous image\n');

test('two extracts to one OUT: the second is refused at once, the first writes the right bytes', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const dir = join(fx.dir, 'two-writers');
  await mkdir(dir);
  const out = join(dir, 'out.img');
  await writeFile(out, PREVIOUS);
  const args = [
    'extract',
    '--seed',
    fx.v1Path,
    '--range-url',
    `${origin.url}/v2.img`,
    '--mode',
    'range',
    fx.indexPath,
    out,
  ];
  // A slow origin keeps the first run busy while the second starts.
  origin.fault({ path: '/v2.img', rangedOnly: true, kind: 'delay', delayMs: 1_500, times: Infinity });
  t.after(() => origin.clearFaults());
  const env = { XDG_CACHE_HOME: join(fx.dir, 'xdg') };
  const first = deltad(args, { env });
  const { lock } = partialPaths(out);
  for (let k = 0; k < 200 && !existsSync(lock); k++) await sleep(25);
  assert.ok(existsSync(lock), 'the first run holds the lock');
  const second = await deltad(args, { env });
  assert.equal(second.code, 1, second.stderr);
  assert.match(second.stderr, /another deltad run \(pid \d+\) is writing it/);
  const one = await first;
  assert.equal(one.code, 0, one.stderr);
  assert.ok((await readFile(out)).equals(fx.v2), "OUT holds the first run's verified image");
  assert.deepEqual(await readdir(dir), ['out.img'], 'no lock, partial or journal left behind');
});

test('a lock left by a dead run is taken over', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const dir = join(fx.dir, 'stale-lock');
  await mkdir(dir);
  const out = join(dir, 'out.img');
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  await writeFile(partialPaths(out).lock, `${dead.stdout} 12345\n`);
  const r = await deltad(['extract', '--seed', fx.v1Path, '--range-url', `${origin.url}/v2.img`, fx.indexPath, out], {
    env: { XDG_CACHE_HOME: join(fx.dir, 'xdg') },
  });
  assert.equal(r.code, 0, r.stderr);
  assert.ok((await readFile(out)).equals(fx.v2));
  assert.deepEqual(await readdir(dir), ['out.img']);
});

test('a partial file replaced before the rename is not renamed over OUT', async () => {
  if (!casync) return;
  const dir = join(fx.dir, 'swapped');
  await mkdir(dir);
  const out = join(dir, 'out.img');
  await writeFile(out, PREVIOUS);
  const { file } = await PartialFile.open(out, fx.index, false);
  for (let i = 0; i < fx.index.count; i++) await file.put(i, 1, fx.v2.subarray(fx.index.start(i), fx.index.end(i)));
  // Another process puts its own file at the partial path.
  const intruder = join(dir, 'intruder');
  await writeFile(intruder, 'not the verified image');
  await rename(intruder, partialPaths(out).partial);
  await assert.rejects(file.commit(0o644), OutputReplacedError);
  assert.ok((await readFile(out)).equals(PREVIOUS), 'OUT is untouched');
  assert.ok(!existsSync(partialPaths(out).lock), 'the lock is released');
});
