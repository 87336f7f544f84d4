// The high-level delta API that the CLI, the sysupdate daemon and the fleet
// proxy share: load a target index, plan it against local seeds, and assemble
// it (to a file, or as an ordered verified byte stream) from seeds, zero and
// repeated chunks, an optional chunk cache, and a remote source (HTTP byte
// ranges against the image, or casync chunk stores).
import type { ExtractProgress, ExtractResult } from '../assemble/progress.js';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { MAX_INDEX_BYTES, parseIndex, readIndexFile, type ChunkIndex } from '../format/caibx.js';
import { OriginError, UsageError } from '../errors.js';
import { HttpClient } from '../fetch/http-client.js';
import { IndexCache, defaultCacheDir, type IndexBuilder } from '../seed/index-cache.js';
import { indexFile } from '../chunking/indexer.js';
import type { ChunkerVariant } from '../chunking/chunker.js';
import { planChunks, type Plan, type PlanTotals } from '../plan/planner.js';
import { RangeFetcher, planRangeRequests, type RangeSupport } from '../fetch/range-fetcher.js';
import { RangeSource, StoreSource, type RemoteSource, type Run } from '../assemble/remote-source.js';
import { Assembler } from '../assemble/assembler.js';
import { OrderedStream } from '../assemble/ordered-stream.js';
import { PartialFile } from '../assemble/partial-file.js';
import { EncoderPool, defaultThreads } from '../store/chunk-encoder.js';
import { BufferPool } from '../util/buffer-pool.js';
import { closeSeeds, openSeed, type Seed } from '../seed/seed.js';
import { openStore } from '../store/open-store.js';
import { HttpStore } from '../store/http-store.js';
import { LocalStore } from '../store/local-store.js';
import type { ChunkStore, WritableChunkStore } from '../store/types.js';
import { costBlockPath, extractViaBlocks, streamViaBlocks, type BlockPathChoice } from '../blockpack/index.js';

/** How missing chunks are fetched: byte ranges of the image, a chunk store, or chosen per update. */
export type FetchMode = 'auto' | 'range' | 'store';

/** A local file that may hold chunks of the target; opened read-only. */
export interface SeedSpec {
  path: string;
  /** Its index (path to a .caibx, or parsed). Omitted: chunked with the target's parameters, cached. */
  index?: string | ChunkIndex;
}

/** Where the bytes of an update can come from. Shared by planUpdate, extractToFile and openExtractStream. */
export interface SourceOptions {
  seeds?: SeedSpec[];
  /** Chunk stores: URL, directory, or an opened store; tried in order. */
  stores?: (string | ChunkStore)[];
  /** URL of the target image itself, for HTTP byte-range fetching. */
  rangeUrl?: string;
  /** Default 'auto'. */
  mode?: FetchMode;
  /** Directory of cached seed indexes (default $XDG_CACHE_HOME/deltad or ~/.cache/deltad). */
  cacheDir?: string;
  /** HTTP client to use (shared keep-alive pools); one is created and closed when omitted. */
  http?: HttpClient;
  /** For the client created when `http` is omitted: longest wait for response headers or body bytes (ms, default 30 s). */
  timeoutMs?: number;
  /** Use chunks that repeat inside the target (default true). */
  selfSeed?: boolean;
  /** Use all-zero chunks without fetching them (default true). */
  nullSeed?: boolean;
  /** Use the release's block pack (IMAGE.bpidx next to rangeUrl, docs/BLOCKPACK.md) when it is the cheapest path (default true). */
  blockPack?: boolean;
  /** Called while a seed without a usable index is being chunked (bytes of that seed read so far). */
  onSeedIndexing?: (path: string, done: number, total: number) => void;
  /** Called with one-line warnings (a seed that lies, a fallback from multi-range). */
  onWarning?: (message: string) => void;
  signal?: AbortSignal;
}

