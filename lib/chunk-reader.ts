// Reads a file chunk by chunk as an index describes it, in large batched reads
// (several MiB per read call: small reads cost more CPU than the hashing).
import type { FileHandle } from 'node:fs/promises';
import type { ChunkIndex } from './caibx.js';

/** Consecutive whole chunks [first, end) read in one call. */
export interface ChunkBatch {
  first: number;
  end: number;
  /** File offset of chunk `first`. */
  offset: number;
  /** The file's bytes; shorter than the chunks' total when the file ends early. */
  data: Buffer;
}

export const BATCH_BYTES = 4 * 1024 * 1024;

/**
 * Yields the chunks of `index` from the open file in batches of about
 * BATCH_BYTES (at least one chunk each), in order. Stops with the signal's
 * reason when aborted.
 */
export async function* readChunkBatches(fh: FileHandle, index: ChunkIndex, signal?: AbortSignal): AsyncGenerator<ChunkBatch> {
  let i = 0;
  while (i < index.count) {
    signal?.throwIfAborted();
    const first = i;
    const start = index.start(first);
    let end = index.end(i++);
    while (i < index.count && index.end(i) - start <= BATCH_BYTES) end = index.end(i++);
    const buf = Buffer.allocUnsafe(end - start);
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, start + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    yield { first, end: i, offset: start, data: buf.subarray(0, got) };
  }
}

/** The bytes of chunk `c` within its batch (short or empty past the end of the file). */
export function chunkOfBatch(index: ChunkIndex, batch: ChunkBatch, c: number): Buffer {
  const from = Math.min(index.start(c) - batch.offset, batch.data.length);
  const to = Math.min(index.end(c) - batch.offset, batch.data.length);
  return batch.data.subarray(from, to);
}
