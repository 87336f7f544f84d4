// Options shared by `deltad extract` and `deltad plan`: where an update's
// bytes may come from (seeds, stores, the image URL, the fetch mode).
import { existsSync } from 'node:fs';
import { UsageError } from '../lib/errors.js';
import type { FetchMode, SeedSpec, SourceOptions } from '../lib/delta/extract.js';
import type { CommandContext, OptionSpec } from './command.js';
import { list, parseSize, str } from './cli-args.js';

export const sourceOptionSpec: OptionSpec = {
  seed: { type: 'string', multiple: true },
  store: { type: 'string', multiple: true },
  'range-url': { type: 'string' },
  mode: { type: 'string' },
  'cache-dir': { type: 'string' },
  'max-target-size': { type: 'string' },
  json: { type: 'boolean' },
};

export const sourceOptionUsage = `  --seed FILE[:INDEX]  a local file that may hold chunks of the target (repeatable);
                       without INDEX it is chunked like the target and the index cached
  --store URL|DIR      casync/desync chunk store (repeatable, tried in order)
  --range-url URL      the target image itself, fetched with HTTP byte ranges
  --mode MODE          auto (default), range or store
  --cache-dir DIR      seed index cache (default $XDG_CACHE_HOME/deltad or ~/.cache/deltad)
  --max-target-size SIZE  largest image the index may describe, e.g. 8G (default 64G)
  --json               print a JSON summary instead of text`;

/** FILE[:INDEX]: split at the last ':' unless the whole argument names an existing file. */
export function parseSeedArg(arg: string): SeedSpec {
  const colon = arg.lastIndexOf(':');
  if (colon <= 0 || colon === arg.length - 1 || existsSync(arg)) return { path: arg };
  return { path: arg.slice(0, colon), index: arg.slice(colon + 1) };
}

export function parseMode(s: string | undefined): FetchMode {
  if (s === undefined) return 'auto';
  if (s === 'auto' || s === 'range' || s === 'store') return s;
  throw new UsageError(`--mode: "${s}" must be auto, range or store`);
}

export function sourceOptions(ctx: CommandContext): SourceOptions {
  const rangeUrl = str(ctx, 'range-url');
  const maxTarget = str(ctx, 'max-target-size');
  if (rangeUrl !== undefined && !/^https?:\/\//i.test(rangeUrl)) throw new UsageError(`--range-url: "${rangeUrl}" is not an http(s) URL`);
  return {
    seeds: list(ctx, 'seed').map(parseSeedArg),
    stores: list(ctx, 'store'),
    rangeUrl,
    mode: parseMode(str(ctx, 'mode')),
    cacheDir: str(ctx, 'cache-dir'),
    maxTargetSize: maxTarget === undefined ? undefined : parseSize(maxTarget, '--max-target-size'),
    onWarning: (m) => ctx.stderr.write(`deltad: warning: ${m}\n`),
  };
}

/** Aborts on SIGINT/SIGTERM so that an extract keeps its partial file; returns a disposer. */
export function abortOnSignals(ctl: AbortController): () => void {
  const onSignal = (sig: NodeJS.Signals): void => ctl.abort(new Error(`interrupted by ${sig}`));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
}
