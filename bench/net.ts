// Delta updates over real link conditions: the corpus's v1 → v2 through a
// shaped relay (bench/relay.ts: one rate per direction shared by every
// connection, a round-trip delay) in front of nginx on 127.0.0.1, over plain
// HTTP/1.1 and over TLS with HTTP/2 offered (bench/tls.ts makes a throwaway CA).
// Per link, every client in the same run: deltad extract in store mode (64K
// and 16K chunk stores), range mode and block-pack mode, casync extract
// (64K store), zsync (plain HTTP only: zsync 0.6.2 has no TLS) and a plain
// full download (curl). Origin bytes, requests and connections come from
// nginx's access log, peak RSS and disk writes from the kernel's counters
// (bench/measure.ts), link bytes from the relay. Every output is compared
// with the new image.
//
//   npm run build && node dist/bench/net.js [--pair v1-v2.repro]
//        [--links 100mbit:0:h1,100mbit:40:h1,100mbit:40:h2,5mbit:40:h2]
//        [--tools curl,store64,store16,range,blocks,casync,zsync] [--max-run-s 480] [--full-max-s 60]
//        [--casync-max-s 180] [--port 8131]
//        [--deltad-args '--concurrency 8']
//   A link is RATE:RTT_MS:PROTO (h1 = http://, h2 = https:// with HTTP/2 offered; a client
//   that cannot speak HTTP/2 negotiates HTTP/1.1 over TLS, the table shows what each used).
//   BENCH=/var/tmp/deltad-bench. Runs longer than --max-run-s are stopped and marked. Two
//   clients whose time is predictable are stopped earlier and projected: the full download
//   after --full-max-s (from the rate it reached), casync after --casync-max-s (it fetches one
//   chunk at a time: from its requests per second and deltad store 64K's request count).
import { startNginx, type AccessEntry, type Nginx } from './nginx.js';
import { startRelay, selfCheck, describeCheck, parseRate, type LinkShape, type SelfCheck } from './relay.js';
import { makeTestCa, withCaBundle, type TestCa } from './tls.js';
import { runMeasured, type Measured } from './measure.js';
import {
  BENCH,
  CLI,
  DELTAD,
  CHUNK_16K,
  CHUNK_64K,
  blockPack,
  casyncArtifacts,
  link,
  newSha256,
  pair,
  sh,
  zsyncArtifact,
  type Pair,
} from './corpus.js';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync, readlinkSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    pair: { type: 'string', default: 'v1-v2.repro' },
    links: { type: 'string', default: '100mbit:0:h1,100mbit:40:h1,100mbit:40:h2,5mbit:40:h2' },
    tools: { type: 'string', default: 'curl,store64,store16,range,blocks,casync,zsync' },
    'max-run-s': { type: 'string', default: '480' },
    'full-max-s': { type: 'string', default: '60' },
    'casync-max-s': { type: 'string', default: '180' },
    port: { type: 'string', default: '8131' },
    'deltad-args': { type: 'string', default: '' },
  },
});
const MAX_RUN_S = Number(values['max-run-s']);
const PORT = Number(values.port);

interface LinkSpec {
  label: string;
  shape: LinkShape;
  proto: 'h1' | 'h2';
}

function parseLink(s: string): LinkSpec {
  const [rate, rtt, proto] = s.split(':');
  if (!rate || rtt === undefined || (proto !== 'h1' && proto !== 'h2'))
    throw new Error(`link "${s}": expected RATE:RTT_MS:h1|h2`);
  return {
    label: `${rate} ${rtt} ms ${proto === 'h1' ? 'http/1.1' : 'https+h2'}`,
    shape: { rateBitsPerS: parseRate(rate), rttMs: Number(rtt) },
    proto,
  };
}

interface Row {
  link: string;
  tool: string;
  ok: boolean;
  note: string;
  wallS: number;
  /** What the link had to carry at its rate: relay downstream bytes × 8 / rate. */
  linkBoundS?: number;
  originBytes: number;
  requests: number;
  connections: number;
  protocols: string;
  peakRssMiB: number;
  writeBytes: number;
  linkDownBytes: number;
  linkUpBytes: number;
}

interface Site {
  www: string;
  p: Pair;
  sha256: string;
  packedName: string;
}

/**
 * The served tree: plain/ (image + zsync), packed/ (image + block pack), c64.* and c16.* (casync index + store);
 * only what the chosen tools need is made.
 */
