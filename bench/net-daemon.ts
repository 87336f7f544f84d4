// The sysupdate sidecar over real link conditions: `deltad serve` seeded with
// the old image, its origin (nginx, https with HTTP/2 offered, or plain http)
// behind the shaped relay (bench/relay.ts), and systemd-pull exactly as
// systemd-sysupdate runs it (raw --direct --verify=<sha256>) as the client on
// loopback. Per link: a full download with systemd-pull straight from the
// origin through the same link, then the update through the daemon: client
// wall time against 1.15 × origin bytes / rate + 2 s, time to first body byte
// (seen by a tap between client and daemon), the daemon's disk writes and
// peak RSS (kernel counters at its exit, bench/measure.ts), and whether it
// fell back to a full download (an unranged 200 for the image at the origin).
// Then N concurrent clients (curl) of the same image through one daemon:
// origin requests and daemon memory.
//
//   npm run build && node dist/bench/net-daemon.js [--pair v1-v2.repro] [--links 100mbit:40:h2,5mbit:40:h2]
//        [--clients 200] [--clients-link 100mbit:40:h2] [--max-run-s 600] [--full-max-s 60] [--port 8141]
//        [--daemon-args '--concurrency 8']   (extra `deltad serve` flags; --ca-file is passed when serve has it)
//        [--block-pack]   (per link, one more update from an origin that hosts the release's block pack beside
//                          the image, www/packed/: the daemon's block path)
//        [--skip full,range]   (leave out the full download or the range-path update per link)
//        [--first-byte-mib N]   (the updates through the daemon read only the image's first N MiB, checked against
//                                the image, then hang up: the first body byte of an image too large to download
//                                over a slow link in a run, e.g. --pair big, 4.6 GiB, whose index alone is 2.9 MB)
//        [--announced]   (per update one more run as systemd-sysupdate goes: SHA256SUMS through the daemon with
//                         systemd-pull, which follows its redirect to the origin, then after --gap-ms (100) the
//                         image; the daemon prepares the image as the manifest passes. First body byte from the
//                         image request's start)
//   DAEMON_NODE_OPTIONS='--cpu-prof --cpu-prof-dir=/tmp/prof'   (NODE_OPTIONS for the daemon only, e.g. a profile)
//   BENCH=/var/tmp/deltad-bench (site shared with bench/daemon.ts: $BENCH/deltad-daemon/<pair>/)
import { startNginx, type AccessEntry, type Nginx } from './nginx.js';
import { startRelay, selfCheck, describeCheck, parseRate, type LinkShape, type SelfCheck } from './relay.js';
import { makeTestCa, withCaBundle, type TestCa } from './tls.js';
import { runMeasured, startMeasured, threadCpu, type MeasuredProcess } from './measure.js';
import {
  BENCH,
  CLI,
  DELTAD,
  blockPack,
  daemonSite,
  link,
  pair,
  serveArgs,
  sh,
  type DaemonSite,
  type Pair,
} from './corpus.js';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    pair: { type: 'string', default: 'v1-v2.repro' },
    links: { type: 'string', default: '100mbit:40:h2,5mbit:40:h2' },
    clients: { type: 'string', default: '200' },
    'clients-link': { type: 'string', default: '100mbit:40:h2' },
    'max-run-s': { type: 'string', default: '600' },
    'full-max-s': { type: 'string', default: '60' },
    port: { type: 'string', default: '8141' },
    'daemon-args': { type: 'string', default: '' },
    'block-pack': { type: 'boolean', default: false },
    skip: { type: 'string', default: '' },
    announced: { type: 'boolean', default: false },
    'gap-ms': { type: 'string', default: '100' },
    'first-byte-mib': { type: 'string', default: '0' },
  },
});
const FIRST_BYTES = Number(values['first-byte-mib']) * 1024 * 1024;
const PORT = Number(values.port);
const DAEMON_PORT = PORT + 2;
const MAX_RUN_S = Number(values['max-run-s']);
const SKIP = new Set(values.skip!.split(',').filter(Boolean));
const PULL = ['/usr/lib/systemd/systemd-pull', '/lib/systemd/systemd-pull'].find((f) => existsSync(f));

interface LinkSpec {
  label: string;
  shape: LinkShape;
  tls: boolean;
}

