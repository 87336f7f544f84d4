// Resuming an interrupted extract: the chunks the journal of a partial file
// lists are hashed where they lie; those that match their ID stay (every route
// then skips them), the others are forgotten and assembled again.
import { encodeBatch, type EncoderPool } from '../store/chunk-encoder.js';
import { BatchBuffers } from '../store/chunk-reader.js';
import type { PartialFile } from './partial-file.js';
import type { ChunkIndex } from '../format/caibx.js';
import { forEachConcurrent } from '../util/async-pool.js';
import type { Run } from '../util/runs.js';

/** Bytes read and hashed per batch. */
const BATCH_BYTES = 4 * 1024 * 1024;
/** Batches in flight (reads overlap hashing on the pool's threads). */
const IN_FLIGHT = 3;

/** Verifies the journaled chunks of `file`; returns the target bytes that verified. */
export async function verifyResumed(
  file: PartialFile,
  target: ChunkIndex,
  hashPool?: EncoderPool,
  signal?: AbortSignal,
): Promise<number> {
  if (!file.resumed) return 0;
  const buffers = new BatchBuffers(IN_FLIGHT + 1);
  let verified = 0;
  const check = async (first: number, count: number): Promise<void> => {
    const start = target.start(first);
    const size = target.end(first + count - 1) - start;
    const data = buffers.take(size);
    const got = await file.read(data, start);
    data.fill(0, got);
    const ends: number[] = [];
    for (let k = 0; k < count; k++) ends.push(target.end(first + k) - start);
    const job = { data, ends, compress: ends.map(() => false), digest: target.digest, level: 0 };
    const { ids, data: back } = hashPool ? await hashPool.run(job) : encodeBatch(job);
    buffers.give(back);
    const want = target.ids;
    for (let k = 0; k < count; k++) {
      const i = first + k;
      let same = true;
      for (let b = 0; b < 32 && same; b++) same = ids[k * 32 + b] === want[i * 32 + b];
      if (same) verified += target.chunkSize(i);
      else file.forget(i);
    }
  };
  // Runs of journaled chunks, at most BATCH_BYTES each (one chunk at least).
  function* batches(): Generator<Run> {
    let i = 0;
    while (i < target.count) {
      signal?.throwIfAborted();
      if (!file.has(i)) {
        i++;
        continue;
      }
      const first = i;
      let bytes = 0;
      while (i < target.count && file.has(i) && (i === first || bytes + target.chunkSize(i) <= BATCH_BYTES))
        bytes += target.chunkSize(i++);
      yield { first, count: i - first };
    }
  }
  await forEachConcurrent(batches(), IN_FLIGHT, (b) => check(b.first, b.count));
  return verified;
}
