// The one fetch/retry loop for verified units fetched as byte ranges: target
// chunks of an image (the chunk route) and frames of a block pack (the block
// route). Every unit is checked before it is handed on; wrong content is
// asked for once more, then fails naming the unit; transient failures are
// retried with backoff (attempts count failures in a row, so a connection that
// breaks after delivering units made progress); a refused multi-range request
// falls back to single ranges; an answer that leaves out asked-for units is
// retried, then fails naming the first one.
import { setTimeout as sleep } from 'node:timers/promises';
import { OriginError, MultiRangeUnsupportedError, RangeUnsupportedError } from '../errors.js';
import { isTransient } from '../fetch/http-client.js';
import { ChunkCollector, type RangeFetcher, type RangeRequest } from '../fetch/range-fetcher.js';
import type { RangeLayout } from '../plan/cost.js';

export interface RetryPolicy {
  /** Total attempts for transient failures. */
  attempts: number;
  retryBaseMs: number;
}

export interface UnitSpec {
  layout: RangeLayout;
  /** Range requests for ascending units (made as they are iterated, or all at once). */
  plan(units: readonly number[], multi: boolean): Iterable<RangeRequest>;
  /** Checks unit i and hands it on; returns the error to throw should it be wrong a second time, else undefined. */
  accept(i: number, data: Buffer): Error | undefined;
  /** The unit for messages: "chunk <id> at offset <n>". */
  describe(i: number): string;
  /** Where unit buffers come from (default new ones). */
  alloc?: (size: number) => Buffer;
  /** Takes back a buffer from `alloc` that was not handed on (a unit begun in an answer that was cut). */
  free?: (buf: Buffer) => void;
}

export interface UnitFetchOptions {
  retry: RetryPolicy;
  /** Shared by all calls on one resource: cleared when the server refuses multi-range. */
  state: { multi: boolean };
  signal: AbortSignal;
  /** Awaited between network reads (backpressure). */
  drain?: () => Promise<void> | undefined;
  onWarning?: (message: string) => void;
  /** Takes the units left when the server turns out not to serve ranges at all (else that error is thrown). */
  handOver?: (err: RangeUnsupportedError, left: number[]) => Promise<void>;
}

/** Fetches `units` (ascending) from `fetcher`'s URL; resolves once every one was accepted. */
export async function fetchUnits(
  fetcher: RangeFetcher,
  spec: UnitSpec,
  units: readonly number[],
  opts: UnitFetchOptions,
): Promise<void> {
  const { signal, state, retry } = opts;
  let todo = [...units];
  const wrongOnce = new Set<number>();
  let failures = 0;
  while (todo.length > 0) {
    signal.throwIfAborted();
    const wrong: number[] = [];
    const collector = new ChunkCollector(
      spec.layout,
      todo,
      (i, data) => {
        const bad = spec.accept(i, data);
        if (!bad) return;
        if (wrongOnce.has(i)) throw bad;
        wrongOnce.add(i);
        wrong.push(i);
      },
      spec.alloc,
    );
    let error: unknown;
    try {
      for (const req of spec.plan(todo, state.multi)) {
        await fetcher.fetch(req.ranges, (off, data) => collector.write(off, data), signal, opts.drain);
      }
    } catch (err) {
      error = err;
    }
    if (spec.free) collector.abandon(spec.free);
    const left = [...new Set([...collector.missing(), ...wrong])].sort((a, b) => a - b);
    if (left.length < todo.length) failures = 0;
    if (error instanceof MultiRangeUnsupportedError) {
      // Concurrent calls may all see the refusal: one warning, and single ranges from here on.
      if (state.multi) opts.onWarning?.(`${error.message}; falling back to single-range requests`);
      state.multi = false;
    } else if (error instanceof RangeUnsupportedError && opts.handOver) {
      return opts.handOver(error, left);
    } else if (error) {
      if (!isTransient(error) || signal.aborted || ++failures >= retry.attempts) throw error;
      await sleep(retry.retryBaseMs * failures, undefined, { signal });
    } else if (left.length > 0 && wrong.length === 0) {
      // A well-formed answer that left out asked-for bytes: the server is not trustworthy.
      if (++failures >= retry.attempts)
        throw new OriginError(`${fetcher.url}: the server did not send ${spec.describe(left[0])}`);
    }
    todo = left;
  }
}
