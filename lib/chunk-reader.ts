// Reads a file chunk by chunk as an index describes it, in large batched reads
// (several MiB per read call: small reads cost more CPU than the hashing).
import type { FileHandle } from 'node:fs/promises';
import type { ChunkIndex } from './caibx.js';

export interface FileChunk {
  /** Chunk number in the index. */
  chunk: number;
  offset: number;
  /** The file's bytes for this chunk; shorter than the index size when the file ends early. */
  data: Buffer;
}

const BATCH_BYTES = 4 * 1024 * 1024;

/**
 * Yields every chunk of `index` from the open file, in order. A file shorter
 * than the index yields short (possibly empty) chunks from its end on, so
 * callers can report each one. Stops with the signal's reason when aborted.
 */
export async function* readFileChunks(fh: FileHandle, index: ChunkIndex, signal?: AbortSignal): AsyncGenerator<FileChunk> {
  let i = 0;
  while (i < index.count) {
    signal?.throwIfAborted();
    const first = i;
    const start = index.start(first);
    // At least one chunk per batch, then whole chunks up to the batch size.
    let end = index.end(i++);
    while (i < index.count && index.end(i) - start <= BATCH_BYTES) end = index.end(i++);
    const buf = Buffer.allocUnsafe(end - start);
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, start + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    for (let c = first; c < i; c++) {
      const from = index.start(c) - start;
      const to = Math.min(index.end(c) - start, got);
      yield { chunk: c, offset: index.start(c), data: buf.subarray(from, Math.max(from, to)) };
    }
  }
}
