// Buffer reuse and early freeing (lib/util/buffer-pool.ts): a pool hands back
// only its own buffers, each once; freeNow detaches a large buffer the caller
// owns and leaves slices of Node's shared pool alone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BufferPool, freeNow } from '../lib/util/buffer-pool.js';

test('BufferPool: a buffer given back is taken again once, foreign buffers and a second give are ignored', () => {
  const pool = new BufferPool(1024 * 1024);
  const a = pool.take(3000);
  assert.equal(a.length, 3000);
  pool.give(a);
  pool.give(a); // twice: must not be handed out twice
  pool.give(Buffer.allocUnsafeSlow(4096)); // not the pool's
  const b = pool.take(4000);
  assert.equal(b.buffer, a.buffer, 'the buffer given back is reused');
  const c = pool.take(4000);
  assert.notEqual(c.buffer, a.buffer, 'a buffer given back twice is not handed out twice');
  assert.notEqual(c.buffer.byteLength, 0);
});

test('BufferPool: beyond its byte limit, buffers given back are dropped', () => {
  const pool = new BufferPool(8192);
  const bufs = [pool.take(4096), pool.take(4096), pool.take(4096)];
  for (const b of bufs) pool.give(b);
  const again = [pool.take(4096), pool.take(4096), pool.take(4096)];
  const reused = again.filter((b) => bufs.some((x) => x.buffer === b.buffer)).length;
  assert.equal(reused, 2, 'two buffers of 4 KiB fit the 8 KiB limit');
});

test('freeNow: a large owned buffer is detached at once; a slice of the shared pool and a small one are left', () => {
  const big = Buffer.alloc(Buffer.poolSize + 1, 7);
  const before = process.memoryUsage().arrayBuffers;
  freeNow(big.buffer);
  assert.equal(big.length, 0, 'detached: the view is empty');
  assert.ok(process.memoryUsage().arrayBuffers <= before - Buffer.poolSize, 'its memory is gone without a collection');

  const slice = Buffer.from('pooled bytes');
  assert.ok(slice.buffer.byteLength <= Buffer.poolSize, 'a small Buffer.from is a slice of the shared pool');
  const other = Buffer.from('a neighbour in the same pool');
  freeNow(slice.buffer);
  assert.equal(slice.toString(), 'pooled bytes');
  assert.equal(other.toString(), 'a neighbour in the same pool');

  const small = new Uint8Array(1024);
  freeNow(small.buffer);
  assert.equal(small.length, 1024, 'small buffers are left to the collector');
  freeNow(big.buffer); // already detached: nothing to do
});
