// `deltad extract` and `deltad plan` end to end: the real CLI in a child
// process against the test origin, with exit codes and JSON output.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startOrigin, type Origin } from './helpers/origin.js';
import { type DeltaFixture, withDeltaFixture } from './helpers/delta-images.js';
import { runCli } from './helpers/cli.js';

/** Runs the CLI (killed after 30 s); `onSpawn` gets the child, e.g. to signal it. */
async function deltad(
  args: string[],
  onSpawn?: (child: ChildProcess) => void,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await runCli(args, { onSpawn, env: { ...process.env, XDG_CACHE_HOME: join(fx.dir, 'xdg') } });
  return { ...r, stdout: r.stdout.toString() };
}

let fx: DeltaFixture;
let origin: Origin;
let casync = true;
withDeltaFixture(2 * 1024 * 1024, (s) => {
  casync = s !== null;
  if (s) ({ fx, origin } = s);
});

test('deltad plan: text and JSON, index by URL', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const json = await deltad([
    'plan',
    '--json',
    '--seed',
    fx.v1Path,
    '--range-url',
    `${origin.url}/v2.img`,
    '--store',
    `${origin.url}/v2.castr`,
    `${origin.url}/v2.caibx`,
  ]);
  assert.equal(json.code, 0, json.stderr);
  const report = JSON.parse(json.stdout);
  assert.equal(report.targetSize, fx.v2.length);
  assert.equal(report.fromSeeds + report.fromZero + report.fromSelf + report.missingBytes, fx.v2.length);
  assert.deepEqual(
    report.modes.map((m: { mode: string }) => m.mode),
    ['range', 'range-single', 'store'],
  );
  assert.equal(report.chosen, 'range');
  assert.ok(existsSync(join(fx.dir, 'xdg', 'deltad', 'indexes')), 'seed index cached under $XDG_CACHE_HOME/deltad');

  const text = await deltad(['plan', '--seed', fx.v1Path, '--range-url', `${origin.url}/v2.img`, fx.indexPath]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /From seeds: +\d+ bytes/);
  assert.match(text.stdout, new RegExp(`Missing: +${report.missingBytes} bytes`));
  assert.match(text.stdout, /Auto picks: +range/);
});

test('deltad extract: JSON summary, output identical, exit codes', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const out = join(fx.dir, 'out.img');
  const sha = createHash('sha256').update(fx.v2).digest('hex');
  origin.log.length = 0;
  const ok = await deltad([
    'extract',
    '--json',
    '--seed',
    fx.v1Path,
    '--range-url',
    `${origin.url}/v2.img`,
    '--sha256',
    sha,
    `${origin.url}/v2.caibx`,
    out,
  ]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.ok((await readFile(out)).equals(fx.v2));
  const summary = JSON.parse(ok.stdout);
  assert.equal(summary.sha256, sha);
  assert.equal(summary.mode, 'range');
  assert.equal(summary.fromSeeds + summary.fromZero + summary.fromSelf + summary.fromNetwork, fx.v2.length);
  assert.ok(
    summary.networkBytes > summary.fromNetwork && summary.wallMs >= 0,
    'network bytes include the index and framing',
  );
  const counted = origin.log.filter((e) => e.path === '/v2.img' || e.path === '/v2.caibx');
  assert.equal(summary.networkRequests, counted.length, 'index download and range requests are counted');
  assert.equal(
    summary.networkBytes,
    counted.reduce((n, e) => n + e.bytes, 0),
  );

  // Store mode from the casync store, text summary.
  const out2 = join(fx.dir, 'out2.img');
  const store = await deltad([
    'extract',
    '--seed',
    fx.v1Path,
    '--store',
    `${origin.url}/v2.castr`,
    '--mode',
    'store',
    fx.indexPath,
    out2,
  ]);
  assert.equal(store.code, 0, store.stderr);
  assert.match(store.stdout, /over the network in \d+ requests \(store mode\)/);
  assert.ok((await readFile(out2)).equals(fx.v2));

  // Failures keep the old file: a wrong checksum (1), bad arguments (2), a missing index (1).
  await writeFile(out, 'old');
  const bad = await deltad([
    'extract',
    '--seed',
    fx.v1Path,
    '--range-url',
    `${origin.url}/v2.img`,
    '--sha256',
    'a'.repeat(64),
    fx.indexPath,
    out,
  ]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /SHA-256 mismatch/);
  assert.equal(await readFile(out, 'utf8'), 'old');
  const usage = await deltad(['extract', '--mode', 'fast', fx.indexPath, out]);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /--mode/);
  assert.equal((await deltad(['extract', fx.indexPath])).code, 2);
  const missing = await deltad(['extract', '--range-url', `${origin.url}/v2.img`, `${origin.url}/nope.caibx`, out]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /nope\.caibx: HTTP 404/);
  const noSource = await deltad(['extract', fx.indexPath, out]);
  assert.equal(noSource.code, 2);
  assert.match(noSource.stderr, /no remote source/);
  assert.equal(await readFile(out, 'utf8'), 'old');
});

