// Worker thread of the parallel indexer: for each segment the main thread posts,
// chunks and hashes it (as if a chunk started at the segment start) and posts
// back its chunk table.
// It reads through the main thread's file descriptor (positional reads), so every
// segment sees the file that the main thread opened and measured.
import { read } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
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

export type SegmentMessage =
  | { type: 'progress'; bytes: number }
  | { type: 'done'; ends: Float64Array; ids: Uint8Array };

const PROGRESS_EVERY = 4 * 1024 * 1024;

const setup = workerData as WorkerSetup;
const port = parentPort!;
// One chunker (and its WASM memory) for all the segments this worker indexes.
const chunker = new Chunker(setup.params, { variant: setup.variant, kernel: setup.kernel, blockSize: setup.blockSize });
const readAt = (buf: Uint8Array, offset: number, length: number, position: number): Promise<number> =>
  new Promise((resolve, reject) =>
    read(setup.fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))),
  );

async function indexSegment(job: SegmentJob): Promise<void> {
  const table = ChunkIndexBuilder.forDigest(setup.digest, setup.params);
  let unreported = 0;
  const onBytes = (bytes: number): void => {
    unreported += bytes;
    if (unreported >= PROGRESS_EVERY) {
      port.postMessage({ type: 'progress', bytes: unreported } satisfies SegmentMessage);
      unreported = 0;
    }
  };
  const final = job.end === setup.size;
  await indexRange(readAt, job.start, job.end, { ...setup, final, source: setup.path, onBytes, chunker }, (end, id) =>
    table.add(end, id),
  );
  if (unreported > 0) port.postMessage({ type: 'progress', bytes: unreported } satisfies SegmentMessage);
  const { ends, ids } = table.finish();
  port.postMessage({ type: 'done', ends, ids } satisfies SegmentMessage, [
    ends.buffer as ArrayBuffer,
    ids.buffer as ArrayBuffer,
  ]);
}

// A failure is an unhandled rejection: it ends the worker with an 'error' event in the main thread.
port.on('message', (job: SegmentJob) => void indexSegment(job));
