// Peak memory of deltad per mode: `deltad extract` in range, store, block-pack
// and seeds-only mode, and `deltad serve` for one client (range path and block
// path), against nginx on 127.0.0.1 (plain HTTP/1.1, or https with HTTP/2
// offered). Peak RSS is the kernel's VmHWM of the deltad process, read at its
// exit by GNU time (bench/measure.ts); wall time and deltad's own engine time
// (--json wallMs) beside it, so that a memory fix that costs speed shows; and the
// resident set at its sampled peak split into anonymous memory and file pages (the
// node binary's code, ~50 MiB of any peak that deltad's own code does not move).
// Every extract output has the right SHA-256 (deltad checks --sha256; cmp with
// the image as well), every served image is hashed by the client.
//
//   npm run build && node dist/bench/memory.js [--pair v1-v2.repro|big] [--modes range,store,blocks,seeds,serve,serve-blocks]
//        [--proto h1|h2] [--runs 1] [--port 8300] [--label TEXT]
//        [--tag NAME]   (a scratch dir of its own for output, cache and nginx: two runs at once)
//        [--node-args=--max-semi-space-size=1]   (run node FLAGS dist/daemon/cli.js instead of the launcher bin/deltad;
//                                               '--node-args= ' runs it with no flags: Node's defaults)
//        [--pack-level 19]   (zstd level of the block pack when it has to be made; the 4 GiB pair uses 3 by default)
//   BENCH=/var/tmp/deltad-bench; work files in $BENCH/deltad-memory/<pair>/
import { startNginx } from './nginx.js';
import { makeTestCa } from './tls.js';
import { runMeasured, startMeasured, type Measured } from './measure.js';
import {
  CHUNK_64K,
  CLI,
  DELTAD,
  blockPack,
  casyncArtifacts,
  link,
  newSha256,
  pair,
  serveArgs,
  sh,
  type Pair,
} from './corpus.js';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    pair: { type: 'string', default: 'v1-v2.repro' },
    modes: { type: 'string', default: 'range,store,blocks,seeds,serve,serve-blocks' },
    proto: { type: 'string', default: 'h1' },
    runs: { type: 'string', default: '1' },
    port: { type: 'string', default: '8300' },
    'node-args': { type: 'string' },
    'pack-level': { type: 'string', default: '' },
    label: { type: 'string', default: '' },
    tag: { type: 'string', default: '' },
  },
});
const PORT = Number(values.port);
const DAEMON_PORT = PORT + 1;
/** Per-run scratch (output, cache, nginx, TLS) under the pair's work dir: --tag lets two runs share a machine. */
const scratchOf = (work: string): string => (values.tag ? join(work, `run-${values.tag}`) : work);
const TLS = values.proto === 'h2';
const NODE_ARGS = (values['node-args'] ?? '').split(' ').filter(Boolean);
/** Through the launcher (bin/deltad), as deltad runs in use; with --node-args, node FLAGS cli.js (no launcher). */
const deltadCmd = (...args: string[]): string[] =>
  values['node-args'] !== undefined ? [process.execPath, ...NODE_ARGS, CLI, ...args] : [...DELTAD, ...args];

interface Site {
  p: Pair;
  www: string;
  system: string;
  image: string;
  seed: string;
  index: string;
  sha256: string;
}

/**
 * www/os_2.img (+ .caibx 64K, .castr, SHA256SUMS) and www/packed/ (the same plus the block pack);
 * system/os_1.img is the installed image (the seed).
 */
function prepareSite(p: Pair): Site {
  const work = join(p.work, '..', '..', 'deltad-memory', p.name);
  const www = join(work, 'www');
  const system = join(work, 'system');
  for (const d of [join(www, 'packed'), system]) mkdirSync(d, { recursive: true });
  const a = casyncArtifacts(p, CHUNK_64K);
  const sha256 = newSha256(p);
  const symlink = (target: string, at: string): void => {
    if (existsSync(at) && readlinkSync(at) === target) return;
    rmSync(at, { force: true });
    symlinkSync(target, at);
  };
  for (const dir of [www, join(www, 'packed')]) {
    link(p.new, join(dir, 'os_2.img'));
    link(a.index, join(dir, 'os_2.img.caibx'));
    writeFileSync(join(dir, 'SHA256SUMS'), `${sha256}  os_2.img\n`);
  }
  symlink(a.store, join(www, 'os_2.img.castr'));
  link(p.old, join(system, 'os_1.img'));
  return { p, www, system, image: p.new, seed: join(system, 'os_1.img'), index: a.index, sha256 };
}

