// A route is one way to produce the target: chunks (planner + remote source +
// assembler) or blocks (block plan + seed blocks + pack frames). Every route
// is priced by the one cost model and runs into the same verifying sinks (the
// partial file, the ordered stream), filling only the chunks the sink does not
// hold yet. So when a route fails for a reason of the origin or its artifacts
// (a stale or corrupt pack, a server that stops serving ranges), the next
// route simply continues into the same sink: every chunk in it was verified
// against the target index, whichever route put it there.
import type { ChunkIndex } from '../format/caibx.js';
import type { FetchStats } from '../fetch/range-fetcher.js';
import type { HttpClient } from '../fetch/http-client.js';
import type { CostModel } from '../plan/cost.js';
import { planChunks } from '../plan/planner.js';
import type { Seed } from '../seed/seed.js';
import type { BufferPool } from '../util/buffer-pool.js';
import { Assembler } from '../assemble/assembler.js';
import type { ExtractProgress } from '../assemble/progress.js';
import type { RemoteSource } from '../assemble/remote-source.js';
import type { AssemblySink } from '../assemble/sink.js';
import {
  BLOCK_PARALLELISM,
  BlockAssembly,
  fetchDictionary,
  isPackFailure,
  type BlockPathChoice,
  type PackDictionary,
} from '../blockpack/index.js';

export type RouteKind = 'range' | 'store' | 'blocks' | 'none';

export interface Route {
  readonly kind: RouteKind;
  /** Traffic of this route so far. */
  readonly stats: FetchStats;
  readonly seedMismatches: number;
  /** True once this route put a chunk into the sink. */
  readonly wroteAny: boolean;
  /** Starts fetching what the route needs before its first byte, while others use the link (optional). */
  prepare?(signal: AbortSignal): void;
  /** Assembles every chunk the sink does not hold yet (in the sink's range). */
  run(sink: AssemblySink, progress: ExtractProgress, signal: AbortSignal): Promise<void>;
  /** Whether a failure of this route leaves the next one a chance (the origin's or the artifacts' fault). */
  recoverable(err: unknown): boolean;
}

export interface ChunkRouteOptions {
  target: ChunkIndex;
  seeds: readonly Seed[];
  /** Planned target chunks [firstChunk, endChunk) (a ranged stream). */
  firstChunk?: number;
  endChunk?: number;
  selfSeed?: boolean;
  nullSeed?: boolean;
  remote?: RemoteSource;
  /** Whether missing chunks were planned to come from `remote` (else it only stands in for lying seeds). */
  fetches: boolean;
  buffers?: BufferPool;
  concurrency: number;
  maxSpan?: number;
  onWarning?: (message: string) => void;
}

const NO_TRAFFIC: FetchStats = { requests: 0, bytes: 0 };

/** Chunks from seeds, zero and repeats, the rest from byte ranges or chunk stores. */
export class ChunkRoute implements Route {
  private assembler?: Assembler;
  /** What a finished run did (its assembler, with its buffers, is let go: a lead's would outlive it by minutes). */
  private finished?: { seedMismatches: number; wroteAny: boolean };
  constructor(private readonly opts: ChunkRouteOptions) {}

  get kind(): RouteKind {
    const remote = this.opts.remote;
    if (!remote || (!this.opts.fetches && remote.stats.requests === 0)) return 'none';
    return remote.kind;
  }
  get stats(): FetchStats {
    return this.opts.remote?.stats ?? NO_TRAFFIC;
  }
  get seedMismatches(): number {
    return (this.assembler ?? this.finished)?.seedMismatches ?? 0;
  }
  get wroteAny(): boolean {
    return (this.assembler ?? this.finished)?.wroteAny ?? false;
  }

  async run(sink: AssemblySink, progress: ExtractProgress, signal: AbortSignal): Promise<void> {
    const o = this.opts;
    const plan = planChunks(o.target, o.seeds, {
      firstChunk: o.firstChunk,
      endChunk: o.endChunk,
      selfSeed: o.selfSeed,
      nullSeed: o.nullSeed,
      skip: (i) => sink.has(i),
    });
    this.assembler = new Assembler({
      plan,
      sink,
      remote: o.remote,
      chunkBuffers: o.buffers,
      maxSpan: o.maxSpan,
      concurrency: o.concurrency,
      progress,
      onWarning: o.onWarning,
      signal,
    });
    try {
      await this.assembler.run();
    } finally {
      const { seedMismatches, wroteAny } = this.assembler;
      this.finished = { seedMismatches, wroteAny };
      this.assembler = undefined;
    }
  }

