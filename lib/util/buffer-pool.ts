// Reusable buffers for fetched chunks. Each fetched chunk used to be a fresh
// buffer, garbage once written; V8 collects external memory late (tens of MiB
// behind), which showed as peak RSS. Buffers come in power-of-two size classes
// and are handed back once written; only buffers this pool made are taken back.

/** Smallest size class (smaller requests still get a buffer of their own). */
const MIN_CLASS = 4096;

export class BufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private readonly mine = new WeakSet<ArrayBuffer>();
  private pooled = 0;

  /** @param maxPooledBytes bytes kept for reuse at most (beyond that, handed-back buffers are dropped). */
  constructor(private readonly maxPooledBytes = 4 * 1024 * 1024) {}

  take(size: number): Buffer {
    const cls = Math.max(MIN_CLASS, 2 ** Math.ceil(Math.log2(Math.max(1, size))));
    const ab = this.free.get(cls)?.pop();
    if (ab) {
      this.pooled -= cls;
      return Buffer.from(ab, 0, size);
    }
    const fresh = new ArrayBuffer(cls);
    this.mine.add(fresh);
    return Buffer.from(fresh, 0, size);
  }

  /** A buffer of the pool holding a copy of `data`. */
  copyOf(data: Uint8Array): Buffer {
    const buf = this.take(data.length);
    buf.set(data);
    return buf;
  }

  /** Hands a buffer back for reuse; the caller must not touch it afterwards. Foreign buffers are ignored. */
  give(buf: Uint8Array): void {
    const ab = buf.buffer as ArrayBuffer;
    if (!this.mine.has(ab) || this.pooled + ab.byteLength > this.maxPooledBytes) return;
    const list = this.free.get(ab.byteLength) ?? [];
    if (list.includes(ab)) return;
    list.push(ab);
    this.free.set(ab.byteLength, list);
    this.pooled += ab.byteLength;
  }
}
