// The block path's entry points (docs/BLOCKPACK.md), for lib/extract.ts, the
// CLI and the daemon: probe a release for a block pack, plan against local
// seeds, cost the plan, assemble; and, on the publisher side, pack an image.
import { mkdir, open, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { ChunkIndex } from '../format/caibx.js';
import { ChecksumMismatchError, DeltadError, IndexFormatError, OriginError, PackError, RangeUnsupportedError } from '../errors.js';
import type { ExtractProgress, ExtractResult } from '../assemble/progress.js';
import type { HttpClient } from '../fetch/http-client.js';
import { assembleBlocks } from './assemble.js';
import { parseBlockIndex, type BlockIndex } from './format.js';
import { costOf, planBlocks, type BlockCost, type BlockPlan } from './plan.js';
import { artifactNames } from './publisher.js';
import { indexSeedBlocks } from './seed-blocks.js';

export { packImage, artifactNames, type PackOptions, type PackResult, type Trainer } from './publisher.js';
export { costOf, planBlocks, DEFAULT_REQUEST_COST, type BlockPlan, type BlockCost } from './plan.js';
export { assembleBlocks, type AssembleBlocksOptions, type AssembleBlocksResult } from './assemble.js';
export { indexSeedBlocks, type SeedBlocks } from './seed-blocks.js';
export { parseBlockIndex, type BlockIndex } from './format.js';
export { PackError } from '../errors.js';

/** Largest block index fetched (64 MiB: a ~30 TiB image at 4 KiB blocks). */
const MAX_INDEX_FETCH = 64 * 1024 * 1024;

export interface BlockPackProbe {
  index: BlockIndex;
  /** Bytes of the index as downloaded. */
  indexBytes: number;
  indexUrl: string;
  packUrl: string;
  dictUrl: string;
}

/** URLs of a release's block pack artifacts, next to the image URL. */
export function blockPackUrls(imageUrl: string): { indexUrl: string; packUrl: string; dictUrl: string } {
  const u = new URL(imageUrl);
  const name = decodeURIComponent(u.pathname.slice(u.pathname.lastIndexOf('/') + 1));
  const names = artifactNames(name);
  const at = (n: string): string => new URL(encodeURIComponent(n), u).toString();
  return { indexUrl: at(names.index), packUrl: at(names.pack), dictUrl: at(names.dict) };
}

/** Fetches the release's block index; null when the release has no pack (404), so the chunk path is used. */
export async function probeBlockPack(http: HttpClient, imageUrl: string, signal?: AbortSignal): Promise<BlockPackProbe | null> {
  const urls = blockPackUrls(imageUrl);
  const res = await http.getBuffer(urls.indexUrl, { maxBytes: MAX_INDEX_FETCH, signal });
  if (res.status !== 200) return null;
  return { index: parseBlockIndex(res.body, urls.indexUrl), indexBytes: res.body.length, ...urls };
}

/** Indexes the seeds per block (cached) and plans the target against them. */
export async function planBlockUpdate(probe: BlockPackProbe, seedPaths: readonly string[], opts: { cacheDir?: string; signal?: AbortSignal } = {}): Promise<BlockPlan> {
  const seeds = [];
  for (const p of seedPaths) seeds.push(await indexSeedBlocks(p, probe.index.blockSize, opts));
  return planBlocks(probe.index, seeds, probe.indexBytes);
}

/** The block path for one update, when the release has a pack: its plan and what each fetch mode costs. */
export interface BlockPathChoice {
  probe: BlockPackProbe;
  plan: BlockPlan;
  costs: BlockCost[];
  /** The cheapest block mode, by bytes + requests x requestCost. */
  best: BlockCost;
  /** bytes + requests x requestCost of `best`. */
  weight: number;
}

export interface BlockPathOptions {
  http: HttpClient;
  /** The release image's URL: the pack artifacts are looked for next to it. */
  imageUrl: string;
  seeds: readonly string[];
  cacheDir?: string;
  /** Whether the origin does multi-range (undefined: not probed, assume yes). */
  multi?: boolean;
  /** Bytes one request is worth when weighing paths. */
  requestCost: number;
  signal?: AbortSignal;
}

/**
 * Probes for a pack and costs the block path (null when the release has none).
 * Callers compare `weight` with their other paths and with a full download.
 */
export async function costBlockPath(opts: BlockPathOptions): Promise<BlockPathChoice | null> {
  const probe = await probeBlockPack(opts.http, opts.imageUrl, opts.signal);
  if (!probe) return null;
  const plan = await planBlockUpdate(probe, opts.seeds, { cacheDir: opts.cacheDir, signal: opts.signal });
  const costs = opts.multi === false ? [] : [costOf(plan, { multi: true, requestCost: opts.requestCost })];
  costs.push(costOf(plan, { multi: false, requestCost: opts.requestCost }));
  const weigh = (c: BlockCost): number => c.bytes + c.requests * opts.requestCost;
  const best = costs.reduce((a, b) => (weigh(b) < weigh(a) ? b : a));
  return { probe, plan, costs, best, weight: weigh(best) };
}

export interface ExtractViaBlocksOptions {
  http: HttpClient;
  /** The chunk index asked for: the assembled image must match it, not only the pack's own index. */
  target: ChunkIndex;
  sha256?: string;
  onWarning?: (message: string) => void;
  onProgress?: (p: ExtractProgress) => void;
  signal?: AbortSignal;
}

/**
 * Runs the block path for lib/extract.ts. Returns null (after a warning) when
 * the pack turns out unusable: bad frames, a dictionary or index that does not
 * match, a whole-file SHA-256 mismatch, a server without byte ranges; the
 * caller then takes the chunk path. Aborts and local I/O errors are thrown.
 */
export async function extractViaBlocks(choice: BlockPathChoice, out: string, opts: ExtractViaBlocksOptions): Promise<ExtractResult | null> {
  const { plan, probe } = choice;
  const total = plan.index.imageSize;
  const progress = (done: number, stats: { fromSeeds?: number; fromPack?: number; networkBytes?: number; networkRequests?: number } = {}): ExtractProgress => ({
    total, done, fromSeeds: stats.fromSeeds ?? 0, fromSelf: 0, fromZero: plan.totals.zeroBytes, fromCache: 0, fromNetwork: stats.fromPack ?? 0, fromLocalStore: 0,
    networkBytes: probe.indexBytes + (stats.networkBytes ?? 0), networkRequests: 1 + (stats.networkRequests ?? 0),
  });
  try {
    const r = await assembleBlocks(plan, out, {
      http: opts.http, packUrl: probe.packUrl, dictUrl: probe.dictUrl, multi: choice.best.mode === 'blocks',
      sha256: opts.sha256, target: opts.target, signal: opts.signal, onWarning: opts.onWarning,
      onProgress: (done) => opts.onProgress?.(progress(done)),
    });
    const p = progress(total, r);
    opts.onProgress?.(p);
    return { ...p, mode: 'blocks', sha256: r.sha256, wallMs: r.wallMs, resumedBytes: 0, seedMismatches: r.seedMismatches };
  } catch (err) {
    if (opts.signal?.aborted || !isRecoverable(err)) throw err;
    opts.onWarning?.(`block pack ${probe.packUrl}: ${(err as Error).message}; falling back to the chunk path`);
    return null;
  }
}

/** Failures of the pack or its server (not of this machine): the chunk path may still work. */
function isRecoverable(err: unknown): boolean {
  return err instanceof PackError || err instanceof ChecksumMismatchError || err instanceof IndexFormatError ||
    err instanceof OriginError || err instanceof RangeUnsupportedError;
}

/** What streamViaBlocks feeds: the engine's ordered stream (admit for backpressure, put in target chunk order). */
export interface ChunkSink {
  admit(start: number, end: number, first: number): Promise<void> | void;
  put(first: number, count: number, data: Buffer): void;
}

/**
 * The block path for an ordered stream (the daemon): assembles the whole image
 * into a temp file in `dir` (verified against its SHA-256), then feeds it to
 * `sink` chunk by chunk of `target`. Null when the pack is unusable (the
 * caller streams from the chunk path instead).
 */
export async function streamViaBlocks(choice: BlockPathChoice, sink: ChunkSink, target: ChunkIndex, dir: string, opts: Omit<ExtractViaBlocksOptions, 'target'>): Promise<ExtractResult | null> {
  await mkdir(dir, { recursive: true });
  const tmp = join(dir, `stream-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}.img`);
  try {
    const r = await extractViaBlocks(choice, tmp, { ...opts, target });
    if (!r) return null;
    const fh = await open(tmp, 'r');
    try {
      for (let i = 0; i < target.count; i++) {
        opts.signal?.throwIfAborted();
        await sink.admit(target.start(i), target.end(i), i);
        const data = Buffer.allocUnsafe(target.chunkSize(i));
        const { bytesRead } = await fh.read(data, 0, data.length, target.start(i));
        if (bytesRead !== data.length) throw new DeltadError('ERR_DELTAD_READ', `${tmp}: short read at byte ${target.start(i)}`);
        sink.put(i, 1, data);
      }
    } finally {
      await fh.close();
    }
    return r;
  } finally {
    await unlink(tmp).catch(() => {});
  }
}
