// The chunker against casync's own output (test/fixtures/casync), desync's chunker
// output, the buzhash reference values, and the WASM kernel against the JS
// reference kernel on random data.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { BUZHASH_TABLE, rollHash, windowHash } from '../lib/chunking/buzhash.js';
import { serializeIndex, type ChunkParams } from '../lib/format/caibx.js';
import {
  Chunker,
  chunkEnds,
  cutTest,
  discriminator,
  parseChunkSize,
  type ChunkerKernel,
  type ChunkerVariant,
} from '../lib/chunking/chunker.js';
import type { DigestName } from '../lib/format/digest.js';
import { UsageError } from '../lib/errors.js';
import { indexBuffer } from '../lib/chunking/indexer.js';
import { caibxPath, loadDesyncVectors, loadVectors, vectorInputs } from './helpers/vectors.js';
import { requireCasync } from './helpers/delta-images.js';

const KERNELS: ChunkerKernel[] = ['wasm', 'js'];

const vectors = loadVectors();
/** A vector input, generated once and checked against the SHA-256 recorded with the vectors. */
const input = await vectorInputs();

/** Reproducible pseudo-random bytes (AES-256-CTR keystream). */
function keystream(n: number, seed: number): Buffer {
  return createCipheriv('aes-256-ctr', Buffer.alloc(32, seed), Buffer.alloc(16)).update(Buffer.alloc(n));
}

function paramsOf(v: { chunk_size_min: number; chunk_size_avg: number; chunk_size_max: number }): ChunkParams {
  return { min: v.chunk_size_min, avg: v.chunk_size_avg, max: v.chunk_size_max };
}

function expectedEnds(v: { chunks: { offset: number; size: number }[] }): number[] {
  return v.chunks.map((c) => c.offset + c.size);
}

/** Chunk ends when the input is pushed in pieces of `piece` bytes. */
function streamedEnds(
  data: Uint8Array,
  params: ChunkParams,
  piece: number,
  kernel: ChunkerKernel,
  variant?: ChunkerVariant,
): number[] {
  const chunker = new Chunker(params, { kernel, variant, blockSize: 65536 });
  const ends: number[] = [];
  for (let off = 0; off < data.length; off += piece) ends.push(...chunker.push(data.subarray(off, off + piece)));
  ends.push(...chunker.finish());
  return ends;
}

test("buzhash table is casync's (found byte for byte in the casync binary) and has the known SHA-256", (t) => {
  const le = Buffer.alloc(1024);
  BUZHASH_TABLE.forEach((v, i) => {
    le.writeUInt32LE(v, i * 4);
  });
  assert.equal(
    createHash('sha256').update(le).digest('hex'),
    '5b52080d38287da9d2e278466e3e0db7ec98e5e8b226f50612a56fa012b1f660',
  );
  if (!requireCasync(t)) return;
  const binary = (process.env.PATH ?? '')
    .split(delimiter)
    .map((d) => join(d, 'casync'))
    .find((p) => {
      try {
        return readFileSync(p).length > 0;
      } catch {
        return false;
      }
    });
  assert.ok(binary, 'casync binary on PATH');
  assert.ok(readFileSync(binary).includes(le), `the 1024-byte table (little-endian u32) occurs in ${binary}`);
});

test('buzhash reference values (SPEC §3.3)', () => {
  const seq = Uint8Array.from({ length: 52 }, (_, i) => i);
  let h = windowHash(seq.subarray(0, 48));
  assert.equal(h, 0x6b67dec6);
  const rolled = [0xa3fc25f1, 0xc2d4885f, 0x0c52c0b3, 0xfcdadbb5];
  for (let i = 0; i < 4; i++) {
    h = rollHash(h, seq[i], seq[48 + i]);
    assert.equal(h, rolled[i]);
    assert.equal(h, windowHash(seq.subarray(i + 1, i + 49)));
  }
  assert.equal(windowHash(new Uint8Array(48)), 0x9e489e48);
  assert.equal(windowHash(new Uint8Array(48).fill(0xff)), 0xfdc4023b);
});

test("discriminator table (SPEC §3.2), and casync's clamp", () => {
  const table: [number, number][] = [
    [1024, 768],
    [4096, 3075],
    [8192, 6153],
    [16384, 12318],
    [30000, 22588],
    [32768, 24680],
    [65536, 49535],
    [131072, 99777],
    [262144, 202440],
    [1048576, 886711],
  ];
  for (const [avg, d] of table) {
    assert.equal(discriminator({ min: 64, avg, max: avg * 4 }, 'desync'), d, `avg ${avg}`);
    assert.equal(discriminator({ min: 64, avg, max: avg * 4 }, 'casync'), d, `avg ${avg} (inside [min,max])`);
  }
  assert.equal(discriminator({ min: 65536, avg: 65536, max: 262144 }, 'casync'), 65536);
  assert.equal(discriminator({ min: 65536, avg: 65536, max: 262144 }, 'desync'), 49535);
  assert.equal(discriminator({ min: 16, avg: 64, max: 40 }, 'casync'), 40);
});

