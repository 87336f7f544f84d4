// One HTTP client for everything deltad fetches from an origin (indexes, chunk
// stores, byte ranges, pass-through): an undici Agent with keep-alive pools,
// HTTP/2 where a TLS origin offers it, the system CA store (plus a configured
// CA file), redirects followed and cached (redirects.ts), curl-like transfer
// limits and link measurement (link-monitor.ts), timeouts, bounded retries
// with backoff, and byte/request counters.
import type * as Undici from 'undici';
import type { Dispatcher } from 'undici';
import { Agent, DecoratorHandler, buildConnector, request } from './undici.js';
import type { SecureContext } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import { gunzipSync, inflateSync, brotliDecompressSync } from 'node:zlib';
import { BodyTooLargeError, OriginError } from '../errors.js';
import { DEFAULT_LIMITS, LinkMonitor, type LinkEstimate, type TransferLimits } from './link-monitor.js';
import { REDIRECT_STATUSES, RedirectCache, redirectTarget, sameOrigin } from './redirects.js';
import { readCaFile, trustContext } from './tls.js';
import { VERSION } from '../util/version.js';
import { unlessAborted } from '../util/abort.js';
import { DEFAULT_TIMEOUT_MS } from '../util/defaults.js';

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
  /** PEM file of CA certificates trusted besides the system store (a private update server). */
  caFile?: string;
  /** Offer HTTP/2 to TLS origins (default true); HTTP/1.1 otherwise. */
  http2?: boolean;
  /** Redirect hops followed per request (default 10). */
  maxRedirects?: number;
  /** How long a redirect target is reused without asking the redirector again (default 10 min). */
  redirectCacheMs?: number;
  /** Low-speed limit and per-request deadline (link-monitor.ts DEFAULT_LIMITS). */
  limits?: Partial<TransferLimits>;
}

export interface RequestOptions {
  method?: 'GET' | 'HEAD' | 'POST';
  headers?: Record<string, string>;
  /** Request body (POST: the fleet proxy's batch endpoint). */
  body?: Buffer;
  signal?: AbortSignal;
  /**
   * Whether to wait while another URL of the same shape is resolved for the first time (default true: a burst of
   * chunk requests asks a redirector once). False for a few distinct files asked at once, such as a release's
   * preparation: each would wait a round trip for the one before it.
   */
  gate?: boolean;
}

export interface HttpStats {
  requests: number;
  /** Body bytes received (what the origin sent us, after headers). */
  bytes: number;
  /** Redirect answers followed (each one a round trip). */
  redirects: number;
}

/** An answer, with the URL that gave it (after redirects). */
export type HttpResponse = Dispatcher.ResponseData & { url: string };

/** Headers that must not follow a redirect to another origin. */
const CREDENTIAL_HEADERS = ['authorization', 'cookie', 'proxy-authorization'];

/** One TLS context per CA file (building one parses the whole system store). */
const contexts = new Map<string, SecureContext>();

export class HttpClient {
  readonly dispatcher: Dispatcher;
  readonly attempts: number;
  readonly retryBaseMs: number;
  readonly timeoutMs: number;
  readonly stats: HttpStats = { requests: 0, bytes: 0, redirects: 0 };
  readonly redirects: RedirectCache;
  readonly monitor: LinkMonitor;
  private readonly agent: Undici.Agent;
  private readonly h2Agent: Undici.Agent;
  private readonly h2Dispatcher: Dispatcher;
  /** https origins that negotiated HTTP/2 ("https://host:port"). */
  private readonly h2Origins = new Set<string>();
  /** https origins that negotiated HTTP/1.1 (or offered no ALPN). */
  private readonly h1Origins = new Set<string>();
  /**
   * https origins whose first connection is being made (TLS handshake under way), settled by its ALPN: the
   * requests that come meanwhile wait for it and then share it when it is HTTP/2, instead of each opening a
   * connection of its own and the HTTP/2 agent yet another one after them (5 handshakes for a preparation's
   * 5 requests, the last one on the way of the index).
   */
  private readonly connecting = new Map<string, { settled: Promise<void>; settle: () => void }>();
  private readonly allowH2: boolean;
  private readonly userAgent: string;