function prepareSite(p: Pair, wanted: string[]): Site {
  const www = join(BENCH, 'deltad-net', p.name, 'www');
  for (const d of ['plain', 'packed']) mkdirSync(join(www, d), { recursive: true });
  link(p.new, join(www, 'plain', 'new.img'));
  if (wanted.includes('zsync')) link(zsyncArtifact(p), join(www, 'plain', 'new.img.zsync'));
  if (wanted.includes('blocks')) {
    link(p.new, join(www, 'packed', p.newName));
    for (const f of blockPack(p).files) link(f, join(www, 'packed', basename(f)));
  }
  const symlink = (target: string, at: string): void => {
    if (existsSync(at) && readlinkSync(at) === target) return;
    rmSync(at, { force: true });
    symlinkSync(target, at);
  };
  // The 64K index serves range and block-pack mode too; the warm-up plans need both indexes.
  for (const [tag, chunk] of [
    ['c64', CHUNK_64K],
    ['c16', CHUNK_16K],
  ] as const) {
    if (tag === 'c16' && !wanted.includes('store16')) continue;
    const a = casyncArtifacts(p, chunk);
    link(a.index, join(www, `${tag}.caibx`));
    symlink(a.store, join(www, `${tag}.castr`));
  }
  return { www, p, sha256: newSha256(p), packedName: p.newName };
}

/** How this deltad build trusts a CA: --ca-file when its CLI has it, else NODE_EXTRA_CA_CERTS. */
function deltadCaMode(): 'flag' | 'env' {
  const help = spawnSync(process.execPath, [CLI, 'extract', '--help'], { encoding: 'utf8' });
  return `${help.stdout}${help.stderr}`.includes('--ca-file') ? 'flag' : 'env';
}

interface Tool {
  name: string;
  h1Only?: boolean;
  cmd(base: string, out: string): string[];
  /** Parse the tool's stdout for a note (deltad: the mode it used). */
  note?(stdout: string): string;
}

function tools(site: Site, ca: TestCa, tls: boolean, caMode: 'flag' | 'env', cache: string): Tool[] {
  const { p } = site;
  const extra = values['deltad-args']!.split(' ').filter(Boolean);
  const caArgs = tls && caMode === 'flag' ? ['--ca-file', ca.caCert] : [];
  const deltad =
    (index: string, source: (base: string) => string[]) =>
    (base: string, out: string): string[] => [
      ...DELTAD,
      'extract',
      '--json',
      ...source(base),
      '--seed',
      p.old,
      '--cache-dir',
      cache,
      '--sha256',
      site.sha256,
      ...caArgs,
      ...extra,
      `${base}/${index}`,
      out,
    ];
  const modeNote = (stdout: string): string => {
    try {
      const j = JSON.parse(stdout) as { mode?: string; networkRequests?: number };
      return `mode ${j.mode}`;
    } catch {
      return '';
    }
  };
  const all: Tool[] = [
    {
      name: 'curl',
      cmd: (base, out) => [
        'curl',
        '-sS',
        '--fail',
        tls ? '--http2' : '--http1.1',
        ...(tls ? ['--cacert', ca.caCert] : []),
        '-o',
        out,
        `${base}/plain/new.img`,
      ],
    },
    {
      name: 'store64',
      cmd: deltad('c64.caibx', (b) => ['--mode', 'store', '--store', `${b}/c64.castr`]),
      note: modeNote,
    },
    {
      name: 'store16',
      cmd: deltad('c16.caibx', (b) => ['--mode', 'store', '--store', `${b}/c16.castr`]),
      note: modeNote,
    },
    {
      name: 'range',
      cmd: deltad('c64.caibx', (b) => ['--mode', 'range', '--range-url', `${b}/plain/new.img`]),
      note: modeNote,
    },
    {
      name: 'blocks',
      cmd: deltad('c64.caibx', (b) => ['--mode', 'auto', '--range-url', `${b}/packed/${site.packedName}`]),
      note: modeNote,
    },
    {
      name: 'casync',
      cmd: (base, out) => {
        const c = ['casync', `--store=${base}/c64.castr`, `--seed=${p.old}`, 'extract', `${base}/c64.caibx`, out];
        return tls ? withCaBundle(ca.bundle, c) : c;
      },
    },
    {
      name: 'zsync',
      h1Only: true,
      cmd: (base, out) => ['zsync', '-q', '-i', p.old, '-o', out, `${base}/plain/new.img.zsync`],
    },
  ];
  const wanted = values.tools!.split(',');
  for (const w of wanted) {
    if (!all.some((t) => t.name === w)) throw new Error(`unknown tool ${w} (${all.map((t) => t.name).join(', ')})`);
  }
  return all.filter((t) => wanted.includes(t.name));
}

