// Watches every request of one HTTP client at the dispatcher level: measures
// the link (round-trip time from time to headers of small answers, throughput
// of body bytes while requests are in flight) and enforces curl-like transfer
// limits: a low-speed limit and a per-request deadline scaled to the bytes the
// answer carries. Time the consumer holds the body paused (backpressure) counts
// against neither. Times are performance.now() milliseconds (loopback answers take less than one).
import type { Duplex } from 'node:stream';
import { performance } from 'node:perf_hooks';
import type { Dispatcher } from 'undici';
import { LowSpeedError, RequestDeadlineError } from '../errors.js';
import { DEFAULT_LOW_SPEED_LIMIT, DEFAULT_LOW_SPEED_TIME_MS } from '../util/defaults.js';

/** What the link to the origins looks like (the cost model's input, lib/plan). */
export interface LinkEstimate {
  /** Round-trip time: the smallest recent time to headers of a small answer. */
  rttMs: number;
  /** Body bytes per second over the time any request was receiving (0 until THROUGHPUT_FROM_BYTES arrived). */
  bytesPerSec: number;
}

export interface TransferLimits {
  /** Abort an answer slower than this many bytes/s ... (default 1024; 0 = off). */
  lowSpeedLimit: number;
  /** ... for this long (default 30 s). */
  lowSpeedTimeMs: number;
  /** Deadline of one request: this much (default 60 s) ... */
  deadlineBaseMs: number;
  /** ... plus its expected bytes at this rate (default 4 KiB/s; 0 = no deadline). */
  deadlineRate: number;
}

export const DEFAULT_LIMITS: TransferLimits = {
  lowSpeedLimit: DEFAULT_LOW_SPEED_LIMIT,
  lowSpeedTimeMs: DEFAULT_LOW_SPEED_TIME_MS,
  deadlineBaseMs: 60_000,
  deadlineRate: 4096,
};

/** Answers up to this size time the round trip (bigger ones time the transfer too). */
const SMALL_ANSWER_BYTES = 64 * 1024;
/** Body bytes seen before a throughput is reported (a few small answers say little about it). */
export const THROUGHPUT_FROM_BYTES = 256 * 1024;
/** Round-trip samples kept (the estimate is their minimum). */
const RTT_SAMPLES = 16;
/** How often transfers are checked, and the speed window (in ticks) curl-style. */
const TICK_MS = 250;
const SPEED_WINDOW_TICKS = 8;

type Controller = Dispatcher.DispatchController;
type Headers = Record<string, string | string[] | undefined>;

interface Transfer {
  url: string;
  controller?: Controller;
  started: number;
  headersAt?: number;
  expected?: number;
  bytes: number;
  /** Bytes per tick over the last SPEED_WINDOW_TICKS ticks, and the bytes at the last tick. */
  window: number[];
  lastBytes: number;
  /** Since when the speed has been below the limit (undefined: it is not). */
  slowSince?: number;
  /** Time spent paused by the consumer, added to the deadline. */
  pausedMs: number;
  deadline?: number;
}

export class LinkMonitor {
  private readonly active = new Set<Transfer>();
  private readonly rtts: number[] = [];
  private ticker?: NodeJS.Timeout;
  /** Body bytes and the time with at least one answer receiving (throughput). */
  private bytes = 0;
  private busyMs = 0;
  private busySince?: number;
  private receiving = 0;

  constructor(readonly limits: TransferLimits = DEFAULT_LIMITS) {}

  /** The undici interceptor that feeds this monitor. */
  interceptor(): Dispatcher.DispatcherComposeInterceptor {
    return (dispatch) => (opts, handler) => {
      const url = `${opts.origin ?? ''}${opts.path}`;
      return dispatch(opts, new MonitoredHandler(this, url, opts.method === 'HEAD', handler));
    };
  }

  /** The link as measured so far; undefined before the first answer. */
  estimate(): LinkEstimate | undefined {
    if (this.rtts.length === 0) return undefined;
    const busy = this.busyMs + (this.busySince !== undefined ? performance.now() - this.busySince : 0);
    return {
      rttMs: Math.max(0.1, Math.min(...this.rtts)),
      bytesPerSec: busy > 0 && this.bytes >= THROUGHPUT_FROM_BYTES ? (this.bytes * 1000) / busy : 0,
    };
  }

  /** @internal */
  begin(t: Transfer): void {
    this.active.add(t);
    if (!this.ticker && (this.limits.lowSpeedLimit > 0 || this.limits.deadlineRate > 0)) {
      this.ticker = setInterval(() => this.tick(), TICK_MS);
      this.ticker.unref();
    }
  }

  /** @internal */
  headers(t: Transfer, now: number, small: boolean): void {
    t.headersAt = now;
    if (small) {
      this.rtts.push(now - t.started);
      if (this.rtts.length > RTT_SAMPLES) this.rtts.shift();
    }
    if (this.limits.deadlineRate > 0) {
      t.deadline = now + this.limits.deadlineBaseMs + ((t.expected ?? 0) * 1000) / this.limits.deadlineRate;
    }
    if (this.receiving++ === 0) this.busySince = now;
  }

