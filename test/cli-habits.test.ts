// The CLI where casync and desync users' habits meet it, and what it tells
// them: the real CLI in a child process against the test origin.
//   seeds given desync's way, unitless chunk sizes, '-' for stdin/stdout,
//   --timeout and a server that never answers, info by URL, plan against a
//   server without ranges, file-system errors in words, local-store totals,
//   and progress bars (forced with DELTAD_PROGRESS=1) while a seed is chunked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Origin } from './helpers/origin.js';
import { TEST_PARAMS, type DeltaFixture, withDeltaFixture } from './helpers/delta-images.js';
import { mountTinyTmpfs } from './helpers/tmpfs.js';
import { runCli, type CliRun } from './helpers/cli.js';

const CHUNK_SIZE = `${TEST_PARAMS.min}:${TEST_PARAMS.avg}:${TEST_PARAMS.max}`;

/** Runs the CLI (killed after 30 s) with `stdin` as its standard input. */
function deltad(args: string[], opts: { stdin?: Buffer; env?: Record<string, string> } = {}): Promise<CliRun> {
  const env = { ...process.env, XDG_CACHE_HOME: join(fx.dir, 'xdg'), DELTAD_PROGRESS: '0', ...opts.env };
  return runCli(args, { env, cwd: fx.dir, stdin: opts.stdin });
}

let fx: DeltaFixture;
let origin: Origin;
let casync = true;
withDeltaFixture(2 * 1024 * 1024, (s) => {
  casync = s !== null;
  if (s) ({ fx, origin } = s);
});

test('--seed with an index warns that it reuses nothing; INDEX:FILE is refused with the right order', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const asSeed = await deltad(['plan', '--json', '--seed', fx.indexPath, '--store', fx.storeDir, fx.indexPath]);
  assert.equal(asSeed.code, 0, asSeed.stderr);
  assert.match(asSeed.stderr, new RegExp(`warning: seed ${fx.indexPath} is a casync index, not an image: no chunk`));
  assert.match(
    asSeed.stderr,
    new RegExp(`\\(here: ${fx.v2Path}:${fx.indexPath}\\)`),
    'names the image beside the index',
  );
  assert.equal(JSON.parse(asSeed.stdout.toString()).fromSeeds, 0);

  const reversed = await deltad([
    'plan',
    '--seed',
    `${fx.indexPath}:${fx.v1Path}`,
    '--store',
    fx.storeDir,
    fx.indexPath,
  ]);
  assert.equal(reversed.code, 2, reversed.stderr);
  assert.match(reversed.stderr, new RegExp(`the image comes first: --seed ${fx.v1Path}:${fx.indexPath}`));
  assert.doesNotMatch(reversed.stderr, /invalid index/);
});

test('--chunk-size without units below 1 KiB is refused with the KiB spelling; no index is written', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const out = join(fx.dir, 'tiny-chunks.caibx');
  const r = await deltad(['make', '--chunk-size', '16:64:256', out, fx.v1Path]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /write 16K:64K:256K for KiB, or 16B:64B:256B for bytes/);
  assert.equal(existsSync(out), false);
  const kib = await deltad(['make', '--json', '--chunk-size', '16:64K:256K', out, fx.v1Path]);
  assert.equal(kib.code, 2, 'any unitless part below 1 KiB is refused');
  const bytes = await deltad(['make', '--json', '--chunk-size', '4096:16K:64K', out, fx.v1Path]);
  assert.equal(bytes.code, 0, bytes.stderr);
  assert.deepEqual(JSON.parse(bytes.stdout.toString()).params, { min: 4096, avg: 16384, max: 65536 });
});

