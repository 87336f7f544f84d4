// Checks data against an index: a file (every chunk hashes to its ID, and the
// size matches) or a store (every chunk present, decodes, and verifies).
import { open } from 'node:fs/promises';
import type { ChunkIndex } from '../format/caibx.js';
import { ChunkVerifyError } from '../errors.js';
import { toHex } from '../format/digest.js';
import { BatchBuffers, readChunkBatches, type ChunkBatch } from '../store/chunk-reader.js';
import { defaultThreads, EncoderPool, type EncodeResult } from '../store/chunk-encoder.js';
import type { ChunkStore } from '../store/types.js';
import { forEachConcurrent } from '../util/async-pool.js';

export interface VerifyOptions {
  /** verifyStore: store requests in flight (default 8). verifyFile: ~4 MiB batches in flight (default 2 × threads, at least 2). */
  concurrency?: number;
  /** verifyFile: hashing threads; 0 = on this thread (default: available cores, at most 4). */
  threads?: number;
  /** (done, total): bytes for verifyFile, distinct chunks for verifyStore. */
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

export interface BadChunk {
  chunk: number;
  offset: number;
  id: string;
  reason: string;
}

export interface VerifyFileResult {
  ok: boolean;
  /** Chunks hashed. */
  checked: number;
  fileSize: number;
  indexSize: number;
  bad: BadChunk[];
}

/** Hashes every chunk of `path` as `index` lays it out. Never stops at the first bad chunk. */
export async function verifyFile(index: ChunkIndex, path: string, opts: VerifyOptions = {}): Promise<VerifyFileResult> {
  const threads = Math.max(0, opts.threads ?? defaultThreads());
  const window = Math.max(1, opts.concurrency ?? Math.max(2, 2 * threads));
  const fh = await open(path, 'r');
  const pool = new EncoderPool(threads);
  const buffers = new BatchBuffers(window + threads);
  try {
    const fileSize = (await fh.stat()).size;
    const result: VerifyFileResult = { ok: false, checked: 0, fileSize, indexSize: index.size, bad: [] };
    let done = 0;
    const check = (batch: ChunkBatch, encoded: EncodeResult): void => {
      for (let c = batch.first; c < batch.end; c++) {
        const k = c - batch.first;
        const bad = (reason: string) =>
          result.bad.push({ chunk: c, offset: index.start(c), id: index.idHex(c), reason });
        if (k * 32 >= encoded.ids.length) {
          bad(`file ends at byte ${fileSize}, inside or before this chunk`);
          continue;
        }
        result.checked++;
        const actual = Buffer.from(encoded.ids.subarray(k * 32, (k + 1) * 32));
        if (!actual.equals(index.id(c))) bad(`content hashes to ${toHex(actual)}`);
      }
      buffers.give(encoded.data);
      done += index.end(batch.end - 1) - batch.offset;
      opts.onProgress?.(done, index.size);
    };
    await forEachConcurrent(readChunkBatches(fh, index, buffers, opts.signal), window, async (batch) => {
      // Hash only the chunks the file holds whole; the rest are reported short.
      const ends: number[] = [];
      for (let c = batch.first; c < batch.end && index.end(c) - batch.offset <= batch.data.length; c++)
        ends.push(index.end(c) - batch.offset);
      check(batch, await pool.run({ data: batch.data, ends, compress: [], digest: index.digest, level: 0 }));
    });
    result.bad.sort((a, b) => a.chunk - b.chunk);
    result.ok = result.bad.length === 0 && fileSize === index.size;
    return result;
  } finally {
    await pool.close();
    await fh.close();
  }
}

export interface StoreProblem {
  /** First chunk number with this ID. */
  chunk: number;
  id: string;
  reason: string;
}

export interface VerifyStoreResult {
  ok: boolean;
  /** Distinct chunk IDs checked. */
  checked: number;
  missing: StoreProblem[];
  corrupt: StoreProblem[];
}

/**
 * Fetches every distinct chunk of `index` from `store` (which decodes and
 * verifies it). Missing and corrupt chunks are collected; I/O and network
 * failures abort with their error.
 */
export async function verifyStore(
  index: ChunkIndex,
  store: ChunkStore,
  opts: VerifyOptions = {},
): Promise<VerifyStoreResult> {
  const firstUse = distinctChunks(index);
  const result: VerifyStoreResult = { ok: false, checked: 0, missing: [], corrupt: [] };
  // An I/O or network failure stops further requests.
  await forEachConcurrent(firstUse, opts.concurrency ?? 8, async (chunk) => {
    opts.signal?.throwIfAborted();
    const id = index.id(chunk);
    try {
      const data = await store.get({ id, size: index.chunkSize(chunk) }, opts.signal);
      if (data === null) result.missing.push({ chunk, id: toHex(id), reason: `not in ${store.location}` });
    } catch (err) {
      if (!(err instanceof ChunkVerifyError)) throw err;
      result.corrupt.push({ chunk, id: toHex(id), reason: err.message });
    }
    result.checked++;
    opts.onProgress?.(result.checked, firstUse.length);
  });
  const byChunk = (a: StoreProblem, b: StoreProblem) => a.chunk - b.chunk;
  result.missing.sort(byChunk);
  result.corrupt.sort(byChunk);
  result.ok = result.missing.length === 0 && result.corrupt.length === 0;
  return result;
}

/** Chunk numbers of the first occurrence of each distinct ID, in order. */
function distinctChunks(index: ChunkIndex): number[] {
  const seen = new Set<string>();
  const out: number[] = [];
  for (let i = 0; i < index.count; i++) {
    const hex = index.idHex(i);
    if (!seen.has(hex)) {
      seen.add(hex);
      out.push(i);
    }
  }
  return out;
}
