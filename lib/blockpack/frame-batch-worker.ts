// Worker thread of FramePool: compresses one batch of frames per message, in order.
import { parentPort, workerData } from 'node:worker_threads';
import { compressBatch, type FrameBatch } from './frame-batch.js';
import { FrameCompressor } from './frame-codec.js';

const compressor = new FrameCompressor(workerData.dictionary as Uint8Array, workerData.level as number);
// The pool matches answers to batches by order, so a batch starts when the one before it is sent.
let previous: Promise<void> = Promise.resolve();
parentPort!.on('message', (batch: FrameBatch) => {
  previous = previous.then(async () => {
    const r = await compressBatch(compressor, batch);
    parentPort!.postMessage(r, [r.data.buffer as ArrayBuffer]);
  });
});
