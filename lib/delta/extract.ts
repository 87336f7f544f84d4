// The high-level delta API that the CLI, the sysupdate daemon and the fleet
// proxy share: load a target index, plan it against local seeds, and assemble
// it (to a file, or as an ordered verified byte stream) from seeds, zero and
// repeated chunks, an optional chunk cache, and a remote source (HTTP byte
// ranges against the image, or casync chunk stores).
import type { ExtractProgress, ExtractResult } from '../assemble/progress.js';
import type { Readable } from 'node:stream';
import { readIndexFile, type ChunkIndex } from '../format/caibx.js';
import { fetchReleaseFile } from '../fetch/release-files.js';
import { OriginError, StallError, UnusableInputError, UsageError } from '../errors.js';
import { HttpClient, type HttpClientOptions } from '../fetch/http-client.js';
import { IndexCache, type IndexBuilder } from '../seed/index-cache.js';
import { indexFile } from '../chunking/indexer.js';
import type { ChunkerVariant } from '../chunking/chunker.js';
import { planChunks, type Plan, type PlanTotals } from '../plan/planner.js';
import { CostModel, measuredLink, type LinkEstimate } from '../plan/cost.js';
import { RangeFetcher, type RangeSupport } from '../fetch/range-fetcher.js';
import { RangeSource, StoreSource, type RemoteSource, type Run } from '../assemble/remote-source.js';
import { OrderedStream } from '../assemble/ordered-stream.js';
import { PartialFile, type KeptPartial } from '../assemble/partial-file.js';
import { verifyResumed } from '../assemble/resume.js';
import { EncoderPool, defaultThreads } from '../store/chunk-encoder.js';
import { BufferPool } from '../util/buffer-pool.js';
import { closeSeeds, openSeed, type Seed } from '../seed/seed.js';
import { openStore } from '../store/open-store.js';
import { HttpStore } from '../store/http-store.js';
import { LocalStore } from '../store/local-store.js';
import type { ChunkStore } from '../store/types.js';
import { BLOCK_PARALLELISM, costBlockPath, type BlockIndexAnswer, type BlockPathChoice } from '../blockpack/index.js';
import { BlockRoute, ChunkRoute, runRoutes, type Route } from './routes.js';
import { DEFAULT_CONCURRENCY, DEFAULT_STALL_MS, DEFAULT_WINDOW_BYTES } from '../util/defaults.js';
import { newProgress } from '../assemble/progress.js';

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
  /** Settings of the client created when `http` is omitted (CA file, transfer limits). */
  httpOptions?: HttpClientOptions;
  /** Fail with StallError when no byte is verified for this long (default 5 minutes; 0 = never). */
  stallMs?: number;
  /** For the client created when `http` is omitted: longest wait for response headers or body bytes (ms, default 30 s). */
  timeoutMs?: number;
  /** Use chunks that repeat inside the target (default true). */
  selfSeed?: boolean;
  /** Use all-zero chunks without fetching them (default true). */
  nullSeed?: boolean;
  /** Use the release's block pack (IMAGE.bpidx next to rangeUrl, docs/BLOCKPACK.md) when it is the cheapest path (default true). */
  blockPack?: boolean;
  /** The block index's one-byte probe when the caller sent it already (with the release's index: one round trip less). */
  blockIndexAnswer?: Promise<BlockIndexAnswer>;
  /**
   * The image's first bytes at rangeUrl, fetched already (e.g. by a range probe sent with the index): the first
   * missing chunks within them are verified and used instead of asked again (the first body byte on a slow link).
   */
  imageStart?: Promise<Buffer | undefined>;
  /** Largest target an index may describe (default 64 GiB, systemd-pull's limit): guards memory and disk. */
  maxTargetSize?: number;
  /** Called while a seed without a usable index is being chunked (bytes of that seed read so far). */
  onSeedIndexing?: (path: string, done: number, total: number) => void;
  /** What is known about the link (measured RTT and throughput); prices requests against bytes. */
  link?: Partial<LinkEstimate>;
  /** Called with one-line warnings (a seed that lies, a fallback from multi-range). */
  onWarning?: (message: string) => void;
  signal?: AbortSignal;
}

export interface AssembleOptions extends SourceOptions {
  /** Concurrent remote requests (default 8). */
  concurrency?: number;
  /**
   * The block route checks chunk IDs on a hashing thread (default false): ~1 s of CPU per 600 MB off the main
   * thread, for 15-19 MiB more at the peak (BlockRouteOptions.hashThread).
   */
  hashThread?: boolean;
  /**
   * With `sha256`, the block route may check blocks by the block index's 64-bit hashes instead of chunks by their
   * IDs (default false): ~0.8 s less of the main thread per 600 MB, for small indexes (KEPT_INDEX_MAX_BYTES). Off by
   * default because a block is then checked by only 64 bits before it is used, and a wrong one is caught only by
   * the whole-file SHA-256, with no fallback to the chunk path (docs/BLOCKPACK.md, "Integrity on the client").
   */
  checkBlocks?: boolean;
  /** Total attempts per transient failure (default 4); wrong chunk content is retried once. */
  attempts?: number;
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
  /** Bytes of verified data held ahead of the consumer (default 16 MiB). */
  windowBytes?: number;
  /** The consumer acknowledges the bytes it is done with (the stream's `acknowledge`), so buffers are reused. */
  acknowledged?: boolean;
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
  /** With `acknowledged`: the consumer is done with the first `bytes` bytes (their buffers may be reused). */
  acknowledge(bytes: number): void;
}

