// Block pack benchmark on the corpus (bench/RESULTS.md, "## Block pack").
//
//   node dist/bench/blockpack.js [--bench DIR] [--port 8091] [--trainer zstd|cover|none]
//        [--level 19] [--dict-size 262144] [--previous] [--group-blocks 64] [--repack] [--no-anchor] [PAIR...]
//
// PAIR is OLD-NEW.FLAVOUR (default: v1-v2.repro v2-v3.repro v1-v2.repro-lz4hc).
// For each pair: `deltad pack` of the new image (kept in $BENCH/blockpack/ and
// reused unless --repack), served with the image by nginx on 127.0.0.1, then a
// client run from the old image as seed: probe, plan, assemble, compare with
// SHA256SUMS. Downloads are counted from nginx's access log ($bytes_sent:
// bodies, headers and multipart framing). With the anchor (default), casync
// 16K make+extract runs on the first pair through the same nginx, so the
// peers' numbers (PEERS.md) can be compared in one run.
import { startNginx } from './nginx.js';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, linkSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { HttpClient } from '../lib/fetch/http-client.js';
import {
  assembleBlocks,
  costOf,
  packImage,
  planBlockUpdate,
  probeBlockPack,
  type PackResult,
  type Trainer,
} from '../lib/blockpack/index.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    bench: { type: 'string', default: process.env.BENCH ?? '/var/tmp/deltad-bench' },
    port: { type: 'string', default: '8091' },
    trainer: { type: 'string', default: 'zstd' },
    level: { type: 'string', default: '19' },
    'dict-size': { type: 'string', default: String(256 * 1024) },
    previous: { type: 'boolean', default: false },
    'group-blocks': { type: 'string', default: '64' },
    repack: { type: 'boolean', default: false },
    'no-anchor': { type: 'boolean', default: false },
  },
});
const BENCH = values.bench!;
const PORT = Number(values.port);
const pairs = positionals.length ? positionals : ['v1-v2.repro', 'v2-v3.repro', 'v1-v2.repro-lz4hc'];
const root = join(BENCH, 'blockpack');
const www = join(root, 'www');
const packDir = join(
  root,
  `packs-${values.trainer}-l${values.level}-d${values['dict-size']}${values.previous ? `-prev-g${values['group-blocks']}` : ''}`,
);
mkdirSync(www, { recursive: true });
mkdirSync(packDir, { recursive: true });

const sums = new Map(
  readFileSync(join(BENCH, 'img', 'SHA256SUMS'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => {
      const [h, n] = l.split(/\s+/);
      return [n, h] as [string, string];
    }),
);

// --- nginx on 127.0.0.1 -------------------------------------------------------------
const nginx = startNginx(join(root, 'nginx'), [{ port: PORT, root: www }]);

/** Sums the access-log entries after the first `from`: requests and wire bytes ($bytes_sent). */
function logSince(from: number): { requests: number; bytes: number; end: number } {
  const entries = nginx.entries();
  const mine = entries.slice(from);
  return { requests: mine.length, bytes: mine.reduce((n, e) => n + e.wireBytes, 0), end: entries.length };
}
// nginx buffers its log lines only until the request ends; give it a moment.
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 300));

function link(src: string, dst: string): void {
  rmSync(dst, { force: true });
  linkSync(src, dst);
}

function run(cmd: string, args: string[]): Promise<{ code: number; ms: number; stderr: string }> {
  const t = Date.now();
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr.on('data', (b) => (stderr += b));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code: code ?? 1, ms: Date.now() - t, stderr }));
  });
}

interface Row {
  pair: string;
  newSize: number;
  pack: PackResult & { mbPerS: number };
  bytes: number;
  requests: number;
  clientBytes: number;
  plannedBytes: number;
  plannedRequests: number;
  indexBytes: number;
  dictBytes: number;
  frames: number;
  fromSeeds: number;
  fromPack: number;
  wallMs: number;
  ok: boolean;
}

const http = new HttpClient({ connections: 4 });
const rows: Row[] = [];
const machine = {
  load: loadavg()
    .map((x) => x.toFixed(2))
    .join(' '),
  cpus: cpus().length,
};
console.error(`blockpack bench: ${new Date().toISOString()}, load ${machine.load}, ${machine.cpus} cpus`);

