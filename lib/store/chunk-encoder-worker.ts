// Worker thread of EncoderPool: encodes one batch per message, answers in order.
import { parentPort } from 'node:worker_threads';
import { encodeBatch, resultTransfers, type EncodeJob } from './chunk-encoder.js';

parentPort!.on('message', (job: EncodeJob) => {
  const result = encodeBatch(job);
  parentPort!.postMessage(result, resultTransfers(result));
});
