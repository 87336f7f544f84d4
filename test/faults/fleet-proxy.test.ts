// Fault classes of the fleet proxy's front door: several Host headers (Node
// keeps only the first in req.headers) are a 400, and an image the proxy
// cannot assemble is a 502 with a one-line reason before any byte, not a
// dropped connection; an image passed through whole is checked against its
// SHA256SUMS entry like at the sidecar.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { mkdir, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { makeReleases, startTestProxy, type Release } from '../helpers/fleet.js';
import { startOrigin, type Origin } from '../helpers/origin.js';
import { tmpDir } from '../helpers/tmp.js';

async function setup(t: TestContext): Promise<{ dir: string; upstream: Origin; releases: Release[]; url: string }> {
  const dir = await tmpDir(t, 'fault-proxy');
  const origin = join(dir, 'origin');
  await mkdir(origin);
  const releases = await makeReleases(origin, 1024 * 1024, 1);
  const upstream = await startOrigin({ root: origin });
  t.after(() => upstream.close());
  const { url } = await startTestProxy(t, upstream.url, join(dir, 'cache'));
  return { dir, upstream, releases, url };
}

/** Raw bytes over one connection; resolves with everything the server sent until it closed (5 s at most). */
function rawExchange(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => s.write(text));
    let got = '';
    s.setTimeout(5000, () => s.destroy());
    s.on('data', (b) => (got += b.toString('latin1')));
    s.on('error', reject);
    s.on('close', () => resolve(got));
  });
}

test('several Host headers are refused with 400, whichever comes first', { timeout: 15_000 }, async (t) => {
  const f = await setup(t);
  const port = Number(new URL(f.url).port);
  for (const hosts of [
    ['127.0.0.1', 'evil.example'],
    ['evil.example', '127.0.0.1'],
    ['x', 'x'],
  ]) {
    const head = hosts.map((h) => `Host: ${h}\r\n`).join('');
    const answer = await rawExchange(port, `GET /SHA256SUMS HTTP/1.1\r\n${head}Connection: close\r\n\r\n`);
    assert.match(answer.split('\r\n')[0], / 400 /, `Host headers ${hosts.join(', ')}`);
    assert.match(answer, /more than one Host header/);
  }
  assert.equal(f.upstream.log.length, 0, 'nothing reached the upstream');
  const one = await rawExchange(port, 'GET /SHA256SUMS HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
  assert.match(one.split('\r\n')[0], / 200 /, 'one Host header is fine');
});

test('an image the proxy cannot assemble is a 502 with the reason, before any body byte', {
  timeout: 30_000,
}, async (t) => {
  const f = await setup(t);
  const [v1] = f.releases;
  // The index is upstream, the image (the only chunk source without a store) is gone.
  await unlink(join(f.dir, 'origin', v1.name));
  const res = await request(`${f.url}${v1.name}`, { headersTimeout: 20_000, bodyTimeout: 20_000 });
  const body = await res.body.text();
  assert.equal(res.statusCode, 502);
  assert.equal(res.headers['content-type'], 'text/plain; charset=utf-8');
  assert.match(body, new RegExp(`^deltad proxy: cannot assemble \\S*${v1.name.replace('.', '\\.')}: .+\\n$`));
  assert.equal(body.split('\n').length, 2, 'one line');
  // A range of it too.
  const part = await request(`${f.url}${v1.name}`, { headers: { range: 'bytes=100-199' }, headersTimeout: 20_000 });
  await part.body.text();
  assert.equal(part.statusCode, 502);
});

test('an image without an index passes through whole, checked against SHA256SUMS: a replaced one is cut short', {
  timeout: 30_000,
}, async (t) => {
  const f = await setup(t);
  const [v1] = f.releases;
  await unlink(join(f.dir, 'origin', `${v1.name}.caibx`));
  const fetchAll = async () => {
    const res = await request(`${f.url}${v1.name}`, { headersTimeout: 10_000, bodyTimeout: 10_000 });
    const parts: Buffer[] = [];
    let cut = false;
    try {
      for await (const p of res.body) parts.push(p as Buffer);
    } catch {
      cut = true;
    }
    return { status: res.statusCode, body: Buffer.concat(parts), cut };
  };
  const good = await fetchAll();
  assert.equal(good.status, 200);
  assert.ok(!good.cut && good.body.equals(v1.data), 'the listed image passes whole');
  const other = Buffer.from(v1.data);
  other[100] ^= 1;
  await writeFile(join(f.dir, 'origin', v1.name), other);
  const bad = await fetchAll();
  assert.equal(bad.status, 200);
  assert.ok(bad.cut && bad.body.length < other.length, `cut after ${bad.body.length} of ${other.length} bytes`);
});
