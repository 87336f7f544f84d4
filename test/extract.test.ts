// End-to-end delta extraction against a real HTTP origin on 127.0.0.1:
// byte ranges (multi and single), casync chunk stores (HTTP and directory),
// every injected fault, lying seeds, resume after an interruption, the ordered
// stream (ranges, cancellation), and never a wrong file in place.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FileHandle } from 'node:fs/promises';
import {
  extractToFile,
  openExtractStream,
  planUpdate,
  type AssembleOptions,
  type ExtractResult,
  type ExtractStream,
} from '../lib/delta/extract.js';
import { Assembler } from '../lib/assemble/assembler.js';
import { OrderedStream } from '../lib/assemble/ordered-stream.js';
import { planChunks } from '../lib/plan/planner.js';
import type { RemoteSource } from '../lib/assemble/remote-source.js';
import { HttpClient } from '../lib/fetch/http-client.js';
import { serializeIndex } from '../lib/format/caibx.js';
import { indexBuffer } from '../lib/chunking/indexer.js';
import { FileError } from '../lib/errors.js';
import { startOrigin, type Origin } from './helpers/origin.js';
import { makeDeltaFixture, requireCasync, TEST_PARAMS, type DeltaFixture } from './helpers/delta-images.js';
import { tmpDir } from './helpers/tmp.js';
import { newProgress } from '../lib/assemble/progress.js';
import { BufferPool, SLAB_BYTES } from '../lib/util/buffer-pool.js';

let fx: DeltaFixture;
let origin: Origin;
let work: string;
let casync = true;

before(async (t) => {
  casync = requireCasync(t as unknown as { skip: (m: string) => void });
  if (!casync) return;
  fx = await makeDeltaFixture(t);
  origin = await startOrigin({ root: fx.www });
  work = await tmpDir(t, 'extract-out');
});
after(async () => {
  await origin?.close();
});

let n = 0;
/** A fresh origin state, output path and fast-retrying client per test. */
function setup(): { out: string; http: HttpClient; opts: AssembleOptions & { http: HttpClient }; warnings: string[] } {
  origin.ranges = 'multi';
  origin.clearFaults();
  origin.log.length = 0;
  const http = new HttpClient({ retryBaseMs: 5, timeoutMs: 1500, attempts: 4 });
  const warnings: string[] = [];
  const out = join(work, `out${++n}.img`);
  return {
    out,
    http,
    warnings,
    opts: {
      http,
      seeds: [{ path: fx.v1Path }],
      cacheDir: join(work, 'cache'),
      rangeUrl: `${origin.url}/v2.img`,
      onWarning: (m) => warnings.push(m),
    },
  };
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
/** Requests for exactly this path (other files next to the image, e.g. a probe for a sidecar, are not counted). */
function served(path: string): { requests: number; bytes: number } {
  const hits = origin.log.filter((e) => e.path === path);
  return { requests: hits.length, bytes: hits.reduce((n, e) => n + e.bytes, 0) };
}

test('range mode with multi-range: identical output, network bytes as planned, few requests', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const { out, http, opts } = setup();
  try {
    const plan = await planUpdate(fx.indexPath, { ...opts, mode: 'range' });
    assert.ok(
      plan.fromSeeds > 0 && plan.fromZero > 0 && plan.fromSelf > 0,
      `plan uses every kind of local source: ${JSON.stringify(plan)}`,
    );
    assert.ok(plan.missingBytes > 100 * 1024 && plan.missingBytes < fx.v2.length / 2);
    assert.deepEqual(plan.rangeSupport, { ranges: true, multi: true });
    origin.log.length = 0;
    const r = await extractToFile(fx.indexPath, out, { ...opts, mode: 'range', sha256: sha(fx.v2) });
    assert.ok((await readFile(out)).equals(fx.v2));
    assert.equal(r.mode, 'range');
    assert.equal(r.fromNetwork, plan.missingBytes);
    assert.equal(r.fromSeeds, plan.fromSeeds);
    assert.equal(r.fromZero + r.fromSelf + r.fromSeeds + r.fromNetwork, fx.v2.length);
    const image = served('/v2.img');
    assert.equal(r.networkBytes, image.bytes, 'bytes counted = bytes the origin sent');
    assert.equal(r.networkRequests, image.requests);
    const rangeCost = plan.modes.find((m) => m.mode === 'range')!;
    assert.ok(
      Math.abs(r.networkBytes - rangeCost.bytes) <= rangeCost.bytes * 0.01,
      `within 1% of the plan (${r.networkBytes} vs ${rangeCost.bytes})`,
    );
    assert.ok(
      origin.log.some((e) => e.range?.includes(',')),
      'used multi-range requests',
    );
    assert.equal(r.sha256, sha(fx.v2));
    assert.ok(!existsSync(join(work, `.out${n}.img.deltad-partial`)), 'partial file renamed away');
    // The seed index was built once and cached: the cache holds an entry now.
    assert.equal((await readdir(join(work, 'cache', 'indexes'))).length, 1);
  } finally {
    await http.close();
  }
});

