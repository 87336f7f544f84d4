// `deltad extract`: assemble a target image from seeds and the network,
// verified chunk by chunk, into OUT (renamed into place only when complete),
// or to stdout when OUT is '-'.
import { pipeline } from 'node:stream/promises';
import {
  extractToFile,
  keptPartialOf,
  openExtractStream,
  type AssembleOptions,
  type ExtractProgress,
  type ExtractResult,
} from '../../lib/delta/extract.js';
import { DeltaDisabledError, UsageError } from '../../lib/errors.js';
import { HttpClient } from '../../lib/fetch/http-client.js';
import { downloadToFile } from '../../lib/fetch/download.js';
import type { Command } from '../command.js';
import { flag, parseCount, positionals, str } from '../cli-args.js';
import { abortOnSignals, readIndexArg, sourceOptionSpec, sourceOptionUsage, sourceOptions } from '../delta-args.js';
import { createProgress, formatBytes } from '../progress.js';

/** Bytes that came from this machine: seeds, zero and repeated chunks, the chunk cache, local store directories. */
const localBytes = (r: ExtractProgress): number =>
  r.fromSeeds + r.fromZero + r.fromSelf + r.fromCache + r.fromLocalStore;

function summaryText(out: string, r: ExtractResult): string {
  return (
    `${out}: ${formatBytes(r.total)} assembled in ${(r.wallMs / 1000).toFixed(1)} s: ` +
    `${formatBytes(localBytes(r))} local (seeds ${formatBytes(r.fromSeeds)}, zero ${formatBytes(r.fromZero)}, repeats ${formatBytes(r.fromSelf)}` +
    `${r.fromLocalStore ? `, local store ${formatBytes(r.fromLocalStore)}` : ''}` +
    `${r.resumedBytes ? `, resumed ${formatBytes(r.resumedBytes)}` : ''}), ` +
    `${formatBytes(r.networkBytes)} over the network in ${r.networkRequests} requests (${r.mode} mode)`
  );
}

const detail = (p: ExtractProgress): string =>
  `local ${formatBytes(localBytes(p))}, net ${formatBytes(p.networkBytes)}`;

export const command: Command = {
  name: 'extract',
  usage: `Usage: deltad extract [--seed FILE[:INDEX]]... [--store URL|DIR]... [--range-url URL]
                      [--mode auto|range|store] [--sha256 HEX] [--cache-dir DIR]
                      [--concurrency N] [--timeout SECONDS] [--json] INDEX OUT

Downloads the index INDEX (a path, an http(s) URL, or '-' for stdin), takes
every chunk it can from the seeds (and from zero and repeated chunks), fetches
the rest, verifies each chunk, and renames the result to OUT only when it is
complete (and matches --sha256). An interrupted run leaves .OUT.deltad-partial
beside OUT; running the same command again resumes from it. While a run writes
OUT, another run to the same OUT is refused (.OUT.deltad-lock). OUT '-' writes the
image to stdout in order (the summary goes to stderr; with --sha256 the last
bytes are held back until the whole image matches).

A release can switch deltas off with a header on the image (X-KDE-Delta:
false): with --range-url, extract then downloads the full image instead. With
only --store, extract never asks for the image, so it cannot see that switch.

Options:
${sourceOptionUsage}
  --sha256 HEX         expected SHA-256 of the whole image
  --concurrency N      parallel network requests (default 8)

Exit status: 0 done, 1 failed (OUT untouched), 2 usage error.

Example:
  deltad extract --seed /usr/lib/os.img --range-url https://example.org/os_2.img \\
      https://example.org/os_2.img.caibx /var/tmp/os_2.img`,
  options: { ...sourceOptionSpec, sha256: { type: 'string' }, concurrency: { type: 'string' } },
  async run(ctx) {
    const [indexSpec, out] = positionals(ctx, ['INDEX', 'OUT']);
    const sha256 = str(ctx, 'sha256');
    if (sha256 !== undefined && !/^[0-9a-fA-F]{64}$/.test(sha256))
      throw new UsageError(`--sha256: "${sha256}" is not 64 hex digits`);
    if (indexSpec === '-' && out === '-') throw new UsageError('INDEX and OUT cannot both be stdin/stdout (-)');
    const toStdout = out === '-';
    const report = toStdout ? ctx.stderr : ctx.stdout;
    const ctl = new AbortController();
    const release = abortOnSignals(ctl);
    const bar = createProgress({ label: 'extract', interactive: ctx.interactive, stream: ctx.stderr });
    const sources = sourceOptions(ctx);
    try {
      const opts: AssembleOptions = {
        ...sources,
        sha256,
        concurrency: parseCount(str(ctx, 'concurrency'), '--concurrency', 8, 1, 256),
        signal: ctl.signal,
        onProgress: (p) => {
          bar.setTotal(p.total);
          bar.update(p.done, detail(p));
        },
      };
      let result: ExtractResult;
      if (toStdout) {
        const stream = openExtractStream(
          await readIndexArg(indexSpec, { timeoutMs: sources.timeoutMs, maxTargetSize: sources.maxTargetSize }),
          opts,
        );
        await pipeline(stream, ctx.stdout, { end: false });
        result = await stream.result;
      } else {
        // An index URL is downloaded by extractToFile, which counts its bytes.
        result = await extractToFile(
          indexSpec === '-' ? await readIndexArg('-', { maxTargetSize: sources.maxTargetSize }) : indexSpec,
          out,
          opts,
        );
      }
      bar.finish();
      const name = toStdout ? 'stdout' : out;
      report.write(
        flag(ctx, 'json') ? JSON.stringify({ out: name, ...result }, null, 2) + '\n' : summaryText(name, result) + '\n',
      );
      return 0;
    } catch (err) {
      bar.finish();
      // The release switched deltas off (X-KDE-Delta: false): the full image, as its clients would fetch it.
      if (err instanceof DeltaDisabledError && sources.rangeUrl && !toStdout && !ctl.signal.aborted) {
        const why = err.message.replace(/; download the full image$/, '');
        ctx.stderr.write(`deltad: notice: ${why}; downloading the full image\n`);
        const http = new HttpClient({ ...sources.httpOptions, timeoutMs: sources.timeoutMs });
        try {
          const r = await downloadToFile(http, sources.rangeUrl, out, { sha256, signal: ctl.signal });
          const verified = sha256 ? ', SHA-256 verified' : '';
          const text = `${out}: ${formatBytes(r.bytes)} downloaded whole from ${r.url}${verified}`;
          ctx.stdout.write((flag(ctx, 'json') ? JSON.stringify({ out, mode: 'full', ...r }, null, 2) : text) + '\n');
          return 0;
        } finally {
          await http.close();
        }
      }
      const kept = keptPartialOf(err);
      if (kept) {
        ctx.stderr.write(
          `deltad extract: ${ctl.signal.aborted ? 'interrupted; ' : ''}kept ${kept.path} (${formatBytes(kept.bytes)} of ${formatBytes(kept.total)} verified) and its journal; ` +
            `run the same command again to resume, or remove both: rm '${kept.path}' '${kept.journal}'\n`,
        );
      } else if (ctl.signal.aborted) ctx.stderr.write(`deltad extract: interrupted; nothing was kept\n`);
      throw err;
    } finally {
      release();
    }
  },
};
