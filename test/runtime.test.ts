// The runtime and the one version string: npm scripts run on the Node 24 that
// package.json pins (node_modules/.bin/node), and `deltad --version` is
// package.json's version.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from './helpers/repo.js';
import { VERSION } from '../lib/util/version.js';

const run = promisify(execFile);
const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
  version: string;
  engines: { node: string };
  optionalDependencies: Record<string, string>;
};

test('the tests run on the pinned Node 24 runtime', () => {
  const pinned = pkg.optionalDependencies[`node-${process.platform}-${process.arch}`];
  assert.ok(pinned, `package.json pins no runtime for ${process.platform}-${process.arch}`);
  assert.equal(process.version, `v${pinned}`, `running on ${process.execPath}`);
  assert.equal(pkg.engines.node, `${pinned.split('.')[0]}.x`);
  assert.equal(process.versions.node.split('.')[0], '24');
});

test("deltad --version prints package.json's version", async () => {
  assert.equal(VERSION, pkg.version);
  const cli = join(REPO_ROOT, 'dist', 'daemon', 'cli.js');
  const { stdout } = await run(process.execPath, [cli, '--version'], { timeout: 20_000 });
  assert.equal(stdout, `deltad ${pkg.version}\n`);
  const short = await run(process.execPath, [cli, '-V'], { timeout: 20_000 });
  assert.equal(short.stdout, stdout);
});

test("a machine's older Node is told what to run instead of failing on a missing zstd export", async (t) => {
  // The machine's own node, if it is older than deltad needs (Debian 12 machines have Node 20 here).
  const system = ['/usr/bin/node', '/usr/local/bin/node'].find((p) => {
    try {
      return readFileSync(p).length > 0;
    } catch {
      return false;
    }
  });
  if (!system) return t.skip('no system node');
  const version = (await run(system, ['--version'])).stdout.trim();
  const [major, minor] = version.slice(1).split('.').map(Number);
  if (major > 22 || (major === 22 && minor >= 15)) return t.skip(`${system} is ${version}, new enough`);
  const cli = join(REPO_ROOT, 'dist', 'daemon', 'cli.js');
  const r = await run(system, [cli, 'info', 'x.caibx']).then(
    () => ({ code: 0, stderr: '' }),
    (err: { code: number; stderr: string }) => err,
  );
  assert.equal(r.code, 1);
  assert.match(r.stderr, /needs Node 24 .*npm run deltad -- COMMAND/);
  assert.doesNotMatch(r.stderr, /SyntaxError|zstdCompressSync/);
});
