// The first body byte does not wait for the whole index: the sidecar plans and
// streams the image's first chunks from the start of the .caibx while the rest
// of it downloads. An index that then turns out truncated or malformed fails
// the download cleanly: the client gets fewer bytes than announced, never a
// complete-looking file. A real origin on 127.0.0.1 behind a front server that
// sends the index's first part, holds the rest back, then sends, cuts or
// corrupts it; a plain HTTP client that notes when the first body byte came.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildServer } from '../daemon/server.js';
import { JOIN_QUIET_MS } from '../daemon/assemblies.js';
import { defaultConfig } from '../daemon/config.js';
import { createLogger } from '../daemon/log.js';
import { createNotifier } from '../daemon/notify.js';
import { HEADER_SIZE, ITEM_SIZE } from '../lib/format/caibx.js';
import { startOrigin, type Origin } from './helpers/origin.js';
import { releaseSite, type Release } from './helpers/fleet.js';
import { listenLocal } from './helpers/listen.js';
import { fileTmpDir } from './helpers/tmp.js';

const SIZE = 8 * 1024 * 1024;
/** How long the front holds back the rest of the index after its first part. */
const HOLD_MS = 2_500;

interface Fixture {
  root: string;
  seedDir: string;
  v2: Release;
  caibx: Buffer;
  origin: Origin;
}

const dir = fileTmpDir('arriving-index');
let shared: Promise<Fixture> | undefined;
function fixture(): Promise<Fixture> {
  shared ??= (async () => {
    const { root, seedDir, v2 } = await releaseSite(dir, SIZE);
    const caibx = await readFile(join(root, `${v2.name}.caibx`));
    return { root, seedDir, v2, caibx, origin: await startOrigin({ root }) };
  })();
  return shared;
}

test.after(async () => {
  if (shared) await (await shared).origin.close();
});

type Rest = 'whole' | 'cut' | 'malformed';

/**
 * A front for the origin: the image's index goes out in two parts, its first half of the table at once, then
 * after HOLD_MS the rest as `rest` says (every attempt the same way, so a retry does not mend it); everything
 * else is passed to the origin. `restAt` is when the first attempt's rest went out (ms since the epoch).
 */