const PROGRESS_INTERVAL_MS = 200;
/** Seed bytes from which hashing on worker threads pays for starting them. */
const HASH_THREADS_FROM_BYTES = 64 * 1024 * 1024;

/** A hashing thread for verifying a resumed partial file when it holds many bytes, else none. */
function hashPoolFor(localBytes: number): EncoderPool | undefined {
  return localBytes >= HASH_THREADS_FROM_BYTES && defaultThreads() > 1 ? new EncoderPool(1) : undefined;
}

const isUrl = (s: string): boolean => /^https?:\/\//i.test(s);

/** Loads a target index from a local path or an http(s) URL (verified strictly, a download parsed as it arrives). */
export async function loadIndex(
  spec: string,
  opts: {
    http?: HttpClient;
    httpOptions?: HttpClientOptions;
    timeoutMs?: number;
    signal?: AbortSignal;
    allowArchive?: boolean;
    maxTargetSize?: number;
  } = {},
): Promise<ChunkIndex> {
  const allowArchive = opts.allowArchive ?? false;
  if (!isUrl(spec)) return readIndexFile(spec, { allowArchive, maxTargetSize: opts.maxTargetSize });
  const http = opts.http ?? new HttpClient({ ...opts.httpOptions, timeoutMs: opts.timeoutMs });
  try {
    const index = { allowArchive, maxTargetSize: opts.maxTargetSize };
    const got = await fetchReleaseFile(http, spec, { index, signal: opts.signal });
    if (got.status !== 200) throw new OriginError(`GET ${spec}: HTTP 404 (no such index)`, { status: 404 });
    return got.index!;
  } finally {
    if (!opts.http) await http.close();
  }
}

/** The target index and what downloading it cost (nothing for a local path or a parsed index). */
async function loadTarget(
  target: string | ChunkIndex,
  opts: SourceOptions,
): Promise<{ index: ChunkIndex; requests: number; bytes: number }> {
  if (typeof target !== 'string') return { index: target, requests: 0, bytes: 0 };
  const http = opts.http ?? new HttpClient({ ...opts.httpOptions, timeoutMs: opts.timeoutMs });
  const before = { ...http.stats };
  try {
    const index = await loadIndex(target, { http, signal: opts.signal, maxTargetSize: opts.maxTargetSize });
    return { index, requests: http.stats.requests - before.requests, bytes: http.stats.bytes - before.bytes };
  } finally {
    if (!opts.http) await http.close();
  }
}

/** The indexer, for seeds without an index, reporting its progress to `onSeedIndexing`. */
function seedIndexer(onSeedIndexing: SourceOptions['onSeedIndexing']): IndexBuilder {
  return (path, key, signal) =>
    indexFile(path, {
      params: key.params,
      digest: key.digest,
      variant: key.variant as ChunkerVariant | undefined,
      signal,
      onProgress: onSeedIndexing && ((done, total) => onSeedIndexing(path, done, total)),
    });
}

/** Everything an operation opened for its sources; close() releases what it owns. */
interface Context {
  http: HttpClient;
  cost: CostModel;
  seeds: Seed[];
  stores: ChunkStore[];
  close(): Promise<void>;
}

async function openContext(target: ChunkIndex, opts: AssembleOptions): Promise<Context> {
  const ownsHttp = !opts.http;
  const http =
    opts.http ??
    new HttpClient({
      ...opts.httpOptions,
      connections: opts.concurrency ?? DEFAULT_CONCURRENCY,
      attempts: opts.attempts,
      timeoutMs: opts.timeoutMs,
    });
  const owned: ChunkStore[] = [];
  const seeds: Seed[] = [];
  const ctx: Context = {
    http,
    // Priced from what the index download and probes measured; an explicit `link` wins.
    cost: new CostModel({ ...measuredLink(http.linkEstimate()), ...opts.link }),
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
      try {
        seeds.push(
          await openSeed(spec.path, spec.index, {
            target,
            cache,
            build,
            onWarning: opts.onWarning,
            signal: opts.signal,
          }),
        );
      } catch (err) {
        // A seed only saves downloading: one that cannot be read (a FIFO, no permission) is left out, not fatal.
        if (!(err instanceof UnusableInputError)) throw err;
        opts.onWarning?.(`seed ${err.message}; not used`);
      }
    }
  } catch (err) {
    await ctx.close();
    throw err;
  }
  return ctx;
}

const remoteRuns = (plan: Plan): Run[] =>
  plan.segments.filter((s) => s.kind === 'remote').map((s) => ({ first: s.first, count: s.count }));

function rangeCost(plan: Plan, multi: boolean, cost: CostModel, parallelism: number): ModeCost {
  const { bytes, requests } = cost.traffic(plan.target, remoteRuns(plan), multi, parallelism);
  return { mode: multi ? 'range' : 'range-single', bytes, requests };
}

/**
 * Chunk buffers kept for reuse: as many as a file sink holds at once (4 MiB of pending writes, plus a chunk being
 * filled per request in flight; ~10 MiB measured on loopback). With less, the buffers of each burst beyond it were
 * dropped after their write: 90 MiB per 600 MB image, all of them old enough to wait for a full collection.
 */
const CHUNK_BUFFER_BYTES = 16 * 1024 * 1024;

