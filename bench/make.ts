// Indexing benchmark: `casync make` against deltad's indexFile (in-process, as a
// child process so its peak RSS is its own) and `deltad make`, on a deterministic
// random file. Usage: node dist/bench/make.js [--size 1G] [--runs 1] [--keep] [--dir DIR]
// Prints a Markdown table for bench/RESULTS.md.
// Each measurement runs under /usr/bin/time (wall, peak RSS, CPU), and reports
// how much CPU other processes used meanwhile (the machine is shared).
import { spawnSync } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { serializeIndex } from '../lib/format/caibx.js';
import { chunkEnds } from '../lib/chunking/chunker.js';
import { indexFile } from '../lib/chunking/indexer.js';

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
  const cipher = createCipheriv(
    'aes-256-ctr',
    createHash('sha256').update('deltad bench/make').digest(),
    Buffer.alloc(16),
  );
  const zeros = Buffer.alloc(16 * 1024 * 1024);
  const fd = openSync(path, 'w');
  try {
    for (let done = 0; done < size; done += zeros.length)
      writeSync(fd, cipher.update(zeros.subarray(0, Math.min(zeros.length, size - done))));
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

interface Plan {
  name: string;
  /** Which casync row it compares with: index only, or index plus a new store. */
  mode: 'index' | 'store';
  argv: string[];
  index: string;
  before?: () => void;
}

interface Measurement {
  name: string;
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
  const r = spawnSync('/usr/bin/time', ['-f', '%e %M %U %S', '-o', timeFile, ...argv], {
    cwd,
    encoding: 'utf8',
    maxBuffer: 1 << 26,
  });
  const busy1 = machineBusySeconds();
  const [wall, rssKiB, user, sys] = readFileSync(timeFile, 'utf8').trim().split('\n').pop()!.split(' ').map(Number);
  const m: Measurement = {
    name,
    wall,
    rssKiB,
    cpu: user + sys,
    otherCores: Math.max(0, (busy1 - busy0 - user - sys) / wall),
    index,
  };
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
      input: { type: 'string' },
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
  const runs = Number(values.runs);
  // A fresh directory of our own: the only thing removed at the end.
  const dir = mkdtempSync(join(values.dir ?? tmpdir(), 'deltad-bench-make-'));
  let input: string;
  let size: number;
  let what: string;
  if (values.input) {
    input = resolve(values.input);
    size = statSync(input).size;
    what = `${basename(input)} (${(size / (1024 * 1024)).toFixed(0)} MiB, given with --input)`;
  } else {
    size = parseSize(values.size!);
    input = join(dir, `random-${values.size}.bin`);
    const t0 = performance.now();
    generate(input, size); // always rewritten: same bytes every time
    console.error(`generated ${input} (${size} bytes) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    what = `${size / (1024 * 1024)} MiB AES-256-CTR keystream`;
  }
  spawnSync('cat', [input], { stdio: ['ignore', 'ignore', 'inherit'] }); // page cache warm for everyone

  const store = join(dir, 'casync.castr');
  const deltadStore = join(dir, 'deltad.castr');
  const cliHasMake =
    existsSync(CLI) && / make\s/.test(spawnSync(process.execPath, [CLI, '--help'], { encoding: 'utf8' }).stdout);
  const plans: Plan[] = [
    {
      name: 'casync make, new store (chunk + SHA-512/256 + zstd + write chunks)',
      mode: 'store',
      before: () => rmSync(store, { recursive: true, force: true }),
      argv: ['casync', `--chunk-size=${CHUNK_SIZE_ARG}`, `--store=${store}`, 'make', 'casync-new.caibx', input],
      index: 'casync-new.caibx',
    },
    {
      name: 'casync make, store already full (index only: chunk + SHA-512/256 + one access() per chunk)',
      mode: 'index',
      argv: ['casync', `--chunk-size=${CHUNK_SIZE_ARG}`, `--store=${store}`, 'make', 'casync-index.caibx', input],
      index: 'casync-index.caibx',
    },
    {
      name: 'deltad indexFile, 1 thread',
      mode: 'index',
      argv: [process.execPath, SELF, '--index-child', input, '--out', 'deltad-1.caibx', '--threads', '1'],
      index: 'deltad-1.caibx',
    },
    {
      name: `deltad indexFile, default threads (${Math.min(cpus().length, 4)})`,
      mode: 'index',
      argv: [process.execPath, SELF, '--index-child', input, '--out', 'deltad-n.caibx'],
      index: 'deltad-n.caibx',
    },
  ];
  if (cliHasMake) {
    plans.push(
      {
        name: 'deltad make (CLI, index only)',
        mode: 'index',
        argv: [process.execPath, CLI, 'make', `--chunk-size=${CHUNK_SIZE_ARG}`, 'cli.caibx', input],
        index: 'cli.caibx',
      },
      {
        name: 'deltad make --store (CLI, new store)',
        mode: 'store',
        before: () => rmSync(deltadStore, { recursive: true, force: true }),
        argv: [
          process.execPath,
          CLI,
          'make',
          `--chunk-size=${CHUNK_SIZE_ARG}`,
          '--store',
          deltadStore,
          'cli-store.caibx',
          input,
        ],
        index: 'cli-store.caibx',
      },
    );
  } else {
    console.error('note: `deltad make` is not in `deltad --help` yet; skipped');
  }

  // Rounds interleave the tools, so a burst of load from others hits all of them alike.
  const loadBefore = loadavg();
  const results: Measurement[][] = plans.map(() => []);
  for (let run = 0; run < runs; run++) {
    plans.forEach((p, i) => {
      p.before?.();
      const m = measure(p.name, p.argv, join(dir, p.index), dir);
      console.error(
        `${p.name}: ${m.wall} s, ${(m.rssKiB / 1024).toFixed(0)} MiB, others ${m.otherCores.toFixed(2)} cores${m.error ? ` FAILED ${m.error}` : ''}`,
      );
      results[i].push(m);
    });
  }

  const reference = readFileSync(join(dir, 'casync-index.caibx'));
  // Failed runs (e.g. a dist/ rebuilt by someone else mid-run) are reported, not timed.
  const ok = results.map((ms) => ms.filter((m) => !m.error));
  const best = ok.map((ms) => (ms.length ? ms.reduce((a, b) => (b.wall < a.wall ? b : a)) : undefined));
  const baseline = { index: best[1]?.wall ?? NaN, store: best[0]?.wall ?? NaN };
  console.log(
    `Input: ${what}, chunk sizes ${CHUNK_SIZE_ARG}, SHA-512/256; ` +
      `${cpus().length} CPUs (${cpus()[0].model}); Node ${process.version}; ${runs} round(s); load average (1/5/15 min) before: ${fmtLoad(loadBefore)}, after: ${fmtLoad(loadavg())}\n`,
  );
  console.log(
    "| what | best wall s | median wall s | MB/s (best) | vs casync, same mode | peak RSS MiB (max) | CPU s (best run) | others' load in best run (cores) | index = casync |",
  );
  console.log('|---|---|---|---|---|---|---|---|---|');
  results.forEach((ms, i) => {
    const m = best[i];
    const failures = ms.filter((x) => x.error);
    const note = failures.length ? ` (${failures.length} of ${ms.length} runs failed: ${failures[0].error})` : '';
    if (!m) {
      console.log(`| ${plans[i].name} | – | – | – | – | – | – | – | failed${note} |`);
      return;
    }
    const same = ok[i].every((x) => readFileSync(x.index!).equals(reference));
    console.log(
      `| ${plans[i].name} | ${m.wall.toFixed(2)} | ${median(ok[i].map((x) => x.wall)).toFixed(2)} | ${(size / 1e6 / m.wall).toFixed(0)} | ` +
        `${(baseline[plans[i].mode] / m.wall).toFixed(2)}× | ${(Math.max(...ok[i].map((x) => x.rssKiB)) / 1024).toFixed(0)} | ${m.cpu.toFixed(2)} | ` +
        `${m.otherCores.toFixed(2)} | ${same ? 'yes' : 'NO'}${note} |`,
    );
  });
  console.log(`\n${componentSpeeds(input)}`);
  console.log('\nCommands (run in the benchmark directory):');
  for (const p of plans) console.log(`    ${p.argv.join(' ')}`);
  if (values.keep) console.error(`kept ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
}

/** Single-thread speed of the two stages on the first 256 MiB (in memory): what bounds one core. */
function componentSpeeds(input: string): string {
  const fd = openSync(input, 'r');
  const data = Buffer.alloc(Math.min(256 * 1024 * 1024, statSync(input).size));
  readSync(fd, data, 0, data.length, 0);
  closeSync(fd);
  const mbs = (f: () => void): string => {
    const t = performance.now();
    f();
    return (data.length / 1e3 / (performance.now() - t)).toFixed(0);
  };
  const chunk = mbs(() => chunkEnds(data, PARAMS));
  const sha512 = mbs(() => {
    for (let off = 0; off < data.length; off += PARAMS.avg)
      createHash('sha512-256')
        .update(data.subarray(off, off + PARAMS.avg))
        .digest();
  });
  const sha256 = mbs(() => {
    for (let off = 0; off < data.length; off += PARAMS.avg)
      createHash('sha256')
        .update(data.subarray(off, off + PARAMS.avg))
        .digest();
  });
  return `One core, in memory, ${data.length >> 20} MiB (same load): chunker (WASM) ${chunk} MB/s, SHA-512/256 ${sha512} MB/s, SHA-256 ${sha256} MB/s (64 KiB pieces, node:crypto).`;
}

function fmtLoad(l: number[]): string {
  return l.map((x) => x.toFixed(2)).join(' ');
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[(s.length - 1) >> 1];
}

await main();