  constructor(opts: HttpClientOptions = {}) {
    const timeout = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.timeoutMs = timeout;
    const allowH2 = opts.http2 ?? true;
    this.allowH2 = allowH2;
    // Read now, so that a bad CA file fails at start; the TLS context is built on the first https connection.
    if (opts.caFile) readCaFile(opts.caFile);
    const plain = buildConnector({ allowH2, timeout: 10_000 });
    let secure: Undici.buildConnector.connector | undefined;
    const connect: Undici.buildConnector.connector = (o, cb) => {
      if (o.protocol !== 'https:') return plain(o, cb);
      if (!secure) {
        const key = opts.caFile ?? '';
        let secureContext = contexts.get(key);
        if (!secureContext) contexts.set(key, (secureContext = trustContext(opts.caFile)));
        secure = buildConnector({ allowH2, timeout: 10_000, secureContext } as Undici.buildConnector.BuildOptions);
      }
      return secure(o, (err, socket) => {
        const alpn = (socket as { alpnProtocol?: string | false } | null)?.alpnProtocol;
        const origin = `https://${o.hostname}:${o.port || 443}`;
        if (!err) (alpn === 'h2' ? this.h2Origins : this.h1Origins).add(origin);
        // Failed too: the waiting requests then go their own way (and fail or retry on their own).
        this.connecting.get(origin)?.settle();
        (cb as (e: Error | null, s: typeof socket) => void)(err, socket);
      });
    };
    const agentOptions = {
      headersTimeout: timeout,
      bodyTimeout: timeout,
      keepAliveTimeout: 10_000,
      allowH2,
      connect,
      // HTTP/2 flow control: undici's 256 KiB stream / 512 KiB connection windows cap one stream at 256 KiB per
      // round trip (21 Mbit/s at 100 ms); these fill a fast link at a long round trip.
      initialWindowSize: H2_STREAM_WINDOW,
      connectionWindowSize: H2_CONNECTION_WINDOW,
    };
    this.agent = new Agent({ ...agentOptions, connections: opts.connections ?? 8 });
    // Once an origin spoke HTTP/2, its requests share one multiplexed connection (a burst would open a pool's worth),
    // as many streams at once as the server allows: undici's default pipelining of 1 would send one request per
    // round trip (store mode at 40 ms was casync's pace).
    this.h2Agent = new Agent({
      ...agentOptions,
      connections: 1,
      pipelining: H2_STREAMS,
      maxConcurrentStreams: H2_STREAMS,
    });
    this.monitor = new LinkMonitor({ ...DEFAULT_LIMITS, ...opts.limits });
    this.dispatcher = this.agent.compose(countBodyBytes(this.stats), this.monitor.interceptor());
    this.h2Dispatcher = this.h2Agent.compose(countBodyBytes(this.stats), this.monitor.interceptor());
    this.redirects = new RedirectCache({ maxRedirects: opts.maxRedirects, cacheMs: opts.redirectCacheMs });
    this.attempts = Math.max(1, opts.attempts ?? 4);
    this.retryBaseMs = opts.retryBaseMs ?? 250;
    this.userAgent = opts.userAgent ?? `deltad/${VERSION}`;
  }

  /** Round-trip time and throughput measured so far (undefined before the first answer). */
  linkEstimate(): LinkEstimate | undefined {
    return this.monitor.estimate();
  }