test('store mode over HTTP and from a directory: casync store chunks, bytes as planned', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const { out, http, opts } = setup();
  try {
    const plan = await planUpdate(fx.index, { ...opts, stores: [`${origin.url}/v2.castr`], mode: 'store' });
    origin.log.length = 0;
    const r = await extractToFile(fx.index, out, { ...opts, stores: [`${origin.url}/v2.castr`], mode: 'store' });
    assert.ok((await readFile(out)).equals(fx.v2));
    assert.equal(r.mode, 'store');
    assert.equal(r.fromNetwork, plan.missingBytes);
    assert.equal(origin.stats('/v2.castr/').requests, plan.missingChunks, 'one GET per missing chunk');
    assert.equal(served('/v2.img').requests, 0);
    // Everything the origin sent counts, the store chunks and the 404 of the block-pack probe alike.
    assert.equal(
      r.networkBytes,
      origin.log.reduce((n, e) => n + e.bytes, 0),
    );

    // Auto mode weighs the options: an HTTP store is costed from sampled compressed sizes (HEAD),
    // a local directory costs no network at all.
    origin.log.length = 0;
    const auto = await planUpdate(fx.index, { ...opts, stores: [`${origin.url}/v2.castr`] });
    const storeCost = auto.modes.find((m) => m.mode === 'store')!;
    const heads = origin.log.filter((e) => e.method === 'HEAD' && e.path.startsWith('/v2.castr/'));
    assert.ok(heads.length > 0 && heads.length <= 8, `sampled ${heads.length} chunks`);
    // Mostly random data: the estimate stays near the uncompressed size (chunks at the zero run's edges do compress).
    assert.ok(
      storeCost.bytes > plan.missingBytes * 0.5 && storeCost.bytes < plan.missingBytes * 1.1,
      `estimate ${storeCost.bytes} for ${plan.missingBytes}`,
    );
    const local = await planUpdate(fx.index, { ...opts, stores: [fx.storeDir] });
    assert.equal(local.chosen, 'store');
    assert.deepEqual(
      local.modes.find((m) => m.mode === 'store'),
      { mode: 'store', bytes: 0, requests: 0 },
    );

    const out2 = `${out}.dir`;
    const r2 = await extractToFile(fx.index, out2, { ...opts, stores: [fx.storeDir], mode: 'store' });
    assert.ok((await readFile(out2)).equals(fx.v2));
    assert.equal(r2.fromNetwork, plan.missingBytes);
  } finally {
    await http.close();
  }
});

