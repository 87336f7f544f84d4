// The daemon's building blocks without an origin: configuration (file, env,
// flags, errors with file:line), request-path safety, socket-activation
// variables, sd_notify to a real AF_UNIX datagram socket, SHA256SUMS lookup,
// metrics text, and `deltad redirect` drop-ins against a temporary root.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadConfig } from '../daemon/config.js';
import { UsageError } from '../lib/errors.js';
import { resolveOriginTarget, UnsafePathError } from '../daemon/origin-path.js';
import { globToRegExp } from '../daemon/glob.js';
import { takeInheritedSockets } from '../daemon/socket-activation.js';
import { createNotifier } from '../daemon/notify.js';
import { findSha256 } from '../lib/format/sha256sums.js';
import { newCounters, renderMetrics } from '../daemon/metrics.js';
import { IdleTimer } from '../daemon/idle.js';
import { createLogger } from '../daemon/log.js';
import { REPO_ROOT } from './helpers/repo.js';
import { startNotifyListener } from './helpers/notify-listener.js';
import { parseArgs } from 'node:util';
import { command as redirect } from '../daemon/commands/redirect.js';
import { tmpDir } from './helpers/tmp.js';

const CLI = join(REPO_ROOT, 'dist/daemon/cli.js');

test('config: file, then environment, then flags; lists replace defaults', async (t) => {
  const dir = await tmpDir(t, 'daemon');
  const file = join(dir, 'deltad.conf');
  await writeFile(
    file,
    `# comment\n\norigin = https://updates.example.org/os\nseed-glob = /system/*.erofs\nseed-glob = /data/*.img /more/*.raw\nidle-timeout = 60\npassthrough = proxy\nconcurrency = 4\n`,
  );
  const c = loadConfig({
    values: { config: file },
    env: { DELTAD_CONCURRENCY: '6', DELTAD_STORE: 'https://updates.example.org/store' },
  });
  assert.equal(c.origin, 'https://updates.example.org/os/');
  assert.deepEqual(c.seedGlobs, ['/system/*.erofs', '/data/*.img', '/more/*.raw']);
  assert.equal(c.idleTimeout, 60);
  assert.equal(c.passthrough, 'proxy');
  assert.equal(c.concurrency, 6, 'environment overrides the file');
  assert.equal(c.store, 'https://updates.example.org/store');
  assert.deepEqual(c.imagePatterns, ['*.erofs', '*.raw', '*.img'], 'defaults kept');
  const f = loadConfig({
    values: { config: file, concurrency: '2', 'seed-glob': ['/x/*.img'] },
    env: { DELTAD_CONCURRENCY: '6' },
  });
  assert.equal(f.concurrency, 2, 'flags override the environment');
  assert.deepEqual(f.seedGlobs, ['/x/*.img']);
  // The default file is optional; CACHE_DIRECTORY (systemd) sets the cache default.
  const d = loadConfig({ values: { origin: 'http://127.0.0.1:1/' }, env: { CACHE_DIRECTORY: '/var/cache/deltad-x' } });
  assert.equal(d.cacheDir, '/var/cache/deltad-x');
});

test('config: bad keys and values name the file and line, the variable, or the flag', async (t) => {
  const dir = await tmpDir(t, 'daemon');
  const file = join(dir, 'bad.conf');
  const cases: [string, RegExp][] = [
    ['origin = http://a/\nfrobnicate = 1\n', /bad\.conf:2: unknown key "frobnicate"/],
    ['origin = ftp://a/\n', /bad\.conf:1: .*only http/],
    ['origin = not a url\n', /bad\.conf:1: "not a url" is not a valid URL/],
    ['\n\nconcurrency = lots\n', /bad\.conf:3: "lots" is not an integer/],
    ['idle-timeout = -5\n', /bad\.conf:1: .*between 0 and/],
    ['passthrough = maybe\n', /bad\.conf:1: passthrough "maybe"/],
    ['listen = 127.0.0.1\n', /bad\.conf:1: listen address/],
    ['seed-glob = relative/*.img\n', /bad\.conf:1: seed glob .* absolute/],
    ['seed-glob = /sys*/x.img\n', /bad\.conf:1: .*only allowed in the file name/],
    ['just words\n', /bad\.conf:1: expected "key = value"/],
  ];
  for (const [text, re] of cases) {
    await writeFile(file, text);
    assert.throws(
      () => loadConfig({ values: { config: file }, env: {} }),
      (e: Error) => e instanceof UsageError && re.test(e.message),
      text,
    );
  }
  assert.throws(
    () => loadConfig({ values: {}, env: { DELTAD_IDLE_TIMEOUT: 'soon' } }),
    /environment variable DELTAD_IDLE_TIMEOUT: "soon"/,
  );
  assert.throws(() => loadConfig({ values: { listen: 'nope' }, env: {} }), /option --listen: /);
  assert.throws(
    () => loadConfig({ values: { config: join(dir, 'missing.conf') }, env: {} }),
    /missing\.conf: cannot read configuration: ENOENT/,
  );

  // Through the CLI: exit code 2 and one clear line.
  await writeFile(file, 'origin = http://127.0.0.1:9/\nconcurency = 3\n');
  const r = spawnSync(process.execPath, [CLI, 'serve', '--config', file], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /bad\.conf:2: unknown key "concurency"/);
  const noOrigin = spawnSync(process.execPath, [CLI, 'serve', '--listen', '127.0.0.1:0', '--cache-dir', dir], {
    encoding: 'utf8',
    timeout: 10_000,
    env: { ...process.env, DELTAD_CONFIG: join(dir, 'empty.conf') },
  });
  assert.equal(noOrigin.status, 2);
});