export interface AssembleOptions extends SourceOptions {
  /** Concurrent remote requests (default 8). */
  concurrency?: number;
  /** Total attempts per transient failure (default 4); wrong chunk content is retried once. */
  attempts?: number;
  /** Read before any remote source, filled with every verified fetched chunk (the fleet proxy's cache). */
  chunkCache?: WritableChunkStore;
  /** Expected SHA-256 (hex) of the whole target. */
  sha256?: string;
  /** Called as bytes are verified (at most every few ms). */
  onProgress?: (p: ExtractProgress) => void;
}

export interface ExtractToFileOptions extends AssembleOptions {
  /** Reuse `.<out>.deltad-partial` from an interrupted run (default true). */
  resume?: boolean;
  /** File mode of the output (default 0o644). */
  fileMode?: number;
}

export interface ExtractStreamOptions extends AssembleOptions {
  /** Assemble only target bytes [start, end) (default the whole target). */
  start?: number;
  end?: number;
  /** Bytes of verified data held ahead of the consumer (default 32 MiB). */
  windowBytes?: number;
}

/** Byte counters of one assembly, in target bytes unless named otherwise. */
/** What one way of fetching the missing chunks would cost. */
export type { ExtractProgress, ExtractResult } from '../assemble/progress.js';

export interface ModeCost {
  mode: 'range' | 'range-single' | 'store' | 'blocks' | 'blocks-single';
  /** Estimated bytes over the network (store: missing bytes times a sampled compression ratio; 0 for local directories). */
  bytes: number;
  requests: number;
}

/** The update-size answer: the plan's totals (missingBytes: unique chunk bytes from the network), per fetch mode. */
export interface PlanReport extends Omit<PlanTotals, 'bytes'> {
  targetSize: number;
  /** Modes available for this origin (probed), with their costs. */
  modes: ModeCost[];
  /** What auto mode would pick ('none' when nothing is missing). */
  chosen: 'range' | 'store' | 'none' | 'blocks';
  /** Whether the range URL answered byte ranges / multi-range (undefined: no range URL). */
  rangeSupport?: { ranges: boolean; multi: boolean };
}

/** A readable stream of verified target bytes, in order. */
export interface ExtractStream extends Readable {
  /** Counters so far. */
  readonly progress: ExtractProgress;
  /** Settles when assembly ends: resolves with the summary, rejects with the error that destroyed the stream. */
  readonly result: Promise<ExtractResult>;
}

/** What one network request is worth in bytes when comparing fetch modes (latency, headers). */
const REQUEST_COST_BYTES = 16 * 1024;
/** Framing bytes per part of a multipart/byteranges answer (boundary, part headers). */
const PART_OVERHEAD_BYTES = 100;
const DEFAULT_CONCURRENCY = 8;
const DEFAULT_WINDOW_BYTES = 32 * 1024 * 1024;
const PROGRESS_INTERVAL_MS = 200;
/** Seed bytes from which hashing on worker threads pays for starting them. */
const HASH_THREADS_FROM_BYTES = 64 * 1024 * 1024;

/** Hashing threads for a plan that reads many seed bytes, else none (inline). */
function hashPoolFor(plan: Plan): EncoderPool | undefined {
  return plan.totals.fromSeeds >= HASH_THREADS_FROM_BYTES ? new EncoderPool(Math.min(2, defaultThreads())) : undefined;
}

const isUrl = (s: string): boolean => /^https?:\/\//i.test(s);

/** Loads a target index from a local path or an http(s) URL (verified strictly). */
export async function loadIndex(
  spec: string,
  opts: { http?: HttpClient; timeoutMs?: number; signal?: AbortSignal; allowArchive?: boolean } = {},
): Promise<ChunkIndex> {
  const allowArchive = opts.allowArchive ?? false;
  if (!isUrl(spec)) return readIndexFile(spec, { allowArchive });
  const http = opts.http ?? new HttpClient({ timeoutMs: opts.timeoutMs });
  try {
    const res = await http.getBuffer(spec, { signal: opts.signal, maxBytes: MAX_INDEX_BYTES });
    if (res.status === 404 || res.status === 410) throw new OriginError(`GET ${spec}: HTTP ${res.status} (no such index)`, { status: res.status });
    return parseIndex(res.body, { source: spec, allowArchive });
  } finally {
    if (!opts.http) await http.close();
  }
}