test('multi-range refused (416) or answered with one 206 span: falls back to single ranges', async (t) => {
  if (!casync) return t.skip('casync not installed');
  for (const mode of ['reject-multi', 'single'] as const) {
    const { out, http, opts, warnings } = setup();
    origin.ranges = mode;
    try {
      const r = await extractToFile(fx.index, out, { ...opts, mode: 'range' });
      assert.ok((await readFile(out)).equals(fx.v2), mode);
      const multi = origin.log.filter((e) => e.range?.includes(','));
      assert.equal(multi.length, 1, `${mode}: one multi-range attempt, then single ranges`);
      assert.ok(served('/v2.img').requests > 2);
      assert.ok(
        warnings.some((w) => /single-range/.test(w)),
        mode,
      );
      assert.equal(r.networkRequests, served('/v2.img').requests);
    } finally {
      await http.close();
    }
  }
});

test('a server that ignores Range: range mode fails at once, auto mode switches to the store', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const { out, http, opts } = setup();
  try {
    await writeFile(out, 'previous content');
    origin.ranges = 'none';
    await assert.rejects(
      extractToFile(fx.index, out, { ...opts, mode: 'range' }),
      (err: Error & { code?: string }) => err.code === 'ERR_DELTAD_NO_RANGES' || /byte ranges/.test(err.message),
    );
    // A 200 to several ranges might only mean "not several": one single range is tried, then nothing more.
    assert.deepEqual(
      origin.log.filter((e) => e.path === '/v2.img').map((e) => [e.status, e.range?.includes(',')]),
      [
        [200, true],
        [200, false],
      ],
    );
    assert.equal(await readFile(out, 'utf8'), 'previous content');

    origin.log.length = 0;
    const r = await extractToFile(fx.index, out, { ...opts, mode: 'auto', stores: [`${origin.url}/v2.castr`] });
    assert.ok((await readFile(out)).equals(fx.v2));
    assert.equal(r.mode, 'store');
    assert.ok(served('/v2.img').requests <= 2, 'only the probe touched the image');
  } finally {
    await http.close();
  }
});

test('transient faults (500, cut mid-body, stall, repeated cuts) are retried; output correct', async (t) => {
  if (!casync) return t.skip('casync not installed');
  for (const fault of [
    { kind: 'status', status: 503 },
    { kind: 'cut' },
    { kind: 'stall', stallMs: 5000 },
    // More cuts than attempts: each cut response still delivers a whole chunk or more (70,000 bytes
    // is more than the largest chunk), so retrying goes on (one request at a time).
    { kind: 'cut', times: 6, afterBytes: 70_000, concurrency: 1 },
  ] as const) {
    const { out, http, opts } = setup();
    const { concurrency, ...f } = { concurrency: 8, ...fault };
    origin.fault({ path: '/v2.img', times: 1, ...f });
    try {
      const r = await extractToFile(fx.index, out, { ...opts, mode: 'range', concurrency });
      assert.ok((await readFile(out)).equals(fx.v2), fault.kind);
      assert.equal(origin.log.filter((e) => e.fault === fault.kind).length, f.times ?? 1, `${fault.kind} was injected`);
      assert.ok(r.networkRequests >= 2);
    } finally {
      await http.close();
    }
  }
});

test('wrong bytes: retried once, then the chunk fails by ID; the old output stays in place', async (t) => {
  if (!casync) return t.skip('casync not installed');
  {
    const { out, http, opts } = setup();
    origin.fault({ kind: 'wrong-bytes', path: '/v2.img', times: 1 });
    try {
      await extractToFile(fx.index, out, { ...opts, mode: 'range' });
      assert.ok((await readFile(out)).equals(fx.v2));
    } finally {
      await http.close();
    }
  }
  {
    const { out, http, opts } = setup();
    await writeFile(out, 'previous content');
    origin.fault({ kind: 'wrong-bytes', path: '/v2.img', times: Infinity });
    try {
      await assert.rejects(
        extractToFile(fx.index, out, { ...opts, mode: 'range' }),
        /chunk [0-9a-f]{64} .*wrong content twice/,
      );
      assert.equal(await readFile(out, 'utf8'), 'previous content');
    } finally {
      await http.close();
    }
  }
});