/** " (main / V8 / worker / libuv)" of a threadCpu() result, for the table. */
function threadsCell(t: Record<string, number> | undefined): string {
  if (!t) return '';
  return ` (${['main', 'v8', 'worker', 'libuv'].map((k) => t[k] ?? 0).join(' / ')})`;
}

function parseLink(s: string): LinkSpec {
  const [rate, rtt, proto] = s.split(':');
  if (!rate || rtt === undefined || (proto !== 'h1' && proto !== 'h2'))
    throw new Error(`link "${s}": expected RATE:RTT_MS:h1|h2`);
  return {
    label: `${rate} ${rtt} ms ${proto === 'h1' ? 'http/1.1' : 'https+h2'}`,
    shape: { rateBitsPerS: parseRate(rate), rttMs: Number(rtt) },
    tls: proto === 'h2',
  };
}

/**
 * A transparent TCP tap in front of the daemon: the time the first body byte
 * of an HTTP response passes (after its header block), per connection.
 */
interface Tap {
  port: number;
  firstBodyAt(): number | undefined;
  /** Forgets the first body byte seen so far (the next response's counts). */
  reset(): void;
  close(): Promise<void>;
}

async function startTap(toPort: number): Promise<Tap> {
  let first: number | undefined;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(toPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    let head = '';
    let inBody = false;
    upstream.on('data', (d: Buffer) => {
      if (!inBody) {
        head += d.toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end >= 0 && head.length > end + 4 && /^HTTP\/1\.[01] 200/.test(head)) {
          inBody = true;
          first ??= performance.now();
        }
      }
    });
    client.pipe(upstream).pipe(client);
    const close = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    firstBodyAt: () => first,
    reset: () => void (first = undefined),
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

function daemonHasCaFile(): boolean {
  const help = spawnSync(process.execPath, [CLI, 'serve', '--help'], { encoding: 'utf8' });
  return `${help.stdout}${help.stderr}`.includes('--ca-file');
}

/**
 * GETs `url` until `bytes` body bytes have come, compares them with the start of `image`, then hangs up (as
 * runMeasured's answer: code 0 when they matched).
 */
async function firstBytes(
  url: string,
  bytes: number,
  image: string,
): Promise<{ code: number; timedOut: boolean; wallS: number; writeBytes: number; stderr: string }> {
  const t0 = performance.now();
  const want = Buffer.alloc(bytes);
  const fd = openSync(image, 'r');
  const n = readSync(fd, want, 0, bytes, 0);
  closeSync(fd);
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let got = 0;
    const done = (code: number, stderr: string, timedOut = false): void => {
      clearTimeout(timer);
      req.destroy();
      resolve({ code, timedOut, wallS: (performance.now() - t0) / 1000, writeBytes: 0, stderr });
    };
    const timer = setTimeout(() => done(1, `no ${bytes} bytes within ${MAX_RUN_S} s`, true), MAX_RUN_S * 1000);
    const req = http.get(url, (res) => {
      if (res.statusCode !== 200) return done(1, `HTTP ${res.statusCode}`);
      res.on('data', (b: Buffer) => {
        parts.push(b);
        got += b.length;
        if (got < n) return;
        const same = Buffer.concat(parts).subarray(0, n).equals(want.subarray(0, n));
        done(same ? 0 : 1, same ? '' : `the first ${n} bytes differ from the image's`);
      });
      res.on('end', () => got < n && done(1, `the body ended after ${got} bytes`));
    });
    req.on('error', (err) => done(1, err.message));
  });
}

interface Daemon {
  proc: MeasuredProcess;
  ready: Promise<void>;
}

