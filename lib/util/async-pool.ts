// Bounded concurrency written once: "run at most N at once over these items"
// (forEachConcurrent) and its streaming shape, "and hand over every result as
// it arrives" (concurrentEmit). Worker-thread pools are lib/util's worker pool;
// this is for async work on the event loop (requests, reads, hashing batches).

export interface ConcurrencyOptions<T> {
  /** Most calls running at once; a function is asked again before every start (a limit that follows the link). */
  concurrency: number | (() => number);
  /**
   * What a call holds while it runs (e.g. bytes in memory). With `budget`, a call starts only while the running
   * calls' weights plus its own stay within the budget, or when no call runs.
   */
  weight?: (item: T) => number;
  budget?: number;
  /**
   * When several calls fail, throw the failure of the earliest item (in `items` order) rather than the first to
   * happen: with items in file order, the first bad chunk is the one reported.
   */
  ordered?: boolean;
}

/**
 * Runs `work(item, index)` over `items` with at most `concurrency` calls running at once. Items are taken one at
 * a time, only when a call may start, so an async iterable (a file read batch by batch, a queue that waits for
 * room) is read no further ahead than the work. The first failure, of a call or of the items, stops new work; it
 * is thrown once the running calls have ended, so nothing still runs when this returns or throws.
 */
export async function forEachConcurrent<T>(
  items: Iterable<T> | AsyncIterable<T>,
  opts: number | ConcurrencyOptions<T>,
  work: (item: T, index: number) => Promise<void>,
): Promise<void> {
  const o: ConcurrencyOptions<T> = typeof opts === 'number' ? { concurrency: opts } : opts;
  const { concurrency } = o;
  const limit = typeof concurrency === 'number' ? () => concurrency : concurrency;
  const full = (weight: number): boolean =>
    running.size >= Math.max(1, limit()) || (running.size > 0 && held + weight > (o.budget ?? Infinity));
  const running = new Set<Promise<void>>();
  let held = 0;
  let failure: { err: unknown; index: number } | undefined;
  const fail = (err: unknown, index: number): void => {
    if (failure === undefined || (o.ordered && index < failure.index)) failure = { err, index };
  };
  const source: Iterator<T> | AsyncIterator<T> =
    Symbol.asyncIterator in items ? items[Symbol.asyncIterator]() : items[Symbol.iterator]();
  let index = 0;
  let open = true;
  try {
    while (failure === undefined) {
      while (full(0)) await Promise.race(running);
      if (failure !== undefined) break;
      let next: IteratorResult<T>;
      try {
        next = await source.next();
      } catch (err) {
        open = false;
        fail(err, index);
        break;
      }
      if (next.done) {
        open = false;
        break;
      }
      const item = next.value;
      const weight = o.weight?.(item) ?? 0;
      while (full(weight)) await Promise.race(running);
      if (failure !== undefined) break;
      const i = index++;
      held += weight;
      const p: Promise<void> = (async () => work(item, i))()
        .catch((err: unknown) => fail(err, i))
        .finally(() => {
          held -= weight;
          running.delete(p);
        });
      running.add(p);
    }
  } finally {
    // Stopped early: let the source clean up (a generator's finally, an open file).
    if (open) await Promise.resolve(source.return?.()).catch(() => {});
    await Promise.all(running);
  }
  if (failure !== undefined) throw failure.err;
}

/**
 * Runs `work(item, emit)` over `items` with at most `concurrency` running at once (forEachConcurrent) and yields
 * every value they emit, in arrival order. The first failure stops new work; it is thrown once the running calls
 * have ended and every value emitted before was yielded.
 */
export async function* concurrentEmit<T, R>(
  items: Iterable<T> | AsyncIterable<T>,
  concurrency: number,
  work: (item: T, emit: (value: R) => void) => Promise<void>,
): AsyncGenerator<R> {
  const ready: R[] = [];
  let ended = false;
  let wake: (() => void) | undefined;
  const emit = (value: R): void => {
    ready.push(value);
    wake?.();
  };
  const run = forEachConcurrent(items, concurrency, (item) => work(item, emit)).finally(() => {
    ended = true;
    wake?.();
  });
  run.catch(() => {}); // thrown below, after the values
  while (!ended || ready.length > 0) {
    if (ready.length === 0) await new Promise<void>((r) => (wake = r));
    yield* ready.splice(0);
  }
  await run;
}
