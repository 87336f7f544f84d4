// Idle exit loses no request. The real daemon runs under systemd-socket-activate
// in a restart loop (as systemd restarts deltad.service on the next
// connection): the listening socket stays open across instances, so a
// connection that arrives while one instance exits waits in the backlog for the
// next. 60 curl requests spaced around the 0.5 s idle timeout must all get their
// answer (never a 503, never a dropped connection) and all be logged; a delta
// download in between must not warn about too many listeners.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { REPO_ROOT } from './helpers/repo.js';
import { startOrigin } from './helpers/origin.js';
import { makeReleases } from './helpers/fleet.js';
import { requireTool, run, SYSTEMD_PULL, systemdPull } from './helpers/sysupdate-client.js';
import { tmpDir } from './helpers/tmp.js';

const IDLE_S = 0.5;
const REQUESTS = 60;

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  await new Promise((r) => srv.close(r));
  return port;
}

test('idle exit: 60 requests spaced around the idle timeout all answered and logged, none 503', {
  timeout: 240_000,
}, async (t) => {
  const haveActivate = !spawnSync('systemd-socket-activate', ['--help']).error;
  if (!requireTool(t, haveActivate, 'systemd-socket-activate')) return;
  if (!requireTool(t, Boolean(SYSTEMD_PULL), 'systemd-pull')) return;
  const dir = await tmpDir(t, 'idle');
  const originDir = join(dir, 'origin');
  const seedDir = join(dir, 'seeds');
  await Promise.all([mkdir(originDir), mkdir(seedDir)]);
  const releases = await makeReleases(originDir, 1024 * 1024, 2);
  await copyFile(join(originDir, 'os_1.img'), join(seedDir, 'os_1.img'));
  const origin = await startOrigin({ root: originDir });
  t.after(() => origin.close());
  await writeFile(join(dir, 'empty.conf'), '');

  const port = await freePort();
  const serve = [
    process.execPath,
    join(REPO_ROOT, 'dist/daemon/cli.js'),
    'serve',
    '--origin',
    `${origin.url}/`,
    '--cache-dir',
    join(dir, 'cache'),
    '--seed-glob',
    join(seedDir, '*.img'),
    '--idle-timeout',
    String(IDLE_S),
  ];
  // The inner sh sets LISTEN_PID to its own pid and becomes the daemon, so each instance takes the socket.
  const loop = 'while :; do sh -c \'LISTEN_PID=$$ exec "$@"\' deltad "$@"; done';
  // systemd-socket-activate passes on only the variables named with -E.
  const activate = [
    '-l',
    `127.0.0.1:${port}`,
    '--fdname=http',
    '-E',
    'DELTAD_CONFIG',
    'sh',
    '-c',
    loop,
    'loop',
    ...serve,
  ];
  const child = spawn('systemd-socket-activate', activate, {
    env: { ...process.env, DELTAD_CONFIG: join(dir, 'empty.conf') },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  // The loop and the daemon it runs share one process group, ended by its id.
  t.after(() => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {}
  });
  // The activator listens first and starts the loop on the first connection.
  const end = Date.now() + 15_000;
  while (!/Listening on 127\.0\.0\.1/.test(stderr) && Date.now() < end) await new Promise((r) => setTimeout(r, 50));

  const url = `http://127.0.0.1:${port}`;
  const results: string[] = [];
  // Short gaps keep an instance busy; the others are just below or above the idle timeout (curl's start-up
  // adds a few ms), so those requests land in the instant an instance decides to exit.
  const idleMs = IDLE_S * 1000;
  const gaps = [150, idleMs - 8, 250, idleMs + 3, 150, idleMs - 3, 200, idleMs + 10, idleMs];
  for (let i = 0; i < REQUESTS; i++) {
    const path = i % 2 ? '/healthz' : `/SHA256SUMS?n=${i}`;
    const curl = ['-sS', '-o', '/dev/null', '--max-time', '15', '-w', '%{http_code}', `${url}${path}`];
    const r = await run('curl', curl, 20_000);
    results.push(`${path} ${r.code === 0 ? r.stdout : `curl exit ${r.code}: ${r.stderr.trim()}`}`);
    if (i === REQUESTS / 2) {
      const out = join(dir, 'os_2.img');
      const sha = createHash('sha256').update(releases[1].data).digest('hex');
      const pulled = await systemdPull(`${url}/os_2.img`, out, sha);
      assert.equal(pulled.code, 0, pulled.stderr);
      assert.ok((await readFile(out)).equals(releases[1].data));
    }
    await new Promise((r) => setTimeout(r, gaps[i % gaps.length]));
  }
  assert.match(stdout, /listening socket-activated fd 3 \(http\)/, stderr);
  const bad = results.filter((r) => !/ (200|307)$/.test(r));
  assert.deepEqual(bad, [], `${bad.length} of ${REQUESTS} requests failed`);
  const exits = (stderr.match(/stopping: idle for/g) ?? []).length;
  assert.ok(exits >= 10, `the daemon exited idle ${exits} times during the run`);
  t.diagnostic(`${exits} idle exits during ${REQUESTS} requests`);
  for (let i = 0; i < REQUESTS; i += 2) {
    assert.match(stderr, new RegExp(`GET /SHA256SUMS\\?n=${i} 307`), `request ${i} logged`);
  }
  const leaks = stderr.split('\n').filter((l) => /MaxListeners/.test(l));
  assert.deepEqual(leaks, [], 'no MaxListenersExceededWarning');
});