test('request paths resolve only under the origin; traversal and smuggled separators are refused', () => {
  const base = 'https://updates.example.org/os/';
  const ok = resolveOriginTarget(base, '/v2/image%20one_2.erofs?x=1');
  assert.equal(ok.url, 'https://updates.example.org/os/v2/image%20one_2.erofs');
  assert.equal(ok.name, 'image one_2.erofs');
  assert.equal(ok.relPath, 'v2/image one_2.erofs');
  assert.equal(
    resolveOriginTarget(base, '/.deltad/plan/a.img', '/.deltad/plan/').url,
    'https://updates.example.org/os/a.img',
  );
  const bad = [
    '/../../etc/passwd',
    '/a/../../b',
    '/%2e%2e/etc/passwd',
    '/.%2E/x',
    '/a/%2e',
    '/a%2fb',
    '/a%2F..%2Fb',
    '/a%5cb',
    '/a\\b',
    '/a%00b',
    '/a%0d%0ab',
    '//evil.example/x',
    '/a//b',
    'http://evil.example/x',
    '*',
    '/%zz',
    '/',
  ];
  for (const target of bad) assert.throws(() => resolveOriginTarget(base, target), UnsafePathError, target);
});

test('globs match file names like the shell', () => {
  const re = globToRegExp('kde-linux_*_root-x86-64.erofs');
  assert.ok(re.test('kde-linux_202611_root-x86-64.erofs'));
  assert.ok(!re.test('kde-linux_202611_root-x86-64.erofs.caibx'));
  assert.ok(globToRegExp('v[0-9]?.img').test('v1a.img'));
  assert.ok(!globToRegExp('v[!0-9].img').test('v1.img'));
  assert.ok(!globToRegExp('*.img').test('dir/x.img'));
  assert.ok(globToRegExp('a+b(c).raw').test('a+b(c).raw'));
});

test('socket activation: fds from 3 with names, only for our PID, variables removed', () => {
  const env: NodeJS.ProcessEnv = { LISTEN_FDS: '2', LISTEN_PID: '4242', LISTEN_FDNAMES: 'control:http' };
  assert.deepEqual(takeInheritedSockets(env, 4242), [
    { fd: 3, name: 'control' },
    { fd: 4, name: 'http' },
  ]);
  assert.equal(env.LISTEN_FDS, undefined);
  assert.equal(env.LISTEN_PID, undefined);
  assert.deepEqual(takeInheritedSockets({ LISTEN_FDS: '1', LISTEN_PID: '1' }, 4242), [], 'meant for another process');
  assert.deepEqual(takeInheritedSockets({}, 4242), []);
});

