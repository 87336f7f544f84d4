// The publisher side (`deltad pack`): from a release image, write the three
// artifacts a release hosts next to it: IMAGE.bpk (the block pack), IMAGE.bpdict
// (the zstd dictionary) and IMAGE.bpidx (the block index, written last: it is
// what ties the other two to the image). Each goes to a temp file beside its
// target and is renamed only when complete.
import { createHash, type Hash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { mkdir, open, type FileHandle } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { DeltadError, UsageError } from '../errors.js';
import { forEachBlock } from './block-reader.js';
import { trainCoverDictionary, trainZstdCliDictionary } from './dictionary.js';
import { FramePool, type StoredBatch } from './frame-batch.js';
import { replaceFile, writeFully } from '../util/fs-io.js';
import {
  HASH_BYTES,
  MAX_BLOCKS,
  MAX_BLOCK_SIZE,
  blockHash,
  MAX_FRAME_BLOCKS,
  MIN_BLOCK_SIZE,
  PACK_HEADER_SIZE,
  ZERO_BLOCK,
  serializeBlockIndex,
  serializePackHeader,
} from './format.js';

export type Trainer = 'cover' | 'zstd' | 'none';

export interface PackOptions {
  outDir: string;
  blockSize?: number;
  /** zstd level for the frames (default 19). */
  level?: number;
  /** Dictionary size in bytes (default 256 KiB). */
  dictSize?: number;
  /** Dictionary trainer (default 'cover', the built-in one). */
  trainer?: Trainer;
  /**
   * Earlier release images. Runs of consecutive blocks that none of them has
   * (new files) are compressed together in frames of up to `groupBlocks`
   * blocks: a client updating from those releases needs them all anyway.
   */
  previous?: string[];
  /** Largest multi-block frame (default 64 blocks: 256 KiB at 4 KiB blocks). */
  groupBlocks?: number;
  /** Compression threads (default: the number of cores, at most 4; 0 compresses inline). */
  threads?: number;
  onProgress?: (phase: 'scan' | 'compress', done: number, total: number) => void;
}

export interface PackResult {
  indexPath: string;
  packPath: string;
  dictPath: string;
  imageSize: number;
  imageSha256: string;
  blocks: number;
  zeroBlocks: number;
  distinctBlocks: number;
  frames: number;
  indexSize: number;
  packSize: number;
  dictSize: number;
  wallMs: number;
}

/** Names of the artifacts for an image file name. */
export function artifactNames(imageName: string): { index: string; pack: string; dict: string } {
  return { index: `${imageName}.bpidx`, pack: `${imageName}.bpk`, dict: `${imageName}.bpdict` };
}

/** Uncompressed bytes per compression batch (one worker message). */
const BATCH_BYTES = 1024 * 1024;
/** Pending pack bytes written at once. */
const WRITE_BYTES = 4 * 1024 * 1024;
/** Samples for dictionary training, as a multiple of the dictionary size (zstd suggests ~100x). */
const SAMPLE_FACTOR = 100;

/** Full-hash keys of every block of the given images (to tell new blocks from old). */
async function blockKeys(paths: readonly string[], blockSize: number): Promise<Set<string>> {
  const keys = new Set<string>();
  for (const p of paths) {
    const fh = await open(p, 'r');
    try {
      const size = (await fh.stat()).size;
      await forEachBlock(fh, size, blockSize, (_b, data) => {
        keys.add(createHash('sha256').update(data).digest().toString('latin1', 0, 16));
      });
    } finally {
      await fh.close();
    }
  }
  return keys;
}

/** Writes sequentially to a temp file, hashing what it writes. */
class HashingWriter {
  private parts: Buffer[] = [];
  private pending = 0;
  private pos = 0;
  readonly hash: Hash = createHash('sha256');
  constructor(private readonly fh: FileHandle) {}
  get length(): number {
    return this.pos + this.pending;
  }
  async write(b: Uint8Array): Promise<void> {
    this.hash.update(b);
    this.parts.push(Buffer.from(b));
    this.pending += b.length;
    if (this.pending >= WRITE_BYTES) await this.flush();
  }
  async flush(): Promise<void> {
    if (this.pending === 0) return;
    const data = Buffer.concat(this.parts, this.pending);
    await writeFully(this.fh, data, this.pos);
    this.pos += data.length;
    this.parts = [];
    this.pending = 0;
  }
}

async function writeFileAtomic(path: string, write: (fh: FileHandle) => Promise<void>): Promise<void> {
  await replaceFile(path, write);
}

/** What the first pass over the image learns. */
interface ImageScan {
  size: number;
  imageSha256: Buffer;
  /** Per block: ZERO_BLOCK or its distinct block number. */
  distinctOf: Int32Array;
  /** Per distinct block: the block where it first occurs, its full-hash key, its truncated hash. */
  firstBlock: number[];
  keys: string[];
  hashes: Buffer[];
  zeroBlocks: number;
  /** Distinct blocks spread evenly over the image, for dictionary training. */
  samples: Buffer[];
}

/** Pass 1: hash every block, number the distinct ones (in order of first occurrence), pick training samples. */
async function scanImage(
  fh: FileHandle,
  size: number,
  bs: number,
  sampleBlocks: number,
  onProgress?: PackOptions['onProgress'],
): Promise<ImageScan> {
  const blockCount = Math.ceil(size / bs);
  const imageHash = createHash('sha256');
  const scan: ImageScan = {
    size,
    imageSha256: Buffer.alloc(0),
    distinctOf: new Int32Array(blockCount),
    firstBlock: [],
    keys: [],
    hashes: [],
    zeroBlocks: 0,
    samples: [],
  };
  const byKey = new Map<string, number>();
  const zero = Buffer.alloc(bs);
  const sampleStride = Math.max(1, Math.floor(blockCount / sampleBlocks));
  await forEachBlock(
    fh,
    size,
    bs,
    (b, data) => {
      imageHash.update(data);
      if (zero.subarray(0, data.length).equals(data)) {
        scan.distinctOf[b] = ZERO_BLOCK;
        scan.zeroBlocks++;
        return;
      }
      const digest = createHash('sha256').update(data).digest();
      const key = digest.toString('latin1', 0, 16) + (data.length < bs ? `/${data.length}` : '');
      const seen = byKey.get(key);
      if (seen !== undefined) {
        scan.distinctOf[b] = seen;
        return;
      }
      const d = scan.firstBlock.length;
      byKey.set(key, d);
      scan.distinctOf[b] = d;
      scan.firstBlock.push(b);
      scan.keys.push(key);
      scan.hashes.push(digest.subarray(0, HASH_BYTES));
      if (d % sampleStride === 0 && scan.samples.length < sampleBlocks && data.length === bs)
        scan.samples.push(Buffer.from(data));
    },
    (done) => onProgress?.('scan', done, size),
  );
  scan.imageSha256 = imageHash.digest();
  return scan;
}

/** Frame sizes in distinct blocks: one each, or runs of consecutive blocks none of the previous releases has. */
function planFrames(scan: ImageScan, oldKeys: Set<string> | null, groupBlocks: number): number[] {
  const { firstBlock, keys } = scan;
  const frameBlocks: number[] = [];
  for (let d = 0; d < firstBlock.length; ) {
    let n = 1;
    if (oldKeys && !oldKeys.has(keys[d])) {
      while (
        n < groupBlocks &&
        d + n < firstBlock.length &&
        firstBlock[d + n] === firstBlock[d] + n &&
        !oldKeys.has(keys[d + n])
      )
        n++;
    }
    frameBlocks.push(n);
    d += n;
  }
  return frameBlocks;
}

async function trainDictionary(samples: Buffer[], bs: number, trainer: Trainer, size: number): Promise<Buffer> {
  const sampleBuf = Buffer.concat(samples);
  if (trainer === 'none' || sampleBuf.length === 0) return Buffer.alloc(0);
  return trainer === 'zstd'
    ? trainZstdCliDictionary(sampleBuf, bs, { size })
    : trainCoverDictionary(sampleBuf, { size });
}

/**
 * Pass 2: reads the image again and writes the pack: the header, then every
 * frame in order, compressed in batches on `threads` workers with at most two
 * batches per thread in flight. Returns the stored frame lengths and the
 * pack's SHA-256 and size.
 */
async function writePack(
  path: string,
  fh: FileHandle,
  scan: ImageScan,
  frameBlocks: number[],
  dictionary: Buffer,
  opts: { bs: number; level: number; threads: number; what: string; onProgress?: PackOptions['onProgress'] },
): Promise<{ frameLengths: number[]; sha256: Buffer; size: number }> {
  const { bs, threads } = opts;
  const { size, firstBlock, hashes } = scan;
  const frameLengths: number[] = [];
  let sha256 = Buffer.alloc(0);
  let packSize = 0;
  await writeFileAtomic(path, async (out) => {
    const w = new HashingWriter(out);
    await w.write(
      serializePackHeader({
        blockSize: bs,
        frameCount: frameBlocks.length,
        imageSize: size,
        imageSha256: scan.imageSha256,
      }),
    );
    const pool = new FramePool(dictionary, opts.level, threads);
    try {
      const inFlight: Promise<StoredBatch>[] = [];
      const drain = async (keep: number): Promise<void> => {
        while (inFlight.length > keep) {
          const r = await inFlight.shift()!;
          frameLengths.push(...r.lengths);
          await w.write(r.data);
        }
      };
      let batch: Buffer[] = [];
      let lengths: number[] = [];
      let batchBytes = 0;
      const submit = (): void => {
        const data = new Uint8Array(batchBytes);
        let off = 0;
        for (const part of batch) {
          data.set(part, off);
          off += part.length;
        }
        inFlight.push(pool.run({ data, lengths }));
        batch = [];
        lengths = [];
        batchBytes = 0;
      };
      let f = 0;
      let d = 0;
      let inFrame = 0;
      let frameBytes = 0;
      await forEachBlock(
        fh,
        size,
        bs,
        (b, data) => {
          if (d >= firstBlock.length || firstBlock[d] !== b) return;
          if (!blockHash(data).equals(hashes[d]))
            throw new DeltadError('ERR_DELTAD_READ', `${opts.what}: block ${b} changed while packing`);
          batch.push(Buffer.from(data));
          batchBytes += data.length;
          frameBytes += data.length;
          d++;
          if (++inFrame < frameBlocks[f]) return;
          lengths.push(frameBytes);
          frameBytes = 0;
          inFrame = 0;
          f++;
          if (batchBytes < BATCH_BYTES) return;
          submit();
          if (inFlight.length > 2 * threads + 1) return drain(threads);
        },
        (done) => opts.onProgress?.('compress', done, size),
      );
      if (batchBytes > 0) submit();
      await drain(0);
      if (f !== frameBlocks.length)
        throw new DeltadError(
          'ERR_DELTAD_READ',
          `${opts.what}: changed while packing (wrote ${f} of ${frameBlocks.length} frames)`,
        );
    } finally {
      await pool.close();
    }
    await w.flush();
    sha256 = w.hash.digest();
    packSize = w.length;
  });
  return { frameLengths, sha256, size: packSize };
}

export async function packImage(imagePath: string, opts: PackOptions): Promise<PackResult> {
  const started = Date.now();
  const bs = opts.blockSize ?? 4096;
  if (!Number.isInteger(bs) || bs < MIN_BLOCK_SIZE || bs > MAX_BLOCK_SIZE || (bs & (bs - 1)) !== 0) {
    throw new UsageError(`--block-size ${bs}: must be a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE}`);
  }
  const level = opts.level ?? 19;
  if (!Number.isInteger(level) || level < 1 || level > 22) throw new UsageError(`--level ${level}: must be 1..22`);
  const dictSize = opts.dictSize ?? 256 * 1024;
  const groupBlocks = Math.min(MAX_FRAME_BLOCKS, Math.max(1, opts.groupBlocks ?? 64));
  const names = artifactNames(basename(imagePath));
  const paths = {
    index: join(opts.outDir, names.index),
    pack: join(opts.outDir, names.pack),
    dict: join(opts.outDir, names.dict),
  };

  const fh = await open(imagePath, 'r');
  try {
    await mkdir(opts.outDir, { recursive: true });
    const st = await fh.stat();
    if (!st.isFile()) throw new UsageError(`${imagePath}: not a regular file`);
    if (Math.ceil(st.size / bs) > MAX_BLOCKS)
      throw new UsageError(
        `${imagePath}: ${st.size} bytes is more than ${MAX_BLOCKS} blocks of ${bs}; use a larger --block-size`,
      );
    const scan = await scanImage(
      fh,
      st.size,
      bs,
      Math.max(1, Math.ceil((dictSize * SAMPLE_FACTOR) / bs)),
      opts.onProgress,
    );
    const frameBlocks = planFrames(
      scan,
      opts.previous?.length ? await blockKeys(opts.previous, bs) : null,
      groupBlocks,
    );
    const dictionary = await trainDictionary(scan.samples, bs, opts.trainer ?? 'cover', dictSize);
    const pack = await writePack(paths.pack, fh, scan, frameBlocks, dictionary, {
      bs,
      level,
      threads: opts.threads ?? Math.min(4, availableParallelism()),
      what: imagePath,
      onProgress: opts.onProgress,
    });
    if (pack.size !== PACK_HEADER_SIZE + pack.frameLengths.reduce((a, b) => a + b, 0))
      throw new Error('internal: pack size does not add up');

    await writeFileAtomic(paths.dict, (out) => out.writeFile(dictionary));
    // The index goes last: it is what ties the image, the pack and the dictionary together.
    const index = serializeBlockIndex({
      blockSize: bs,
      imageSize: scan.size,
      imageSha256: scan.imageSha256,
      packSize: pack.size,
      packSha256: pack.sha256,
      dictSize: dictionary.length,
      dictSha256: createHash('sha256').update(dictionary).digest(),
      distinctOf: scan.distinctOf,
      distinctCount: scan.firstBlock.length,
      hashes: Buffer.concat(scan.hashes),
      frameBlocks,
      frameLengths: pack.frameLengths,
    });
    await writeFileAtomic(paths.index, (out) => out.writeFile(index));
    return {
      indexPath: paths.index,
      packPath: paths.pack,
      dictPath: paths.dict,
      imageSize: scan.size,
      imageSha256: scan.imageSha256.toString('hex'),
      blocks: scan.distinctOf.length,
      zeroBlocks: scan.zeroBlocks,
      distinctBlocks: scan.firstBlock.length,
      frames: frameBlocks.length,
      indexSize: index.length,
      packSize: pack.size,
      dictSize: dictionary.length,
      wallMs: Date.now() - started,
    };
  } finally {
    await fh.close();
  }
}
