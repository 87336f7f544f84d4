// Fills a chunk store from a file and its index (casync's/desync's `chop`):
// every chunk is read, checked against the index, and stored when missing.
import { open } from 'node:fs/promises';
import type { ChunkIndex } from './caibx.js';
import { ChunkVerifyError, DeltadError } from './errors.js';
import { chunkId, toHex } from './digest.js';
import { readFileChunks } from './chunk-reader.js';
import type { WritableChunkStore } from './store/types.js';

export interface ChopOptions {
  /** Chunk writes in flight (default 8). */
  concurrency?: number;
  /** Called as bytes of the file are processed: (bytes done, file size). */
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

export interface ChopResult {
  /** Chunks in the index. */
  chunks: number;
  /** Distinct chunk IDs (written + existing). */
  unique: number;
  /** Distinct chunks newly written to the store. */
  written: number;
  /** Distinct chunks the store already had. */
  existing: number;
  /** Bytes read from the file (its size). */
  bytesIn: number;
  /** Uncompressed bytes of the chunks written (the store compresses them as it is configured). */
  bytesStored: number;
}

/**
 * Stores every chunk of `path` described by `index` that `store` lacks. Fails
 * on the first chunk whose bytes do not hash to the index's ID (naming the
 * chunk number, offset and ID), and when the file size differs from the index.
 */
export async function chopFile(index: ChunkIndex, path: string, store: WritableChunkStore, opts: ChopOptions = {}): Promise<ChopResult> {
  const concurrency = Math.max(1, opts.concurrency ?? 8);
  const result: ChopResult = { chunks: index.count, unique: 0, written: 0, existing: 0, bytesIn: 0, bytesStored: 0 };
  const fh = await open(path, 'r');
  const inFlight = new Set<Promise<void>>();
  let failure: unknown;
  try {
    const size = (await fh.stat()).size;
    if (size !== index.size) {
      throw new DeltadError('EMISMATCH', `${path}: file is ${size} bytes but the index describes ${index.size} bytes`);
    }
    const seen = new Set<string>();
    for await (const { chunk, offset, data } of readFileChunks(fh, index, opts.signal)) {
      if (failure) throw failure;
      const id = index.id(chunk);
      const actual = chunkId(index.digest, data);
      if (!actual.equals(id) || data.length !== index.chunkSize(chunk)) {
        throw new ChunkVerifyError(
          toHex(id),
          `(chunk #${chunk} at offset ${offset}, ${index.chunkSize(chunk)} bytes) does not match the file: its bytes hash to ${toHex(actual)}`,
          path,
        );
      }
      result.bytesIn += data.length;
      const hex = toHex(id);
      if (!seen.has(hex)) {
        seen.add(hex);
        result.unique++;
        const job = store.put(id, data).then(
          (written) => {
            if (written) {
              result.written++;
              result.bytesStored += data.length;
            } else result.existing++;
          },
          (err) => {
            failure ??= err;
          },
        );
        inFlight.add(job);
        void job.finally(() => inFlight.delete(job));
        if (inFlight.size >= concurrency) await Promise.race(inFlight);
      }
      opts.onProgress?.(result.bytesIn, index.size);
    }
    await Promise.all(inFlight);
    if (failure) throw failure;
    return result;
  } finally {
    // Never return (or close the file) with writes still running.
    await Promise.allSettled(inFlight);
    await fh.close();
  }
}