  /**
   * One attempt, redirects followed (a cached target first). The answer is the
   * final one, with its URL. The caller must consume or dump the body.
   */
  async request(url: string, opts: RequestOptions = {}): Promise<HttpResponse> {
    const first = await this.viaCache(url, opts);
    if (first) return first;
    if (opts.gate === false) return this.follow(url, url, opts);
    const release = await this.redirects.gate(url, opts.signal);
    if (release) {
      try {
        return await this.follow(url, url, opts);
      } finally {
        release();
      }
    }
    // Another URL of this shape was resolved meanwhile: the rule it taught may cover this one.
    return (await this.viaCache(url, opts)) ?? this.follow(url, url, opts);
  }

  /**
   * The answer from where `url` is known (or guessed) to end, or undefined when
   * nothing is cached or the cached target failed: a stale mirror, an expired
   * signed URL or a wrong guess is forgotten, and the original URL asked again.
   */
  private async viaCache(url: string, opts: RequestOptions): Promise<HttpResponse | undefined> {
    const cached = this.redirects.lookup(url);
    if (!cached) return undefined;
    this.redirects.hits++;
    let res: HttpResponse | undefined;
    try {
      res = await this.follow(url, cached.url, opts);
    } catch (err) {
      if (opts.signal?.aborted) throw err;
    }
    if (res && res.statusCode < 400) return res;
    await res?.body.dump().catch(() => {});
    this.redirects.forget(url, cached);
    return undefined;
  }

  /** Requests `start` (on behalf of `url`), following redirects; learns where `url` ended. */
  private async follow(url: string, start: string, opts: RequestOptions): Promise<HttpResponse> {
    let current = start;
    let method = opts.method ?? 'GET';
    let body = opts.body;
    let headers: Record<string, string> = {
      'user-agent': this.userAgent,
      'accept-encoding': 'identity',
      ...opts.headers,
    };
    for (let hops = 0; ; hops++) {
      const res = await this.once(current, method, headers, body, opts.signal);
      if (!REDIRECT_STATUSES.has(res.statusCode)) {
        if (current !== url && res.statusCode < 400) this.redirects.learn(url, current);
        if (hops === 0 && start === url) this.redirects.answeredDirectly(url);
        return Object.assign(res, { url: current });
      }
      await res.body.dump().catch(() => {});
      const next = redirectTarget(current, res.headers.location, hops, this.redirects.maxRedirects);
      this.stats.redirects++;
      if (res.statusCode === 303 || ((res.statusCode === 301 || res.statusCode === 302) && method === 'POST')) {
        if (method !== 'HEAD') method = 'GET';
        body = undefined;
      }
      if (!sameOrigin(current, next)) {
        const kept = Object.entries(headers).filter(([k]) => !CREDENTIAL_HEADERS.includes(k.toLowerCase()));
        headers = Object.fromEntries(kept);
      }
      current = next;
    }
  }

  private async once(
    url: string,
    method: string,
    headers: Record<string, string>,
    body: Buffer | undefined,
    signal?: AbortSignal,
  ): Promise<Dispatcher.ResponseData> {
    this.stats.requests++;
    let first: (() => void) | undefined;
    try {
      const to = await this.dispatcherFor(url, signal);
      first = to.first;
      const dispatcher = to.dispatcher;
      return await request(url, { method: method as Dispatcher.HttpMethod, headers, body, signal, dispatcher });
    } catch (err) {
      throw toOriginError(err, url, this.timeoutMs);
    } finally {
      // However it went (also without a connection: aborted, refused), the requests waiting for it may go.
      first?.();
    }
  }

