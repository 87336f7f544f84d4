// The .caibx container: parsing casync's own files, writing them back byte for
// byte, and rejecting malformed indexes with the field and byte offset.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  parseIndex,
  serializeIndex,
  ChunkIndexBuilder,
  IndexParser,
  indexFileSize,
  CHUNK_SIZE_LIMIT_MAX,
} from '../lib/format/caibx.js';
import { IndexFormatError } from '../lib/errors.js';
import { caibxPath, loadVectors, vectorInputs, vectorsCasyncVersion } from './helpers/vectors.js';
import { requireCasync } from './helpers/delta-images.js';
import { tmpDirSync } from './helpers/tmp.js';

const vectors = loadVectors();

test('all 19 casync vectors are present', () => {
  assert.equal(vectors.length, 19);
});

test("the fixtures are casync's: the installed casync re-makes three of them byte for byte", {
  timeout: 60_000,
}, async (t) => {
  if (!requireCasync(t)) return;
  const version = spawnSync('casync', ['--version'], { encoding: 'utf8' }).stdout.trim();
  if (!vectorsCasyncVersion().startsWith(version))
    return t.skip(`vectors made by ${vectorsCasyncVersion()}, not ${version}`);
  const input = await vectorInputs();
  const dir = tmpDirSync(t, 'vectors');
  for (const name of ['tiny-default', 'rand-1m-4k-16k-64k', 'mincut-64-256-1024']) {
    const v = vectors.find((x) => x.vector === name)!;
    writeFileSync(join(dir, v.input), input(v.input));
    const args = [...v.casync_options, 'make', `--store=${name}.castr`, `${name}.caibx`, v.input];
    const r = spawnSync('casync', args, { cwd: dir, encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), v.casync_stdout, `${name}: casync's whole-input digest`);
    assert.ok(readFileSync(join(dir, `${name}.caibx`)).equals(readFileSync(caibxPath(v))), `${name}.caibx`);
  }
});

for (const v of vectors) {
  test(`parse ${v.vector}: header and chunk table equal casync's`, () => {
    const bytes = readFileSync(caibxPath(v));
    const idx = parseIndex(bytes, { source: `${v.vector}.caibx` });
    assert.equal(idx.featureFlags, v.feature_flags);
    assert.equal(idx.digest, v.digest);
    assert.deepEqual(idx.params, { min: v.chunk_size_min, avg: v.chunk_size_avg, max: v.chunk_size_max });
    assert.equal(idx.count, v.chunk_count);
    assert.equal(idx.size, v.input_size);
    for (let i = 0; i < idx.count; i++) {
      const c = v.chunks[i];
      assert.equal(idx.start(i), c.offset, `chunk ${i} start`);
      assert.equal(idx.chunkSize(i), c.size, `chunk ${i} size`);
      assert.equal(idx.idHex(i), c.id, `chunk ${i} id`);
    }
    assert.equal(indexFileSize(idx.count), bytes.length);
  });

  test(`write ${v.vector}: byte-identical to casync's file`, () => {
    const bytes = readFileSync(caibxPath(v));
    const b = new ChunkIndexBuilder(v.feature_flags, {
      min: v.chunk_size_min,
      avg: v.chunk_size_avg,
      max: v.chunk_size_max,
    });
    for (const c of v.chunks) b.add(c.offset + c.size, Buffer.from(c.id, 'hex'));
    assert.ok(serializeIndex(b.finish()).equals(bytes));
  });
}

test('chunkAt finds the chunk containing an offset', () => {
  const v = vectors.find((x) => x.vector === 'mixed-8m-default')!;
  const idx = parseIndex(readFileSync(caibxPath(v)));
  for (const probe of [0, 1, 65535, 1_000_000, v.input_size - 1]) {
    const i = idx.chunkAt(probe);
    assert.ok(idx.start(i) <= probe && probe < idx.end(i), `offset ${probe} in chunk ${i}`);
  }
});

// ---- malformed input: each mutation must name its field and byte offset ----

const base = readFileSync(caibxPath(vectors.find((x) => x.vector === 'rand-1m-default')!));
const n = (base.length - 104) / 40;
const tail = 64 + 40 * n;

function mutated(fn: (b: Buffer) => Buffer | void): Buffer {
  const b = Buffer.from(base);
  return fn(b) ?? b;
}

function rejects(buf: Uint8Array, field: RegExp, offset?: number) {
  assert.throws(
    () => parseIndex(buf, { source: 'x.caibx' }),
    (err: unknown) => {
      assert.ok(err instanceof IndexFormatError, `expected IndexFormatError, got ${err}`);
      assert.match(err.field, field);
      if (offset !== undefined) assert.equal(err.offset, offset);
      assert.match(err.message, /^x\.caibx: invalid index: /);
      return true;
    },
  );
}

test('rejects a file shorter than an empty index', () => rejects(base.subarray(0, 50), /file size/));
test('rejects wrong INDEX magic', () =>
  rejects(
    mutated((b) => void b.writeBigUInt64LE(0x1234n, 8)),
    /INDEX\.type/,
    8,
  ));
test('rejects wrong INDEX size', () =>
  rejects(
    mutated((b) => void b.writeBigUInt64LE(47n, 0)),
    /INDEX\.size/,
    0,
  ));