test('a seed that lies (changed after indexing) is reported and its chunk fetched', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const { out, http, opts, warnings } = setup();
  const seed = join(work, 'lying-seed.img');
  const seedIndex = join(work, 'lying-seed.caibx');
  const bytes = Buffer.from(fx.v1);
  await writeFile(seedIndex, serializeIndex(indexBuffer(bytes, { params: TEST_PARAMS, digest: fx.index.digest })));
  const at = 5 * 65536 + 123; // inside the unchanged head that v2 takes from the seed
  bytes[at] ^= 0x55;
  await writeFile(seed, bytes);
  try {
    const r = await extractToFile(fx.index, out, { ...opts, seeds: [{ path: seed, index: seedIndex }], mode: 'range' });
    assert.ok((await readFile(out)).equals(fx.v2));
    assert.equal(r.seedMismatches, 1);
    assert.ok(
      warnings.some((w) => w.includes(seed) && /offset \d+ does not match/.test(w)),
      warnings.join('\n'),
    );
    const clean = await planUpdate(fx.index, { ...opts, seeds: [{ path: seed, index: seedIndex }], mode: 'range' });
    assert.ok(r.fromNetwork > clean.missingBytes, 'the lying chunk came from the network');
    assert.ok((await readFile(seed)).equals(bytes), 'seed untouched');
  } finally {
    await http.close();
  }
});

test('interrupted extract resumes from its partial file with less network', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const { out, http, opts } = setup();
  try {
    // Without seeds most of the file comes from the network; the origin stalls after a quarter of it.
    const ctl = new AbortController();
    origin.fault({ kind: 'stall', path: '/v2.img', times: Infinity, afterBytes: fx.v2.length >> 2, stallMs: 10_000 });
    const first = extractToFile(fx.index, out, {
      ...opts,
      seeds: [],
      mode: 'range',
      concurrency: 1,
      signal: ctl.signal,
      onProgress: (p) => {
        if (p.fromNetwork > 0) setTimeout(() => ctl.abort(new Error('interrupted')), 300);
      },
    });
    await assert.rejects(first, /interrupted/);
    assert.ok(!existsSync(out), 'no output after the interruption');
    const partial = join(work, `.out${n}.img.deltad-partial`);
    assert.ok(existsSync(partial) && existsSync(`${partial}.journal`));
    origin.clearFaults();
    origin.log.length = 0;
    const full = await planUpdate(fx.index, { ...opts, seeds: [], mode: 'range' });
    const r = await extractToFile(fx.index, out, { ...opts, seeds: [], mode: 'range' });
    assert.ok((await readFile(out)).equals(fx.v2));
    assert.ok(r.resumedBytes > 0, 'chunks verified in place');
    assert.ok(
      r.fromNetwork < full.missingBytes,
      `less network the second time (${r.fromNetwork} < ${full.missingBytes})`,
    );
    assert.ok(!existsSync(partial) && !existsSync(`${partial}.journal`));
  } finally {
    await http.close();
  }
});

test('SHA-256 mismatch: nothing is renamed into place', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const { out, http, opts } = setup();
  try {
    await assert.rejects(
      extractToFile(fx.index, out, { ...opts, mode: 'range', sha256: '0'.repeat(64) }),
      /SHA-256 mismatch/,
    );
    assert.ok(!existsSync(out));
    await assert.rejects(extractToFile(fx.index, out, { ...opts, mode: 'range', sha256: 'xyz' }), /invalid SHA-256/);
  } finally {
    await http.close();
  }
});

