// Pass-through of everything deltad does not assemble (manifests, signatures,
// other files) and of images it falls back on: a 307 to the origin URL, or the
// origin's answer streamed through unchanged (status kept: a 404 stays a 404,
// which sysupdate's signature-name probing relies on). The client's query
// string goes with it. In proxy mode the origin's redirects are followed by the
// HTTP client (the answer is the mirror's).
import type { ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import type { HttpClient } from '../lib/fetch/http-client.js';
import type { PassthroughMode } from './config.js';
import type { DaemonCounters } from './metrics.js';
import { verifiedBody } from './verified-body.js';

/**
 * Origin response headers worth keeping; hop-by-hop headers are not. The body
 * is passed on as sent, so its Content-Encoding goes with it (deltad asks for
 * identity, but a server may code it anyway).
 */
const KEEP_HEADERS = [
  'content-type',
  'content-length',
  'content-encoding',
  'last-modified',
  'etag',
  'location',
  'cache-control',
  'expires',
  'accept-ranges',
];

/** The origin URL with the client's query string (a signed URL's token, a cache buster) kept. */
export function withQuery(url: string, rawTarget: string | undefined): string {
  const q = rawTarget?.indexOf('?') ?? -1;
  if (q < 0) return url;
  const query = rawTarget!.slice(q).split('#')[0];
  return query.length > 1 ? url.split('?')[0] + query : url;
}

export interface PassThroughContext {
  http: HttpClient;
  counters: DaemonCounters;
  mode: PassthroughMode;
}

/**
 * Answers `res` with the origin's `url`. `signal` aborts the origin request (client gone).
 * `sha256`: the image's expected SHA-256 (or its lookup under way), which a proxied 200 body is checked against.
 */
export async function passThrough(
  ctx: PassThroughContext,
  method: 'GET' | 'HEAD',
  url: string,
  res: ServerResponse,
  signal?: AbortSignal,
  sha256?: string | Promise<string | undefined>,
): Promise<void> {
  if (ctx.mode === 'redirect') {
    res.writeHead(307, { location: url, 'content-length': '0', 'cache-control': 'no-store' });
    res.end();
    return;
  }
  await proxy(ctx, method, url, res, signal, sha256);
}

/**
 * Streams the origin's answer to `url` through. Headers not yet sent: a failure becomes 502.
 * With `sha256`, a 200 body goes through verifiedBody: its last bytes are held back, a mismatch cuts the connection.
 */
export async function proxy(
  ctx: PassThroughContext,
  method: 'GET' | 'HEAD',
  url: string,
  res: ServerResponse,
  signal?: AbortSignal,
  sha256?: string | Promise<string | undefined>,
): Promise<void> {
  let upstream;
  try {
    upstream = await ctx.http.withRetry(() => ctx.http.request(url, { method, signal }), signal);
  } catch (err) {
    if (!res.headersSent) {
      const text = `deltad: origin request failed: ${(err as Error).message}\n`;
      res.writeHead(502, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text) });
      res.end(text);
      return;
    }
    throw err;
  }
  const headers: Record<string, string> = {};
  for (const name of KEEP_HEADERS) {
    const v = upstream.headers[name];
    if (typeof v === 'string') headers[name] = v;
  }
  res.writeHead(upstream.statusCode, headers);
  if (method === 'HEAD') {
    await upstream.body.dump();
    res.end();
    return;
  }
  // A broken upstream body (or a wrong one) destroys the response: the client sees a truncated transfer.
  if (sha256 && upstream.statusCode === 200) {
    const declared = Number(upstream.headers['content-length']);
    await pipeline(
      upstream.body,
      verifiedBody(Number.isSafeInteger(declared) ? declared : undefined, sha256, url),
      res,
    );
  } else {
    await pipeline(upstream.body, res);
  }
}
