// The block path's entry points (docs/BLOCKPACK.md), for lib/delta (the block
// route), the CLI and the daemon: probe a release for a block pack, plan
// against local seeds, cost the plan, assemble into a sink; and, on the
// publisher side, pack an image.
import { ChecksumMismatchError, IndexFormatError, OriginError, PackError, RangeUnsupportedError } from '../errors.js';
import type { HttpClient } from '../fetch/http-client.js';
import { defaultCostModel, type CostModel } from '../plan/cost.js';
import { HASH_BYTES, MAX_INDEX_BYTES, parseBlockIndex, type BlockIndex } from './format.js';
import { costOf, planBlocks, type BlockCost, type BlockPlan, type PlanBlocksOptions } from './plan.js';
import { artifactNames } from './publisher.js';
import { indexSeedBlocks } from './seed-blocks.js';
import { freeNow } from '../util/buffer-pool.js';

export { packImage, artifactNames, type PackOptions, type PackResult, type Trainer } from './publisher.js';
export { costOf, planBlocks, type BlockPlan, type BlockCost } from './plan.js';
export {
  BlockAssembly,
  assembleBlocks,
  fetchDictionary,
  type PackDictionary,
  type BlockRouteOptions,
  type AssembleBlocksOptions,
  type AssembleBlocksResult,
} from './assemble.js';
export { indexSeedBlocks, type SeedBlocks } from './seed-blocks.js';
export { parseBlockIndex, type BlockIndex } from './format.js';
export { PackError } from '../errors.js';

