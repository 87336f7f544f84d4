// Bounded parallel work whose results stream out as they arrive: the shape of
// every "fetch many chunks, hand each over as soon as it is here" loop.

/**
 * Runs `work(item, emit)` over `items` with at most `concurrency` running at
 * once and yields every value they emit, in arrival order. The first failure
 * stops new work; it is thrown once the running calls have ended.
 */
export async function* concurrentEmit<T, R>(
  items: readonly T[],
  concurrency: number,
  work: (item: T, emit: (value: R) => void) => Promise<void>,
): AsyncGenerator<R> {
  const ready: R[] = [];
  let next = 0;
  let running = 0;
  let failure: unknown;
  let wake: (() => void) | undefined;
  const emit = (value: R): void => {
    ready.push(value);
    wake?.();
  };
  const worker = async (): Promise<void> => {
    running++;
    while (next < items.length && failure === undefined) {
      try {
        await work(items[next++], emit);
      } catch (err) {
        failure ??= err;
      }
    }
    running--;
    wake?.();
  };
  const workers = Array.from({ length: Math.min(Math.max(1, concurrency), items.length) }, worker);
  while (running > 0 || ready.length) {
    if (ready.length === 0) await new Promise<void>((r) => (wake = r));
    yield* ready.splice(0);
  }
  await Promise.all(workers);
  if (failure !== undefined) throw failure;
}
