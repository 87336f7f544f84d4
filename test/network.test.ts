// Real update servers, with the test origin on 127.0.0.1: redirects to a
// mirror (everything, only indexes, only big files, every store chunk), CDN
// quirks (multi-range refused in four ways, coded range bodies, weak and
// changed validators, Accept-Ranges: none), transfer limits (a trickle, the
// stall watchdog), the release's kill switch and the link estimate. Each
// delta case checks the output byte for byte and the bytes received against
// the same fetch from the origin directly.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { extractToFile, planUpdate, type AssembleOptions, type ExtractResult } from '../lib/delta/extract.js';
import { HttpClient, type HttpClientOptions } from '../lib/fetch/http-client.js';
import { RangeFetcher } from '../lib/fetch/range-fetcher.js';
import { RedirectCache, redirectTarget } from '../lib/fetch/redirects.js';
import { inFlightFor } from '../lib/fetch/link-monitor.js';
import { deltaDisabledBy } from '../lib/fetch/release-policy.js';
import { startOrigin, type Origin } from './helpers/origin.js';
import { tmpDir } from './helpers/tmp.js';
import { makeDeltaFixture, requireCasync, type DeltaFixture } from './helpers/delta-images.js';

let fx: DeltaFixture;
let origin: Origin;
let mirror: Origin;
let work: string;
let casync = true;
/** Bytes and requests of the direct fetch per mode, the baseline of every redirected or quirky case. */
const direct: Record<string, ExtractResult> = {};

before(async (t) => {
  casync = requireCasync(t as unknown as { skip: (m: string) => void });
  if (!casync) return;
  fx = await makeDeltaFixture(t, 2 * 1024 * 1024);
  [origin, mirror] = await Promise.all([startOrigin({ root: fx.www }), startOrigin({ root: fx.www })]);
  work = await tmpDir(t, 'network');
  for (const mode of ['range', 'store'] as const) {
    const { opts, http } = setup();
    try {
      direct[mode] = await extractToFile(`${origin.url}/v2.caibx`, join(work, `direct-${mode}.img`), { ...opts, mode });
    } finally {
      await http.close();
    }
  }
});
after(async () => {
  await Promise.all([origin?.close(), mirror?.close()]);
});

let n = 0;
interface Setup {
  out: string;
  http: HttpClient;
  opts: AssembleOptions & { http: HttpClient };
  warnings: string[];
}

