// Worker thread of EncoderPool: hashes (and compresses) one batch per job.
import { serveJobs } from '../util/worker-pool.js';
import { encodeBatch, resultTransfers, type EncodeJob } from './chunk-encoder.js';

// Bytes in memory shared with the caller stay there (EncoderPool.hash): only the IDs go back.
serveJobs((job: EncodeJob) => {
  const result = encodeBatch(job);
  return job.data.buffer instanceof SharedArrayBuffer ? { ...result, data: new Uint8Array(0) } : result;
}, resultTransfers);
