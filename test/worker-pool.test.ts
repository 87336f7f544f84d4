// lib/util/worker-pool.ts: workers start on demand, up to the limit, answer with moved buffers, report events,
// end when idle; a job's error rejects that job only, a dead worker fails the pool.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WorkerPool } from '../lib/util/worker-pool.js';
import type { TestJob, TestResult } from './helpers/worker-pool-worker.js';

const script = new URL('./helpers/worker-pool-worker.js', import.meta.url);
const pool = (threads: number, idleMs?: number) =>
  new WorkerPool<TestJob, TestResult, number>({ script, threads, name: 'test', idleMs });

test('workers start on demand, at most `threads`, and move buffers both ways', async () => {
  const p = pool(2);
  try {
    assert.equal(p.running, 0, 'no worker before the first job');
    const data = new Uint8Array([1, 2, 3]);
    const r = await p.run({ op: 'double', data }, { transfer: [data.buffer] });
    assert.equal(data.byteLength, 0, 'the job buffer was moved, not copied');
    assert.deepEqual([...r.data!], [2, 4, 6]);
    assert.equal(p.running, 1, 'one job started one worker');
    const ids = await Promise.all([1, 2, 3, 4, 5].map(() => p.run({ op: 'wait', ms: 30 })));
    assert.equal(p.running, 2);
    assert.equal(new Set(ids.map((x) => x.threadId)).size, 2, 'five jobs ran on two workers');
  } finally {
    await p.close();
  }
});

test('events reach the job, a job that throws rejects alone, and the pool goes on', async () => {
  const p = pool(1);
  try {
    const seen: number[] = [];
    await p.run({ op: 'progress', steps: 3 }, { onEvent: (e) => seen.push(e) });
    assert.deepEqual(seen, [1, 2, 3]);
    await assert.rejects(p.run({ op: 'throw' }), { code: 'ERR_DELTAD_WORKER', message: /test thread: bad job/ });
    assert.ok((await p.run({ op: 'wait', ms: 1 })).threadId > 0);
  } finally {
    await p.close();
  }
});

test('a worker that dies fails its job, the queued jobs and later ones', async () => {
  const p = pool(1);
  try {
    const crash = p.run({ op: 'crash' });
    const queued = p.run({ op: 'wait', ms: 1 });
    await assert.rejects(crash, { code: 'ERR_DELTAD_WORKER', message: /test thread failed: exited with code 7/ });
    await assert.rejects(queued, /exited with code 7/);
    await assert.rejects(p.run({ op: 'wait', ms: 1 }), /exited with code 7/);
    assert.equal(p.running, 0);
  } finally {
    await p.close();
  }
});

test('an idle worker ends after idleMs, and the next job starts another', async () => {
  const p = pool(1, 50);
  try {
    const first = await p.run({ op: 'wait', ms: 1 });
    assert.equal(p.running, 1);
    const deadline = Date.now() + 5000;
    while (p.running > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(p.running, 0, 'the idle worker ended');
    const second = await p.run({ op: 'wait', ms: 1 });
    assert.notEqual(second.threadId, first.threadId);
  } finally {
    await p.close();
  }
});

test('close() rejects the jobs not yet answered and refuses new ones', async () => {
  const p = pool(1);
  const running = p.run({ op: 'wait', ms: 5000 });
  const queued = p.run({ op: 'wait', ms: 1 });
  await new Promise((r) => setTimeout(r, 50));
  const refused = Promise.all([running, queued].map((j) => assert.rejects(j, /threads were stopped/)));
  await p.close();
  await refused;
  await assert.rejects(p.run({ op: 'wait', ms: 1 }), /threads were stopped/);
  assert.equal(p.running, 0);
});
