// The assembled target as a readable byte stream: verified chunks arrive in
// any order, the stream emits the contiguous prefix as it grows. Memory is
// bounded by a reorder window: work on bytes beyond (emitted + window) is not
// admitted until the consumer has read enough (backpressure); with an
// acknowledging consumer, beyond (acknowledged + window). The SHA-256 of
// the emitted bytes is computed on the fly; with an expected digest, the final
// chunk is held back until the whole-file digest matches. A consumer that
// says which emitted bytes it is done with (acknowledge) lets the producers
// reuse their buffers; otherwise emitted buffers are left to the GC.
import { createHash, type Hash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { ChunkIndex } from '../format/caibx.js';
import { ChecksumMismatchError, OriginError } from '../errors.js';
import type { AssemblySink } from './sink.js';

export interface OrderedStreamOptions {
  /**
   * The target's index, or only its first chunks while the rest is on its way (then `end` is the whole target's
   * size, and grow() hands over the whole index): the stream never ends before its index covers `end`.
   */
  target: ChunkIndex;
  /** Target bytes [start, end) to emit. */
  start: number;
  end: number;
  windowBytes: number;
  /** Expected SHA-256 of the whole target (only checked when the stream covers all of it). */
  sha256?: string;
  /** Called when the consumer destroys the stream early. */
  onCancel: (reason: Error) => void;
  /**
   * The consumer calls acknowledge() with the bytes it is done with (written to every socket): only then are the
   * producers' buffers handed back through put()'s `release`. Without it they are never handed back.
   */
  acknowledged?: boolean;
}

/** What put() left for one chunk: its bytes, and the release shared by every chunk of that put. */
interface Piece {
  data: Buffer;
  share?: Share;
}

/** One put()'s release, run when the last of its chunks is acknowledged or dropped unemitted. */
interface Share {
  refs: number;
  release: () => void;
}

export class OrderedStream extends Readable implements AssemblySink {
  readonly zeroFilled = false;
  readonly retainRepeats = true;
  readonly holdsData = true;
  private target: ChunkIndex;
  /** The target index is only its first chunks so far (see grow()). */
  private partial: boolean;
  private readonly pending = new Map<number, Piece>();
  /** Emitted bytes not yet acknowledged: the stream offset where each ends, and its put's release. */
  private readonly unacknowledged: { end: number; share: Share }[] = [];
  private emittedBytes = 0;
  private acknowledgedBytes = 0;
  private next: number;
  private endChunk: number;
  private readonly hash: Hash = createHash('sha256');
  private digestHex?: string;
  private wantMore = true;
  private waiters: { end: number; first: number; resolve: () => void }[] = [];
  private settle!: { resolve: () => void; reject: (err: Error) => void };
  /** Resolves when the last byte has been emitted; rejects when the stream is destroyed first. */
  readonly complete = new Promise<void>((resolve, reject) => (this.settle = { resolve, reject }));

  constructor(private readonly opts: OrderedStreamOptions) {
    super({ highWaterMark: 1024 * 1024 });
    this.complete.catch(() => {});
    this.target = opts.target;
    this.partial = opts.target.size < opts.end;
    if (this.partial && opts.start !== 0) throw new Error('OrderedStream: a partial index streams from the start');
    this.next = opts.end > opts.start && !this.partial ? opts.target.chunkAt(opts.start) : 0;
    this.endChunk = this.partial
      ? opts.target.count
      : opts.end > opts.start
        ? opts.target.chunkAt(opts.end - 1) + 1
        : 0;
    if (this.endChunk === 0 && !this.partial) queueMicrotask(() => this.finishStream());
  }

  /**
   * The whole target index, after the stream began with its first chunks: it must start with exactly those chunks
   * (what went out was verified against them) and describe `end` bytes, else the stream fails with that error (and
   * so never ends looking complete).
   */
  grow(whole: ChunkIndex): void {
    if (!this.partial || this.destroyed) return;
    let why: string | undefined;
    if (whole.size !== this.opts.end)
      why = `the index describes ${whole.size} bytes, the stream was announced with ${this.opts.end}`;
    else if (!whole.startsWith(this.target))
      why = 'the whole index does not start with the chunks streamed from its first part';
    if (why) {
      const err = new OriginError(`the target index changed while it was read: ${why}`);
      this.destroy(err);
      throw err;
    }
    this.target = whole;
    this.partial = false;
    this.endChunk = whole.chunkAt(this.opts.end - 1) + 1;
    this.pump();
  }

  /** Hex SHA-256 of all bytes emitted, once the stream has ended. */
  get sha256(): string | undefined {
    return this.digestHex;
  }

  /** Offset of the first byte not yet emitted. */
  private get emitted(): number {
    if (this.next < this.endChunk) return this.target.start(this.next);
    return this.partial ? this.target.size : this.opts.end;
  }

  /**
   * Where the window starts: the first byte not emitted, or with an acknowledging consumer the first not
   * acknowledged (what the consumer still holds counts against the window too).
   */
  private get windowStart(): number {
    return this.opts.acknowledged ? this.opts.start + this.acknowledgedBytes : this.emitted;
  }

  admit(_start: number, end: number, first: number): Promise<void> | void {
    if (first <= this.next || end - this.windowStart <= this.opts.windowBytes) return;
    return new Promise((resolve) => this.waiters.push({ end, first, resolve }));
  }

  /** `release` runs once the stream no longer needs `data` (see `acknowledged`); it may never run. */
  put(first: number, count: number, data: Buffer, release?: () => void): void {
    if (this.destroyed) return release?.();
    const base = this.target.start(first);
    const share = release ? { refs: 1, release } : undefined;
    for (let i = first; i < first + count; i++) {
      if (i < this.next || i >= this.endChunk) continue;
      this.unref(this.pending.get(i)?.share); // a chunk put twice: the first copy is dropped unread
      const piece = count === 1 ? data : data.subarray(this.target.start(i) - base, this.target.end(i) - base);
      this.pending.set(i, { data: piece, share });
      if (share) share.refs++;
    }
    this.unref(share);
    this.pump();
  }

  /** The consumer is done with the first `bytes` bytes of the stream: their buffers may be reused. */
  acknowledge(bytes: number): void {
    this.acknowledgedBytes = Math.max(this.acknowledgedBytes, bytes);
    this.wake();
    const q = this.unacknowledged;
    let n = 0;
    while (n < q.length && q[n].end <= bytes) this.unref(q[n++].share);
    if (n > 0) q.splice(0, n);
  }

  private unref(share: Share | undefined): void {
    if (share && --share.refs === 0) share.release();
  }

  has(i: number): boolean {
    return i < this.next || (i >= this.endChunk && !this.partial) || this.pending.has(i);
  }

  async readBack(): Promise<Buffer | null> {
    return null;
  }

  override _read(): void {
    this.wantMore = true;
    this.pump();
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    if (this.next < this.endChunk || this.partial || err) {
      const reason = err ?? new Error('stream closed before the end');
      this.opts.onCancel(reason);
      this.settle.reject(reason);
    }
    // Pieces never emitted are nobody's; emitted ones may still be in a socket's queue: they wait for acknowledge().
    for (const piece of this.pending.values()) this.unref(piece.share);
    this.pending.clear();
    for (const w of this.waiters.splice(0)) w.resolve();
    cb(err);
  }

  private pump(): void {
    while (this.wantMore && !this.destroyed && this.pending.has(this.next)) {
      // Consecutive chunks that lie side by side in one buffer go out as one piece (a seed run is one read).
      const head = this.takePiece(this.next++);
      const { buffer, byteOffset } = head.data;
      let length = head.data.length;
      const shares = head.share ? [head.share] : [];
      while (this.next < this.endChunk - 1 && this.pending.has(this.next)) {
        const more = this.pending.get(this.next)!;
        if (more.data.buffer !== buffer || more.data.byteOffset !== byteOffset + length) break;
        length += more.data.length;
        if (more.share && more.share !== shares.at(-1)) shares.push(more.share);
        else if (more.share) this.unref(more.share); // one reference per share is enough for the merged piece
        this.takePiece(this.next++);
      }
      // One view of the merged piece, not one per chunk merged.
      const data = length === head.data.length ? head.data : Buffer.from(buffer, byteOffset, length);
      this.hash.update(data);
      const last = this.next === this.endChunk && !this.partial;
      if (last && !this.checkDigest()) {
        for (const sh of shares) this.unref(sh); // never emitted: nobody holds these bytes
        return;
      }
      this.emittedBytes += data.length;
      if (this.opts.acknowledged)
        for (const sh of shares) this.unacknowledged.push({ end: this.emittedBytes, share: sh });
      this.wantMore = this.push(data);
      if (last) this.finishStream();
    }
    this.wake();
  }

  /** Removes chunk i's piece, cut to the stream's range. */
  private takePiece(i: number): Piece {
    const piece = this.pending.get(i)!;
    this.pending.delete(i);
    const cs = this.target.start(i);
    if (cs < this.opts.start || this.target.end(i) > this.opts.end) {
      const d = piece.data;
      piece.data = d.subarray(Math.max(0, this.opts.start - cs), Math.min(d.length, this.opts.end - cs));
    }
    return piece;
  }

  /** With an expected digest over the whole target: false (and the stream destroyed) on mismatch. */
  private checkDigest(): boolean {
    this.digestHex = this.hash.digest('hex');
    const want = this.opts.sha256?.toLowerCase();
    if (!want || this.opts.start !== 0 || this.opts.end !== this.target.size || want === this.digestHex) return true;
    this.destroy(new ChecksumMismatchError(want, this.digestHex, 'assembled stream'));
    return false;
  }

  private finishStream(): void {
    if (this.digestHex === undefined) this.digestHex = this.hash.digest('hex');
    this.push(null);
    this.settle.resolve();
  }

  private wake(): void {
    if (this.waiters.length === 0) return;
    const from = this.windowStart;
    this.waiters = this.waiters.filter((w) => {
      if (w.first <= this.next || w.end - from <= this.opts.windowBytes) {
        w.resolve();
        return false;
      }
      return true;
    });
  }
}
