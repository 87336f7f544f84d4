// Reusable buffers for fetched chunks. Each fetched chunk used to be a fresh
// buffer, garbage once written; V8 collects external memory late (tens of MiB
// behind), which showed as peak RSS. Buffers come in power-of-two size classes
// and are handed back once written; only buffers this pool made are taken back.

/** Smallest size class (smaller requests still get a buffer of their own). */
const MIN_CLASS = 4096;

export class BufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private readonly mine = new WeakSet<ArrayBuffer>();
  /** Buffers in `free` (a set, not a search of the lists: a pool of small frames holds thousands). */
  private readonly idle = new WeakSet<ArrayBuffer>();
  private pooled = 0;

  /** @param maxPooledBytes bytes kept for reuse at most (beyond that, handed-back buffers are dropped). */
  constructor(private readonly maxPooledBytes = 4 * 1024 * 1024) {}

  take(size: number): Buffer {
    const cls = Math.max(MIN_CLASS, 2 ** Math.ceil(Math.log2(Math.max(1, size))));
    const ab = this.free.get(cls)?.pop();
    if (ab) {
      this.idle.delete(ab);
      this.pooled -= cls;
      return Buffer.from(ab, 0, size);
    }
    const fresh = new ArrayBuffer(cls);
    this.mine.add(fresh);
    return Buffer.from(fresh, 0, size);
  }

  /** Hands a buffer back for reuse; the caller must not touch it afterwards. Foreign buffers are ignored. */
  give(buf: Uint8Array): void {
    const ab = buf.buffer as ArrayBuffer;
    if (!this.mine.has(ab) || this.pooled + ab.byteLength > this.maxPooledBytes) return;
    if (this.idle.has(ab)) return;
    const list = this.free.get(ab.byteLength) ?? [];
    this.idle.add(ab);
    list.push(ab);
    this.free.set(ab.byteLength, list);
    this.pooled += ab.byteLength;
  }
}

/**
 * Frees a large buffer's memory now (detaches it) instead of at V8's next full collection, which comes only
 * after tens of MiB of such garbage. For an ArrayBuffer the caller made or was handed whole and that no view in
 * use shares (a parsed index's body, a table done with). Buffers up to Node's pool size may be slices of its
 * shared pool: those are left to the collector.
 */
export function freeNow(ab: ArrayBufferLike): void {
  // ES2024's ArrayBuffer.prototype.transfer (Node >= 21), not in this project's ES2022 lib types.
  const buf = ab as ArrayBuffer & { readonly detached: boolean; transfer(length: number): ArrayBuffer };
  if (!(buf instanceof ArrayBuffer) || buf.byteLength <= Buffer.poolSize || buf.detached) return;
  try {
    buf.transfer(0);
  } catch {
    // Not detachable (Node marks some of its buffers so): left to the collector.
  }
}
