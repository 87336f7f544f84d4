// A cache of seed indexes, so a local image is chunked once, not on every
// update. An entry is keyed by the file's identity (device, inode, size, mtime)
// and by the chunking that produced it (parameters, digest, chunker variant):
// a changed file or a different chunking is never served a stale index.
// Entries are written atomically; one that fails to parse is ignored.
import { createHash } from 'node:crypto';
import { mkdir, readFile, stat, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { homedir } from 'node:os';
import { parseIndex, serializeIndex, type ChunkIndex, type ChunkParams } from '../format/caibx.js';
import type { DigestName } from '../format/digest.js';
import { DeltadError } from '../errors.js';
import { writeFileAtomic } from '../util/fs-io.js';

export interface ChunkingKey {
  params: ChunkParams;
  digest: DigestName;
  /** Chunker variant (e.g. casync or desync boundaries); undefined is the default. */
  variant?: string;
}

/** Builds an index for a file (the indexer), used on a cache miss. */
export type IndexBuilder = (path: string, key: ChunkingKey, signal?: AbortSignal) => Promise<ChunkIndex>;

interface FileIdentity {
  dev: number;
  ino: number;
  size: number;
  mtimeNs: bigint;
}

async function identify(path: string): Promise<FileIdentity> {
  const st = await stat(path, { bigint: true });
  return { dev: Number(st.dev), ino: Number(st.ino), size: Number(st.size), mtimeNs: st.mtimeNs };
}

function sameIdentity(a: FileIdentity, b: FileIdentity): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs;
}

/** $XDG_CACHE_HOME/deltad or ~/.cache/deltad. */
export function defaultCacheDir(): string {
  const xdg = process.env.XDG_CACHE_HOME;
  return xdg?.startsWith('/') ? join(xdg, 'deltad') : join(homedir(), '.cache', 'deltad');
}

export class IndexCache {
  readonly dir: string;
  constructor(dir: string = defaultCacheDir()) {
    this.dir = join(resolve(dir), 'indexes');
  }

  private entryPath(path: string, id: FileIdentity, key: ChunkingKey): string {
    const h = createHash('sha256')
      .update(
        JSON.stringify({
          path: resolve(path),
          dev: id.dev,
          ino: id.ino,
          size: id.size,
          mtimeNs: id.mtimeNs.toString(),
          params: [key.params.min, key.params.avg, key.params.max],
          digest: key.digest,
          variant: key.variant ?? 'default',
        }),
      )
      .digest('hex');
    return join(this.dir, `${h}.caibx`);
  }

  /** The cached index of `path` for this chunking, or null (missing, stale or corrupt). */
  async get(path: string, key: ChunkingKey): Promise<ChunkIndex | null> {
    const id = await identify(path);
    const entry = this.entryPath(path, id, key);
    let buf: Buffer;
    try {
      buf = await readFile(entry);
    } catch {
      return null;
    }
    try {
      const idx = parseIndex(buf, { source: entry, allowArchive: false });
      const p = idx.params;
      // A valid-looking entry that does not describe this file is as bad as a corrupt one.
      if (
        idx.size !== id.size ||
        idx.digest !== key.digest ||
        p.min !== key.params.min ||
        p.avg !== key.params.avg ||
        p.max !== key.params.max
      ) {
        await unlink(entry).catch(() => {});
        return null;
      }
      return idx;
    } catch {
      await unlink(entry).catch(() => {});
      return null;
    }
  }

  /**
   * Records a known index for a file (e.g. an image deltad just assembled and
   * verified), so it never needs chunking as a seed. The variant defaults to
   * the default chunker.
   */
  async adopt(path: string, index: ChunkIndex, variant?: string): Promise<void> {
    const id = await identify(path);
    if (index.size !== id.size)
      throw new DeltadError(
        'ERR_DELTAD_SIZE_MISMATCH',
        `${path}: cannot adopt an index of ${index.size} bytes for a file of ${id.size} bytes`,
      );
    await this.write(this.entryPath(path, id, { params: index.params, digest: index.digest, variant }), index);
  }

  /** The cached index, or one built by `build` and cached (unless the file changed while it was chunked). */
  async getOrBuild(path: string, key: ChunkingKey, build: IndexBuilder, signal?: AbortSignal): Promise<ChunkIndex> {
    const cached = await this.get(path, key);
    if (cached) return cached;
    const before = await identify(path);
    const idx = await build(path, key, signal);
    const after = await identify(path);
    if (sameIdentity(before, after) && idx.size === after.size) {
      await this.write(this.entryPath(path, after, key), idx).catch(() => {
        // A read-only or full cache directory only costs re-chunking next time.
      });
    }
    return idx;
  }

  private async write(entry: string, index: ChunkIndex): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    // Not durable: every seed chunk is verified when read, so an entry lost or torn in a crash costs re-chunking,
    // and an fsync here would hold a thread-pool thread (and the seed reads queued behind it) on a busy disk.
    await writeFileAtomic(entry, serializeIndex(index), { durable: false, sweep: true });
  }
}