/** The target index and what downloading it cost (nothing for a local path or a parsed index). */
async function loadTarget(target: string | ChunkIndex, opts: SourceOptions): Promise<{ index: ChunkIndex; requests: number; bytes: number }> {
  if (typeof target !== 'string') return { index: target, requests: 0, bytes: 0 };
  const http = opts.http ?? new HttpClient({ timeoutMs: opts.timeoutMs });
  const before = { ...http.stats };
  try {
    const index = await loadIndex(target, { http, signal: opts.signal });
    return { index, requests: http.stats.requests - before.requests, bytes: http.stats.bytes - before.bytes };
  } finally {
    if (!opts.http) await http.close();
  }
}

/** The indexer, for seeds without an index, reporting its progress to `onSeedIndexing`. */
function seedIndexer(onSeedIndexing: SourceOptions['onSeedIndexing']): IndexBuilder {
  return (path, key, signal) => indexFile(path, {
    params: key.params, digest: key.digest, variant: key.variant as ChunkerVariant | undefined, signal,
    onProgress: onSeedIndexing && ((done, total) => onSeedIndexing(path, done, total)),
  });
}

/** Everything an operation opened for its sources; close() releases what it owns. */
interface Context {
  http: HttpClient;
  seeds: Seed[];
  stores: ChunkStore[];
  close(): Promise<void>;
}

async function openContext(target: ChunkIndex, opts: AssembleOptions): Promise<Context> {
  const ownsHttp = !opts.http;
  const http = opts.http ?? new HttpClient({ connections: opts.concurrency ?? DEFAULT_CONCURRENCY, attempts: opts.attempts, timeoutMs: opts.timeoutMs });
  const owned: ChunkStore[] = [];
  const seeds: Seed[] = [];
  const ctx: Context = {
    http,
    seeds,
    stores: (opts.stores ?? []).map((s) => {
      if (typeof s !== 'string') return s;
      const store = openStore(s, { client: http, digest: target.digest, maxChunkSize: target.params.max });
      owned.push(store);
      return store;
    }),
    async close() {
      await closeSeeds(seeds);
      await Promise.all(owned.map((s) => s.close?.().catch(() => {})));
      if (ownsHttp) await http.close();
    },
  };
  try {
    const cache = new IndexCache(opts.cacheDir);
    for (const spec of opts.seeds ?? []) {
      const build = seedIndexer(opts.onSeedIndexing);
      seeds.push(await openSeed(spec.path, spec.index, { target, cache, build, onWarning: opts.onWarning, signal: opts.signal }));
    }
  } catch (err) {
    await ctx.close();
    throw err;
  }
  return ctx;
}

const remoteRuns = (plan: Plan): Run[] => plan.segments.filter((s) => s.kind === 'remote').map((s) => ({ first: s.first, count: s.count }));

function rangeCost(plan: Plan, multi: boolean): ModeCost {
  const reqs = planRangeRequests(plan.target, remoteRuns(plan), { multi });
  let bytes = 0;
  for (const r of reqs) bytes += r.bytes + (r.ranges.length > 1 ? PART_OVERHEAD_BYTES * r.ranges.length : 0);
  return { mode: multi ? 'range' : 'range-single', bytes, requests: reqs.length };
}

/** Missing chunks whose compressed size is asked (HEAD) to estimate an HTTP store's bytes. */
const STORE_SAMPLE_CHUNKS = 8;

/**
 * Compressed/uncompressed size of a few missing chunks, evenly spread, from
 * the Content-Length of HEAD requests to the store (1 when none answers).
 */