test('division-free cut test equals h % d == d - 1', () => {
  const ds = [
    1,
    2,
    3,
    7,
    48,
    64,
    192,
    768,
    1 << 16,
    12318,
    22588,
    49535,
    65536,
    99777,
    202440,
    886711,
    134217728,
    100000,
    0x7fffffff,
  ];
  const hs = new Uint32Array(keystream(4 * 20000, 1).buffer);
  for (const d of ds) {
    const t = cutTest(d);
    const special = [0, 1, d - 1, d, 2 * d - 1, 0xffffffff, 0xfffffffe, (Math.floor(0xffffffff / d) * d - 1) >>> 0];
    for (const h of [...special, ...hs]) {
      const m = Math.imul((h + 1) | 0, t.inverse | 0) >>> 0;
      const r = t.shift === 0 ? m : ((m >>> t.shift) | (m << (32 - t.shift))) >>> 0;
      const fast = r <= t.limit && (h !== 0xffffffff || t.allOnesCuts);
      assert.equal(fast, h % d === d - 1, `d=${d} h=${h}`);
    }
  }
});

test('parameter checks', () => {
  assert.throws(() => new Chunker({ min: 32, avg: 64, max: 256 }, { variant: 'desync' }), UsageError);
  assert.throws(() => new Chunker({ min: 16, avg: 32, max: 40 }), UsageError);
  assert.throws(() => new Chunker({ min: 100, avg: 50, max: 200 }), UsageError);
  assert.throws(() => new Chunker({ min: 0, avg: 50, max: 200 }), UsageError);
  assert.throws(() => new Chunker({ min: 1, avg: 50, max: 256 * 1024 * 1024 }), UsageError);
  // fixed size below the window is allowed (casync's special case)
  assert.deepEqual(chunkEnds(new Uint8Array(100), { min: 16, avg: 16, max: 16 }), [16, 32, 48, 64, 80, 96, 100]);
  assert.deepEqual(chunkEnds(new Uint8Array(0), { min: 64, avg: 256, max: 1024 }), []);
});

test('--chunk-size parsing follows casync', () => {
  assert.deepEqual(parseChunkSize('16384:65536:262144'), { min: 16384, avg: 65536, max: 262144 });
  assert.deepEqual(parseChunkSize('16K:64K:256K'), { min: 16384, avg: 65536, max: 262144 });
  assert.deepEqual(parseChunkSize('32768'), { min: 8192, avg: 32768, max: 131072 });
  assert.deepEqual(parseChunkSize('64M'), { min: 16 << 20, avg: 64 << 20, max: 128 << 20 });
  for (const bad of ['', '1K:2K', '64Q', '-5', '300B:200B:400B', '16B:32B:40B'])
    assert.throws(() => parseChunkSize(bad), UsageError, bad);
  assert.throws(() => parseChunkSize('32B:64B:256B', 'desync'), UsageError);
  // Unitless sizes below 1 KiB: desync's KiB habit is refused with both spellings suggested.
  assert.throws(() => parseChunkSize('16:64:256'), /write 16K:64K:256K for KiB, or 16B:64B:256B for bytes/);
  assert.throws(() => parseChunkSize('512'), /write 512K/);
  assert.deepEqual(parseChunkSize('64B:256B:1024'), { min: 64, avg: 256, max: 1024 });
});

for (const v of vectors) {
  test(`casync vector ${v.vector}: boundaries, IDs and .caibx bytes`, () => {
    const data = input(v.input);
    const params = paramsOf(v);
    const expected = expectedEnds(v);
    for (const kernel of KERNELS) {
      assert.deepEqual(chunkEnds(data, params, { kernel }), expected, `${kernel} kernel`);
    }
    const index = indexBuffer(data, { params, digest: v.digest as DigestName });
    assert.equal(index.featureFlags, v.feature_flags);
    assert.equal(index.count, v.chunks.length);
    v.chunks.forEach((c, i) => {
      assert.equal(index.start(i), c.offset);
      assert.equal(index.chunkSize(i), c.size);
      assert.equal(index.idHex(i), c.id, `chunk ${i} ID`);
    });
    assert.ok(serializeIndex(index).equals(readFileSync(caibxPath(v))), "serialized index equals casync's .caibx");
  });
}

test('streaming in odd pieces (1, 4095, 65537 bytes) gives the same chunks, both kernels', () => {
  for (const v of vectors) {
    const data = input(v.input);
    // Byte-at-a-time feeding is slow by nature: keep it to the small inputs (tiny, mincut).
    const pieces = v.input_size <= 300000 ? [1, 4095, 65537] : [4095, 65537];
    for (const piece of pieces) {
      for (const kernel of KERNELS) {
        assert.deepEqual(
          streamedEnds(data, paramsOf(v), piece, kernel),
          expectedEnds(v),
          `${v.vector} piece ${piece} ${kernel}`,
        );
      }
    }
  }
});

