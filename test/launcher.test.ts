// bin/deltad, the one launcher (npm bin, npm run deltad, /usr/bin/deltad in the release artifacts, the container):
// it runs dist/daemon/cli.js with the V8 and malloc settings deltad's memory bounds rely on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from './helpers/repo.js';

const run = promisify(execFile);
const LAUNCHER = join(REPO_ROOT, 'bin', 'deltad');
const { version } = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };

/** A `node` that prints what it was started with instead of running anything. */
function fakeNode(path: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, '#!/bin/sh\necho "node=$0"; for a in "$@"; do echo "arg=$a"; done\nenv | grep ^MALLOC_\n');
  chmodSync(path, 0o755);
}

test('bin/deltad runs deltad on the node on PATH', async () => {
  const env = { ...process.env, PATH: `${dirname(process.execPath)}:/usr/bin:/bin` };
  const { stdout } = await run(LAUNCHER, ['--version'], { env, timeout: 20_000 });
  assert.equal(stdout, `deltad ${version}\n`);
});

test('bin/deltad passes the young-generation cap, memory saver mode, the malloc settings and every argument', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'deltad-launcher-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  fakeNode(join(dir, 'path', 'node'));
  const env = { PATH: `${join(dir, 'path')}:/usr/bin:/bin` };
  const { stdout } = await run(LAUNCHER, ['serve', '--listen', '127.0.0.1:0', 'a b'], { env, timeout: 20_000 });
  const lines = stdout.trim().split('\n');
  assert.deepEqual(
    lines.filter((l) => l.startsWith('arg=')),
    ['arg=--max-semi-space-size=1', 'arg=--memory-saver-mode', `arg=${REPO_ROOT}/bin/../dist/daemon/cli.js`].concat(
      ['serve', '--listen', '127.0.0.1:0', 'a b'].map((a) => `arg=${a}`),
    ),
  );
  assert.ok(lines.includes('MALLOC_ARENA_MAX=2') && lines.includes('MALLOC_MMAP_THRESHOLD_=131072'), stdout);
  // A setting the environment already has wins.
  const own = await run(LAUNCHER, ['--version'], { env: { ...env, MALLOC_ARENA_MAX: '4' }, timeout: 20_000 });
  assert.ok(own.stdout.includes('MALLOC_ARENA_MAX=4\n'), own.stdout);
});

test("in the release layout, bin/deltad runs the runtime beside it (node/bin/node), not the host's", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'deltad-launcher-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'bin'));
  copyFileSync(LAUNCHER, join(dir, 'bin', 'deltad'));
  chmodSync(join(dir, 'bin', 'deltad'), 0o755);
  fakeNode(join(dir, 'node', 'bin', 'node'));
  // Started through a symlink, as /usr/bin/deltad -> ../lib/deltad/bin/deltad.
  mkdirSync(join(dir, 'usr-bin'));
  symlinkSync(join(dir, 'bin', 'deltad'), join(dir, 'usr-bin', 'deltad'));
  const { stdout } = await run(join(dir, 'usr-bin', 'deltad'), ['--version'], {
    env: { PATH: '/usr/bin:/bin' },
    timeout: 20_000,
  });
  assert.ok(stdout.startsWith(`node=${dir}/bin/../node/bin/node\n`), stdout);
  assert.ok(stdout.includes(`arg=${dir}/bin/../dist/daemon/cli.js\n`), stdout);
});