/** The block pack beside www/packed/os_2.img (bench/corpus.ts's, or one at --pack-level for the big pair). */
function preparePack(site: Site): void {
  const level = values['pack-level'] || (site.p.name === 'big' ? '3' : '19');
  let files: string[];
  if (level === '19') files = blockPack(site.p).files;
  else {
    const dir = join(site.www, '..', `pack-l${level}`);
    files = ['bpidx', 'bpk', 'bpdict'].map((e) => join(dir, `${site.p.newName}.${e}`));
    if (!files.every((f) => existsSync(f))) {
      mkdirSync(dir, { recursive: true });
      const t0 = Date.now();
      sh(
        process.execPath,
        [CLI, 'pack', '--json', '--trainer', 'zstd', '--level', level, '--previous', site.p.old].concat([
          '-o',
          dir,
          site.p.new,
        ]),
      );
      process.stderr.write(`block pack at level ${level} made in ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
    }
  }
  for (const f of files) link(f, join(site.www, 'packed', `os_2.img${f.slice(f.lastIndexOf('.'))}`));
}

interface Row {
  mode: string;
  ok: boolean;
  wallS: number;
  engineS?: number;
  cpuS: number;
  peakRssMiB: number;
  /** Anonymous / file MiB at the sampled peak. */
  split: string;
  note: string;
}

const splitOf = (m: Measured): string =>
  m.peakSplit ? `${Math.round(m.peakSplit.anonMiB)} / ${Math.round(m.peakSplit.fileMiB)}` : '-';

const cmp = (a: string, b: string): boolean => spawnSync('cmp', ['-s', a, b]).status === 0;

async function extract(site: Site, mode: string, base: string, cache: string, caArgs: string[]): Promise<Row> {
  const scratch = scratchOf(join(site.www, '..'));
  const out = join(scratch, 'out.img');
  for (const f of [out, join(scratch, '.out.img.deltad-partial')]) rmSync(f, { force: true });
  rmSync(join(scratch, '.out.img.deltad-partial.journal'), { force: true });
  const source: Record<string, string[]> = {
    range: ['--mode', 'range', '--range-url', `${base}/os_2.img`, '--seed', site.seed],
    store: ['--mode', 'store', '--store', `${base}/os_2.img.castr`, '--seed', site.seed],
    blocks: ['--mode', 'auto', '--range-url', `${base}/packed/os_2.img`, '--seed', site.seed],
    seeds: ['--mode', 'range', '--range-url', `${base}/os_2.img`, '--seed', `${site.image}:${site.index}`],
  };
  const cmd = deltadCmd(
    'extract',
    '--json',
    ...source[mode],
    '--cache-dir',
    cache,
    '--sha256',
    site.sha256,
    ...caArgs,
    `${base}/os_2.img.caibx`,
    out,
  );
  const m = await runMeasured(cmd, { timeoutS: 900, peakSplit: true });
  let summary: { wallMs?: number; mode?: string } = {};
  try {
    summary = JSON.parse(m.stdout);
  } catch {
    // no summary: failed
  }
  const ok = m.code === 0 && !m.timedOut && cmp(out, site.image);
  rmSync(out, { force: true });
  return {
    mode: `extract ${mode}`,
    ok,
    wallS: Number(m.wallS.toFixed(2)),
    engineS: summary.wallMs !== undefined ? summary.wallMs / 1000 : undefined,
    cpuS: Number(m.cpuS.toFixed(2)),
    peakRssMiB: Math.round(m.peakRssMiB),
    split: splitOf(m),
    note: ok ? `mode ${summary.mode ?? '?'}` : `FAILED (exit ${m.code}): ${m.stderr.trim().slice(-300)}`,
  };
}

async function serve(site: Site, packed: boolean, base: string, cache: string, caArgs: string[]): Promise<Row> {
  let ready = (): void => {};
  const listening = new Promise<void>((r) => (ready = r));
  const d = startMeasured(
    deltadCmd(
      ...serveArgs({
        port: DAEMON_PORT,
        origin: `${base}/${packed ? 'packed/' : ''}`,
        seedGlob: join(site.system, '*.img'),
        imagePattern: '*.img',
        cacheDir: cache,
      }),
      ...caArgs,
    ),
    { timeoutS: 900, peakSplit: true, onStdout: (s) => s.includes('listening') && ready() },
  );
  await Promise.race([listening, d.done]);
  const t0 = performance.now();
  const client = spawnSync('sh', ['-c', `curl -sS --fail http://127.0.0.1:${DAEMON_PORT}/os_2.img | sha256sum`], {
    encoding: 'utf8',
    timeout: 900_000,
  });
  const wallS = (performance.now() - t0) / 1000;
  const m = await d.done;
  const ok = client.status === 0 && client.stdout.startsWith(site.sha256);
  return {
    mode: packed ? 'serve, block path' : 'serve, range path',
    ok,
    wallS: Number(wallS.toFixed(2)),
    cpuS: Number(m.cpuS.toFixed(2)),
    peakRssMiB: Math.round(m.peakRssMiB),
    split: splitOf(m),
    note: ok ? 'one client (curl), SHA-256 right' : `FAILED: ${client.stderr.slice(-200)} ${m.stderr.slice(-300)}`,
  };
}

async function main(): Promise<void> {
  const p = pair(values.pair!);
  const site = prepareSite(p);
  const modes = values.modes!.split(',').filter(Boolean);
  if (modes.some((m) => m.includes('blocks'))) preparePack(site);
  const work = scratchOf(join(site.www, '..'));
  mkdirSync(work, { recursive: true });
  const ca = TLS ? makeTestCa(join(work, 'tls')) : null;
  const nginx = startNginx(join(work, 'nginx'), [
    TLS
      ? { port: PORT, root: site.www, tls: { cert: ca!.cert, key: ca!.key }, http2: true }
      : { port: PORT, root: site.www },
  ]);
  const base = `${TLS ? 'https' : 'http'}://127.0.0.1:${PORT}`;
  const caArgs = ca ? ['--ca-file', ca.caCert] : [];
  const cache = join(work, 'cache');
  const rows: Row[] = [];
  const loads: string[] = [];
  try {
    // Seed indexes and block hashes are warmed once, as a sidecar keeps them.
    for (const u of [`${base}/os_2.img`, `${base}/packed/os_2.img`]) {
      sh(
        process.execPath,
        [CLI, 'plan', '--json', '--seed', site.seed, '--cache-dir', cache, '--range-url', u].concat(caArgs, [
          `${base}/os_2.img.caibx`,
        ]),
      );
    }
    for (let run = 0; run < Number(values.runs); run++) {
      for (const mode of modes) {
        loads.push(loadavg()[0].toFixed(1));
        const row =
          mode === 'serve' || mode === 'serve-blocks'
            ? await serve(site, mode === 'serve-blocks', base, cache, caArgs)
            : await extract(site, mode, base, cache, caArgs);
        process.stderr.write(
          `[${new Date().toISOString().slice(11, 19)} load ${loads.at(-1)}] ${JSON.stringify(row)}\n`,
        );
        rows.push(row);
      }
    }
  } finally {
    nginx.stop();
  }
  const label = values.label ? ` ${values.label}` : '';
  console.log(
    `\n${p.name} (${p.newSize.toLocaleString('en')} bytes), ${TLS ? 'https+h2' : 'http/1.1'}${label}` +
      `${values['node-args'] !== undefined ? `, node ${NODE_ARGS.join(' ') || '(defaults)'} cli.js` : ', bin/deltad'}` +
      `; load ${loads.join(' ')}\n`,
  );
  console.log('| run | ok | peak RSS MiB | anon / file MiB at peak | wall s | engine s | CPU s | note |');
  console.log('|---|---|---:|---:|---:|---:|---:|---|');
  for (const r of rows) {
    console.log(
      `| ${r.mode} | ${r.ok ? 'yes' : 'NO'} | ${r.peakRssMiB} | ${r.split} | ${r.wallS} | ${r.engineS ?? '-'} | ${r.cpuS} | ${r.note} |`,
    );
  }
}

await main();
