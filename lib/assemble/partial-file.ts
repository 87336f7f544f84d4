// The file an extract writes: `.<out>.deltad-partial` beside the output,
// preallocated to the target size, written with positioned writes, renamed
// over the output only when complete and verified. A small journal (a bitmap
// of written chunks, tied to the target index) survives an interruption, so
// the next run verifies the journaled chunks in place (lib/assemble/resume.ts)
// and assembles only the rest, on whichever route.
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, open, readFile, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { ChunkIndex } from '../format/caibx.js';
import { ChecksumMismatchError, FileError, OutputReplacedError, UsageError, fileError } from '../errors.js';
import { formatBytes } from '../util/size.js';
import { freeNow } from '../util/buffer-pool.js';
import { freeBytes } from '../util/disk.js';
import { createExclusive, readFully, renameInto, writeFileAtomic, writeFully } from '../util/fs-io.js';
import { OutputLock } from './output-lock.js';
import type { AssemblySink } from './sink.js';

const JOURNAL_MAGIC = Buffer.from('DELTADJ1');
const JOURNAL_FLUSH_MS = 1000;

/** Identity of a target index: a journal only applies to the index it was written for. */
function indexDigest(index: ChunkIndex): Buffer {
  const h = createHash('sha256');
  h.update(`${index.featureFlags}:${index.params.min}:${index.params.max}:${index.params.avg}:`);
  h.update(new Uint8Array(index.ends.buffer, index.ends.byteOffset, index.ends.byteLength));
  h.update(index.ids);
  return h.digest();
}

export function partialPaths(out: string): { out: string; partial: string; journal: string; lock: string } {
  const abs = resolve(out);
  const partial = join(dirname(abs), `.${basename(abs)}.deltad-partial`);
  return {
    out: abs,
    partial,
    journal: `${partial}.journal`,
    lock: join(dirname(abs), `.${basename(abs)}.deltad-lock`),
  };
}

/**
 * Before the partial file is sized: the file system must have room for the bytes not yet in it (a resumed file
 * already holds some; a fresh one leaves `holes` bytes unwritten), said in words rather than as an ENOSPC half-way.
 */
async function checkRoom(
  paths: ReturnType<typeof partialPaths>,
  fh: FileHandle,
  size: number,
  holes: number,
): Promise<void> {
  const dir = dirname(paths.partial);
  const free = await freeBytes(dir);
  const held = (await fh.stat()).blocks * 512;
  const need = size - holes - held;
  if (need > free) {
    const already = held ? `, ${formatBytes(held)} of it already in ${paths.partial}` : '';
    const sparse = holes ? ` (${formatBytes(size - holes)} written, its zero chunks left as holes)` : '';
    throw new FileError(
      paths.out,
      `the image needs ${formatBytes(size)} (${size} bytes)${sparse}${already}, but ${dir} has only ` +
        `${formatBytes(free)} free; free ${formatBytes(need - free)} or write it elsewhere`,
      'ENOSPC',
    );
  }
}

/** What a failed extract left for the next run. */
export interface KeptPartial {
  path: string;
  journal: string;
  /** Verified bytes it holds (per its journal), of `total`. */
  bytes: number;
  total: number;
}

export class PartialFile implements AssemblySink {
  readonly retainRepeats = false;
  readonly holdsData = false;
  private dirty = false;
  /** The bitmap the journal on disk holds (a resumed run starts with the one it read). */
  private journaled?: Uint8Array;
  private timer?: NodeJS.Timeout;
  private closed = false;
  private flushing: Promise<void> = Promise.resolve();

  private constructor(
    readonly paths: ReturnType<typeof partialPaths>,
    private readonly fh: FileHandle,
    private readonly target: ChunkIndex,
    private readonly digest: Buffer,
    private readonly done: Uint8Array,
    readonly zeroFilled: boolean,
    /** True when an earlier run's journal was taken over: its chunks still need verifying. */
    readonly resumed: boolean,
    /** Held from open until the rename (or until the file is given up): one writer per output. */
    private readonly lock: OutputLock,
    /** The partial file's inode, checked again right before the rename. */
    private readonly identity: { dev: number; ino: number },
  ) {
    this.timer = setInterval(() => void this.flushJournal().catch(() => {}), JOURNAL_FLUSH_MS);
    this.timer.unref();
  }