function startDaemon(site: DaemonSite, origin: string, cacheDir: string, ca: TestCa | null): Daemon {
  const caArgs = ca && daemonHasCaFile() ? ['--ca-file', ca.caCert] : [];
  const env = {
    ...process.env,
    ...(ca && !caArgs.length ? { NODE_EXTRA_CA_CERTS: ca.caCert } : {}),
    ...(process.env.DAEMON_NODE_OPTIONS ? { NODE_OPTIONS: process.env.DAEMON_NODE_OPTIONS } : {}),
  };
  let resolveReady = (): void => {};
  const ready = new Promise<void>((r) => (resolveReady = r));
  const proc = startMeasured(
    [
      'nice',
      '-n',
      '5',
      ...DELTAD,
      ...serveArgs({
        port: DAEMON_PORT,
        origin,
        seedGlob: join(site.system, '*.erofs'),
        imagePattern: '*.erofs',
        cacheDir,
      }),
      ...caArgs,
      ...values['daemon-args']!.split(' ').filter(Boolean),
    ],
    { env, timeoutS: MAX_RUN_S + 60, onStdout: (d) => d.includes('listening') && resolveReady() },
  );
  return {
    proc,
    ready: Promise.race([
      ready,
      proc.done.then((m) => {
        throw new Error(`daemon exited early (${m.code}): ${m.stderr.slice(-1500)}`);
      }),
    ]),
  };
}

interface PullRow {
  link: string;
  run: string;
  ok: boolean;
  wallS: number;
  /** 1.15 × origin bytes / rate + 2 s (the target for a delta through the daemon). */
  targetS?: number;
  ttfbS?: number;
  originBytes: number;
  requests: number;
  connections: number;
  protocols: string;
  fellBack?: boolean;
  clientWriteBytes: number;
  daemonRssMiB?: number;
  /** The daemon's user + system CPU seconds over its whole life (start, the update, idle exit). */
  daemonCpuS?: number;
  /** By thread (threadCpu), from when it listens until it exits. */
  daemonThreadCpuS?: Record<string, number>;
  daemonWriteBytes?: number;
  note: string;
}

/** This run's own directory (TLS, nginx, cache, output): runs on other ports may share the site at the same time. */
const runDir = (site: DaemonSite): string => join(site.work, `net-${PORT}`);

const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 400));

function originSummary(entries: AccessEntry[]) {
  return {
    originBytes: entries.reduce((n, e) => n + e.bodyBytes, 0),
    requests: entries.length,
    connections: new Set(entries.map((e) => e.connection)).size,
    protocols: [...new Set(entries.map((e) => e.protocol))].join(' '),
    // The daemon probes with a 1-byte range; a full fetch of the image is an unranged 200 with a large body.
    fellBack: entries.some(
      (e) =>
        e.uri.endsWith('/os_2.erofs') &&
        e.status === 200 &&
        (e.range === '-' || e.range === '') &&
        e.bodyBytes > 1 << 20,
    ),
  };
}

async function fullDownload(
  spec: LinkSpec,
  site: DaemonSite,
  p: Pair,
  base: string,
  ca: TestCa | null,
  nginx: Nginx,
  port: number,
  linkDown: () => number,
): Promise<PullRow> {
  const downBefore = linkDown();
  const out = join(runDir(site), 'out.erofs');
  rmSync(out, { force: true });
  const before = nginx.entries().length;
  const pull = [PULL!, 'raw', '--direct', `--verify=${site.sha256}`, '--sync=no', `${base}/os_2.erofs`, out];
  const m = await runMeasured(['nice', '-n', '5', ...(ca ? withCaBundle(ca.bundle, pull) : pull)], {
    timeoutS: Number(values['full-max-s']),
  });
  await settle();
  const o = originSummary(
    nginx
      .entries()
      .slice(before)
      .filter((e) => e.port === port),
  );
  const ok = !m.timedOut && m.code === 0;
  // What passed the link, not what nginx handed to its socket (buffers hold megabytes more).
  const perS = (linkDown() - downBefore) / m.wallS;
  const note = m.timedOut
    ? `stopped at ${values['full-max-s']} s; at that rate the whole image takes ${(p.newSize / perS).toFixed(0)} s`
    : ok
      ? ''
      : `FAILED (exit ${m.code}): ${m.stderr.trim().slice(-300)}`;
  rmSync(out, { force: true });
  const { fellBack: _unused, ...rest } = o;
  void _unused;
  return {
    link: spec.label,
    run: 'full download (systemd-pull from the origin)',
    ok,
    wallS: Number(m.wallS.toFixed(2)),
    ...rest,
    clientWriteBytes: m.writeBytes,
    note,
  };
}