  recoverable(): boolean {
    return false;
  }
}

export interface BlockRouteConfig {
  choice: BlockPathChoice;
  target: ChunkIndex;
  http: HttpClient;
  cost: CostModel;
  sha256?: string;
  maxSpan?: number;
  /** Where task buffers come from: the chunk route's pool, so the slabs its lead used are used again. */
  buffers?: BufferPool;
  /** Chunk checks on a hashing thread (BlockRouteOptions.hashThread). */
  hashThread?: boolean;
  onWarning?: (message: string) => void;
}

/** Seed blocks, zero blocks and frames of the release's block pack (docs/BLOCKPACK.md). */
export class BlockRoute implements Route {
  readonly kind = 'blocks';
  private assembly?: BlockAssembly;
  private dictionary?: Promise<PackDictionary>;
  constructor(private readonly cfg: BlockRouteConfig) {}

  /** The dictionary is downloaded (and checked) while the chunk route streams the first chunks. */
  prepare(signal: AbortSignal): void {
    const { choice, http } = this.cfg;
    if (this.dictionary || choice.plan.frames.length === 0) return;
    this.dictionary = fetchDictionary(http, choice.probe.dictUrl, choice.plan.index, signal);
    this.dictionary.catch(() => {});
  }

  /** The block index download counts as this route's traffic. */
  get stats(): FetchStats {
    const s = this.assembly?.stats ?? NO_TRAFFIC;
    const { indexRequests, indexBytes } = this.cfg.choice.probe;
    return { requests: indexRequests + s.requests, bytes: indexBytes + s.bytes };
  }
  get seedMismatches(): number {
    return this.assembly?.seedMismatches ?? 0;
  }
  get wroteAny(): boolean {
    return this.assembly?.wroteAny ?? false;
  }

  async run(sink: AssemblySink, progress: ExtractProgress, signal: AbortSignal): Promise<void> {
    const { choice, target, http, cost, sha256, maxSpan, buffers, hashThread, onWarning } = this.cfg;
    // Asked for (AssembleOptions.checkBlocks), with the release's SHA-256 (which run() holds the block index to) and
    // the index's tables kept (small images: costBlockPath), every block is checked against its hash and the whole
    // image against the SHA-256, as a standalone assembly does: SHA-256 of the non-zero blocks costs less than
    // SHA-512/256 of every chunk (bench/RESULTS.md, "Block path CPU (session 6)"). Otherwise the chunk IDs are.
    const verifyChunks = sha256 === undefined || choice.plan.full === undefined;
    this.assembly = new BlockAssembly(
      choice.plan,
      target,
      sink,
      progress,
      {
        http,
        packUrl: choice.probe.packUrl,
        dictUrl: choice.probe.dictUrl,
        indexUrl: choice.probe.indexUrl,
        dictionary: this.dictionary,
        multi: choice.best.mode === 'blocks',
        cost,
        sha256,
        concurrency: BLOCK_PARALLELISM,
        maxSpan,
        buffers,
        hashThread,
        onWarning,
        signal,
      },
      verifyChunks,
    );
    await this.assembly.run();
  }

  recoverable(err: unknown): boolean {
    return isPackFailure(err);
  }
}

export interface RunRoutesOptions {
  signal: AbortSignal;
  onWarning?: (message: string) => void;
}

/**
 * Runs the routes (cheapest first) into one sink until one completes it; a
 * recoverable failure is warned about and the next route continues where it
 * stopped. Returns the route that finished.
 */
export async function runRoutes(
  routes: readonly Route[],
  sink: AssemblySink,
  progress: ExtractProgress,
  opts: RunRoutesOptions,
): Promise<Route> {
  for (let k = 0; ; k++) {
    const route = routes[k];
    try {
      await route.run(sink, progress, opts.signal);
      return route;
    } catch (err) {
      if (opts.signal.aborted || k === routes.length - 1 || !route.recoverable(err)) throw err;
      const next = routes[k + 1].kind;
      opts.onWarning?.(`${route.kind} route: ${(err as Error).message}; falling back to the chunk path (${next})`);
    }
  }
}