const TOOL_LABEL: Record<string, string> = {
  curl: 'full download (curl)',
  store64: 'deltad store 64K',
  store16: 'deltad store 16K',
  range: 'deltad range (64K index)',
  blocks: 'deltad block pack',
  casync: 'casync extract 64K store',
  zsync: 'zsync -i (4 KiB)',
};

const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 400));

function outputsOf(out: string): string[] {
  return [
    out,
    join(dirname(out), `.${basename(out)}.deltad-partial`),
    join(dirname(out), `.${basename(out)}.deltad-partial.journal`),
    `${out}.part`,
    `${out}.zs-old`,
  ];
}

async function runTool(
  spec: LinkSpec,
  tool: Tool,
  base: string,
  nginx: Nginx,
  port: number,
  relayStats: () => { up: number; down: number },
  env: NodeJS.ProcessEnv,
  out: string,
  p: Pair,
  storeRequests?: number,
): Promise<Row> {
  for (const f of outputsOf(out)) rmSync(f, { force: true });
  await settle();
  const before = nginx.entries().length;
  const linkBefore = relayStats();
  const limit =
    tool.name === 'curl'
      ? Number(values['full-max-s'])
      : tool.name === 'casync'
        ? Number(values['casync-max-s'])
        : MAX_RUN_S;
  const m: Measured = await runMeasured(['nice', '-n', '5', ...tool.cmd(base, out)], { env, timeoutS: limit });
  await settle();
  const entries: AccessEntry[] = nginx
    .entries()
    .slice(before)
    .filter((e) => e.port === port);
  const linkAfter = relayStats();
  const ok = !m.timedOut && m.code === 0 && spawnSync('cmp', ['-s', out, p.new]).status === 0;
  const originBytes = entries.reduce((n, e) => n + e.bodyBytes, 0);
  const down = linkAfter.down - linkBefore.down;
  let note = tool.note?.(m.stdout) ?? '';
  if (m.timedOut) {
    // What passed the link, not what nginx handed to its socket (buffers hold megabytes more).
    const perS = down / m.wallS;
    note = `stopped at ${limit} s`;
    if (tool.name === 'curl' && perS > 0)
      note += `; at that rate the whole image takes ${(p.newSize / perS).toFixed(0)} s`;
    if (tool.name === 'casync' && storeRequests && entries.length) {
      note +=
        ` after ${entries.length} requests; at that pace ${storeRequests} take` +
        ` ${((m.wallS * storeRequests) / entries.length).toFixed(0)} s`;
    }
  } else if (!ok) {
    note = `FAILED (exit ${m.code}): ${m.stderr.trim().split('\n').slice(-3).join(' / ').slice(0, 300)}`;
  }
  const row: Row = {
    link: spec.label,
    tool: TOOL_LABEL[tool.name],
    ok,
    note,
    wallS: Number(m.wallS.toFixed(2)),
    linkBoundS: spec.shape.rateBitsPerS ? Number(((down * 8) / spec.shape.rateBitsPerS).toFixed(1)) : undefined,
    originBytes,
    requests: entries.length,
    connections: new Set(entries.map((e) => e.connection)).size,
    protocols: [...new Set(entries.map((e) => e.protocol))].join(' '),
    peakRssMiB: Math.round(m.peakRssMiB),
    writeBytes: m.writeBytes,
    linkDownBytes: down,
    linkUpBytes: linkAfter.up - linkBefore.up,
  };
  process.stderr.write(
    `[${new Date().toISOString().slice(11, 19)} load ${loadavg()[0].toFixed(1)}] ${JSON.stringify(row)}\n`,
  );
  for (const f of outputsOf(out)) rmSync(f, { force: true });
  return row;
}

