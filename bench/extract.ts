// Delta extract benchmark: deltad (range and store modes, cold and warm seed
// index cache, seeds alone) against `casync extract --seed` and `zsync -i` on
// the same image pair and chunk parameters, through nginx on 127.0.0.1.
// Bytes and requests come from nginx's access log, wall time and peak RSS
// from GNU time. Every output is compared with the new image.
//
//   npm run build && node dist/bench/extract.js [PAIR...]
//   PAIR: v1-v2.repro (default), v2-v3.repro, synth
//   BENCH=/var/tmp/deltad-bench (corpus in $BENCH/img, work files in $BENCH/deltad-extract)
//   CHUNK=16384:65536:262144 (casync's default), PORT=8089
import { startNginx, type Nginx } from './nginx.js';
import { BENCH, CLI, DELTAD, PAIRS, casyncArtifacts, pair as corpusPair, sh, zsyncArtifact } from './corpus.js';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { loadavg } from 'node:os';

const CHUNK = process.env.CHUNK ?? '16384:65536:262144';
const PORT = Number(process.env.PORT ?? 8089);
const ORIGIN = `http://127.0.0.1:${PORT}`;

interface Row {
  pair: string;
  tool: string;
  ok: boolean;
  wallS: number;
  rssMiB: number;
  requests: number;
  bodyBytes: number;
  wireBytes: number;
  /** deltad's own wall time (from its --json summary): assembly without process start-up. */
  engineS?: number;
}

/** deltad's resume file for an output (removed so every run starts cold). */
const partialOf = (out: string): string => join(dirname(out), `.${basename(out)}.deltad-partial`);

