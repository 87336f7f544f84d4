// lib/store/chunk-encoder.ts: EncoderPool.hash gives the IDs encodeBatch gives, on a worker, while the caller's
// buffer stays the caller's (not moved away), for more jobs at once than it has shared buffers, with buffers
// of different sizes, and for bytes already in shared memory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chunkId, type DigestName } from '../lib/format/digest.js';
import { EncoderPool } from '../lib/store/chunk-encoder.js';

/** Chunk ends of a batch cut into pieces of 1..maxChunk bytes. */
function cuts(size: number, maxChunk: number, seed: number): number[] {
  const ends: number[] = [];
  let at = 0;
  let x = seed;
  while (at < size) {
    x = (x * 1103515245 + 12345) >>> 0;
    at = Math.min(size, at + 1 + (x % maxChunk));
    ends.push(at);
  }
  return ends;
}

function expectedIds(data: Uint8Array, ends: number[], digest: DigestName): Buffer {
  let start = 0;
  return Buffer.concat(
    ends.map((end) => {
      const id = chunkId(digest, data.subarray(start, end));
      start = end;
      return id;
    }),
  );
}

for (const threads of [0, 1]) {
  test(`hash() with ${threads} thread(s): the right IDs, and the caller keeps its bytes`, async () => {
    const pool = new EncoderPool(threads);
    try {
      // More jobs than shared buffers (two per thread), sizes across the buffers' 1 MiB steps.
      const jobs = [300_000, 2_500_000, 1, 1_048_576, 1_048_577, 700_000, 3_000_000, 64].map((size, k) => {
        const data = randomBytes(size);
        return {
          data,
          copy: Buffer.from(data),
          ends: cuts(size, 200_000, k + 1),
          digest: (k % 2 ? 'sha256' : 'sha512-256') as DigestName,
        };
      });
      const ids = await Promise.all(jobs.map((j) => pool.hash(j.data, j.ends, j.digest)));
      for (const [k, j] of jobs.entries()) {
        assert.deepEqual(Buffer.from(ids[k]), expectedIds(j.copy, j.ends, j.digest), `job ${k}: IDs`);
        assert.equal(j.data.byteLength, j.copy.length, `job ${k}: the buffer was not moved away`);
        assert.ok(j.data.equals(j.copy), `job ${k}: the bytes are unchanged`);
      }
      // Bytes already in shared memory are hashed where they are.
      const shared = new Uint8Array(new SharedArrayBuffer(100_000));
      shared.set(randomBytes(shared.length));
      const ends = cuts(shared.length, 30_000, 9);
      assert.deepEqual(
        Buffer.from(await pool.hash(shared, ends, 'sha512-256')),
        expectedIds(shared, ends, 'sha512-256'),
      );
      // A wrong byte gives another ID: the check can fail.
      const bad = Buffer.from(jobs[0].copy);
      bad[0] ^= 1;
      const badIds = await pool.hash(bad, jobs[0].ends, jobs[0].digest);
      assert.notDeepEqual(Buffer.from(badIds).subarray(0, 32), Buffer.from(ids[0]).subarray(0, 32));
      assert.deepEqual(
        Buffer.from(badIds).subarray(32),
        Buffer.from(ids[0]).subarray(32),
        'only the first chunk changed',
      );
    } finally {
      await pool.close();
    }
  });
}