test('ordered stream: whole file with digest, byte ranges, cancellation', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const { http, opts } = setup();
  try {
    const s = openExtractStream(fx.index, { ...opts, mode: 'range', sha256: sha(fx.v2), windowBytes: 256 * 1024 });
    const parts: Buffer[] = [];
    for await (const b of s) parts.push(b as Buffer);
    assert.ok(Buffer.concat(parts).equals(fx.v2));
    const r = await s.result;
    assert.equal(r.sha256, sha(fx.v2));
    assert.ok(r.fromNetwork > 0);

    // A byte range of the target: only its chunks are assembled.
    origin.log.length = 0;
    const s2 = openExtractStream(fx.index, { ...opts, mode: 'range', start: 1000, end: fx.v2.length - 777 });
    const parts2: Buffer[] = [];
    for await (const b of s2) parts2.push(b as Buffer);
    assert.ok(Buffer.concat(parts2).equals(fx.v2.subarray(1000, fx.v2.length - 777)));
    const r2 = await s2.result;
    assert.ok(r2.fromNetwork <= r.fromNetwork);

    // Mismatching digest: the stream errors before its last bytes.
    const s3 = openExtractStream(fx.index, { ...opts, mode: 'range', sha256: 'f'.repeat(64) });
    let got = 0;
    await assert.rejects(
      (async () => {
        for await (const b of s3) got += (b as Buffer).length;
      })(),
      /SHA-256 mismatch/,
    );
    assert.ok(got < fx.v2.length);

    // A consumer that goes away cancels the fetches.
    origin.log.length = 0;
    origin.fault({ kind: 'stall', path: '/v2.img', skip: 1, times: Infinity, stallMs: 10_000 });
    const s4 = openExtractStream(fx.index, {
      ...opts,
      seeds: [],
      mode: 'range',
      concurrency: 2,
      windowBytes: 128 * 1024,
    });
    s4.once('data', () => s4.destroy());
    await assert.rejects(s4.result);
    const count = origin.log.length;
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(origin.log.length, count, 'no requests after cancellation');
  } finally {
    await http.close();
  }
});

test('out path problems are clear errors', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const { http, opts } = setup();
  try {
    await assert.rejects(extractToFile(fx.index, work, { ...opts, mode: 'range' }), /not a regular file/);
    const out = join(work, 'no-such-dir', 'x.img');
    await assert.rejects(extractToFile(fx.index, out, { ...opts, mode: 'range' }), (err: unknown) => {
      assert.ok(err instanceof FileError, String(err));
      assert.equal(err.path, out, 'names the output, not the partial file');
      assert.equal(err.errno, 'ENOENT');
      assert.match(err.message, /cannot write: directory .*no-such-dir does not exist/);
      return true;
    });
    assert.ok((await stat(work)).isDirectory());
  } finally {
    await http.close();
  }
});

/** Rejects after `ms` (the timer is cleared by `clear`). */
function deadline(ms: number, what: string): { promise: Promise<never>; clear: () => void } {
  let timer!: NodeJS.Timeout;
  const promise = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  return { promise, clear: () => clearTimeout(timer) };
}

/**
 * Reads a stream to its end, bounded in time: its bytes, the error that ended
 * it, and how its result promise settled. A stream that hangs fails the test
 * (and is destroyed so that nothing keeps running).
 */
async function readWithin(
  s: ExtractStream,
  ms: number,
): Promise<{ data: Buffer; error?: Error; result?: ExtractResult; resultError?: Error }> {
  const limit = deadline(ms, 'the stream');
  try {
    const read = (async () => {
      const parts: Buffer[] = [];
      try {
        for await (const b of s) parts.push(b as Buffer);
        return { data: Buffer.concat(parts) };
      } catch (error) {
        return { data: Buffer.concat(parts), error: error as Error };
      }
    })();
    const got = await Promise.race([read, limit.promise]);
    const settled = await Promise.race([
      s.result.then(
        (result) => ({ result }),
        (resultError: Error) => ({ resultError }),
      ),
      limit.promise,
    ]);
    return { ...got, ...settled };
  } finally {
    limit.clear();
    if (!s.destroyed) s.destroy();
  }
}

/** A client whose timeouts and retries end a broken transfer within a second or two. */
const impatientClient = (): HttpClient => new HttpClient({ retryBaseMs: 5, timeoutMs: 300, attempts: 2 });