function setup(client: HttpClientOptions = {}): Setup {
  for (const o of [origin, mirror]) {
    o.ranges = 'multi';
    o.redirect = undefined;
    o.validators = 'strong';
    o.codedRanges = false;
    o.headers = undefined;
    o.clearFaults();
    o.log.length = 0;
  }
  const http = new HttpClient({ retryBaseMs: 5, timeoutMs: 3000, attempts: 3, ...client });
  const warnings: string[] = [];
  return {
    out: join(work, `out${++n}.img`),
    http,
    warnings,
    opts: {
      http,
      seeds: [{ path: fx.v1Path }],
      cacheDir: join(work, 'cache'),
      rangeUrl: `${origin.url}/v2.img`,
      stores: [`${origin.url}/v2.castr`],
      blockPack: false,
      sha256: sha(fx.v2),
      onWarning: (m) => warnings.push(m),
    },
  };
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function assertDelta(r: ExtractResult, out: string, mode: 'range' | 'store', what: string): Promise<void> {
  assert.ok((await readFile(out)).equals(fx.v2), `${what}: identical bytes`);
  assert.equal(r.mode, mode, what);
  assert.ok(r.fromSeeds > fx.v2.length / 2, `${what}: a delta (${r.fromSeeds} bytes from the seed)`);
  const base = direct[mode].networkBytes;
  assert.ok(r.networkBytes <= base * 1.01, `${what}: ${r.networkBytes} bytes received, direct ${base} (< 1% more)`);
}

for (const [name, match] of [
  ['everything', undefined],
  ['only the index', (p: string) => p.endsWith('.caibx')],
  ['only the image and chunks', (p: string) => p.endsWith('.img') || p.endsWith('.cacnk')],
] as const) {
  test(`redirect of ${name} to a mirror: range and store mode, a delta, redirect targets cached`, async (t) => {
    if (!casync) return t.skip('casync not installed');
    for (const mode of ['range', 'store'] as const) {
      const { out, http, opts } = setup();
      origin.redirect = { to: mirror.url, match, status: mode === 'range' ? 302 : 307 };
      try {
        const r = await extractToFile(`${origin.url}/v2.caibx`, out, { ...opts, mode });
        await assertDelta(r, out, mode, `${name}, ${mode}`);
        const redirected = origin.log.filter((e) => e.status === 302 || e.status === 307);
        assert.ok(redirected.length > 0, 'the origin redirected');
        assert.ok(mirror.log.length > 0, 'the mirror served');
        if (mode === 'range' && match?.('/v2.img') !== false) {
          assert.ok(
            mirror.log.some((e) => e.path === '/v2.img' && e.range),
            'ranges went to the mirror',
          );
          // Later range requests of the update go straight to the mirror.
          const f = new RangeFetcher(http, `${origin.url}/v2.img`, fx.v2.length);
          for (let k = 0; k < 3; k++) await f.fetch([{ start: k * 1000, end: k * 1000 + 10 }], () => {});
          const trips = origin.log.filter((e) => e.path === '/v2.img').length;
          assert.equal(trips, 1, 'one trip to the redirector for all ranges');
          assert.equal(mirror.log.filter((e) => e.path === '/v2.img' && e.status === 206).length, 4);
        }
        if (mode === 'store' && match?.('/x.cacnk') !== false) {
          const chunks = origin.log.filter((e) => e.path.endsWith('.cacnk')).length;
          const missing = r.networkRequests;
          // The first chunk asks the redirector (the others of its shape wait); its prefix rule sends the rest on.
          assert.ok(chunks <= 1, `${chunks} chunk requests at the redirector, of ${missing}`);
        }
      } finally {
        await http.close();
      }
    }
  });
}

test('a mirror that refuses ranges is an origin without ranges: auto mode takes the store', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const { out, http, opts } = setup();
  origin.redirect = { to: mirror.url, match: (p) => p.endsWith('.img') };
  mirror.ranges = 'none';
  try {
    const r = await extractToFile(`${origin.url}/v2.caibx`, out, { ...opts, mode: 'auto' });
    await assertDelta(r, out, 'store', 'mirror without ranges');
    assert.ok(
      mirror.log.some((e) => e.path === '/v2.img' && e.status === 200),
      'the mirror answered the probe: 200',
    );
  } finally {
    await http.close();
  }
});

