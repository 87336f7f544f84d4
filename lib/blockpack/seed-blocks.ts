// Seeds indexed per aligned block for the block path: the truncated SHA-256 of
// every block of a local image, cached on disk like the chunk indexes (keyed
// by the file's identity and the block size, so a changed file is re-hashed).
// The cache only finds candidates: every block taken from a seed is checked
// again when it is read (by its hash, or by the ID of the chunk it is in).
import { createHash } from 'node:crypto';
import { mkdir, open, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { defaultCacheDir } from '../seed/index-cache.js';
import { readFully, writeFileAtomic } from '../util/fs-io.js';
import { forEachBlock } from './block-reader.js';
import { HASH_BYTES, blockHash } from './format.js';

export interface SeedBlocks {
  path: string;
  size: number;
  blockSize: number;
  /** HASH_BYTES per block. */
  hashes: Uint8Array;
}

const CACHE_MAGIC = Buffer.from('DBLKSEED', 'latin1');
const CACHE_HEADER = 24; // magic, u32 block size, u32 hash bytes, u64 file size

async function cacheEntry(path: string, blockSize: number, cacheDir: string): Promise<{ entry: string; size: number }> {
  const st = await stat(path, { bigint: true });
  const key = JSON.stringify({
    path: resolve(path),
    dev: String(st.dev),
    ino: String(st.ino),
    size: String(st.size),
    mtimeNs: String(st.mtimeNs),
    blockSize,
  });
  return {
    entry: join(resolve(cacheDir), 'blocks', `${createHash('sha256').update(key).digest('hex')}.bphash`),
    size: Number(st.size),
  };
}

/**
 * The cached hashes of a seed, read straight into their own array (not the file read whole and copied: 8 bytes per
 * block less at the planning peak); null when the entry is missing or does not describe this file.
 */
async function readCache(entry: string, blockSize: number, size: number): Promise<Uint8Array | null> {
  const fh = await open(entry, 'r').catch(() => null);
  if (!fh) return null;
  try {
    const blocks = Math.ceil(size / blockSize);
    const header = Buffer.alloc(CACHE_HEADER);
    if ((await fh.stat()).size !== CACHE_HEADER + blocks * HASH_BYTES) return null;
    if ((await readFully(fh, header, 0)) !== CACHE_HEADER || !header.subarray(0, 8).equals(CACHE_MAGIC)) return null;
    if (
      header.readUInt32LE(8) !== blockSize ||
      header.readUInt32LE(12) !== HASH_BYTES ||
      header.readBigUInt64LE(16) !== BigInt(size)
    )
      return null;
    const hashes = new Uint8Array(blocks * HASH_BYTES);
    return (await readFully(fh, hashes, CACHE_HEADER)) === hashes.length ? hashes : null;
  } catch {
    return null;
  } finally {
    await fh.close().catch(() => {});
  }
}

/** Hashes every block of `path` (or takes the cached hashes). */
export async function indexSeedBlocks(
  path: string,
  blockSize: number,
  opts: { cacheDir?: string; signal?: AbortSignal } = {},
): Promise<SeedBlocks> {
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  const { entry, size } = await cacheEntry(path, blockSize, cacheDir);
  const cached = await readCache(entry, blockSize, size);
  if (cached) return { path, size, blockSize, hashes: cached };

  const hashes = new Uint8Array(Math.ceil(size / blockSize) * HASH_BYTES);
  const fh = await open(path, 'r');
  try {
    await forEachBlock(
      fh,
      size,
      blockSize,
      (b, data) => hashes.set(blockHash(data), b * HASH_BYTES),
      undefined,
      opts.signal,
    );
  } finally {
    await fh.close();
  }
  // Cache only what still describes the file; a cache that cannot be written only costs hashing next time.
  const after = await cacheEntry(path, blockSize, cacheDir).catch(() => null);
  if (after?.entry === entry) {
    const header = Buffer.alloc(CACHE_HEADER);
    CACHE_MAGIC.copy(header, 0);
    header.writeUInt32LE(blockSize, 8);
    header.writeUInt32LE(HASH_BYTES, 12);
    header.writeBigUInt64LE(BigInt(size), 16);
    // Not flushed: a cache entry lost in a crash is hashed again.
    await mkdir(join(resolve(cacheDir), 'blocks'), { recursive: true })
      .then(() => writeFileAtomic(entry, Buffer.concat([header, hashes]), { durable: false, sweep: true }))
      .catch(() => {});
  }
  return { path, size, blockSize, hashes };
}
