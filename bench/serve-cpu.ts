// The sidecar's CPU by thread on the block path, on loopback: nginx (https, HTTP/2) serving the release with its
// block pack → `deltad serve` seeded with the old image → curl | sha256sum. No shaped link, so a run is short and
// moves less with the machine's load than bench/net-daemon.ts. Per run: the daemon's CPU seconds after it listens,
// by thread (main, V8's helper threads: GC and compilers, worker threads: the hashing thread, libuv's pool: file
// reads), its full garbage collections (--trace-gc), its peak RSS, and whether the client got the right SHA-256.
// The daemon runs as node with bin/deltad's settings (1 MiB semi-spaces, glibc's mmap threshold and arenas) and
// --trace-gc; --tree runs another built checkout's dist/ the same way (before/after in one run).
//
//   npm run build && node dist/bench/serve-cpu.js [--pair v1-v2.repro] [--runs 3] [--port 8430]
//        [--tree /path/to/other/checkout,...] [--node-args '--max-semi-space-size=8']
//   BENCH=/var/tmp/deltad-bench (site shared with bench/net-daemon.ts: $BENCH/deltad-daemon/<pair>/)
import { startNginx } from './nginx.js';
import { makeTestCa } from './tls.js';
import { startMeasured, threadCpu } from './measure.js';
import { CLI, blockPack, daemonSite, link, pair, serveArgs, sh } from './corpus.js';
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    pair: { type: 'string', default: 'v1-v2.repro' },
    runs: { type: 'string', default: '3' },
    port: { type: 'string', default: '8430' },
    tree: { type: 'string', default: '' },
    'node-args': { type: 'string', default: '' },
  },
});
const PORT = Number(values.port);
const DAEMON_PORT = PORT + 1;
const THIS_TREE = dirname(dirname(dirname(CLI)));

interface Row {
  tree: string;
  ok: boolean;
  wallS: number;
  cpuS: Record<string, number>;
  fullGcs: number;
  peakRssMiB: number;
  load: string;
}

async function once(tree: string, origin: string, site: ReturnType<typeof daemonSite>, cache: string, ca: string) {
  const cli = join(tree, 'dist', 'daemon', 'cli.js');
  const env = { ...process.env, MALLOC_ARENA_MAX: '2', MALLOC_MMAP_THRESHOLD_: '131072' };
  let ready = (): void => {};
  const listening = new Promise<void>((r) => (ready = r));
  const extra = values['node-args']!.split(' ').filter(Boolean);
  const d = startMeasured(
    [
      process.execPath,
      '--max-semi-space-size=1',
      '--memory-saver-mode',
      '--trace-gc',
      ...extra,
      cli,
      ...serveArgs({
        port: DAEMON_PORT,
        origin,
        seedGlob: join(site.system, '*.erofs'),
        imagePattern: '*.erofs',
        cacheDir: cache,
      }),
      '--ca-file',
      ca,
    ],
    { env, timeoutS: 600, onStdout: (s) => s.includes('listening') && ready() },
  );
  await Promise.race([listening, d.done]);
  const threads = threadCpu(d.pid());
  const load = loadavg()[0].toFixed(1);
  const t0 = performance.now();
  const client = await new Promise<string>((resolve) => {
    const c = spawn('sh', ['-c', `curl -sS --fail http://127.0.0.1:${DAEMON_PORT}/os_2.erofs | sha256sum`]);
    let out = '';
    c.stdout.on('data', (b) => (out += b));
    c.on('close', () => resolve(out));
  });
  const wallS = (performance.now() - t0) / 1000;
  const m = await d.done;
  const cpu = threads.stop();
  return {
    tree,
    ok: client.startsWith(site.sha256),
    wallS: Number(wallS.toFixed(2)),
    cpuS: cpu,
    fullGcs: m.stdout.split('\n').filter((l) => l.includes('Mark-Compact')).length,
    peakRssMiB: Math.round(m.peakRssMiB),
    load,
  } satisfies Row;
}

async function main(): Promise<void> {
  const p = pair(values.pair!);
  const site = daemonSite(p);
  const packed = join(site.www, 'packed');
  mkdirSync(packed, { recursive: true });
  for (const f of ['os_2.erofs', 'os_2.erofs.caibx', 'SHA256SUMS']) link(join(site.www, f), join(packed, f));
  for (const f of blockPack(p).files) link(f, join(packed, `os_2.erofs${f.slice(f.lastIndexOf('.'))}`));
  const work = join(site.work, `cpu-${PORT}`);
  const ca = makeTestCa(join(work, 'tls'));
  const nginx = startNginx(join(work, 'nginx'), [
    { port: PORT, root: site.www, tls: { cert: ca.cert, key: ca.key }, http2: true },
  ]);
  const origin = `https://127.0.0.1:${PORT}/packed/`;
  const cache = join(work, 'cache');
  const trees = [THIS_TREE, ...values.tree!.split(',').filter(Boolean)];
  const rows: Row[] = [];
  try {
    // The installed image's indexes (chunks and blocks) are made once and kept, as a running sidecar has them.
    rmSync(cache, { recursive: true, force: true });
    sh(
      process.execPath,
      [CLI, 'plan', '--json', '--seed', site.seed, '--cache-dir', cache, '--ca-file', ca.caCert].concat([
        '--range-url',
        `${origin}os_2.erofs`,
        `${site.image}.caibx`,
      ]),
    );
    for (let run = 0; run < Number(values.runs); run++) {
      for (const tree of trees) {
        const row = await once(tree, origin, site, cache, ca.caCert);
        process.stderr.write(`${JSON.stringify(row)}\n`);
        rows.push(row);
      }
    }
  } finally {
    nginx.stop();
  }
  console.log(
    `\n${p.name}, deltad serve on loopback (https+h2 origin, curl), block path; ${new Date().toISOString()}\n`,
  );
  console.log(
    '| tree | ok | load | wall s | CPU s: total | main | V8 helpers | worker threads | libuv | full GCs | peak RSS MiB |',
  );
  console.log('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    const c = r.cpuS;
    const total = Object.values(c).reduce((a, b) => a + b, 0);
    const cells = [r.tree, r.ok ? 'yes' : 'NO', r.load, r.wallS, total.toFixed(2)];
    cells.push(...['main', 'v8', 'worker', 'libuv'].map((k) => c[k] ?? 0), r.fullGcs, r.peakRssMiB);
    console.log(`| ${cells.join(' | ')} |`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
