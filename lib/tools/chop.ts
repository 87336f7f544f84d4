// Fills a chunk store from a file and its index (casync's/desync's `chop`):
// every chunk is read, checked against the index, and stored when missing.
// Reading and writing stay on this thread; hashing and compression run on
// worker threads, batch by batch, so both cores work.
import { open } from 'node:fs/promises';
import type { ChunkIndex } from '../format/caibx.js';
import { ChunkVerifyError, DeltadError } from '../errors.js';
import { toHex } from '../format/digest.js';
import { BatchBuffers, chunkOfBatch, readChunkBatches, type ChunkBatch } from '../store/chunk-reader.js';
import { defaultThreads, EncoderPool, type EncodeResult } from '../store/chunk-encoder.js';
import { DEFAULT_ZSTD_LEVEL } from '../store/compression.js';
import { LocalStore } from '../store/local-store.js';
import type { WritableChunkStore } from '../store/types.js';
import { forEachConcurrent } from '../util/async-pool.js';

export interface ChopOptions {
  /** Batches (about 4 MiB each) being hashed, compressed or written at once (default 2 × threads, at least 4: writes overlap hashing). */
  concurrency?: number;
  /** Hashing/compression threads; 0 = on this thread (default: available cores, at most 4). */
  threads?: number;
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
  /** Bytes of the chunk files written (compressed when the store compresses). */
  bytesStored: number;
}

/**
 * Stores every chunk of `path` described by `index` that `store` lacks. Fails
 * on the first chunk whose bytes do not hash to the index's ID (naming the
 * chunk number, offset and ID), and when the file size differs from the index.
 */
export async function chopFile(
  index: ChunkIndex,
  path: string,
  store: WritableChunkStore,
  opts: ChopOptions = {},
): Promise<ChopResult> {
  const threads = Math.max(0, opts.threads ?? defaultThreads());
  const window = Math.max(1, opts.concurrency ?? Math.max(4, 2 * threads));
  // A local zstd/raw store takes bytes in its own format, so they can be prepared off-thread.
  const local = store instanceof LocalStore ? store : undefined;
  const compressOffThread = local !== undefined && !local.uncompressed;
  const result: ChopResult = { chunks: index.count, unique: 0, written: 0, existing: 0, bytesIn: 0, bytesStored: 0 };

  const fh = await open(path, 'r');
  const pool = new EncoderPool(threads);
  const buffers = new BatchBuffers(window + threads);
  try {
    const size = (await fh.stat()).size;
    if (size !== index.size) {
      throw new DeltadError(
        'ERR_DELTAD_SIZE_MISMATCH',
        `${path}: file is ${size} bytes but the index describes ${index.size} bytes`,
      );
    }
    const seen = new Set<string>();

    // Which chunks of the batch this run must store: first occurrences the store lacks.
    const toStore = async (batch: ChunkBatch): Promise<boolean[]> => {
      const checks: Promise<boolean>[] = [];
      for (let c = batch.first; c < batch.end; c++) {
        const hex = index.idHex(c);
        if (seen.has(hex)) {
          checks.push(Promise.resolve(false));
          continue;
        }
        seen.add(hex);
        result.unique++;
        checks.push(
          store.has(index.id(c), opts.signal).then((present) => {
            if (present) result.existing++;
            return !present;
          }),
        );
      }
      return Promise.all(checks);
    };

    const finish = async (read: ChunkBatch, wanted: boolean[], encoded: EncodeResult): Promise<void> => {
      // The bytes went to a worker and came back in encoded.data.
      const batch = {
        ...read,
        data: Buffer.from(encoded.data.buffer, encoded.data.byteOffset, encoded.data.byteLength),
      };
      for (let c = batch.first; c < batch.end; c++) {
        const actual = encoded.ids.subarray((c - batch.first) * 32, (c - batch.first + 1) * 32);
        if (!Buffer.from(actual).equals(index.id(c))) {
          throw new ChunkVerifyError(
            index.idHex(c),
            `(chunk #${c} at offset ${index.start(c)}, ${index.chunkSize(c)} bytes) does not match the file: its bytes hash to ${toHex(actual)}`,
            path,
          );
        }
      }
      const writes: Promise<void>[] = [];
      for (let c = batch.first; c < batch.end; c++) {
        const k = c - batch.first;
        if (!wanted[k]) continue;
        const stored = encoded.stored[k] ?? chunkOfBatch(index, batch, c);
        // Other stores get a copy: the batch buffer is reused, and they may keep what they are given.
        const write = local ? local.putStored(index.id(c), stored) : store.put(index.id(c), Buffer.from(stored));
        writes.push(
          write.then((written) => {
            if (written) {
              result.written++;
              result.bytesStored += stored.length;
            } else result.existing++;
          }),
        );
      }
      await Promise.all(writes);
      result.bytesIn += batch.data.length;
      buffers.give(batch.data);
      opts.onProgress?.(result.bytesIn, index.size);
    };

    // Each batch with the chunks of it to store, decided in file order as it is read.
    async function* batches(): AsyncGenerator<{ batch: ChunkBatch; wanted: boolean[] }> {
      for await (const batch of readChunkBatches(fh, index, buffers, opts.signal))
        yield { batch, wanted: await toStore(batch) };
    }
    // Ordered: of several bad batches, the first in the file is the one reported.
    await forEachConcurrent(batches(), { concurrency: window, ordered: true }, async ({ batch, wanted }) => {
      const ends: number[] = [];
      for (let c = batch.first; c < batch.end; c++) ends.push(index.end(c) - batch.offset);
      const encoded = await pool.run({
        data: batch.data,
        ends,
        compress: compressOffThread ? wanted : [],
        digest: index.digest,
        level: local?.level ?? DEFAULT_ZSTD_LEVEL,
      });
      await finish(batch, wanted, encoded);
    });
    return result;
  } finally {
    // forEachConcurrent returns only once no work runs: the file may be closed.
    await pool.close();
    await fh.close();
  }
}
