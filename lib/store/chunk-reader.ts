// Reads a file chunk by chunk as an index describes it, in batched reads of
// about 1 MiB (small reads cost more CPU than the hashing).
import type { FileHandle } from 'node:fs/promises';
import type { ChunkIndex } from '../format/caibx.js';
import { readFully } from '../util/fs-io.js';

/** Consecutive whole chunks [first, end) read in one call. */
export interface ChunkBatch {
  first: number;
  end: number;
  /** File offset of chunk `first`. */
  offset: number;
  /** The file's bytes; shorter than the chunks' total when the file ends early. */
  data: Buffer;
}

export const BATCH_BYTES = 1024 * 1024;

/**
 * Batch buffers handed back for reuse once their batch is done: a fresh
 * buffer per batch is garbage that V8 collects late, in every thread it
 * visits. Every buffer owns its whole ArrayBuffer, so it may be transferred
 * to a worker (a Buffer from Node's shared pool must never be).
 */
export class BatchBuffers {
  private readonly free: ArrayBuffer[] = [];
  /** @param keep buffers kept for reuse at most */
  constructor(private readonly keep = 8) {}

  take(size: number): Buffer {
    const i = this.free.findIndex((b) => b.byteLength >= size);
    const ab = i >= 0 ? this.free.splice(i, 1)[0] : new ArrayBuffer(Math.max(size, BATCH_BYTES));
    return Buffer.from(ab, 0, size);
  }

  give(data: Uint8Array): void {
    const ab = data.buffer as ArrayBuffer;
    if (ab.byteLength > 0 && this.free.length < this.keep) this.free.push(ab);
  }
}

/**
 * Yields the chunks of `index` from the open file in batches of about
 * BATCH_BYTES (at least one chunk each), in order, in buffers from `buffers`
 * (give them back when done). Stops with the signal's reason when aborted.
 */
export async function* readChunkBatches(
  fh: FileHandle,
  index: ChunkIndex,
  buffers: BatchBuffers,
  signal?: AbortSignal,
): AsyncGenerator<ChunkBatch> {
  let i = 0;
  while (i < index.count) {
    signal?.throwIfAborted();
    const first = i;
    const start = index.start(first);
    let end = index.end(i++);
    while (i < index.count && index.end(i) - start <= BATCH_BYTES) end = index.end(i++);
    const buf = buffers.take(end - start);
    const got = await readFully(fh, buf, start);
    yield { first, end: i, offset: start, data: buf.subarray(0, got) };
  }
}

/** The bytes of chunk `c` within its batch (short or empty past the end of the file). */
export function chunkOfBatch(index: ChunkIndex, batch: ChunkBatch, c: number): Buffer {
  const from = Math.min(index.start(c) - batch.offset, batch.data.length);
  const to = Math.min(index.end(c) - batch.offset, batch.data.length);
  return batch.data.subarray(from, to);
}
