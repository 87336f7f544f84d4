// Indexing a blob: chunk it (casync semantics unless told otherwise), hash every
// chunk, and return the ChunkIndex that `casync make` would write.
//
// Large files are cut into segments (several per thread) that a pool of worker
// threads takes from a queue. Each worker chunks its segment as if a chunk started there. A chunk boundary depends only on where its chunk
// starts and on the bytes, so once the true chunking (coming from the previous
// segment) reaches a boundary that a segment also found, the rest of that
// segment's chunks are exactly the serial result and are adopted. The main thread
// chunks the short stretch between a segment's last boundary and that meeting
// point. The output is identical to the serial indexer for every thread count.
import { availableParallelism } from 'node:os';
import type { FileHandle } from 'node:fs/promises';
import { WorkerPool } from '../util/worker-pool.js';
import { ChunkIndexBuilder, ID_SIZE, type ChunkIndex, type ChunkParams } from '../format/caibx.js';
import { Chunker, checkChunkParams, type ChunkerKernel, type ChunkerVariant } from './chunker.js';
import type { DigestName } from '../format/digest.js';
import { DeltadError } from '../errors.js';
import { ChunkHasher, indexRange, type RangeOptions, type ReadAt } from './indexer-range.js';
import type { SegmentDone, SegmentJob, SegmentProgress, WorkerSetup } from './indexer-worker.js';
import { openInput } from '../util/open-input.js';

export interface IndexOptions {
  params: ChunkParams;
  digest: DigestName;
  variant?: ChunkerVariant;
  /**
   * Worker threads used by indexFile; 1 = none, all on the calling thread.
   * Default: 1 below 64 MiB, else the CPU count (at most 4).
   */
  threads?: number;
  onProgress?: (bytesDone: number, total: number) => void;
  signal?: AbortSignal;
  /** Scanner implementation (default 'wasm'); 'js' is the reference kernel. */
  kernel?: ChunkerKernel;
}

const MIN_PARALLEL_SIZE = 64 * 1024 * 1024;
const DEFAULT_MAX_THREADS = 4;
const SEGMENTS_PER_THREAD = 8;
const MIN_SEGMENT_SIZE = 1024 * 1024;

/** Indexes an in-memory blob, synchronously on the calling thread. */
export function indexBuffer(buf: Uint8Array, opts: IndexOptions): ChunkIndex {
  checkChunkParams(opts.params, opts.variant);
  opts.signal?.throwIfAborted();
  const chunker = new Chunker(opts.params, { variant: opts.variant, kernel: opts.kernel });
  const hasher = new ChunkHasher(opts.digest, opts.params.max);
  const table = ChunkIndexBuilder.forDigest(opts.digest, opts.params, estimateChunks(buf.length, opts.params));
  const sink = (end: number, id: Buffer): void => table.add(end, id);
  for (let pos = 0; pos < buf.length; pos += chunker.blockSize) {
    const block = buf.subarray(pos, pos + chunker.blockSize);
    hasher.feed(block, pos, chunker.push(block), sink);
    opts.onProgress?.(pos + block.length, buf.length);
  }
  hasher.feed(new Uint8Array(0), buf.length, chunker.finish(), sink);
  return table.finish();
}

/**
 * Indexes a regular file without holding it in memory (reads of 1 MiB into reused
 * buffers), in worker threads for large files. Rejects with the signal's reason
 * when aborted.
 */
export async function indexFile(path: string, opts: IndexOptions): Promise<ChunkIndex> {
  checkChunkParams(opts.params, opts.variant);
  opts.signal?.throwIfAborted();
  const { fh, st } = await openInput(path, { blockDevices: false });
  try {
    const size = st.size;
    const threads = opts.threads ?? defaultThreads(size);
    const segments = splitSegments(size, threads);
    const range: RangeOptions = { ...opts, final: true, source: path };
    const table = ChunkIndexBuilder.forDigest(opts.digest, opts.params, estimateChunks(size, opts.params));
    if (segments.length === 1) {
      let done = 0;
      const onBytes = (n: number): void => opts.onProgress?.((done += n), size);
      await indexRange(readAt(fh), 0, size, { ...range, onBytes }, (end, id) => table.add(end, id));
    } else {
      opts.signal?.throwIfAborted();
      const results = await runSegments(path, fh.fd, segments, opts, threads, size);
      await mergeSegments(fh, results, size, range, table);
    }
    opts.onProgress?.(size, size);
    return table.finish();
  } finally {
    await fh.close();
  }
}

interface Segment {
  start: number;
  end: number;
}

interface SegmentResult extends Segment {
  ends: Float64Array;
  ids: Uint8Array;
}

function defaultThreads(size: number): number {
  return size < MIN_PARALLEL_SIZE ? 1 : Math.min(availableParallelism(), DEFAULT_MAX_THREADS);
}

