// One in-flight assembly per image, shared by every client that asks for it
// while it can still give them the whole image. No image-sized file is
// written: the engine's ordered, verified stream is fanned out from a small
// in-memory buffer that holds the bytes between the slowest client and the
// newest byte, at most MAX_BUFFERED; past that the engine waits for the slowest
// client (and the engine's own reorder window bounds what it holds). A burst of
// clients shares one assembly: the start of the image stays in the buffer for
// JOIN_GRACE_MS, and once a second client has joined, for as long as more keep
// joining (each within JOIN_QUIET_MS of the last) or other requests for the
// image are still on their way (being prepared), at most MAX_HOLD_MS; while
// the start is held, the engine pauses when the buffer is full rather than drop
// byte 0. A single client waits for it only while another request for the
// image is being prepared. A client that arrives once
// byte 0 has left the buffer gets an assembly of its own, which reuses the
// seeds and fetches the rest again. The assembly runs as long
// as anyone wants it: when the last client goes away before the end, its
// fetches are aborted. A client's position is what its socket has taken
// (write callbacks): bytes every client's socket has taken are acknowledged to
// the engine, which reuses their buffers.
import { EventEmitter } from 'node:events';
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { ExtractResult, ExtractStream } from '../lib/delta/extract.js';

/** Bytes kept for the clients of one assembly beyond the slowest one's position. */
export const MAX_BUFFERED = 8 * 1024 * 1024;
/** For this long, and while it fits the buffer, the start of the image is kept for clients arriving in a burst. */
export const JOIN_GRACE_MS = 2_000;
/** With two or more clients, the start is held while each new one arrives within this long of the last one. */
export const JOIN_QUIET_MS = 1_000;
/** The start of the image is held for a burst of clients for at most this long after the assembly began. */
export const MAX_HOLD_MS = 15_000;

export type StartAssembly = (signal: AbortSignal) => Promise<ExtractStream>;

export class SharedAssembly {
  /** Verified bytes received from the engine so far. */
  written = 0;
  /** Every byte is verified and buffered (the engine may still be closing its sources: see `result`). */
  finished = false;
  error: Error | undefined;
  /** True when it was stopped because every client went away (not a failure). */
  cancelled = false;
  /** Resolves with the engine's summary once the whole image is verified. */
  readonly result: Promise<ExtractResult>;
  private readonly events = new EventEmitter();
  private readonly abort = new AbortController();
  /** Positions of the attached clients (bytes each has taken). */
  private readonly positions = new Map<symbol, number>();
  /** Buffered verified bytes [base, written), in order, as the engine gave them. */
  private buffered: Buffer[] = [];
  private base = 0;
  /** Pieces dropped from the front of `buffered` so far (a client's piece k is buffered[k - shifted]). */
  private shifted = 0;
  /** Most bytes held in `buffered` at once (for metrics and tests). */
  peakBuffered = 0;
  private stream: ExtractStream | undefined;

  constructor(
    readonly key: string,
    readonly size: number,
    start: StartAssembly,
    private readonly onDone: (a: SharedAssembly) => void,
    /**
     * An assembly that has produced bytes but then none for this long is ended:
     * its clients fail cleanly instead of hitting curl's 60 s low-speed abort.
     */
    private readonly stallMs: number,
    private readonly maxBuffered = MAX_BUFFERED,
    /** Requests for the same image still being prepared (they will join if the start is still here). */
    private readonly othersArriving: () => number = () => 0,
  ) {
    this.events.setMaxListeners(0);
    this.result = this.run(start);
    this.result.catch(() => {}); // observed through `error` and the readers
  }

  /** A new client can still get the whole image from this assembly. */
  get joinable(): boolean {
    return this.base === 0 && !this.error && !this.disposed && !this.finished;
  }

  private async run(start: StartAssembly): Promise<ExtractResult> {
    try {
      this.stream = await start(this.abort.signal);
      if (this.abort.signal.aborted) throw this.abort.signal.reason;
      this.watchdog = setInterval(() => this.checkStall(), this.stallMs / 3);
      this.watchdog.unref();
      await this.consume(this.stream);
      // The engine's stream ends only once every byte is verified (and the whole-file SHA-256 matched): the clients'
      // downloads end now, not after the engine has closed its seeds and summed up (at times seconds later).
      if (this.written === this.size) {
        this.finished = true;
        this.events.emit('data');
      }
      const result = await this.stream.result;
      if (this.written !== this.size)
        throw new Error(`assembly of ${this.key} produced ${this.written} of ${this.size} bytes`);
      return result;
    } catch (err) {
      this.error = err instanceof Error ? err : new Error(String(err));
      this.stream?.destroy();
      throw this.error;
    } finally {
      clearInterval(this.watchdog);
      this.events.emit('data');
      if (this.positions.size === 0) void this.dispose();
    }
  }

