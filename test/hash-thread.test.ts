// The hashing thread reads buffers of a shared pool in place: its digests are node:crypto's of the same bytes,
// for every piece, across slabs and reused slabs (shown to the thread once, by number), after the bytes changed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { BufferPool, SLAB_BYTES } from '../lib/util/buffer-pool.js';
import { HashThread } from '../lib/util/hash-thread.js';

function expected(algorithm: string, data: Uint8Array, ends: number[]): Buffer {
  let start = 0;
  return Buffer.concat(
    ends.map((end) => {
      const d = createHash(algorithm).update(data.subarray(start, end)).digest();
      start = end;
      return d;
    }),
  );
}

test('hash thread: digests of pieces of shared buffers, in place, as node:crypto gives them', async (t) => {
  const thread = new HashThread();
  t.after(() => thread.close());
  const pool = new BufferPool(SLAB_BYTES, true);
  const plain = Buffer.alloc(100);
  assert.equal(HashThread.reaches(plain), false, 'a plain buffer is not shared');
  for (let round = 0; round < 3; round++) {
    // Buffers cut side by side from one slab (non-zero offsets) and one slab of its own, reused each round.
    const small = [pool.take(5000), pool.take(70_000)];
    const whole = pool.take(SLAB_BYTES);
    for (const b of [...small, whole]) b.set(randomBytes(b.length));
    assert.ok(small[1].byteOffset > 0 && HashThread.reaches(small[1]));
    for (const algorithm of ['sha512-256', 'sha256']) {
      for (const data of [...small, whole]) {
        const ends = [1, Math.floor(data.length / 3), data.length - 1, data.length];
        const got = await thread.digests(algorithm, data, ends);
        assert.deepEqual(
          got,
          expected(algorithm, data, ends),
          `${algorithm}, ${data.length} bytes at ${data.byteOffset}`,
        );
      }
    }
    // The bytes change in place: the thread sees the new ones (nothing was copied once and kept).
    whole[12345] ^= 1;
    assert.deepEqual(await thread.digests('sha256', whole, [whole.length]), expected('sha256', whole, [whole.length]));
    for (const b of [...small, whole]) pool.give(b);
  }
});

test('hash thread: jobs at once all answer with their own digests; an unknown algorithm rejects that job alone', async (t) => {
  const thread = new HashThread();
  t.after(() => thread.close());
  const pool = new BufferPool(4 * SLAB_BYTES, true);
  const bufs = [1, 2, 3, 4].map((k) => pool.take(SLAB_BYTES / 2 + 1).fill(k));
  const ends = [4096, 65536, SLAB_BYTES / 2 + 1];
  const bad = assert.rejects(thread.digests('no-such-digest', bufs[0], ends), /hashing thread/);
  const all = await Promise.all(bufs.map((b) => thread.digests('sha512-256', b, ends)));
  await bad;
  for (const [k, got] of all.entries()) assert.deepEqual(got, expected('sha512-256', bufs[k], ends));
});
