// The one HTTP origin for tests (and benchmarks): node:http on 127.0.0.1 (ephemeral
// port) serving the files of a directory, with switchable Range behaviour, conditional
// requests, an access log, and fault injection.
//
//   const origin = await startOrigin({ root: dir });   // ranges: 'multi' by default
//   origin.url                       // "http://127.0.0.1:PORT"
//   origin.ranges = 'single';        // change behaviour at any time (see RangeMode:
//                                    // multi, single, reject-multi, ignore-multi, none)
//   origin.fault({ path: '/v2.img', kind: 'status', status: 500 });    // next matching request only
//   origin.fault({ kind: 'cut', skip: 2, times: 3 });                  // requests 3..5 (any path)
//   origin.log                       // [{ method, path, range, status, bytes, requestHeaders }] in arrival order
//   origin.stats('/v2.img')          // { requests, bytes } for paths starting with the prefix
//   await origin.close();
//
// Faults apply to the matching requests in order: `skip` lets that many through
// first, then `times` (default 1; Infinity for all) get the fault:
//   cut         send headers and `afterBytes` body bytes (default half), then destroy the socket
//   status      answer `status` (default 500) with a short body
//   wrong-bytes flip one byte in every part of the body (same length, wrong content)
//   full-200    ignore Range, answer 200 with the whole file
//   stall       send headers and `afterBytes` body bytes (default 0), then nothing for `stallMs`
//               (default 60 s), then destroy the socket
//   delay       wait `delayMs` (default 3 s) before answering, then answer normally (a slow link)
//   trickle     send headers, then one body byte every `intervalMs` (default 5 s) until the client leaves
// `bytes` in the log counts body bytes actually written (framing included).
//
// CDN behaviour, switchable at any time:
//   origin.redirect = { to: other.url, match: (p) => p.endsWith('.img'), status: 302 }
//                                    // answer matching paths with a redirect to `to` + path?query
//   origin.validators = 'strong'     // ETag "<content hash>" (default), 'weak' (W/"..."), 'none';
//                                    // Last-Modified always; If-Range that does not match gets 200
//   origin.codedRanges = true        // 206 bodies gzip-coded with Content-Encoding: gzip (a broken CDN)
//   origin.headers = (path) => ({ 'x-kde-delta': 'false' })   // extra headers on every answer
//   origin.down = true               // every connection is destroyed at once, unlogged (upstream unreachable)
//
// Conditional requests: If-None-Match (weak comparison, against the ETag) and, without it,
// If-Modified-Since (against the file's mtime) answer 304 with the validators.
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { join, normalize, sep } from 'node:path';
import type { AddressInfo, Socket } from 'node:net';

/**
 * multi: multi-range requests get multipart/byteranges; single: ranges work but a
 * multi-range request gets one 206 of the whole span; reject-multi: multi-range
 * requests get 416; ignore-multi: single ranges work but a multi-range request
 * gets 200 with the whole file; none: Range is ignored (200 with the whole file).
 */
export type RangeMode = 'multi' | 'single' | 'first-only' | 'reject-multi' | 'ignore-multi' | 'none';

export type FaultKind = 'cut' | 'status' | 'wrong-bytes' | 'full-200' | 'stall' | 'delay' | 'trickle';

export interface Fault {
  kind: FaultKind;
  /** Only requests for this exact path (default: any). */
  path?: string;
  /** Only requests that carry a Range header (default: any). */
  rangedOnly?: boolean;
  /** Only requests without a Range header (default: any). */
  unrangedOnly?: boolean;
  skip?: number;
  times?: number;
  status?: number;
  afterBytes?: number;
  stallMs?: number;
  delayMs?: number;
  intervalMs?: number;
}

export interface Redirect {
  /** Base URL the redirect points to (the request's path and query are appended). */
  to: string;
  /** Paths to redirect (default all). */
  match?: (path: string) => boolean;
  /** Default 302. */
  status?: number;
}

export type Validators = 'strong' | 'weak' | 'none';

export interface AccessEntry {
  method: string;
  path: string;
  range?: string;
  status: number;
  bytes: number;
  fault?: FaultKind;
  /** The query string with its '?', when the request had one. */
  search?: string;
  /** The request's headers, as node:http parsed them. */
  requestHeaders: IncomingHttpHeaders;
}

export interface OriginOptions {
  root: string;
  ranges?: RangeMode;
}

export interface Origin {
  readonly url: string;
  ranges: RangeMode;
  redirect?: Redirect;
  validators: Validators;
  codedRanges: boolean;
  headers?: (path: string) => Record<string, string> | undefined;
  down: boolean;
  readonly log: AccessEntry[];
  fault(f: Fault): void;
  clearFaults(): void;
  stats(pathPrefix?: string): { requests: number; bytes: number };
  close(): Promise<void>;
}

const BOUNDARY = 'deltad-test-origin-boundary';