test('sd_notify reaches a real AF_UNIX datagram socket (READY, STATUS, STOPPING)', { timeout: 20_000 }, async (t) => {
  const python = spawnSync('python3', ['--version']);
  const notifyBin = spawnSync('systemd-notify', ['--help']);
  if (python.error || notifyBin.error) {
    if (process.env.CI) assert.fail('python3 and systemd-notify are needed for this test');
    t.skip('python3 or systemd-notify missing');
    return;
  }
  const dir = await tmpDir(t, 'daemon');
  const listener = await startNotifyListener(join(dir, 'notify.sock'));
  t.after(() => listener.close());
  const sock = listener.path;
  const lines: string[] = [];
  const log = createLogger({ write: (s: string) => lines.push(s) } as unknown as NodeJS.WritableStream, {});
  const n = createNotifier({ env: { NOTIFY_SOCKET: sock }, log });
  n.ready('serving http://origin/');
  for (let i = 0; i <= 10; i++) n.status(`image.erofs: ${i * 10}%\nsecond line`);
  n.stopping();
  await n.flush();
  for (const end = Date.now() + 5_000; !listener.messages().includes('STOPPING=1') && Date.now() < end; )
    await new Promise((r) => setTimeout(r, 20));
  const msgs = listener.messages();
  assert.equal(msgs[0], 'READY=1\nSTATUS=serving http://origin/');
  assert.ok(msgs.includes('STOPPING=1'));
  const statuses = msgs.filter((m) => m.startsWith('STATUS='));
  assert.ok(statuses.length >= 1 && statuses.length < 11, `status updates are coalesced (${statuses.length})`);
  assert.ok(msgs.includes('STATUS=image.erofs: 100% second line'), 'the newest status is sent, on one line');
  assert.deepEqual(lines, [], 'no warnings');
  // Without NOTIFY_SOCKET nothing is spawned and nothing fails.
  const quiet = createNotifier({ env: {} });
  quiet.ready();
  await quiet.flush();
});