export interface BlockPackProbe {
  index: BlockIndex;
  /** Bytes of the index as downloaded, and the requests it took (the one-byte probe and the body). */
  indexBytes: number;
  indexRequests: number;
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

/** The answer to the block index's one-byte probe: 206 (or 200 with the whole index) when the release has a pack. */
export interface BlockIndexAnswer {
  status: number;
  body: Buffer;
}

/** Asks for the first byte of the release's block index (see probeBlockPack); 404 when there is none. */
export function askBlockIndex(http: HttpClient, imageUrl: string, signal?: AbortSignal): Promise<BlockIndexAnswer> {
  const { indexUrl } = blockPackUrls(imageUrl);
  return http.getBuffer(indexUrl, { maxBytes: MAX_INDEX_BYTES, signal, headers: { range: 'bytes=0-0' }, gate: false });
}

/**
 * Fetches the release's block index; null when the release has no pack (404), so the chunk path is used.
 * A one-byte range goes first: whether there is an index is known before its body takes the link. `onFound`
 * is called then; the body is asked for once the promise it returns settles (a big body queued first on the
 * connection would hold up what the caller fetches meanwhile). `asked`: that probe's answer, when the caller
 * sent it already (askBlockIndex, e.g. with the release's index, before anything could be planned).
 */
export async function probeBlockPack(
  http: HttpClient,
  imageUrl: string,
  signal?: AbortSignal,
  onFound?: () => Promise<void> | void,
  asked?: Promise<BlockIndexAnswer>,
): Promise<BlockPackProbe | null> {
  const urls = blockPackUrls(imageUrl);
  const get = (headers?: Record<string, string>) =>
    http.getBuffer(urls.indexUrl, { maxBytes: MAX_INDEX_BYTES, signal, headers });
  const first = await (asked ?? askBlockIndex(http, imageUrl, signal));
  if (first.status !== 200 && first.status !== 206) return null;
  await onFound?.();
  // 200: a server that ignores ranges sent the whole index.
  const res = first.status === 200 ? first : await get();
  if (res.status !== 200) return null;
  const indexBytes = res.body.length + (res === first ? 0 : first.body.length);
  const indexRequests = res === first ? 1 : 2;
  // Freed once decompressed (~9 bytes per block), not at a full collection; unless it is the probe's answer shared by
  // the release preparation (a 200 to the range probe: kept for others).
  const index = parseBlockIndex(res.body, urls.indexUrl, res !== first || !asked);
  return { index, indexBytes, indexRequests, ...urls };
}

/** Indexes the seeds per block (cached) and plans the target against them. */
export async function planBlockUpdate(
  probe: BlockPackProbe,
  seedPaths: readonly string[],
  opts: { cacheDir?: string; signal?: AbortSignal } & PlanBlocksOptions = {},
): Promise<BlockPlan> {
  const seeds = [];
  for (const p of seedPaths) seeds.push(await indexSeedBlocks(p, probe.index.blockSize, opts));
  // Without keepIndex, the probe's index is used up too: only its header and frame tables live on, in the plan.
  const plan = planBlocks(probe.index, seeds, probe.indexBytes, { keepIndex: opts.keepIndex });
  // The plan does not keep the seeds' block hashes (8 bytes per block): freed now, not at a full collection.
  for (const s of seeds) freeNow(s.hashes);
  return plan;
}

/** The block path for one update, when the release has a pack: its plan and what each fetch mode costs. */
export interface BlockPathChoice {
  /** The probe's URLs and traffic (its index is the plan's now, without the per-block tables). */
  probe: Omit<BlockPackProbe, 'index'>;
  plan: BlockPlan;
  costs: BlockCost[];
  /** The cheapest block mode by the cost model. */
  best: BlockCost;
  /** Body bytes + requests priced by the cost model, of `best`. */
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
  cost?: CostModel;
  /** Called once the release turns out to have a block index; its body waits for the promise. */
  onFound?: () => Promise<void> | void;
  /** The block index's one-byte probe, when already sent (askBlockIndex). */
  asked?: Promise<BlockIndexAnswer>;
  /**
   * The caller knows the release's SHA-256, so its route may check blocks by their own hashes (cheaper than chunk
   * IDs) when the index's tables are small enough to keep (KEPT_INDEX_MAX_BYTES).
   */
  checkBlocks?: boolean;
  signal?: AbortSignal;
}

/**
 * Per-block tables (4 bytes per block, 8 per distinct block) kept for block checks at most: 1.7 MB for a 600 MB
 * image. A 4.9 GB image's 14 MB are dropped and its chunks checked by ID instead: the memory bound wins there.
 */
export const KEPT_INDEX_MAX_BYTES = 4 * 1024 * 1024;

/** Bytes the index's per-block tables take (what a plan with keepIndex holds beyond its own). */
export function indexTableBytes(index: Pick<BlockIndex, 'blockCount' | 'distinctCount'>): number {
  return index.blockCount * 4 + index.distinctCount * HASH_BYTES;
}

/** Pack requests in flight on the block route. */
export const BLOCK_PARALLELISM = 4;

/**
 * Probes for a pack and costs the block path (null when the release has none).
 * Callers compare `weight` with their other paths and with a full download.
 */
export async function costBlockPath(opts: BlockPathOptions): Promise<BlockPathChoice | null> {
  const probe = await probeBlockPack(opts.http, opts.imageUrl, opts.signal, opts.onFound, opts.asked);
  if (!probe) return null;
  // The route needs the plan's 4 bytes per block, not the index's tables (4 bytes per block, 8 per distinct block,
  // the plain frame tables: 19 MiB for a 4.9 GB image); it fetches the index again only if a chunk fails its ID
  // (BlockRouteOptions.indexUrl).
  // Small tables are kept when the route can check blocks with them instead of chunk IDs.
  const keepIndex = opts.checkBlocks === true && indexTableBytes(probe.index) <= KEPT_INDEX_MAX_BYTES;
  const plan = await planBlockUpdate(probe, opts.seeds, {
    cacheDir: opts.cacheDir,
    signal: opts.signal,
    keepIndex,
  });
  const { index: _planned, ...urls } = probe;
  const cost = opts.cost ?? defaultCostModel;
  const planOpts = { cost, parallelism: BLOCK_PARALLELISM };
  const costs = opts.multi === false ? [] : [costOf(plan, { multi: true, ...planOpts })];
  costs.push(costOf(plan, { multi: false, ...planOpts }));
  const weigh = (c: BlockCost): number => cost.weigh(c, BLOCK_PARALLELISM);
  const best = costs.reduce((a, b) => (weigh(b) < weigh(a) ? b : a));
  return { probe: urls, plan, costs, best, weight: weigh(best) };
}

/** Failures of the pack or its server (not of this machine): another route may still work. */
export function isPackFailure(err: unknown): boolean {
  return (
    err instanceof PackError ||
    err instanceof ChecksumMismatchError ||
    err instanceof IndexFormatError ||
    err instanceof OriginError ||
    err instanceof RangeUnsupportedError
  );
}