test('deltad extract: SIGINT keeps the partial file, the same command resumes', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const out = join(fx.dir, 'sigint.img');
  const args = ['extract', '--json', '--range-url', `${origin.url}/v2.img`, '--concurrency', '1', fx.indexPath, out];
  origin.log.length = 0;
  // No seeds: everything comes from the network; the origin sends a quarter, then stalls.
  origin.fault({ kind: 'stall', path: '/v2.img', times: Infinity, afterBytes: fx.v2.length >> 2, stallMs: 20_000 });
  let child: ChildProcess | undefined;
  const first = deltad(args, (c) => (child = c));
  for (let waited = 0; !origin.log.some((e) => e.fault === 'stall'); waited += 50) {
    assert.ok(waited < 20_000, 'the extract reached the origin');
    await new Promise((r) => setTimeout(r, 50));
  }
  await new Promise((r) => setTimeout(r, 300)); // the first quarter arrives, then the origin stalls
  child!.kill('SIGINT');
  const r1 = await first;
  assert.equal(r1.code, 1, r1.stderr);
  assert.match(r1.stderr, /interrupted.*run the same command again to resume/s);
  assert.ok(!existsSync(out));
  assert.ok(existsSync(join(fx.dir, '.sigint.img.deltad-partial')));
  origin.clearFaults();
  const r2 = await deltad(args);
  assert.equal(r2.code, 0, r2.stderr);
  assert.ok(JSON.parse(r2.stdout).resumedBytes > 0);
  assert.ok((await readFile(out)).equals(fx.v2));
});

test('deltad extract through an origin that redirects to a mirror: range and store mode, exit 0', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const mirror = await startOrigin({ root: fx.www });
  origin.redirect = { to: mirror.url };
  const from = origin.log.length;
  try {
    for (const mode of ['range', 'store']) {
      const out = join(fx.dir, `redirected-${mode}.img`);
      const r = await deltad([
        'extract',
        '--json',
        '--mode',
        mode,
        '--seed',
        fx.v1Path,
        '--range-url',
        `${origin.url}/v2.img`,
        '--store',
        `${origin.url}/v2.castr`,
        `${origin.url}/v2.caibx`,
        out,
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.ok((await readFile(out)).equals(fx.v2), `${mode}: identical bytes`);
      assert.equal(JSON.parse(r.stdout).mode, mode);
    }
    assert.ok(mirror.log.length > 0, 'the mirror served');
    assert.ok(
      origin.log.slice(from).every((e) => e.status === 302),
      'the origin only redirected',
    );
  } finally {
    origin.redirect = undefined;
    await mirror.close();
  }
});

test('deltad extract: kill switch gives the full image; a trickle fails naming URL and rate; bad CA', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const sha = createHash('sha256').update(fx.v2).digest('hex');
  origin.headers = (p) => (p === '/v2.img' ? { 'x-kde-delta': 'false' } : undefined);
  try {
    const out = join(fx.dir, 'killed.img');
    const r = await deltad([
      'extract',
      '--seed',
      fx.v1Path,
      '--range-url',
      `${origin.url}/v2.img`,
      '--sha256',
      sha,
      `${origin.url}/v2.caibx`,
      out,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /notice: .*disables delta updates \(x-kde-delta: false\); downloading the full image/);
    assert.match(r.stdout, /downloaded whole from .*SHA-256 verified/);
    assert.ok((await readFile(out)).equals(fx.v2));
  } finally {
    origin.headers = undefined;
  }
  origin.fault({ kind: 'trickle', path: '/v2.img', rangedOnly: true, intervalMs: 1500, times: Infinity });
  try {
    const r = await deltad([
      'extract',
      '--mode',
      'range',
      '--low-speed-limit',
      '1K',
      '--low-speed-time',
      '1',
      '--seed',
      fx.v1Path,
      '--range-url',
      `${origin.url}/v2.img`,
      `${origin.url}/v2.caibx`,
      join(fx.dir, 'trickle.img'),
    ]);
    assert.equal(r.code, 1, r.stderr);
    const slow = `${origin.url}/v2.img: transfer too slow: [\\d.]+ B/s for 1 s \\(limit 1024 B/s\\)`;
    assert.match(r.stderr, new RegExp(slow));
  } finally {
    origin.clearFaults();
  }
  const bad = await deltad([
    'extract',
    '--ca-file',
    join(fx.dir, 'nope.pem'),
    '--range-url',
    `${origin.url}/v2.img`,
    fx.indexPath,
    join(fx.dir, 'x.img'),
  ]);
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /ca-file .*nope\.pem: cannot read: ENOENT/);
});