/** Runs one client under GNU time and sums the access-log lines it caused. */
function measure(pair: string, tool: string, cmd: string[], nginx: Nginx, out: string | null, expected: string): Row {
  const before = nginx.entries().length;
  const timeFile = join(BENCH, 'deltad-extract', 'time.txt');
  if (out) for (const f of [out, partialOf(out), `${partialOf(out)}.journal`]) rmSync(f, { force: true });
  const r = spawnSync('/usr/bin/time', ['-f', '%e %M', '-o', timeFile, ...cmd], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  spawnSync('sleep', ['0.3']);
  const lines = nginx.entries().slice(before);
  const [wall, rss] = readFileSync(timeFile, 'utf8').trim().split('\n').pop()!.split(' ').map(Number);
  const ok = r.status === 0 && (out === null || spawnSync('cmp', ['-s', out, expected]).status === 0);
  if (!ok) process.stderr.write(`${tool}: exit ${r.status}\n${r.stderr.slice(-2000)}\n`);
  const row: Row = {
    pair,
    tool,
    ok,
    wallS: wall,
    rssMiB: Math.round(rss / 1024),
    requests: lines.length,
    bodyBytes: lines.reduce((n, e) => n + e.bodyBytes, 0),
    wireBytes: lines.reduce((n, e) => n + e.wireBytes, 0),
  };
  const summary = /^\{[\s\S]*\}\s*$/.test(r.stdout) ? JSON.parse(r.stdout) : null;
  if (summary?.wallMs !== undefined) row.engineS = summary.wallMs / 1000;
  process.stderr.write(
    `[${new Date().toISOString().slice(11, 19)} load ${loadavg()[0].toFixed(1)}] ${JSON.stringify(row)}\n`,
  );
  if (out) rmSync(out, { force: true });
  return row;
}

function runPair(pair: string): { rows: Row[]; plan: Record<string, unknown> } {
  const p = corpusPair(pair);
  const OLD = p.old;
  const NEW = p.new;
  const work = p.work;
  const www = join(work, 'www');
  // Server-side artifacts, made once per pair and chunk size (bench/corpus.ts, shared with bench/net.ts).
  const tag = CHUNK.replace(/:/g, '-');
  const { index, oldIndex } = casyncArtifacts(p, CHUNK);
  zsyncArtifact(p);

  const nginx = startNginx(join(work, 'nginx'), [{ port: PORT, root: www }]);
  const out = join(work, 'out.img');
  const cache = join(work, 'index-cache');
  const rows: Row[] = [];
  try {
    const plan = JSON.parse(
      sh(process.execPath, [
        CLI,
        'plan',
        '--json',
        '--seed',
        `${OLD}:${oldIndex}`,
        '--range-url',
        `${ORIGIN}/new.img`,
        '--store',
        `${ORIGIN}/new.${tag}.castr`,
        `${ORIGIN}/new.${tag}.caibx`,
      ]),
    );
    // Each mode gets only its own source, so no other probe touches the server.
    const source = (mode: string): string[] =>
      mode === 'store' ? ['--store', `${ORIGIN}/new.${tag}.castr`] : ['--range-url', `${ORIGIN}/new.img`];
    const deltad = (mode: string, extra: string[] = []): string[] => [
      ...DELTAD,
      'extract',
      '--json',
      '--mode',
      mode,
      ...source(mode),
      '--cache-dir',
      cache,
      ...extra,
      `${ORIGIN}/new.${tag}.caibx`,
      out,
    ];
    rmSync(cache, { recursive: true, force: true });
    rows.push(measure(pair, 'deltad range (cold: chunks the seed)', deltad('range', ['--seed', OLD]), nginx, out, NEW));
    rows.push(measure(pair, 'deltad range (warm index cache)', deltad('range', ['--seed', OLD]), nginx, out, NEW));
    rows.push(measure(pair, 'deltad store (warm index cache)', deltad('store', ['--seed', OLD]), nginx, out, NEW));
    rows.push(
      measure(
        pair,
        'deltad seeds only (new image as seed)',
        deltad('range', ['--seed', `${NEW}:${index}`]),
        nginx,
        out,
        NEW,
      ),
    );
    rows.push(
      measure(
        pair,
        'casync extract --seed',
        ['casync', `--store=${ORIGIN}/new.${tag}.castr`, `--seed=${OLD}`, 'extract', `${ORIGIN}/new.${tag}.caibx`, out],
        nginx,
        out,
        NEW,
      ),
    );
    rows.push(
      measure(
        pair,
        'zsync -i (4 KiB blocks)',
        ['zsync', '-q', '-i', OLD, '-o', out, `${ORIGIN}/new.img.zsync`],
        nginx,
        out,
        NEW,
      ),
    );
    rmSync(`${out}.zs-old`, { force: true });
    return { rows, plan };
  } finally {
    nginx.stop();
  }
}

const pairs = process.argv.slice(2).length ? process.argv.slice(2) : ['v1-v2.repro'];
const results: { pair: string; chunk: string; load: number[]; plan: Record<string, unknown>; rows: Row[] }[] = [];
for (const pair of pairs) {
  if (!PAIRS[pair]) throw new Error(`unknown pair ${pair} (${Object.keys(PAIRS).join(', ')})`);
  const load = loadavg();
  const { rows, plan } = runPair(pair);
  results.push({ pair, chunk: CHUNK, load, plan, rows });
}
writeFileSync(join(BENCH, 'deltad-extract', 'results.json'), JSON.stringify(results, null, 2));
for (const r of results) {
  console.log(`\n### ${r.pair}, chunks ${r.chunk} (load ${r.load.map((l) => l.toFixed(1)).join(' ')})\n`);
  console.log(
    `plan: missing ${r.plan.missingBytes} bytes in ${r.plan.missingChunks} chunks (${r.plan.missingRuns} runs); ` +
      `modes ${JSON.stringify(r.plan.modes)}\n`,
  );
  console.log('| client | ok | body bytes | wire bytes | requests | wall s | engine s | peak RSS MiB |');
  console.log('|---|---|---:|---:|---:|---:|---:|---:|');
  for (const x of r.rows) {
    console.log(
      `| ${x.tool} | ${x.ok ? 'yes' : 'NO'} | ${x.bodyBytes.toLocaleString('en')} | ${x.wireBytes.toLocaleString('en')} | ${x.requests} | ${x.wallS} | ${x.engineS ?? '-'} | ${x.rssMiB} |`,
    );
  }
}