async function startFront(
  t: { after(fn: () => Promise<void>): void },
  f: Fixture,
  rest: Rest,
  /** Image requests made after the rest of the index went out wait this long (an assembly still running then). */
  holdImageAfterRestMs = 0,
) {
  const indexPath = `/${f.v2.name}.caibx`;
  const items = (f.caibx.length - HEADER_SIZE - ITEM_SIZE) / ITEM_SIZE;
  const firstPart = HEADER_SIZE + ITEM_SIZE * Math.floor(items / 2);
  const state = { indexGets: 0, restAt: 0, heldImageRequests: 0 };
  const server = http.createServer((req, res) => {
    if (req.url === indexPath && req.method === 'GET') {
      const attempt = state.indexGets++;
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': f.caibx.length });
      res.write(f.caibx.subarray(0, firstPart));
      setTimeout(
        () => {
          if (attempt === 0) state.restAt = Date.now();
          if (rest === 'cut') return void res.destroy();
          let tail = f.caibx.subarray(firstPart);
          if (rest === 'malformed') {
            // The next item's end offset goes back to 1: offsets must strictly increase.
            tail = Buffer.from(tail);
            tail.writeBigUInt64LE(1n, 0);
          }
          res.end(tail);
        },
        attempt === 0 ? HOLD_MS : 50,
      );
      return;
    }
    const forward = (): void => {
      const up = http.request(`${f.origin.url}${req.url}`, { method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    };
    if (holdImageAfterRestMs > 0 && state.restAt > 0 && req.url === `/${f.v2.name}` && req.headers.range) {
      state.heldImageRequests++;
      setTimeout(forward, holdImageAfterRestMs);
    } else forward();
  });
  const url = await listenLocal(t, server);
  return { url, state };
}

async function startSidecar(t: { after(fn: () => Promise<void>): void }, f: Fixture, originUrl: string) {
  const cacheDir = await mkdtemp(join(dir, 'cache-'));
  const logs: string[] = [];
  const log = createLogger({ write: (s: string) => logs.push(s) } as unknown as NodeJS.WritableStream, {});
  const config = {
    ...defaultConfig({}),
    origin: `${originUrl}/`,
    seedGlobs: [join(f.seedDir, '*.img')],
    cacheDir,
    idleTimeout: 0,
  };
  const { app, ctx } = await buildServer(config, { log, notifier: createNotifier({ env: {} }) });
  await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => app.close());
  return { url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}`, ctx, logs };
}

/**
 * A GET as a client sees it: status, Content-Length, the bytes received, when the first body byte came (ms after
 * the request), and whether the body ended cleanly (false: the connection was cut before Content-Length bytes).
 */
interface Got {
  status: number;
  length: number;
  body: Buffer;
  firstByteMs: number;
  ended: boolean;
}
function get(url: string): Promise<Got> {
  const startedAt = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.get(url, (res) => {
      const parts: Buffer[] = [];
      let firstByteMs = -1;
      const done = (ended: boolean) =>
        resolve({
          status: res.statusCode ?? 0,
          length: Number(res.headers['content-length']),
          body: Buffer.concat(parts),
          firstByteMs,
          ended,
        });
      res.on('data', (b: Buffer) => {
        if (firstByteMs < 0) firstByteMs = performance.now() - startedAt;
        parts.push(b);
      });
      res.on('end', () => done(true));
      res.on('error', () => done(false));
      res.on('aborted', () => done(false));
    });
    req.on('error', reject);
    req.setTimeout(40_000, () => req.destroy(new Error('no answer within 40 s')));
  });
}

test('the first body byte goes out from the start of the index, before the rest of it has arrived', {
  timeout: 40_000,
}, async (t) => {
  const f = await fixture();
  const front = await startFront(t, f, 'whole');
  const d = await startSidecar(t, f, front.url);
  const startedAt = Date.now();
  const r = await get(`${d.url}/${f.v2.name}`);
  assert.equal(r.status, 200);
  assert.ok(r.ended, 'the body ended cleanly');
  assert.ok(r.body.equals(f.v2.data), 'byte-identical to the release');
  const restAfterMs = front.state.restAt - startedAt;
  assert.ok(
    r.firstByteMs < restAfterMs,
    `first body byte after ${r.firstByteMs} ms, the rest of the index went out after ${restAfterMs} ms`,
  );
  assert.equal(d.ctx.counters.fallbacks, 0, d.logs.join(''));
  assert.equal(d.ctx.counters.assembliesCompleted, 1);
});

for (const rest of ['cut', 'malformed'] as const) {
  const what = rest === 'cut' ? 'cut short' : 'malformed';
  test(`an index ${what} after its first part: the download fails, never looks complete`, {
    timeout: 40_000,
  }, async (t) => {
    const f = await fixture();
    const front = await startFront(t, f, rest);
    const d = await startSidecar(t, f, front.url);
    const r = await get(`${d.url}/${f.v2.name}`);
    assert.equal(r.status, 200);
    assert.equal(r.length, SIZE);
    assert.ok(r.firstByteMs >= 0 && r.firstByteMs < HOLD_MS, `first body byte after ${r.firstByteMs} ms`);
    assert.ok(!r.ended, `the connection must be cut, got ${r.body.length} bytes: ${d.logs.join('')}`);
    assert.ok(r.body.length < SIZE, `${r.body.length} of ${SIZE} bytes`);
    assert.ok(r.body.equals(f.v2.data.subarray(0, r.body.length)), 'what came is the start of the image');
    assert.equal(d.ctx.counters.assembliesCompleted, 0);
    assert.equal(d.ctx.counters.assemblyFailures, 1, d.logs.join(''));
    const why = rest === 'cut' ? /truncated|closed|terminated|socket/i : /offsets must strictly increase/;
    assert.ok(
      d.logs.some((l) => /assembly failed/.test(l) && why.test(l)),
      d.logs.join(''),
    );
  });
}

test('a burst of requests, some once the whole index is in, shares the one delta the first began from its start', {
  timeout: 40_000,
}, async (t) => {
  const f = await fixture();
  const front = await startFront(t, f, 'whole', 1_500);
  const d = await startSidecar(t, f, front.url);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  // Requests while the rest of the index is held back, each well within JOIN_QUIET_MS of the last (the start of
  // the image is kept for a burst)...
  const early = [get(`${d.url}/${f.v2.name}`)];
  while (front.state.restAt === 0) {
    await sleep(JOIN_QUIET_MS / 2);
    if (front.state.restAt === 0) early.push(get(`${d.url}/${f.v2.name}`));
  }
  // ...and one once the whole index is parsed, while the delta's later ranges are held back.
  await sleep(JOIN_QUIET_MS / 4);
  const late = get(`${d.url}/${f.v2.name}`);
  for (const r of await Promise.all([...early, late])) {
    assert.equal(r.status, 200);
    assert.ok(r.ended && r.body.equals(f.v2.data), 'byte-identical to the release');
  }
  assert.ok(front.state.heldImageRequests > 0, 'the delta was still fetching when the late request came');
  await sleep(200); // the engine's summary follows the last verified byte
  assert.equal(d.ctx.counters.assembliesCompleted, 1, `one delta for all: ${d.logs.join('')}`);
  assert.equal(
    d.logs.filter((l) => /sharing the assembly of an earlier request/.test(l)).length,
    early.length,
    d.logs.join(''),
  );
});
