// The demo's update server: a static file server on 127.0.0.1 (GET, HEAD,
// byte ranges, several per request) that counts the body bytes it sends per path, so the
// demo can show what actually crossed the "network".
import { createServer, type Server } from 'node:http';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';

const BOUNDARY = 'deltad-demo-origin';

/** "bytes=a-b,c-d" → sorted half-open ranges clipped to size; undefined without (or with a malformed) Range; [] when unsatisfiable. */
function parseRanges(header: string | undefined, size: number): { start: number; end: number }[] | undefined {
  const m = /^bytes=(\d+-\d*(?:,\s*\d+-\d*)*)$/.exec(header ?? '');
  if (!m) return undefined;
  return m[1]
    .split(',')
    .map((spec) => {
      const [a, b] = spec.trim().split('-');
      return { start: Number(a), end: Math.min(size, b ? Number(b) + 1 : size) };
    })
    .filter((r) => r.start < r.end);
}

export interface DemoOrigin {
  url: string;
  /** Body bytes and requests served, by request path. */
  served: Map<string, { bytes: number; requests: number }>;
  close(): Promise<void>;
}

export async function startDemoOrigin(dir: string): Promise<DemoOrigin> {
  const served = new Map<string, { bytes: number; requests: number }>();
  const server: Server = createServer(async (req, res) => {
    const name = decodeURIComponent((req.url ?? '/').split('?')[0]).slice(1);
    // Flat directory: a name with a separator is never a published file.
    if (!/^[A-Za-z0-9._-]+$/.test(name) || name.startsWith('.'))
      return void res.writeHead(404, { 'content-length': 0 }).end();
    let data: Buffer;
    try {
      data = await readFile(join(dir, name));
    } catch {
      return void res.writeHead(404, { 'content-length': 0 }).end();
    }
    const ranges = parseRanges(req.headers.range, data.length);
    let body = data;
    const headers: Record<string, string | number> = {
      'accept-ranges': 'bytes',
      'content-type': 'application/octet-stream',
    };
    let status = 200;
    if (ranges?.length === 0)
      return void res.writeHead(416, { 'content-range': `bytes */${data.length}`, 'content-length': 0 }).end();
    if (ranges?.length === 1) {
      const [{ start, end }] = ranges;
      body = data.subarray(start, end);
      status = 206;
      headers['content-range'] = `bytes ${start}-${end - 1}/${data.length}`;
    } else if (ranges) {
      // Several ranges in one answer (multipart/byteranges), as nginx and most CDNs do.
      const parts = ranges.flatMap(({ start, end }) => [
        Buffer.from(
          `\r\n--${BOUNDARY}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes ${start}-${end - 1}/${data.length}\r\n\r\n`,
        ),
        data.subarray(start, end),
      ]);
      body = Buffer.concat([...parts, Buffer.from(`\r\n--${BOUNDARY}--\r\n`)]);
      status = 206;
      headers['content-type'] = `multipart/byteranges; boundary=${BOUNDARY}`;
    }
    headers['content-length'] = body.length;
    res.writeHead(status, headers);
    if (req.method === 'HEAD') return void res.end();
    const s = served.get(`/${name}`) ?? { bytes: 0, requests: 0 };
    s.bytes += body.length;
    s.requests++;
    served.set(`/${name}`, s);
    res.end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    served,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
