// The planner: longest seed runs, zero and repeated chunks, remote runs, and
// how remote runs become range requests (gap merging, request limits).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { ChunkIndexBuilder, type ChunkIndex } from '../lib/format/caibx.js';
import { chunkId } from '../lib/format/digest.js';
import { planChunks } from '../lib/plan/planner.js';
import { countRangeRequests, planRangeRequests, rangeHeader, rangeRequests } from '../lib/fetch/range-fetcher.js';
import type { Seed } from '../lib/seed/seed.js';

const PARAMS = { min: 1, avg: 1000, max: 100000 };

/** An index from (label, size) pairs: equal labels give equal IDs; label '0' is an all-zero chunk. */
function indexOf(chunks: [string, number][]): ChunkIndex {
  const b = ChunkIndexBuilder.forDigest('sha512-256', PARAMS);
  let end = 0;
  for (const [label, size] of chunks) {
    end += size;
    const id =
      label === '0'
        ? chunkId('sha512-256', Buffer.alloc(size))
        : createHash('sha512-256').update(`${label}/${size}`).digest();
    b.add(end, id);
  }
  return b.finish();
}

const fakeSeed = (index: ChunkIndex, path: string): Seed => ({ path, index, fh: undefined as never });
const plain = (labels: string, size = 100): [string, number][] => [...labels].map((l) => [l, size]);

test('each position takes the longest run over all seeds', () => {
  const target = indexOf(plain('abcdefgh'));
  const s1 = fakeSeed(indexOf(plain('xabcyefgh')), 's1'); // abc, then efgh
  const s2 = fakeSeed(indexOf(plain('bcdef')), 's2'); // bcdef
  const plan = planChunks(target, [s1, s2]);
  assert.deepEqual(plan.segments, [
    { kind: 'seed', first: 0, count: 3, seed: 0, seedFirst: 1 }, // abc from s1 (s2 has no a)
    { kind: 'seed', first: 3, count: 3, seed: 1, seedFirst: 2 }, // def from s2 (s1 has no d)
    { kind: 'seed', first: 6, count: 2, seed: 0, seedFirst: 7 }, // gh
  ]);
  assert.equal(plan.totals.fromSeeds, 800);
  assert.equal(plan.totals.missingBytes, 0);
});

test('zero chunks, repeats and remote runs', () => {
  const target = indexOf([
    ['a', 100],
    ['0', 300],
    ['n', 50],
    ['m', 60],
    ['n', 50],
    ['0', 77],
    ['q', 10],
    ['r', 20],
    ['a', 100],
  ]);
  const plan = planChunks(target, [fakeSeed(indexOf(plain('a')), 's')]);
  assert.deepEqual(
    plan.segments.map((s) => [s.kind, s.first, s.count]),
    [
      ['seed', 0, 1],
      ['zero', 1, 1],
      ['remote', 2, 2],
      ['self', 4, 1],
      ['zero', 5, 1],
      ['remote', 6, 2],
      ['seed', 8, 1],
    ],
  );
  assert.deepEqual(plan.segments[3], { kind: 'self', first: 4, count: 1, source: 2 });
  assert.equal(plan.totals.fromZero, 377);
  assert.equal(plan.totals.fromSelf, 50);
  assert.equal(plan.totals.missingBytes, 50 + 60 + 10 + 20);
  assert.equal(plan.totals.missingChunks, 4);
  assert.equal(plan.totals.missingRuns, 2);

  const noBuiltins = planChunks(target, [], { nullSeed: false, selfSeed: false });
  assert.equal(noBuiltins.totals.missingBytes, target.size);
  assert.deepEqual(noBuiltins.segments, [{ kind: 'remote', first: 0, count: 9 }]);
});

test('a chunk range plans only its chunks; repeats refer inside it', () => {
  const target = indexOf(plain('abcbcx'));
  const plan = planChunks(target, [], { firstChunk: 2, endChunk: 5, nullSeed: false });
  assert.deepEqual(plan.segments, [
    { kind: 'remote', first: 2, count: 2 },
    { kind: 'self', first: 4, count: 1, source: 2 },
  ]);
  assert.equal(plan.totals.bytes, 300);
});

