// nginx on 127.0.0.1 for the benchmarks: the reference static origin (sendfile,
// keep-alive, multi-range up to 10000 ranges), with an access log that the
// benchmarks read to count what each client downloaded.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface NginxServer {
  port: number;
  root: string;
  /** nginx limit_rate per connection, e.g. '12500k' (100 Mbit/s). */
  limitRate?: string;
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
}

export interface Nginx {
  /** Access-log entries written so far (nginx logs a request when it ends). */
  entries(): AccessEntry[];
  stop(): void;
}

/** Starts nginx with its config, logs and temp files under `dir`. */
export function startNginx(dir: string, servers: NginxServer[]): Nginx {
  mkdirSync(join(dir, 'logs'), { recursive: true });
  mkdirSync(join(dir, 'tmp'), { recursive: true });
  const log = join(dir, 'logs', 'access.log');
  rmSync(log, { force: true });
  const conf = join(dir, 'nginx.conf');
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${dir}/tmp;`).join('\n');
  const serverLines = servers
    .map((s) => `  server { listen 127.0.0.1:${s.port}; root ${s.root}; max_ranges 10000;${s.limitRate ? ` limit_rate ${s.limitRate};` : ''} }`)
    .join('\n');
  writeFileSync(conf, `worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log;
events { worker_connections 256; }
http {
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 1000000;
${temp}
  log_format bench '$server_port $request_method $uri $status $body_bytes_sent $bytes_sent "$http_range"';
  access_log ${log} bench;
${serverLines}
}
`);
  const r = spawnSync('nginx', ['-c', conf, '-p', dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`nginx failed to start: ${r.stderr}`);
  let stopped = false;
  const stop = (): void => {
    if (stopped) return;
    stopped = true;
    spawnSync('nginx', ['-c', conf, '-p', dir, '-s', 'stop']);
  };
  process.on('exit', stop);
  return {
    entries: () => (existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter(Boolean).map(parseEntry) : []),
    stop,
  };
}

function parseEntry(line: string): AccessEntry {
  const [port, method, uri, status, body, wire, ...range] = line.split(' ');
  return {
    port: Number(port),
    method,
    uri,
    status: Number(status),
    bodyBytes: Number(body),
    wireBytes: Number(wire),
    range: range.join(' ').replace(/^"|"$/g, ''),
  };
}
