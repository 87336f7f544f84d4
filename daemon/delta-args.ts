// Options shared by `deltad extract` and `deltad plan`: where an update's
// bytes may come from (seeds, stores, the image URL, the fetch mode).
import { existsSync } from 'node:fs';
import { UsageError } from '../lib/errors.js';
import type { FetchMode, SeedSpec, SourceOptions } from '../lib/delta/extract.js';
import type { CommandContext, OptionSpec } from './command.js';
import { list, str } from './cli-args.js';
import { parseRate } from './config.js';
import type { HttpClientOptions } from '../lib/fetch/http-client.js';

export const sourceOptionSpec: OptionSpec = {
  seed: { type: 'string', multiple: true },
  store: { type: 'string', multiple: true },
  'range-url': { type: 'string' },
  mode: { type: 'string' },
  'cache-dir': { type: 'string' },
  'ca-file': { type: 'string' },
  'low-speed-limit': { type: 'string' },
  'low-speed-time': { type: 'string' },
  'stall-timeout': { type: 'string' },
  json: { type: 'boolean' },
};

export const sourceOptionUsage = `  --seed FILE[:INDEX]  a local file that may hold chunks of the target (repeatable);
                       without INDEX it is chunked like the target and the index cached
  --store URL|DIR      casync/desync chunk store (repeatable, tried in order)
  --range-url URL      the target image itself, fetched with HTTP byte ranges
  --mode MODE          auto (default), range or store
  --cache-dir DIR      seed index cache (default $XDG_CACHE_HOME/deltad or ~/.cache/deltad)
  --ca-file FILE       PEM CA certificates trusted besides the system store ($DELTAD_CA_FILE)
  --low-speed-limit R  abort and retry answers slower than R bytes/s, e.g. 1K; 0 = off (default 1K)
  --low-speed-time S   ... for S seconds (default 30)
  --stall-timeout S    give up when no byte is verified for S seconds (default 300; 0 = never)
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

/** --name as a number in [min, max], or undefined. */
function numberArg(
  ctx: CommandContext, name: string, min: number, max: number, parse: (v: string) => number = Number,
): number | undefined {
  const v = str(ctx, name);
  if (v === undefined) return undefined;
  let n: number;
  try {
    n = parse(v);
  } catch (err) {
    throw new UsageError(`--${name}: ${(err as Error).message}`);
  }
  if (!Number.isFinite(n) || n < min || n > max) {
    throw new UsageError(`--${name}: "${v}" must be between ${min} and ${max}`);
  }
  return n;
}

/** TLS trust and transfer limits of the command's HTTP client. */
function httpOptions(ctx: CommandContext): HttpClientOptions {
  const caFile = str(ctx, 'ca-file') ?? (process.env.DELTAD_CA_FILE || undefined);
  const limits: HttpClientOptions['limits'] = {};
  const rate = numberArg(ctx, 'low-speed-limit', 0, 1024 ** 4, parseRate);
  if (rate !== undefined) limits.lowSpeedLimit = rate;
  const time = numberArg(ctx, 'low-speed-time', 1, 3600);
  if (time !== undefined) limits.lowSpeedTimeMs = time * 1000;
  return { caFile, limits };
}

export function sourceOptions(ctx: CommandContext): SourceOptions {
  const rangeUrl = str(ctx, 'range-url');
  if (rangeUrl !== undefined && !/^https?:\/\//i.test(rangeUrl)) throw new UsageError(`--range-url: "${rangeUrl}" is not an http(s) URL`);
  const stall = numberArg(ctx, 'stall-timeout', 0, 7 * 24 * 3600);
  return {
    httpOptions: httpOptions(ctx),
    stallMs: stall === undefined ? undefined : stall * 1000,
    seeds: list(ctx, 'seed').map(parseSeedArg),
    stores: list(ctx, 'store'),
    rangeUrl,
    mode: parseMode(str(ctx, 'mode')),
    cacheDir: str(ctx, 'cache-dir'),
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
