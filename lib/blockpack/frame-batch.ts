// Compressing pack frames in batches, inline or on worker threads (one zstd
// engine per thread compresses one frame at a time, so threads are how several
// cores are used; level 19 frames are the publisher's main cost). Batches are
// moved, not copied.
import { WorkerPool } from '../util/worker-pool.js';
import { FrameCompressor } from './frame-codec.js';

export interface FrameBatch {
  /** The frames' uncompressed bytes, back to back. */
  data: Uint8Array;
  /** Uncompressed length of each frame. */
  lengths: number[];
}

/** Stored frames, back to back, with their stored lengths. */
export type StoredBatch = FrameBatch;

export async function compressBatch(compressor: FrameCompressor, batch: FrameBatch): Promise<StoredBatch> {
  const parts: Buffer[] = [];
  let off = 0;
  for (const len of batch.lengths) {
    parts.push(await compressor.compress(batch.data.subarray(off, off + len)));
    off += len;
  }
  // A buffer of its own (not Node's shared pool): it is transferred between threads.
  const data = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  off = 0;
  for (const p of parts) {
    data.set(p, off);
    off += p.length;
  }
  return { data, lengths: parts.map((p) => p.length) };
}

/** Runs batches on up to `threads` workers (0: inline); each batch's promise settles with its own frames. */
export class FramePool {
  private readonly pool: WorkerPool<FrameBatch, StoredBatch> | undefined;
  private readonly inline: FrameCompressor | null;

  constructor(dictionary: Uint8Array, level: number, threads: number) {
    this.inline = threads === 0 ? new FrameCompressor(dictionary, level) : null;
    this.pool =
      threads > 0
        ? new WorkerPool({
            script: new URL('./frame-batch-worker.js', import.meta.url),
            threads,
            name: 'frame compression',
            workerData: { dictionary, level },
          })
        : undefined;
  }

  run(batch: FrameBatch): Promise<StoredBatch> {
    if (!this.pool) return compressBatch(this.inline!, batch);
    return this.pool.run(batch, { transfer: [batch.data.buffer as ArrayBuffer] });
  }

  async close(): Promise<void> {
    this.inline?.close();
    await this.pool?.close();
  }
}