/** Missing chunks whose compressed size is asked (HEAD) to estimate an HTTP store's bytes. */
const STORE_SAMPLE_CHUNKS = 8;

/**
 * Compressed/uncompressed size of a few missing chunks, evenly spread, from
 * the Content-Length of HEAD requests to the store (1 when none answers).
 */
async function sampleCompression(
  plan: Plan,
  store: HttpStore,
  http: HttpClient,
  probe: { requests: number },
  signal?: AbortSignal,
): Promise<number> {
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
async function storeCost(
  plan: Plan,
  ctx: Context,
  sample: boolean,
  probe: { requests: number },
  signal?: AbortSignal,
): Promise<ModeCost> {
  const stores = ctx.stores;
  if (stores.every((s) => s instanceof LocalStore)) return { mode: 'store', bytes: 0, requests: 0 };
  const batch = stores.some((s) => s.getMany) ? 32 : 1;
  const first = stores[0];
  const ratio =
    sample && first instanceof HttpStore ? await sampleCompression(plan, first, ctx.http, probe, signal) : 1;
  return {
    mode: 'store',
    bytes: Math.round(plan.totals.missingBytes * ratio),
    requests: Math.ceil(plan.totals.missingChunks / batch),
  };
}

interface RemoteChoice {
  /** Where missing chunks come from; when nothing is missing, what stands in for a seed that lies. */
  remote?: RemoteSource;
  /** Chunk buffers of the remote source, for the assembler to hand back. */
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
async function chooseRemote(
  plan: Plan,
  ctx: Context,
  opts: AssembleOptions,
  probeAlways = false,
  /** Unused chunk buffers kept for reuse (default CHUNK_BUFFER_BYTES). */
  pooledBytes?: number,
): Promise<RemoteChoice> {
  const mode = opts.mode ?? 'auto';
  const parallelism = opts.concurrency ?? DEFAULT_CONCURRENCY;
  const weigh = (c: ModeCost): number => ctx.cost.weigh(c, parallelism);
  if (mode !== 'auto' && mode !== 'range' && mode !== 'store')
    throw new UsageError(`unknown mode "${mode}" (expected auto, range or store)`);
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
    if (support?.multi !== false) modes.push(rangeCost(plan, true, ctx.cost, parallelism));
    modes.push(rangeCost(plan, false, ctx.cost, parallelism));
  }
  if (useStore) modes.push(await storeCost(plan, ctx, missing && (probeAlways || useRange), probe, opts.signal));
  const rangeSupport = support && { ranges: support.ranges, multi: support.multi };
  // Nothing missing: no chunk buffers (a lying seed's chunk from the store is used as it was decoded).
  const buffers = missing ? new BufferPool(pooledBytes ?? CHUNK_BUFFER_BYTES) : undefined;
  const stores = useStore
    ? new StoreSource(plan.target, ctx.stores, ctx.http, undefined, opts.onWarning, buffers)
    : undefined;
  const rangeSource = (multi: boolean, buffers?: BufferPool): RangeSource =>
    new RangeSource(plan.target, ctx.http, opts.rangeUrl!, {
      retry,
      multi,
      cost: ctx.cost,
      parallelism,
      onWarning: opts.onWarning,
      fallback: stores,
      buffers,
    });
  // Nothing missing: a seed chunk that turns out wrong is still fetched from the origin when it serves the image.
  if (!missing) {
    const remote = useRange && support?.ranges !== false ? rangeSource(support?.multi !== false) : stores;
    return { remote, chosen: 'none', modes, rangeSupport, probe };
  }
  if (mode === 'range' && support?.ranges === false)
    throw new OriginError(`${opts.rangeUrl}: the server does not serve byte ranges`);
  if (modes.length === 0) {
    const missingText = `${plan.totals.missingChunks} chunks (${plan.totals.missingBytes} bytes) are in no seed`;
    // What a server supports is never a usage error; not naming any source is.
    if (useRange)
      throw new OriginError(
        `${missingText}, and ${opts.rangeUrl} does not serve byte ranges (no chunk store was given)`,
      );
    throw new UsageError(`${missingText} and there is no remote source: give --range-url or --store`);
  }
  const best = modes.reduce((a, b) => (weigh(b) < weigh(a) ? b : a));
  if (best.mode === 'store') return { remote: stores, buffers, chosen: 'store', modes, rangeSupport, probe };
  return { remote: rangeSource(best.mode === 'range', buffers), buffers, chosen: 'range', modes, rangeSupport, probe };
}

/** The block path's probe and plan, started alongside the chunk path's probes (so the first byte comes sooner). */
interface PendingBlockPath {
  result: Promise<{ path: BlockPathChoice | null } | { error: unknown }>;
  /** True as soon as the release turns out to have a block index (before it is downloaded), else false. */
  found: Promise<boolean>;
  /** Lets the block index body go (see startBlockPath); must be called once the lead is done or not run. */
  release(): void;
}

/**
 * Starts the block path's probe. The block index body (1.3 MB for a 600 MB image: 0.1 s at 100 Mbit/s, 2 s at
 * 5 Mbit/s) waits until the lead has fetched the image's first missing chunks (a few KB): queued first on the
 * connection, it would hold them up.
 */
function startBlockPath(ctx: Context, opts: AssembleOptions): PendingBlockPath | null {
  if (!opts.rangeUrl || opts.blockPack === false) return null;
  let onFound!: () => void;
  const found = new Promise<boolean>((resolve) => (onFound = () => resolve(true)));
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const result = costBlockPath({
    http: ctx.http,
    imageUrl: opts.rangeUrl,
    seeds: ctx.seeds.map((s) => s.path),
    cacheDir: opts.cacheDir,
    cost: ctx.cost,
    asked: opts.blockIndexAnswer,
    checkBlocks: opts.checkBlocks === true && opts.sha256 !== undefined,
    onFound: () => {
      onFound();
      return released;
    },
    signal: opts.signal,
  }).then(
    (path) => ({ path }),
    (error: unknown) => ({ error }),
  );
  return { result, found: Promise.race([found, result.then(() => false)]), release };
}

/**
 * The block path (lib/blockpack), when the release hosts a block pack next to
 * the range URL: its costs, and whether it beats the chunk path and a full
 * download. A pack that cannot be read is warned about and ignored.
 */
async function blockPathFor(
  index: ChunkIndex,
  ctx: Context,
  opts: AssembleOptions,
  choice: RemoteChoice,
  pending: PendingBlockPath | null,
): Promise<{ path: BlockPathChoice; cheaper: boolean } | null> {
  if (!pending) return null;
  const got = await pending.result;
  if ('error' in got) {
    if (opts.signal?.aborted) throw got.error;
    opts.onWarning?.(`block pack for ${opts.rangeUrl}: ${(got.error as Error).message}; using the chunk path`);
    return null;
  }
  if (!got.path || choice.rangeSupport?.ranges === false) return null;
  const path = withoutMulti(got.path, ctx.cost, choice.rangeSupport?.multi === false);
  const parallelism = opts.concurrency ?? DEFAULT_CONCURRENCY;
  const chunkPath = Math.min(...choice.modes.map((m) => ctx.cost.weigh(m, parallelism)));
  const full = ctx.cost.weigh({ bytes: index.size, requests: 1 }, 1);
  return { path, cheaper: choice.chosen !== 'none' && path.weight < Math.min(chunkPath, full) };
}

/** The block path's choice for an origin without multi-range: its single-range mode only. */
function withoutMulti(path: BlockPathChoice, cost: CostModel, noMulti: boolean): BlockPathChoice {
  if (!noMulti) return path;
  const costs = path.costs.filter((c) => c.mode === 'blocks-single');
  return { ...path, costs, best: costs[0], weight: cost.weigh(costs[0], BLOCK_PARALLELISM) };
}

/** Plans a target against the sources without fetching any chunk: the update-size query. */
export async function planUpdate(target: string | ChunkIndex, opts: SourceOptions = {}): Promise<PlanReport> {
  const index = typeof target === 'string' ? await loadIndex(target, opts) : target;
  const ctx = await openContext(index, opts);
  try {
    const plan = planChunks(index, ctx.seeds, { selfSeed: opts.selfSeed, nullSeed: opts.nullSeed });
    const pending = startBlockPath(ctx, opts);
    pending?.release();
    const choice = await chooseRemote(plan, ctx, opts, true);
    const blocks = await blockPathFor(index, ctx, opts, choice, pending);
    const t = plan.totals;
    // The image's first bytes, fetched already (the sidecar's range probe, 128 KiB, like the index itself): the
    // missing chunks within them are not fetched again, so the update costs that much less.
    const start = (await opts.imageStart?.catch(() => undefined))?.length ?? 0;
    const inStart = start > 0 ? missingBytesWithin(plan, start) : 0;
    const withStart = (m: ModeCost): ModeCost => (inStart > 0 ? { ...m, bytes: Math.max(0, m.bytes - inStart) } : m);
    return {
      targetSize: index.size,
      chunks: index.count,
      fromSeeds: t.fromSeeds,
      fromSelf: t.fromSelf,
      fromZero: t.fromZero,
      missingBytes: t.missingBytes,
      missingChunks: t.missingChunks,
      missingRuns: t.missingRuns,
      modes: [...choice.modes, ...(blocks?.path.costs ?? [])].map(withStart),
      chosen: blocks?.cheaper ? 'blocks' : choice.chosen,
      rangeSupport: choice.rangeSupport,
    };
  } finally {
    await ctx.close();
  }
}

/** Bytes of the plan's missing chunks that lie wholly within the target's first `bytes` bytes. */
function missingBytesWithin(plan: Plan, bytes: number): number {
  const { target } = plan;
  let n = 0;
  for (const s of plan.segments) {
    if (s.kind !== 'remote') continue;
    for (let i = s.first; i < s.first + s.count; i++) {
      if (target.end(i) > bytes) return n;
      n += target.chunkSize(i);
    }
  }
  return n;
}

/** The routes for one assembly, cheapest first: the block route when it beats the chunk route, then the chunk route. */
interface Routes {
  list: Route[];
  /** Requests and bytes spent before any route ran (index, probes, samples). */
  probe: { requests: number; bytes: number };
  /** The chunk route's lead, run already (its traffic is the chunk route's remote, counted there). */
  lead: Route[];
  /** The chunk route's buffers (released once the routes are done). */
  buffers?: BufferPool;
}

/** Target bytes the lead streams at most, and the missing bytes it may fetch for them. */
const LEAD_BYTES = 16 * 1024 * 1024;

const LEAD_REMOTE_BYTES = 256 * 1024;
/** Target bytes of an arriving index's lead that go first, on their own (see leadOfArriving). */
const FIRST_PART_BYTES = 256 * 1024;
/** The lead is at most this part of the target: the block route, cheaper, does the rest. */
const LEAD_PART = 64;

/**
 * Where the lead ends: the target's first chunks, as far as they come from seeds, zero and repeats, plus
 * missing chunks up to LEAD_REMOTE_BYTES (an image's first block, its superblock, changes with every
 * release; the unchanged data after it is usually long). `fetched`: the end of its last missing chunk.
 */
function leadEnd(plan: Plan, maxBytes: number, maxRemote = LEAD_REMOTE_BYTES): { end: number; fetched: number } {
  const lead = { end: plan.firstChunk, fetched: plan.firstChunk };
  let bytes = 0;
  let remote = 0;
  for (const s of plan.segments) {
    for (let i = s.first; i < s.first + s.count; i++) {
      const size = plan.target.chunkSize(i);
      if (bytes + size > maxBytes || (s.kind === 'remote' && remote + size > maxRemote)) return lead;
      bytes += size;
      lead.end = i + 1;
      if (s.kind === 'remote') {
        remote += size;
        lead.fetched = i + 1;
      }
    }
  }
  return lead;
}

/** What the caller's sink does: its largest span and how to run a route into it. */
interface RouteSink {
  maxSpan?: number;
  run: (route: Route) => Promise<void>;
  /**
   * Unused buffers kept for reuse. An acknowledging stream's come back in bursts, as its consumer sends them: as
   * many as its window holds are kept; a burst beyond it is freed at once, not kept idle for the whole update (twice
   * the window was kept: 36 MiB of slabs, most of them idle, on the 4 GiB pair).
   */
  pooledBytes?: number;
}

/**
 * Chooses the routes. While the block path is probed and planned (its block index is ~9 bytes per block, seconds
 * on a slow link), the chunk route's lead streams the target's first chunks into the sink: the first body
 * byte does not wait for the block index. The routes then skip the chunks the sink holds.
 */
async function chooseRoutes(
  target: ChunkIndex,
  ctx: Context,
  opts: AssembleOptions,
  plan: Plan,
  sink: RouteSink,
  /** The block path's probe (whole targets only), started before the chunk plan. */
  pending: PendingBlockPath | null,
): Promise<Routes> {
  const choice = await chooseRemote(plan, ctx, opts, false, sink.pooledBytes).catch(async (err: unknown) => {
    pending?.release();
    await pending?.result;
    throw err;
  });
  // Both routes hash on this thread, with no hashing worker: a worker's isolate is ~14 MiB of RSS, and neither was
  // slower without it (bench/RESULTS.md, "Extract memory (session 4)" and "Block path memory (session 4)").
  const chunkRoute = (firstChunk: number, endChunk: number): ChunkRoute =>
    new ChunkRoute({
      target,
      seeds: ctx.seeds,
      firstChunk,
      endChunk,
      selfSeed: opts.selfSeed,
      nullSeed: opts.nullSeed,
      remote: choice.remote,
      fetches: choice.chosen !== 'none',
      buffers: choice.buffers,
      concurrency: opts.concurrency ?? DEFAULT_CONCURRENCY,
      maxSpan: sink.maxSpan,
      onWarning: opts.onWarning,
    });
  // Only for a release with a block pack: the chunk route alone needs no lead. It runs in two parts: up to its
  // last missing chunk (then the block index body may take the link), and the rest from local sources.
  const leadBytes = leadBytesOf(target.size, sink.maxSpan);
  const first = plan.firstChunk;
  const { end, fetched } = pending && (await pending.found) ? leadEnd(plan, leadBytes) : { end: first, fetched: first };
  const lead = [
    ...(fetched > first ? [chunkRoute(first, fetched)] : []),
    ...(end > fetched ? [chunkRoute(fetched, end)] : []),
  ];
  const led = (async () => {
    try {
      if (fetched > first) await sink.run(lead[0]);
    } finally {
      pending?.release();
    }
    if (end > fetched) await sink.run(lead[lead.length - 1]);
  })();
  led.catch(() => {});
  const blocks = await blockPathFor(target, ctx, opts, choice, pending).catch(async (err: unknown) => {
    await led.catch(() => {});
    throw err;
  });
  const list: Route[] = [chunkRoute(first, plan.endChunk)];
  if (blocks?.cheaper) {
    const route = new BlockRoute({
      choice: blocks.path,
      target,
      http: ctx.http,
      cost: ctx.cost,
      sha256: opts.sha256,
      maxSpan: sink.maxSpan,
      buffers: choice.buffers,
      hashThread: opts.hashThread,
      onWarning: opts.onWarning,
    });
    route.prepare(opts.signal ?? new AbortController().signal);
    list.unshift(route);
  }
  await led;
  return { list, probe: choice.probe, lead, buffers: choice.buffers };
}

/**
 * Periodic progress callbacks and the stall watchdog of one update, from the lead (the chunk route serving the first
 * bytes while the block index is on its way) to the end of the routes: `signal` is aborted with a StallError when
 * neither verified nor network bytes moved for stallMs. Until the routes are chosen, the network bytes are those
 * the lead's assembler counted; then they include the probes and every route tried.
 */
class Watchdog {
  private readonly stall = new AbortController();
  /** The caller's signal and the watchdog's: what the update runs on. */
  readonly signal: AbortSignal;
  private routes?: Routes;
  private moved = { at: 0, done: -1, bytes: -1 };
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly progress: ExtractProgress,
    private readonly opts: AssembleOptions & { signal: AbortSignal },
    private readonly what: string,
  ) {
    this.signal = AbortSignal.any([opts.signal, this.stall.signal]);
  }

  /** Starts watching (the work before, such as checking a resumed file, is local and not watched). */
  start(): void {
    this.moved = { at: Date.now(), done: -1, bytes: -1 };
    this.timer ??= setInterval(() => this.report(), PROGRESS_INTERVAL_MS);
    this.timer.unref();
  }

  /** Counts the network bytes of these routes (and their probes) from now on. */
  follow(routes: Routes): void {
    this.routes = routes;
  }

  /** The watchdog's StallError when it stopped the update, else `err`. */
  reason(err: unknown): unknown {
    return this.stall.signal.aborted && !this.opts.signal.aborted ? this.stall.signal.reason : err;
  }

  /** Stops watching, with a last progress report. */
  stop(): void {
    if (!this.timer) return;
    clearInterval(this.timer);
    this.timer = undefined;
    this.report();
  }

  private report(): void {
    const { progress, routes, opts } = this;
    if (routes) {
      progress.networkBytes = routes.probe.bytes;
      progress.networkRequests = routes.probe.requests;
      progress.fromLocalStore = 0;
      for (const r of routes.list) {
        progress.networkBytes += r.stats.bytes;
        progress.networkRequests += r.stats.requests;
        progress.fromLocalStore += r.stats.localBytes ?? 0;
      }
    }
    opts.onProgress?.({ ...progress });
    const stallMs = opts.stallMs ?? DEFAULT_STALL_MS;
    if (progress.done !== this.moved.done || progress.networkBytes !== this.moved.bytes) {
      this.moved = { at: Date.now(), done: progress.done, bytes: progress.networkBytes };
    } else if (stallMs > 0 && Date.now() - this.moved.at >= stallMs && !this.stall.signal.aborted) {
      const seen = `${progress.done} of ${progress.total} bytes done, ${progress.networkBytes} bytes from the network`;
      this.stall.abort(new StallError(this.what, stallMs, seen));
    }
  }
}