  /** Takes the engine's bytes as they come (flowing: one piece each, never concatenated), pausing while full. */
  private async consume(stream: ExtractStream): Promise<void> {
    const full = (): boolean => this.written - this.keptFrom() > this.maxBuffered && !this.abort.signal.aborted;
    const waitForRoom = async (): Promise<void> => {
      // The engine waits while the slowest client is a full buffer behind, or the buffer is full of a held start.
      while (full()) {
        await this.advanceOrHoldEnd();
        this.trim();
        this.lastByteAt = performance.now(); // waiting for a client is not an engine stall
      }
      stream.resume();
    };
    stream.on('data', (buf: Buffer) => {
      this.buffered.push(buf);
      this.written += buf.length;
      this.peakBuffered = Math.max(this.peakBuffered, this.written - this.base);
      this.lastByteAt = performance.now();
      this.events.emit('data');
      if (full()) {
        stream.pause();
        void waitForRoom();
      }
    });
    await finished(stream);
  }

  /** Position of the slowest attached client (the newest byte when none is attached). */
  private slowest(): number {
    let min = this.written;
    for (const p of this.positions.values()) min = Math.min(min, p);
    return min;
  }

  // A monotonic clock: a wall-clock step (timesyncd) must not make a hold endless or end it early.
  private readonly startedAt = performance.now();
  private joined = 0;
  private lastJoinAt = 0;

  /** Whether byte 0 is kept for clients still arriving (see the top of this file). */
  private holdingStart(): boolean {
    if (this.base !== 0 || this.finished) return false;
    const now = performance.now();
    if (this.written <= this.maxBuffered && now - this.startedAt < JOIN_GRACE_MS) return true;
    if (now - this.startedAt >= MAX_HOLD_MS) return false;
    return this.othersArriving() > 0 || (this.joined >= 2 && now - this.lastJoinAt < JOIN_QUIET_MS);
  }

  /** The first byte the buffer must keep. */
  private keptFrom(): number {
    return this.holdingStart() ? this.base : this.slowest();
  }

  /** Resolves when a client advances, or soon after a held start may have been let go. */
  private advanceOrHoldEnd(): Promise<void> {
    // Only a held start ends by itself (time passes); a slow client's lag ends when it advances.
    const holding = this.holdingStart();
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.events.off('advance', done);
        resolve();
      };
      const timer = holding ? setTimeout(done, 100) : undefined;
      this.events.once('advance', done);
    });
  }

  /** Drops buffered bytes every attached client has taken (keeping the start for a burst of clients, see above). */
  private trim(): void {
    if (this.holdingStart()) return;
    const keep = this.slowest();
    let n = 0;
    while (n < this.buffered.length && this.base + this.buffered[n].length <= keep)
      this.base += this.buffered[n++].length;
    if (n === 0) return;
    this.buffered.splice(0, n);
    this.shifted += n;
    this.stream?.acknowledge(this.base);
  }

  /** Stops the engine: aborts its fetches and ends the stream even if the engine does not react. */
  private cancel(reason: Error): void {
    this.abort.abort(reason);
    this.stream?.destroy(reason);
  }

  private lastByteAt = 0;
  private watchdog: NodeJS.Timeout | undefined;
  private checkStall(): void {
    if (this.lastByteAt > 0 && performance.now() - this.lastByteAt > this.stallMs) {
      this.cancel(new Error(`assembly of ${this.key} stalled: no verified byte for ${this.stallMs / 1000} s`));
    }
  }

  /** Resolves when the first verified byte is available; rejects if the assembly fails first. */
  firstByte(): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.written > 0) resolve();
        else if (this.error) reject(this.error);
        else if (this.finished)
          resolve(); // an empty image
        else return;
        this.events.off('data', check);
      };
      this.events.on('data', check);
      check();
    });
  }

  /**
   * A client of the whole image from byte 0 (only while `joinable`). It holds its share of the buffer until it
   * leaves, or until send() has finished.
   */
  join(): AssemblyClient {
    const me = Symbol('client');
    this.positions.set(me, 0);
    this.joined++;
    this.lastJoinAt = performance.now();
    let left = false;
    const leave = (): void => {
      if (left) return;
      left = true;
      this.positions.delete(me);
      this.trim();
      this.events.emit('advance');
      if (this.positions.size === 0) {
        if (!this.finished && !this.error) {
          this.cancelled = true;
          this.cancel(new Error('every client disconnected'));
        } else void this.dispose();
      }
    };
    const acknowledged = (bytes: number): void => {
      if (left) return;
      this.positions.set(me, bytes);
      this.trim();
      this.events.emit('advance');
    };
    const send = async (out: Writable, onBytes?: (n: number) => void): Promise<void> => {
      // Bytes sent so far, and the number of the next piece to send.
      let sent = 0;
      let piece = 0;
      let failure: Error | undefined;
      let wake: (() => void) | undefined;
      const poke = (): void => {
        const w = wake;
        wake = undefined;
        w?.();
      };
      const onError = (err: Error): void => {
        failure ??= err;
        poke();
      };
      const onClose = (): void => onError(new Error('the client went away'));
      const next = (): Promise<void> => new Promise<void>((r) => (wake = r));
      out.on('error', onError).on('close', onClose).on('drain', poke);
      this.events.on('data', poke);
      try {
        for (;;) {
          if (failure) throw failure;
          if (left) throw new Error('the client left');
          if (out.writableNeedDrain) {
            await next();
            continue;
          }
          if (sent < this.written) {
            // Not trimmed: this client has not acknowledged it yet.
            const bytes = this.buffered[piece++ - this.shifted];
            sent += bytes.length;
            const at = sent;
            onBytes?.(bytes.length);
            out.write(bytes, (err) => {
              if (!err) acknowledged(at);
            });
            continue;
          }
          // A verified image ends cleanly, even when the engine fails afterwards (closing its sources).
          if (this.finished) {
            out.end();
            await finished(out);
            return leave();
          }
          if (this.error) throw this.error;
          await next();
        }
      } catch (err) {
        // Never a wrong or partial image presented as complete: the connection is cut before the share is let go.
        out.destroy();
        leave();
        throw err;
      } finally {
        out.off('error', onError).off('close', onClose).off('drain', poke);
        this.events.off('data', poke);
      }
    };
    return { send, leave };
  }

  /** True once it is released; a disposed assembly is never shared. */
  disposed = false;
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.buffered = [];
    this.onDone(this);
  }
}