test('range requests: adjacent runs, small gaps merged, request and header limits', () => {
  // 1000 chunks of 1000 bytes; remote runs every other chunk (1000-byte gaps).
  const target = indexOf(Array.from({ length: 1000 }, (_, i) => [`c${i}`, 1000] as [string, number]));
  const runs = Array.from({ length: 500 }, (_, k) => ({ first: 2 * k, count: 1 }));
  const multi = planRangeRequests(target, runs, { multi: true });
  assert.equal(
    multi.reduce((n, r) => n + r.ranges.length, 0),
    500,
    '1000-byte gaps are not merged by default',
  );
  assert.ok(multi.every((r) => r.ranges.length <= 200 && rangeHeader(r.ranges).length <= 8000));
  assert.equal(multi.length, 3);
  assert.equal(
    multi.reduce((n, r) => n + r.bytes, 0),
    500 * 1000,
  );

  const fewer = planRangeRequests(target, runs, { multi: true, targetRequests: 1, maxRangesPerRequest: 100 });
  assert.equal(fewer.length, 1, 'gaps merged until one request carries everything');
  assert.ok(fewer[0].ranges.length <= 100);

  const single = planRangeRequests(target, runs, { multi: false, maxGap: 0 });
  assert.equal(single.length, 500);
  assert.ok(single.every((r) => r.ranges.length === 1));
  const merged = planRangeRequests(target, runs, { multi: false });
  assert.equal(merged.length, 1, '1000-byte gaps merge without multi-range (default 8 KiB)');
  assert.equal(merged[0].bytes, 999 * 1000);

  const spans = planRangeRequests(target, runs, { multi: true, maxSpan: 100 * 1000 });
  assert.ok(spans.every((r) => r.ranges[r.ranges.length - 1].end - r.ranges[0].start <= 100 * 1000));
  const bytesCap = planRangeRequests(target, [{ first: 0, count: 1000 }], { multi: true, maxRequestBytes: 300 * 1000 });
  assert.equal(bytesCap.length, 4, 'a long run is cut at chunk boundaries so requests run in parallel');
  assert.deepEqual(
    bytesCap.map((r) => r.bytes),
    [300_000, 300_000, 300_000, 100_000],
  );
});

test('range requests counted (for pricing) are the requests planned', () => {
  // Chunks of uneven sizes, runs with uneven gaps (a deterministic sequence), and limits that each come into play.
  const sizes = Array.from({ length: 3000 }, (_, i) => 200 + ((i * 7919) % 1800));
  const target = indexOf(sizes.map((s, i) => [`c${i}`, s] as [string, number]));
  const runs: { first: number; count: number }[] = [];
  for (let i = 0; i < sizes.length; ) {
    const count = 1 + ((i * 31) % 9);
    runs.push({ first: i, count: Math.min(count, sizes.length - i) });
    i += count + ((i * 17) % 5);
  }
  const cases = [
    { multi: true },
    { multi: true, targetRequests: 2, maxRangesPerRequest: 50 },
    { multi: true, maxRequestBytes: 20_000, maxSpan: 30_000 },
    { multi: false, maxRequestBytes: 200_000 },
    { multi: false, maxGap: 0 },
    { multi: false, maxRequestBytes: 5_000 },
  ];
  for (const opts of cases) {
    const reqs = planRangeRequests(target, runs, opts);
    const count = countRangeRequests(target, runs, opts);
    const what = JSON.stringify(opts);
    assert.ok(reqs.length > 1, `${what}: several requests`);
    assert.equal(count.requests, reqs.length, `${what}: requests`);
    assert.equal(
      count.bytes,
      reqs.reduce((n, r) => n + r.bytes, 0),
      `${what}: bytes`,
    );
    const parts = reqs.reduce((n, r) => n + (r.ranges.length > 1 ? r.ranges.length : 0), 0);
    assert.equal(count.multipartRanges, parts, `${what}: parts of multipart answers`);
    assert.equal(opts.multi, parts > 0, `${what}: multipart answers only with multi-range`);
  }
  assert.deepEqual(countRangeRequests(target, [], { multi: true }), { requests: 0, bytes: 0, multipartRanges: 0 });
});

