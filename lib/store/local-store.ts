// A casync chunk store in a local directory (SPEC §4.1): `<dir>/<4hex>/<id>.cacnk`
// (zstd, casync's default) or extension-less raw files (desync's `uncompressed`).
// Reading accepts both names, as casync does; writing uses the configured one,
// through a temp file in the prefix directory renamed into place (not flushed:
// every read verifies the chunk, so one lost in a crash is only missing).
import { access, constants, mkdir, open, readdir, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { ChunkVerifyError, DeltadError, FileError, fileError } from '../errors.js';
import { writeFileAtomic } from '../util/fs-io.js';
import { isChunkIdHex, toHex } from '../format/digest.js';
import { compressChunk, DEFAULT_ZSTD_LEVEL, maxEncodedSize } from './compression.js';
import type { ChunkRequest, TakeBuffer, WritableChunkStore } from './types.js';
import {
  chunkRelativePath,
  COMPRESSED_SUFFIX,
  decodeChunk,
  resolveFormat,
  sizeLimit,
  type StoreFormat,
} from './chunk-file.js';

export interface LocalStoreOptions extends StoreFormat {
  /** Write extension-less uncompressed chunks instead of `.cacnk` (default false). */
  uncompressed?: boolean;
  /** zstd level for written chunks (default 3, casync's). */
  level?: number;
}

/** Temp names start like desync's, so `desync prune` also cleans up after a crash. */
const TEMP_PREFIX = '.tmp-cacnk-';
const PREFIX_DIR = /^[0-9a-f]{4}$/;

export class LocalStore implements WritableChunkStore {
  readonly location: string;
  readonly uncompressed: boolean;
  private readonly format: ReturnType<typeof resolveFormat>;
  readonly level: number;
  /** Names to try, preferred first: the configured variant, then the other one. */
  private readonly readOrder: boolean[];
  /** Prefix directories known to exist: one mkdir per directory, not per chunk. */
  private readonly madeDirs = new Set<string>();

  constructor(
    readonly dir: string,
    opts: LocalStoreOptions = {},
  ) {
    this.location = dir;
    this.uncompressed = opts.uncompressed ?? false;
    this.format = resolveFormat(opts);
    this.level = opts.level ?? DEFAULT_ZSTD_LEVEL;
    this.readOrder = this.uncompressed ? [false, true] : [true, false];
  }

  /** Path of a chunk file in this store (compressed name unless told otherwise). */
  chunkPath(id: Uint8Array | string, compressed = !this.uncompressed): string {
    return join(this.dir, chunkRelativePath(id, compressed));
  }

  async get(req: ChunkRequest, _signal?: AbortSignal, take?: TakeBuffer): Promise<Buffer | null> {
    for (const compressed of this.readOrder) {
      const path = this.chunkPath(req.id, compressed);
      const stored = await this.readStored(path, compressed, req);
      if (stored) return decodeChunk(stored, compressed, req, this.format, path, take);
    }
    return null;
  }

  async has(id: Uint8Array): Promise<boolean> {
    for (const compressed of this.readOrder) {
      if (await isFile(this.chunkPath(id, compressed))) return true;
    }
    return false;
  }

  /**
   * Stores a chunk the caller has already verified against `id`. No-op (false)
   * when either name is present. A failed write removes its temp file and never
   * leaves a partial chunk under the final name.
   */
  async put(id: Uint8Array, data: Uint8Array): Promise<boolean> {
    if (await this.has(id)) return false;
    await this.writeAtomic(this.chunkPath(id), this.uncompressed ? data : compressChunk(data, this.level));
    return true;
  }

  /**
   * Like put(), for bytes already in this store's format (a zstd frame, or raw
   * for an uncompressed store): lets `chop` compress on other threads.
   */
  async putStored(id: Uint8Array, stored: Uint8Array): Promise<boolean> {
    if (await this.has(id)) return false;
    await this.writeAtomic(this.chunkPath(id), stored);
    return true;
  }

  /** Every chunk ID present (either name), in directory order; other files are skipped. */
  async *ids(): AsyncGenerator<string> {
    const prefixes = await readdirOrEmpty(this.dir);
    for (const prefix of prefixes.sort()) {
      if (!PREFIX_DIR.test(prefix)) continue;
      const seen = new Set<string>();
      for (const name of await readdirOrEmpty(join(this.dir, prefix))) {
        const hex = name.endsWith(COMPRESSED_SUFFIX) ? name.slice(0, -COMPRESSED_SUFFIX.length) : name;
        if (isChunkIdHex(hex) && hex.startsWith(prefix) && !seen.has(hex)) {
          seen.add(hex);
          yield hex;
        }
      }
    }
  }

  /** Reads a chunk file, refusing one larger than any valid chunk could be. Missing → null. */
  private async readStored(path: string, compressed: boolean, req: ChunkRequest): Promise<Buffer | null> {
    let fh;
    try {
      fh = await open(path, 'r');
    } catch (err) {
      if (isMissing(err)) return null;
      throw err;
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) return null;
      const limit = sizeLimit(req.size, this.format);
      const maxStored = compressed ? maxEncodedSize(limit) : limit;
      if (st.size > maxStored) {
        throw new ChunkVerifyError(
          toHex(req.id),
          `file is ${st.size} bytes, more than a chunk of at most ${limit} bytes can take`,
          path,
        );
      }
      return await fh.readFile();
    } finally {
      await fh.close();
    }
  }

  private async writeAtomic(path: string, bytes: Uint8Array): Promise<void> {
    const dir = join(path, '..');
    try {
      if (!this.madeDirs.has(dir)) {
        await mkdir(dir, { recursive: true });
        this.madeDirs.add(dir);
      }
      await writeFileAtomic(path, bytes, { durable: false, temp: { prefix: TEMP_PREFIX } });
    } catch (err) {
      // The errno error underneath: said below about the store and the chunk file.
      throw await storeWriteError(err instanceof FileError ? err.cause : err, path, this.dir);
    }
  }
}

async function storeWriteError(err: unknown, path: string, store: string): Promise<unknown> {
  const code = (err as { code?: string }).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new DeltadError('ERR_DELTAD_NO_SPACE', `no space left on device writing chunk ${path}`, { cause: err });
  }
  // Name the store the user gave, not a temp file or prefix directory. The store's
  // directories are made as needed, so ENOENT (from mkdir -p) hides the real cause:
  // ask the nearest directory that exists whether it can be written.
  let cause = err;
  if (code === 'ENOENT') {
    let dir = store;
    while (
      !(await stat(dir).then(
        (st) => st.isDirectory(),
        () => false,
      )) &&
      dirname(dir) !== dir
    )
      dir = dirname(dir);
    cause =
      (await access(dir, constants.W_OK).then(
        () => null,
        (e: unknown) => e,
      )) ?? err;
  }
  const failure = fileError(cause, store, true, 'cannot write chunks');
  if (failure === cause)
    return new DeltadError('ERR_DELTAD_STORE', `cannot write chunk ${path}: ${(err as Error).message}`, { cause: err });
  (failure as Error).message += ` (chunk file ${path})`;
  return failure;
}

function isMissing(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch (err) {
    if (isMissing(err)) return false;
    throw err;
  }
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if (isMissing(err)) return [];
    throw err;
  }
}