async function viaDaemon(
  spec: LinkSpec,
  site: DaemonSite,
  base: string,
  ca: TestCa | null,
  nginx: Nginx,
  port: number,
  cacheDir: string,
  packed = false,
  announced = false,
): Promise<PullRow> {
  const out = join(runDir(site), 'out.erofs');
  rmSync(out, { force: true });
  const d = startDaemon(site, `${base}/${packed ? 'packed/' : ''}`, cacheDir, ca);
  await d.ready;
  const threads = threadCpu(d.proc.pid());
  const tap = await startTap(DAEMON_PORT);
  const before = nginx.entries().length;
  let sumsNote = '';
  if (announced) {
    // As systemd-sysupdate goes: the manifest first (the daemon redirects it; systemd-pull follows to the origin).
    const sums = join(runDir(site), 'SHA256SUMS.pulled');
    const pull = [
      PULL!,
      'raw',
      '--direct',
      '--verify=no',
      '--sync=no',
      `http://127.0.0.1:${tap.port}/SHA256SUMS`,
      sums,
    ];
    const m = await runMeasured(['nice', '-n', '5', ...(ca ? withCaBundle(ca.bundle, pull) : pull)], { timeoutS: 60 });
    if (m.code !== 0) throw new Error(`systemd-pull of SHA256SUMS failed (${m.code}): ${m.stderr.slice(-500)}`);
    rmSync(sums, { force: true });
    await new Promise((r) => setTimeout(r, Number(values['gap-ms'])));
    tap.reset();
    sumsNote = `SHA256SUMS ${m.wallS.toFixed(2)} s, then ${values['gap-ms']} ms; `;
  }
  const t0 = performance.now();
  const imageUrl = `http://127.0.0.1:${tap.port}/os_2.erofs`;
  const m =
    FIRST_BYTES > 0
      ? await firstBytes(imageUrl, FIRST_BYTES, site.image)
      : await runMeasured(
          ['nice', '-n', '5', PULL!, 'raw', '--direct', `--verify=${site.sha256}`, '--sync=no', imageUrl, out],
          { timeoutS: MAX_RUN_S },
        );
  const first = tap.firstBodyAt();
  await tap.close();
  const live = d.proc.sample();
  const dm = await d.proc.done;
  // The daemon's log of the run, for reading where its time went.
  const logName = `daemon-${spec.label.replace(/[^a-z0-9]+/gi, '-')}${packed ? '-packed' : ''}${announced ? '-announced' : ''}.log`;
  writeFileSync(join(runDir(site), logName), dm.stderr);
  const daemonThreadCpuS = threads.stop();
  await settle();
  const o = originSummary(
    nginx
      .entries()
      .slice(before)
      .filter((e) => e.port === port),
  );
  const ok = !m.timedOut && m.code === 0 && (FIRST_BYTES > 0 || spawnSync('cmp', ['-s', out, site.image]).status === 0);
  rmSync(out, { force: true });
  const targetS =
    spec.shape.rateBitsPerS && FIRST_BYTES === 0 ? (1.15 * o.originBytes * 8) / spec.shape.rateBitsPerS + 2 : undefined;
  const wallS = Number(m.wallS.toFixed(2));
  let note =
    sumsNote +
    (targetS === undefined
      ? FIRST_BYTES > 0
        ? `first ${values['first-byte-mib']} MiB only, identical to the image's`
        : ''
      : wallS <= targetS
        ? 'within target'
        : `${(wallS / targetS).toFixed(2)} × target`);
  if (m.timedOut) note = `stopped at ${MAX_RUN_S} s`;
  else if (!ok) note = `FAILED (exit ${m.code}): ${m.stderr.trim().slice(-200)} ${dm.stderr.trim().slice(-300)}`;
  if (live && Math.abs(live.vmHwmKiB / 1024 - dm.peakRssMiB) > 1) {
    note += ` (VmHWM right after the client: ${Math.round(live.vmHwmKiB / 1024)} MiB)`;
  }
  return {
    link: spec.label,
    run:
      `delta through deltad serve (systemd-pull)${packed ? ', block pack at the origin' : ''}` +
      (announced ? ', after SHA256SUMS through the daemon' : ''),
    ok,
    wallS,
    targetS: targetS && Number(targetS.toFixed(1)),
    ttfbS: first === undefined ? undefined : Number(((first - t0) / 1000).toFixed(3)),
    ...o,
    clientWriteBytes: m.writeBytes,
    daemonRssMiB: Math.round(dm.peakRssMiB),
    daemonCpuS: Number(dm.cpuS.toFixed(2)),
    daemonThreadCpuS,
    daemonWriteBytes: dm.writeBytes,
    note,
  };
}