test("'-' is stdin and stdout: make to stdout, info and extract from stdin, extract to stdout", async (t) => {
  if (!casync) return t.skip('casync not installed');
  const made = await deltad(['make', '--chunk-size', CHUNK_SIZE, '-', fx.v2Path]);
  assert.equal(made.code, 0, made.stderr);
  assert.ok(made.stdout.equals(readFileSync(fx.indexPath)), "the index on stdout is casync's bytes");
  assert.match(made.stderr, /chunks, .* indexed/, 'the summary goes to stderr');
  assert.equal(existsSync(join(fx.dir, '-')), false, 'no file named -');

  const info = await deltad(['info', '--json', '-'], { stdin: made.stdout });
  assert.equal(info.code, 0, info.stderr);
  assert.equal(JSON.parse(info.stdout.toString()).size, fx.v2.length);

  const image = await deltad(['extract', '--seed', fx.v1Path, '--store', fx.storeDir, fx.indexPath, '-']);
  assert.equal(image.code, 0, image.stderr);
  assert.ok(image.stdout.equals(fx.v2), 'the image on stdout');
  assert.match(image.stderr, /^stdout: .* assembled/m);
  assert.equal(existsSync(join(fx.dir, '-')), false);

  const fromStdin0 = await deltad(['make', join(fx.dir, 'stdin.caibx'), '-'], { stdin: fx.v2 });
  assert.equal(fromStdin0.code, 2, 'FILE is read at random offsets: stdin is refused, not opened as a file named -');
  assert.match(fromStdin0.stderr, /FILE must be a file: '-' \(stdin\) cannot be read at random offsets/);

  const out = join(fx.dir, 'from-stdin.img');
  const fromStdin = await deltad(['extract', '--seed', fx.v1Path, '--store', fx.storeDir, '-', out], {
    stdin: made.stdout,
  });
  assert.equal(fromStdin.code, 0, fromStdin.stderr);
  assert.ok(readFileSync(out).equals(fx.v2));
});

test('--timeout: a server that accepts but never answers is named, in words, after one retry', async (t) => {
  if (!casync) return t.skip('casync not installed');
  origin.fault({ kind: 'delay', path: '/v2.caibx', delayMs: 4000, times: 3 });
  const before = origin.log.length;
  const r = await deltad(['info', '--timeout', '0.4', `${origin.url}/v2.caibx`]);
  origin.clearFaults();
  assert.equal(r.code, 1, r.stderr);
  assert.match(
    r.stderr,
    new RegExp(`${origin.url}/v2.caibx: the server accepted the connection but sent no response within 0.4 s`),
  );
  const attempts = origin.log.slice(before).filter((e) => e.path === '/v2.caibx').length;
  assert.equal(attempts, 2, 'one retry after a timeout, not four attempts');
  assert.ok(r.ms < 20_000, `gave up after ${r.ms} ms, well before one default 30 s timeout`);
  const bad = await deltad(['extract', '--timeout', 'soon', fx.indexPath, join(fx.dir, 'x.img')]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--timeout: "soon"/);
});

test('info reads an index by URL like every other command', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const r = await deltad(['info', '--json', `${origin.url}/v2.caibx`]);
  assert.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout.toString());
  assert.equal(s.size, fx.v2.length);
  assert.equal(s.chunks, fx.index.count);
  const missing = await deltad(['info', `${origin.url}/nope.caibx`]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /nope\.caibx: HTTP 404/);
});

test('plan against a server without byte ranges fails as a server property (exit 1), not a usage error', async (t) => {
  if (!casync) return t.skip('casync not installed');
  origin.ranges = 'none';
  try {
    const r = await deltad([
      'plan',
      '--seed',
      fx.v1Path,
      '--range-url',
      `${origin.url}/v2.img`,
      `${origin.url}/v2.caibx`,
    ]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`${origin.url}/v2.img does not serve byte ranges`));
    assert.doesNotMatch(r.stderr, /--help/);
  } finally {
    origin.ranges = 'multi';
  }
});

