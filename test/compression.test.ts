// zstd through node:zlib: the frame walker that tells a whole .cacnk frame from a
// truncated one or one with data after it, on every frame shape zstd writes; and
// the block-pack FrameCompressor, whose long-lived engine must give the same
// frames as one-shot compression, in call order, however many calls overlap.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, createHash } from 'node:crypto';
import { constants, zstdCompressSync, zstdDecompressSync } from 'node:zlib';
import { compressChunk, decompressChunk, zstdContentSize, zstdFrameLength } from '../lib/store/compression.js';
import { FrameCompressor, FrameDecompressor } from '../lib/blockpack/frame-codec.js';
import { ZSTD_MAGIC } from '../lib/blockpack/format.js';

/** Deterministic incompressible bytes (raw blocks in zstd). */
function noise(size: number, seed: string): Buffer {
  const key = createHash('sha256').update(seed).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(size));
}

/** Text-like bytes that compress (compressed blocks). */
function text(size: number): Buffer {
  const words = 'the of and to in is for on with as by at from chunk seed index image update'.split(' ');
  const out: string[] = [];
  let n = 0;
  for (let i = 0; n < size; i++) {
    const w = words[(i * 7 + (i >> 3)) % words.length];
    out.push(w);
    n += w.length + 1;
  }
  return Buffer.from(out.join(' ')).subarray(0, size);
}

const C = constants;
const shapes: { name: string; data: Buffer; params: Record<number, number> }[] = [
  { name: 'text, content size', data: text(200_000), params: {} },
  {
    name: 'text, checksum, no content size',
    data: text(70_000),
    params: { [C.ZSTD_c_checksumFlag]: 1, [C.ZSTD_c_contentSizeFlag]: 0 },
  },
  { name: 'zeros (RLE blocks), 3 blocks', data: Buffer.alloc(300_000), params: {} },
  { name: 'noise (raw blocks), checksum', data: noise(140_000, 'raw'), params: { [C.ZSTD_c_checksumFlag]: 1 } },
  { name: 'one byte', data: Buffer.from('x'), params: {} },
  {
    name: 'mixed, level 19',
    data: Buffer.concat([text(50_000), noise(30_000, 'mix'), Buffer.alloc(40_000)]),
    params: { [C.ZSTD_c_compressionLevel]: 19 },
  },
];

test('zstdFrameLength finds the end of every frame shape, and -1 for every truncation', () => {
  for (const s of shapes) {
    const frame = zstdCompressSync(s.data, { params: s.params });
    assert.equal(zstdFrameLength(frame), frame.length, s.name);
    assert.equal(zstdFrameLength(Buffer.concat([frame, frame])), frame.length, `${s.name}: two frames`);
    for (let cut = 0; cut < frame.length; cut += Math.max(1, Math.floor(frame.length / 97))) {
      assert.equal(zstdFrameLength(frame.subarray(0, cut)), -1, `${s.name}: cut at ${cut} of ${frame.length}`);
    }
    assert.equal(zstdFrameLength(frame.subarray(0, frame.length - 1)), -1, `${s.name}: last byte missing`);
    // And the whole chunk path: decodes to the input, refuses a cut or an appended frame.
    assert.ok(decompressChunk(frame, s.data.length).equals(s.data), s.name);
    assert.throws(() => decompressChunk(frame.subarray(0, frame.length - 1), s.data.length), /truncated zstd frame/);
    assert.throws(
      () => decompressChunk(Buffer.concat([frame, compressChunk(Buffer.from('more'))]), s.data.length + 4),
      /bytes of trailing data after the zstd frame/,
    );
  }
});

test('compressChunk writes one frame with the content size, decodable with the exact limit only', () => {
  const data = text(100_000);
  const frame = compressChunk(data);
  assert.equal(zstdFrameLength(frame), frame.length);
  assert.ok(frame[4] >> 6 !== 0 || (frame[4] & 0x20) !== 0, 'frame header declares the content size');
  assert.ok(decompressChunk(frame, data.length).equals(data));
  assert.throws(() => decompressChunk(frame, data.length - 1), /decompresses to more than 99999 bytes/);
});

test('decompressChunk decodes into the buffer it is given, and a bad frame never spoils the next one', () => {
  for (const s of shapes) {
    const frame = zstdCompressSync(s.data, { params: s.params });
    const given: Buffer[] = [];
    const take = (n: number): Buffer => {
      const b = Buffer.alloc(n, 0xee);
      given.push(b);
      return b;
    };
    for (const exact of [false, true]) {
      given.length = 0;
      const out = decompressChunk(frame, s.data.length, take, exact);
      assert.ok(out.equals(s.data), s.name);
      assert.equal(given.length, 1, `${s.name}: one buffer taken`);
      assert.equal(out, given[0], `${s.name}: the bytes are in the taken buffer`);
    }
    // The index's size, wrong: too small is refused, too large gives what the frame holds (the caller checks it).
    if (s.data.length > 1) {
      assert.throws(() => decompressChunk(frame, s.data.length - 1, take, true), /decompresses to more than/, s.name);
      assert.ok(decompressChunk(frame, s.data.length, take, true).equals(s.data), `${s.name}: after a refusal`);
    }
    if (s.params[C.ZSTD_c_contentSizeFlag] === 0)
      assert.equal(decompressChunk(frame, s.data.length + 10, take, true).length, s.data.length, s.name);
    const declared = zstdContentSize(frame);
    assert.equal(declared, s.params[C.ZSTD_c_contentSizeFlag] === 0 ? -1 : s.data.length, `${s.name}: content size`);
  }
  const data = Buffer.concat([text(60_000), noise(20_000, 'reuse')]);
  const good = zstdCompressSync(data, { params: { [C.ZSTD_c_checksumFlag]: 1 } });
  const badChecksum = Buffer.from(good);
  badChecksum[badChecksum.length - 1] ^= 1;
  const badBlock = Buffer.from(good);
  badBlock[good.length >> 1] ^= 0x55;
  // The header says 80 000 bytes and the blocks hold more: a second frame's blocks under the first one's header.
  const longer = zstdCompressSync(Buffer.concat([data, data]), { params: { [C.ZSTD_c_checksumFlag]: 1 } });
  const lying = Buffer.from(longer);
  lying.set(good.subarray(0, 6), 0);
  for (const [name, frame, re] of [
    ['checksum', badChecksum, /corrupt zstd data/],
    ['block', badBlock, /corrupt zstd data|content does not match|decompresses to more|ends after/],
    ['more than declared', lying, /corrupt zstd data|more than/],
    ['over the limit', good, /decompresses to more than/],
  ] as const) {
    const limit = name === 'over the limit' ? data.length - 1 : data.length;
    assert.throws(() => decompressChunk(frame, limit, (n) => Buffer.alloc(n)), re, name);
    if (name === 'over the limit')
      assert.throws(() => decompressChunk(frame, limit), new RegExp(`more than ${limit} bytes`), name);
    assert.ok(decompressChunk(good, data.length, (n) => Buffer.alloc(n)).equals(data), `after ${name}`);
  }
});

