// Worker thread of FramePool: compresses one batch of frames per job.
import { workerData } from 'node:worker_threads';
import { serveJobs } from '../util/worker-pool.js';
import { compressBatch, type FrameBatch, type StoredBatch } from './frame-batch.js';
import { FrameCompressor } from './frame-codec.js';

const compressor = new FrameCompressor(workerData.dictionary as Uint8Array, workerData.level as number);
serveJobs(
  (batch: FrameBatch) => compressBatch(compressor, batch),
  (r: StoredBatch) => [r.data.buffer as ArrayBuffer],
);
