// Fault class: seeds that are not plain readable files. A FIFO (open(2) would
// wait for a writer forever), a seed the user may not read, and a seed that the
// sidecar found as a file but that became a FIFO before it was opened: each is
// left out with a warning, and the extract completes from the other sources.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmod, copyFile, mkdir, readFile, rename, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Origin } from '../helpers/origin.js';
import { type DeltaFixture, withDeltaFixture } from '../helpers/delta-images.js';
import { SeedCatalog } from '../../daemon/seeds.js';
import { silentLogger } from '../../daemon/log.js';
import { extractToFile } from '../../lib/delta/extract.js';
import { indexFile } from '../../lib/chunking/indexer.js';
import { UnusableInputError } from '../../lib/errors.js';
import { TEST_PARAMS } from '../helpers/delta-images.js';
import { deltad } from './run-cli.js';
import { CLI } from '../helpers/cli.js';
import { tmpDir } from '../helpers/tmp.js';

/** Whether the user nobody can read `path` (every directory above it must let it through). */
function nobodyReads(path: string): boolean {
  try {
    execFileSync('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', 'test', '-r', path], {
      stdio: 'ignore',
    });
    return true;
  } catch {
    return false;
  }
}

let fx: DeltaFixture;
let origin: Origin;
let casync = true;
withDeltaFixture(2 * 1024 * 1024, (s) => {
  casync = s !== null;
  if (s) ({ fx, origin } = s);
});

test('a FIFO seed is left out with a warning; extract completes (no hang)', { timeout: 30_000 }, async (t) => {
  if (!casync) return t.skip('casync not installed');
  const fifo = join(fx.dir, 'seed.fifo');
  execFileSync('mkfifo', [fifo]);
  const out = join(fx.dir, 'fifo-out.img');
  const r = await deltad(
    ['extract', '--seed', fifo, '--seed', fx.v1Path, '--range-url', `${origin.url}/v2.img`, fx.indexPath, out],
    { env: { XDG_CACHE_HOME: join(fx.dir, 'xdg') }, timeoutMs: 20_000 },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /warning: seed .*seed\.fifo: is a FIFO, not a regular file or block device; not used/);
  assert.ok((await readFile(out)).equals(fx.v2));
});

test('a seed the user may not read is left out with a warning (run as nobody)', { timeout: 30_000 }, async (t) => {
  if (!casync) return t.skip('casync not installed');
  // Root reads everything: drop to nobody with setpriv; as another user, a mode-000 file is enough.
  const root = process.getuid?.() === 0;
  if (root && !nobodyReads(CLI)) return t.skip(`nobody cannot read ${CLI} (a checkout in a private directory)`);
  const dir = await tmpDir(t, 'fault-perm');
  await chmod(dir, 0o777);
  const secret = join(dir, 'secret.img');
  const readable = join(dir, 'v1.img');
  await copyFile(fx.v1Path, secret);
  await copyFile(fx.v1Path, readable);
  await chmod(secret, root ? 0o600 : 0o000);
  await chmod(readable, 0o644);
  const out = join(dir, 'out.img');
  const r = await deltad(
    [
      'extract',
      '--seed',
      secret,
      '--seed',
      readable,
      '--range-url',
      `${origin.url}/v2.img`,
      `${origin.url}/v2.caibx`,
      out,
    ],
    { env: { XDG_CACHE_HOME: join(dir, 'xdg') }, as: root ? ['nobody', 'nogroup'] : undefined },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /warning: seed .*secret\.img: cannot be read: permission denied; not used/);
  assert.ok((await readFile(out)).equals(fx.v2));
});

test("a seed swapped for a FIFO between the sidecar's scan and its open is left out; indexing a FIFO fails at once", {
  timeout: 30_000,
}, async (t) => {
  if (!casync) return t.skip('casync not installed');
  const dir = join(fx.dir, 'swap');
  await mkdir(dir);
  const seed = join(dir, 'os_1.img');
  await copyFile(fx.v1Path, seed);
  const catalog = new SeedCatalog([join(dir, '*.img')], join(fx.dir, 'swap-cache'), silentLogger);
  const specs = await catalog.seedsFor('os_2.img');
  assert.deepEqual(
    specs.map((s) => s.path),
    [seed],
  );
  // Swapped after the scan: the path now names a FIFO no one writes.
  const fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  await rename(fifo, seed);
  const warnings: string[] = [];
  const out = join(fx.dir, 'swap-out.img');
  const r = await extractToFile(fx.index, out, {
    seeds: specs,
    rangeUrl: `${origin.url}/v2.img`,
    cacheDir: join(fx.dir, 'swap-cache'),
    onWarning: (m) => warnings.push(m),
  });
  assert.equal(r.fromSeeds, 0);
  assert.ok((await readFile(out)).equals(fx.v2));
  assert.ok(
    warnings.some((w) => /os_1\.img: is a FIFO/.test(w)),
    warnings.join('\n'),
  );
  await assert.rejects(indexFile(seed, { params: TEST_PARAMS, digest: 'sha512-256' }), UnusableInputError);
  assert.deepEqual(
    (await readdir(fx.dir)).filter((n) => n.includes('deltad')),
    [],
    'nothing left beside the output',
  );
});
