// Sysupdate sidecar benchmark: the corpus's new image downloaded the way
// systemd-sysupdate does it (systemd-pull raw --direct --verify=<sha256>)
// through `deltad serve` seeded with the old image, against a plain full
// download, from nginx on 127.0.0.1, unshaped and shaped to 100 Mbit/s
// (limit_rate 12500k). Origin bytes and requests come from nginx's access
// log; client wall time and the daemon's peak RSS from GNU time (the daemon
// exits on its idle timeout after each run); time to first byte from curl.
//
//   npm run build && node dist/bench/daemon.js [PAIR]
//   PAIR: v1-v2.repro (default), v2-v3.repro, synth
//   BENCH=/var/tmp/deltad-bench (corpus in $BENCH/img, work files in $BENCH/deltad-daemon), PORT=8121 (uses 3)
import { startNginx, type Nginx } from './nginx.js';
import { DELTAD, daemonSite, pair as corpusPair, serveArgs } from './corpus.js';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadavg } from 'node:os';

const PULL = ['/usr/lib/systemd/systemd-pull', '/lib/systemd/systemd-pull'].find((p) => existsSync(p));
// Three ports from PORT (default 8121): nginx as is, nginx shaped, the daemon.
const PORT_FULL = Number(process.env.PORT ?? 8121);
const PORT_SHAPED = PORT_FULL + 1;
const DAEMON_PORT = PORT_FULL + 2;

interface Row {
  run: string;
  ok: boolean;
  wallS: number;
  originBytes: number;
  originRequests: number;
  daemonRssMiB?: number;
  ttfbS?: number;
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const b of createReadStream(path)) h.update(b as Buffer);
  return h.digest('hex');
}

