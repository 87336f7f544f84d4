// The body of one batch answer (docs/FLEET.md, lib/fleet/batch-wire.ts): every
// distinct requested chunk as a frame in the order chunks become ready, a
// MISSING frame for those no source has, ERROR frames for the rest when
// fetching fails, and the END frame. Chunk payloads are the cached .cacnk bytes
// when the cache holds them, else compressed here.
import { toHex } from '../format/digest.js';
import { compressChunk } from '../store/compression.js';
import { BATCH_MAGIC, FrameType, encodeEnd, encodeFrame } from './batch-wire.js';
import type { CachingStore } from './caching-store.js';
import type { ChunkCache } from './chunk-cache.js';

/** The buffers of a batch answer for `ids`, to be written in order. */
export async function* batchResponse(
  ids: Buffer[],
  chunks: CachingStore,
  cache: ChunkCache,
  onWarning: (message: string) => void = () => {},
): AsyncGenerator<Buffer> {
  const unique = [...new Map(ids.map((id) => [toHex(id), id])).values()];
  let frames = 0;
  yield BATCH_MAGIC;
  const done = new Set<number>();
  const frame = (parts: Buffer[]) => {
    frames++;
    return parts;
  };
  try {
    for await (const { index, data } of chunks.getMany(unique.map((id) => ({ id })))) {
      done.add(index);
      const body = (await cache.getCompressed(toHex(unique[index]))) ?? compressChunk(data);
      yield* frame(encodeFrame(FrameType.Chunk, unique[index], data.length, body));
    }
    for (let i = 0; i < unique.length; i++)
      if (!done.has(i)) yield* frame(encodeFrame(FrameType.Missing, unique[i], 0));
  } catch (err) {
    const msg = Buffer.from((err as Error).message);
    for (let i = 0; i < unique.length; i++)
      if (!done.has(i)) yield* frame(encodeFrame(FrameType.Error, unique[i], 0, msg));
    onWarning(`batch: ${(err as Error).message}`);
  }
  yield encodeEnd(frames);
}