async function sampleCompression(plan: Plan, store: HttpStore, http: HttpClient, probe: { requests: number }, signal?: AbortSignal): Promise<number> {
  const missing = remoteRuns(plan).flatMap((r) => Array.from({ length: r.count }, (_, k) => r.first + k));
  const step = Math.max(1, Math.floor(missing.length / STORE_SAMPLE_CHUNKS));
  let raw = 0;
  let stored = 0;
  for (let k = 0; k < missing.length && k / step < STORE_SAMPLE_CHUNKS; k += step) {
    const i = missing[k];
    probe.requests++;
    const res = await http.request(store.chunkUrl(plan.target.id(i)), { method: 'HEAD', signal }).catch(() => null);
    if (!res) continue;
    await res.body.dump();
    const len = Number(res.headers['content-length']);
    if (res.statusCode !== 200 || !Number.isFinite(len)) continue;
    raw += plan.target.chunkSize(i);
    stored += len;
  }
  return raw > 0 ? stored / raw : 1;
}

/**
 * Store-mode cost: local directories cost no network; an HTTP store's bytes
 * are the missing bytes scaled by a sampled compression ratio when `sample`,
 * else the uncompressed bytes (an upper bound for compressible data).
 */
async function storeCost(plan: Plan, ctx: Context, sample: boolean, probe: { requests: number }, signal?: AbortSignal): Promise<ModeCost> {
  const stores = ctx.stores;
  if (stores.every((s) => s instanceof LocalStore)) return { mode: 'store', bytes: 0, requests: 0 };
  const batch = stores.some((s) => s.getMany) ? 32 : 1;
  const first = stores[0];
  const ratio = sample && first instanceof HttpStore ? await sampleCompression(plan, first, ctx.http, probe, signal) : 1;
  return { mode: 'store', bytes: Math.round(plan.totals.missingBytes * ratio), requests: Math.ceil(plan.totals.missingChunks / batch) };
}

const weigh = (c: ModeCost): number => c.bytes + c.requests * REQUEST_COST_BYTES;

interface RemoteChoice {
  remote?: RemoteSource;
  /** Chunk buffers of a range source, for the assembler to hand back. */
  buffers?: BufferPool;
  chosen: 'range' | 'store' | 'none';
  modes: ModeCost[];
  rangeSupport?: { ranges: boolean; multi: boolean };
  /** Requests and bytes spent on the index download, probing the range URL and sampling the store. */
  probe: { requests: number; bytes: number };
}

/**
 * Picks how missing chunks are fetched. Auto probes the range URL and samples
 * the store's compressed chunk sizes when it has to choose (or when asked, for
 * a plan report) and weighs bytes against requests; a range source in auto
 * mode hands over to the stores if the server turns out to ignore ranges.
 */