/** One client's share of a SharedAssembly. */
export interface AssemblyClient {
  /**
   * Writes the whole image to `out` and ends it, as the bytes are verified, with `onBytes` per write; rejects
   * (with `out` destroyed) if the assembly fails or `out` closes first.
   */
  send(out: Writable, onBytes?: (n: number) => void): Promise<void>;
  /** Gives up the share (a client that went away, or one that takes another path). */
  leave(): void;
}

/** A GET on its way to an assembly of the image at `url` (counted until it joins one or leaves). */
export interface Arrival {
  readonly url: string;
  done(): void;
}

/** The in-flight assemblies, by image version (URL, index digest and expected SHA-256). */
export class AssemblyRegistry {
  private readonly live = new Map<string, SharedAssembly>();
  private readonly arriving = new Map<string, number>();

  constructor(
    private readonly stallMs: number,
    private readonly maxBuffered = MAX_BUFFERED,
  ) {}

  /** Assemblies still running. */
  get active(): SharedAssembly[] {
    return [...this.live.values()].filter((a) => !a.finished);
  }

  /** Notes a request for the image at `url` that is being prepared: a running assembly holds its start for it. */
  arrival(url: string): Arrival {
    this.arriving.set(url, (this.arriving.get(url) ?? 0) + 1);
    let open = true;
    return {
      url,
      done: () => {
        if (!open) return;
        open = false;
        const n = (this.arriving.get(url) ?? 1) - 1;
        if (n > 0) this.arriving.set(url, n);
        else this.arriving.delete(url);
      },
    };
  }

  /**
   * The running assembly of `key` (or else of `sameImage`, another key for the same image) that can still serve a
   * whole image, or a new one under `key` started with `start`. The caller subscribes at once; its `arrival` ends
   * here.
   */
  acquire(
    key: string,
    size: number,
    start: StartAssembly,
    arrival?: Arrival,
    sameImage?: string,
  ): { assembly: SharedAssembly; created: boolean } {
    arrival?.done();
    for (const k of sameImage === undefined ? [key] : [key, sameImage]) {
      const existing = this.live.get(k);
      if (existing?.joinable && existing.size === size) return { assembly: existing, created: false };
    }
    const url = arrival?.url;
    const assembly = new SharedAssembly(
      key,
      size,
      start,
      (a) => {
        if (this.live.get(a.key) === a) this.live.delete(a.key);
      },
      this.stallMs,
      this.maxBuffered,
      () => (url === undefined ? 0 : (this.arriving.get(url) ?? 0)),
    );
    this.live.set(key, assembly);
    return { assembly, created: true };
  }
}