test('SHA256SUMS lookup, metrics text, journal log prefixes, idle timer', async () => {
  const h = 'ab'.repeat(32);
  const manifest = `${'cd'.repeat(32)}  other.erofs\n${h.toUpperCase()} *img_2.erofs\r\n${'ef'.repeat(32)}  img_2.erofs.caibx\n`;
  assert.equal(findSha256(manifest, 'img_2.erofs'), h);
  assert.equal(findSha256(manifest, 'img_3.erofs'), undefined);

  const c = newCounters();
  c.originBytes = 1234;
  c.fallbacks = 2;
  const text = renderMetrics(c, { deltad_assemblies_in_flight: ['Assemblies running', 1] });
  assert.match(text, /^# TYPE deltad_origin_bytes_total counter\ndeltad_origin_bytes_total 1234$/m);
  assert.match(text, /^deltad_fallbacks_total 2$/m);
  assert.match(text, /^# TYPE deltad_assemblies_in_flight gauge\ndeltad_assemblies_in_flight 1$/m);

  const out: string[] = [];
  const stream = { write: (s: string) => out.push(s) } as unknown as NodeJS.WritableStream;
  createLogger(stream, { JOURNAL_STREAM: '8:123' }).warn('seed x: bad\nthing');
  createLogger(stream, {}).info('plain');
  assert.deepEqual(out, ['<4>seed x: bad thing\n', 'plain\n']);

  let fired = 0;
  const idle = new IdleTimer(80, () => fired++);
  idle.begin();
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(fired, 0, 'no idle exit while a request is in flight');
  idle.end();
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(fired, 1);
  idle.stop();
});

const TRANSFER = `[Transfer]
ProtectVersion=%A

[Source]
Type=url-file
Path=https://updates.example.org/os/%w/%a/
MatchPattern=os_@v_root-%a.erofs

[Target]
Type=regular-file
Path=/system
MatchPattern=os_@v_root-%a.erofs
`;

test('deltad redirect writes and removes the sysupdate drop-in, keeping specifiers', async (t) => {
  const root = await tmpDir(t, 'daemon');
  await mkdir(join(root, 'usr/lib/sysupdate.d'), { recursive: true });
  await mkdir(join(root, 'etc/sysupdate.d'), { recursive: true });
  await writeFile(join(root, 'usr/lib/sysupdate.d/50-root.transfer'), TRANSFER);
  await writeFile(
    join(root, 'usr/lib/sysupdate.d/60-uki.transfer'),
    TRANSFER.replace(/os_@v_root-%a\.erofs/g, 'os_@v.efi'),
  );
  await writeFile(join(root, 'etc/sysupdate.d/70-dir.transfer'), TRANSFER.replace('url-file', 'url-tar'));
  const conf = join(root, 'deltad.conf');
  await writeFile(conf, 'origin = https://updates.example.org/\nlisten = 127.0.0.1:3129\n');
  // In-process (the CLI's own parsing) to keep the test fast; exit 2 = UsageError.
  const run = async (...args: string[]) => {
    const out: string[] = [];
    const parsed = parseArgs({
      args: ['--root', root, '--config', conf, ...args],
      options: redirect.options,
      allowPositionals: true,
    });
    const stream = { write: (s: string) => out.push(s) } as unknown as NodeJS.WritableStream;
    try {
      const status = await redirect.run({
        values: parsed.values as Record<string, string | boolean | string[] | undefined>,
        positionals: parsed.positionals,
        interactive: false,
        stdout: stream,
        stderr: stream,
      });
      return { status, stderr: out.join('') };
    } catch (err) {
      return { status: err instanceof UsageError ? 2 : 1, stderr: (err as Error).message };
    }
  };

  const r = await run();
  assert.equal(r.status, 0, r.stderr);
  const dropin = join(root, 'run/sysupdate.d/50-root.transfer.d/50-deltad.conf');
  assert.match(await readFile(dropin, 'utf8'), /^\[Source\]\nPath=http:\/\/127\.0\.0\.1:3129\/os\/%w\/%a\/$/m);
  await assert.rejects(stat(join(root, 'run/sysupdate.d/60-uki.transfer.d')), 'only image transfers by default');

  const named = await run('--transfer', '60-uki');
  assert.equal(named.status, 0, named.stderr);
  assert.match(
    await readFile(join(root, 'run/sysupdate.d/60-uki.transfer.d/50-deltad.conf'), 'utf8'),
    /Path=http:\/\/127\.0\.0\.1:3129\/os\/%w\/%a\//,
  );

  const wrongType = await run('--transfer', '70-dir');
  assert.equal(wrongType.status, 2);
  assert.match(wrongType.stderr, /70-dir\.transfer: \[Source\] Type=url-tar; only url-file/);
  const unknown = await run('--transfer', 'nope');
  assert.match(unknown.stderr, /no transfer "nope".*known: 50-root, 60-uki, 70-dir/);

  // An origin that is not a prefix of Path= is refused before anything is written.
  await writeFile(conf, 'origin = https://mirror.example.net/\n');
  await rm(join(root, 'run'), { recursive: true });
  const mismatch = await run();
  assert.equal(mismatch.status, 2);
  assert.match(
    mismatch.stderr,
    /Path=https:\/\/updates\.example\.org\/os\/%w\/%a\/ is not under the configured origin https:\/\/mirror\.example\.net\//,
  );
  await assert.rejects(stat(join(root, 'run/sysupdate.d')));

  // An admin drop-in that moves Path= is honoured when computing the redirect.
  await writeFile(conf, 'origin = https://mirror.example.net/\n');
  await mkdir(join(root, 'etc/sysupdate.d/50-root.transfer.d'), { recursive: true });
  await writeFile(
    join(root, 'etc/sysupdate.d/50-root.transfer.d/10-mirror.conf'),
    '[Source]\nPath=https://mirror.example.net/pub/%w/\n',
  );
  const viaMirror = await run('--transfer', '50-root', '--listen', '127.0.0.1:4000');
  assert.equal(viaMirror.status, 0, viaMirror.stderr);
  assert.match(await readFile(dropin, 'utf8'), /Path=http:\/\/127\.0\.0\.1:4000\/pub\/%w\/\n/);

  const removed = spawnSync(process.execPath, [CLI, 'redirect', '--root', root, '--remove'], {
    encoding: 'utf8',
    timeout: 10_000,
  });
  assert.equal(removed.status, 0, removed.stderr);
  await assert.rejects(stat(join(root, 'run/sysupdate.d/50-root.transfer.d')), 'drop-in directory removed');
});

test('deltad redirect --remove: a transfer name with a path in it is refused, nothing outside run/sysupdate.d is removed', async (t) => {
  const root = await tmpDir(t, 'daemon');
  const vendor = join(root, 'usr/lib/sysupdate.d/50-root.transfer.d/50-deltad.conf');
  await mkdir(join(root, 'usr/lib/sysupdate.d/50-root.transfer.d'), { recursive: true });
  await writeFile(vendor, '[Source]\nPath=https://updates.example.org/os/\n');
  const stream = { write: () => true } as unknown as NodeJS.WritableStream;
  for (const name of ['../../usr/lib/sysupdate.d/50-root', '..', '.', 'a/b', '']) {
    const parsed = parseArgs({
      args: ['--root', root, '--remove', '--transfer', name],
      options: redirect.options,
      allowPositionals: true,
    });
    await assert.rejects(
      Promise.resolve().then(() =>
        redirect.run({
          values: parsed.values as Record<string, string | boolean | string[] | undefined>,
          positionals: [],
          interactive: false,
          stdout: stream,
          stderr: stream,
        }),
      ),
      (err: Error) => err instanceof UsageError && /transfer name/.test(err.message),
      JSON.stringify(name),
    );
  }
  assert.match(
    await readFile(vendor, 'utf8'),
    /Path=https:\/\/updates\.example\.org\/os\//,
    'the drop-in outside run/sysupdate.d is still there',
  );
});
