// Options shared by `deltad extract` and `deltad plan`: where an update's
// bytes may come from (seeds, stores, the image URL, the fetch mode).
import { closeSync, existsSync, openSync, readSync } from 'node:fs';
import { parseIndex, startsLikeIndex, type ChunkIndex } from '../lib/format/caibx.js';
import { loadIndex } from '../lib/delta/extract.js';
import { UsageError } from '../lib/errors.js';
import type { FetchMode, SeedSpec, SourceOptions } from '../lib/delta/extract.js';
import type { CommandContext, OptionSpec } from './command.js';
import { list, parseSize, readStdin, str } from './cli-args.js';
import { parseRate } from './config.js';
import type { HttpClientOptions } from '../lib/fetch/http-client.js';
import { createProgress, type Progress } from './progress.js';

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
  'max-target-size': { type: 'string' },
  timeout: { type: 'string' },
  json: { type: 'boolean' },
};

export const sourceOptionUsage = `  --seed FILE[:INDEX]  a local image that may hold chunks of the target (repeatable):
                       the image first, then optionally its .caibx (desync's --seed
                       takes the index alone); without INDEX it is chunked like the
                       target and the index cached
  --store URL|DIR      casync/desync chunk store (repeatable, tried in order)
  --range-url URL      the target image itself, fetched with HTTP byte ranges
  --mode MODE          auto (default), range or store
  --cache-dir DIR      seed index cache (default $XDG_CACHE_HOME/deltad or ~/.cache/deltad)
  --ca-file FILE       PEM CA certificates trusted besides the system store ($DELTAD_CA_FILE)
  --low-speed-limit R  abort and retry answers slower than R bytes/s, e.g. 1K; 0 = off (default 1K)
  --low-speed-time S   ... for S seconds (default 30)
  --stall-timeout S    give up when no byte is verified for S seconds (default 300; 0 = never)
  --max-target-size SIZE  largest image the index may describe, e.g. 8G (default 64G)
  --timeout SECONDS    longest wait for a server's response headers or next body bytes
                       (default 30; a request that times out is retried once)
  --json               print a JSON summary instead of text`;

/** An index by its first bytes, or by its name when it cannot be read. */
function looksLikeIndex(path: string): boolean {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const head = Buffer.alloc(16);
    readSync(fd, head, 0, 16, 0);
    return startsLikeIndex(head);
  } catch {
    return /\.cai[bd]x$/.test(path);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * FILE[:INDEX]: split at the last ':' unless the whole argument names an existing file.
 * INDEX:FILE (the index first) is refused with the order spelled out.
 */
export function parseSeedArg(arg: string): SeedSpec {
  const colon = arg.lastIndexOf(':');
  if (colon <= 0 || colon === arg.length - 1 || existsSync(arg)) return { path: arg };
  const path = arg.slice(0, colon);
  const index = arg.slice(colon + 1);
  if (looksLikeIndex(path) && !looksLikeIndex(index)) {
    throw new UsageError(
      `--seed ${arg}: ${path} is the index and ${index} the image; the image comes first: --seed ${index}:${path}`,
    );
  }
  return { path, index };
}

export function parseMode(s: string | undefined): FetchMode {
  if (s === undefined) return 'auto';
  if (s === 'auto' || s === 'range' || s === 'store') return s;
  throw new UsageError(`--mode: "${s}" must be auto, range or store`);
}

/** --name as a number in [min, max], or undefined. */
function numberArg(
  ctx: CommandContext,
  name: string,
  min: number,
  max: number,
  parse: (v: string) => number = Number,
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

/** --timeout SECONDS → ms (undefined: the client's default). */
export function parseTimeout(s: string | undefined): number | undefined {
  if (s === undefined) return undefined;
  const v = Number(s);
  if (!Number.isFinite(v) || v <= 0 || v > 3600)
    throw new UsageError(`--timeout: "${s}" must be a number of seconds from 0.001 to 3600`);
  return Math.max(1, Math.round(v * 1000));
}

export function sourceOptions(ctx: CommandContext): SourceOptions {
  const rangeUrl = str(ctx, 'range-url');
  const maxTarget = str(ctx, 'max-target-size');
  if (rangeUrl !== undefined && !/^https?:\/\//i.test(rangeUrl))
    throw new UsageError(`--range-url: "${rangeUrl}" is not an http(s) URL`);
  const stall = numberArg(ctx, 'stall-timeout', 0, 7 * 24 * 3600);
  return {
    httpOptions: httpOptions(ctx),
    stallMs: stall === undefined ? undefined : stall * 1000,
    seeds: list(ctx, 'seed').map(parseSeedArg),
    stores: list(ctx, 'store'),
    rangeUrl,
    mode: parseMode(str(ctx, 'mode')),
    cacheDir: str(ctx, 'cache-dir'),
    maxTargetSize: maxTarget === undefined ? undefined : parseSize(maxTarget, '--max-target-size'),
    timeoutMs: parseTimeout(str(ctx, 'timeout')),
    onSeedIndexing: seedIndexingBars(ctx),
    onWarning: (m) => ctx.stderr.write(`deltad: warning: ${m}\n`),
  };
}

/** A progress bar per seed being chunked (a real image takes tens of seconds). */
function seedIndexingBars(ctx: CommandContext): SourceOptions['onSeedIndexing'] {
  if (!ctx.interactive) return undefined;
  const bars = new Map<string, Progress | null>(); // null: finished
  return (path, done, total) => {
    let bar = bars.get(path);
    if (bar === null) return;
    if (!bar) {
      bar = createProgress({ label: `chunking seed ${path}`, total, interactive: true, stream: ctx.stderr });
      bars.set(path, bar);
    }
    bar.update(done);
    if (done >= total) {
      bar.finish();
      bars.set(path, null);
    }
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

/** An INDEX argument: '-' reads it from stdin, an http(s) URL is downloaded, anything else is a file. */
export async function readIndexArg(
  spec: string,
  opts: { allowArchive?: boolean; timeoutMs?: number; maxTargetSize?: number } = {},
): Promise<ChunkIndex> {
  if (spec === '-')
    return parseIndex(await readStdin(), {
      source: 'stdin',
      allowArchive: opts.allowArchive ?? false,
      maxTargetSize: opts.maxTargetSize,
    });
  return loadIndex(spec, opts);
}