async function chooseRemote(plan: Plan, ctx: Context, opts: AssembleOptions, probeAlways = false): Promise<RemoteChoice> {
  const mode = opts.mode ?? 'auto';
  if (mode !== 'auto' && mode !== 'range' && mode !== 'store') throw new UsageError(`unknown mode "${mode}" (expected auto, range or store)`);
  if (mode === 'range' && !opts.rangeUrl) throw new UsageError('range mode needs the image URL (--range-url)');
  if (mode === 'store' && ctx.stores.length === 0) throw new UsageError('store mode needs a chunk store (--store)');
  const missing = plan.totals.missingChunks > 0;
  const retry = { attempts: ctx.http.attempts, retryBaseMs: ctx.http.retryBaseMs };
  const useRange = mode !== 'store' && opts.rangeUrl !== undefined;
  const useStore = mode !== 'range' && ctx.stores.length > 0;
  let support: RangeSupport | undefined;
  const probe = { requests: 0, bytes: 0 };
  if (useRange && (probeAlways || (missing && useStore))) {
    const f = new RangeFetcher(ctx.http, opts.rangeUrl!, plan.target.size);
    support = await f.probe(opts.signal);
    probe.requests = f.stats.requests;
    probe.bytes = f.stats.bytes;
  }
  const modes: ModeCost[] = [];
  if (useRange && support?.ranges !== false) {
    if (support?.multi !== false) modes.push(rangeCost(plan, true));
    modes.push(rangeCost(plan, false));
  }
  if (useStore) modes.push(await storeCost(plan, ctx, missing && (probeAlways || useRange), probe, opts.signal));
  const rangeSupport = support && { ranges: support.ranges, multi: support.multi };
  if (!missing) return { chosen: 'none', modes, rangeSupport, probe };
  if (mode === 'range' && support?.ranges === false) throw new OriginError(`${opts.rangeUrl}: the server does not serve byte ranges`);
  if (modes.length === 0) {
    const missingText = `${plan.totals.missingChunks} chunks (${plan.totals.missingBytes} bytes) are in no seed`;
    // What a server supports is never a usage error; not naming any source is.
    if (useRange) throw new OriginError(`${missingText}, and ${opts.rangeUrl} does not serve byte ranges (no chunk store was given)`);
    throw new UsageError(`${missingText} and there is no remote source: give --range-url or --store`);
  }
  const best = modes.reduce((a, b) => (weigh(b) < weigh(a) ? b : a));
  const stores = useStore ? new StoreSource(plan.target, ctx.stores, ctx.http) : undefined;
  if (best.mode === 'store') return { remote: stores, chosen: 'store', modes, rangeSupport, probe };
  const buffers = new BufferPool();
  const remote = new RangeSource(plan.target, ctx.http, opts.rangeUrl!, retry, { multi: best.mode === 'range' }, opts.onWarning, stores, buffers);
  return { remote, buffers, chosen: 'range', modes, rangeSupport, probe };
}

/**
 * The block path (lib/blockpack), when the release hosts a block pack next to
 * the range URL: its costs, and whether it beats the chunk path and a full
 * download. A pack that cannot be read is warned about and ignored.
 */
async function blockPathFor(index: ChunkIndex, ctx: Context, opts: SourceOptions, choice: RemoteChoice): Promise<{ path: BlockPathChoice; cheaper: boolean } | null> {
  if (!opts.rangeUrl || opts.blockPack === false || choice.rangeSupport?.ranges === false) return null;
  try {
    const path = await costBlockPath({
      http: ctx.http, imageUrl: opts.rangeUrl, seeds: ctx.seeds.map((s) => s.path), cacheDir: opts.cacheDir,
      multi: choice.rangeSupport?.multi, requestCost: REQUEST_COST_BYTES, signal: opts.signal,
    });
    if (!path) return null;
    const chunkPath = Math.min(...choice.modes.map(weigh));
    return { path, cheaper: choice.chosen !== 'none' && path.weight < Math.min(chunkPath, index.size + REQUEST_COST_BYTES) };
  } catch (err) {
    if (opts.signal?.aborted) throw err;
    opts.onWarning?.(`block pack for ${opts.rangeUrl}: ${(err as Error).message}; using the chunk path`);
    return null;
  }
}

/** Plans a target against the sources without fetching any chunk: the update-size query. */
export async function planUpdate(target: string | ChunkIndex, opts: SourceOptions = {}): Promise<PlanReport> {
  const index = typeof target === 'string' ? await loadIndex(target, opts) : target;
  const ctx = await openContext(index, opts);
  try {
    const plan = planChunks(index, ctx.seeds, { selfSeed: opts.selfSeed, nullSeed: opts.nullSeed });
    const choice = await chooseRemote(plan, ctx, opts, true);
    const blocks = await blockPathFor(index, ctx, opts, choice);
    const t = plan.totals;
    return {
      targetSize: index.size,
      chunks: index.count,
      fromSeeds: t.fromSeeds,
      fromSelf: t.fromSelf,
      fromZero: t.fromZero,
      missingBytes: t.missingBytes,
      missingChunks: t.missingChunks,
      missingRuns: t.missingRuns,
      modes: [...choice.modes, ...(blocks?.path.costs ?? [])],
      chosen: blocks?.cheaper ? 'blocks' : choice.chosen,
      rangeSupport: choice.rangeSupport,
    };
  } finally {
    await ctx.close();
  }
}

