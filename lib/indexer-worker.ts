// Worker thread of the parallel indexer: chunks and hashes one segment of a file
// (as if a chunk started at the segment start) and posts back its chunk table.
// It reads through the main thread's file descriptor (positional reads), so every
// segment sees the file that the main thread opened and measured.
import { read } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { ChunkIndexBuilder } from './caibx.js';
import { indexRange, type ChunkingSetup } from './indexer-range.js';

export interface SegmentJob extends ChunkingSetup {
  path: string;
  fd: number;
  start: number;
  end: number;
  final: boolean;
}

export type SegmentMessage =
  | { type: 'progress'; bytes: number }
  | { type: 'done'; ends: Float64Array; ids: Uint8Array };

const PROGRESS_EVERY = 4 * 1024 * 1024;

async function run(job: SegmentJob): Promise<void> {
  const port = parentPort!;
  const readAt = (buf: Uint8Array, offset: number, length: number, position: number): Promise<number> =>
    new Promise((resolve, reject) => read(job.fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))));
  const table = ChunkIndexBuilder.forDigest(job.digest, job.params);
  let unreported = 0;
  const onBytes = (bytes: number): void => {
    unreported += bytes;
    if (unreported >= PROGRESS_EVERY) {
      port.postMessage({ type: 'progress', bytes: unreported } satisfies SegmentMessage);
      unreported = 0;
    }
  };
  await indexRange(readAt, job.start, job.end, { ...job, source: job.path, onBytes }, (end, id) => table.add(end, id));
  if (unreported > 0) port.postMessage({ type: 'progress', bytes: unreported } satisfies SegmentMessage);
  const { ends, ids } = table.finish();
  port.postMessage({ type: 'done', ends, ids } satisfies SegmentMessage, [ends.buffer as ArrayBuffer, ids.buffer as ArrayBuffer]);
}

await run(workerData as SegmentJob);
