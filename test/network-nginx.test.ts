// deltad against real nginx servers on 127.0.0.1: one redirecting everything,
// one only the indexes, one only the big files (image, store chunks) to a
// plain mirror; and a TLS + HTTP/2 server whose certificate is signed by a CA
// made for the run (bench/tls.ts, with openssl; trusted through ca-file only). Each case:
// a delta, identical bytes, bytes received within 1% of the direct fetch.
import { test, before, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createServer } from 'node:net';
import { readFile, rm, writeFile, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { extractToFile, type AssembleOptions, type ExtractResult } from '../lib/delta/extract.js';
import { HttpClient, type HttpClientOptions } from '../lib/fetch/http-client.js';
import { makeDeltaFixture, requireCasync, type DeltaFixture } from './helpers/delta-images.js';
import { tmpDir } from './helpers/tmp.js';
import { makeTestCa } from '../bench/tls.js';

const hasNginx = spawnSync('nginx', ['-v'], { stdio: 'pipe' }).status === 0;
const hasOpenssl = spawnSync('openssl', ['version'], { stdio: 'pipe' }).status === 0;

let fx: DeltaFixture;
let dir: string;
let nginx: ChildProcess | undefined;
const ports = { mirror: 0, all: 0, index: 0, big: 0, tls: 0 };
let caFile: string;
let ready = false;
const direct: Record<string, ExtractResult> = {};

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

interface LogLine {
  port: number;
  uri: string;
  status: number;
  bytes: number;
  protocol: string;
  connection: number;
}

async function accessLog(): Promise<LogLine[]> {
  const text = await readFile(join(dir, 'access.log'), 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const [port, uri, status, bytes, protocol, connection] = l.split(' ');
      const num = Number;
      return { port: num(port), uri, status: num(status), bytes: num(bytes), protocol, connection: num(connection) };
    });
}

