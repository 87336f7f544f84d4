// Reusable buffers for chunks and seed reads. A fresh buffer per chunk is
// garbage once written or sent, and V8 collects such external memory late
// (tens of MiB behind), which showed as peak RSS. Buffers are carved from
// 2 MiB slabs, one after the other (chunks taken in a row lie side by side,
// and a stream sends them as one piece); a slab is reused once every buffer
// carved from it has been handed back. Requests of half a slab and more get
// a slab of their own, larger ones a plain buffer that is not pooled. (A slab
// per range response was tried: 2 MiB per response in flight, 4-15 MiB more.)
// A slab that comes back beyond what the pool keeps is freed at once (detached):
// left to the collector it was garbage that waited for a full collection, which
// made it worth keeping every slab a burst had needed for the rest of the update
// (36 MiB of slabs for a stream's 16 MiB window on the 4 GiB pair, most idle).
// A shared pool's slabs are SharedArrayBuffers: a hashing thread reads its
// buffers in place (lib/util/hash-thread.ts), and keeps every slab it was
// shown, so a shared pool keeps all its slabs too (as many as were out at
// once: what the peak holds anyway); a slab let go here would live on there.
// They cannot be detached (freeNow leaves them alone) nor transferred.

export const SLAB_BYTES = 2 * 1024 * 1024;
/** From this size on, a request gets a slab of its own. */
const OWN_SLAB_BYTES = SLAB_BYTES / 2;

interface Slab {
  readonly ab: ArrayBufferLike;
  /**
   * Where the buffers taken from it and not handed back start: a hand-back of a buffer not out (a second one, or
   * one late after the slab was reused) is ignored, never counted against the buffers still out.
   */
  readonly out: Set<number>;
  /** The slab new small buffers are cut from (it is not reused while it is). */
  cutting: boolean;
}

export class BufferPool {
  private readonly free: ArrayBufferLike[] = [];
  private readonly slabs = new WeakMap<ArrayBufferLike, Slab>();
  /** The slab small buffers are cut from, and how much of it is cut. */
  private cutting: Slab | undefined;
  private cut = 0;

  /**
   * @param maxPooledBytes bytes of unused slabs kept for reuse at most (beyond that, they are freed at once).
   * @param shared slabs in shared memory, all kept for reuse (buffers larger than a slab are plain ones still).
   */
  constructor(
    private maxPooledBytes = 4 * 1024 * 1024,
    private readonly shared = false,
  ) {}

  /** Its slabs are SharedArrayBuffers (a hashing thread can read its buffers in place). */
  get isShared(): boolean {
    return this.shared;
  }

  take(size: number): Buffer {
    if (size === 0 || size > SLAB_BYTES) return Buffer.allocUnsafeSlow(size);
    if (size < OWN_SLAB_BYTES) return this.cutSmall(size);
    const slab = this.slab();
    slab.out.add(0);
    return Buffer.from(slab.ab, 0, size);
  }

  /**
   * `data` in a buffer of the pool: `data` itself when it is one already (a store decoded into it) or too large to
   * pool, else a copy.
   */
  adopt(data: Buffer): Buffer {
    if (data.length > SLAB_BYTES || this.slabs.has(data.buffer as ArrayBuffer)) return data;
    const buf = this.take(data.length);
    buf.set(data);
    return buf;
  }

  /** A small buffer cut after the last one; a full slab is let go (reused once all of it is back). */
  private cutSmall(size: number): Buffer {
    if (!this.cutting || this.cut + size > SLAB_BYTES) {
      const done = this.cutting;
      this.cutting = this.slab();
      this.cutting.cutting = true;
      this.cut = 0;
      if (done) {
        done.cutting = false;
        if (done.out.size === 0) this.recycle(done);
      }
    }
    this.cutting.out.add(this.cut);
    const buf = Buffer.from(this.cutting.ab, this.cut, size);
    this.cut += size;
    return buf;
  }

  /** Hands a buffer back, once; the caller must not touch it afterwards. Buffers this pool did not make are ignored. */
  give(buf: Uint8Array): void {
    const slab = this.slabs.get(buf.buffer);
    if (!slab?.out.delete(buf.byteOffset)) return;
    if (slab.out.size === 0 && !slab.cutting) this.recycle(slab);
  }

  /**
   * Frees the unused slabs now (detached, not left to the collector) and keeps none from here on. For the end of a
   * run, once every buffer handed back is no longer touched; buffers still out are left alone.
   */
  release(): void {
    this.maxPooledBytes = 0;
    for (const ab of this.free.splice(0)) freeNow(new Uint8Array(ab));
  }

