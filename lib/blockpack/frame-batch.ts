// Compressing pack frames in batches, inline or on worker threads (one zstd
// engine per thread compresses one frame at a time, so threads are how several
// cores are used; level 19 frames are the publisher's main cost). Batches are
// moved, not copied.
import { Worker } from 'node:worker_threads';
import { DeltadError } from '../errors.js';
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

/** Runs batches on `threads` workers (0: inline); results come back in submission order. */
export class FramePool {
  private readonly workers: Worker[] = [];
  private readonly inline: FrameCompressor | null;
  private next = 0;
  private readonly waiting = new Map<Worker, { resolve: (r: StoredBatch) => void; reject: (e: Error) => void }[]>();

  constructor(dictionary: Uint8Array, level: number, threads: number) {
    this.inline = threads === 0 ? new FrameCompressor(dictionary, level) : null;
    for (let i = 0; i < threads; i++) {
      const w = new Worker(new URL('./frame-batch-worker.js', import.meta.url), { workerData: { dictionary, level } });
      this.waiting.set(w, []);
      w.on('message', (r: StoredBatch) => this.waiting.get(w)!.shift()?.resolve(r));
      const fail = (err: Error): void => {
        for (const p of this.waiting.get(w)!.splice(0))
          p.reject(
            new DeltadError('ERR_DELTAD_PACK', `frame compression thread failed: ${err.message}`, { cause: err }),
          );
      };
      w.on('error', fail);
      w.on('exit', (code) => fail(new DeltadError('ERR_DELTAD_WORKER', `exited with code ${code}`)));
      this.workers.push(w);
    }
  }

  /** Each worker answers its batches in order; round-robin keeps the overall order recoverable by the caller. */
  run(batch: FrameBatch): Promise<StoredBatch> {
    if (this.inline) return compressBatch(this.inline, batch);
    const w = this.workers[this.next++ % this.workers.length];
    return new Promise((resolve, reject) => {
      this.waiting.get(w)!.push({ resolve, reject });
      w.postMessage(batch, [batch.data.buffer as ArrayBuffer]);
    });
  }

  async close(): Promise<void> {
    this.inline?.close();
    const ws = this.workers.splice(0);
    for (const w of ws) w.removeAllListeners('exit');
    await Promise.all(ws.map((w) => w.terminate()));
  }
}
