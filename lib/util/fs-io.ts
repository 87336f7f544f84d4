// File I/O written once: positional reads and writes that loop over short
// transfers, and the atomic replacement of a file. A replaced file is written to
// a temporary name in the same directory (created with O_EXCL|O_NOFOLLOW, so a
// symlink or file planted at that name is never followed or reused), written
// fully, flushed, renamed over the target, and the directory flushed too when
// `durable`, so a crash leaves the old file or the new one, never a torn one.
// Long-lived temporary files (the extract's partial file) use the two ends on
// their own: createExclusive when they start, renameInto when they are done.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, open, readdir, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fileError, UsageError } from '../errors.js';

/** Reads into `buf[offset, offset+length)` from file position `position` until full or at end of file; returns bytes read. */
export async function readFully(
  fh: FileHandle,
  buf: Uint8Array,
  position: number,
  length = buf.length,
  offset = 0,
): Promise<number> {
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, offset + got, length - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

/** Writes all of `data` at file position `position`. */
export async function writeFully(fh: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) done += (await fh.write(data, done, data.length - done, position + done)).bytesWritten;
}

export interface AtomicWriteOptions {
  /** File mode of the new file (default 0o644). */
  mode?: number;
  /**
   * fsync the file before the rename and the directory after it (default true). Off only where every read checks
   * what it gets (chunk files, caches, the resume journal): a file lost in a crash there costs a fetch, not data.
   */
  durable?: boolean;
  /**
   * The temporary file's name in the target's directory. Default `.<name>.<random>.tmp`, new for every call.
   * `{ prefix }`: that prefix and a random suffix (a store layout whose cleaners know the prefix). A plain name:
   * always that name, for a writer that alone writes this target (it holds a lock); a leftover from a run that
   * died is removed first, so none accumulate.
   */
  temp?: string | { prefix: string };
  /**
   * First remove default-named temporary files in the target's directory that are over an hour old (once per
   * directory and process): a crash between create and rename leaves one behind, and a cache written again and
   * again would collect them.
   */
  sweep?: boolean;
}

/** Default temporary names (`.<name>.<12 hex>.tmp`), and the age from which one is surely a crash's leftover. */
const DEFAULT_TEMP = /^\..+\.[0-9a-f]{12}\.tmp$/;
const STALE_TEMP_MS = 60 * 60 * 1000;
const swept = new Set<string>();

/** Removes the stale default-named temporary files of `dir` (see AtomicWriteOptions.sweep); never throws. */
export async function sweepStaleTemporaries(dir: string, now = Date.now()): Promise<number> {
  let removed = 0;
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!DEFAULT_TEMP.test(name)) continue;
    const path = join(dir, name);
    const st = await lstat(path).catch(() => null);
    if (
      st?.isFile() &&
      now - st.mtimeMs > STALE_TEMP_MS &&
      (await unlink(path).then(
        () => true,
        () => false,
      ))
    )
      removed++;
  }
  return removed;
}

/** Opens a new file at `path` for writing (and reading with `read`), failing if any file or link is there. */
export function createExclusive(path: string, mode = 0o644, read = false): Promise<FileHandle> {
  const access = read ? constants.O_RDWR : constants.O_WRONLY;
  return open(path, access | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
}

/**
 * The last step of an atomic write: renames the complete, already flushed temporary file `tmp` (in the same
 * directory) over `path`, then flushes the directory when `durable`. Failures are FileErrors about `path`.
 */
export async function renameInto(tmp: string, path: string, durable = true): Promise<void> {
  try {
    await rename(tmp, path);
  } catch (err) {
    throw fileError(err, path, true);
  }
  if (durable) await syncDir(dirname(path));
}

/** The temporary path beside `path` that `temp` names (see AtomicWriteOptions.temp). */
function tempPath(path: string, temp: AtomicWriteOptions['temp']): string {
  const name =
    typeof temp === 'string'
      ? temp
      : `${temp?.prefix ?? `.${basename(path)}.`}${randomBytes(6).toString('hex')}${temp ? '' : '.tmp'}`;
  if (name.includes('/') || name === basename(path)) throw new UsageError(`${path}: bad temporary file name ${name}`);
  return join(dirname(path), name);
}

/**
 * Replaces `path` with what `write` puts into a fresh temporary file beside it. On any failure the temporary
 * file is removed and `path` is untouched. Failures of the steps around `write` (create, flush, rename) are
 * FileErrors about `path`, never about the temporary name; what `write` throws is passed on as it is.
 */
export async function replaceFile(
  path: string,
  write: (fh: FileHandle) => Promise<void>,
  opts: AtomicWriteOptions = {},
): Promise<void> {
  const durable = opts.durable ?? true;
  if (opts.sweep && !swept.has(dirname(path))) {
    swept.add(dirname(path));
    await sweepStaleTemporaries(dirname(path));
  }
  const tmp = tempPath(path, opts.temp);
  if (typeof opts.temp === 'string') await unlink(tmp).catch(() => {});
  let fh: FileHandle;
  try {
    fh = await createExclusive(tmp, opts.mode ?? 0o644);
  } catch (err) {
    throw fileError(err, path, true);
  }
  let step = 'write';
  try {
    await write(fh);
    step = 'flush';
    if (durable) await fh.sync();
    await fh.close();
    step = 'rename';
    await renameInto(tmp, path, durable);
  } catch (err) {
    if (step !== 'rename') await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw step === 'write' ? err : fileError(err, path, true);
  }
}

/** Replaces `path` with `data` atomically (see replaceFile); a failure to write it is a FileError about `path`. */
export function writeFileAtomic(path: string, data: Uint8Array | string, opts: AtomicWriteOptions = {}): Promise<void> {
  const bytes = typeof data === 'string' ? Buffer.from(data) : data;
  return replaceFile(
    path,
    (fh) => writeFully(fh, bytes, 0).catch((err: unknown) => Promise.reject(fileError(err, path, true))),
    opts,
  );
}

/** Flushes a directory's entries (a rename into it); file systems that cannot are ignored. */
async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY).catch(() => null);
  if (!fh) return;
  await fh.sync().catch(() => {});
  await fh.close();
}