test('FrameCompressor: overlapping calls give one-shot frames, in order, that FrameDecompressor restores', async () => {
  const dictionary = Buffer.concat([text(30_000), noise(2_000, 'dict')]);
  const level = 12;
  const compressor = new FrameCompressor(dictionary, level);
  const decompressor = new FrameDecompressor(dictionary);
  try {
    const frames = Array.from({ length: 40 }, (_, i) =>
      i % 5 === 4
        ? noise(4096, `f${i}`)
        : Buffer.concat([text(4096 * (1 + (i % 3))).subarray(i * 10), Buffer.alloc(i * 50)]),
    );
    const stored = await Promise.all(frames.map((f) => compressor.compress(f)));
    frames.forEach((f, i) => {
      if (i % 5 === 4) assert.equal(stored[i].length, f.length, `frame ${i}: incompressible, stored raw`);
      else {
        assert.ok(stored[i].length < f.length, `frame ${i} compressed`);
        const oneShot = zstdCompressSync(f, {
          dictionary,
          pledgedSrcSize: f.length,
          params: { [C.ZSTD_c_compressionLevel]: level, [C.ZSTD_c_checksumFlag]: 0, [C.ZSTD_c_dictIDFlag]: 0 },
        });
        assert.ok(Buffer.concat([ZSTD_MAGIC, stored[i]]).equals(oneShot), `frame ${i}: same bytes as one-shot`);
      }
      assert.ok(decompressor.decompress(stored[i], f.length, `frame ${i}`).equals(f), `frame ${i} restored`);
    });
    // Without the dictionary the frames do not decode.
    const plain = zstdCompressSync(frames[0]);
    assert.ok(zstdDecompressSync(plain).equals(frames[0]));
    assert.throws(
      () => new FrameDecompressor(Buffer.alloc(0)).decompress(stored[0], frames[0].length, 'frame 0'),
      /frame 0/,
    );
    assert.throws(
      () => decompressor.decompress(stored[1], frames[1].length - 1, 'frame 1'),
      /frame 1: frame decodes to more/,
    );
    // Many frames in one call (raw ones among them) give the same contents; a frame that does not decode, or not
    // to its length, fails the whole call (what it decodes to is for the block hashes to check).
    const lengths = frames.map((f) => f.length);
    const many = decompressor.decompressMany(stored, lengths);
    assert.ok(
      many?.every((c, i) => c.equals(frames[i])),
      'decoded together, every frame restored',
    );
    const corrupt = stored.map((b) => Buffer.from(b));
    corrupt[7][corrupt[7].length >> 1] ^= 0xff;
    assert.equal(decompressor.decompressMany(corrupt, lengths), undefined, 'a corrupt frame');
    assert.equal(
      decompressor.decompressMany(
        stored,
        lengths.map((n, i) => (i === 3 ? n - 1 : n)),
      ),
      undefined,
    );
    // Into the caller's buffer (reused call after call): the same contents, at the sums of the lengths before
    // them; a bad frame or a wrong length fails the call and leaves the decoder good for the next one.
    const total = lengths.reduce((n, l) => n + l, 0);
    assert.throws(() => decompressor.decompressManyInto(stored, lengths, Buffer.alloc(total)), RangeError);
    const out = Buffer.alloc(total + 2);
    for (let round = 0; round < 2; round++) {
      const into = decompressor.decompressManyInto(stored, lengths, out);
      assert.ok(
        into?.every((c, i) => c.equals(frames[i]) && c.buffer === out.buffer),
        `round ${round}: every frame restored into the buffer`,
      );
      assert.equal(decompressor.decompressManyInto(corrupt, lengths, out), undefined, 'a corrupt frame');
      for (const k of [3, 4]) {
        const shorter = lengths.map((n, i) => (i === k ? n - 1 : n));
        const longer = lengths.map((n, i) => (i === k ? n + 1 : n));
        assert.equal(decompressor.decompressManyInto(stored, shorter, out), undefined, `frame ${k} longer`);
        assert.equal(decompressor.decompressManyInto(stored, longer, out), undefined, `frame ${k} shorter`);
      }
      const garbage = stored.map((b, i) => (i === 2 ? Buffer.from('not a zstd frame at all') : b));
      assert.equal(decompressor.decompressManyInto(garbage, lengths, out), undefined, 'not zstd');
      decompressor.close();
    }
  } finally {
    compressor.close();
  }
});
