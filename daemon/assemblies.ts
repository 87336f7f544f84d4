// One in-flight assembly per image, shared by every client that asks for it.
// The assembly writes its ordered, verified bytes to a spool file in the cache
// directory; each client reads the spool at its own pace and waits at its end.
// So a client that joins late still gets the whole image, a slow client does
// not hold buffers in memory, and the assembly runs as long as anyone wants it:
// when the last client goes away before the end, its fetches are aborted.
// A finished, verified spool is kept for KEEP_MS, so a request that arrives
// just after (a retry, a second reader) is served from it without the network.
import { EventEmitter } from 'node:events';
import { open, rm, mkdir, statfs, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { ExtractResult, ExtractStream } from '../lib/delta/extract.js';

const READ_SIZE = 256 * 1024;
export const KEEP_MS = 60_000;

export type StartAssembly = (signal: AbortSignal) => Promise<ExtractStream>;

export class SharedAssembly {
  /** Verified bytes in the spool so far. */
  written = 0;
  finished = false;
  error: Error | undefined;
  /** True when it was stopped because every client went away (not a failure). */
  cancelled = false;
  /** Resolves with the engine's summary once the whole image is verified. */
  readonly result: Promise<ExtractResult>;
  private readonly events = new EventEmitter();
  private readonly abort = new AbortController();
  private readers = 0;
  private fh: FileHandle | undefined;
  private stream: ExtractStream | undefined;

  constructor(
    readonly key: string,
    readonly size: number,
    private readonly spoolPath: string,
    start: StartAssembly,
    private readonly onDone: (a: SharedAssembly) => void,
    /**
     * An assembly that has produced bytes but then none for this long is ended:
     * its clients fail cleanly instead of hitting curl's 60 s low-speed abort.
     */
    private readonly stallMs: number,
  ) {
    this.events.setMaxListeners(0);
    this.result = this.run(start);
    this.result.catch(() => {}); // observed through `error` and the readers
  }

  private async run(start: StartAssembly): Promise<ExtractResult> {
    try {
      this.fh = await open(this.spoolPath, 'wx+', 0o600);
      this.stream = await start(this.abort.signal);
      if (this.abort.signal.aborted) throw this.abort.signal.reason;
      this.watchdog = setInterval(() => this.checkStall(), this.stallMs / 3);
      this.watchdog.unref();
      for await (const chunk of this.stream) {
        const buf = chunk as Buffer;
        let off = 0;
        while (off < buf.length) {
          const { bytesWritten } = await this.fh.write(buf, off, buf.length - off, this.written);
          off += bytesWritten;
          this.written += bytesWritten;
        }
        this.lastByteAt = Date.now();
        this.events.emit('data');
      }
      const result = await this.stream.result;
      if (this.written !== this.size) throw new Error(`assembly of ${this.key} produced ${this.written} of ${this.size} bytes`);
      this.finished = true;
      return result;
    } catch (err) {
      this.error = err instanceof Error ? err : new Error(String(err));
      this.stream?.destroy();
      throw this.error;
    } finally {
      clearInterval(this.watchdog);
      this.events.emit('data');
      if (this.readers === 0) this.idle();
    }
  }

  /** Stops the engine: aborts its fetches and ends the stream even if the engine does not react. */
  private cancel(reason: Error): void {
    this.abort.abort(reason);
    this.stream?.destroy(reason);
  }

  private lastByteAt = 0;
  private watchdog: NodeJS.Timeout | undefined;
  private checkStall(): void {
    if (this.lastByteAt > 0 && Date.now() - this.lastByteAt > this.stallMs) {
      this.cancel(new Error(`assembly of ${this.key} stalled: no verified byte for ${this.stallMs / 1000} s`));
    }
  }

  /** Resolves when the first verified byte is available; rejects if the assembly fails first. */
  firstByte(): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.written > 0) resolve();
        else if (this.error) reject(this.error);
        else if (this.finished) resolve(); // an empty image
        else return;
        this.events.off('data', check);
      };
      this.events.on('data', check);
      check();
    });
  }

  /** A reader of the whole image from byte 0. Destroying it releases its share of the assembly. */
  subscribe(): Readable {
    this.readers++;
    clearTimeout(this.keepTimer);
    let pos = 0;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.readers--;
      if (this.readers === 0) {
        if (!this.finished && !this.error) {
          this.cancelled = true;
          this.cancel(new Error('every client disconnected'));
        } else this.idle();
      }
    };
    let reading = false;
    const readable: Readable = new Readable({
      highWaterMark: READ_SIZE,
      read: () => {
        if (reading) return;
        reading = true;
        pump()
          .catch((err: Error) => readable.destroy(err))
          .finally(() => (reading = false));
      },
      destroy: (err, cb) => {
        release();
        cb(err);
      },
    });
    const pump = async (): Promise<void> => {
      for (;;) {
        if (readable.destroyed) return;
        if (pos < this.written && this.fh) {
          const buf = Buffer.allocUnsafe(Math.min(READ_SIZE, this.written - pos));
          const { bytesRead } = await this.fh.read(buf, 0, buf.length, pos);
          if (readable.destroyed) return;
          pos += bytesRead;
          if (!readable.push(buf.subarray(0, bytesRead))) return;
          continue;
        }
        if (this.error) return void readable.destroy(this.error);
        if (this.finished) {
          readable.push(null);
          return release();
        }
        await new Promise<void>((r) => this.events.once('data', r));
      }
    };
    return readable;
  }

  private keepTimer: NodeJS.Timeout | undefined;
  /** No readers left: a verified spool stays shareable for a while, anything else goes now. */
  private idle(): void {
    if (!this.finished) return void this.dispose();
    this.keepTimer = setTimeout(() => void this.dispose(), KEEP_MS);
    this.keepTimer.unref();
  }

  /** True once the spool is gone; a disposed assembly is never shared. */
  disposed = false;
  async dispose(): Promise<void> {
    clearTimeout(this.keepTimer);
    if (this.disposed) return;
    this.disposed = true;
    this.onDone(this);
    await this.fh?.close().catch(() => {});
    await rm(this.spoolPath, { force: true });
  }
}

