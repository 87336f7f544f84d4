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
