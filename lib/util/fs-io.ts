// File I/O written once: positional reads and writes that loop over short
// transfers, and the atomic replacement of a file. A replaced file is written to
// a fresh temporary name beside it (created with O_EXCL, so a symlink planted at
// that name is never followed), flushed, renamed over the target, and the
// directory flushed too when `durable`, so a crash leaves the old file or the
// new one, never a torn one.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

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
  /** fsync the file before the rename and the directory after it (default true). */
  durable?: boolean;
}

/**
 * Replaces `path` with what `write` puts into a fresh temporary file beside it (`.<name>.<random>.tmp`). On any
 * failure the temporary file is removed and `path` is untouched.
 */
export async function replaceFile(
  path: string,
  write: (fh: FileHandle) => Promise<void>,
  opts: AtomicWriteOptions = {},
): Promise<void> {
  const durable = opts.durable ?? true;
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await open(
    tmp,
    constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
    opts.mode ?? 0o644,
  );
  try {
    await write(fh);
    if (durable) await fh.sync();
    await fh.close();
    await rename(tmp, path);
  } catch (err) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw err;
  }
  if (durable) await syncDir(dirname(path));
}

/** Replaces `path` with `data` atomically (see replaceFile). */
export function writeFileAtomic(path: string, data: Uint8Array | string, opts: AtomicWriteOptions = {}): Promise<void> {
  return replaceFile(path, (fh) => fh.writeFile(data), opts);
}

/** Flushes a directory's entries (a rename into it); file systems that cannot are ignored. */
async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY).catch(() => null);
  if (!fh) return;
  await fh.sync().catch(() => {});
  await fh.close();
}