test('file-system errors name the path given and say what is wrong', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const out = join(fx.dir, 'no-such-dir', 'out.img');
  const r = await deltad(['extract', '--seed', fx.v1Path, '--store', fx.storeDir, fx.indexPath, out]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, new RegExp(`${out}: cannot write: directory ${join(fx.dir, 'no-such-dir')} does not exist`));
  assert.doesNotMatch(r.stderr, /deltad-partial|ENOENT/);
  const index = join(fx.dir, 'no-such-dir', 'v1.img.caibx');
  const made = await deltad(['make', index, fx.v1Path]);
  assert.equal(made.code, 1);
  assert.match(
    made.stderr,
    new RegExp(`${index}: cannot write: directory ${join(fx.dir, 'no-such-dir')} does not exist`),
  );
  assert.doesNotMatch(made.stderr, /\.tmp|ENOENT/, 'not the temp file beside the index');
});

test('a read-only file system: extract says so, make writes no index when its store failed', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const ro = await mountTinyTmpfs(t, '64k', true);
  if (!ro) return;
  const out = join(ro, 'out.img');
  const r = await deltad(['extract', '--seed', fx.v1Path, '--store', fx.storeDir, fx.indexPath, out]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, new RegExp(`${out}: cannot write: read-only file system`));
  assert.doesNotMatch(r.stderr, /deltad-partial|EROFS/);

  const index = join(fx.dir, 'ro-store.caibx');
  const store = join(ro, 'os.castr');
  const made = await deltad(['make', '--store', store, index, fx.v1Path]);
  assert.equal(made.code, 1);
  assert.match(made.stderr, new RegExp(`${store}: cannot write chunks: read-only file system`));
  assert.equal(existsSync(index), false, 'no index without its store');
});

test('extract --store DIR counts the local store in the local total', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const out = join(fx.dir, 'local-store.img');
  const r = await deltad(['extract', '--json', '--seed', fx.v1Path, '--store', fx.storeDir, fx.indexPath, out]);
  assert.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout.toString());
  assert.ok(s.fromLocalStore > 0, 'some chunks came from the store directory');
  assert.equal(s.fromSeeds + s.fromZero + s.fromSelf + s.fromLocalStore, fx.v2.length, 'every byte counted once');
  assert.equal(s.networkBytes, 0);
  const text = await deltad(['extract', '--store', fx.storeDir, fx.indexPath, join(fx.dir, 'local-store-2.img')]);
  assert.equal(text.code, 0, text.stderr);
  const mib = (fx.v2.length / 1024 / 1024).toFixed(1);
  assert.match(
    text.stdout.toString(),
    new RegExp(`${mib} MiB local \\(.*, local store \\d[^)]*\\), 0 B over the network`),
  );
});

test('progress: a bar while a seed without an index is chunked, then the extract bar', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const cache = join(fx.dir, 'fresh-cache');
  const r = await deltad(
    [
      'extract',
      '--cache-dir',
      cache,
      '--seed',
      fx.v1Path,
      '--store',
      fx.storeDir,
      fx.indexPath,
      join(fx.dir, 'bars.img'),
    ],
    {
      env: { DELTAD_PROGRESS: '1' },
    },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`chunking seed ${fx.v1Path} \\[#+-*\\] +\\d+\\.\\d%`));
  assert.match(r.stderr, /extract \[[#-]+\] +\d+\.\d%/);
  assert.ok(r.stderr.indexOf('chunking seed') < r.stderr.indexOf('extract ['), 'seed first');
  const again = await deltad(
    [
      'extract',
      '--cache-dir',
      cache,
      '--seed',
      fx.v1Path,
      '--store',
      fx.storeDir,
      fx.indexPath,
      join(fx.dir, 'bars2.img'),
    ],
    {
      env: { DELTAD_PROGRESS: '1' },
    },
  );
  assert.equal(again.code, 0, again.stderr);
  assert.doesNotMatch(again.stderr, /chunking seed/, 'a cached seed index is not chunked again');
});