function newProgress(total: number): ExtractProgress {
  return { total, done: 0, fromSeeds: 0, fromSelf: 0, fromZero: 0, fromCache: 0, fromNetwork: 0, fromLocalStore: 0, networkBytes: 0, networkRequests: 0 };
}

/** Runs the assembler with periodic progress callbacks; network counters include the probe. */
async function runAssembly(assembler: Assembler, progress: ExtractProgress, choice: RemoteChoice, onProgress?: (p: ExtractProgress) => void): Promise<void> {
  const report = (): void => {
    if (choice.remote) {
      progress.fromLocalStore = choice.remote.stats.localBytes ?? 0;
      progress.networkBytes = choice.remote.stats.bytes + choice.probe.bytes;
      progress.networkRequests = choice.remote.stats.requests + choice.probe.requests;
    } else {
      progress.networkBytes = choice.probe.bytes;
      progress.networkRequests = choice.probe.requests;
    }
    onProgress?.({ ...progress });
  };
  const timer = setInterval(report, PROGRESS_INTERVAL_MS);
  timer.unref();
  try {
    await assembler.run();
  } finally {
    clearInterval(timer);
    report();
  }
}

function summary(progress: ExtractProgress, choice: RemoteChoice, assembler: Assembler, started: number, sha256?: string): ExtractResult {
  return {
    ...progress,
    mode: choice.remote ? choice.remote.kind : 'none',
    sha256,
    wallMs: Date.now() - started,
    resumedBytes: assembler.resumedBytes,
    seedMismatches: assembler.seedMismatches,
  };
}

/**
 * Assembles the target into `out`: writes a temp file beside it, verifies
 * every chunk (and the SHA-256 when given), then renames it into place. On
 * failure `out` is untouched and the partial file is kept for resuming.
 */
export async function extractToFile(target: string | ChunkIndex, out: string, opts: ExtractToFileOptions = {}): Promise<ExtractResult> {
  const started = Date.now();
  if (opts.sha256 !== undefined && !/^[0-9a-fA-F]{64}$/.test(opts.sha256)) throw new UsageError(`invalid SHA-256 "${opts.sha256}": expected 64 hex digits`);
  const { index, ...indexCost } = await loadTarget(target, opts);
  const ctx = await openContext(index, opts);
  try {
    const { file, resumeSeed } = await PartialFile.open(out, index, opts.resume !== false);
    let assembler: Assembler | undefined;
    try {
      const seeds = resumeSeed ? [resumeSeed, ...ctx.seeds] : ctx.seeds;
      const plan = planChunks(index, seeds, { selfSeed: opts.selfSeed, nullSeed: opts.nullSeed });
      const choice = await chooseRemote(plan, ctx, opts);
      choice.probe.requests += indexCost.requests;
      choice.probe.bytes += indexCost.bytes;
      const blocks = await blockPathFor(index, ctx, opts, choice);
      if (blocks?.cheaper) {
        const viaBlocks = await extractViaBlocks(blocks.path, out, { http: ctx.http, target: index, sha256: opts.sha256, onWarning: opts.onWarning, onProgress: opts.onProgress, signal: opts.signal });
        if (viaBlocks) {
          await file.discard();
          return viaBlocks;
        }
      }
      const progress = newProgress(index.size);
      const hashPool = hashPoolFor(plan);
      assembler = new Assembler({
        plan, sink: file, remote: choice.remote, chunkBuffers: choice.buffers, chunkCache: opts.chunkCache, hashPool,
        concurrency: opts.concurrency ?? DEFAULT_CONCURRENCY, progress, onWarning: opts.onWarning, signal: opts.signal,
      });
      try {
        await runAssembly(assembler, progress, choice, opts.onProgress);
      } finally {
        await hashPool?.close();
      }
      const sha256 = await file.commit(opts.fileMode ?? 0o644, opts.sha256);
      return summary(progress, choice, assembler, started, sha256);
    } catch (err) {
      // Keep what an interrupted run wrote; a run that failed before writing leaves nothing behind.
      if (resumeSeed || (assembler && assembler.wroteAny)) await file.keep();
      else await file.discard();
      throw err;
    }
  } finally {
    await ctx.close();
  }
}