test('redirect policy: hop limit, https to http, other schemes, relative locations, credentials', async () => {
  assert.equal(redirectTarget('http://a/x/y', '../z?q=1#f', 0, 10), 'http://a/z?q=1');
  assert.throws(() => redirectTarget('https://a/x', 'http://b/x', 0, 10), /from https down to http/);
  assert.throws(() => redirectTarget('http://a/x', 'file:///etc/passwd', 0, 10), /file:/);
  assert.throws(() => redirectTarget('http://a/x', undefined, 0, 10), /without a Location/);
  assert.throws(() => redirectTarget('http://a/x', 'http://b/', 10, 10), /more than 10 redirects/);
  const cache = new RedirectCache({ cacheMs: 1000 });
  cache.learn('http://a/store/ab/1.cacnk', 'http://m/pub/store/ab/1.cacnk', 0);
  const guess = cache.lookup('http://a/store/cd/2.cacnk', 1);
  assert.deepEqual(guess, { url: 'http://m/pub/store/cd/2.cacnk', guessed: true });
  assert.equal(cache.lookup('http://a/SHA256SUMS', 1), undefined, 'a rule applies only to names like the one learned');
  assert.equal(cache.lookup('http://a/store/cd/2.cacnk', 2000), undefined, 'entries expire');
  if (!casync) return;
  // A loop is cut after 10 hops with a clear error; nothing is written.
  const { out, http, opts } = setup({ attempts: 1 });
  origin.redirect = { to: origin.url };
  try {
    const loop = extractToFile(`${origin.url}/v2.caibx`, out, { ...opts, mode: 'range' });
    await assert.rejects(loop, (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_DELTAD_REDIRECT');
      assert.match(err.message, /more than 10 redirects/);
      return true;
    });
    assert.equal(origin.log.length, 11);
  } finally {
    await http.close();
  }
  // Authorization does not follow a redirect to another host.
  origin.log.length = 0;
  origin.redirect = { to: mirror.url };
  const http2 = new HttpClient({ attempts: 1 });
  try {
    const res = await http2.request(`${origin.url}/v2.caibx`, { headers: { authorization: 'Bearer x' } });
    await res.body.dump();
    assert.equal(res.statusCode, 200);
    assert.equal(res.url, `${mirror.url}/v2.caibx`);
    assert.deepEqual(
      origin.log.map((e) => e.requestHeaders.authorization),
      ['Bearer x'],
    );
    assert.deepEqual(
      mirror.log.map((e) => e.requestHeaders.authorization),
      [undefined],
      'the mirror got one request, without the credentials',
    );
  } finally {
    await http2.close();
  }
});

for (const ranges of ['single', 'first-only', 'reject-multi', 'ignore-multi'] as const) {
  test(`multi-range ${ranges}: single ranges instead, still a delta`, async (t) => {
    if (!casync) return t.skip('casync not installed');
    const { out, http, opts, warnings } = setup();
    origin.ranges = ranges;
    try {
      const plan = await planUpdate(fx.index, { ...opts, mode: 'range' });
      const single = plan.modes.find((m) => m.mode === 'range-single')!;
      const r = await extractToFile(fx.index, out, { ...opts, mode: 'range' });
      assert.ok((await readFile(out)).equals(fx.v2));
      assert.ok(r.fromSeeds > fx.v2.length / 2);
      const fellBack = warnings.some((w) => /single-range/.test(w)) || plan.rangeSupport?.multi === false;
      assert.ok(fellBack, warnings.join('\n'));
      // The refused multi-range attempt costs at most its first request's bytes.
      const firstMulti = origin.log.find((e) => e.range?.includes(','))?.bytes ?? 0;
      const limit = single.bytes * 1.01 + firstMulti;
      assert.ok(r.networkBytes <= limit, `${r.networkBytes} bytes, single-range plan ${single.bytes}`);
    } finally {
      await http.close();
    }
  });
}

test('coded range bodies are never image bytes: range mode fails clearly, auto mode uses the store', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const { out, http, opts } = setup();
  origin.codedRanges = true;
  try {
    await assert.rejects(extractToFile(fx.index, out, { ...opts, mode: 'range' }), /Content-Encoding gzip/);
    const r = await extractToFile(`${origin.url}/v2.caibx`, out, { ...opts, mode: 'auto' });
    await assertDelta(r, out, 'store', 'coded ranges, auto');
    const plan = await planUpdate(fx.index, { ...opts, mode: 'auto' });
    assert.deepEqual(plan.rangeSupport, { ranges: false, multi: false }, 'the probe found the coded answer');
  } finally {
    await http.close();
  }
});

test('Accept-Ranges: none: named in range mode, auto mode takes the store', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const { out, http, opts } = setup();
  origin.ranges = 'none';
  try {
    await assert.rejects(extractToFile(fx.index, out, { ...opts, mode: 'range' }), /does not serve byte ranges/);
    const f = new RangeFetcher(http, `${origin.url}/v2.img`, fx.v2.length);
    await assert.rejects(
      f.fetch([{ start: 0, end: 10 }], () => {}),
      /Accept-Ranges: none/,
    );
    const r = await extractToFile(`${origin.url}/v2.caibx`, out, { ...opts, mode: 'auto' });
    await assertDelta(r, out, 'store', 'Accept-Ranges none, auto');
  } finally {
    await http.close();
  }
});

