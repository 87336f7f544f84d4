// Worker thread of the parallel indexer: for each segment the main thread posts,
// chunks and hashes it (as if a chunk started at the segment start) and posts
// back its chunk table (jobs and answers through lib/util/worker-pool.ts).
// It reads through the main thread's file descriptor (positional reads), so every
// segment sees the file that the main thread opened and measured.
import { read } from 'node:fs';
import { workerData } from 'node:worker_threads';
import { serveJobs } from '../util/worker-pool.js';
import { ChunkIndexBuilder } from '../format/caibx.js';
import { Chunker } from './chunker.js';
import { indexRange, type ChunkingSetup } from './indexer-range.js';

/** Fixed for the worker's life (workerData). */
export interface WorkerSetup extends ChunkingSetup {
  path: string;
  fd: number;
  size: number;
}

/** One segment to index, posted by the main thread; the worker answers with progress and done. */
export interface SegmentJob {
  start: number;
  end: number;
}

/** Reported while a segment is indexed; the answer is its chunk table. */
export interface SegmentProgress {
  bytes: number;
}

export interface SegmentDone {
  ends: Float64Array;
  ids: Uint8Array;
}

const PROGRESS_EVERY = 4 * 1024 * 1024;

const setup = workerData as WorkerSetup;
// One chunker (and its WASM memory) for all the segments this worker indexes.
const chunker = new Chunker(setup.params, { variant: setup.variant, kernel: setup.kernel, blockSize: setup.blockSize });
const readAt = (buf: Uint8Array, offset: number, length: number, position: number): Promise<number> =>
  new Promise((resolve, reject) =>
    read(setup.fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))),
  );

async function indexSegment(job: SegmentJob, emit: (p: SegmentProgress) => void): Promise<SegmentDone> {
  const table = ChunkIndexBuilder.forDigest(setup.digest, setup.params);
  let unreported = 0;
  const onBytes = (bytes: number): void => {
    unreported += bytes;
    if (unreported >= PROGRESS_EVERY) {
      emit({ bytes: unreported });
      unreported = 0;
    }
  };
  const final = job.end === setup.size;
  await indexRange(readAt, job.start, job.end, { ...setup, final, source: setup.path, onBytes, chunker }, (end, id) =>
    table.add(end, id),
  );
  if (unreported > 0) emit({ bytes: unreported });
  const { ends, ids } = table.finish();
  return { ends, ids };
}

serveJobs(indexSegment, (r) => [r.ends.buffer as ArrayBuffer, r.ids.buffer as ArrayBuffer]);
