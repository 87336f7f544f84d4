// The slab pool: small buffers are cut side by side, a slab comes back only when every buffer cut from it has;
// freeNow detaches a large buffer the caller owns and leaves slices of Node's shared pool alone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BufferPool, SLAB_BYTES, SharedBuffer, SlotPool, freeNow } from '../lib/util/buffer-pool.js';

test('buffer pool: small buffers lie side by side; a slab is reused only once all of it is handed back', () => {
  const pool = new BufferPool(4 * SLAB_BYTES);
  const a = pool.take(1000);
  const b = pool.take(3000);
  assert.ok(a.buffer === b.buffer, 'cut from one slab');
  assert.equal(b.byteOffset, a.byteOffset + a.length, 'side by side');
  // Fill the rest of the slab until a buffer comes from the next one.
  const rest: Buffer[] = [];
  let next: Buffer;
  for (;;) {
    next = pool.take(64 * 1024);
    if (next.buffer !== a.buffer) break;
    rest.push(next);
  }
  assert.equal(rest.length, Math.floor((SLAB_BYTES - 4000) / (64 * 1024)));
  const first = a.buffer;
  pool.give(a);
  pool.give(b);
  for (const r of rest.slice(1)) pool.give(r);
  // Not all of the first slab is back: a slab of its own is a fresh one.
  assert.ok(pool.take(SLAB_BYTES).buffer !== first, 'a slab with a buffer still out is not reused');
  pool.give(rest[0]);
  const again = pool.take(SLAB_BYTES);
  assert.ok(again.buffer === first, 'the slab is reused once every buffer cut from it is back');
  assert.equal(again.length, SLAB_BYTES);
});

test('buffer pool: foreign, oversized and repeated hand-backs do not free a slab early', () => {
  const pool = new BufferPool(4 * SLAB_BYTES);
  const big = pool.take(SLAB_BYTES + 1);
  pool.give(big); // not pooled
  pool.give(Buffer.alloc(64)); // not ours
  const own = pool.take(SLAB_BYTES / 2);
  pool.give(own);
  pool.give(own); // a second hand-back of the same buffer is ignored: the slab is free already
  const x = pool.take(SLAB_BYTES / 2);
  const y = pool.take(SLAB_BYTES / 2);
  assert.ok(x.buffer === own.buffer);
  assert.ok(y.buffer !== own.buffer, 'one slab is not handed out twice');
});

test('buffer pool: a small buffer handed back twice does not free its slab while another is still out', () => {
  const pool = new BufferPool(4 * SLAB_BYTES);
  const a = pool.take(1000);
  const b = pool.take(1000);
  pool.give(a);
  pool.give(a); // a second hand-back: must not count for b
  // Fill the slab so that it is let go, and hand the fillers back.
  const fillers: Buffer[] = [];
  for (;;) {
    const f = pool.take(64 * 1024);
    if (f.buffer !== a.buffer) {
      pool.give(f);
      break;
    }
    fillers.push(f);
  }
  for (const f of fillers) pool.give(f);
  b.fill(7);
  for (let i = 0; i < 8; i++) {
    const other = pool.take(SLAB_BYTES);
    assert.ok(other.buffer !== b.buffer, 'the slab of a buffer still out is never handed out again');
  }
  assert.ok(b.every((x) => x === 7));
  pool.give(b);
  assert.ok(pool.take(SLAB_BYTES).buffer === b.buffer, 'once b is back, the slab is reused');
});

test('buffer pool: at most maxPooledBytes of unused slabs are kept, the rest freed at once', () => {
  const pool = new BufferPool(SLAB_BYTES);
  const s1 = pool.take(SLAB_BYTES);
  const s2 = pool.take(SLAB_BYTES);
  const cut = pool.take(1000); // a third slab, cut from
  pool.give(s1);
  pool.give(s2); // over the cap: freed now, not left to the collector
  const detached = (b: Buffer) => (b.buffer as ArrayBuffer & { detached: boolean }).detached;
  assert.equal(detached(s2), true, 'the slab beyond the cap is freed');
  assert.equal(s2.length, 0);
  assert.equal(detached(s1), false, 'the kept slab is not');
  assert.equal(detached(cut), false, 'a slab with a buffer out is not');
  const t1 = pool.take(SLAB_BYTES);
  const t2 = pool.take(SLAB_BYTES);
  assert.ok(t1.buffer === s1.buffer);
  assert.ok(t2.buffer !== s2.buffer && t2.length === SLAB_BYTES);
  pool.give(t1);
  pool.release();
  assert.equal(detached(t1), true, 'release frees the kept slabs');
  assert.equal(detached(t2), false, 'and leaves those still out alone');
});