  /**
   * The HTTP/2 agent for an origin that spoke HTTP/2, else the pooled one. The first request to an https origin
   * whose protocol is not known yet goes to the HTTP/2 agent and makes its connection; requests meanwhile wait
   * for that connection's ALPN (see `connecting`). An origin that answers with HTTP/1.1 keeps that first request
   * on that connection, alone, and every later one goes to the pool.
   */
  private async dispatcherFor(
    url: string,
    signal?: AbortSignal,
  ): Promise<{ dispatcher: Dispatcher; first?: () => void }> {
    if (!this.allowH2 || !url.startsWith('https:')) return { dispatcher: this.dispatcher };
    const origin = originOf(url);
    if (this.h2Origins.has(origin)) return { dispatcher: this.h2Dispatcher };
    if (this.h1Origins.has(origin)) return { dispatcher: this.dispatcher };
    const pending = this.connecting.get(origin);
    if (!pending) {
      let settle!: () => void;
      const settled = new Promise<void>((r) => (settle = r));
      this.connecting.set(origin, { settled, settle });
      void settled.then(() => this.connecting.delete(origin));
      return { dispatcher: this.h2Dispatcher, first: settle };
    }
    await (signal ? unlessAborted(pending.settled, signal) : pending.settled);
    return { dispatcher: this.h2Origins.has(origin) ? this.h2Dispatcher : this.dispatcher };
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
  async getBuffer(
    url: string,
    opts: RequestOptions & { maxBytes?: number } = {},
  ): Promise<{ status: number; headers: Dispatcher.ResponseData['headers']; body: Buffer; url: string }> {
    const { parts, length, ...res } = await this.getParts(url, opts);
    return { ...res, body: joinParts(parts, length) };
  }

  /**
   * getBuffer with the body in the reads it came in (`length` bytes in all), for a caller that joins them itself
   * (into a reused buffer) or needs no join; a body with a Content-Encoding comes decoded, in one part.
   */
  async getParts(
    url: string,
    opts: RequestOptions & { maxBytes?: number } = {},
  ): Promise<{
    status: number;
    headers: Dispatcher.ResponseData['headers'];
    parts: Buffer[];
    length: number;
    url: string;
  }> {
    const maxBytes = opts.maxBytes ?? 64 * 1024 * 1024;
    return this.withRetry(async () => {
      const res = await this.request(url, opts);
      if (res.statusCode === 404 || res.statusCode === 410) {
        await res.body.dump();
        return { status: res.statusCode, headers: res.headers, parts: [], length: 0, url: res.url };
      }
      if (res.statusCode < 200 || res.statusCode >= 300) {
        await res.body.dump();
        throw new OriginError(`GET ${url}: HTTP ${res.statusCode}`, {
          status: res.statusCode,
          transient: res.statusCode >= 500 || res.statusCode === 429,
        });
      }
      const declared = Number(res.headers['content-length'] ?? NaN);
      if (declared > maxBytes) {
        res.body.destroy();
        throw new BodyTooLargeError(`GET ${url}: ${declared} bytes exceeds the ${maxBytes}-byte limit`, maxBytes);
      }
      const parts = await this.readParts(res.body, maxBytes, url);
      const length = parts.reduce((n, p) => n + p.length, 0);
      if (!Number.isNaN(declared) && length !== declared) {
        throw new OriginError(`GET ${url}: truncated body (${length} of ${declared} bytes)`, { transient: true });
      }
      const head = { status: res.statusCode, headers: res.headers, url: res.url };
      const encoding = res.headers['content-encoding'];
      if (encoding === undefined) return { ...head, parts, length };
      const body = decodeBody(joinParts(parts, length), encoding, maxBytes, url);
      return { ...head, parts: [body], length: body.length };
    }, opts.signal);
  }

  /**
   * Reads a response body fully, counting bytes and enforcing a limit. `onPart` sees each part as it arrives (e.g. a
   * streaming parser); what it throws ends the read and is thrown as it is. `keep` false: the parts are only seen by
   * `onPart`, and an empty buffer is returned.
   */
  async readBody(
    body: Dispatcher.ResponseData['body'],
    maxBytes: number,
    url: string,
    onPart?: (part: Buffer) => void,
    keep = true,
  ): Promise<Buffer> {
    const parts = await this.readParts(body, maxBytes, url, onPart, keep);
    return joinParts(
      parts,
      parts.reduce((n, p) => n + p.length, 0),
    );
  }

  /** readBody's parts, not joined. */
  private async readParts(
    body: Dispatcher.ResponseData['body'],
    maxBytes: number,
    url: string,
    onPart?: (part: Buffer) => void,
    keep = true,
  ): Promise<Buffer[]> {
    const parts: Buffer[] = [];
    let n = 0;
    let refused: { err: unknown } | undefined;
    try {
      for await (const part of body) {
        const b = part as Buffer;
        n += b.length;
        if (n > maxBytes) {
          body.destroy();
          throw new BodyTooLargeError(`GET ${url}: body exceeds the ${maxBytes}-byte limit`, maxBytes);
        }
        if (keep) parts.push(b);
        try {
          onPart?.(b);
        } catch (err) {
          refused = { err };
          break;
        }
      }
    } catch (err) {
      throw toOriginError(err, url, this.timeoutMs);
    }
    if (refused) {
      body.destroy();
      throw refused.err;
    }
    return keep ? parts : [];
  }

  async close(): Promise<void> {
    await Promise.all([this.agent.close(), this.h2Agent.close()]);
  }
}

/** "https://host:port" as the connector names it (the port always spelt out). */
function originOf(url: string): string {
  const u = new URL(url);
  return `${u.protocol}//${u.hostname}:${u.port || (u.protocol === 'https:' ? '443' : '80')}`;
}

/**
 * A body that came in one read (a stored chunk, a small file) is that read: a copy would be one more buffer per
 * request for V8 to collect. (Over HTTP/2 one socket read can carry several streams' data: the body may be a view
 * of a buffer other bodies share.)
 */
export function joinParts(parts: Buffer[], length: number): Buffer {
  if (parts.length === 0) return Buffer.alloc(0);
  return parts.length === 1 ? parts[0] : Buffer.concat(parts, length);
}

/**
 * A whole body as its origin meant it: we ask for identity, but a server that
 * compresses anyway (a 200, never a range) is decoded, within `maxBytes`.
 */
function decodeBody(raw: Buffer, encoding: string | string[] | undefined, maxBytes: number, url: string): Buffer {
  const coding = (Array.isArray(encoding) ? encoding.join(',') : (encoding ?? '')).trim().toLowerCase();
  if (coding === '' || coding === 'identity') return raw;
  const opts = { maxOutputLength: maxBytes };
  try {
    if (coding === 'gzip' || coding === 'x-gzip') return gunzipSync(raw, opts);
    if (coding === 'deflate') return inflateSync(raw, opts);
    if (coding === 'br') return brotliDecompressSync(raw, opts);
  } catch (err) {
    throw new OriginError(`GET ${url}: cannot decode its Content-Encoding ${coding}: ${(err as Error).message}`);
  }
  throw new OriginError(`GET ${url}: unsupported Content-Encoding "${coding}" (deltad asked for identity)`);
}

/** Streams in flight on one HTTP/2 connection (servers commonly allow 100 or 128). */
const H2_STREAMS = 100;
/** Per-stream and per-connection HTTP/2 receive windows (a 100 Mbit/s x 100 ms link is 1.25 MB in flight). */
const H2_STREAM_WINDOW = 2 * 1024 * 1024;
const H2_CONNECTION_WINDOW = 16 * 1024 * 1024;

/**
 * Counts every response body byte that arrives, whoever reads it (small files, ranges, pass-through), so
 * `HttpClient.stats` is the one measure of what the origin sent.
 */
function countBodyBytes(stats: HttpStats): Dispatcher.DispatcherComposeInterceptor {
  // undici's typings declare none of DecoratorHandler's methods; it forwards every callback to `handler`.
  const Base = DecoratorHandler as unknown as new (
    handler: Dispatcher.DispatchHandler,
  ) => {
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
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'ENOTFOUND',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CLOSED',
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
  if (code === 'UND_ERR_HEADERS_TIMEOUT')
    return `the server accepted the connection but sent no response within ${s} (timeout)`;
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
  return new OriginError(`${url}: ${e?.code ? e.code + ' ' : ''}${e?.message ?? String(err)}`, {
    transient,
    cause: err,
  });
}