test('validators: If-Range with a strong ETag or Last-Modified; an image that changes fails cleanly', async (t) => {
  if (!casync) return t.skip('casync not installed');
  for (const validators of ['strong', 'weak', 'none'] as const) {
    const { out, http, opts } = setup();
    origin.validators = validators;
    try {
      const r = await extractToFile(`${origin.url}/v2.caibx`, out, { ...opts, mode: 'range' });
      await assertDelta(r, out, 'range', `${validators} validators`);
      // Later requests carry If-Range with the validator of the first answer, and get their ranges.
      const f = new RangeFetcher(http, `${origin.url}/v2.img`, fx.v2.length);
      for (let k = 0; k < 3; k++) {
        await f.fetch(
          [
            { start: k * 1000, end: k * 1000 + 10 },
            { start: 50_000, end: 50_010 },
          ],
          () => {},
        );
      }
      const last = origin.log.slice(-3);
      assert.ok(
        last.every((e) => e.status === 206),
        `${validators}: every range answered: ${JSON.stringify(last)}`,
      );
    } finally {
      await http.close();
    }
  }
  // The image is replaced (same size) between two range requests.
  const dir = await mkdtemp(join(work, 'changing-'));
  const data = Buffer.alloc(256 * 1024, 1);
  await writeFile(join(dir, 'x.img'), data);
  const o = await startOrigin({ root: dir });
  const http = new HttpClient({ attempts: 1 });
  try {
    for (const validators of ['strong', 'weak'] as const) {
      o.validators = validators;
      const f = new RangeFetcher(http, `${o.url}/x.img`, data.length);
      await f.fetch([{ start: 0, end: 100 }], () => {});
      await writeFile(join(dir, 'x.img'), Buffer.alloc(data.length, validators === 'strong' ? 2 : 3));
      await utimes(join(dir, 'x.img'), new Date(), new Date(Date.now() + 5000 * (validators === 'strong' ? 1 : 2)));
      let got = 0;
      const second = f.fetch([{ start: 100, end: 200 }], (_, b) => (got += b.length));
      await assert.rejects(second, (err: Error & { code?: string }) => {
        assert.equal(err.code, 'ERR_DELTAD_IMAGE_CHANGED');
        assert.match(err.message, /changed on the server during the update \(If-Range/);
        return true;
      });
      assert.equal(got, 0, 'no byte of the new image was passed on');
      assert.equal(o.log[o.log.length - 1].status, 200);
    }
  } finally {
    await http.close();
    await o.close();
  }
});

test('a trickle is cut by the low-speed limit and retried; an endless one fails naming URL and rate', {
  timeout: 30_000,
}, async (t) => {
  if (!casync) return t.skip('casync not installed');
  const limits = { lowSpeedLimit: 1024, lowSpeedTimeMs: 1500 };
  {
    const { out, http, opts } = setup({ limits });
    origin.fault({ kind: 'trickle', path: '/v2.img', rangedOnly: true, intervalMs: 2000 });
    try {
      const started = Date.now();
      const r = await extractToFile(`${origin.url}/v2.caibx`, out, { ...opts, mode: 'range' });
      assert.ok(Date.now() - started < 10_000, `finished in ${Date.now() - started} ms`);
      await assertDelta(r, out, 'range', 'after a trickle');
    } finally {
      await http.close();
    }
  }
  {
    const { out, http, opts } = setup({ limits, attempts: 2 });
    origin.fault({ kind: 'trickle', path: '/v2.img', rangedOnly: true, intervalMs: 2000, times: Infinity });
    try {
      const started = Date.now();
      const slow = extractToFile(fx.index, out, { ...opts, mode: 'range' });
      await assert.rejects(slow, (err: Error & { code?: string }) => {
        assert.equal(err.code, 'ERR_DELTAD_LOW_SPEED');
        assert.ok(err.message.includes(`${origin.url}/v2.img`), err.message);
        assert.match(err.message, /transfer too slow: [\d.]+ B\/s for 2 s \(limit 1024 B\/s\)/);
        return true;
      });
      assert.ok(Date.now() - started < 15_000, `gave up after ${Date.now() - started} ms`);
    } finally {
      await http.close();
    }
  }
  {
    // Without the low-speed limit, extract's stall watchdog ends it.
    const { out, http, opts } = setup({ limits: { lowSpeedLimit: 0 } });
    origin.fault({ kind: 'trickle', path: '/v2.img', rangedOnly: true, intervalMs: 60_000, times: Infinity });
    try {
      const stalled = extractToFile(fx.index, out, { ...opts, mode: 'range', stallMs: 1500 });
      await assert.rejects(stalled, (err: Error & { code?: string }) => {
        assert.equal(err.code, 'ERR_DELTAD_STALLED', err.message);
        assert.match(err.message, /out\d+\.img: no progress for 2 s \(\d+ of \d+ bytes done/);
        return true;
      });
    } finally {
      await http.close();
    }
  }
});

test('kill switch: X-KDE-Delta: false on the image stops the delta with a clear error', async (t) => {
  assert.equal(deltaDisabledBy({ 'x-kde-delta': 'false' }), 'x-kde-delta: false');
  assert.equal(deltaDisabledBy({ 'x-kde-delta': 'true' }), undefined);
  assert.equal(deltaDisabledBy({ 'x-deltad-delta': 'FALSE' }), 'x-deltad-delta: FALSE');
  if (!casync) return t.skip('casync not installed');
  const { out, http, opts } = setup();
  origin.headers = (p) => (p === '/v2.img' ? { 'x-kde-delta': 'false' } : undefined);
  try {
    await assert.rejects(extractToFile(fx.index, out, { ...opts, mode: 'range' }), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_DELTAD_DELTA_DISABLED');
      assert.match(err.message, /x-kde-delta: false/);
      return true;
    });
  } finally {
    await http.close();
  }
});

test('link estimate: RTT and throughput measured; requests in flight follow the bandwidth-delay product', async (t) => {
  assert.equal(inFlightFor(undefined, 65536, { min: 4, max: 64 }), 4);
  assert.equal(inFlightFor({ rttMs: 100, bytesPerSec: 10 * 1024 * 1024 }, 64 * 1024, { min: 4, max: 64 }), 17);
  assert.equal(inFlightFor({ rttMs: 300, bytesPerSec: 100 * 1024 * 1024 }, 64 * 1024, { min: 4, max: 64 }), 64);
  if (!casync) return t.skip('casync not installed');
  const { out, http, opts } = setup();
  try {
    assert.equal(http.linkEstimate(), undefined);
    await extractToFile(fx.index, out, { ...opts, mode: 'store' });
    const link = http.linkEstimate();
    assert.ok(link && link.rttMs > 0 && link.rttMs < 1000, JSON.stringify(link));
    assert.ok(link.bytesPerSec > 100 * 1024, `loopback throughput ${link.bytesPerSec} B/s`);
  } finally {
    await http.close();
  }
});

test('low-speed limit: a reader holding the body back is not a slow server', { timeout: 20_000 }, async (t) => {
  const body = Buffer.alloc(4 * 1024 * 1024, 7);
  const root = await tmpDir(t, 'low-speed');
  await writeFile(join(root, 'body.bin'), body);
  const server = await startOrigin({ root });
  t.after(() => server.close());
  const http = new HttpClient({ attempts: 1, limits: { lowSpeedLimit: 1024, lowSpeedTimeMs: 1000 } });
  try {
    const res = await http.request(`${server.url}/body.bin`);
    let got = 0;
    let first = true;
    for await (const b of res.body) {
      got += (b as Buffer).length;
      // Stop reading for 5 s: the body pauses, nothing arrives, yet the transfer is not too slow.
      if (first) await new Promise((r) => setTimeout(r, 5000));
      first = false;
    }
    assert.equal(got, body.length);
  } finally {
    await http.close();
  }
});