/** Runs the routes under the update's watchdog (started before the lead); resolves with the route that finished. */
async function runWithProgress(
  routes: Routes,
  sink: PartialFile | OrderedStream,
  progress: ExtractProgress,
  opts: AssembleOptions,
  watch: Watchdog,
): Promise<Route> {
  watch.follow(routes);
  try {
    return await runRoutes(routes.list, sink, progress, { signal: watch.signal, onWarning: opts.onWarning });
  } catch (err) {
    // The watchdog's reason, not whatever abort error a cancelled fetch raised.
    throw watch.reason(err);
  } finally {
    watch.stop();
  }
}

/** Extract's stall watchdog default (`stallMs`). */

function summary(
  progress: ExtractProgress,
  routes: Routes,
  last: Route,
  started: number,
  resumedBytes: number,
  sha256?: string,
): ExtractResult {
  return {
    ...progress,
    mode: last.kind,
    sha256,
    wallMs: Date.now() - started,
    resumedBytes,
    seedMismatches: [...routes.list, ...routes.lead].reduce((n, r) => n + r.seedMismatches, 0),
  };
}

/**
 * Bytes of a fresh output file that stay holes whichever route writes it: the all-zero chunks no seed gives (the
 * chunk route skips them), except the first and last of each run of them (the block route leaves a chunk as a hole
 * only when all its blocks are zero, and a run's edge chunks may share a block with data). Should the block route
 * still write more, the disk fills with a clear ENOSPC error and the partial file kept, never a wrong file.
 */