for (const pair of pairs) {
  const m = /^(v\d)-(v\d)\.(.+)$/.exec(pair);
  if (!m) throw new Error(`pair "${pair}": expected OLD-NEW.FLAVOUR, e.g. v1-v2.repro`);
  const [, oldV, newV, flavour] = m;
  const oldImg = join(BENCH, 'img', `${oldV}.${flavour}.erofs`);
  const newName = `${newV}.${flavour}.erofs`;
  const newImg = join(BENCH, 'img', newName);
  const dir = join(packDir, values.previous ? pair : newName);
  mkdirSync(dir, { recursive: true });
  const meta = join(dir, 'pack.json');
  let pack: Row['pack'];
  if (!values.repack && existsSync(meta)) {
    pack = JSON.parse(readFileSync(meta, 'utf8'));
  } else {
    console.error(`${pair}: packing ${newName} (load ${loadavg()[0].toFixed(2)})`);
    const r = await packImage(newImg, {
      outDir: dir,
      trainer: values.trainer as Trainer,
      level: Number(values.level),
      dictSize: Number(values['dict-size']),
      previous: values.previous ? [oldImg] : undefined,
      groupBlocks: Number(values['group-blocks']),
    });
    pack = { ...r, mbPerS: r.imageSize / 1e6 / (r.wallMs / 1000) };
    writeFileSync(meta, JSON.stringify(pack, null, 2));
  }
  const site = join(www, pair);
  mkdirSync(site, { recursive: true });
  link(newImg, join(site, newName));
  for (const ext of ['bpidx', 'bpk', 'bpdict']) link(join(dir, `${newName}.${ext}`), join(site, `${newName}.${ext}`));

  const out = join(root, `out-${pair}.img`);
  const cacheDir = join(root, 'cache');
  await settle();
  const before = logSince(0).end;
  const t0 = Date.now();
  const imageUrl = `http://127.0.0.1:${PORT}/${pair}/${newName}`;
  const probe = await probeBlockPack(http, imageUrl);
  if (!probe) throw new Error(`${imageUrl}: no block index`);
  const plan = await planBlockUpdate(probe, [oldImg], { cacheDir });
  const cost = costOf(plan, { multi: true });
  const res = await assembleBlocks(plan, out, {
    http,
    packUrl: probe.packUrl,
    dictUrl: probe.dictUrl,
    sha256: sums.get(newName),
  });
  const wallMs = Date.now() - t0;
  await settle();
  const log = logSince(before);
  rmSync(out, { force: true });
  rows.push({
    pair,
    newSize: pack.imageSize,
    pack,
    bytes: log.bytes,
    requests: log.requests,
    clientBytes: probe.indexBytes + res.networkBytes,
    plannedBytes: cost.bytes,
    plannedRequests: cost.requests,
    indexBytes: probe.indexBytes,
    dictBytes: probe.index.dictSize,
    frames: res.frames,
    fromSeeds: res.fromSeeds,
    fromPack: res.fromPack,
    wallMs,
    ok: res.sha256 === sums.get(newName),
  });
  console.error(
    `${pair}: ${log.bytes} bytes in ${log.requests} requests, ${(wallMs / 1000).toFixed(1)} s, sha256 ${rows.at(-1)!.ok ? 'OK' : 'MISMATCH'}`,
  );
}