/** The in-flight (and recently finished) assemblies, by image version (URL and index digest). */
export class AssemblyRegistry {
  private readonly live = new Map<string, SharedAssembly>();
  private seq = 0;

  constructor(
    private readonly spoolDir: string,
    private readonly stallMs: number,
  ) {}

  /** Removes spool files left by a previous process (never shared across processes). */
  async init(): Promise<void> {
    await rm(this.spoolDir, { recursive: true, force: true });
    await mkdir(this.spoolDir, { recursive: true, mode: 0o700 });
  }

  /** Assemblies still running (finished ones kept for sharing are not counted). */
  get active(): SharedAssembly[] {
    return [...this.live.values()].filter((a) => !a.finished);
  }

  /** Drops every kept spool (on shutdown). */
  async close(): Promise<void> {
    await Promise.all([...this.live.values()].filter((a) => a.finished).map((a) => a.dispose()));
  }

  /** Whether acquire() would share a running assembly (and so write no new spool file). */
  joinable(key: string, size: number): boolean {
    const existing = this.live.get(key);
    return Boolean(existing && !existing.error && !existing.disposed && existing.size === size);
  }

  /** Free bytes where spool files go. */
  async freeBytes(): Promise<number> {
    const fs = await statfs(this.spoolDir);
    return fs.bavail * fs.bsize;
  }

  /** The running, not failed assembly of `key`, or a new one started with `start`. */
  acquire(key: string, size: number, start: StartAssembly): { assembly: SharedAssembly; created: boolean } {
    const existing = this.live.get(key);
    if (this.joinable(key, size)) return { assembly: existing!, created: false };
    const name = `${createHash('sha256').update(key).digest('hex').slice(0, 16)}-${process.pid}-${++this.seq}.spool`;
    const assembly = new SharedAssembly(key, size, join(this.spoolDir, name), start, (a) => {
      if (this.live.get(a.key) === a) this.live.delete(a.key);
    }, this.stallMs);
    this.live.set(key, assembly);
    return { assembly, created: true };
  }
}