function holeBytes(plan: Plan): number {
  const idx = plan.target;
  let bytes = 0;
  for (const seg of plan.segments)
    if (seg.kind === 'zero' && seg.count > 2) bytes += idx.end(seg.first + seg.count - 2) - idx.start(seg.first + 1);
  return bytes;
}

const KEPT = Symbol('deltad.keptPartial');

/** The partial file a failed extractToFile kept for resuming, read from the error it threw (undefined: none kept). */
export function keptPartialOf(err: unknown): KeptPartial | undefined {
  return err instanceof Error ? (err as Error & { [KEPT]?: KeptPartial })[KEPT] : undefined;
}

/**
 * Assembles the target into `out`: writes a partial file beside it, verifies
 * every chunk (and the SHA-256 when given), then renames it into place. On
 * failure `out` is untouched and the partial file is kept for resuming, on
 * whichever route the next run takes.
 */
export async function extractToFile(
  target: string | ChunkIndex,
  out: string,
  opts: ExtractToFileOptions = {},
): Promise<ExtractResult> {
  const started = Date.now();
  if (opts.sha256 !== undefined && !/^[0-9a-fA-F]{64}$/.test(opts.sha256))
    throw new UsageError(`invalid SHA-256 "${opts.sha256}": expected 64 hex digits`);
  const { index, ...indexCost } = await loadTarget(target, opts);
  const ctx = await openContext(index, opts);
  const progress = newProgress(index.size);
  const watch = new Watchdog(progress, { ...opts, signal: opts.signal ?? new AbortController().signal }, out);
  const signal = watch.signal;
  try {
    const planOpts = { selfSeed: opts.selfSeed, nullSeed: opts.nullSeed };
    // Planned before the file is opened, for its free-space check; a fresh file needs no other plan. Let go once the
    // routes are chosen, as each route plans again what the file lacks (a 4 GiB image's plan is 13 k segments).
    let fresh: Plan | undefined = planChunks(index, ctx.seeds, planOpts);
    const { file } = await PartialFile.open(out, index, opts.resume !== false, holeBytes(fresh));
    let routes: Routes | undefined;
    let pending: PendingBlockPath | null = null;
    try {
      pending = startBlockPath(ctx, { ...opts, signal });
      const resumeHash = file.resumed ? hashPoolFor(index.size) : undefined;
      const resumedBytes = await verifyResumed(file, index, resumeHash, signal).finally(() => resumeHash?.close());
      progress.done += resumedBytes;
      progress.fromSeeds += resumedBytes;
      watch.start();
      const chosen = chooseRoutes(
        index,
        ctx,
        { ...opts, signal },
        file.resumed ? planChunks(index, ctx.seeds, { ...planOpts, skip: (i) => file.has(i) }) : fresh!,
        { run: (route) => route.run(file, progress, signal) },
        pending,
      );
      fresh = undefined;
      routes = await chosen;
      routes.probe.requests += indexCost.requests;
      routes.probe.bytes += indexCost.bytes;
      const last = await runWithProgress(routes, file, progress, opts, watch);
      // The pool's unused buffers (up to 16 MiB) would otherwise stay through the whole-file check.
      routes.buffers?.release();
      const sha256 = await file.commit(opts.fileMode ?? 0o644, opts.sha256);
      return summary(progress, routes, last, started, resumedBytes, sha256);
    } catch (caught) {
      const err = watch.reason(caught);
      watch.stop();
      pending?.release();
      // Keep what an interrupted run wrote or took over (and say so on the error); a run that failed before writing
      // leaves nothing.
      if (file.resumed || [...(routes?.list ?? []), ...(routes?.lead ?? [])].some((r) => r.wroteAny)) {
        const kept = await file.keep();
        if (kept && err instanceof Error) Object.defineProperty(err, KEPT, { value: kept });
      } else await file.discard();
      throw err;
    }
  } finally {
    await ctx.close();
  }
}

