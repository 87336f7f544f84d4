// The worker of HashThread: digests of pieces of a shared buffer, read in place. Only node modules are loaded here.
import { hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import type { HashJob } from './hash-thread.js';
import type { Answer } from './worker-pool.js';

const port = parentPort!;
/** The buffers shown so far, by number (kept: the pool they come from keeps them). */
const slabs = new Map<number, SharedArrayBuffer>();
port.on('message', (job: HashJob) => {
  let answer: Answer;
  let out: Uint8Array | undefined;
  if (job.buffer) slabs.set(job.slab, job.buffer);
  try {
    const buffer = slabs.get(job.slab);
    if (!buffer) throw new Error(`buffer ${job.slab} was never shown to this thread`);
    const digests: Buffer[] = [];
    let start = 0;
    for (const end of job.ends) {
      const piece = new Uint8Array(buffer, job.offset + start, end - start);
      digests.push(hash(job.algorithm, piece, 'buffer'));
      start = end;
    }
    // A buffer of its own (not Node's pool) to move back.
    out = new Uint8Array(digests.reduce((n, d) => n + d.length, 0));
    let at = 0;
    for (const d of digests) {
      out.set(d, at);
      at += d.length;
    }
    answer = { kind: 'result', value: out };
  } catch (err) {
    answer = { kind: 'error', message: (err as Error)?.message ?? String(err) };
    out = undefined;
  }
  port.postMessage(answer, out ? [out.buffer as ArrayBuffer] : []);
});
