// A minimal static file server on 127.0.0.1 for store tests (GET and HEAD,
// whole files only), with a request log and an `intercept` hook for faults:
//
//   const srv = await startStaticServer(dir, {
//     intercept: (req, res, n) => n === 1 ? (res.writeHead(500).end(), true) : false,
//   });
//   ... fetch `${srv.url}/path` ...; srv.log lists { method, path, status };
//   await srv.close();
//
// `n` counts requests per path (1 for the first). Returning true means the
// hook answered. The server closes its idle keep-alive connections on close().
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { readFile } from 'node:fs/promises';
import { join, normalize, sep } from 'node:path';
import type { AddressInfo } from 'node:net';

export interface StaticServer {
  url: string;
  log: { method: string; path: string; status: number }[];
  close(): Promise<void>;
}

export interface StaticServerOptions {
  intercept?: (req: IncomingMessage, res: ServerResponse, n: number) => boolean;
}

export async function startStaticServer(root: string, opts: StaticServerOptions = {}): Promise<StaticServer> {
  const log: StaticServer['log'] = [];
  const counts = new Map<string, number>();
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    res.on('finish', () => log.push({ method: req.method ?? '', path, status: res.statusCode }));
    const n = (counts.get(path) ?? 0) + 1;
    counts.set(path, n);
    if (opts.intercept?.(req, res, n)) return;
    const file = normalize(join(root, path));
    if (!file.startsWith(root + sep) || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(400).end();
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { 'content-length': body.length, 'content-type': 'application/octet-stream' });
      res.end(req.method === 'HEAD' ? undefined : body);
    } catch {
      res.writeHead(404, { 'content-length': 0 }).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    log,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