/**
 * A target index still on its way (lib/fetch/release-files.ts IndexArrival): the first chunks of its table, the
 * image's size from the origin (a HEAD), and the whole index once it has arrived (rejecting if it never does, or
 * turns out malformed).
 */
export interface ArrivingIndex {
  head: ChunkIndex;
  size: number;
  whole: Promise<ChunkIndex>;
}

/** Target bytes the lead of a whole `size`-byte target streams at most (with a sink that spans `maxSpan`). */
function leadBytesOf(size: number, maxSpan = LEAD_BYTES): number {
  return Math.min(LEAD_BYTES, maxSpan, Math.ceil(size / LEAD_PART));
}

/**
 * Target bytes the first chunks of an arriving index must cover before its delta may begin (ArrivingIndex): what
 * the lead streams while the rest arrives, with the default window.
 */
export function arrivingHeadBytes(size: number): number {
  return leadBytesOf(size, DEFAULT_WINDOW_BYTES / 2);
}

/**
 * What streams while the rest of an arriving index downloads: the head's first chunks, as far as they come from
 * seeds, zero and repeats, plus missing chunks up to LEAD_REMOTE_BYTES as byte ranges (the range URL was checked
 * by the caller; single ranges: a few KB, no probe for multi-range first). Nothing that needs the whole index
 * (the route choice, the block path) waits for it. A remote only for range mode: otherwise the lead stops at the
 * first missing chunk.
 */