/** The daemon under GNU time; it exits by itself (idle timeout) after the client is done. */
function startDaemon(work: string, origin: string, cacheDir: string) {
  const timeFile = join(work, 'daemon-time.txt');
  rmSync(timeFile, { force: true });
  const child = spawn(
    '/usr/bin/time',
    [
      '-f',
      '%M',
      '-o',
      timeFile,
      ...DELTAD,
      ...serveArgs({
        port: DAEMON_PORT,
        origin,
        seedGlob: join(work, 'system', '*.erofs'),
        imagePattern: '*.erofs',
        cacheDir,
        idleS: 1,
      }),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const ready = new Promise<void>((resolveReady, reject) => {
    child.stdout.on('data', (d) => String(d).includes('listening') && resolveReady());
    child.once('exit', (code) => reject(new Error(`daemon exited early (${code}): ${err}`)));
  });
  const exited = new Promise<number>((res) =>
    child.once('exit', () => res(Math.round(Number(readFileSync(timeFile, 'utf8').trim().split('\n').pop()) / 1024))),
  );
  return { ready, exited, log: () => err };
}

async function measure(
  run: string,
  client: string[],
  nginx: Nginx,
  port: number,
  out: string | null,
  expected: string,
  daemon?: ReturnType<typeof startDaemon>,
): Promise<Row> {
  const before = nginx.entries().length;
  if (out) rmSync(out, { force: true });
  const started = process.hrtime.bigint();
  const r = spawnSync(client[0], client.slice(1), { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  const wallS = Number(process.hrtime.bigint() - started) / 1e9;
  const rss = daemon ? await daemon.exited : undefined;
  spawnSync('sleep', ['0.3']);
  const lines = nginx
    .entries()
    .slice(before)
    .filter((e) => e.port === port);
  const ok = r.status === 0 && (out === null || (await sha256File(out)) === expected);
  if (!ok)
    process.stderr.write(`${run}: exit ${r.status}\n${r.stderr.slice(-2000)}\n${daemon?.log().slice(-2000) ?? ''}\n`);
  const row: Row = {
    run,
    ok,
    wallS: Number(wallS.toFixed(2)),
    originBytes: lines.reduce((n, e) => n + e.bodyBytes, 0),
    originRequests: lines.length,
    daemonRssMiB: rss,
  };
  if (out === null) row.ttfbS = Number(Number(r.stdout.trim()).toFixed(3));
  process.stderr.write(
    `[${new Date().toISOString().slice(11, 19)} load ${loadavg()[0].toFixed(1)}] ${JSON.stringify(row)}\n`,
  );
  if (out) rmSync(out, { force: true });
  return row;
}

async function main(): Promise<void> {
  if (!PULL) throw new Error('systemd-pull is required (Debian: systemd-container)');
  const pair = process.argv[2] ?? 'v1-v2.repro';
  const p = corpusPair(pair);
  const { oldName, newName } = p;
  // Published: os_2.erofs, its index and SHA256SUMS; installed: os_1.erofs (bench/corpus.ts, shared with bench/net-daemon.ts).
  const site = daemonSite(p);
  const { work, www } = site;
  const expected = site.sha256;
  const size = p.newSize;

  const nginx = startNginx(join(work, 'nginx'), [
    { port: PORT_FULL, root: www },
    { port: PORT_SHAPED, root: www, limitRate: '12500k' },
  ]);
  const out = join(work, 'out.erofs');
  const cacheDir = join(work, 'cache');
  const rows: Row[] = [];
  const load = loadavg();
  try {
    const pull = (url: string) => [PULL, 'raw', '--direct', `--verify=${expected}`, '--sync=no', url, out];
    const ttfb = (url: string) => ['curl', '-sS', '-o', '/dev/null', '-w', '%{time_starttransfer}', url];
    const viaDaemon = async (run: string, port: number, client: (url: string) => string[], target: string | null) => {
      const d = startDaemon(work, `http://127.0.0.1:${port}/`, cacheDir);
      await d.ready;
      return measure(run, client(`http://127.0.0.1:${DAEMON_PORT}/os_2.erofs`), nginx, port, target, expected, d);
    };
    rows.push(
      await measure(
        'full download (systemd-pull from nginx)',
        pull(`http://127.0.0.1:${PORT_FULL}/os_2.erofs`),
        nginx,
        PORT_FULL,
        out,
        expected,
      ),
    );
    rmSync(cacheDir, { recursive: true, force: true });
    rows.push(await viaDaemon('deltad, cold (first request chunks the seed)', PORT_FULL, pull, out));
    // The cold run adopted nothing (os_2 is not installed), but the seed index is cached now.
    rows.push(await viaDaemon('deltad, warm seed index', PORT_FULL, pull, out));
    rows.push(await viaDaemon('deltad, warm: time to first byte (curl)', PORT_FULL, ttfb, null));
    rows.push(
      await measure(
        'full download, 100 Mbit/s',
        pull(`http://127.0.0.1:${PORT_SHAPED}/os_2.erofs`),
        nginx,
        PORT_SHAPED,
        out,
        expected,
      ),
    );
    rows.push(await viaDaemon('deltad, warm, 100 Mbit/s', PORT_SHAPED, pull, out));
    rows.push(await viaDaemon('deltad, warm, 100 Mbit/s: time to first byte (curl)', PORT_SHAPED, ttfb, null));
  } finally {
    nginx.stop();
  }
  writeFileSync(join(work, 'results.json'), JSON.stringify({ pair, size, load, rows }, null, 2));
  console.log(
    `\n### ${pair}: ${newName} (${size.toLocaleString('en')} bytes), seed ${oldName} (load before ${load.map((l) => l.toFixed(1)).join(' ')}, after ${loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')})\n`,
  );
  console.log(
    '| run | ok | origin bytes | origin requests | client wall s | daemon peak RSS MiB | time to first byte s |',
  );
  console.log('|---|---|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(
      `| ${r.run} | ${r.ok ? 'yes' : 'NO'} | ${r.originBytes.toLocaleString('en')} | ${r.originRequests} | ${r.ttfbS === undefined ? r.wallS : '-'} | ${r.daemonRssMiB ?? '-'} | ${r.ttfbS ?? '-'} |`,
    );
  }
}

await main();