/** A deterministic pseudo-random sequence (xorshift32), so a failing case can be run again. */
function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

test('range requests made one at a time are the requests planned at once', () => {
  for (let seed = 1; seed <= 40; seed++) {
    const rnd = xorshift(seed * 2654435761);
    const n = 200 + Math.floor(rnd() * 3000);
    const target = indexOf(Array.from({ length: n }, (_, i) => [`c${i}`, 1 + Math.floor(rnd() * 5000)]));
    const runs: { first: number; count: number }[] = [];
    for (let i = Math.floor(rnd() * 3); i < n; ) {
      const count = Math.min(n - i, 1 + Math.floor(rnd() * (rnd() < 0.1 ? 200 : 6)));
      runs.push({ first: i, count });
      i += count + 1 + Math.floor(rnd() * (rnd() < 0.2 ? 50 : 4));
    }
    const multi = rnd() < 0.5;
    const opts = {
      multi,
      maxRangesPerRequest: 1 + Math.floor(rnd() * 60),
      maxHeaderBytes: 200 + Math.floor(rnd() * 2000),
      maxRequestBytes: 5_000 + Math.floor(rnd() * 200_000),
      maxSpan: rnd() < 0.5 ? 10_000 + Math.floor(rnd() * 300_000) : undefined,
      maxGap: Math.floor(rnd() * 10_000),
      targetRequests: 1 + Math.floor(rnd() * 20),
    };
    const what = `seed ${seed}: ${JSON.stringify(opts)}`;
    const eager = planRangeRequests(target, runs, opts);
    const lazy: ReturnType<typeof planRangeRequests> = [];
    for (const r of rangeRequests(target, runs, opts)) lazy.push(structuredClone(r));
    assert.ok(eager.length > 1, `${what}: several requests`);
    assert.deepEqual(lazy, eager, what);
    // Every chunk of the runs goes with exactly one request, in target order.
    const chunks = lazy.flatMap((r) => r.chunks.flatMap((c) => Array.from({ length: c.count }, (_, k) => c.first + k)));
    assert.deepEqual(
      chunks,
      runs.flatMap((c) => Array.from({ length: c.count }, (_, k) => c.first + k)),
      what,
    );
    const count = countRangeRequests(target, runs, opts);
    assert.equal(count.requests, lazy.length, `${what}: counted requests`);
    assert.equal(
      count.bytes,
      lazy.reduce((b, r) => b + r.bytes, 0),
      `${what}: counted bytes`,
    );
  }
});

test('range requests are planned as they are taken, not all before the first', () => {
  const target = indexOf(Array.from({ length: 2000 }, (_, i) => [`c${i}`, 1000] as [string, number]));
  const runs = Array.from({ length: 1000 }, (_, k) => ({ first: 2 * k, count: 1 }));
  let reads = 0;
  const counted = {
    start: (i: number) => {
      reads++;
      return target.start(i);
    },
    end: (i: number) => {
      reads++;
      return target.end(i);
    },
  };
  const all = countRangeRequests(target, runs, { multi: false, maxGap: 0 }).requests;
  const it = rangeRequests(counted, runs, { multi: false, maxGap: 0 });
  const first = it.next();
  assert.equal(first.done, false);
  assert.deepEqual(first.value.chunks, [{ first: 0, count: 1 }]);
  assert.ok(reads < 20, `the first of ${all} requests read ${reads} chunk offsets`);
  for (const _ of it);
  assert.ok(reads > 2 * all, `all ${all} requests read ${reads}`);
});
