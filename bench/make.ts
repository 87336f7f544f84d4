// Indexing benchmark: `casync make` against deltad's indexFile (in-process, as a
// child process so its peak RSS is its own) and `deltad make`, on a deterministic
// random file. Usage: node dist/bench/make.js [--size 1G] [--runs 1] [--keep] [--dir DIR]
// Prints a Markdown table for bench/RESULTS.md.
// Each measurement runs under /usr/bin/time (wall, peak RSS, CPU), and reports
// how much CPU other processes used meanwhile (the machine is shared).
import { spawnSync } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { serializeIndex } from '../lib/caibx.js';
import { indexFile } from '../lib/indexer.js';

const PARAMS = { min: 16384, avg: 65536, max: 262144 };
const CHUNK_SIZE_ARG = `${PARAMS.min}:${PARAMS.avg}:${PARAMS.max}`;
const SELF = fileURLToPath(import.meta.url);
const CLI = join(dirname(SELF), '..', 'daemon', 'cli.js');

function parseSize(s: string): number {
  const m = /^(\d+)([KMG]?)$/i.exec(s);
  if (!m) throw new Error(`bad size "${s}" (e.g. 1G, 256M, 1048576)`);
  return Number(m[1]) * 1024 ** ' KMG'.indexOf((m[2] || ' ').toUpperCase());
}

/** Writes `size` bytes of AES-256-CTR keystream from a fixed key: fast and reproducible. */
function generate(path: string, size: number): void {
  const cipher = createCipheriv('aes-256-ctr', createHash('sha256').update('deltad bench/make').digest(), Buffer.alloc(16));
  const zeros = Buffer.alloc(16 * 1024 * 1024);
  const fd = openSync(path, 'w');
  try {
    for (let done = 0; done < size; done += zeros.length) writeSync(fd, cipher.update(zeros.subarray(0, Math.min(zeros.length, size - done))));
  } finally {
    closeSync(fd);
  }
}

/** Busy CPU seconds of the whole machine so far (from /proc/stat). */
function machineBusySeconds(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = f;
  return (user + nice + system + irq + softirq + steal) / 100;
}

interface Measurement {
  name: string;
  command: string;
  wall: number;
  rssKiB: number;
  cpu: number;
  /** Average cores used by other processes during the run. */
  otherCores: number;
  index?: string;
  error?: string;
}

function measure(name: string, argv: string[], index: string | undefined, cwd: string): Measurement {
  const timeFile = join(cwd, 'time.txt');
  const busy0 = machineBusySeconds();
  const r = spawnSync('/usr/bin/time', ['-f', '%e %M %U %S', '-o', timeFile, ...argv], { cwd, encoding: 'utf8', maxBuffer: 1 << 26 });
  const busy1 = machineBusySeconds();
  const command = argv.map((a) => (a.includes(' ') ? `'${a}'` : a)).join(' ');
  const [wall, rssKiB, user, sys] = readFileSync(timeFile, 'utf8').trim().split('\n').pop()!.split(' ').map(Number);
  const m: Measurement = { name, command, wall, rssKiB, cpu: user + sys, otherCores: Math.max(0, (busy1 - busy0 - user - sys) / wall), index };
  if (r.status !== 0) m.error = `exit ${r.status}: ${(r.stderr || r.stdout).trim().split('\n').slice(-2).join(' / ')}`;
  return m;
}

