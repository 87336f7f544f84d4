// A worker for test/worker-pool.test.ts: each job says what to do.
import { threadId } from 'node:worker_threads';
import { serveJobs } from '../../lib/util/worker-pool.js';

export type TestJob =
  | { op: 'double'; data: Uint8Array }
  | { op: 'progress'; steps: number }
  | { op: 'wait'; ms: number }
  | { op: 'throw' }
  | { op: 'crash' };

export interface TestResult {
  threadId: number;
  data?: Uint8Array;
}

serveJobs<TestJob, TestResult, number>(
  async (job, emit) => {
    if (job.op === 'double') return { threadId, data: job.data.map((b) => b * 2) };
    if (job.op === 'progress') for (let i = 1; i <= job.steps; i++) emit(i);
    if (job.op === 'wait') await new Promise((r) => setTimeout(r, job.ms));
    if (job.op === 'throw') throw new Error('bad job');
    if (job.op === 'crash') process.exit(7);
    return { threadId };
  },
  (r) => (r.data ? [r.data.buffer as ArrayBuffer] : []),
);