  /** @internal */
  data(t: Transfer, n: number): void {
    t.bytes += n;
    this.bytes += n;
  }

  /** @internal */
  end(t: Transfer): void {
    if (!this.active.delete(t)) return;
    if (t.headersAt !== undefined && --this.receiving === 0 && this.busySince !== undefined) {
      this.busyMs += performance.now() - this.busySince;
      this.busySince = undefined;
    }
    if (this.active.size === 0 && this.ticker) {
      clearInterval(this.ticker);
      this.ticker = undefined;
    }
  }

  private tick(): void {
    const now = performance.now();
    const { lowSpeedLimit, lowSpeedTimeMs } = this.limits;
    for (const t of this.active) {
      if (t.headersAt === undefined || !t.controller) continue;
      if (t.controller.paused) {
        // The consumer is not reading: not the server's fault.
        t.window.length = 0;
        t.slowSince = undefined;
        t.pausedMs += TICK_MS;
        if (t.deadline !== undefined) t.deadline += TICK_MS;
        t.lastBytes = t.bytes;
        continue;
      }
      if (t.deadline !== undefined && now > t.deadline) {
        const ms = t.deadline - t.started - t.pausedMs;
        t.controller.abort(new RequestDeadlineError(t.url, ms, t.bytes, t.expected));
        continue;
      }
      if (lowSpeedLimit <= 0) continue;
      t.window.push(t.bytes - t.lastBytes);
      t.lastBytes = t.bytes;
      if (t.window.length > SPEED_WINDOW_TICKS) t.window.shift();
      const rate = (t.window.reduce((a, b) => a + b, 0) * 1000) / (t.window.length * TICK_MS);
      if (rate >= lowSpeedLimit) {
        t.slowSince = undefined;
        continue;
      }
      t.slowSince ??= now - TICK_MS;
      if (now - t.slowSince >= lowSpeedTimeMs) {
        const seen = (t.bytes * 1000) / Math.max(1, now - t.headersAt - t.pausedMs);
        const seconds = Math.round(lowSpeedTimeMs / 1000);
        t.controller.abort(new LowSpeedError(t.url, Math.min(rate, seen), lowSpeedLimit, seconds));
      }
    }
  }
}

/**
 * Passes every callback on, telling the monitor about starts, headers, bytes
 * and ends. compose() hands interceptors handlers of the controller API.
 */
class MonitoredHandler implements Dispatcher.DispatchHandler {
  private readonly transfer: Transfer;

  constructor(
    private readonly monitor: LinkMonitor,
    url: string,
    private readonly head: boolean,
    private readonly inner: Dispatcher.DispatchHandler,
  ) {
    this.transfer = { url, started: performance.now(), bytes: 0, window: [], lastBytes: 0, pausedMs: 0 };
  }

  onRequestUpgrade(controller: Controller, statusCode: number, headers: Headers, socket: Duplex): void {
    this.monitor.end(this.transfer);
    return this.inner.onRequestUpgrade?.(controller, statusCode, headers, socket);
  }

  onRequestStart(controller: Controller, context: unknown): void {
    // Restarted (a retried pipelined request): time from now.
    this.transfer.controller = controller;
    this.transfer.started = performance.now();
    this.monitor.begin(this.transfer);
    return this.inner.onRequestStart?.(controller, context);
  }

  onResponseStart(controller: Controller, statusCode: number, headers: Headers, statusMessage?: string): void {
    if (statusCode >= 200) {
      const len = Number(headers['content-length']);
      const expected = Number.isSafeInteger(len) ? len : undefined;
      this.transfer.expected = expected;
      const small = this.head || (expected !== undefined && expected <= SMALL_ANSWER_BYTES);
      this.monitor.headers(this.transfer, performance.now(), small);
    }
    return this.inner.onResponseStart?.(controller, statusCode, headers, statusMessage);
  }

  onResponseData(controller: Controller, chunk: Buffer): void {
    this.monitor.data(this.transfer, chunk.length);
    return this.inner.onResponseData?.(controller, chunk);
  }

  onResponseEnd(controller: Controller, trailers: Headers): void {
    this.monitor.end(this.transfer);
    return this.inner.onResponseEnd?.(controller, trailers);
  }

  onResponseError(controller: Controller, err: Error): void {
    this.monitor.end(this.transfer);
    return this.inner.onResponseError?.(controller, err);
  }
}

/**
 * Requests to keep in flight so that `requestBytes`-sized answers fill the
 * link: its bandwidth-delay product over the request size, plus one, bounded.
 */
export function inFlightFor(
  link: LinkEstimate | undefined,
  requestBytes: number,
  bounds: { min: number; max: number },
): number {
  if (!link || link.bytesPerSec <= 0 || requestBytes <= 0) return bounds.min;
  const bdp = (link.bytesPerSec * link.rttMs) / 1000;
  return Math.max(bounds.min, Math.min(bounds.max, Math.ceil(bdp / requestBytes) + 1));
}
