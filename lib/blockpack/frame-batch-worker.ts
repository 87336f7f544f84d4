// Worker thread of FramePool: compresses one batch of frames per message, in order.
import { parentPort, workerData } from 'node:worker_threads';
import { compressBatch, type FrameBatch } from './frame-batch.js';
import { FrameCompressor } from './frame-codec.js';

const compressor = new FrameCompressor(workerData.dictionary as Uint8Array, workerData.level as number);
parentPort!.on('message', (batch: FrameBatch) => {
  const r = compressBatch(compressor, batch);
  parentPort!.postMessage(r, [r.data.buffer as ArrayBuffer]);
});
