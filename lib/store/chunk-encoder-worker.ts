// Worker thread of EncoderPool: hashes (and compresses) one batch per job.
import { serveJobs } from '../util/worker-pool.js';
import { encodeBatch, resultTransfers } from './chunk-encoder.js';

serveJobs(encodeBatch, resultTransfers);
