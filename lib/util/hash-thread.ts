// Hashing on a thread of its own, for bytes in shared memory (the buffers of a
// shared BufferPool): the thread reads them in place, so nothing moves but the
// digests (a thread that had the bytes moved there and back, or copied, cost
// more CPU than it saved; bench/RESULTS.md, session 4). Each buffer is shown
// to the worker once and kept there by a number: a SharedArrayBuffer posted
// with every job lives in the worker until its next collection, which with a
// heap that sees little garbage came only after ~100 slabs (+24 MiB RSS).
// So the buffers must be a shared BufferPool's, which keeps its slabs. The
// worker loads node:crypto and nothing of deltad, which keeps its isolate
// small; it starts with the first job and ends with close().
import { WorkerPool } from './worker-pool.js';

/** What the worker is asked: digests of consecutive pieces of a shared buffer. */
export interface HashJob {
  algorithm: string;
  /** The buffer's number; the buffer itself comes with its first job only. */
  slab: number;
  buffer?: SharedArrayBuffer;
  /** Where the first piece starts in the buffer. */
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
    idleMs: Infinity, // a new worker would not know the buffers' numbers
  });
  private readonly slabs = new WeakMap<SharedArrayBuffer, number>();
  private numbered = 0;

  /** Whether `data` lies in shared memory, which the thread can read in place. */
  static reaches(data: Uint8Array): boolean {
    return data.buffer instanceof SharedArrayBuffer;
  }

  /**
   * The digests, back to back, of the pieces of `data` that end at `ends` (offsets into data). `data` must lie in
   * shared memory (reaches), in a buffer that lives as long as this thread (a shared BufferPool's), and must not
   * change until the promise settles.
   */
  async digests(algorithm: string, data: Uint8Array, ends: number[]): Promise<Buffer> {
    const buffer = data.buffer as SharedArrayBuffer;
    let slab = this.slabs.get(buffer);
    const known = slab !== undefined;
    if (slab === undefined) this.slabs.set(buffer, (slab = this.numbered++));
    const job: HashJob = { algorithm, slab, buffer: known ? undefined : buffer, offset: data.byteOffset, ends };
    const out = await this.pool.run(job);
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
