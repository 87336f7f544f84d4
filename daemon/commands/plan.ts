// `deltad plan`: how big an update is before downloading it — bytes from
// seeds, and bytes and requests from the network per fetch mode.
import { planUpdate, type PlanReport } from '../../lib/delta/extract.js';
import type { Command } from '../command.js';
import { flag, positionals } from '../cli-args.js';
import { readIndexArg, sourceOptionSpec, sourceOptionUsage, sourceOptions } from '../delta-args.js';
import { formatBytes } from '../progress.js';

const pct = (n: number, of: number): string => (of > 0 ? `${((100 * n) / of).toFixed(1)}%` : '-');
const MODE_NAMES = {
  range: 'range (multi-range)',
  'range-single': 'range (single ranges)',
  store: 'store',
  blocks: 'blocks (multi-range)',
  'blocks-single': 'blocks (single ranges)',
} as const;

export function planText(index: string, r: PlanReport): string {
  const line = (label: string, n: number): string =>
    `${label.padEnd(16)}${String(n).padStart(14)} bytes  ${formatBytes(n).padStart(10)}  ${pct(n, r.targetSize).padStart(6)}`;
  const lines = [
    `Target:         ${index}: ${r.targetSize} bytes (${formatBytes(r.targetSize)}), ${r.chunks} chunks`,
    line('From seeds:', r.fromSeeds),
    line('Zero chunks:', r.fromZero),
    line('Repeats:', r.fromSelf),
    line('Missing:', r.missingBytes) + `  (${r.missingChunks} chunks in ${r.missingRuns} runs)`,
  ];
  if (r.rangeSupport)
    lines.push(
      `Range URL:      byte ranges ${r.rangeSupport.ranges ? 'yes' : 'no'}, multi-range ${r.rangeSupport.multi ? 'yes' : 'no'}`,
    );
  for (const m of r.modes) {
    const note = m.mode === 'store' ? '  (estimated from sampled chunk sizes)' : '';
    lines.push(
      `${`Network ${MODE_NAMES[m.mode]}:`.padEnd(31)}${String(m.bytes).padStart(14)} bytes  ${formatBytes(m.bytes).padStart(10)}  ${m.requests} requests${note}`,
    );
  }
  lines.push(`Auto picks:     ${r.chosen}`);
  return lines.join('\n') + '\n';
}

export const command: Command = {
  name: 'plan',
  usage: `Usage: deltad plan [--seed FILE[:INDEX]]... [--range-url URL] [--store URL|DIR]...
                   [--mode auto|range|store] [--json] INDEX

Plans the target INDEX (a path, an http(s) URL, or '-' for stdin) against
the seeds without downloading any chunk, and prints the bytes that come from
seeds, zero chunks and repeats, and the bytes and requests each fetch mode
would need.

Options:
${sourceOptionUsage}

Exit status: 0 planned, 1 failed (an index or server that cannot be read), 2 usage error.

Example:
  deltad plan --seed /usr/lib/os.img --range-url https://example.org/os_2.img https://example.org/os_2.img.caibx`,
  options: sourceOptionSpec,
  async run(ctx) {
    const [index] = positionals(ctx, ['INDEX']);
    const sources = sourceOptions(ctx);
    const report = await planUpdate(index === '-' ? await readIndexArg(index) : index, sources);
    ctx.stdout.write(flag(ctx, 'json') ? JSON.stringify(report, null, 2) + '\n' : planText(index, report));
    return 0;
  },
};