async function childIndex(input: string, out: string, threads: number | undefined): Promise<void> {
  const index = await indexFile(input, { params: PARAMS, digest: 'sha512-256', threads });
  writeFileSync(out, serializeIndex(index));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '1G' },
      runs: { type: 'string', default: '1' },
      keep: { type: 'boolean', default: false },
      dir: { type: 'string' },
      // internal: the deltad indexFile child process
      'index-child': { type: 'string' },
      out: { type: 'string' },
      threads: { type: 'string' },
    },
  });
  if (values['index-child']) {
    await childIndex(values['index-child'], values.out!, values.threads ? Number(values.threads) : undefined);
    return;
  }
  const size = parseSize(values.size!);
  const runs = Number(values.runs);
  const dir = values.dir ?? join(tmpdir(), 'deltad-bench-make');
  mkdirSync(dir, { recursive: true });
  const input = join(dir, `random-${values.size}.bin`);
  const t0 = performance.now();
  generate(input, size);
  console.error(`generated ${input} (${size} bytes) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  spawnSync('cat', [input], { stdio: ['ignore', 'ignore', 'inherit'] }); // page cache warm for everyone

  const store = join(dir, 'casync.castr');
  const cliHasMake = existsSync(CLI) && / make\s/.test(spawnSync(process.execPath, [CLI, '--help'], { encoding: 'utf8' }).stdout);
  const plans: { name: string; argv: () => string[]; index: string; before?: () => void }[] = [
    {
      name: 'casync make, new store (chunk + SHA-512/256 + zstd + write chunks)',
      before: () => rmSync(store, { recursive: true, force: true }),
      argv: () => ['casync', `--chunk-size=${CHUNK_SIZE_ARG}`, `--store=${store}`, 'make', 'casync-new.caibx', input],
      index: 'casync-new.caibx',
    },
    {
      name: 'casync make, store already full (index only: chunk + SHA-512/256 + one access() per chunk)',
      argv: () => ['casync', `--chunk-size=${CHUNK_SIZE_ARG}`, `--store=${store}`, 'make', 'casync-index.caibx', input],
      index: 'casync-index.caibx',
    },
    {
      name: 'deltad indexFile, 1 thread',
      argv: () => [process.execPath, SELF, '--index-child', input, '--out', 'deltad-1.caibx', '--threads', '1'],
      index: 'deltad-1.caibx',
    },
    {
      name: `deltad indexFile, default threads (${Math.min(cpus().length, 4)})`,
      argv: () => [process.execPath, SELF, '--index-child', input, '--out', 'deltad-n.caibx'],
      index: 'deltad-n.caibx',
    },
  ];
  if (cliHasMake) {
    plans.push({
      name: 'deltad make (CLI)',
      argv: () => [process.execPath, CLI, 'make', `--chunk-size=${CHUNK_SIZE_ARG}`, 'cli.caibx', input],
      index: 'cli.caibx',
    });
  } else {
    console.error('note: `deltad make` is not in `deltad --help` yet; skipped');
  }

  const results: Measurement[][] = plans.map(() => []);
  for (let run = 0; run < runs; run++) {
    plans.forEach((p, i) => {
      p.before?.();
      const m = measure(p.name, p.argv(), join(dir, p.index), dir);
      console.error(`${p.name}: ${m.wall} s, ${(m.rssKiB / 1024).toFixed(0)} MiB${m.error ? ` FAILED ${m.error}` : ''}`);
      results[i].push(m);
    });
  }

  // Byte-identical indexes?
  const reference = readFileSync(join(dir, 'casync-index.caibx'));
  const mib = size / (1024 * 1024);
  const casyncIndexMBs = size / 1e6 / median(results[1].map((m) => m.wall));
  console.log(`Input: ${mib} MiB AES-256-CTR keystream, chunk sizes ${CHUNK_SIZE_ARG}, SHA-512/256; ${cpus().length} CPUs (${cpus()[0].model}); Node ${process.version}; ${runs} run(s), median shown; load average before: ${loadavg().map((l) => l.toFixed(2)).join(' ')}\n`);
  console.log('| what | wall s | MB/s | vs casync index-only | peak RSS MiB | CPU s | other load (cores) | index = casync |');
  console.log('|---|---|---|---|---|---|---|---|');
  results.forEach((ms, i) => {
    const wall = median(ms.map((m) => m.wall));
    const m = ms.find((x) => x.wall === wall)!;
    const same = !m.error && existsSync(m.index!) && readFileSync(m.index!).equals(reference);
    const mbs = size / 1e6 / wall;
    console.log(
      `| ${plans[i].name} | ${wall.toFixed(2)} | ${m.error ? 'failed' : mbs.toFixed(0)} | ${(mbs / casyncIndexMBs).toFixed(2)}× | ${(m.rssKiB / 1024).toFixed(0)} | ${m.cpu.toFixed(2)} | ${m.otherCores.toFixed(2)} | ${m.error ? m.error : same ? 'yes' : 'NO'} |`,
    );
  });
  console.log('\nCommands:');
  for (const ms of results) console.log(`    ${ms[0].command}`);
  if (!values.keep) rmSync(dir, { recursive: true, force: true });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[(s.length - 1) >> 1];
}

await main();
