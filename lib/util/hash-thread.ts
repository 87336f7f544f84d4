// Hashing on a thread of its own, for bytes in shared memory (the buffers of a
// shared BufferPool): the thread reads them in place, so nothing moves but the
// digests (a thread that had the bytes moved there and back, or copied, cost
// more CPU than it saved; bench/RESULTS.md, session 4). Its worker loads
// node:crypto and nothing of deltad, which keeps its isolate small; it starts
// with the first job and ends with close() or after an idle time.
import { WorkerPool } from './worker-pool.js';

/** What the worker is asked: digests of consecutive pieces of a shared buffer. */
export interface HashJob {
  algorithm: string;
  buffer: SharedArrayBuffer;
  /** Where the first piece starts in `buffer`. */
  offset: number;
  /** Where each piece ends, from `offset`. */
  ends: number[];
}

/** Young generation of the hashing worker, MiB: a job allocates a few small objects per piece. */
const YOUNG_GENERATION_MB = 1;

export class HashThread {
  private readonly pool = new WorkerPool<HashJob, Uint8Array>({
    script: new URL('./hash-thread-worker.js', import.meta.url),
    threads: 1,
    name: 'hashing',
    youngGenerationMb: YOUNG_GENERATION_MB,
  });

  /** Whether `data` lies in shared memory, which the thread can read in place. */
  static reaches(data: Uint8Array): boolean {
    return data.buffer instanceof SharedArrayBuffer;
  }

  /**
   * The digests, back to back, of the pieces of `data` that end at `ends` (offsets into data). `data` must lie in
   * shared memory (reaches) and must not change until the promise settles.
   */
  async digests(algorithm: string, data: Uint8Array, ends: number[]): Promise<Buffer> {
    const buffer = data.buffer as SharedArrayBuffer;
    const out = await this.pool.run({ algorithm, buffer, offset: data.byteOffset, ends });
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
