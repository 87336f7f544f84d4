// Checks data against an index: a file (every chunk hashes to its ID, and the
// size matches) or a store (every chunk present, decodes, and verifies).
import { open } from 'node:fs/promises';
import type { ChunkIndex } from './caibx.js';
import { ChunkVerifyError } from './errors.js';
import { chunkId, toHex } from './digest.js';
import { readFileChunks } from './chunk-reader.js';
import type { ChunkStore } from './store/types.js';

export interface VerifyOptions {
  /** Store requests in flight for verifyStore (default 8). */
  concurrency?: number;
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
  const fh = await open(path, 'r');
  try {
    const fileSize = (await fh.stat()).size;
    const result: VerifyFileResult = { ok: false, checked: 0, fileSize, indexSize: index.size, bad: [] };
    let done = 0;
    for await (const { chunk, offset, data } of readFileChunks(fh, index, opts.signal)) {
      const id = index.id(chunk);
      const size = index.chunkSize(chunk);
      done += size;
      if (data.length < size) {
        result.bad.push({ chunk, offset, id: toHex(id), reason: `file ends at byte ${fileSize}, inside or before this chunk` });
      } else {
        result.checked++;
        const actual = chunkId(index.digest, data);
        if (!actual.equals(id)) result.bad.push({ chunk, offset, id: toHex(id), reason: `content hashes to ${toHex(actual)}` });
      }
      opts.onProgress?.(done, index.size);
    }
    result.ok = result.bad.length === 0 && fileSize === index.size;
    return result;
  } finally {
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
export async function verifyStore(index: ChunkIndex, store: ChunkStore, opts: VerifyOptions = {}): Promise<VerifyStoreResult> {
  const firstUse = distinctChunks(index);
  const result: VerifyStoreResult = { ok: false, checked: 0, missing: [], corrupt: [] };
  let next = 0;
  let failed = false; // one worker's error stops the others from starting more requests
  const worker = async (): Promise<void> => {
    while (next < firstUse.length && !failed) {
      opts.signal?.throwIfAborted();
      const chunk = firstUse[next++];
      const id = index.id(chunk);
      try {
        const data = await store.get({ id, size: index.chunkSize(chunk) }, opts.signal);
        if (data === null) result.missing.push({ chunk, id: toHex(id), reason: `not in ${store.location}` });
      } catch (err) {
        if (!(err instanceof ChunkVerifyError)) {
          failed = true;
          throw err;
        }
        result.corrupt.push({ chunk, id: toHex(id), reason: err.message });
      }
      result.checked++;
      opts.onProgress?.(result.checked, firstUse.length);
    }
  };
  const workers = Array.from({ length: Math.max(1, opts.concurrency ?? 8) }, worker);
  await Promise.all(workers);
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