test('ordered stream: multi-range answered with 200 (single ranges work) falls back to single ranges, without a whole download', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const { http, opts, warnings } = setup();
  origin.ranges = 'ignore-multi';
  try {
    // A 1 MiB window: the first request carries several ranges (a smaller one may start with single ranges).
    const s = openExtractStream(fx.index, { ...opts, mode: 'range', windowBytes: 1024 * 1024, sha256: sha(fx.v2) });
    const { data, error, result } = await readWithin(s, 10_000);
    assert.equal(error, undefined);
    assert.ok(data.equals(fx.v2));
    assert.equal(result?.sha256, sha(fx.v2));
    assert.ok(
      warnings.some((w) => /single-range/.test(w)),
      warnings.join('\n'),
    );
    assert.equal(origin.log.filter((e) => e.range?.includes(',')).length, 1, 'one multi-range attempt');
    assert.ok(
      result!.networkBytes < fx.v2.length / 2,
      `the 200 body was not read (${result!.networkBytes} bytes received)`,
    );

    // planUpdate's probe tells the same thing.
    const plan = await planUpdate(fx.index, { ...opts, mode: 'range' });
    assert.deepEqual(plan.rangeSupport, { ranges: true, multi: false });
  } finally {
    await http.close();
  }
});

test('ordered stream: a server that ignores Range errors at once in range mode, hands over to the store in auto mode', async (t) => {
  if (!casync) return t.skip('casync not installed');
  {
    const { http, opts } = setup();
    origin.ranges = 'none';
    try {
      // A 1 MiB window: the first requests carry several ranges.
      const s = openExtractStream(fx.index, { ...opts, mode: 'range', windowBytes: 1024 * 1024 });
      const { error, resultError } = await readWithin(s, 5000);
      assert.equal((error as Error & { code?: string })?.code, 'ERR_DELTAD_NO_RANGES', String(error));
      assert.equal(resultError, error, 'the result rejects with the error that ended the stream');
      assert.deepEqual(
        origin.log.filter((e) => e.path === '/v2.img').map((e) => e.range?.includes(',')),
        [true, false],
        'a multi-range then a single-range request, nothing after the 200s',
      );
      assert.ok(
        s.progress.networkBytes < fx.v2.length / 2,
        `the 200 bodies were not read (${s.progress.networkBytes} bytes)`,
      );
    } finally {
      await http.close();
    }
  }
  {
    // Ranges work for the probe, then the server starts ignoring them: the stream switches to the store.
    const { http, opts, warnings } = setup();
    origin.fault({ kind: 'full-200', path: '/v2.img', rangedOnly: true, skip: 1, times: Infinity });
    try {
      const s = openExtractStream(fx.index, { ...opts, stores: [`${origin.url}/v2.castr`], windowBytes: 256 * 1024 });
      const { data, error } = await readWithin(s, 10_000);
      assert.equal(error, undefined);
      assert.ok(data.equals(fx.v2));
      assert.ok(
        warnings.some((w) => /chunk store instead/.test(w)),
        warnings.join('\n'),
      );
      assert.ok(origin.stats('/v2.castr/').requests > 0);
    } finally {
      await http.close();
    }
  }
});

test('ordered stream: a cut multipart body, a 416 and a stall end the stream with an error, promptly', async (t) => {
  if (!casync) return t.skip('casync not installed');
  for (const fault of [
    { kind: 'cut', afterBytes: 200 }, // inside the first part of a multipart/byteranges body
    { kind: 'status', status: 416 },
    { kind: 'stall', stallMs: 10_000 },
  ] as const) {
    const { opts } = setup();
    const http = impatientClient();
    origin.fault({ path: '/v2.img', rangedOnly: true, times: Infinity, ...fault });
    try {
      const s = openExtractStream(fx.index, { ...opts, http, mode: 'range', windowBytes: 1024 * 1024 });
      // The client's timeouts fire with about 1 s resolution (undici): a stall costs a second per attempt.
      const { data, error, resultError } = await readWithin(s, 6000);
      assert.ok(error, `${fault.kind}: the stream errors`);
      assert.equal(resultError, error, fault.kind);
      assert.match(error!.message, /v2\.img/, `${fault.kind}: the error names the URL`);
      assert.ok(data.length < fx.v2.length, fault.kind);
      assert.ok(
        origin.log.some((e) => e.fault === fault.kind && e.range?.includes(',')),
        `${fault.kind} hit a multi-range request`,
      );
    } finally {
      await http.close();
    }
  }
  // One cut is retried and the stream completes.
  const { http, opts } = setup();
  origin.fault({ path: '/v2.img', rangedOnly: true, kind: 'cut', afterBytes: 200 });
  try {
    const { data, error } = await readWithin(
      openExtractStream(fx.index, { ...opts, mode: 'range', windowBytes: 256 * 1024 }),
      10_000,
    );
    assert.equal(error, undefined);
    assert.ok(data.equals(fx.v2));
  } finally {
    await http.close();
  }
});