interface ManyRow {
  link: string;
  clients: number;
  ok: number;
  wallS: number;
  ttfbMedianS: number;
  ttfbMaxS: number;
  totalMedianS: number;
  totalMaxS: number;
  originBytes: number;
  requests: number;
  fellBack: boolean;
  daemonRssMiB: number;
  daemonWriteBytes: number;
  note: string;
}

/** What the clients that did not get the image got, and what the daemon said about it. */
function badAnswers(parsed: number[][], good: number[][], daemonLog: string): string {
  const answers = [...new Set(parsed.filter((x) => !good.includes(x)).map((x) => `${x[0]}/${x[1]}`))].slice(0, 5);
  const said = [
    ...new Set(
      daemonLog
        .split('\n')
        .filter((l) => /warn|error|fall|pass/i.test(l))
        .map((l) => l.replace(/^\S+\s+/, '')),
    ),
  ];
  return `bad answers (status/bytes): ${answers.join(', ')}; daemon: ${said.slice(0, 3).join(' / ').slice(0, 400)}`;
}

/** N curl clients of the same image at once through one daemon. */
async function manyClients(
  spec: LinkSpec,
  n: number,
  site: DaemonSite,
  p: Pair,
  base: string,
  ca: TestCa | null,
  nginx: Nginx,
  port: number,
  cacheDir: string,
): Promise<ManyRow> {
  const d = startDaemon(site, `${base}/`, cacheDir, ca);
  await d.ready;
  const before = nginx.entries().length;
  const t0 = performance.now();
  // One shell starts all the clients: spawning 200 processes from this process would block its event loop, which
  // also runs the relay (the "network"), for seconds, and every origin answer would wait for the last spawn.
  const curl = [
    'nice -n 5 curl -sS -o /dev/null',
    `--max-time ${MAX_RUN_S}`,
    "-w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}\\n'",
    `http://127.0.0.1:${DAEMON_PORT}/os_2.erofs`,
  ].join(' ');
  const results = await new Promise<string[]>((resolve) => {
    const c = spawn('bash', ['-c', `for i in $(seq ${n}); do ${curl} & done; wait`], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    let outText = '';
    c.stdout.on('data', (x) => (outText += x));
    c.on('close', () => resolve(outText.trim().split('\n')));
  });
  const wallS = (performance.now() - t0) / 1000;
  const dm = await d.proc.done;
  await settle();
  const o = originSummary(
    nginx
      .entries()
      .slice(before)
      .filter((e) => e.port === port),
  );
  const parsed = results.map((r) => r.split(' ').map(Number));
  const good = parsed.filter(([code, size]) => code === 200 && size === p.newSize);
  const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1] ?? NaN;
  const ttfb = parsed.map((x) => x[2]);
  const total = parsed.map((x) => x[3]);
  return {
    link: spec.label,
    clients: n,
    ok: good.length,
    wallS: Number(wallS.toFixed(1)),
    ttfbMedianS: Number(med(ttfb).toFixed(2)),
    ttfbMaxS: Number(Math.max(...ttfb).toFixed(2)),
    totalMedianS: Number(med(total).toFixed(1)),
    totalMaxS: Number(Math.max(...total).toFixed(1)),
    originBytes: o.originBytes,
    requests: o.requests,
    fellBack: o.fellBack,
    daemonRssMiB: Math.round(dm.peakRssMiB),
    daemonWriteBytes: dm.writeBytes,
    note: good.length === n ? '' : badAnswers(parsed, good, dm.stderr),
  };
}

/** bench/memory.ts's site for the big pair, whose index and level-3 block pack are shared, never rebuilt. */
const BIG_MEMORY_SITE = join(BENCH, 'deltad-memory', 'big');

/** The big pair's index is bench/memory.ts's (chunking 4.6 GiB again would take minutes). */
function shareBigIndex(p: Pair): void {
  const made = join(BIG_MEMORY_SITE, 'www', 'os_2.img.caibx');
  const www = join(BENCH, 'deltad-daemon', p.name, 'www');
  mkdirSync(www, { recursive: true });
  if (existsSync(made)) link(made, join(www, 'os_2.erofs.caibx'));
}

