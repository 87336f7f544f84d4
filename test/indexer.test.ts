// indexFile / indexBuffer: casync's bytes for a real vector, and the parallel
// indexer equal to the serial one on inputs made to stress the segment seams.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, createHash } from 'node:crypto';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { serializeIndex, type ChunkParams } from '../lib/format/caibx.js';
import { chunkId, toHex } from '../lib/format/digest.js';
import { UsageError } from '../lib/errors.js';
import { indexBuffer, indexFile, type IndexOptions } from '../lib/chunking/indexer.js';
import { caibxPath, loadVectors, vectorInputs } from './helpers/vectors.js';
import { fileTmpDir } from './helpers/tmp.js';

const dir = fileTmpDir('indexer');

const SMALL: ChunkParams = { min: 256, avg: 1024, max: 4096 };
const DEFAULT: ChunkParams = { min: 16384, avg: 65536, max: 262144 };

/** Deterministic pseudo-random bytes: the AES-256-CTR keystream of a key derived from the label. */
function prng(label: string, n: number): Buffer {
  const key = createHash('sha256').update(label).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n));
}

function writeInput(name: string, data: Uint8Array): string {
  const path = join(dir, name);
  writeFileSync(path, data);
  return path;
}

/** indexFile with each thread count must serialize to the serial indexBuffer bytes. */
async function assertParallelEqualsSerial(
  name: string,
  data: Buffer,
  opts: Omit<IndexOptions, 'threads'>,
  threads: number[],
): Promise<void> {
  const path = writeInput(name, data);
  const serial = serializeIndex(indexBuffer(data, opts));
  for (const t of threads) {
    const got = serializeIndex(await indexFile(path, { ...opts, threads: t }));
    assert.ok(got.equals(serial), `${name}: ${t} threads differ from the serial index`);
  }
}

test("indexFile of mixed-8m equals casync's .caibx with 1, 2, 3 and 5 threads", async () => {
  const v = loadVectors().find((x) => x.vector === 'mixed-8m-default')!;
  const path = writeInput('mixed-8m.bin', (await vectorInputs())(v.input));
  const expected = readFileSync(caibxPath(v));
  for (const threads of [1, 2, 3, 5]) {
    const index = await indexFile(path, { params: DEFAULT, digest: 'sha512-256', threads });
    assert.ok(serializeIndex(index).equals(expected), `${threads} threads`);
  }
});

test('parallel = serial: long zero runs (whole segments inside a run of max-size chunks)', async () => {
  const data = Buffer.concat([
    prng('z1', 300_000),
    Buffer.alloc(2_500_000),
    prng('z2', 200_001),
    Buffer.alloc(777_777, 0xff),
    prng('z3', 5000),
  ]);
  await assertParallelEqualsSerial('zeros.bin', data, { params: SMALL, digest: 'sha512-256' }, [2, 3, 4]);
  // all zeros: segments can never agree with the true chunking, the merge chunks the rest itself
  await assertParallelEqualsSerial('all-zero.bin', Buffer.alloc(1_000_003), { params: SMALL, digest: 'sha256' }, [3]);
  // the IDs of zero chunks (hashed once and reused) are right
  const zeros = await indexFile(join(dir, 'all-zero.bin'), { params: SMALL, digest: 'sha256', threads: 2 });
  assert.equal(zeros.count, Math.ceil(1_000_003 / SMALL.max));
  for (let i = 0; i < zeros.count; i++)
    assert.equal(zeros.idHex(i), toHex(chunkId('sha256', new Uint8Array(zeros.chunkSize(i)))));
});

test('parallel = serial: repeated data', async () => {
  const block = prng('rep', 123_457);
  const data = Buffer.concat(Array.from({ length: 24 }, () => block));
  await assertParallelEqualsSerial('repeat.bin', data, { params: SMALL, digest: 'sha512-256' }, [2, 4]);
  await assertParallelEqualsSerial(
    'repeat-desync.bin',
    data,
    { params: { min: 2048, avg: 4096, max: 8192 }, digest: 'sha512-256', variant: 'desync' },
    [3],
  );
});