  /**
   * Opens the partial file for `out`. With resume, a partial file and journal
   * from an earlier run for the same target are kept: the chunks the journal
   * lists count as written (`has`) until verifyResumed says otherwise. `holes`: bytes a fresh (sparse) file
   * leaves unwritten, for the free-space check.
   */
  static async open(out: string, target: ChunkIndex, resume: boolean, holes = 0): Promise<{ file: PartialFile }> {
    const paths = partialPaths(out);
    const outSt = await lstat(paths.out).catch(() => null);
    if (outSt && !outSt.isFile()) throw new UsageError(`${paths.out}: exists and is not a regular file`);
    // Before anything beside the output is touched: a second run must not unlink or write the first one's partial file.
    const lock = await OutputLock.acquire(paths.lock, paths.out).catch((err: unknown) =>
      Promise.reject(fileError(err, paths.out, true)),
    );
    try {
      return await PartialFile.openLocked(paths, target, resume, lock, holes);
    } catch (err) {
      await lock.release();
      throw err;
    }
  }

  private static async openLocked(
    paths: ReturnType<typeof partialPaths>,
    target: ChunkIndex,
    resume: boolean,
    lock: OutputLock,
    holes: number,
  ): Promise<{ file: PartialFile }> {
    const out = paths.out;
    const digest = indexDigest(target);
    const bitmapBytes = Math.ceil(target.count / 8);
    let done: Uint8Array | null = null;
    if (resume) {
      const j = await readFile(paths.journal).catch(() => null);
      const st = await lstat(paths.partial).catch(() => null);
      if (
        j &&
        st?.isFile() &&
        st.size === target.size &&
        j.length === 8 + 32 + bitmapBytes &&
        j.subarray(0, 8).equals(JOURNAL_MAGIC) &&
        j.subarray(8, 40).equals(digest)
      ) {
        done = new Uint8Array(j.subarray(40));
      }
    }
    // Never written through a link: a resumed file must be ours alone, a fresh one is created anew (not truncated in place).
    let fh = done ? await open(paths.partial, constants.O_RDWR | constants.O_NOFOLLOW) : undefined;
    if (fh && (await fh.stat()).nlink !== 1) {
      await fh.close();
      fh = undefined;
      done = null;
    }
    if (!fh) {
      await unlink(paths.partial).catch(() => {});
      // Errors name the output the user gave, not the hidden partial file.
      try {
        fh = await createExclusive(paths.partial, 0o600, true);
      } catch (err) {
        throw fileError(err, out, true);
      }
    }
    try {
      await checkRoom(paths, fh, target.size, done ? 0 : holes);
      if (!done) await fh.truncate(target.size).catch((err: unknown) => Promise.reject(fileError(err, out, true)));
      const st = await fh.stat();
      const file = new PartialFile(
        paths,
        fh,
        target,
        digest,
        done ?? new Uint8Array(bitmapBytes),
        !done,
        done !== null,
        lock,
        st,
      );
      if (done) file.journaled = new Uint8Array(done);
      return { file };
    } catch (err) {
      await fh.close();
      // A file this run just created holds nothing: it goes (a resumed one stays for the next run).
      if (!done) await unlink(paths.partial).catch(() => {});
      throw err;
    }
  }

  async put(first: number, count: number, data: Buffer): Promise<void> {
    const pos = this.target.start(first);
    await writeFully(this.fh, data, pos).catch((err: unknown) => {
      throw fileError(
        err,
        this.paths.out,
        true,
        `cannot write ${data.length} bytes at offset ${pos} of ${this.paths.partial}`,
      );
    });
    for (let i = first; i < first + count; i++) this.done[i >> 3] |= 1 << (i & 7);
    this.dirty = true;
  }

  /** True when target chunk i is in the file (written by this run, or journaled by an earlier one). */
  has(i: number): boolean {
    return (this.done[i >> 3] & (1 << (i & 7))) !== 0;
  }

  /** Marks chunk i as not written (a journaled chunk that did not verify). */
  forget(i: number): void {
    this.done[i >> 3] &= ~(1 << (i & 7));
    this.dirty = true;
  }

  /** Reads file bytes [start, start + into.length) into `into`; returns the bytes read. */
  read(into: Buffer, start: number): Promise<number> {
    return readFully(this.fh, into, start);
  }

  async readBack(i: number): Promise<Buffer | null> {
    const size = this.target.chunkSize(i);
    const buf = Buffer.allocUnsafe(size);
    return (await readFully(this.fh, buf, this.target.start(i))) === size ? buf : null;
  }

