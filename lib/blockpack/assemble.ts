// Assembles a target image on the block path: seed blocks first (each hashed
// again as it is read; a seed that changed since it was indexed costs a fetch,
// not a wrong byte), then the pack frames that are still needed, fetched as
// byte ranges of the pack, decompressed with the release dictionary and
// checked block by block. The output is a temp file beside the target, renamed
// only after the whole file matched the release's SHA-256.
import { createHash } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ChunkIndex } from '../format/caibx.js';
import { ChecksumMismatchError, OriginError, MultiRangeUnsupportedError, PackError } from '../errors.js';
import { isTransient, type HttpClient } from '../fetch/http-client.js';
import { ChunkCollector, RangeFetcher } from '../fetch/range-fetcher.js';
import { verifyFile } from '../tools/verify.js';
import { forEachBlock } from './block-reader.js';
import { FrameDecompressor } from './frame-codec.js';
import { HASH_BYTES, ZERO_BLOCK, blockHash, blockLength, checkPackHeader, frameOf, sha256, type BlockIndex } from './format.js';
import { PackLayout, packRuns, planPackRequests, type BlockPlan } from './plan.js';

export interface AssembleBlocksOptions {
  http: HttpClient;
  packUrl: string;
  dictUrl: string;
  /** Try multi-range requests first (default true; falls back to single ranges when refused). */
  multi?: boolean;
  requestCost?: number;
  /** The release's SHA-256 (hex), when known: must match the block index before anything is fetched. */
  sha256?: string;
  /** The chunk index the caller asked for: the image must match it too (a stale pack describes another image). */
  target?: ChunkIndex;
  /** Pack requests in flight (default 4). */
  concurrency?: number;
  /** Total attempts per transient failure (default 4). */
  attempts?: number;
  retryBaseMs?: number;
  onWarning?: (message: string) => void;
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

export interface AssembleBlocksResult {
  sha256: string;
  fromSeeds: number;
  fromPack: number;
  /** Seed blocks that no longer matched their hash (fetched instead). */
  seedMismatches: number;
  /** Downloaded by the assembly: dictionary and pack ranges (the index is in plan.indexBytes). */
  networkBytes: number;
  networkRequests: number;
  frames: number;
  wallMs: number;
}

const MAX_RUN_BLOCKS = 256;

/** Target positions of each distinct block (CSR arrays). */
function positionsOf(index: BlockIndex): { start: Uint32Array; blocks: Int32Array } {
  const start = new Uint32Array(index.distinctCount + 1);
  for (let b = 0; b < index.blockCount; b++) if (index.distinctOf[b] !== ZERO_BLOCK) start[index.distinctOf[b] + 1]++;
  for (let d = 0; d < index.distinctCount; d++) start[d + 1] += start[d];
  const fill = start.slice(0, index.distinctCount);
  const blocks = new Int32Array(start[index.distinctCount]);
  for (let b = 0; b < index.blockCount; b++) {
    const d = index.distinctOf[b];
    if (d !== ZERO_BLOCK) blocks[fill[d]++] = b;
  }
  return { start, blocks };
}

function hashMatches(index: BlockIndex, d: number, data: Uint8Array): boolean {
  return blockHash(data).equals(Buffer.from(index.hashes.buffer, index.hashes.byteOffset + d * HASH_BYTES, HASH_BYTES));
}

async function writeAt(fh: FileHandle, data: Uint8Array, pos: number): Promise<void> {
  let done = 0;
  while (done < data.length) done += (await fh.write(data, done, data.length - done, pos + done)).bytesWritten;
}

async function fileSha256(fh: FileHandle, size: number, blockSize: number): Promise<Buffer> {
  const h = createHash('sha256');
  await forEachBlock(fh, size, blockSize, (_b, data) => void h.update(data));
  return h.digest();
}

/** Copies seed blocks into the output; returns the distinct blocks whose seed copy did not verify. */
async function copyFromSeeds(plan: BlockPlan, out: FileHandle, progress: (n: number) => void, signal?: AbortSignal): Promise<{ failed: Set<number>; bytes: number }> {
  const { index, localSeed, localBlock } = plan;
  const bs = index.blockSize;
  const handles = new Map<number, FileHandle>();
  const failed = new Set<number>();
  let bytes = 0;
  try {
    for (let b = 0; b < index.blockCount;) {
      const d = index.distinctOf[b];
      if (d === ZERO_BLOCK || localSeed[d] < 0) {
        b++;
        continue;
      }
      signal?.throwIfAborted();
      const seed = localSeed[d];
      let n = 1;
      while (n < MAX_RUN_BLOCKS && b + n < index.blockCount) {
        const e = index.distinctOf[b + n];
        if (e === ZERO_BLOCK || localSeed[e] !== seed || localBlock[e] !== localBlock[d] + n) break;
        n++;
      }
      let fh = handles.get(seed);
      if (!fh) {
        fh = await open(plan.seeds[seed].path, 'r');
        handles.set(seed, fh);
      }
      const buf = Buffer.alloc(n * bs);
      let got = 0;
      while (got < buf.length) {
        const { bytesRead } = await fh.read(buf, got, buf.length - got, localBlock[d] * bs + got);
        if (bytesRead === 0) break; // a seed that shrank: the missing blocks fail their hash below
        got += bytesRead;
      }
      let allOk = true;
      for (let k = 0; k < n; k++) {
        const e = index.distinctOf[b + k];
        if (!hashMatches(index, e, buf.subarray(k * bs, (k + 1) * bs))) {
          failed.add(e);
          allOk = false;
        }
      }
      if (allOk) await writeAt(out, buf, b * bs);
      else {
        for (let k = 0; k < n; k++) if (!failed.has(index.distinctOf[b + k])) await writeAt(out, buf.subarray(k * bs, (k + 1) * bs), (b + k) * bs);
      }
      for (let k = 0; k < n; k++) if (!failed.has(index.distinctOf[b + k])) bytes += bs;
      progress(n * bs);
      b += n;
    }
  } finally {
    await Promise.all([...handles.values()].map((h) => h.close()));
  }
  return { failed, bytes };
}

/** Decompresses frame f and checks each of its blocks against the index; returns the blocks in order. */
function unpackFrame(index: BlockIndex, decoder: FrameDecompressor, f: number, stored: Buffer, lengthOf: (d: number) => number, packUrl: string): Buffer[] {
  const first = index.frameFirst[f];
  const last = index.frameFirst[f + 1];
  let length = 0;
  for (let d = first; d < last; d++) length += lengthOf(d);
  const where = `${packUrl}: frame ${f} at byte ${index.frameStart[f]}`;
  const content = decoder.decompress(stored, length, where);
  const blocks: Buffer[] = [];
  for (let d = first, off = 0; d < last; d++) {
    const block = content.subarray(off, off + lengthOf(d));
    off += block.length;
    if (!hashMatches(index, d, block)) throw new PackError(`${where}: block ${d - first} does not match its hash in the block index`);
    blocks.push(block);
  }
  return blocks;
}

/** Fetches and writes the given frames; throws PackError for content that fails its checks twice. */
async function fetchFrames(plan: BlockPlan, frames: number[], seedFailed: ReadonlySet<number>, out: FileHandle, opts: AssembleBlocksOptions, progress: (n: number) => void): Promise<{ bytes: number; requests: number; fromPack: number }> {
  const { index } = plan;
  const bs = index.blockSize;
  const dict = index.dictSize === 0 ? { status: 200, body: Buffer.alloc(0) } : await opts.http.getBuffer(opts.dictUrl, { maxBytes: index.dictSize, signal: opts.signal });
  if (dict.status !== 200) throw new OriginError(`GET ${opts.dictUrl}: HTTP ${dict.status} (the block index names a dictionary the server does not have)`);
  if (dict.body.length !== index.dictSize || !sha256(dict.body).equals(index.dictSha256)) {
    throw new PackError(`${opts.dictUrl}: dictionary does not match the block index (${dict.body.length} bytes; corrupt, stale or swapped)`);
  }
  const decoder = new FrameDecompressor(dict.body);
  const positions = positionsOf(index);
  const shortDistinct = index.imageSize % bs !== 0 ? index.distinctOf[index.blockCount - 1] : ZERO_BLOCK;
  const lengthOf = (d: number): number => (d === shortDistinct ? blockLength(index, index.blockCount - 1) : bs);
  const layout = new PackLayout(index.frameStart);
  const fetcher = new RangeFetcher(opts.http, opts.packUrl, index.packSize);
  const attempts = opts.attempts ?? 4;
  const concurrency = Math.max(1, opts.concurrency ?? 4);
  let multi = opts.multi ?? true;
  let headerChecked = false;
  let fromPack = 0;
  const wrongOnce = new Set<number>();
  let failures = 0;
  let todo = frames;
  while (todo.length > 0) {
    opts.signal?.throwIfAborted();
    const wrong: number[] = [];
    const writes: Promise<void>[] = [];
    const chunks = packRuns(todo).flatMap((r) => Array.from({ length: r.count }, (_, k) => r.first + k)).filter((i) => i > 0 || !headerChecked);
    const collector = new ChunkCollector(layout, chunks, (i, data) => {
      if (i === 0) {
        checkPackHeader(data, index, opts.packUrl);
        headerChecked = true;
        return;
      }
      const f = i - 1;
      try {
        const blocks = unpackFrame(index, decoder, f, data, lengthOf, opts.packUrl);
        for (let d = index.frameFirst[f]; d < index.frameFirst[f + 1]; d++) {
          if (plan.localSeed[d] >= 0 && !seedFailed.has(d)) continue; // a multi-block frame may hold blocks we have
          const block = blocks[d - index.frameFirst[f]];
          for (let p = positions.start[d]; p < positions.start[d + 1]; p++) {
            writes.push(writeAt(out, block, positions.blocks[p] * bs));
            fromPack += block.length;
            progress(block.length);
          }
        }
      } catch (err) {
        if (!(err instanceof PackError) || wrongOnce.has(f)) throw err;
        wrongOnce.add(f);
        wrong.push(f);
      }
    });
    // A few requests in flight (latency on a real link); the first failure stops new ones.
    const requests = planPackRequests(index, todo, { multi, requestCost: opts.requestCost });
    let next = 0;
    let stop = false;
    const worker = async (limit = Infinity): Promise<void> => {
      for (let n = 0; n < limit && !stop && next < requests.length; n++) {
        const req = requests[next++];
        try {
          await fetcher.fetch(req.ranges, (off, data) => collector.write(off, data), opts.signal);
          await Promise.all(writes.splice(0)); // bounds the decompressed frames held in memory
        } catch (err) {
          stop = true;
          throw err;
        }
      }
    };
    // The first request goes alone: it shows whether the server does multi-range at all.
    const first = await Promise.allSettled([worker(1)]);
    const settled = stop ? first : await Promise.allSettled(Array.from({ length: Math.min(concurrency, requests.length) }, () => worker()));
    const error = [...first, ...settled].find((r): r is PromiseRejectedResult => r.status === 'rejected')?.reason as unknown;
    await Promise.all(writes);
    const left = [...new Set([...collector.missing().filter((i) => i > 0).map((i) => i - 1), ...wrong])].sort((a, b) => a - b);
    if (error instanceof MultiRangeUnsupportedError && multi) {
      multi = false;
      opts.onWarning?.(`${error.message}; falling back to single-range requests`);
    } else if (error) {
      if (!isTransient(error) || opts.signal?.aborted || ++failures >= attempts) throw error;
      await sleep((opts.retryBaseMs ?? 250) * failures, undefined, { signal: opts.signal });
    } else if (left.length > 0 && wrong.length === 0 && ++failures >= attempts) {
      throw new OriginError(`${opts.packUrl}: the server did not send frame ${left[0]} at byte ${index.frameStart[left[0]]}`);
    }
    todo = left;
  }
  // Every request asks for the header first; a server that never sent it is not serving this pack.
  if (!headerChecked) throw new OriginError(`${opts.packUrl}: the server did not send the pack header`);
  const dictRequests = index.dictSize === 0 ? 0 : 1;
  return { bytes: dict.body.length + fetcher.stats.bytes, requests: dictRequests + fetcher.stats.requests, fromPack };
}

/** The pack's image is only the target when every chunk of the target index hashes to its ID in it. */
async function checkTarget(target: ChunkIndex, path: string, signal?: AbortSignal): Promise<void> {
  const v = await verifyFile(target, path, { signal });
  if (v.ok) return;
  const where = v.bad[0] ? `chunk ${v.bad[0].id} at byte ${v.bad[0].offset}: ${v.bad[0].reason}` : `${v.fileSize} bytes, the index describes ${v.indexSize}`;
  throw new PackError(`the block pack's image is not the target index's image (${where}); stale or swapped pack`);
}

/** Assembles plan.index's image into `out` from the plan's seeds and the pack. */
export async function assembleBlocks(plan: BlockPlan, out: string, opts: AssembleBlocksOptions): Promise<AssembleBlocksResult> {
  const started = Date.now();
  const { index } = plan;
  const expected = index.imageSha256.toString('hex');
  if (opts.sha256 && opts.sha256.toLowerCase() !== expected) {
    throw new PackError(`block index is for an image with SHA-256 ${expected}, the release has ${opts.sha256} (stale or swapped index)`);
  }
  const tmp = join(dirname(out), `.${basename(out)}.deltad-blocks.${process.pid}.tmp`);
  // w+: the whole file is read back for its SHA-256 before the rename. A fresh file (x): never through a symlink planted at this name.
  await unlink(tmp).catch(() => {});
  const fh = await open(tmp, 'wx+', 0o644);
  let done = 0;
  const progress = (n: number): void => {
    done += n;
    opts.onProgress?.(done, index.imageSize);
  };
  try {
    await fh.truncate(index.imageSize); // zero blocks stay holes
    const seeds = await copyFromSeeds(plan, fh, progress, opts.signal);
    if (seeds.failed.size > 0) opts.onWarning?.(`${seeds.failed.size} seed block(s) no longer match their hash; fetching them from the pack`);
    const frames = [...new Set([...plan.frames, ...[...seeds.failed].map((d) => frameOf(index, d))])].sort((a, b) => a - b);
    const net = frames.length > 0 ? await fetchFrames(plan, frames, seeds.failed, fh, opts, progress) : { bytes: 0, requests: 0, fromPack: 0 };
    const actual = (await fileSha256(fh, index.imageSize, index.blockSize)).toString('hex');
    if (actual !== expected) throw new ChecksumMismatchError(expected, actual, `${out} (assembled from the block pack)`);
    if (opts.target) await checkTarget(opts.target, tmp, opts.signal);
    await fh.sync();
    await fh.close();
    await rename(tmp, out);
    return {
      sha256: actual, fromSeeds: seeds.bytes, fromPack: net.fromPack, seedMismatches: seeds.failed.size,
      networkBytes: net.bytes, networkRequests: net.requests, frames: frames.length, wallMs: Date.now() - started,
    };
  } catch (err) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw err;
  }
}
