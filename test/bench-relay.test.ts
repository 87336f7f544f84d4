// The benchmarks' link shaper (bench/relay.ts) and TLS origin (bench/tls.ts +
// bench/nginx.ts): bytes arrive intact and in order on every connection,
// half-closes pass through, the shared rate really limits all connections
// together (a lower bound only: a loaded machine can only make it slower), and
// nginx serves https with HTTP/2 that curl negotiates through the relay.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { parseDuration, parseRate, startRelay } from '../bench/relay.js';
import { makeTestCa } from '../bench/tls.js';
import { startNginx } from '../bench/nginx.js';
import { tmpDirSync } from './helpers/tmp.js';
import { seededBytes } from './helpers/images.js';

/** An echo server that answers "bye" after the client's end, then ends. */
async function echoServer(): Promise<net.Server> {
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('data', (d) => s.write(d));
    s.on('end', () => s.end('bye'));
    s.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return server;
}

function roundTrip(port: number, payload: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const c = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => c.end(payload));
    const parts: Buffer[] = [];
    c.on('data', (d: Buffer) => parts.push(d));
    c.on('end', () => resolve(Buffer.concat(parts)));
    c.on('error', reject);
    c.setTimeout(30_000, () => reject(new Error('relay round trip timed out')));
  });
}

test('parseRate and parseDuration read what people type', () => {
  assert.equal(parseRate('100mbit'), 100e6);
  assert.equal(parseRate('5Mbit'), 5e6);
  assert.equal(parseRate('12500kB'), 100e6);
  assert.equal(parseRate('none'), 0);
  assert.throws(() => parseRate('fast'), /rate "fast"/);
  assert.equal(parseDuration('40ms'), 40);
  assert.equal(parseDuration('0.1s'), 100);
});

test('relay: concurrent connections arrive intact, half-close passes, the rate is shared', async () => {
  const server = await echoServer();
  const rateBitsPerS = 20e6;
  const relay = await startRelay({
    to: { host: '127.0.0.1', port: (server.address() as net.AddressInfo).port },
    shape: { rateBitsPerS, rttMs: 20 },
  });
  try {
    const payloads = [0, 1, 2].map((i) => seededBytes(512 * 1024, `relay-payload:${i}`));
    const started = performance.now();
    const answers = await Promise.all(payloads.map((p) => roundTrip(relay.port, p)));
    const seconds = (performance.now() - started) / 1000;
    answers.forEach((a, i) => {
      assert.equal(a.length, payloads[i].length + 3, `connection ${i}: length`);
      assert.ok(a.subarray(0, payloads[i].length).equals(payloads[i]), `connection ${i}: bytes differ`);
      assert.equal(a.subarray(payloads[i].length).toString(), 'bye', `connection ${i}: reply after the half-close`);
    });
    // 1.5 MiB each way through one 20 Mbit/s link takes at least 0.63 s; per-connection shaping would allow 0.21 s.
    const floor = (3 * 512 * 1024 * 8) / rateBitsPerS;
    assert.ok(
      seconds >= floor * 0.9,
      `3 × 512 KiB took ${seconds.toFixed(2)} s, below the shared link's ${floor.toFixed(2)} s`,
    );
    const s = relay.stats();
    assert.equal(s.connections, 3);
    assert.equal(s.up, 3 * 512 * 1024);
    assert.equal(s.down, 3 * (512 * 1024 + 3));
  } finally {
    await relay.close();
    server.close();
  }
});

test('TLS origin: nginx serves https with HTTP/2 through the relay, curl verifies it with the test CA', (t) => {
  for (const tool of ['nginx', 'openssl', 'curl']) {
    if (spawnSync('sh', ['-c', `command -v ${tool} || test -x /usr/sbin/${tool}`]).status !== 0) {
      t.skip(`${tool} not installed (scripts/test-deps.sh)`);
      return;
    }
  }
  const dir = tmpDirSync(t, 'tls');
  chmodSync(dir, 0o755); // nginx's worker (an unprivileged user) reads the files
  return (async () => {
    const ca = makeTestCa(join(dir, 'tls'));
    const body = seededBytes(256 * 1024, 'tls-body');
    writeFileSync(join(dir, 'f.bin'), body);
    const port = 20000 + Math.floor(Math.random() * 20000);
    const nginx = startNginx(join(dir, 'nginx'), [
      { port, root: dir, tls: { cert: ca.cert, key: ca.key }, http2: true },
    ]);
    const relay = await startRelay({ to: { host: '127.0.0.1', port }, shape: { rateBitsPerS: 0, rttMs: 10 } });
    try {
      const out = join(dir, 'out.bin');
      // curl runs asynchronously: the relay lives in this process's event loop.
      const curl = (args: string[]) => promisify(execFile)('curl', args, { encoding: 'utf8', timeout: 30_000 });
      const r = await curl([
        '-sS',
        '--fail',
        '--http2',
        '--cacert',
        ca.caCert,
        '-o',
        out,
        '-w',
        '%{http_version}',
        `https://127.0.0.1:${relay.port}/f.bin`,
      ]);
      assert.equal(r.stdout, '2');
      assert.equal(
        createHash('sha256').update(readFileSync(out)).digest('hex'),
        createHash('sha256').update(body).digest('hex'),
      );
      await assert.rejects(
        curl(['-sS', '--http2', '-o', '/dev/null', `https://127.0.0.1:${relay.port}/f.bin`]),
        /SSL certificate|certificate/,
        'curl without the CA must refuse the certificate',
      );
      await new Promise((r) => setTimeout(r, 200));
      const e = nginx.entries().find((x) => x.uri === '/f.bin' && x.status === 200);
      assert.equal(e?.protocol, 'HTTP/2.0');
      assert.equal(e?.bodyBytes, body.length);
    } finally {
      await relay.close();
      nginx.stop();
    }
  })();
});

test('nginx started and stopped many times (as the e2e suite does) leaves no exit listener behind', async (t) => {
  if (spawnSync('sh', ['-c', 'command -v nginx || test -x /usr/sbin/nginx']).status !== 0) {
    t.skip('nginx not installed (scripts/test-deps.sh)');
    return;
  }
  const dir = tmpDirSync(t, 'nginx-runs');
  chmodSync(dir, 0o755);
  const before = process.listenerCount('exit');
  for (let k = 0; k < 12; k++) {
    const free = await echoServer(); // a port nothing listens on once it is closed
    const { port } = free.address() as net.AddressInfo;
    await new Promise((r) => free.close(r));
    startNginx(join(dir, `nginx-${k}`), [{ port, root: dir }]).stop();
  }
  assert.equal(process.listenerCount('exit'), before, 'each stop takes its exit listener away');
});