test('parallel = serial: segment edges at, just before and just after a chunk boundary', async () => {
  const base = prng('edges', 3_000_000);
  const serial = indexBuffer(base, { params: SMALL, digest: 'sha512-256' });
  const cut = serial.ends[serial.chunkAt(700_000)]; // a true boundary of every prefix longer than it
  // With 2 threads the edge lies at floor(size / 2).
  for (const delta of [-2, -1, 0, 1, 2]) {
    const size = 2 * cut + delta;
    await assertParallelEqualsSerial(
      `edge${delta}.bin`,
      base.subarray(0, size),
      { params: SMALL, digest: 'sha512-256' },
      [2],
    );
  }
  // Segments smaller than one chunk.
  await assertParallelEqualsSerial(
    'tiny-segments.bin',
    base.subarray(0, 20_000),
    { params: SMALL, digest: 'sha512-256' },
    [7],
  );
});

test('empty file and a file smaller than min', async () => {
  const empty = await indexFile(writeInput('empty.bin', new Uint8Array(0)), {
    params: DEFAULT,
    digest: 'sha512-256',
    threads: 2,
  });
  assert.equal(empty.count, 0);
  const small = await indexFile(writeInput('small.bin', prng('s', 1000)), {
    params: DEFAULT,
    digest: 'sha512-256',
    threads: 4,
  });
  assert.equal(small.count, 1);
  assert.equal(small.size, 1000);
});

test('progress reaches the total, never goes back', async () => {
  const data = prng('progress', 12 * 1024 * 1024 + 5);
  const path = writeInput('progress.bin', data);
  for (const threads of [1, 2]) {
    const seen: number[] = [];
    await indexFile(path, {
      params: DEFAULT,
      digest: 'sha512-256',
      threads,
      onProgress: (done, total) => {
        assert.equal(total, data.length);
        seen.push(done);
      },
    });
    assert.ok(seen.length >= 2, `${threads} threads: progress reported (${seen.length} calls)`);
    assert.equal(seen[seen.length - 1], data.length);
    for (let i = 1; i < seen.length; i++) assert.ok(seen[i] >= seen[i - 1], 'monotonic');
  }
});

test('abort stops the work promptly, serial and with workers', async () => {
  const path = writeInput('abort.bin', prng('abort', 12 * 1024 * 1024));
  for (const threads of [1, 2]) {
    const ac = new AbortController();
    let calls = 0;
    const t0 = performance.now();
    await assert.rejects(
      indexFile(path, {
        params: DEFAULT,
        digest: 'sha512-256',
        threads,
        signal: ac.signal,
        onProgress: () => {
          calls++;
          ac.abort();
        },
      }),
      { name: 'AbortError' },
    );
    assert.equal(calls, 1, `${threads} threads: no progress after the abort`);
    assert.ok(performance.now() - t0 < 5000, 'stopped within 5 s');
  }
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(indexFile(path, { params: DEFAULT, digest: 'sha512-256', signal: ac.signal }), {
    name: 'AbortError',
  });
  assert.throws(() => indexBuffer(new Uint8Array(10), { params: DEFAULT, digest: 'sha256', signal: ac.signal }), {
    name: 'AbortError',
  });
});

test('a file that shrinks while being indexed gives a clear error, serial and with workers', async () => {
  for (const threads of [1, 2]) {
    const path = writeInput(`shrink${threads}.bin`, prng('shrink', 24 * 1024 * 1024));
    let truncated = false;
    await assert.rejects(
      indexFile(path, {
        params: DEFAULT,
        digest: 'sha512-256',
        threads,
        onProgress: () => {
          if (!truncated) truncateSync(path, 1024 * 1024);
          truncated = true;
        },
      }),
      (err: Error) => {
        assert.match(err.message, /shrink\d\.bin.*ended at byte \d+ while reading up to byte \d+/);
        return true;
      },
    );
    assert.ok(truncated);
  }
});

test('bad input: missing file, directory, bad parameters', async () => {
  await assert.rejects(
    indexFile(join(dir, 'nope.bin'), { params: DEFAULT, digest: 'sha512-256' }),
    /ENOENT.*nope\.bin/,
  );
  await assert.rejects(indexFile(dir, { params: DEFAULT, digest: 'sha512-256' }), /not a regular file/);
  await assert.rejects(
    indexFile(join(dir, 'nope.bin'), { params: { min: 10, avg: 5, max: 20 }, digest: 'sha512-256' }),
    UsageError,
  );
  const path = writeInput('x.bin', prng('x', 100));
  await assert.rejects(
    indexFile(path, { params: DEFAULT, digest: 'sha512-256', threads: 0 }),
    /threads must be a positive integer/,
  );
});