test('shared buffer: done runs once, after the creator and every holder let go', () => {
  let done = 0;
  const shared = new SharedBuffer(() => done++);
  const r1 = shared.hold();
  const r2 = shared.hold();
  r1();
  r1();
  shared.drop();
  assert.equal(done, 0);
  r2();
  assert.equal(done, 1);
});

test('freeNow: a large owned buffer is detached at once; a slice of the shared pool and a small one are left', () => {
  const big = Buffer.alloc(Buffer.poolSize + 1, 7);
  const before = process.memoryUsage().arrayBuffers;
  freeNow(big);
  assert.equal(big.length, 0, 'detached: the view is empty');
  assert.ok(process.memoryUsage().arrayBuffers <= before - Buffer.poolSize, 'its memory is gone without a collection');

  const slice = Buffer.from('pooled bytes');
  assert.ok(slice.buffer.byteLength <= Buffer.poolSize, 'a small Buffer.from is a slice of the shared pool');
  const other = Buffer.from('a neighbour in the same pool');
  freeNow(slice);
  assert.equal(slice.toString(), 'pooled bytes');
  assert.equal(other.toString(), 'a neighbour in the same pool');

  const small = new Uint8Array(1024);
  freeNow(small);
  assert.equal(small.length, 1024, 'small buffers are left to the collector');
  // A socket read is 64 KiB, Node 24's pool size: a whole one is no slice of the pool, and is freed.
  const read64 = Buffer.from(new ArrayBuffer(64 * 1024));
  freeNow(read64);
  assert.equal(read64.length, 0, 'a whole 64 KiB buffer is freed');
  freeNow(big); // already detached: nothing to do

  // A view of part of a large buffer (one HTTP/2 read carrying two bodies): the other part stays readable.
  const read = Buffer.alloc(Buffer.poolSize * 4, 9);
  const first = read.subarray(0, Buffer.poolSize * 2);
  const second = read.subarray(Buffer.poolSize * 2);
  freeNow(first);
  assert.equal(second.length, Buffer.poolSize * 2, 'a shared buffer is never detached');
  assert.equal(second[0], 9);
});

test('slot pool: slots are distinct while out, reused once handed back, and a new arena only when all are out', () => {
  const pool = new SlotPool(4096, 3);
  const a = pool.take(4096);
  const b = pool.take(100);
  const c = pool.take(4096);
  assert.equal(b.length, 100);
  assert.equal(a.buffer, c.buffer, 'one arena for three slots');
  a.fill(1);
  b.fill(2);
  c.fill(3);
  assert.ok(a.every((x) => x === 1) && c.every((x) => x === 3), 'slots do not overlap');
  const d = pool.take(4096);
  assert.notEqual(d.buffer, a.buffer, 'a second arena once every slot is out');
  pool.give(b);
  const e = pool.take(4096);
  assert.equal(e.buffer, b.buffer, 'a slot handed back is used again');
  assert.equal(e.byteOffset, b.byteOffset);
  assert.equal(e.length, 4096, 'whole again, though it went out as 100 bytes');
  pool.give(Buffer.alloc(4096)); // not of the pool: ignored
  const f = pool.take(1);
  assert.notEqual(f.buffer, a.buffer);
  assert.equal(f.buffer, d.buffer, 'the rest of the second arena, not the foreign buffer');
  assert.throws(() => pool.take(4097), RangeError);
});

test('buffer pool, shared: slabs in shared memory, every one kept for reuse, never detached by freeNow', () => {
  const pool = new BufferPool(SLAB_BYTES, true);
  const out = [0, 1, 2].map(() => pool.take(SLAB_BYTES));
  for (const b of out) assert.ok(b.buffer instanceof SharedArrayBuffer);
  out[0].fill(5);
  freeNow(out[0]);
  assert.equal(out[0].length, SLAB_BYTES, 'a shared slab cannot be detached: freeNow leaves it');
  assert.equal(out[0][SLAB_BYTES - 1], 5);
  for (const b of out) pool.give(b);
  // Three slabs back with room for one: a shared pool keeps them all (a hashing thread holds them too).
  const again = new Set([0, 1, 2].map(() => pool.take(SLAB_BYTES).buffer));
  assert.deepEqual(again, new Set(out.map((b) => b.buffer)));
  assert.ok(!(pool.take(SLAB_BYTES * 2).buffer instanceof SharedArrayBuffer), 'larger than a slab: a plain buffer');
});
