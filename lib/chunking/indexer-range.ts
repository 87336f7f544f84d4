// Chunking plus hashing of one stretch of bytes: the loop shared by the serial
// indexer, the worker threads, and the re-synchronisation at segment seams.
// File reads go straight into the chunker's two input areas, the next block
// being read while the current one is chunked and hashed.
import { createHash, type Hash } from 'node:crypto';
import type { ChunkParams } from '../format/caibx.js';
import { Chunker, type ChunkerKernel, type ChunkerVariant } from './chunker.js';
import type { DigestName } from '../format/digest.js';
import { DeltadError } from '../errors.js';

export interface ChunkingSetup {
  params: ChunkParams;
  digest: DigestName;
  variant?: ChunkerVariant;
  kernel?: ChunkerKernel;
  /** Read size in bytes (default 1 MiB). */
  blockSize?: number;
}

/** Positional read (pread): bytes read into buf[offset..], 0 at end of file. */
export type ReadAt = (buf: Uint8Array, offset: number, length: number, position: number) => Promise<number>;

/** Receives each chunk's absolute end offset and ID; return false to stop. */
export type ChunkSink = (end: number, id: Buffer) => boolean | void;

/** Zero runs in images are cut into max-size chunks of zeros: hash that chunk once (up to this size). */
const ZERO_CHUNK_LIMIT = 4 * 1024 * 1024;

/** Hashes chunks whose bytes arrive block by block, given the cut offsets in each block. */
export class ChunkHasher {
  private partial: Hash | null = null;
  private readonly zeroChunk?: Buffer;
  private zeroChunkId?: Buffer;

  constructor(
    private readonly digest: DigestName,
    maxChunk: number,
  ) {
    if (maxChunk <= ZERO_CHUNK_LIMIT) this.zeroChunk = Buffer.alloc(maxChunk);
  }

  /**
   * `bytes` are the stream bytes starting at absolute offset `offset`; `cuts` are
   * the chunk ends inside them, in order. Returns false when the sink stopped.
   */
  feed(bytes: Uint8Array, offset: number, cuts: readonly number[], sink: ChunkSink): boolean {
    let pos = 0;
    for (const cut of cuts) {
      const piece = bytes.subarray(pos, cut - offset);
      let id: Buffer;
      if (this.partial) {
        id = this.partial.update(piece).digest();
        this.partial = null;
      } else if (this.zeroChunk?.length === piece.length && this.zeroChunk.equals(piece)) {
        id = this.zeroChunkId ??= createHash(this.digest).update(this.zeroChunk).digest();
      } else {
        id = createHash(this.digest).update(piece).digest();
      }
      pos = cut - offset;
      if (sink(cut, id) === false) return false;
    }
    if (pos < bytes.length) (this.partial ??= createHash(this.digest)).update(bytes.subarray(pos));
    return true;
  }
}

export interface RangeOptions extends ChunkingSetup {
  /** true when `end` is the end of the blob: the remainder becomes the last chunk. Otherwise it is dropped. */
  final: boolean;
  /** Name for error messages. */
  source: string;
  signal?: AbortSignal;
  /** Called after each block with the number of bytes it held. */
  onBytes?: (n: number) => void;
  /** A chunker with these parameters to reuse (reset first); by default a new one. */
  chunker?: Chunker;
}

/**
 * Chunks bytes [start, end) of an open file as if a chunk started at `start`,
 * and hands each complete chunk to `sink`. Resolves when done or stopped.
 */
export async function indexRange(
  readAt: ReadAt,
  start: number,
  end: number,
  opts: RangeOptions,
  sink: ChunkSink,
): Promise<void> {
  const chunker =
    opts.chunker ?? new Chunker(opts.params, { variant: opts.variant, kernel: opts.kernel, blockSize: opts.blockSize });
  chunker.reset();
  const hasher = new ChunkHasher(opts.digest, opts.params.max);
  const blockSize = chunker.blockSize;
  // Reads block `area` at `pos`, filling it completely unless the range ends first.
  const readBlock = async (area: 0 | 1, pos: number): Promise<number> => {
    const want = Math.min(blockSize, end - pos);
    const buf = chunker.block(area);
    let got = 0;
    while (got < want) {
      const bytesRead = await readAt(buf, got, want - got, pos + got);
      if (bytesRead === 0) {
        throw new DeltadError(
          'ERR_DELTAD_READ',
          `${opts.source}: file ended at byte ${pos + got} while reading up to byte ${end} (did it shrink?)`,
        );
      }
      got += bytesRead;
    }
    return got;
  };
  let pos = start;
  let area: 0 | 1 = 0;
  let pending = pos < end ? readBlock(area, pos) : Promise.resolve(0);
  while (pos < end) {
    const n = await pending;
    opts.signal?.throwIfAborted();
    const next: 0 | 1 = area === 0 ? 1 : 0;
    if (pos + n < end) pending = readBlock(next, pos + n);
    const cuts = chunker.scanBlock(area, n);
    for (let i = 0; i < cuts.length; i++) cuts[i] += start;
    if (!hasher.feed(chunker.block(area).subarray(0, n), pos, cuts, sink)) {
      if (pos + n < end) await pending.catch(() => undefined); // leave no read in flight into the areas
      return;
    }
    pos += n;
    area = next;
    opts.onBytes?.(n);
  }
  if (opts.final) {
    const last = chunker.finish().map((c) => c + start);
    hasher.feed(new Uint8Array(0), pos, last, sink);
  }
}