function leadOfArriving(
  head: ChunkIndex,
  size: number,
  ctx: Context,
  opts: AssembleOptions,
  windowBytes: number,
  imageStart: Buffer | undefined,
): ChunkRoute[] {
  const plan = planChunks(head, ctx.seeds, { selfSeed: opts.selfSeed, nullSeed: opts.nullSeed });
  const ranges = opts.rangeUrl !== undefined && opts.mode !== 'store';
  const maxRemote = ranges ? LEAD_REMOTE_BYTES : 0;
  const { end } = leadEnd(plan, leadBytesOf(size, windowBytes / 2), maxRemote);
  if (end === 0) return [];
  // The first body byte waits for nothing but the first chunks: the rest of the lead (megabytes of seed reads,
  // hashed on this thread) is a second part.
  const first = Math.min(end, leadEnd(plan, FIRST_PART_BYTES, maxRemote).end);
  const concurrency = opts.concurrency ?? DEFAULT_CONCURRENCY;
  const remote = ranges
    ? new RangeSource(head, ctx.http, opts.rangeUrl!, {
        retry: { attempts: ctx.http.attempts, retryBaseMs: ctx.http.retryBaseMs },
        multi: false,
        cost: ctx.cost,
        parallelism: concurrency,
        onWarning: opts.onWarning,
        size,
        start: imageStart,
      })
    : undefined;
  const route = (firstChunk: number, endChunk: number) =>
    new ChunkRoute({
      target: head,
      seeds: ctx.seeds,
      firstChunk,
      endChunk,
      selfSeed: opts.selfSeed,
      nullSeed: opts.nullSeed,
      remote,
      fetches: remote !== undefined,
      concurrency,
      maxSpan: windowBytes / 2,
      onWarning: opts.onWarning,
    });
  return first > 0 && first < end ? [route(0, first), route(first, end)] : [route(0, end)];
}

