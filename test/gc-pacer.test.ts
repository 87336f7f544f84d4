// lib/util/gc-pacer.ts: while paced, 16 MiB more of buffer memory asks V8 for an incremental full collection;
// nothing without gc() or after the last user stopped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { paceGc } from '../lib/util/gc-pacer.js';

const g = globalThis as { gc?: unknown };

test('buffers growing by 16 MiB ask for a collection; stopping ends it', async (t) => {
  const calls: unknown[] = [];
  const had = g.gc;
  g.gc = (o: unknown) => calls.push(o);
  t.after(() => (g.gc = had));
  const stop = paceGc();
  const stopNested = paceGc();
  const held: Buffer[] = [];
  try {
    await sleep(30);
    assert.equal(calls.length, 0, 'no collection while buffers do not grow');
    for (let i = 0; i < 20; i++) held.push(Buffer.alloc(1024 * 1024, i));
    await sleep(50);
    assert.ok(calls.length >= 1, 'a collection after 20 MiB of buffers');
    assert.deepEqual(calls[0], { type: 'major', execution: 'async' });
    stopNested();
    const before = calls.length;
    for (let i = 0; i < 20; i++) held.push(Buffer.alloc(1024 * 1024, i));
    await sleep(50);
    assert.ok(calls.length > before, 'still paced while one user remains');
  } finally {
    stop();
  }
  const after = calls.length;
  for (let i = 0; i < 20; i++) held.push(Buffer.alloc(1024 * 1024, i));
  await sleep(50);
  assert.equal(calls.length, after, 'not paced once every user stopped');
  assert.equal(held.length, 60);
});

test('without gc() (no --expose-gc) pacing does nothing', () => {
  const had = g.gc;
  g.gc = undefined;
  try {
    const stop = paceGc();
    stop();
    stop();
  } finally {
    g.gc = had;
  }
});