  /** Writes the journal atomically when chunks were written since the last flush. */
  flushJournal(): Promise<void> {
    // Serialized: the timer and a final flush must not interleave their temp files.
    this.flushing = this.flushing
      .catch(() => {})
      .then(async () => {
        if (!this.dirty || this.closed) return;
        this.dirty = false;
        const done = new Uint8Array(this.done);
        // Its fixed temp name is ours alone (the output lock); not flushed: resume verifies every journaled chunk.
        const temp = `${basename(this.paths.journal)}.tmp`;
        try {
          await writeFileAtomic(this.paths.journal, Buffer.concat([JOURNAL_MAGIC, this.digest, done]), {
            mode: 0o600,
            durable: false,
            temp,
          });
        } catch (err) {
          // No stray temp file is left (a full disk fails the write after creating it); the previous journal holds.
          this.dirty = true;
          throw err;
        }
        this.journaled = done;
      });
    return this.flushing;
  }

  /** SHA-256 of the whole partial file (read sequentially). */
  async sha256(): Promise<string> {
    const h = createHash('sha256');
    // 1 MiB reads keep up with the hash; the buffer is freed at once (it would wait for a full collection).
    const buf = Buffer.allocUnsafeSlow(1024 * 1024);
    try {
      for (let pos = 0; pos < this.target.size; ) {
        const got = await readFully(this.fh, buf, pos, Math.min(buf.length, this.target.size - pos));
        if (got === 0) break;
        h.update(buf.subarray(0, got));
        pos += got;
      }
    } finally {
      freeNow(buf);
    }
    return h.digest('hex');
  }

  /**
   * Every chunk is verified: checks the whole-file SHA-256 when expected,
   * syncs, and renames over the output. Returns the SHA-256 when computed.
   */
  async commit(fileMode: number, expectSha256?: string): Promise<string | undefined> {
    let sum: string | undefined;
    if (expectSha256) {
      sum = await this.sha256();
      if (sum !== expectSha256.toLowerCase()) {
        // The chunks matched the index, so the index itself disagrees with the checksum: nothing here is reusable.
        await this.discard();
        throw new ChecksumMismatchError(expectSha256, sum, this.paths.out);
      }
    }
    try {
      await this.fh.chmod(fileMode);
      await this.fh.sync();
      await this.close();
    } catch (err) {
      throw fileError(err, this.paths.out, true);
    }
    // The rename goes by path: it must still name the file that was verified, and this run must still own the output.
    const st = await lstat(this.paths.partial).catch(() => null);
    if (!st || st.dev !== this.identity.dev || st.ino !== this.identity.ino) {
      await this.lock.release();
      throw new OutputReplacedError(
        this.paths.out,
        `${this.paths.partial} is no longer the file this run wrote and verified`,
      );
    }
    try {
      await this.lock.assertHeld();
      // The last step of the atomic write this file began as (createExclusive), with the directory flushed.
      await renameInto(this.paths.partial, this.paths.out);
      await unlink(this.paths.journal).catch(() => {});
    } finally {
      await this.lock.release();
    }
    return sum;
  }

  /**
   * After a failure: keeps the partial file and its journal for the next run, and says what they hold. Without
   * any journal on disk (none could be written: disk full) nothing in it is reusable, so it is removed (undefined).
   */
  async keep(): Promise<KeptPartial | undefined> {
    await this.flushJournal().catch(() => {});
    await this.close();
    const journal = this.journaled;
    if (!journal?.some((b) => b !== 0)) {
      await unlink(this.paths.partial).catch(() => {});
      await unlink(this.paths.journal).catch(() => {});
      await this.lock.release();
      return undefined;
    }
    let bytes = 0;
    for (let i = 0; i < this.target.count; i++) if (journal[i >> 3] & (1 << (i & 7))) bytes += this.target.chunkSize(i);
    await this.lock.release();
    return { path: this.paths.partial, journal: this.paths.journal, bytes, total: this.target.size };
  }

  async discard(): Promise<void> {
    await this.close();
    await unlink(this.paths.partial).catch(() => {});
    await unlink(this.paths.journal).catch(() => {});
    await this.lock.release();
  }

  private async close(): Promise<void> {
    if (this.closed) return;
    clearInterval(this.timer);
    this.closed = true;
    await this.fh.close();
  }
}
