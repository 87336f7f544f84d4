// Hashing and compressing batches of chunks, the CPU-heavy half of `chop`:
// inline on the calling thread, or spread over worker threads (zstd compression is
// synchronous, so threads are the only way to use more than one core).
import { availableParallelism } from 'node:os';
import { chunkId, type DigestName } from '../format/digest.js';
import { compressChunk } from './compression.js';
import { WorkerPool } from '../util/worker-pool.js';

export interface EncodeJob {
  /**
   * Consecutive chunks' bytes. Its ArrayBuffer is moved to the worker (and
   * back in the result), so it must not be shared: never a Buffer from Node's
   * pool (use BatchBuffers or Buffer.allocUnsafeSlow).
   */
  data: Uint8Array;
  /** End of each chunk within `data`. */
  ends: number[];
  /** Which chunks to compress (the others are only hashed). */
  compress: boolean[];
  digest: DigestName;
  level: number;
}

export interface EncodeResult {
  /** The job's bytes, handed back so the caller can use and recycle them. */
  data: Uint8Array;
  /** 32 bytes per chunk: the digest of its bytes. */
  ids: Uint8Array;
  /** Compressed bytes for the chunks asked for (views of one buffer), else null. */
  stored: (Uint8Array | null)[];
}

/** Worker threads for hashing/compressing when the caller does not say: the cores, at most 4. */
export function defaultThreads(): number {
  return Math.min(4, availableParallelism());
}

export function encodeBatch(job: EncodeJob): EncodeResult {
  const ids = new Uint8Array(job.ends.length * 32);
  const frames: (Buffer | null)[] = [];
  let start = 0;
  let total = 0;
  for (let k = 0; k < job.ends.length; k++) {
    const bytes = job.data.subarray(start, job.ends[k]);
    ids.set(chunkId(job.digest, bytes), k * 32);
    const frame = job.compress[k] ? compressChunk(bytes, job.level) : null;
    total += frame?.length ?? 0;
    frames.push(frame);
    start = job.ends[k];
  }
  // One buffer of its own for all frames, so it can be moved between threads.
  const packed = new Uint8Array(total);
  let at = 0;
  const stored = frames.map((f) => {
    if (!f) return null;
    packed.set(f, at);
    at += f.length;
    return packed.subarray(at - f.length, at);
  });
  return { data: job.data, ids, stored };
}

/** The buffers an EncodeResult owns, for postMessage's transfer list. */
export function resultTransfers(r: EncodeResult): ArrayBuffer[] {
  const buffers = new Set<ArrayBuffer>([r.data.buffer as ArrayBuffer, r.ids.buffer as ArrayBuffer]);
  for (const s of r.stored) if (s) buffers.add(s.buffer as ArrayBuffer);
  return [...buffers];
}

/**
 * Runs encode jobs on up to `threads` workers (0 = inline), first come first served.
 * Buffers are moved to the worker and back, not copied: copies pile up as
 * garbage in every thread (hundreds of MB of RSS on a large file).
 */
export class EncoderPool {
  private readonly pool: WorkerPool<EncodeJob, EncodeResult> | undefined;

  constructor(threads: number) {
    this.pool =
      threads > 0
        ? new WorkerPool({
            script: new URL('./chunk-encoder-worker.js', import.meta.url),
            threads,
            name: 'chunk encoder',
          })
        : undefined;
  }

  run(job: EncodeJob): Promise<EncodeResult> {
    if (!this.pool) return Promise.resolve().then(() => encodeBatch(job));
    return this.pool.run(job, { transfer: [job.data.buffer as ArrayBuffer] });
  }

  async close(): Promise<void> {
    await this.pool?.close();
  }
}