test('ordered stream: an aborted signal settles it, before the start and while the consumer is not reading', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const { http, opts } = setup();
  try {
    const early = new AbortController();
    early.abort(new Error('aborted before the start'));
    const s1 = openExtractStream(fx.index, { ...opts, mode: 'range', signal: early.signal });
    const r1 = await readWithin(s1, 5000);
    assert.match(String(r1.resultError), /aborted before the start/);
    assert.ok(r1.error);
    assert.equal(served('/v2.img').requests, 0);

    // The window fills while the consumer holds still: assembly waits for it, and an abort must end that wait.
    const ctl = new AbortController();
    const s2 = openExtractStream(fx.index, {
      ...opts,
      seeds: [],
      mode: 'range',
      concurrency: 2,
      windowBytes: 128 * 1024,
      signal: ctl.signal,
    });
    const errors: Error[] = [];
    s2.on('error', (err) => errors.push(err));
    await new Promise((resolve) => s2.once('data', resolve));
    s2.pause();
    await sleep(300);
    ctl.abort(new Error('aborted mid-stream'));
    const limit = deadline(5000, 'the aborted stream');
    try {
      await assert.rejects(Promise.race([s2.result, limit.promise]), /aborted mid-stream/);
    } finally {
      limit.clear();
    }
    assert.ok(s2.destroyed);
    // A request sent just before the abort can reach the origin after it under load: let those land first.
    await sleep(150);
    const count = origin.log.length;
    await sleep(300);
    assert.equal(origin.log.length, count, 'no requests after the abort');
  } finally {
    await http.close();
  }
});