  private slab(): Slab {
    const ab = this.free.pop() ?? (this.shared ? new SharedArrayBuffer(SLAB_BYTES) : new ArrayBuffer(SLAB_BYTES));
    let slab = this.slabs.get(ab);
    if (!slab) {
      slab = { ab, out: new Set(), cutting: false };
      this.slabs.set(ab, slab);
    }
    return slab;
  }

  /** A slab all of whose buffers are back: kept for reuse, or freed now (nothing of it is in use any more). */
  private recycle(slab: Slab): void {
    if (this.shared || (this.free.length + 1) * SLAB_BYTES <= this.maxPooledBytes) this.free.push(slab.ab);
    else freeNow(new Uint8Array(slab.ab));
  }
}

/**
 * One buffer shared by several holders (the slices a sink keeps of it, and its producer): `done` runs once, when
 * the last of them lets go (then the buffer can be reused).
 */
export class SharedBuffer {
  private refs = 1;

  /** @param done called when the creator's reference and every hold() are released. */
  constructor(private readonly done: () => void) {}

  /** A further holder: its release function (calling it twice counts once). */
  hold(): () => void {
    this.refs++;
    let held = true;
    return () => {
      if (held) {
        held = false;
        this.drop();
      }
    };
  }

  /** Releases the creator's reference. */
  drop(): void {
    if (--this.refs === 0) this.done();
  }
}

/** Smaller buffers are left to the collector by freeNow (not worth a detach). */
const FREE_NOW_MIN_BYTES = 16 * 1024;

/**
 * Frees a large buffer's memory now (detaches it) instead of at V8's next full collection, which comes only
 * after tens of MiB of such garbage. For a view that covers its whole ArrayBuffer, which the caller made or was
 * handed whole and which nothing else uses (a parsed index's body, a table done with). A view of part of a
 * buffer (a slice of Node's pool, an HTTP/2 read that carried several streams' data) is left to the collector,
 * as is anything under FREE_NOW_MIN_BYTES. (Not Node's pool size: since Node 24 that is 64 KiB, the size of a
 * socket read, and a whole socket read is no slice of the pool.)
 */
export function freeNow(view: ArrayBufferView): void {
  // ES2024's ArrayBuffer.prototype.transfer (Node >= 21), not in this project's ES2022 lib types.
  const buf = view.buffer as ArrayBuffer & { readonly detached: boolean; transfer(length: number): ArrayBuffer };
  if (!(buf instanceof ArrayBuffer) || buf.byteLength < FREE_NOW_MIN_BYTES || buf.detached) return;
  if (view.byteOffset !== 0 || view.byteLength !== buf.byteLength) return;
  try {
    buf.transfer(0);
  } catch {
    // Not detachable (Node marks some of its buffers so): left to the collector.
  }
}

/**
 * Buffers of one size, cut from arenas of `perArena` and reused as soon as they are handed back: for many small
 * buffers that live for a while and die in no order (decoded pack blocks kept for later tasks). Fresh ones would
 * be promoted and then wait for a full collection, and in malloc's heap fragment it; a slab pool would keep a slab
 * per long-lived one. The arenas go with the pool.
 */
export class SlotPool {
  private readonly free: Buffer[] = [];
  private readonly arenas = new Set<ArrayBuffer>();

  constructor(
    readonly slotBytes: number,
    private readonly perArena: number,
  ) {}

  /** A buffer of `size` <= slotBytes (a view of a slot). */
  take(size: number): Buffer {
    if (size > this.slotBytes) throw new RangeError(`${size} bytes asked of ${this.slotBytes}-byte slots`);
    if (this.free.length === 0) {
      const arena = Buffer.allocUnsafeSlow(this.slotBytes * this.perArena);
      this.arenas.add(arena.buffer as ArrayBuffer);
      for (let k = this.perArena - 1; k >= 0; k--)
        this.free.push(arena.subarray(k * this.slotBytes, (k + 1) * this.slotBytes));
    }
    const slot = this.free.pop()!;
    return slot.length === size ? slot : slot.subarray(0, size);
  }

  /** Hands a buffer of take() back, once; the caller must not touch it afterwards. Others are ignored. */
  give(buf: Buffer): void {
    if (!this.arenas.has(buf.buffer as ArrayBuffer)) return;
    const slot = Buffer.from(buf.buffer, buf.byteOffset, this.slotBytes);
    this.free.push(slot);
  }
}
