// A content-addressed chunk cache on disk for the fleet proxy (and any caller
// that wants one): chunks are kept as zstd `.cacnk` files in the casync layout
// (`<dir>/<4hex>/<id>.cacnk`), so the cache directory is itself a valid casync
// store and compressed files can be served to store clients unchanged.
//
// - Size limit with least-recently-used eviction (recency is kept in memory and
//   approximated by file mtime across restarts).
// - Disk-full safety: a failed write leaves no file behind and never fails the
//   caller; the cache just stops writing for a while and the data is served
//   uncached. Files appear only by rename after a complete write (not flushed:
//   every read verifies, so a file torn by a crash is a miss).
// - Single-flight: concurrent callers missing the same chunk share one fetch.
// - Every chunk returned was hashed against its ID; a corrupt file is deleted
//   and reported as a miss, so a damaged cache heals instead of failing.
import { mkdir, readdir, readFile, stat, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { isChunkIdHex, toHex, type DigestName } from '../format/digest.js';
import { compressChunk } from '../store/compression.js';
import { decodeChunk, resolveFormat } from '../store/chunk-file.js';
import type { ChunkRequest, WritableChunkStore } from '../store/types.js';
import { FileError, UsageError } from '../errors.js';
import { replaceFile, writeFully } from '../util/fs-io.js';
import { concurrentEmit } from '../util/async-pool.js';

export interface ChunkCacheOptions {
  /** Upper bound on the compressed bytes kept on disk. */
  maxBytes: number;
  /** Digest of the chunk IDs (default sha512-256, casync's default). */
  digest?: DigestName;
  /** How long to stop writing after a failed write (default 10 s). */
  writeBackoffMs?: number;
  /** Writes a chunk file's bytes into the new (temporary) file; replaceable so tests can inject ENOSPC. */
  writeFile?: (fh: FileHandle, data: Uint8Array) => Promise<void>;
}

export interface ChunkCacheStats {
  entries: number;
  bytes: number;
  maxBytes: number;
  hits: number;
  misses: number;
  /** Fetches run on a miss (each one upstream fetch). */
  fetches: number;
  /** Callers that joined a fetch already under way instead of starting one. */
  joined: number;
  writes: number;
  writeErrors: number;
  evictions: number;
  /** Corrupt or truncated cache files found and removed. */
  discarded: number;
  /** True while writes are suspended after an error (e.g. disk full). */
  writesSuspended: boolean;
  lastWriteError?: string;
}

const CHUNK_FILE = /^([0-9a-f]{64})\.cacnk$/;
const PREFIX_DIR = /^[0-9a-f]{4}$/;
const TEMP_PREFIX = '.tmp-';

export class ChunkCache implements WritableChunkStore {
  readonly location: string;
  readonly digest: DigestName;
  private readonly format: ReturnType<typeof resolveFormat>;
  readonly maxBytes: number;
  /** Compressed size per chunk ID, oldest use first (Map keeps insertion order). */
  private readonly entries = new Map<string, number>();
  private readonly inflight = new Map<string, Promise<Buffer | null>>();
  private readonly writing = new Set<string>();
  private readonly writeBackoffMs: number;
  private readonly writeFn: (fh: FileHandle, data: Uint8Array) => Promise<void>;
  private suspendedUntil = 0;
  private bytes = 0;
  private readonly counters = {
    hits: 0,
    misses: 0,
    fetches: 0,
    joined: 0,
    writes: 0,
    writeErrors: 0,
    evictions: 0,
    discarded: 0,
  };
  private lastWriteError?: string;

  private constructor(dir: string, opts: ChunkCacheOptions) {
    if (!(opts.maxBytes > 0))
      throw new UsageError(`chunk cache ${dir}: size limit must be positive, got ${opts.maxBytes}`);
    this.location = dir;
    this.maxBytes = opts.maxBytes;
    this.digest = opts.digest ?? 'sha512-256';
    this.format = resolveFormat({ digest: this.digest });
    this.writeBackoffMs = opts.writeBackoffMs ?? 10_000;
    this.writeFn = opts.writeFile ?? ((fh, d) => writeFully(fh, d, 0));
  }

  /** Opens (creating if needed) a cache directory and indexes what it holds. */
  static async open(dir: string, opts: ChunkCacheOptions): Promise<ChunkCache> {
    const cache = new ChunkCache(dir, opts);
    await mkdir(dir, { recursive: true });
    await cache.scan();
    return cache;
  }

  /** Rebuilds the LRU list from the files on disk (oldest mtime first) and removes stale temp files. */
  private async scan(): Promise<void> {
    const found: { hex: string; size: number; mtime: number }[] = [];
    for (const sub of await readdir(this.location)) {
      if (!PREFIX_DIR.test(sub)) continue;
      const subdir = join(this.location, sub);
      for (const name of await readdir(subdir)) {
        const path = join(subdir, name);
        if (name.startsWith(TEMP_PREFIX)) {
          await unlink(path).catch(() => {});
          continue;
        }
        const m = CHUNK_FILE.exec(name);
        if (!m?.[1].startsWith(sub)) continue;
        const st = await stat(path).catch(() => null);
        if (st?.isFile()) found.push({ hex: m[1], size: st.size, mtime: st.mtimeMs });
      }
    }
    found.sort((a, b) => a.mtime - b.mtime);
    for (const f of found) {
      this.entries.set(f.hex, f.size);
      this.bytes += f.size;
    }
    await this.evict(this.maxBytes);
  }

  private pathOf(hex: string): string {
    return join(this.location, hex.slice(0, 4), `${hex}.cacnk`);
  }

  /** True when the chunk is in the cache (no disk access). */
  contains(hex: string): boolean {
    return this.entries.has(hex);
  }

  async has(id: Uint8Array): Promise<boolean> {
    return this.entries.has(toHex(id));
  }

  /** The cached `.cacnk` bytes as stored (for serving store clients), or null. */
  async getCompressed(hex: string): Promise<Buffer | null> {
    if (!isChunkIdHex(hex) || !this.entries.has(hex)) return null;
    try {
      const buf = await readFile(this.pathOf(hex));
      this.touch(hex);
      return buf;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      this.forget(hex);
      return null;
    }
  }

  /** Verified uncompressed chunk, or null on a miss (a corrupt file counts as a miss and is removed). */
  async get(req: ChunkRequest): Promise<Buffer | null> {
    const hex = toHex(req.id);
    const compressed = await this.getCompressed(hex);
    if (!compressed) {
      this.counters.misses++;
      return null;
    }
    try {
      const data = decodeChunk(compressed, true, req, this.format, this.pathOf(hex));
      this.counters.hits++;
      return data;
    } catch {
      this.counters.discarded++;
      this.counters.misses++;
      this.forget(hex);
      await unlink(this.pathOf(hex)).catch(() => {});
      return null;
    }
  }

  /**
   * Stores a verified chunk. `compressed` may carry the `.cacnk` bytes when the
   * caller already has them (e.g. from an upstream store) to avoid recompressing.
   * Returns false when the chunk was not written (present, in progress, or the
   * disk refused it); never throws for write failures.
   */
  async put(id: Uint8Array, data: Uint8Array, compressed?: Uint8Array): Promise<boolean> {
    const hex = toHex(id);
    if (this.entries.has(hex) || this.writing.has(hex) || Date.now() < this.suspendedUntil) return false;
    this.writing.add(hex);
    const final = this.pathOf(hex);
    try {
      const body = compressed ?? compressChunk(data);
      await mkdir(join(this.location, hex.slice(0, 4)), { recursive: true });
      await replaceFile(final, (fh) => this.writeFn(fh, body), {
        durable: false,
        temp: { prefix: `${TEMP_PREFIX}${hex}-` },
      });
      this.entries.set(hex, body.length);
      this.bytes += body.length;
      this.counters.writes++;
      await this.evict(this.maxBytes);
      return true;
    } catch (err) {
      this.counters.writeErrors++;
      this.lastWriteError = err instanceof FileError ? err.message : `${final}: ${(err as Error).message}`;
      this.suspendedUntil = Date.now() + this.writeBackoffMs;
      // A full disk: make room for later writes by dropping the oldest tenth.
      const code = err instanceof FileError ? err.errno : (err as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC' || code === 'EDQUOT') await this.evict(Math.floor(this.bytes * 0.9));
      return false;
    } finally {
      this.writing.delete(hex);
    }
  }

  /**
   * Single-flight read-through: returns the cached chunk, or joins a fetch of
   * the same chunk already under way, or runs `fetch` (once for all concurrent
   * callers), verifies what it returns and caches it. null: the source lacks it.
   * The shared fetch is not cancelled when one waiting caller gives up.
   */
  async getOrFetch(
    req: ChunkRequest,
    fetch: () => Promise<{ data: Buffer; compressed?: Buffer } | null>,
    source = 'upstream',
  ): Promise<Buffer | null> {
    const hex = toHex(req.id);
    const pending = this.inflight.get(hex);
    if (pending) {
      this.counters.joined++;
      return pending;
    }
    const hit = await this.get(req);
    if (hit) return hit;
    const raced = this.inflight.get(hex);
    if (raced) {
      this.counters.joined++;
      return raced;
    }
    const run = (async () => {
      this.counters.fetches++;
      const got = await fetch();
      if (!got) return null;
      decodeChunk(got.data, false, req, this.format, source);
      await this.put(req.id, got.data, got.compressed);
      return got.data;
    })().finally(() => this.inflight.delete(hex));
    this.inflight.set(hex, run);
    return run;
  }

  /**
   * Batched single-flight read-through: yields `{ index, data }` for every
   * request the cache or the source can satisfy, in completion order. Hits come
   * from disk, chunks already being fetched are awaited, and the rest are
   * fetched together with one `fetchMany` call (e.g. one coalesced byte range or
   * one batch request), verified and cached. Chunks the source lacks are not
   * yielded; a fetch failure is thrown after the other chunks were yielded.
   */
  async *getOrFetchMany(
    reqs: ChunkRequest[],
    fetchMany: (reqs: ChunkRequest[]) => AsyncIterable<{ index: number; data: Buffer }>,
    source = 'upstream',
  ): AsyncGenerator<{ index: number; data: Buffer }> {
    const waits: { index: number; promise: Promise<Buffer | null> }[] = [];
    const mine: { index: number; req: ChunkRequest; settle: (d: Buffer | null, err?: unknown) => void }[] = [];
    const claimed = new Map<string, Promise<Buffer | null>>();
    for (let index = 0; index < reqs.length; index++) {
      const req = reqs[index];
      const hex = toHex(req.id);
      const shared = this.inflight.get(hex) ?? claimed.get(hex);
      if (shared) {
        if (!claimed.has(hex)) this.counters.joined++;
        waits.push({ index, promise: shared });
        continue;
      }
      let hit: Buffer | null = null;
      if (this.entries.has(hex)) hit = await this.get(req);
      else this.counters.misses++;
      if (hit) {
        yield { index, data: hit };
        continue;
      }
      const raced = this.inflight.get(hex);
      if (raced) {
        this.counters.joined++;
        waits.push({ index, promise: raced });
        continue;
      }
      let settle!: (d: Buffer | null, err?: unknown) => void;
      const promise = new Promise<Buffer | null>((resolve, reject) => {
        settle = (d, err) => (err === undefined ? resolve(d) : reject(err));
      });
      promise.catch(() => {}); // observed by the waiters; never an unhandled rejection
      this.inflight.set(hex, promise);
      claimed.set(hex, promise);
      mine.push({
        index,
        req,
        settle: (d, err) => {
          this.inflight.delete(hex);
          settle(d, err);
        },
      });
      waits.push({ index, promise });
    }
    if (mine.length) {
      this.counters.fetches += mine.length;
      void this.runFetch(mine, fetchMany, source);
    }
    // Yield the awaited chunks as they settle (all at once: they are under way); the first failure after them. A
    // failure is kept, not thrown in the loop: that would stop the waits not yet started, and their chunks with them.
    let failure: { err: unknown } | undefined;
    yield* concurrentEmit<(typeof waits)[number], { index: number; data: Buffer }>(
      waits,
      waits.length,
      async (w, emit) => {
        try {
          const data = await w.promise;
          if (data) emit({ index: w.index, data });
        } catch (err) {
          failure ??= { err };
        }
      },
    );
    if (failure) throw failure.err;
  }

  /** Runs one batched fetch for claimed chunks: verify, cache, settle each; missing ones settle as null. */
  private async runFetch(
    mine: { index: number; req: ChunkRequest; settle: (d: Buffer | null, err?: unknown) => void }[],
    fetchMany: (reqs: ChunkRequest[]) => AsyncIterable<{ index: number; data: Buffer }>,
    source: string,
  ): Promise<void> {
    const open = new Set(mine.keys());
    try {
      for await (const { index, data } of fetchMany(mine.map((m) => m.req))) {
        const m = mine[index];
        if (!m || !open.has(index)) continue;
        open.delete(index);
        try {
          decodeChunk(data, false, m.req, this.format, source);
        } catch (err) {
          m.settle(null, err);
          continue;
        }
        await this.put(m.req.id, data);
        m.settle(data);
      }
      for (const i of open) mine[i].settle(null);
    } catch (err) {
      for (const i of open) mine[i].settle(null, err);
    }
  }

  private touch(hex: string): void {
    const size = this.entries.get(hex);
    if (size === undefined) return;
    this.entries.delete(hex);
    this.entries.set(hex, size);
  }

  private forget(hex: string): void {
    const size = this.entries.get(hex);
    if (size === undefined) return;
    this.entries.delete(hex);
    this.bytes -= size;
  }

  /** Removes least-recently-used chunks until at most `limit` bytes remain. */
  private async evict(limit: number): Promise<void> {
    const victims: string[] = [];
    for (const [hex] of this.entries) {
      if (this.bytes <= limit) break;
      this.forget(hex);
      victims.push(hex);
    }
    this.counters.evictions += victims.length;
    await Promise.all(victims.map((hex) => unlink(this.pathOf(hex)).catch(() => {})));
  }

  get stats(): ChunkCacheStats {
    return {
      entries: this.entries.size,
      bytes: this.bytes,
      maxBytes: this.maxBytes,
      ...this.counters,
      writesSuspended: Date.now() < this.suspendedUntil,
      lastWriteError: this.lastWriteError,
    };
  }
}
