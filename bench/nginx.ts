// nginx on 127.0.0.1 for the benchmarks: the reference static origin (sendfile,
// keep-alive, multi-range up to 10000 ranges), with an access log that the
// benchmarks read to count what each client downloaded. A server can serve
// https with HTTP/2 (a certificate from bench/tls.ts); nginx must have the ssl
// and http_v2 modules (Debian's nginx-light and nginx do; see nginxFeatures).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface NginxServer {
  port: number;
  root: string;
  /** nginx limit_rate per connection, e.g. '12500k' (100 Mbit/s). */
  limitRate?: string;
  /** Serve https with this certificate and key (PEM files). */
  tls?: { cert: string; key: string };
  /** With tls: offer HTTP/2 (ALPN h2, falling back to http/1.1). */
  http2?: boolean;
}

/** One access-log line. */
export interface AccessEntry {
  port: number;
  method: string;
  uri: string;
  status: number;
  /** Response body bytes ($body_bytes_sent). */
  bodyBytes: number;
  /** Everything sent, headers and multipart framing included ($bytes_sent). */
  wireBytes: number;
  range: string;
  /** HTTP/1.1 or HTTP/2.0 ($server_protocol). */
  protocol: string;
  /** nginx's connection serial number: distinct values = connections used. */
  connection: number;
  /** Seconds from the first request byte to the last response byte sent ($request_time). */
  requestTime: number;
}

export interface Nginx {
  /** Access-log entries written so far (nginx logs a request when it ends). */
  entries(): AccessEntry[];
  stop(): void;
}

export interface NginxFeatures {
  version: string;
  ssl: boolean;
  http2: boolean;
  /** nginx >= 1.25.1 takes `http2 on;`, older ones `listen ... ssl http2`. */
  http2Directive: boolean;
}

/** What the installed nginx supports (`nginx -V`). */
export function nginxFeatures(): NginxFeatures {
  const r = spawnSync('nginx', ['-V'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error('nginx not found: install nginx-light (scripts/test-deps.sh)');
  const out = r.stderr + r.stdout;
  const version = /nginx\/(\d+\.\d+\.\d+)/.exec(out)?.[1] ?? '0.0.0';
  const [a, b, c] = version.split('.').map(Number);
  return {
    version,
    ssl: out.includes('--with-http_ssl_module'),
    http2: out.includes('--with-http_v2_module'),
    http2Directive: a > 1 || (a === 1 && (b > 25 || (b === 25 && c >= 1))),
  };
}

function serverBlock(s: NginxServer, features: () => NginxFeatures): string {
  const common = `root ${s.root}; max_ranges 10000;${s.limitRate ? ` limit_rate ${s.limitRate};` : ''}`;
  if (!s.tls) return `  server { listen 127.0.0.1:${s.port}; ${common} }`;
  const f = features();
  if (!f.ssl || (s.http2 && !f.http2)) {
    throw new Error(`nginx ${f.version} lacks the ${f.ssl ? 'http_v2' : 'ssl'} module: install nginx-light or nginx`);
  }
  const h2 = s.http2 ? (f.http2Directive ? ' http2 on;' : '') : '';
  const listen = `listen 127.0.0.1:${s.port} ssl${s.http2 && !f.http2Directive ? ' http2' : ''};`;
  return `  server { ${listen}${h2} ssl_certificate ${s.tls.cert}; ssl_certificate_key ${s.tls.key}; ${common} }`;
}

/** Starts nginx with its config, logs and temp files under `dir`. */
export function startNginx(dir: string, servers: NginxServer[]): Nginx {
  mkdirSync(join(dir, 'logs'), { recursive: true });
  mkdirSync(join(dir, 'tmp'), { recursive: true });
  const log = join(dir, 'logs', 'access.log');
  rmSync(log, { force: true });
  const conf = join(dir, 'nginx.conf');
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']
    .map((t) => `  ${t}_temp_path ${dir}/tmp;`)
    .join('\n');
  let features: NginxFeatures | undefined;
  const serverLines = servers.map((s) => serverBlock(s, () => (features ??= nginxFeatures()))).join('\n');
  writeFileSync(
    conf,
    `worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log;
events { worker_connections 1024; }
http {
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 1000000;
${temp}
  log_format bench '$server_port $request_method $uri $status $body_bytes_sent $bytes_sent '
                   '$server_protocol $connection $request_time "$http_range"';
  access_log ${log} bench;
${serverLines}
}
`,
  );
  const r = spawnSync('nginx', ['-c', conf, '-p', dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`nginx failed to start: ${r.stderr}`);
  let stopped = false;
  const stop = (): void => {
    if (stopped) return;
    stopped = true;
    process.off('exit', stop); // one listener per nginx still running, not per nginx ever started
    spawnSync('nginx', ['-c', conf, '-p', dir, '-s', 'stop']);
  };
  process.on('exit', stop);
  return {
    entries: () => (existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter(Boolean).map(parseEntry) : []),
    stop,
  };
}

function parseEntry(line: string): AccessEntry {
  const [port, method, uri, status, body, wire, protocol, connection, requestTime, ...range] = line.split(' ');
  return {
    protocol,
    connection: Number(connection),
    requestTime: Number(requestTime),
    port: Number(port),
    method,
    uri,
    status: Number(status),
    bodyBytes: Number(body),
    wireBytes: Number(wire),
    range: range.join(' ').replace(/^"|"$/g, ''),
  };
}
