// The high-level delta API that the CLI, the sysupdate daemon and the fleet
// proxy share: load a target index, plan it against local seeds, and assemble
// it (to a file, or as an ordered verified byte stream) from seeds, zero and
// repeated chunks, an optional chunk cache, and a remote source (HTTP byte
// ranges against the image, or casync chunk stores).
import type { Readable } from 'node:stream';
import type { ChunkIndex } from './caibx.js';
import type { HttpClient } from './http-client.js';
import type { ChunkStore, WritableChunkStore } from './store/types.js';

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
  /** Use chunks that repeat inside the target (default true). */
  selfSeed?: boolean;
  /** Use all-zero chunks without fetching them (default true). */
  nullSeed?: boolean;
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
export interface ExtractProgress {
  /** Target bytes to assemble (the range, for a ranged stream). */
  total: number;
  /** Target bytes verified so far (all sources). */
  done: number;
  fromSeeds: number;
  fromSelf: number;
  fromZero: number;
  fromCache: number;
  /** Chunk bytes obtained from the network. */
  fromNetwork: number;
  /** Bytes received over HTTP (bodies, multipart framing, gap bytes, compressed store chunks). */
  networkBytes: number;
  networkRequests: number;
}

export interface ExtractResult extends ExtractProgress {
  mode: 'range' | 'store' | 'none';
  /** SHA-256 (hex) of the assembled bytes. */
  sha256: string;
  wallMs: number;
  /** Chunks taken from the partial file of an interrupted run. */
  resumedBytes: number;
  /** Seed chunks that did not match their ID (fetched remotely instead). */
  seedMismatches: number;
}

/** What one way of fetching the missing chunks would cost. */
export interface ModeCost {
  mode: 'range' | 'range-single' | 'store';
  /** Estimated bytes over the network (store: uncompressed chunk bytes, an upper bound). */
  bytes: number;
  requests: number;
}

/** The update-size answer: what comes from where, per fetch mode. */
export interface PlanReport {
  targetSize: number;
  chunks: number;
  fromSeeds: number;
  fromSelf: number;
  fromZero: number;
  /** Unique chunk bytes that must come from the network. */
  missingBytes: number;
  missingChunks: number;
  /** Runs of adjacent missing chunks (before gap merging). */
  missingRuns: number;
  /** Modes available for this origin (probed), with their costs. */
  modes: ModeCost[];
  /** What auto mode would pick ('none' when nothing is missing). */
  chosen: 'range' | 'store' | 'none';
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

/** Loads a target index from a local path or an http(s) URL (verified strictly). */
export async function loadIndex(spec: string, opts: { http?: HttpClient; signal?: AbortSignal } = {}): Promise<ChunkIndex> {
  void spec;
  void opts;
  throw new Error('not implemented');
}

/** Plans a target against the sources without fetching any chunk: the update-size query. */
export async function planUpdate(target: string | ChunkIndex, opts: SourceOptions = {}): Promise<PlanReport> {
  void target;
  void opts;
  throw new Error('not implemented');
}

/**
 * Assembles the target into `out`: writes a temp file beside it, verifies
 * every chunk (and the SHA-256 when given), then renames it into place. On
 * failure `out` is untouched and the partial file is kept for resuming.
 */
export async function extractToFile(target: string | ChunkIndex, out: string, opts: ExtractToFileOptions = {}): Promise<ExtractResult> {
  void target;
  void out;
  void opts;
  throw new Error('not implemented');
}

/**
 * Assembles the target (or a byte range of it) as an ordered stream of
 * verified bytes with bounded memory. With `sha256`, the final bytes are held
 * back until the whole-file digest matches (the stream errors otherwise).
 * Aborting `signal` or destroying the stream cancels all fetches.
 */
export function openExtractStream(target: ChunkIndex, opts: ExtractStreamOptions = {}): ExtractStream {
  void target;
  void opts;
  throw new Error('not implemented');
}

export { defaultCacheDir, IndexCache } from './index-cache.js';