async function main(): Promise<void> {
  const links = values.links!.split(',').map(parseLink);
  const p = pair(values.pair!);
  const commit = spawnSync('git', ['-C', dirname(CLI), 'rev-parse', '--short', 'HEAD'], {
    encoding: 'utf8',
  }).stdout.trim();
  process.stderr.write(`net bench: ${p.name}, preparing artifacts (casync 64K/16K, zsync, block pack; made once)\n`);
  const wanted = values.tools!.split(',');
  const site = prepareSite(p, wanted);
  const work = join(BENCH, 'deltad-net', p.name);
  const ca = makeTestCa(join(work, 'tls'));
  const caMode = deltadCaMode();
  const nginx = startNginx(join(work, 'nginx'), [
    { port: PORT, root: site.www },
    { port: PORT + 1, root: site.www, tls: { cert: ca.cert, key: ca.key }, http2: true },
  ]);
  const cache = join(work, 'cache');
  const out = join(work, 'out.img');
  const loadStart = loadavg();
  const started = new Date();
  const rows: Row[] = [];
  const checks: SelfCheck[] = [];
  try {
    // Warm the seed's caches (chunk indexes for both chunk sizes, per-block hashes): a sidecar keeps them.
    rmSync(cache, { recursive: true, force: true });
    const direct = `http://127.0.0.1:${PORT}`;
    const packed = wanted.includes('blocks') ? `${direct}/packed/${site.packedName}` : `${direct}/plain/new.img`;
    sh(process.execPath, [
      CLI,
      'plan',
      '--json',
      '--seed',
      p.old,
      '--cache-dir',
      cache,
      '--range-url',
      packed,
      `${direct}/c64.caibx`,
    ]);
    if (wanted.includes('store16')) {
      sh(process.execPath, [
        CLI,
        'plan',
        '--json',
        '--seed',
        p.old,
        '--cache-dir',
        cache,
        '--range-url',
        `${direct}/plain/new.img`,
        `${direct}/c16.caibx`,
      ]);
    }
    for (const spec of links) {
      const tls = spec.proto === 'h2';
      const check = await selfCheck(spec.shape);
      checks.push(check);
      process.stderr.write(`${spec.label}: ${describeCheck(check)}\n`);
      const relay = await startRelay({ to: { host: '127.0.0.1', port: tls ? PORT + 1 : PORT }, shape: spec.shape });
      const base = `${tls ? 'https' : 'http'}://127.0.0.1:${relay.port}`;
      const env = { ...process.env, ...(tls && caMode === 'env' ? { NODE_EXTRA_CA_CERTS: ca.caCert } : {}) };
      try {
        for (const tool of tools(site, ca, tls, caMode, cache)) {
          if (tool.h1Only && tls) continue;
          const store64 = rows.find((r) => r.link === spec.label && r.tool === TOOL_LABEL.store64 && r.ok)?.requests;
          rows.push(
            await runTool(spec, tool, base, nginx, tls ? PORT + 1 : PORT, () => relay.stats(), env, out, p, store64),
          );
        }
      } finally {
        await relay.close();
      }
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
    caMode,
    checks,
    rows,
  };
  writeFileSync(join(work, 'results.json'), JSON.stringify(result, null, 2));
  printTable(result);
}

interface Result {
  pair: string;
  newSize: number;
  commit: string;
  started: string;
  loadStart: number[];
  loadEnd: number[];
  caMode: string;
  checks: SelfCheck[];
  rows: Row[];
}

function printTable(r: Result): void {
  const fmt = (n: number): string => n.toLocaleString('en-US');
  const load = (l: number[]): string => l.map((x) => x.toFixed(1)).join(' ');
  const md = (cells: (string | number)[]): string => `| ${cells.join(' | ')} |`;
  console.log(
    `\n### ${r.pair} over shaped links (${fmt(r.newSize)} bytes; tree ${r.commit}; ` +
      `${r.started.slice(0, 16)} UTC; load ${load(r.loadStart)} at the start, ${load(r.loadEnd)} at the end)\n`,
  );
  console.log(`deltad trusts the test CA via ${r.caMode === 'flag' ? '--ca-file' : 'NODE_EXTRA_CA_CERTS'}.\n`);
  for (const c of r.checks) console.log(`- ${describeCheck(c)}`);
  console.log(
    '\n' +
      md([
        'link',
        'client',
        'ok',
        'wall s',
        'link-bound s',
        'origin bytes',
        'requests',
        'conns',
        'protocol',
        'peak RSS MiB',
        'write_bytes',
        'note',
      ]),
  );
  console.log('|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|');
  for (const x of r.rows) {
    console.log(
      md([
        x.link,
        x.tool,
        x.ok ? 'yes' : 'NO',
        x.wallS,
        x.linkBoundS ?? '-',
        fmt(x.originBytes),
        x.requests,
        x.connections,
        x.protocols,
        x.peakRssMiB,
        fmt(x.writeBytes),
        x.note,
      ]),
    );
  }
}

await main();
