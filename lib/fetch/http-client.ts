// One HTTP client for everything deltad fetches from an origin (indexes, chunk
// stores, byte ranges, pass-through): an undici Agent with keep-alive pools,
// timeouts, bounded retries with backoff, and byte/request counters.
import { Agent, DecoratorHandler, request, type Dispatcher } from 'undici';
import { setTimeout as sleep } from 'node:timers/promises';
import { OriginError } from '../errors.js';
import { VERSION } from '../util/version.js';

export interface HttpClientOptions {
  /** Max connections per origin (default 8). */
  connections?: number;
  /** Headers/idle-body timeout in ms (default 30 s). */
  timeoutMs?: number;
  /** Total attempts for transient failures (default 4). */
  attempts?: number;
  /** Backoff before attempt k+1 is k * retryBaseMs (default 250 ms). */
  retryBaseMs?: number;
  userAgent?: string;
}

export interface RequestOptions {
  method?: 'GET' | 'HEAD' | 'POST';
  headers?: Record<string, string>;
  /** Request body (POST: the fleet proxy's batch endpoint). */
  body?: Buffer;
  signal?: AbortSignal;
}

export interface HttpStats {
  requests: number;
  /** Body bytes received (what the origin sent us, after headers). */
  bytes: number;
}

export class HttpClient {
  readonly dispatcher: Dispatcher;
  readonly attempts: number;
  readonly retryBaseMs: number;
  readonly timeoutMs: number;
  readonly stats: HttpStats = { requests: 0, bytes: 0 };
  private readonly userAgent: string;

  constructor(opts: HttpClientOptions = {}) {
    const timeout = opts.timeoutMs ?? 30_000;
    this.timeoutMs = timeout;
    this.dispatcher = new Agent({
      connections: opts.connections ?? 8,
      headersTimeout: timeout,
      bodyTimeout: timeout,
      keepAliveTimeout: 10_000,
    }).compose(countBodyBytes(this.stats));
    this.attempts = Math.max(1, opts.attempts ?? 4);
    this.retryBaseMs = opts.retryBaseMs ?? 250;
    this.userAgent = opts.userAgent ?? `deltad/${VERSION}`;
  }

  /** One attempt. The caller must consume or dump the body. */
  async request(url: string, opts: RequestOptions = {}): Promise<Dispatcher.ResponseData> {
    this.stats.requests++;
    try {
      const res = await request(url, {
        method: opts.method ?? 'GET',
        headers: { 'user-agent': this.userAgent, 'accept-encoding': 'identity', ...opts.headers },
        body: opts.body,
        signal: opts.signal,
        dispatcher: this.dispatcher,
      });
      return res;
    } catch (err) {
      throw toOriginError(err, url, this.timeoutMs);
    }
  }