test('reset() starts a new stream on the same chunker', () => {
  const v = vectors.find((x) => x.vector === 'mincut-default')!;
  const chunker = new Chunker(paramsOf(v), { blockSize: 65536 });
  chunker.push(input('rand-1m.bin').subarray(0, 300_001)); // leaves a partial chunk and a non-zero tail behind
  chunker.reset();
  assert.equal(chunker.position, 0);
  const ends = [...chunker.push(input(v.input)), ...chunker.finish()];
  assert.deepEqual(ends, expectedEnds(v));
});

test("desync variant reproduces desync's chunker and agrees with casync elsewhere", async () => {
  const desyncVectors = loadDesyncVectors();
  assert.equal(desyncVectors.length, 3);
  for (const dv of desyncVectors) {
    const data = input(dv.input);
    const params = { min: dv.min, avg: dv.avg, max: dv.max };
    const ends: number[] = [];
    for (let i = 0, end = 0; i < dv.sizes.length; i++) ends.push((end += dv.sizes[i]));
    assert.equal(ends.at(-1), data.length, `${dv.vector}: desync's chunks cover the input`);
    for (const kernel of KERNELS) {
      assert.deepEqual(chunkEnds(data, params, { kernel, variant: 'desync' }), ends, `${dv.vector} ${kernel}`);
    }
    assert.deepEqual(streamedEnds(data, params, 65537, 'wasm', 'desync'), ends, `${dv.vector} streamed`);
    const casyncEnds = expectedEnds(vectors.find((v) => v.vector === dv.vector)!);
    assert.notDeepEqual(ends, casyncEnds, `${dv.vector}: desync differs from casync here`);
  }
  const differs = new Set([...desyncVectors.map((d) => d.vector), 'mincut-16-64-256']);
  for (const v of vectors) {
    if (differs.has(v.vector) || v.digest !== 'sha512-256') continue;
    assert.deepEqual(
      chunkEnds(input(v.input), paramsOf(v), { variant: 'desync' }),
      expectedEnds(v),
      `${v.vector} desync = casync`,
    );
  }
});

test("zero runs: the WASM kernel's skip equals rolling through every byte", () => {
  // Long zero runs with single non-zero bytes at awkward places, then random data.
  const data = Buffer.concat([
    Buffer.alloc(300_000),
    keystream(50_000, 9),
    Buffer.alloc(1_000_001),
    keystream(10, 3),
    Buffer.alloc(70_000),
  ]);
  for (const at of [300_000 - 1, 300_000 - 47, 400_000, 400_048, 700_001]) data[at] = 1;
  const paramSets: ChunkParams[] = [
    { min: 16384, avg: 65536, max: 262144 },
    { min: 48, avg: 256, max: 1000 },
    { min: 3943, avg: 3943, max: 15772 }, // d = 3943: a window of 48 zeros is a cut
    { min: 64, avg: 64, max: 64 },
  ];
  for (const params of paramSets) {
    const js = chunkEnds(data, params, { kernel: 'js' });
    assert.deepEqual(chunkEnds(data, params, { kernel: 'wasm' }), js, `${params.min}:${params.avg}:${params.max}`);
    assert.deepEqual(
      streamedEnds(data, params, 4097, 'wasm'),
      js,
      `${params.min}:${params.avg}:${params.max} streamed`,
    );
  }
  assert.equal(discriminator({ min: 3943, avg: 3943, max: 15772 }), 3943);
  assert.equal(windowHash(new Uint8Array(48)) % 3943, 3942);
});

test('WASM kernel equals JS kernel on random data and parameters', () => {
  let seed = 12345;
  const rand = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  // Low-entropy data (few distinct bytes, zero runs) and random bytes, small sizes for many cuts.
  const random = keystream(1 << 20, 7);
  const lowEntropy = Uint8Array.from(random, (b, i) => ((i >> 12) % 3 === 0 ? 0 : b & 3));
  for (let round = 0; round < 24; round++) {
    const min = 1 + rand(300);
    const avg = min + rand(2000);
    const max = Math.max(avg + rand(5000), 48);
    const params = { min, avg, max };
    const variant: ChunkerVariant = min >= 48 && round % 2 === 1 ? 'desync' : 'casync';
    const data = round % 3 === 0 ? lowEntropy : random;
    const js = chunkEnds(data, params, { kernel: 'js', variant });
    const wasm = chunkEnds(data, params, { kernel: 'wasm', variant });
    assert.deepEqual(wasm, js, `params ${min}:${avg}:${max} ${variant}`);
    const piece = 1 + rand(100000);
    assert.deepEqual(streamedEnds(data, params, piece, 'wasm', variant), js, `streamed ${piece}`);
    let prev = 0;
    for (const end of js) {
      assert.ok(end - prev >= 1 && end - prev <= max, `chunk size ${end - prev} within 1..${max}`);
      prev = end;
    }
    assert.equal(prev, data.length);
  }
});