/**
 * Cuts the file into segments. With several threads there are more segments than
 * threads (SEGMENTS_PER_THREAD, each at least MIN_SEGMENT_SIZE) and idle workers
 * take the next one, so content that chunks faster in one place (zero runs) or a
 * busy core does not leave the others waiting.
 */
function splitSegments(size: number, threads: number): Segment[] {
  if (!Number.isInteger(threads) || threads < 1)
    throw new RangeError(`threads must be a positive integer (got ${threads})`);
  const wanted =
    threads === 1 ? 1 : Math.min(threads * SEGMENTS_PER_THREAD, Math.max(threads, Math.floor(size / MIN_SEGMENT_SIZE)));
  const count = Math.max(1, Math.min(wanted, size));
  const segments: Segment[] = [];
  for (let i = 0; i < count; i++) {
    segments.push({ start: Math.floor((size * i) / count), end: Math.floor((size * (i + 1)) / count) });
  }
  return segments;
}

function readAt(fh: FileHandle): ReadAt {
  return async (buf, offset, length, position) => (await fh.read(buf, offset, length, position)).bytesRead;
}

function estimateChunks(size: number, params: ChunkParams): number {
  return Math.min(Math.ceil(size / params.avg) + 16, 1 << 20);
}

/**
 * Indexes the segments on a pool of `threads` workers, each taking the next
 * segment when done. Rejects (after stopping every worker) on the first failure
 * or on abort.
 */
async function runSegments(
  path: string,
  fd: number,
  segments: Segment[],
  opts: IndexOptions,
  threads: number,
  size: number,
): Promise<SegmentResult[]> {
  const setup: WorkerSetup = {
    path,
    fd,
    size,
    params: opts.params,
    digest: opts.digest,
    variant: opts.variant,
    kernel: opts.kernel,
  };
  const pool = new WorkerPool<SegmentJob, SegmentDone, SegmentProgress>({
    script: new URL('./indexer-worker.js', import.meta.url),
    threads: Math.min(threads, segments.length),
    name: 'indexing',
    workerData: setup,
  });
  let done = 0;
  const onEvent = (p: SegmentProgress): void => opts.onProgress?.((done += p.bytes), size);
  const ctl = new AbortController();
  const onAbort = (): void => ctl.abort(opts.signal!.reason);
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const aborted = new Promise<never>((_, reject) =>
      ctl.signal.addEventListener('abort', () => reject(ctl.signal.reason), { once: true }),
    );
    aborted.catch(() => {});
    const jobs = segments.map(async (seg) => {
      try {
        const r = await pool.run({ start: seg.start, end: seg.end }, { onEvent });
        return { ...seg, ends: r.ends, ids: r.ids };
      } catch (err) {
        throw new DeltadError(
          'ERR_DELTAD_WORKER',
          `indexing ${path} bytes ${seg.start}..${seg.end}: ${(err as Error).message}`,
          {
            cause: err,
          },
        );
      }
    });
    for (const j of jobs) j.catch(() => {});
    return await Promise.race([Promise.all(jobs), aborted]);
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    // The workers read through our descriptor: they must have stopped before the caller closes it.
    await pool.close();
  }
}

/**
 * Builds the serial chunk table from the segments' tables. Segment 0 starts at a
 * true boundary (0). After a segment's last boundary, the main thread chunks on
 * until one of its boundaries is also in a later segment's table; from there that
 * segment's chunks are adopted. If segments never agree (e.g. a segment that is
 * one long run of max-size chunks in a different phase) this degrades to serial
 * chunking of the rest, never to a wrong result.
 */
async function mergeSegments(
  fh: FileHandle,
  segs: SegmentResult[],
  size: number,
  range: RangeOptions,
  table: ChunkIndexBuilder,
): Promise<void> {
  let k = 0;
  let from = 0;
  let pos = 0;
  for (;;) {
    const seg = segs[k];
    for (let i = from; i < seg.ends.length; i++)
      table.add(seg.ends[i], seg.ids.subarray(i * ID_SIZE, (i + 1) * ID_SIZE));
    if (seg.ends.length > from) pos = seg.ends[seg.ends.length - 1];
    if (pos === size) return;
    let adopt: { k: number; from: number } | undefined;
    await indexRange(readAt(fh), pos, size, range, (end, id) => {
      table.add(end, id);
      const j = segmentOf(segs, end);
      if (j > k) {
        const i = findEnd(segs[j].ends, end);
        if (i >= 0) {
          adopt = { k: j, from: i + 1 };
          return false;
        }
      }
      return true;
    });
    if (!adopt) return;
    ({ k, from } = adopt);
    pos = segs[k].ends[from - 1];
  }
}

/** Index of the segment whose range (start, end] holds a chunk end. */
function segmentOf(segs: Segment[], end: number): number {
  let j = 0;
  while (end > segs[j].end) j++;
  return j;
}

function findEnd(ends: Float64Array, value: number): number {
  let lo = 0;
  let hi = ends.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    if (ends[mid] === value) return mid;
    if (ends[mid] < value) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}
