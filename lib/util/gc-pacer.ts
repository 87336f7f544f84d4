// Collects dead buffers while an assembly makes them. An update moves each
// byte through several short-lived buffers (socket reads, chunks, seed reads,
// decompressed frames): ~1 GB of them for a 600 MB image. V8 frees a buffer only
// when it collects the object that owns it, and once that object is old (it
// lived through two young collections, e.g. while waiting in a reorder window)
// only a full collection does, which V8 starts after 64 MiB of such memory has
// piled up: that was a third of the sidecar's peak RSS. While an assembly
// runs, this asks for an incremental full collection whenever the buffers
// outside the JS heap grew by 16 MiB (a few ms of marking for deltad's small
// heap). It needs V8's gc() (`--expose-gc`, which bin/deltad passes); without
// it, it does nothing.
import { getHeapStatistics } from 'node:v8';

/** Growth of memory outside the JS heap (buffers) that asks for a collection. */
const STEP_BYTES = 16 * 1024 * 1024;
const CHECK_MS = 10;

type Gc = (options: { type: 'major'; execution: 'async' }) => unknown;

let users = 0;
let timer: NodeJS.Timeout | undefined;

/** Paces collections until the returned function is called (nested calls share one timer). */
export function paceGc(): () => void {
  const gc = (globalThis as { gc?: Gc }).gc;
  if (typeof gc !== 'function') return () => {};
  if (users++ === 0) {
    let base = getHeapStatistics().external_memory;
    timer = setInterval(() => {
      const now = getHeapStatistics().external_memory;
      if (now < base) base = now;
      else if (now > base + STEP_BYTES) {
        gc({ type: 'major', execution: 'async' });
        base = now;
      }
    }, CHECK_MS);
    timer.unref();
  }
  let stopped = false;
  return () => {
    if (stopped) return;
    stopped = true;
    if (--users === 0) clearInterval(timer);
  };
}
