// Fleet-proxy test fixtures: an upstream HTTP server on 127.0.0.1 (files from a
// directory, ETag/Last-Modified with 304s, single byte ranges, an access log,
// switches to go down or to corrupt range bodies) and generated image releases
// (v1, v2 sharing most chunks) with their .caibx indexes and SHA256SUMS.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join, normalize, sep } from 'node:path';
import type { AddressInfo, Socket } from 'node:net';
import { indexBuffer } from '../../lib/chunking/indexer.js';
import { serializeIndex, type ChunkIndex } from '../../lib/format/caibx.js';
import type { TestContext } from 'node:test';
import { createProxy, type ProxyOptions, type ProxyServer } from '../../daemon/proxy.js';
import { DEFAULT_ALLOW } from '../../daemon/access.js';
import type { AccessEntry } from './origin.js';

export type { AccessEntry };

export interface Upstream {
  url: string;
  log: AccessEntry[];
  /** When true, every connection is destroyed at once (upstream unreachable). */
  down: boolean;
  /** When true, byte-range bodies have one byte flipped (a lying upstream). */
  corruptRanges: boolean;
  /** Body bytes sent so far. */
  bytesSent(): number;
  close(): Promise<void>;
}

export async function startUpstream(root: string): Promise<Upstream> {
  const sockets = new Set<Socket>();
  const up: Upstream = {
    url: '',
    log: [],
    down: false,
    corruptRanges: false,
    bytesSent: () => up.log.reduce((n, e) => n + e.bytes, 0),
    close: async () => {},
  };
  const server = createServer((req, res) => void handle(req, res));
  server.on('connection', (s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (up.down) return void req.socket.destroy();
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const entry: AccessEntry = { method: req.method ?? '', path, range: req.headers.range, status: 0, bytes: 0 };
    const send = (status: number, headers: Record<string, string | number>, body?: Buffer) => {
      entry.status = status;
      entry.bytes = req.method === 'HEAD' || !body ? 0 : body.length;
      up.log.push(entry);
      res.writeHead(status, { 'content-length': body?.length ?? 0, ...headers });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    const file = normalize(join(root, path));
    if (!file.startsWith(root + sep)) return send(400, {});
    let body: Buffer;
    let mtime: Date;
    try {
      body = await readFile(file);
      mtime = (await stat(file)).mtime;
    } catch {
      return send(404, {});
    }
    const etag = `"${createHash('sha256').update(body).digest('hex').slice(0, 16)}"`;
    const validators = {
      etag,
      'last-modified': mtime.toUTCString(),
      'accept-ranges': 'bytes',
      'content-type': 'application/octet-stream',
    };
    if (req.headers['if-none-match'] === etag) return send(304, validators);
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    if (m) {
      const start = Number(m[1]);
      const end = Math.min(Number(m[2]) + 1, body.length);
      const part = Buffer.from(body.subarray(start, end));
      if (up.corruptRanges) part[0] ^= 0xff;
      return send(206, { ...validators, 'content-range': `bytes ${start}-${end - 1}/${body.length}` }, part);
    }
    send(200, validators, body);
  }
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  up.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  up.close = () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const s of sockets) s.destroy();
    });
  return up;
}

export const FLEET_PARAMS = { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };

export interface Release {
  name: string;
  data: Buffer;
  index: ChunkIndex;
}

/**
 * Writes `os_<v>.img` (+ `.caibx`) for each version into dir, each version a
 * copy of the previous with `edits` random regions rewritten, and a SHA256SUMS
 * listing the images.
 */
export async function makeReleases(dir: string, size: number, versions: number, edits = 6): Promise<Release[]> {
  const out: Release[] = [];
  let data = randomBytes(size);
  for (let v = 1; v <= versions; v++) {
    if (v > 1) {
      data = Buffer.from(data);
      for (let e = 0; e < edits; e++) {
        const at = Math.floor(((e + 0.5) / edits) * (size - 40_000));
        randomBytes(30_000).copy(data, at);
      }
    }
    const name = `os_${v}.img`;
    const index = indexBuffer(data, { params: FLEET_PARAMS, digest: 'sha512-256' });
    await writeFile(join(dir, name), data);
    await writeFile(join(dir, `${name}.caibx`), serializeIndex(index));
    out.push({ name, data, index });
  }
  const sums = out.map((r) => `${createHash('sha256').update(r.data).digest('hex')}  ${r.name}\n`).join('');
  await writeFile(join(dir, 'SHA256SUMS'), sums);
  return out;
}

/** Range requests in the log whose byte span covers the chunk at [start, end). */
export function rangeFetchesOf(log: AccessEntry[], path: string, start: number, end: number): number {
  let n = 0;
  for (const e of log) {
    if (e.path !== path || e.status !== 206 || !e.range) continue;
    const m = /^bytes=(\d+)-(\d+)$/.exec(e.range);
    if (m && Number(m[1]) <= start && Number(m[2]) + 1 >= end) n++;
  }
  return n;
}

/**
 * A `deltad proxy` on 127.0.0.1 in front of `upstream`, closed after the test.
 * `beforeListen` may add fastify hooks. `url` ends with '/'.
 */
export async function startTestProxy(
  t: TestContext,
  upstream: string,
  cacheDir: string,
  over: Partial<ProxyOptions> = {},
  beforeListen?: (proxy: ProxyServer) => void,
): Promise<{ proxy: ProxyServer; url: string }> {
  const proxy = await createProxy({
    upstream: upstream.endsWith('/') ? upstream : upstream + '/',
    cacheDir,
    cacheMaxBytes: 256 * 1024 * 1024,
    allow: DEFAULT_ALLOW,
    maxPerClient: 64,
    imagePatterns: ['*.img'],
    indexSuffix: '.caibx',
    ...over,
  });
  t.after(() => proxy.close());
  beforeListen?.(proxy);
  await proxy.app.listen({ host: '127.0.0.1', port: 0 });
  return { proxy, url: `http://127.0.0.1:${(proxy.app.server.address() as AddressInfo).port}/` };
}