/** The release's block pack: the corpus's (level 19), for the big pair bench/memory.ts's level-3 one. */
function packFiles(p: Pair): string[] {
  if (p.name !== 'big') return blockPack(p).files;
  const files = ['bpidx', 'bpk', 'bpdict'].map((e) => join(BIG_MEMORY_SITE, 'pack-l3', `${p.newName}.${e}`));
  for (const f of files) if (!existsSync(f)) throw new Error(`${f} missing: run bench/memory.js --pair big once`);
  return files;
}

async function main(): Promise<void> {
  if (!PULL) throw new Error('systemd-pull is required (Debian: systemd-container, scripts/test-deps.sh)');
  const p = pair(values.pair!);
  if (p.name === 'big') shareBigIndex(p);
  const site = daemonSite(p);
  const links = values.links!.split(',').filter(Boolean).map(parseLink);
  const clients = Number(values.clients);
  const clientsLink = clients > 0 ? parseLink(values['clients-link']!) : null;
  const commit = spawnSync('git', ['-C', dirname(CLI), 'rev-parse', '--short', 'HEAD'], {
    encoding: 'utf8',
  }).stdout.trim();
  const work = runDir(site);
  const ca = makeTestCa(join(work, 'tls'));
  const nginx = startNginx(join(work, 'nginx'), [
    { port: PORT, root: site.www },
    { port: PORT + 1, root: site.www, tls: { cert: ca.cert, key: ca.key }, http2: true },
  ]);
  const cacheDir = join(work, 'cache');
  const loadStart = loadavg();
  const started = new Date();
  const rows: PullRow[] = [];
  const checks: SelfCheck[] = [];
  let many: ManyRow | undefined;
  try {
    // The installed image's index is made once and kept (as a running sidecar would have it).
    // The big pair's seed indexes and block hashes are kept between runs (chunking 4.5 GiB takes minutes).
    if (p.name === 'big' && existsSync(cacheDir)) {
      for (const f of readdirSync(cacheDir))
        if (f !== 'indexes' && f !== 'blocks') rmSync(join(cacheDir, f), { recursive: true, force: true });
    } else rmSync(cacheDir, { recursive: true, force: true });
    sh(process.execPath, [
      CLI,
      'plan',
      '--json',
      '--seed',
      site.seed,
      '--cache-dir',
      cacheDir,
      '--range-url',
      `http://127.0.0.1:${PORT}/os_2.erofs`,
      `${site.image}.caibx`,
    ]);
    if (values['block-pack']) {
      // The same release with its block pack beside the image (IMAGE.bpidx/.bpk/.bpdict); warms the block hashes.
      const packed = join(site.www, 'packed');
      mkdirSync(packed, { recursive: true });
      for (const f of ['os_2.erofs', 'os_2.erofs.caibx', 'SHA256SUMS']) link(join(site.www, f), join(packed, f));
      for (const f of packFiles(p)) link(f, join(packed, `os_2.erofs${f.slice(f.lastIndexOf('.'))}`));
      sh(process.execPath, [
        CLI,
        'plan',
        '--json',
        '--seed',
        site.seed,
        '--cache-dir',
        cacheDir,
        '--range-url',
        `http://127.0.0.1:${PORT}/packed/os_2.erofs`,
        `${site.image}.caibx`,
      ]);
    }
    const withLink = async <T>(
      spec: LinkSpec,
      fn: (base: string, port: number, linkDown: () => number) => Promise<T>,
    ): Promise<T> => {
      const check = await selfCheck(spec.shape);
      checks.push(check);
      process.stderr.write(`${spec.label}: ${describeCheck(check)}\n`);
      const port = spec.tls ? PORT + 1 : PORT;
      const relay = await startRelay({ to: { host: '127.0.0.1', port }, shape: spec.shape });
      try {
        return await fn(`${spec.tls ? 'https' : 'http'}://127.0.0.1:${relay.port}`, port, () => relay.stats().down);
      } finally {
        await relay.close();
      }
    };
    const log = (x: unknown): void =>
      void process.stderr.write(
        `[${new Date().toISOString().slice(11, 19)} load ${loadavg()[0].toFixed(1)}] ${JSON.stringify(x)}\n`,
      );
    for (const spec of links) {
      await withLink(spec, async (base, port, linkDown) => {
        const caFor = spec.tls ? ca : null;
        if (!SKIP.has('full')) {
          rows.push(await fullDownload(spec, site, p, base, caFor, nginx, port, linkDown));
          log(rows.at(-1));
        }
        for (const announced of values.announced ? [false, true] : [false]) {
          if (!SKIP.has('range')) {
            rows.push(await viaDaemon(spec, site, base, caFor, nginx, port, cacheDir, false, announced));
            log(rows.at(-1));
          }
          if (values['block-pack']) {
            rows.push(await viaDaemon(spec, site, base, caFor, nginx, port, cacheDir, true, announced));
            log(rows.at(-1));
          }
        }
      });
    }
    if (clientsLink) {
      many = await withLink(clientsLink, (base, port) =>
        manyClients(clientsLink, clients, site, p, base, clientsLink.tls ? ca : null, nginx, port, cacheDir),
      );
      log(many);
    }
  } finally {
    nginx.stop();
  }
  const loadEnd = loadavg();
  const result = {
    pair: p.name,
    newSize: p.newSize,
    commit,
    started: started.toISOString(),
    loadStart,
    loadEnd,
    checks,
    rows,
    many,
  };
  writeFileSync(join(work, 'results.json'), JSON.stringify(result, null, 2));
  const fmt = (n: number | undefined): string => (n === undefined ? '-' : n.toLocaleString('en-US'));
  const load = (l: number[]): string => l.map((x) => x.toFixed(1)).join(' ');
  const md = (cells: (string | number)[]): string => `| ${cells.join(' | ')} |`;
  console.log(
    `\n### deltad serve over shaped links: ${p.name} (${fmt(p.newSize)} bytes; tree ${commit}; ` +
      `${started.toISOString().slice(0, 16)} UTC; load ${load(loadStart)} at the start, ${load(loadEnd)} at the end)\n`,
  );
  for (const c of checks) console.log(`- ${describeCheck(c)}`);
  if (rows.length) {
    console.log(
      '\n' +
        md([
          'link',
          'run',
          'ok',
          'client wall s',
          'target s',
          'first body byte s',
          'origin bytes',
          'requests',
          'conns',
          'protocol',
          'full-download fallback',
          'daemon peak RSS MiB',
          'daemon CPU s (of which after it listens: main / V8 helpers / worker threads / libuv pool)',
          'daemon write_bytes',
          'client write_bytes',
          'note',
        ]),
    );
    console.log('|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---|');
  }
  for (const r of rows) {
    const fellBack = r.fellBack === undefined ? '-' : r.fellBack ? 'YES' : 'no';
    console.log(
      md([
        r.link,
        r.run,
        r.ok ? 'yes' : 'NO',
        r.wallS,
        r.targetS ?? '-',
        r.ttfbS ?? '-',
        fmt(r.originBytes),
        r.requests,
        r.connections,
        r.protocols,
        fellBack,
        r.daemonRssMiB ?? '-',
        r.daemonCpuS === undefined ? '-' : `${r.daemonCpuS}${threadsCell(r.daemonThreadCpuS)}`,
        fmt(r.daemonWriteBytes),
        fmt(r.clientWriteBytes),
        r.note,
      ]),
    );
  }
  if (many) {
    console.log(
      `\n${many.clients} concurrent clients (curl -o /dev/null) of os_2.erofs through one daemon, ` +
        `origin over ${many.link}:\n`,
    );
    console.log(
      md([
        'clients',
        'complete and right size',
        'wall s',
        'first body byte median / max s',
        'client time median / max s',
        'origin bytes',
        'origin requests',
        'fallback',
        'daemon peak RSS MiB',
        'daemon write_bytes',
        'note',
      ]),
    );
    console.log('|---:|---:|---:|---|---|---:|---:|---|---:|---:|---|');
    console.log(
      md([
        many.clients,
        many.ok,
        many.wallS,
        `${many.ttfbMedianS} / ${many.ttfbMaxS}`,
        `${many.totalMedianS} / ${many.totalMaxS}`,
        fmt(many.originBytes),
        many.requests,
        many.fellBack ? 'YES' : 'no',
        many.daemonRssMiB,
        fmt(many.daemonWriteBytes),
        many.note,
      ]),
    );
  }
}

await main();
