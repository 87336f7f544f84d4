// HTTP/2 to an origin that offers it over TLS: once the origin is known to speak
// h2, requests share one connection and run as concurrent streams, not one per
// round trip (undici's default pipelining of 1 made store mode at 40 ms as slow as
// casync's one-at-a-time requests).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createSecureServer } from 'node:http2';
import { createServer as createHttpsServer } from 'node:https';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { makeTestCa } from '../bench/tls.js';
import { HttpClient } from '../lib/fetch/http-client.js';
import { tmpDir } from './helpers/tmp.js';

const hasOpenssl = spawnSync('openssl', ['version'], { stdio: 'pipe' }).status === 0;

test('an HTTP/2 origin gets many streams in flight on one connection', { timeout: 30_000 }, async (t) => {
  if (!hasOpenssl) return t.skip('openssl not installed');
  const dir = await tmpDir(t, 'h2');
  const ca = makeTestCa(join(dir, 'ca'));
  let open = 0;
  let maxOpen = 0;
  const sessions = new Set<unknown>();
  const server = createSecureServer({ key: readFileSync(ca.key), cert: readFileSync(ca.cert) }, (req, res) => {
    sessions.add(req.stream.session);
    open++;
    maxOpen = Math.max(maxOpen, open);
    // Every answer takes a round trip of 100 ms.
    setTimeout(() => {
      open--;
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.end(Buffer.alloc(1000, 7));
    }, 100);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const url = `https://127.0.0.1:${(server.address() as { port: number }).port}/x`;
  const http = new HttpClient({ caFile: ca.caCert });
  t.after(() => http.close());
  await http.getBuffer(url); // the origin is now known to speak h2
  const started = Date.now();
  const answers = await Promise.all(Array.from({ length: 40 }, () => http.getBuffer(url)));
  const ms = Date.now() - started;
  assert.ok(answers.every((a) => a.status === 200 && a.body.length === 1000));
  assert.ok(maxOpen >= 20, `at most ${maxOpen} streams were open at once`);
  assert.ok(ms < 40 * 100 * 0.25, `40 answers of 100 ms took ${ms} ms`);
  assert.ok(sessions.size <= 2, `${sessions.size} connections`);
});

test('a burst to an https origin not known yet makes one connection, shared once it speaks HTTP/2', {
  timeout: 30_000,
}, async (t) => {
  if (!hasOpenssl) return t.skip('openssl not installed');
  const dir = await tmpDir(t, 'h2-first');
  const ca = makeTestCa(join(dir, 'ca'));
  let connections = 0;
  const server = createSecureServer({ key: readFileSync(ca.key), cert: readFileSync(ca.cert) }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    res.end(Buffer.alloc(100, 1));
  });
  server.on('secureConnection', () => connections++);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const base = `https://127.0.0.1:${(server.address() as { port: number }).port}`;
  const http = new HttpClient({ caFile: ca.caCert });
  t.after(() => http.close());
  // As a release's preparation asks: several files at once, before any connection exists.
  const answers = await Promise.all(['a', 'b', 'c', 'd', 'e', 'f'].map((p) => http.getBuffer(`${base}/${p}`)));
  assert.ok(answers.every((a) => a.status === 200 && a.body.length === 100));
  assert.equal(connections, 1, `${connections} TLS connections for the burst`);
});

test('an https origin without HTTP/2 answers a burst on HTTP/1.1 connections', { timeout: 30_000 }, async (t) => {
  if (!hasOpenssl) return t.skip('openssl not installed');
  const dir = await tmpDir(t, 'h1-tls');
  const ca = makeTestCa(join(dir, 'ca'));
  const versions = new Set<string>();
  // node:https offers no 'h2' in ALPN: a TLS origin that speaks HTTP/1.1 only.
  const server = createHttpsServer({ key: readFileSync(ca.key), cert: readFileSync(ca.cert) }, (req, res) => {
    versions.add(req.httpVersion);
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.end(Buffer.alloc(100, 2));
    }, 50);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const base = `https://127.0.0.1:${(server.address() as { port: number }).port}`;
  const http = new HttpClient({ caFile: ca.caCert });
  t.after(() => http.close());
  for (let round = 0; round < 2; round++) {
    const answers = await Promise.all(Array.from({ length: 8 }, (_, i) => http.getBuffer(`${base}/${round}-${i}`)));
    assert.ok(
      answers.every((a) => a.status === 200 && a.body.length === 100),
      `round ${round}`,
    );
  }
  assert.deepEqual([...versions], ['1.1']);
});