before(async (t) => {
  if (!hasNginx || !hasOpenssl) return;
  if (!requireCasync(t as unknown as { skip: (m: string) => void })) return;
  // Registered first, so nginx stops before its directory goes.
  (t as TestContext).after(async () => {
    if (nginx && nginx.exitCode === null) {
      nginx.kill('SIGTERM');
      await new Promise((r) => nginx!.once('exit', r));
    }
  });
  fx = await makeDeltaFixture(t, 2 * 1024 * 1024);
  dir = await tmpDir(t, 'nginx');
  // nginx workers run as nobody: they must be able to read the files.
  await Promise.all([chmod(fx.dir, 0o755), chmod(dir, 0o755)]);
  const { caCert, cert, key } = makeTestCa(join(dir, 'tls'));
  caFile = caCert;
  for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort();
  const mirror = `http://127.0.0.1:${ports.mirror}`;
  const temps = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'];
  const temp = temps.map((x) => `${x}_temp_path ${dir}/tmp-${x};`).join(' ');
  await writeFile(
    join(dir, 'nginx.conf'),
    `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 256; }
http {
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000;
  ${temp}
  log_format t '$server_port $uri $status $body_bytes_sent $server_protocol $connection';
  access_log ${dir}/access.log t;
  server { listen 127.0.0.1:${ports.mirror}; root ${fx.www}; max_ranges 10000; }
  server { listen 127.0.0.1:${ports.all}; location / { return 302 ${mirror}$request_uri; } }
  server { listen 127.0.0.1:${ports.index}; root ${fx.www}; max_ranges 10000;
           location ~ \\.caibx$ { return 302 ${mirror}$request_uri; } }
  server { listen 127.0.0.1:${ports.big}; root ${fx.www}; max_ranges 10000;
           location ~ \\.(img|cacnk)$ { return 307 ${mirror}$request_uri; } }
  server { listen 127.0.0.1:${ports.tls} ssl http2; root ${fx.www}; max_ranges 10000;
           ssl_certificate ${cert}; ssl_certificate_key ${key}; }
}
`,
  );
  nginx = spawn('nginx', ['-c', join(dir, 'nginx.conf'), '-p', dir], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  nginx.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  for (let k = 0; k < 100 && !ready; k++) {
    await sleep(50);
    ready = await fetch(`${mirror}/v2.caibx`, { method: 'HEAD' }).then(
      (r) => r.ok,
      () => false,
    );
  }
  if (!ready) throw new Error(`nginx did not start: ${stderr}`);
  for (const mode of ['range', 'store'] as const) direct[mode] = await run(ports.mirror, mode);
});

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
let n = 0;

async function run(
  port: number,
  mode: 'range' | 'store',
  client: HttpClientOptions = {},
  scheme = 'http',
): Promise<ExtractResult> {
  const base = `${scheme}://127.0.0.1:${port}`;
  const http = new HttpClient({ retryBaseMs: 5, attempts: 2, ...client });
  const out = join(dir, `out${++n}.img`);
  const opts: AssembleOptions = {
    http,
    seeds: [{ path: fx.v1Path }],
    cacheDir: join(dir, 'cache'),
    rangeUrl: `${base}/v2.img`,
    stores: [`${base}/v2.castr`],
    mode,
    blockPack: false,
    sha256: sha(fx.v2),
  };
  try {
    const r = await extractToFile(`${base}/v2.caibx`, out, opts);
    assert.ok((await readFile(out)).equals(fx.v2), `${base} ${mode}: identical bytes`);
    assert.ok(r.fromSeeds > fx.v2.length / 2, `${base} ${mode}: a delta`);
    assert.equal(r.mode, mode);
    return r;
  } finally {
    await http.close();
    await rm(out, { force: true });
  }
}

const skip = (t: { skip(m: string): void }): boolean => {
  if (ready) return false;
  t.skip(!hasNginx ? 'nginx not installed' : !hasOpenssl ? 'openssl not installed' : 'casync not installed');
  return true;
};

const WHAT = { all: 'everything', index: 'only indexes', big: 'only the big files' };
for (const which of ['all', 'index', 'big'] as const) {
  test(`nginx redirecting ${WHAT[which]}: range and store mode`, async (t) => {
    if (skip(t)) return;
    for (const mode of ['range', 'store'] as const) {
      const r = await run(ports[which], mode);
      const base = direct[mode].networkBytes;
      assert.ok(r.networkBytes <= base * 1.01, `${which} ${mode}: ${r.networkBytes} bytes received, direct ${base}`);
    }
    const log = await accessLog();
    assert.ok(
      log.some((l) => l.port === ports[which] && (l.status === 302 || l.status === 307)),
      'nginx redirected',
    );
  });
}

test('TLS with a private CA and HTTP/2: trusted through ca-file only; many requests on one connection', async (t) => {
  if (skip(t)) return;
  const before = (await accessLog()).length;
  for (const mode of ['range', 'store'] as const) {
    const r = await run(ports.tls, mode, { caFile }, 'https');
    const base = direct[mode].networkBytes;
    assert.ok(r.networkBytes <= base * 1.01, `https ${mode}: ${r.networkBytes} vs ${base}`);
  }
  const tls = (await accessLog()).slice(before).filter((l) => l.port === ports.tls);
  const protocols = [...new Set(tls.map((l) => l.protocol))];
  assert.ok(tls.length > 10 && tls.every((l) => l.protocol === 'HTTP/2.0'), `HTTP/2 for all: ${protocols}`);
  const chunks = tls.filter((l) => l.uri.endsWith('.cacnk'));
  const connections = new Set(chunks.map((l) => l.connection));
  assert.ok(connections.size <= 2, `${chunks.length} chunk requests on ${connections.size} connections`);
  // HTTP/1.1 still works when HTTP/2 is off.
  await run(ports.tls, 'range', { caFile, http2: false }, 'https');
  const h1 = (await accessLog()).filter((l) => l.port === ports.tls).slice(-1)[0];
  assert.equal(h1.protocol, 'HTTP/1.1');
  // Without the CA file the certificate is not trusted: a clear error, nothing written.
  await assert.rejects(run(ports.tls, 'range', {}, 'https'), /certificate/i);
  // A CA file that is not one fails at start.
  const notCa = { caFile: join(dir, 'nginx.conf') };
  await assert.rejects(async () => run(ports.tls, 'range', notCa, 'https'), /no PEM certificate/);
});
