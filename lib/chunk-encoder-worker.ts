// Worker thread of EncoderPool: encodes one batch per message, answers in order.
import { parentPort } from 'node:worker_threads';
import { encodeBatch, type EncodeJob } from './chunk-encoder.js';

parentPort!.on('message', (job: EncodeJob) => {
  parentPort!.postMessage(encodeBatch(job));
});