/**
 * Assembles the target (or a byte range of it) as an ordered stream of
 * verified bytes with bounded memory. With `sha256`, the final bytes are held
 * back until the whole-file digest matches (the stream errors otherwise).
 * Aborting `signal` or destroying the stream cancels all fetches. Every
 * failure (origin, seed, sink) destroys the stream with that error, and
 * `result` rejects with it, without waiting for the consumer to read on.
 */
export function openExtractStream(target: ChunkIndex, opts: ExtractStreamOptions = {}): ExtractStream {
  const started = Date.now();
  const start = opts.start ?? 0;
  const end = opts.end ?? target.size;
  if (!(Number.isSafeInteger(start) && Number.isSafeInteger(end) && start >= 0 && start <= end && end <= target.size)) {
    throw new UsageError(`invalid byte range [${start}, ${end}) of a ${target.size}-byte target`);
  }
  const windowBytes = opts.windowBytes ?? DEFAULT_WINDOW_BYTES;
  // Everything below stops on the caller's signal (even one aborted already) or when the consumer destroys the stream.
  const cancel = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, cancel.signal]) : cancel.signal;
  const stream = new OrderedStream({ target, start, end, windowBytes, sha256: opts.sha256, onCancel: (reason) => cancel.abort(reason) });
  // At once, not when the assembly unwinds: whatever waits for the consumer (the window) is released too.
  signal.addEventListener('abort', () => stream.destroy(signal.reason), { once: true });
  const progress = newProgress(end - start);
  const result = (async (): Promise<ExtractResult> => {
    signal.throwIfAborted();
    const sourceOpts = { ...opts, signal };
    const ctx = await openContext(target, sourceOpts);
    try {
      const firstChunk = start < end ? target.chunkAt(start) : 0;
      const endChunk = start < end ? target.chunkAt(end - 1) + 1 : 0;
      const plan = planChunks(target, ctx.seeds, { firstChunk, endChunk, selfSeed: opts.selfSeed, nullSeed: opts.nullSeed });
      const choice = await chooseRemote(plan, ctx, sourceOpts);
      // The block path assembles whole images only (into the cache directory, then streamed in order).
      const blocks = start === 0 && end === target.size ? await blockPathFor(target, ctx, sourceOpts, choice) : null;
      if (blocks?.cheaper) {
        const dir = join(opts.cacheDir ?? defaultCacheDir(), 'block-assembly');
        const viaBlocks = await streamViaBlocks(blocks.path, stream, target, dir, { http: ctx.http, sha256: opts.sha256, onWarning: opts.onWarning, onProgress: opts.onProgress, signal });
        if (viaBlocks) {
          await stream.complete;
          return viaBlocks;
        }
      }
      const hashPool = hashPoolFor(plan);
      const assembler = new Assembler({
        plan, sink: stream, remote: choice.remote, chunkCache: opts.chunkCache, maxSpan: windowBytes / 2, hashPool,
        concurrency: opts.concurrency ?? DEFAULT_CONCURRENCY, progress, onWarning: opts.onWarning, signal,
      });
      try {
        await runAssembly(assembler, progress, choice, opts.onProgress);
      } finally {
        await hashPool?.close();
      }
      await stream.complete;
      return summary(progress, choice, assembler, started, stream.sha256);
    } finally {
      await ctx.close();
    }
  })();
  result.catch((err) => {
    if (!stream.destroyed) stream.destroy(err as Error);
  });
  return Object.assign(stream, { progress, result });
}

export { defaultCacheDir, IndexCache } from '../seed/index-cache.js';