/**
 * A whole index streamed as if it were arriving: the lead from its first chunks starts before the whole target is
 * planned and priced (tens to hundreds of ms of CPU under load, all before the first request otherwise). Only for
 * a whole target from byte ranges alone: the lead asks for byte ranges without a probe.
 */
function headFirst(target: ChunkIndex, opts: ExtractStreamOptions): ArrivingIndex | undefined {
  const whole = (opts.start ?? 0) === 0 && (opts.end ?? target.size) === target.size;
  if (!whole || !opts.rangeUrl || opts.mode === 'store' || (opts.stores?.length ?? 0) > 0) return undefined;
  const n = target.chunkAt(arrivingHeadBytes(target.size)) + 1;
  if (n >= target.count) return undefined;
  return { head: target.head(n), size: target.size, whole: Promise.resolve(target) };
}

/**
 * Assembles the target (or a byte range of it) as an ordered stream of
 * verified bytes with bounded memory, on the cheapest route (the block route
 * streams too: seed blocks and frames go out as soon as they and everything
 * before them are verified). With `sha256`, the final bytes are held back
 * until the whole-file digest matches (the stream errors otherwise).
 * Aborting `signal` or destroying the stream cancels all fetches. Every
 * failure (origin, seed, sink) destroys the stream with that error, and
 * `result` rejects with it, without waiting for the consumer to read on.
 */
export function openExtractStream(target: ChunkIndex | ArrivingIndex, opts: ExtractStreamOptions = {}): ExtractStream {
  const started = Date.now();
  const arriving = 'whole' in target ? target : headFirst(target, opts);
  // Never an unhandled rejection: a failed index fails the stream below, whatever it is doing then.
  arriving?.whole.catch(() => {});
  const first = arriving ? arriving.head : (target as ChunkIndex);
  const size = arriving ? arriving.size : first.size;
  const start = opts.start ?? 0;
  const end = opts.end ?? size;
  if (!(Number.isSafeInteger(start) && Number.isSafeInteger(end) && start >= 0 && start <= end && end <= size)) {
    throw new UsageError(`invalid byte range [${start}, ${end}) of a ${size}-byte target`);
  }
  if (arriving && (start !== 0 || end !== size || first.size > size))
    throw new UsageError('an index still on its way streams the whole target, from the start of its table');
  const windowBytes = opts.windowBytes ?? DEFAULT_WINDOW_BYTES;
  // Everything below stops on the caller's signal (even one aborted already) or when the consumer destroys the stream.
  const cancel = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, cancel.signal]) : cancel.signal;
  const stream = new OrderedStream({
    target: first,
    start,
    end,
    windowBytes,
    sha256: opts.sha256,
    onCancel: (reason) => cancel.abort(reason),
    acknowledged: opts.acknowledged,
  });
  // At once, not when the assembly unwinds: whatever waits for the consumer (the window) is released too.
  signal.addEventListener('abort', () => stream.destroy(signal.reason), { once: true });
  const progress = newProgress(end - start);
  const watch = new Watchdog(progress, { ...opts, signal }, opts.rangeUrl ?? 'the update stream');
  const result = (async (): Promise<ExtractResult> => {
    signal.throwIfAborted();
    const sourceOpts = { ...opts, signal: watch.signal };
    const ctx = await openContext(first, sourceOpts);
    try {
      // The block route is priced for whole images only.
      const pending = start === 0 && end === size ? startBlockPath(ctx, sourceOpts) : null;
      let target = first;
      let early: ChunkRoute[] = [];
      if (arriving) {
        // Watched from here: a lead whose origin stalls, or an index that stops arriving, ends in a StallError.
        watch.start();
        const imageStart = await opts.imageStart?.catch(() => undefined);
        early = leadOfArriving(first, size, ctx, sourceOpts, windowBytes, imageStart);
        for (const route of early) await route.run(stream, progress, watch.signal);
        target = await arriving.whole;
        stream.grow(target);
      }
      const firstChunk = start < end ? target.chunkAt(start) : 0;
      const endChunk = start < end ? target.chunkAt(end - 1) + 1 : 0;
      const run = (route: Route): Promise<void> => route.run(stream, progress, watch.signal);
      watch.start();
      // The plan is not kept (no variable of this function holds it): each route plans again what the stream lacks,
      // and a 4 GiB image's plan is 13 k segments.
      const routes = await chooseRoutes(
        target,
        ctx,
        sourceOpts,
        planChunks(target, ctx.seeds, { firstChunk, endChunk, selfSeed: opts.selfSeed, nullSeed: opts.nullSeed }),
        { maxSpan: windowBytes / 2, run, pooledBytes: opts.acknowledged ? windowBytes : undefined },
        pending,
      );
      for (const route of early) {
        routes.probe.requests += route.stats.requests;
        routes.probe.bytes += route.stats.bytes;
        routes.lead.push(route);
      }
      const last = await runWithProgress(routes, stream, progress, sourceOpts, watch);
      await stream.complete;
      // Every byte is out: the pool's unused slabs are freed now, and those the consumer still holds once it is done.
      routes.buffers?.release();
      return summary(progress, routes, last, started, 0, stream.sha256);
    } catch (err) {
      throw watch.reason(err);
    } finally {
      watch.stop();
      await ctx.close();
    }
  })();
  result.catch((err) => {
    if (!stream.destroyed) stream.destroy(err as Error);
  });
  return Object.assign(stream, { progress, result });
}

export { defaultCacheDir, IndexCache } from '../seed/index-cache.js';
