// lib/util/async-pool.ts: the one bounded-concurrency loop. Limits hold (count,
// a changing count, a weight budget), items are read no further ahead than the
// work, the first failure stops new work and is thrown only after the running
// calls ended, and concurrentEmit hands values over as they arrive.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { concurrentEmit, forEachConcurrent } from '../lib/util/async-pool.js';

const tick = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

test('forEachConcurrent: at most N at once, every item once, async items pulled only when a call may start', async () => {
  let running = 0;
  let peak = 0;
  let pulled = 0;
  let started = 0;
  let maxAhead = 0;
  async function* items(): AsyncGenerator<number> {
    for (let i = 0; i < 40; i++) {
      pulled++;
      maxAhead = Math.max(maxAhead, pulled - started);
      yield i;
    }
  }
  const seen: number[] = [];
  await forEachConcurrent(items(), 3, async (item, index) => {
    started++;
    assert.equal(item, index);
    running++;
    peak = Math.max(peak, running);
    await tick(item % 4);
    seen.push(item);
    running--;
  });
  assert.equal(peak, 3);
  assert.equal(maxAhead, 1, 'one item taken at a time, only to start it');
  assert.deepEqual(
    seen.sort((a, b) => a - b),
    Array.from({ length: 40 }, (_, i) => i),
  );
});

test('forEachConcurrent: a limit asked before every start, and a weight budget (one call always may run)', async () => {
  let limit = 1;
  let running = 0;
  const peaks: number[] = [];
  await forEachConcurrent(
    Array.from({ length: 12 }, (_, i) => i),
    { concurrency: () => limit },
    async (i) => {
      running++;
      peaks[i] = running;
      if (i === 3) limit = 4;
      await tick(5);
      running--;
    },
  );
  assert.ok(
    peaks.slice(0, 4).every((p) => p === 1),
    `${peaks}`,
  );
  assert.ok(Math.max(...peaks.slice(4)) > 1, `${peaks}`);

  let held = 0;
  let peakHeld = 0;
  const weights = [6, 3, 3, 9, 1, 1, 1, 12, 2];
  await forEachConcurrent(weights, { concurrency: 8, weight: (w) => w, budget: 10 }, async (w) => {
    held += w;
    peakHeld = Math.max(peakHeld, held);
    assert.ok(held <= 10 || held === w, `held ${held} with ${w} alone over the budget`);
    await tick(3);
    held -= w;
  });
  assert.ok(peakHeld >= 10, `${peakHeld}`);
});

test('forEachConcurrent: the first failure stops new work, is thrown after the running calls ended', async () => {
  let started = 0;
  let finished = 0;
  let closed = false;
  async function* items(): AsyncGenerator<number> {
    try {
      for (let i = 0; i < 100; i++) yield i;
    } finally {
      closed = true;
    }
  }
  await assert.rejects(
    forEachConcurrent(items(), 4, async (i) => {
      started++;
      if (i === 5) throw new Error('item 5 is bad');
      await tick(20);
      finished++;
    }),
    /item 5 is bad/,
  );
  assert.ok(started < 12, `started ${started}`);
  assert.equal(finished, started - 1, 'every other started call had ended');
  assert.ok(closed, 'the source generator was closed');

  // A failing source: what was started still ends, then its error is thrown.
  let ended = 0;
  function* broken(): Generator<number> {
    yield 1;
    yield 2;
    throw new Error('read failed');
  }
  await assert.rejects(
    forEachConcurrent(broken(), 4, async () => {
      await tick(10);
      ended++;
    }),
    /read failed/,
  );
  assert.equal(ended, 2);
});

test('forEachConcurrent ordered: of several failures, the earliest item is thrown', async () => {
  const run = (ordered: boolean) =>
    forEachConcurrent([0, 1, 2, 3], { concurrency: 4, ordered }, async (i) => {
      if (i === 1) {
        await tick(30);
        throw new Error('bad 1');
      }
      if (i === 3) throw new Error('bad 3');
    });
  await assert.rejects(run(true), /bad 1/);
  await assert.rejects(run(false), /bad 3/);
});

test('concurrentEmit: values in arrival order, then the failure after everything emitted before it', async () => {
  const got: number[] = [];
  for await (const v of concurrentEmit<number, number>([30, 10, 20], 3, async (ms, emit) => {
    await tick(ms);
    emit(ms);
    emit(ms + 1);
  }))
    got.push(v);
  assert.deepEqual(got, [10, 11, 20, 21, 30, 31]);

  const before: string[] = [];
  await assert.rejects(async () => {
    for await (const v of concurrentEmit<string, string>(['a', 'b', 'c', 'd'], 2, async (s, emit) => {
      if (s === 'b') {
        await tick(5);
        throw new Error('b failed');
      }
      await tick(s === 'a' ? 1 : 15);
      emit(s);
    }))
      before.push(v);
  }, /b failed/);
  // a ends at once and c takes its slot; b's failure lets c finish (and emit) but starts no d.
  assert.deepEqual(before, ['a', 'c']);
  assert.deepEqual([...(await collect(concurrentEmit<number, number>([], 4, async () => {})))], []);
});

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const v of it) out.push(v);
  return out;
}
