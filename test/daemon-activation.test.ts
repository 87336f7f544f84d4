// The real daemon process under systemd-socket-activate: the first connection
// starts it on the inherited socket (fd 3, named "http"), it reports READY and
// STATUS over a real notify socket, and exits by itself when idle.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { REPO_ROOT } from './helpers/repo.js';
import { startNotifyListener } from './helpers/notify-listener.js';
import { startOrigin } from './helpers/origin.js';
import { requireTool } from './helpers/sysupdate-client.js';
import { tmpDir } from './helpers/tmp.js';

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  await new Promise((r) => srv.close(r));
  return port;
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('socket activation: first connection starts the daemon on fd 3; READY/STATUS; idle exit', {
  timeout: 60_000,
}, async (t) => {
  const haveActivate = !spawnSync('systemd-socket-activate', ['--help']).error;
  const havePython = !spawnSync('python3', ['--version']).error;
  if (!requireTool(t, haveActivate, 'systemd-socket-activate') || !requireTool(t, havePython, 'python3')) return;
  const dir = await tmpDir(t, 'activation');
  await writeFile(join(dir, 'SHA256SUMS'), `${'a'.repeat(64)}  x.img\n`);
  const origin = await startOrigin({ root: dir });
  t.after(() => origin.close());
  const notify = await startNotifyListener(join(dir, 'notify.sock'));
  t.after(() => notify.close());

  const port = await freePort();
  const child = spawn(
    'systemd-socket-activate',
    [
      '-l',
      `127.0.0.1:${port}`,
      '--fdname=http',
      '-E',
      'NOTIFY_SOCKET',
      process.execPath,
      join(REPO_ROOT, 'dist/daemon/cli.js'),
      'serve',
      '--origin',
      `${origin.url}/`,
      '--cache-dir',
      join(dir, 'cache'),
      '--seed-glob',
      join(dir, 'seeds/*.img'),
      '--idle-timeout',
      '2',
    ],
    {
      env: { ...process.env, NOTIFY_SOCKET: notify.path, DELTAD_CONFIG: join(dir, 'none.conf') },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.after(() => void child.kill('SIGKILL'));

  // Listening before anything runs: the activator holds the socket, the daemon has not started.
  await waitFor('the activator', () => (/Listening on 127\.0\.0\.1/.test(stderr) ? true : undefined));
  assert.equal(stdout, '', 'daemon not started before the first connection');

  const started = Date.now();
  const res = await fetch(`http://127.0.0.1:${port}/SHA256SUMS`, { redirect: 'manual' });
  assert.equal(res.status, 307);
  assert.equal(res.headers.get('location'), `${origin.url}/SHA256SUMS`);
  assert.match(stdout, /listening socket-activated fd 3 \(http\)/);
  assert.equal(await (await fetch(`http://127.0.0.1:${port}/healthz`)).text(), 'ok\n');

  await waitFor('READY=1', () => (notify.messages().some((m) => m.startsWith('READY=1')) ? true : undefined));
  const code = await Promise.race([
    exited,
    new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 20_000).unref()),
  ]);
  assert.equal(code, 0, `idle exit with status 0 (stderr: ${stderr})`);
  assert.ok(Date.now() - started >= 2_000, 'not before the idle timeout');
  assert.match(stderr, /stopping: idle for 2 s/);
  assert.ok(!/\x1b\[/.test(stderr), 'no colours in logs');
  await waitFor('STOPPING=1', () => (notify.messages().includes('STOPPING=1') ? true : undefined), 5_000);
});