test('assembler into an ordered stream: a seed read error ends the stream (instead of leaving it waiting), buffers back', async (t) => {
  if (!casync) return t.skip('casync not installed');
  const v1Index = indexBuffer(fx.v1, { params: TEST_PARAMS, digest: fx.index.digest });
  const failingRead = {
    read: async () => Promise.reject(Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' })),
  } as unknown as FileHandle;
  const plan = planChunks(fx.index, [{ path: 'broken-seed.img', index: v1Index, fh: failingRead }]);
  assert.ok(plan.totals.fromSeeds > 0 && plan.totals.missingChunks > 0);
  // The remote part comes from memory, at once: only the seed can fail.
  const remote: RemoteSource = {
    kind: 'range',
    stats: { requests: 0, bytes: 0 },
    batches: (runs) => runs.map((r) => [r]),
    async fetch(runs, deliver) {
      for (const r of runs)
        for (let i = r.first; i < r.first + r.count; i++)
          deliver(i, Buffer.from(fx.v2.subarray(fx.index.start(i), fx.index.end(i))));
    },
  };
  const cancel = new AbortController();
  const sink = new OrderedStream({
    target: fx.index,
    start: 0,
    end: fx.index.size,
    windowBytes: 128 * 1024,
    onCancel: (r) => cancel.abort(r),
  });
  sink.on('error', () => {});
  const progress = newProgress(fx.index.size);
  const assembler = new Assembler({ plan, sink, remote, concurrency: 2, progress, signal: cancel.signal });
  const limit = deadline(5000, 'the assembly');
  try {
    const pool = await poolBuffersLeft(() => assert.rejects(Promise.race([assembler.run(), limit.promise]), /EIO/));
    assert.ok(pool.taken > 0);
    assert.equal(pool.left, 0, 'the failed reads hand their pool buffers back');
  } finally {
    limit.clear();
    sink.destroy();
  }
});

/** Counts the pool buffers taken and not handed back, over every BufferPool, while `run` runs. */
async function poolBuffersLeft(run: () => Promise<unknown>): Promise<{ taken: number; left: number }> {
  const proto = BufferPool.prototype;
  const { take, give } = proto;
  const out = new Map<ArrayBufferLike, Set<number>>();
  let taken = 0;
  proto.take = function (this: BufferPool, size: number): Buffer {
    const buf = take.call(this, size);
    if (buf.buffer.byteLength === SLAB_BYTES) {
      if (!out.has(buf.buffer)) out.set(buf.buffer, new Set());
      out.get(buf.buffer)!.add(buf.byteOffset);
      taken++;
    }
    return buf;
  };
  proto.give = function (this: BufferPool, buf: Uint8Array): void {
    out.get(buf.buffer)?.delete(buf.byteOffset);
    give.call(this, buf);
  };
  try {
    await run();
  } finally {
    proto.take = take;
    proto.give = give;
  }
  return { taken, left: [...out.values()].reduce((n, s) => n + s.size, 0) };
}

test('every pool buffer is handed back, those of chunks with wrong bytes too', async (t) => {
  if (!casync) return t.skip('casync not installed');
  {
    // The range URL sends wrong bytes once: the wrong chunks' buffers go back too.
    const { out, http, opts } = setup();
    origin.fault({ kind: 'wrong-bytes', path: '/v2.img', times: 1 });
    try {
      const pool = await poolBuffersLeft(() => extractToFile(fx.index, out, { ...opts, mode: 'range' }));
      assert.ok((await readFile(out)).equals(fx.v2));
      assert.ok(pool.taken > 0, 'the pool was used');
      assert.equal(pool.left, 0, 'pool buffers never handed back');
    } finally {
      await http.close();
    }
  }
  {
    // A response cut mid-chunk: the part-filled chunk's buffer goes back when the request is retried.
    const { out, http, opts } = setup();
    origin.fault({ kind: 'cut', path: '/v2.img', times: 1, afterBytes: 1000 });
    try {
      const pool = await poolBuffersLeft(() => extractToFile(fx.index, out, { ...opts, mode: 'range' }));
      assert.ok((await readFile(out)).equals(fx.v2));
      assert.equal(origin.log.filter((e) => e.fault === 'cut').length, 1, 'the cut was injected');
      assert.equal(pool.left, 0, 'pool buffers never handed back');
    } finally {
      await http.close();
    }
  }
});

test("nothing missing: a lying seed's chunk from the store is not copied into a pool nobody uses", async (t) => {
  if (!casync) return t.skip('casync not installed');
  {
    // Every chunk is in the seed (v2 itself), which lies about one: the store stands in for it.
    const { out, http, opts } = setup();
    const seed = join(work, 'lying-v2.img');
    const seedIndex = join(work, 'lying-v2.caibx');
    const bytes = Buffer.from(fx.v2);
    await writeFile(seedIndex, serializeIndex(indexBuffer(bytes, { params: TEST_PARAMS, digest: fx.index.digest })));
    bytes[5 * 65536 + 123] ^= 0x55;
    await writeFile(seed, bytes);
    const stores = [`${origin.url}/v2.castr`];
    try {
      const seeds = [{ path: seed, index: seedIndex }];
      let r: ExtractResult | undefined;
      const pool = await poolBuffersLeft(
        async () => (r = await extractToFile(fx.index, out, { ...opts, seeds, stores, mode: 'store' })),
      );
      assert.ok((await readFile(out)).equals(fx.v2));
      assert.equal(r!.seedMismatches, 1);
      assert.equal(pool.left, 0, 'pool buffers never handed back');
    } finally {
      await http.close();
    }
  }
});
