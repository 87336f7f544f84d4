// `deltad make` / `info` / `verify` end to end through the real CLI binary, with
// the real Debian casync as the peer in both directions, and the errors a user
// sees for bad input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync, readFileSync, existsSync, readdirSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './helpers/repo.js';
import { tmpDirSync } from './helpers/tmp.js';
import { seededBytes } from './helpers/images.js';

const CLI = join(REPO_ROOT, 'dist', 'daemon', 'cli.js');

function deltad(args: string[], cwd: string) {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function casync(args: string[], cwd: string) {
  const r = spawnSync('casync', args, { cwd, encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function haveCasync(): boolean {
  const ok = spawnSync('casync', ['--version']).status === 0;
  if (!ok && process.env.CI) throw new Error('casync is required in CI (scripts/test-deps.sh installs it)');
  return ok;
}

/** Seeded pseudo-random bytes with a zero run and a repeat. */
function sampleFile(size: number): Buffer {
  const buf = seededBytes(size, 'cli-make');
  const q = Math.floor(size / 4);
  buf.fill(0, q, q + Math.min(600_000, q)); // a zero run (max-size chunks)
  buf.copy(buf, 2 * q, 0, Math.min(300_000, q)); // repeated data
  return buf;
}

test('deltad make writes the same .caibx bytes as casync make, and casync extracts from our store', {
  timeout: 120_000,
}, async (t) => {
  if (!haveCasync()) return t.skip('casync not installed');
  const dir = tmpDirSync(t, 'cli');
  writeFileSync(join(dir, 'img'), sampleFile(6 * 1024 * 1024 + 12345));
  for (const [size, digest] of [
    ['16K:64K:256K', 'sha512-256'],
    ['4K:16K:64K', 'sha256'],
  ] as const) {
    const ours = deltad(
      ['make', '--chunk-size', size, '--digest', digest, '--store', 'ours.castr', `ours-${digest}.caibx`, 'img'],
      dir,
    );
    assert.equal(ours.code, 0, ours.stderr);
    const sizeArg = size
      .split(':')
      .map((s) => Number(s.slice(0, -1)) * 1024)
      .join(':');
    const theirs = casync(
      [
        `--chunk-size=${sizeArg}`,
        `--digest=${digest}`,
        'make',
        '--store=theirs.castr',
        `theirs-${digest}.caibx`,
        'img',
      ],
      dir,
    );
    assert.equal(theirs.code, 0, theirs.stderr);
    assert.ok(
      readFileSync(join(dir, `ours-${digest}.caibx`)).equals(readFileSync(join(dir, `theirs-${digest}.caibx`))),
      `index bytes differ for ${size} ${digest}`,
    );
  }
  // casync reassembles the file from the index and store that deltad made.
  const ex = casync(['extract', '--store=ours.castr', 'ours-sha512-256.caibx', 'out'], dir);
  assert.equal(ex.code, 0, ex.stderr);
  assert.ok(readFileSync(join(dir, 'out')).equals(readFileSync(join(dir, 'img'))));
});

test('deltad verify accepts an index and store made by casync make, and finds a corrupted chunk', {
  timeout: 120_000,
}, async (t) => {
  if (!haveCasync()) return t.skip('casync not installed');
  const dir = tmpDirSync(t, 'cli');
  writeFileSync(join(dir, 'img'), sampleFile(3 * 1024 * 1024));
  assert.equal(casync(['make', '--store=c.castr', 'c.caibx', 'img'], dir).code, 0);
  const good = deltad(['verify', '--store', 'c.castr', 'c.caibx'], dir);
  assert.equal(good.code, 0, good.stderr + good.stdout);
  const fileOk = deltad(['verify', 'c.caibx', 'img'], dir);
  assert.equal(fileOk.code, 0, fileOk.stderr + fileOk.stdout);

  // Overwrite one chunk file with another chunk's (valid zstd, wrong content).
  const prefixes = readdirSync(join(dir, 'c.castr')).sort();
  const files = prefixes.flatMap((p) => readdirSync(join(dir, 'c.castr', p)).map((f) => join(dir, 'c.castr', p, f)));
  assert.ok(files.length >= 2);
  chmodSync(files[0], 0o644);
  writeFileSync(files[0], readFileSync(files[1]));
  const bad = deltad(['verify', '--store', 'c.castr', 'c.caibx'], dir);
  assert.equal(bad.code, 1);
  const badId = files[0].split('/').pop()!.replace('.cacnk', '');
  assert.ok((bad.stdout + bad.stderr).includes(badId), 'the corrupt chunk is named');
});

test('deltad info reads a casync index (text and JSON)', async (t) => {
  const dir = tmpDirSync(t, 'cli');
  writeFileSync(join(dir, 'img'), sampleFile(2 * 1024 * 1024));
  assert.equal(deltad(['make', 'i.caibx', 'img'], dir).code, 0);
  const r = deltad(['info', '--json', 'i.caibx'], dir);
  assert.equal(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  assert.equal(info.size, 2 * 1024 * 1024);
  assert.equal(info.digest, 'sha512-256');
  assert.equal(info.featureFlags, '0xb000000000000000');
  assert.ok(info.chunks > 10 && info.chunks < 100);
  const text = deltad(['info', 'i.caibx'], dir);
  assert.match(text.stdout, /Chunks: +\d+/);
});

test('bad input: clear messages and exit codes, nothing left behind', async (t) => {
  const dir = tmpDirSync(t, 'cli');
  writeFileSync(join(dir, 'img'), sampleFile(200_000));
  const cases: [string[], number, RegExp][] = [
    [['make', 'x.caibx', 'missing.img'], 1, /missing\.img: no such file or directory/],
    [['make', '--chunk-size', '64K:16K:256K', 'x.caibx', 'img'], 2, /min <= avg <= max/],
    [['make', '--chunk-size', 'banana', 'x.caibx', 'img'], 2, /invalid chunk size/],
    [['make', '--digest', 'md5', 'x.caibx', 'img'], 2, /unknown digest/],
    [['make', 'x.caibx'], 2, /expected 2 arguments/],
    [['make', '--frobnicate', 'x.caibx', 'img'], 2, /Unknown option/],
    [['info', 'img'], 1, /invalid index: INDEX\.size at byte 0/],
    [['nosuchcommand'], 2, /unknown command/],
  ];
  for (const [args, code, pattern] of cases) {
    const r = deltad(args, dir);
    assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, pattern, args.join(' '));
  }
  assert.equal(existsSync(join(dir, 'x.caibx')), false, 'no index written on failure');
  const temps = readdirSync(dir).filter((f) => f.endsWith('.tmp'));
  assert.deepEqual(temps, []);
});

test('--help for every command, and no progress output in pipes', async (t) => {
  const dir = tmpDirSync(t, 'cli');
  const main = deltad(['--help'], dir);
  assert.equal(main.code, 0);
  const names = [...main.stdout.matchAll(/^ {2}(\S+) {2,}/gm)].map((m) => m[1]);
  assert.ok(names.includes('make') && names.includes('extract') && names.includes('serve'), names.join(','));
  for (const name of names) {
    const r = deltad([name, '--help'], dir);
    assert.equal(r.code, 0, name);
    assert.match(r.stdout, new RegExp(`Usage: deltad ${name}`), name);
  }
  writeFileSync(join(dir, 'img'), sampleFile(1024 * 1024));
  const r = deltad(['make', 'i.caibx', 'img'], dir);
  assert.equal(r.stderr, '', 'stderr stays quiet when it is not a terminal');
});