test('rejects unknown feature bits', () =>
  rejects(
    mutated((b) => void b.writeBigUInt64LE(0xb000000000000000n | (1n << 40n), 16)),
    /feature_flags/,
    16,
  ));
test('rejects min > avg', () =>
  rejects(
    mutated((b) => void b.writeBigUInt64LE(1n << 20n, 24)),
    /chunk_size_avg/,
    32,
  ));
test('rejects a zero chunk size', () =>
  rejects(
    mutated((b) => void b.writeBigUInt64LE(0n, 24)),
    /chunk_size_min/,
    24,
  ));
test('rejects a max above 128 MiB', () =>
  rejects(
    mutated((b) => void b.writeBigUInt64LE(BigInt(CHUNK_SIZE_LIMIT_MAX) + 1n, 40)),
    /chunk_size_max/,
    40,
  ));
test('rejects a bad TABLE size placeholder', () =>
  rejects(
    mutated((b) => void b.writeBigUInt64LE(96n, 48)),
    /TABLE\.size/,
    48,
  ));
test('rejects a bad TABLE magic', () =>
  rejects(
    mutated((b) => void b.writeBigUInt64LE(1n, 56)),
    /TABLE\.type/,
    56,
  ));
test('rejects a truncated table (no tail)', () => rejects(base.subarray(0, 64 + 40 * 3 + 20), /table/));
test('rejects a table cut mid-tail', () => rejects(base.subarray(0, base.length - 8), /table|tail/));
test('rejects a bad tail marker', () =>
  rejects(
    mutated((b) => void b.writeBigUInt64LE(7n, tail + 32)),
    /tail\.marker/,
    tail + 32,
  ));
test('rejects a non-zero zero_fill2', () =>
  rejects(
    mutated((b) => void b.writeBigUInt64LE(1n, tail + 8)),
    /tail\.zero_fill2/,
    tail + 8,
  ));
test('rejects a wrong tail.table_size', () =>
  rejects(
    mutated((b) => void b.writeBigUInt64LE(16n, tail + 24)),
    /tail\.table_size/,
    tail + 24,
  ));
test('rejects a wrong tail.index_offset', () =>
  rejects(
    mutated((b) => void b.writeBigUInt64LE(0n, tail + 16)),
    /tail\.index_offset/,
    tail + 16,
  ));
test('rejects trailing bytes after the tail', () =>
  rejects(Buffer.concat([base, Buffer.alloc(3)]), /trailing data/, base.length));
test('rejects non-increasing offsets', () =>
  rejects(
    mutated((b) => void b.writeBigUInt64LE(b.readBigUInt64LE(64), 64 + 40)),
    /item\[1\]\.offset/,
    64 + 40,
  ));
test('rejects a chunk larger than chunk_size_max', () =>
  rejects(
    mutated((b) => void b.writeBigUInt64LE(300000n, 64)),
    /item\[0\]\.offset/,
    64,
  ));
test('rejects an absurd size without allocating it', () => {
  // A header claiming a huge table is refused from the buffer length alone.
  const huge = {
    length: 2 ** 40,
    buffer: base.buffer,
    byteOffset: 0,
    byteLength: base.length,
  } as unknown as Uint8Array;
  assert.throws(() => parseIndex(huge), IndexFormatError);
});
test('empty index round-trips to 104 bytes', () => {
  const v = vectors.find((x) => x.vector === 'empty-default')!;
  const bytes = readFileSync(caibxPath(v));
  const idx = parseIndex(bytes);
  assert.equal(idx.count, 0);
  assert.equal(idx.size, 0);
  assert.equal(serializeIndex(idx).length, 104);
  assert.ok(serializeIndex(idx).equals(bytes));
});
test('archive (.caidx) flags are accepted unless a blob index is required', () => {
  const b = mutated((x) => void x.writeBigUInt64LE(0xb0000001ffeffe26n, 16));
  assert.equal(parseIndex(b).isArchive, true);
  assert.throws(() => parseIndex(b, { allowArchive: false }), /archive index/);
});

test('an index read at its announced length keeps the table it was read into; the start handed out shares it', () => {
  const b = ChunkIndexBuilder.forDigest('sha512-256', { min: 16, avg: 64, max: 256 });
  for (let i = 1; i <= 3000; i++) b.add(i * 100, Buffer.alloc(32, i % 251));
  const bytes = serializeIndex(b.finish());
  const arriving = new IndexParser({}, bytes.length);
  arriving.push(bytes.subarray(0, 64 + 40 * 10 + 7));
  const head = arriving.prefix()!;
  arriving.push(bytes.subarray(64 + 40 * 10 + 7));
  const whole = arriving.finish();
  assert.equal(whole.count, 3000);
  assert.ok(whole.startsWith(head) && head.count === 10);
  // One table, not the parser's (held by the head) beside a copy of it.
  assert.equal(whole.ids.buffer, head.ids.buffer);
  assert.equal(whole.ends.buffer, head.ends.buffer);
  assert.equal(whole.ids.buffer.byteLength, 3000 * 32);
  // Without a length the table grows as items arrive: the index gets a copy of just its items.
  const unknown = new IndexParser({});
  unknown.push(bytes);
  const grown = unknown.finish();
  assert.equal(grown.ids.buffer.byteLength, 3000 * 32);
  assert.ok(serializeIndex(grown).equals(bytes) && serializeIndex(whole).equals(bytes));
});