/** Parses "bytes=a-b,c-,-n" against a size; null when malformed, [] when unsatisfiable. */
function parseRanges(header: string, size: number): { start: number; end: number }[] | null {
  const m = /^bytes=(.+)$/.exec(header.trim());
  if (!m) return null;
  const out: { start: number; end: number }[] = [];
  for (const spec of m[1].split(',')) {
    const r = /^\s*(\d*)-(\d*)\s*$/.exec(spec);
    if (!r || (r[1] === '' && r[2] === '')) return null;
    let start: number;
    let end: number;
    if (r[1] === '') {
      start = Math.max(0, size - Number(r[2]));
      end = size;
    } else {
      start = Number(r[1]);
      end = r[2] === '' ? size : Math.min(size, Number(r[2]) + 1);
    }
    if (start < end) out.push({ start, end });
  }
  return out;
}

/** If-None-Match (weak comparison) or, without it, If-Modified-Since (whole seconds) says the client's copy is current. */
function notModified(req: IncomingMessage, etag: string | undefined, mtime: Date): boolean {
  const inm = req.headers['if-none-match'];
  const opaque = (t: string): string => t.trim().replace(/^W\//, '');
  if (inm !== undefined)
    return etag !== undefined && inm.split(',').some((t) => t.trim() === '*' || opaque(t) === opaque(etag));
  const ims = Date.parse(req.headers['if-modified-since'] ?? '');
  return !Number.isNaN(ims) && Math.floor(mtime.getTime() / 1000) * 1000 <= ims;
}

export async function startOrigin(opts: OriginOptions): Promise<Origin> {
  const faults: (Fault & { seen: number; used: number })[] = [];
  const log: AccessEntry[] = [];
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const state = {
    ranges: opts.ranges ?? ('multi' as RangeMode),
    redirect: undefined as Redirect | undefined,
    validators: 'strong' as Validators,
    codedRanges: false,
    headers: undefined as ((path: string) => Record<string, string> | undefined) | undefined,
    down: false,
  };

  const takeFault = (req: IncomingMessage, path: string): Fault | undefined => {
    for (const f of faults) {
      if (f.path !== undefined && f.path !== path) continue;
      if (f.rangedOnly && !req.headers.range) continue;
      if (f.unrangedOnly && req.headers.range) continue;
      f.seen++;
      if (f.seen <= (f.skip ?? 0) || f.used >= (f.times ?? 1)) continue;
      f.used++;
      return f;
    }
    return undefined;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (state.down) return void req.socket.destroy();
    const path = decodeURIComponent((req.url ?? '/').split('?')[0]);
    const entry: AccessEntry = {
      method: req.method ?? 'GET',
      path,
      range: req.headers.range,
      status: 0,
      bytes: 0,
      requestHeaders: req.headers,
    };
    const q = (req.url ?? '').indexOf('?');
    if (q >= 0) entry.search = (req.url ?? '').slice(q);
    log.push(entry);
    const extra = state.headers?.(path) ?? {};
    const send = (status: number, headers: Record<string, string | number>, body: Buffer): void => {
      entry.status = status;
      res.writeHead(status, { ...extra, ...headers, 'content-length': body.length });
      if (req.method === 'HEAD') return void res.end();
      entry.bytes += body.length;
      res.end(body);
    };
    const redirect = state.redirect;
    if (redirect && (redirect.match?.(path) ?? true)) {
      return send(redirect.status ?? 302, { location: redirect.to + (req.url ?? '/') }, Buffer.alloc(0));
    }
    const rel = normalize(path).replace(/^[/\\]+/, '');
    if (rel.startsWith('..') || rel.includes(`${sep}..`)) return send(403, {}, Buffer.from('forbidden\n'));
    const file = join(opts.root, rel);
    const st = await stat(file).catch(() => null);
    if (!st?.isFile()) return send(404, {}, Buffer.from('not found\n'));
    const data = await readFile(file);
    const fault = takeFault(req, path);
    if (fault) entry.fault = fault.kind;
    if (fault?.kind === 'status') return send(fault.status ?? 500, {}, Buffer.from('injected failure\n'));
    if (fault?.kind === 'delay') {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          timers.delete(t);
          resolve();
        }, fault.delayMs ?? 3_000);
        timers.add(t);
      });
    }

    // Decide what to answer: [status, headers, body parts].
    let status = 200;
    const tag = `"${createHash('sha256').update(data).digest('hex').slice(0, 16)}"`;
    const validators: Record<string, string> = { 'last-modified': st.mtime.toUTCString() };
    if (state.validators === 'strong') validators.etag = tag;
    if (state.validators === 'weak') validators.etag = `W/${tag}`;
    // If-Range: the range only when the validator still matches (strong comparison; a weak tag never does).
    const ifRange = req.headers['if-range'] as string | undefined;
    const matches = ifRange?.startsWith('"') ? ifRange === validators.etag : ifRange === validators['last-modified'];
    const stillSame = ifRange === undefined || matches;
    if (notModified(req, validators.etag, st.mtime)) return send(304, validators, Buffer.alloc(0));
    let headers: Record<string, string> = {
      'accept-ranges': state.ranges === 'none' ? 'none' : 'bytes',
      'content-type': 'application/octet-stream',
      ...validators,
    };
    let parts: Buffer[] = [data];
    const honoured = req.headers.range && state.ranges !== 'none' && fault?.kind !== 'full-200' && stillSame;
    let ranges = honoured ? parseRanges(req.headers.range!, data.length) : null;
    if (ranges && ranges.length > 1 && state.ranges === 'ignore-multi') ranges = null;
    if (ranges && ranges.length === 0) {
      return send(416, { 'content-range': `bytes */${data.length}` }, Buffer.alloc(0));
    } else if (ranges && ranges.length > 1 && state.ranges === 'reject-multi') {
      return send(416, { 'content-range': `bytes */${data.length}` }, Buffer.alloc(0));
    } else if (ranges) {
      status = 206;
      if (ranges.length > 1 && state.ranges === 'first-only') ranges = ranges.slice(0, 1);
      if (ranges.length === 1 || state.ranges === 'single') {
        const start = ranges[0].start;
        const end = ranges[ranges.length - 1].end;
        headers['content-range'] = `bytes ${start}-${end - 1}/${data.length}`;
        parts = [data.subarray(start, end)];
      } else {
        headers = { ...validators, 'content-type': `multipart/byteranges; boundary=${BOUNDARY}` };
        parts = [];
        for (const r of ranges) {
          parts.push(
            Buffer.from(
              `\r\n--${BOUNDARY}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes ${r.start}-${r.end - 1}/${data.length}\r\n\r\n`,
            ),
          );
          parts.push(data.subarray(r.start, r.end));
        }
        parts.push(Buffer.from(`\r\n--${BOUNDARY}--\r\n`));
      }
    }
    if (fault?.kind === 'wrong-bytes') {
      parts = parts.map((p) => {
        if (p.length === 0 || p.subarray(0, 4).toString() === `\r\n--`) return p;
        const copy = Buffer.from(p);
        copy[copy.length >> 1] ^= 0xff;
        return copy;
      });
    }
    let body = Buffer.concat(parts);
    if (status === 206 && state.codedRanges) {
      body = gzipSync(body);
      headers['content-encoding'] = 'gzip';
    }
    if (fault?.kind === 'trickle') {
      entry.status = status;
      res.writeHead(status, { ...extra, ...headers, 'content-length': body.length });
      let sent = 0;
      const drip = (): void => {
        const t = setTimeout(() => {
          timers.delete(t);
          if (res.destroyed || sent >= body.length) return;
          res.write(body.subarray(sent, ++sent));
          entry.bytes++;
          if (sent < body.length) drip();
          else res.end();
        }, fault.intervalMs ?? 5_000);
        timers.add(t);
      };
      drip();
      return;
    }
    if (fault?.kind === 'cut' || fault?.kind === 'stall') {
      entry.status = status;
      res.writeHead(status, { ...extra, ...headers, 'content-length': body.length });
      const n = Math.min(body.length - 1, fault.afterBytes ?? (fault.kind === 'cut' ? body.length >> 1 : 0));
      if (n > 0) res.write(body.subarray(0, n));
      entry.bytes += n;
      const t = setTimeout(
        () => {
          timers.delete(t);
          res.socket?.destroy();
        },
        fault.kind === 'stall' ? (fault.stallMs ?? 60_000) : 10,
      );
      timers.add(t);
      return;
    }
    send(status, headers, body);
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err) => {
      res.destroy(err as Error);
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;

  return {
    url: `http://127.0.0.1:${port}`,
    get ranges() {
      return state.ranges;
    },
    set ranges(m: RangeMode) {
      state.ranges = m;
    },
    get redirect() {
      return state.redirect;
    },
    set redirect(r: Redirect | undefined) {
      state.redirect = r;
    },
    get validators() {
      return state.validators;
    },
    set validators(v: Validators) {
      state.validators = v;
    },
    get codedRanges() {
      return state.codedRanges;
    },
    set codedRanges(v: boolean) {
      state.codedRanges = v;
    },
    get headers() {
      return state.headers;
    },
    set headers(h: ((path: string) => Record<string, string> | undefined) | undefined) {
      state.headers = h;
    },
    get down() {
      return state.down;
    },
    set down(v: boolean) {
      state.down = v;
    },
    log,
    fault(f) {
      faults.push({ ...f, seen: 0, used: 0 });
    },
    clearFaults() {
      faults.length = 0;
    },
    stats(prefix = '/') {
      const hits = log.filter((e) => e.path.startsWith(prefix));
      return { requests: hits.length, bytes: hits.reduce((n, e) => n + e.bytes, 0) };
    },
    async close() {
      for (const t of timers) clearTimeout(t);
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
