// Without node:zlib's native handle (util/zstd-into.ts finds none on some
// other runtime), the store's chunks and the block pack's frames take the
// one-shot path and decode to the same bytes, into the caller's buffers,
// with the same errors. Its own file: the store keeps its decoders for the
// process, so this must run before any decoder is made.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { ZstdInto } from '../lib/util/zstd-into.js';
import { compressChunk, decompressChunk } from '../lib/store/compression.js';
import { FrameCompressor, FrameDecompressor } from '../lib/blockpack/frame-codec.js';
import { ChunkEncodingError } from '../lib/errors.js';

let opened = 0;
(ZstdInto as unknown as { open: () => undefined }).open = () => {
  opened++;
  return undefined;
};

const content = (n: number, seed: number): Buffer =>
  Buffer.concat([Buffer.alloc(n >> 1, seed), randomBytes(n - (n >> 1))]);

test('no native zstd handle: store chunks decode one-shot, into the buffer taken, errors unchanged', () => {
  const chunk = content(64 * 1024, 1);
  const frame = compressChunk(chunk);
  const taken: Buffer[] = [];
  const take = (size: number): Buffer => {
    const b = Buffer.alloc(size);
    taken.push(b);
    return b;
  };
  const out = decompressChunk(frame, chunk.length, take, true);
  assert.ok(out.equals(chunk), 'the chunk restored');
  assert.ok(opened > 0, 'the handle was looked for');
  assert.ok(taken.length === 1 && out.buffer === taken[0].buffer, 'into the buffer taken');
  assert.throws(() => decompressChunk(frame, chunk.length - 1), ChunkEncodingError);
  // Cut short (a flipped byte in a frame without checksum may decode: the chunk ID is what catches it).
  assert.throws(() => decompressChunk(frame.subarray(0, frame.length >> 1), chunk.length), /truncated zstd frame/);
});

test('no native zstd handle: pack frames decode one-shot into the caller buffer; a bad frame fails the call', async () => {
  const dictionary = Buffer.alloc(0);
  const compressor = new FrameCompressor(dictionary, 3);
  const frames = [content(4096, 2), content(8192, 3), randomBytes(4096)];
  const stored = await Promise.all(frames.map((f) => compressor.compress(f)));
  compressor.close();
  const lengths = frames.map((f) => f.length);
  const decompressor = new FrameDecompressor(dictionary);
  const out = Buffer.alloc(lengths.reduce((n, l) => n + l, 0) + 1);
  const into = decompressor.decompressManyInto(stored, lengths, out);
  assert.ok(
    into?.every((c, i) => c.equals(frames[i]) && c.buffer === out.buffer),
    'every frame restored into the buffer',
  );
  const garbage = stored.map((b, i) => (i === 1 ? Buffer.from('not a zstd frame at all') : b));
  assert.equal(decompressor.decompressManyInto(garbage, lengths, out), undefined, 'not a zstd frame');
  const shorter = lengths.map((n, i) => (i === 0 ? n - 1 : n));
  assert.equal(decompressor.decompressManyInto(stored, shorter, out), undefined, 'a frame longer than its length');
  decompressor.close();
});
