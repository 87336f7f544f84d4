// Seed discovery for the daemon: local images matched by the configured globs
// (where sysupdate installs them), minus sysupdate's temporary files. Each
// seed's index comes from, in order:
// - an index file beside it (index-name templates, e.g. /system/X.erofs.caibx as
//   KDE Linux installs it) when its chunking and digest are the target's and it
//   describes a file of the seed's size: no full read of a multi-GB seed. A
//   wrong one costs reuse, never correctness (seed chunks are verified when read);
// - lib/seed/index-cache.ts, so no version is chunked twice: at start-up, seeds
//   without one are chunked in the background with the chunking of the last
//   target deltad served (assemblies wait for it);
// - after a verified delta, the target's index is kept as "pending adoption"
//   under the name sysupdate installs it as (the transfer's target MatchPattern=
//   with the same @v, e.g. X_7_root-x86-64.erofs -> X_7.erofs) and recorded for
//   the installed file as soon as it shows up under a seed glob.
// adopt/ is bounded: a few entries, a few weeks, a few hundred MB.
import { mkdir, readdir, readFile, rm, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { MAX_INDEX_BYTES, parseIndex, serializeIndex, type ChunkIndex } from '../lib/format/caibx.js';
import { IndexCache } from '../lib/seed/index-cache.js';
import type { SeedSpec } from '../lib/delta/extract.js';
import { indexFile } from '../lib/chunking/indexer.js';
import { globToRegExp } from './glob.js';
import { indexFileNames } from './index-names.js';
import type { Logger } from './log.js';
import { writeFileAtomic } from '../lib/util/fs-io.js';
import { freeNow } from '../lib/util/buffer-pool.js';

/** Bounds of adopt/: entries, age, total bytes (oldest go first). */
export const ADOPT_LIMITS = { entries: 8, ageMs: 30 * 24 * 3600_000, bytes: 256 * 1024 * 1024 };

export interface SeedCatalogOptions {
  /** index-name templates for an index beside a seed (default: none). */
  indexNames?: readonly string[];
  /** The names sysupdate installs a downloaded image as (default: its own name). */
  installedNames?: (downloadedName: string) => Promise<string[]>;
}

/** sysupdate's in-progress names (.sysupdate.partial.*, .sysupdate.pending.*, older .#sysupdate*) and any hidden file. */
export function isTemporaryName(name: string): boolean {
  return name.startsWith('.');
}

export class SeedCatalog {
  private readonly cache: IndexCache;
  private readonly adoptDir: string;
  private readonly lastTargetPath: string;
  private warming: Promise<void> = Promise.resolve();

  constructor(
    private readonly globs: string[],
    cacheDir: string,
    private readonly log: Logger,
    private readonly opts: SeedCatalogOptions = {},
  ) {
    this.cache = new IndexCache(cacheDir);
    this.adoptDir = join(cacheDir, 'adopt');
    this.lastTargetPath = join(cacheDir, 'last-target.caibx');
  }

  /** Regular, non-temporary files matching the seed globs, sorted, without duplicates. */
  async scan(): Promise<string[]> {
    const found = new Set<string>();
    for (const glob of this.globs) {
      const dir = dirname(glob);
      const re = globToRegExp(basename(glob));
      let names: string[];
      try {
        names = await readdir(dir);
      } catch {
        continue; // a glob whose directory does not exist matches nothing
      }
      for (const name of names) {
        if (isTemporaryName(name) || !re.test(name)) continue;
        const path = join(dir, name);
        const st = await stat(path).catch(() => undefined);
        if (st?.isFile() && st.size > 0) found.add(path);
      }
    }
    return [...found].sort();
  }

  /**
   * Seeds for assembling `targetName`: every seed except a file of that very
   * name (it may be the download in progress), each with the index beside it
   * when that one fits `target`. Pending adoptions are applied first.
   */
  async seedsFor(targetName: string, target?: ChunkIndex): Promise<SeedSpec[]> {
    const paths = await this.scan();
    await this.applyAdoptions(paths);
    const out: SeedSpec[] = [];
    for (const path of paths) {
      if (basename(path) === targetName) continue;
      const index = target ? await this.indexBeside(path, target) : undefined;
      out.push(index ? { path, index } : { path });
    }
    return out;
  }

  /**
   * The index file beside `seed` (index-name templates) when it has the
   * chunking and digest of `like` and describes a file of the seed's size.
   */
  async indexBeside(seed: string, like: Pick<ChunkIndex, 'params' | 'digest'>): Promise<ChunkIndex | undefined> {
    const st = await stat(seed).catch(() => undefined);
    if (!st) return undefined;
    for (const name of indexFileNames(basename(seed), this.opts.indexNames ?? [])) {
      const path = join(dirname(seed), name);
      const index = await this.readIndex(path);
      if (!index) continue;
      const p = index.params;
      const q = like.params;
      const sameChunking = p.min === q.min && p.avg === q.avg && p.max === q.max;
      if (index.digest === like.digest && sameChunking && index.size === st.size) return index;
      this.log.info(`seed ${seed}: the index ${path} does not fit (other chunking, digest or size); not using it`);
    }
    return undefined;
  }

  /** Resolves when background indexing has finished (successfully or not). */
  get ready(): Promise<void> {
    return this.warming;
  }

  /** Starts background indexing of seeds with the last target's chunking. */
  warm(signal?: AbortSignal): Promise<void> {
    this.warming = this.warmNow(signal).catch((err) => {
      if (!signal?.aborted) this.log.warn(`seed indexing: ${(err as Error).message}`);
    });
    return this.warming;
  }

  private async warmNow(signal?: AbortSignal): Promise<void> {
    const last = await this.readIndex(this.lastTargetPath);
    const paths = await this.scan();
    await this.applyAdoptions(paths);
    if (!last || paths.length === 0) return;
    const started = Date.now();
    const key = { params: last.params, digest: last.digest };
    // One at a time, in the background: the machine is busy with other things.
    let beside = 0;
    for (const path of paths) {
      if (await this.indexBeside(path, key)) {
        beside++;
        continue;
      }
      await this.cache
        .getOrBuild(
          path,
          key,
          (p, k, sig) => indexFile(p, { params: k.params, digest: k.digest, threads: 1, signal: sig }),
          signal,
        )
        .catch((err) => {
          if (!signal?.aborted) this.log.warn(`seed ${path}: cannot index it: ${(err as Error).message}`);
        });
      if (signal?.aborted) return;
    }
    const note = beside ? ` (${beside} with the index beside it)` : '';
    this.log.info(`seed indexes ready for ${paths.length} seed(s)${note} in ${Date.now() - started} ms`);
  }

  /**
   * After a verified delta: remember its index for the image as sysupdate
   * installs it, and for warm-up chunking.
   */
  async remember(targetName: string, index: ChunkIndex, installedAs = this.installedNames(targetName)): Promise<void> {
    await mkdir(this.adoptDir, { recursive: true });
    const bytes = serializeIndex(index);
    const names = await installedAs;
    // Not durable (see IndexCache.write): a lost or wrong index here costs fetches, never a wrong image, and an fsync
    // at the end of one download would stall the seed reads of the next on a busy disk.
    for (const name of names.length ? names : [basename(targetName)]) {
      await writeFileAtomic(join(this.adoptDir, `${name}.caibx`), bytes, { durable: false });
    }
    await writeFileAtomic(this.lastTargetPath, bytes, { durable: false });
    // Written: the table's bytes (2.9 MB for a 4 GiB image) are freed now, not at the next full collection.
    freeNow(bytes);
    await this.pruneAdoptions();
  }

  /** The names sysupdate installs `targetName` as (empty: its own name, or the transfers could not be read). */
  installedNames(targetName: string): Promise<string[]> {
    return (this.opts.installedNames?.(basename(targetName)) ?? Promise.resolve([])).catch(() => []);
  }

  /** Keeps adopt/ within ADOPT_LIMITS: the newest entries stay. */
  private async pruneAdoptions(): Promise<void> {
    const entries = [];
    for (const name of await readdir(this.adoptDir).catch(() => [] as string[])) {
      const path = join(this.adoptDir, name);
      const st = await stat(path).catch(() => undefined);
      if (st?.isFile()) entries.push({ path, mtime: st.mtimeMs, size: st.size });
    }
    entries.sort((a, b) => b.mtime - a.mtime);
    let bytes = 0;
    for (const [i, e] of entries.entries()) {
      bytes += e.size;
      const old = Date.now() - e.mtime > ADOPT_LIMITS.ageMs;
      if (i >= ADOPT_LIMITS.entries || old || (i > 0 && bytes > ADOPT_LIMITS.bytes)) await rm(e.path, { force: true });
    }
  }

  private async applyAdoptions(paths: string[]): Promise<void> {
    for (const path of paths) {
      const pending = join(this.adoptDir, `${basename(path)}.caibx`);
      const index = await this.readIndex(pending);
      if (!index) continue;
      const st = await stat(path).catch(() => undefined);
      // Not yet the whole file (still being installed): try again next time.
      if (!st || st.size !== index.size) continue;
      try {
        await this.cache.adopt(path, index);
        await unlink(pending);
        this.log.info(`seed ${path}: adopted the index of the image deltad assembled (no chunking needed)`);
      } catch (err) {
        this.log.warn(`seed ${path}: cannot record its index: ${(err as Error).message}`);
      }
    }
  }

  private async readIndex(path: string): Promise<ChunkIndex | undefined> {
    try {
      const st = await stat(path);
      if (!st.isFile() || st.size > MAX_INDEX_BYTES) return undefined;
      return parseIndex(await readFile(path), { source: path, allowArchive: false });
    } catch {
      return undefined;
    }
  }
}