  /** Runs fn, retrying transient failures (network errors, timeouts, 5xx) with linear backoff. */
  async withRetry<T>(fn: (attempt: number) => Promise<T>, signal?: AbortSignal): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn(attempt);
      } catch (err) {
        if (signal?.aborted || attempt >= this.attempts || !isTransient(err)) throw err;
        // A server that let one whole timeout pass is not answering: one retry, not minutes of silence.
        if (attempt >= 2 && isTimeout(err)) throw err;
        await sleep(this.retryBaseMs * attempt, undefined, { signal });
      }
    }
  }

  /**
   * GET a whole (small) resource into memory, with retries. Returns the status
   * for 2xx and 404; other statuses throw. Bodies over maxBytes are refused.
   */
  async getBuffer(url: string, opts: RequestOptions & { maxBytes?: number } = {}): Promise<{ status: number; headers: Dispatcher.ResponseData['headers']; body: Buffer }> {
    const maxBytes = opts.maxBytes ?? 64 * 1024 * 1024;
    return this.withRetry(async () => {
      const res = await this.request(url, opts);
      if (res.statusCode === 404 || res.statusCode === 410) {
        await res.body.dump();
        return { status: res.statusCode, headers: res.headers, body: Buffer.alloc(0) };
      }
      if (res.statusCode < 200 || res.statusCode >= 300) {
        await res.body.dump();
        throw new OriginError(`GET ${url}: HTTP ${res.statusCode}`, { status: res.statusCode, transient: res.statusCode >= 500 || res.statusCode === 429 });
      }
      const declared = Number(res.headers['content-length'] ?? NaN);
      if (declared > maxBytes) {
        res.body.destroy();
        throw new OriginError(`GET ${url}: ${declared} bytes exceeds the ${maxBytes}-byte limit`);
      }
      const body = await this.readBody(res.body, maxBytes, url);
      if (!Number.isNaN(declared) && body.length !== declared) {
        throw new OriginError(`GET ${url}: truncated body (${body.length} of ${declared} bytes)`, { transient: true });
      }
      return { status: res.statusCode, headers: res.headers, body };
    }, opts.signal);
  }

  /** Reads a response body fully, counting bytes and enforcing a limit. */
  async readBody(body: Dispatcher.ResponseData['body'], maxBytes: number, url: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    let n = 0;
    try {
      for await (const part of body) {
        const b = part as Buffer;
        n += b.length;
        if (n > maxBytes) {
          body.destroy();
          throw new OriginError(`GET ${url}: body exceeds the ${maxBytes}-byte limit`);
        }
        parts.push(b);
      }
    } catch (err) {
      throw toOriginError(err, url, this.timeoutMs);
    }
    return Buffer.concat(parts, n);
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }
}

/**
 * Counts every response body byte that arrives, whoever reads it (small files, ranges, pass-through), so
 * `HttpClient.stats` is the one measure of what the origin sent.
 */
function countBodyBytes(stats: HttpStats): Dispatcher.DispatcherComposeInterceptor {
  // undici's typings declare none of DecoratorHandler's methods; it forwards every callback to `handler`.
  const Base = DecoratorHandler as unknown as new (handler: Dispatcher.DispatchHandler) => {
    onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void;
  };
  class Counting extends Base {
    override onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
      stats.bytes += chunk.length;
      return super.onResponseData(controller, chunk);
    }
  }
  return (dispatch) => (opts, handler) => dispatch(opts, new Counting(handler) as Dispatcher.DispatchHandler);
}

const TRANSIENT_CODES = new Set([
  'ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ENOTFOUND',
  'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CLOSED',
]);

export function isTransient(err: unknown): boolean {
  if (err instanceof OriginError) return err.transient;
  const code = (err as { code?: string })?.code;
  return typeof code === 'string' && TRANSIENT_CODES.has(code);
}

const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT']);

function isTimeout(err: unknown): boolean {
  const code = ((err as { cause?: { code?: string } })?.cause ?? (err as { code?: string }))?.code;
  return typeof code === 'string' && TIMEOUT_CODES.has(code);
}

/** What a timeout means, in words (undici's codes name none of it). */
function timeoutWords(code: string, timeoutMs: number): string {
  const s = `${timeoutMs / 1000} s`;
  if (code === 'UND_ERR_HEADERS_TIMEOUT') return `the server accepted the connection but sent no response within ${s} (timeout)`;
  if (code === 'UND_ERR_BODY_TIMEOUT') return `the server stopped sending the response for ${s} (timeout)`;
  return `could not connect within ${s} (timeout)`;
}

export function toOriginError(err: unknown, url: string, timeoutMs?: number): Error {
  if (err instanceof OriginError) return err;
  const e = err as { code?: string; name?: string; message?: string };
  if (e?.name === 'AbortError') return err as Error;
  const transient = isTransient(err);
  if (timeoutMs !== undefined && e?.code && TIMEOUT_CODES.has(e.code)) {
    return new OriginError(`${url}: ${timeoutWords(e.code, timeoutMs)}`, { transient, cause: err });
  }
  return new OriginError(`${url}: ${e?.code ? e.code + ' ' : ''}${e?.message ?? String(err)}`, { transient, cause: err });
}