// --- anchor: casync 16K on the first pair, same nginx, same run ------------------------
let anchor: { pair: string; bytes: number; requests: number; ms: number; ok: boolean } | undefined;
let viaCli: { pair: string; mode: string; bytes: number; requests: number; ok: boolean } | undefined;
if (!values['no-anchor']) {
  const pair = pairs[0];
  const [, oldV, newV, flavour] = /^(v\d)-(v\d)\.(.+)$/.exec(pair)!;
  const oldImg = join(BENCH, 'img', `${oldV}.${flavour}.erofs`);
  const newImg = join(BENCH, 'img', `${newV}.${flavour}.erofs`);
  const site = join(www, pair);
  const store = join(site, 'casync16.castr');
  if (!existsSync(join(site, 'casync16.caibx'))) {
    console.error(`${pair}: casync make (16K)`);
    const r = await run('casync', [
      '--chunk-size=4096:16384:65536',
      'make',
      `--store=${store}`,
      join(site, 'casync16.caibx'),
      newImg,
    ]);
    if (r.code !== 0) throw new Error(`casync make failed: ${r.stderr}`);
  }
  const out = join(root, 'out-casync.img');
  rmSync(out, { force: true });
  await settle();
  const before = logSince(0).end;
  const base = `http://127.0.0.1:${PORT}/${pair}`;
  const r = await run('casync', [
    'extract',
    `--store=${base}/casync16.castr`,
    `--seed=${oldImg}`,
    `${base}/casync16.caibx`,
    out,
  ]);
  await settle();
  const log = logSince(before);
  const ok = r.code === 0 && spawnSync('cmp', ['-s', out, newImg]).status === 0;
  rmSync(out, { force: true });
  anchor = { pair, bytes: log.bytes, requests: log.requests, ms: r.ms, ok };
  console.error(`anchor casync 16K ${pair}: ${log.bytes} bytes in ${log.requests} requests (${ok ? 'OK' : 'FAILED'})`);

  // The same pair through `deltad extract` (the engine picks its path: the block pack when it is cheapest).
  const newName = `${newV}.${flavour}.erofs`;
  await settle();
  const cliBefore = logSince(0).end;
  const cli = spawnSync(
    process.execPath,
    [
      join(import.meta.dirname, '..', 'daemon', 'cli.js'),
      'extract',
      '--json',
      '--seed',
      oldImg,
      '--range-url',
      `${base}/${newName}`,
      '--sha256',
      sums.get(newName)!,
      '--cache-dir',
      join(root, 'cache'),
      `${base}/casync16.caibx`,
      out,
    ],
    { encoding: 'utf8' },
  );
  await settle();
  const cliLog = logSince(cliBefore);
  const cliOk = cli.status === 0 && spawnSync('cmp', ['-s', out, newImg]).status === 0;
  rmSync(out, { force: true });
  const mode = cli.status === 0 ? (JSON.parse(cli.stdout) as { mode: string }).mode : `failed: ${cli.stderr.trim()}`;
  viaCli = { pair, mode, bytes: cliLog.bytes, requests: cliLog.requests, ok: cliOk };
  console.error(
    `deltad extract ${pair}: mode ${mode}, ${cliLog.bytes} bytes in ${cliLog.requests} requests (${cliOk ? 'OK' : 'FAILED'})`,
  );
}
await http.close();

const fmt = (n: number): string => n.toLocaleString('en-US');
const mb = (n: number): string => (n / 1e6).toFixed(1);
const lines = [
  `| pair | new image | downloaded (nginx $bytes_sent) | requests | index + dictionary | frames fetched | from seed | client wall | pack (publisher) | pack time |`,
  `|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|`,
  ...rows.map(
    (r) =>
      `| ${r.pair} | ${mb(r.newSize)} MB | **${fmt(r.bytes)}** (${mb(r.bytes)} MB) | ${r.requests} | ${fmt(r.indexBytes)} + ${fmt(r.dictBytes)} (${((100 * (r.indexBytes + r.dictBytes)) / r.bytes).toFixed(1)}%) | ${fmt(r.frames)} | ${mb(r.fromSeeds)} MB | ${(r.wallMs / 1000).toFixed(1)} s${r.ok ? '' : ' **SHA-256 MISMATCH**'} | ${mb(r.pack.packSize)} MB | ${(r.pack.wallMs / 1000).toFixed(0)} s (${r.pack.mbPerS.toFixed(1)} MB/s) |`,
  ),
];
if (anchor)
  lines.push(
    '',
    `Anchor, same run and nginx: casync 16K (4K:16K:64K) ${anchor.pair}: ${fmt(anchor.bytes)} bytes (${mb(anchor.bytes)} MB) in ${anchor.requests} requests, ${(anchor.ms / 1000).toFixed(1)} s${anchor.ok ? '' : ' (FAILED)'}.`,
  );
if (viaCli)
  lines.push(
    '',
    `\`deltad extract --seed OLD --range-url NEW casync16.caibx\` on ${viaCli.pair}: mode ${viaCli.mode}, ${fmt(viaCli.bytes)} bytes in ${viaCli.requests} requests${viaCli.ok ? ', identical to the image' : ' (FAILED)'}.`,
  );
console.log(lines.join('\n'));
writeFileSync(
  join(root, 'results.json'),
  JSON.stringify({ date: new Date().toISOString(), machine, options: values, rows, anchor, viaCli }, null, 2),
);
