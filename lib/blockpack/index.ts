// The block path's entry points (docs/BLOCKPACK.md), for lib/extract.ts, the
// CLI and the daemon: probe a release for a block pack, plan against local
// seeds, cost the plan, assemble; and, on the publisher side, pack an image.
import type { HttpClient } from '../http-client.js';
import { parseBlockIndex, type BlockIndex } from './format.js';
import { planBlocks, type BlockPlan } from './plan.js';
import { artifactNames } from './publisher.js';
import { indexSeedBlocks } from './seed-blocks.js';

export { packImage, artifactNames, type PackOptions, type PackResult, type Trainer } from './publisher.js';
export { costOf, planBlocks, DEFAULT_REQUEST_COST, type BlockPlan, type BlockCost } from './plan.js';
export { assembleBlocks, type AssembleBlocksOptions, type AssembleBlocksResult } from './assemble.js';
export { indexSeedBlocks, type SeedBlocks } from './seed-blocks.js';
export { parseBlockIndex, PackError, type BlockIndex } from './format.js';

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
