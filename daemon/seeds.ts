// Seed discovery for the daemon: local images matched by the configured globs
// (where sysupdate installs them), minus sysupdate's temporary files. Seed
// indexes live in lib/index-cache.ts, so no version is chunked twice:
// - at start-up, seeds without a cached index are chunked in the background
//   with the chunking of the last target deltad served (assemblies wait for it);
// - after a verified delta, the target's index is kept as "pending adoption"
//   and recorded for the installed file as soon as it shows up under a seed glob.
import { mkdir, readdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { parseIndex, serializeIndex, type ChunkIndex } from '../lib/format/caibx.js';
import { IndexCache } from '../lib/seed/index-cache.js';
import type { SeedSpec } from '../lib/delta/extract.js';
import { indexFile } from '../lib/chunking/indexer.js';
import { globToRegExp } from './glob.js';
import type { Logger } from './log.js';

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
   * name (it may be the download in progress). Pending adoptions are applied first.
   */
  async seedsFor(targetName: string): Promise<SeedSpec[]> {
    const paths = await this.scan();
    await this.applyAdoptions(paths);
    return paths.filter((p) => basename(p) !== targetName).map((path) => ({ path }));
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
    for (const path of paths) {
      await this.cache.getOrBuild(path, key, (p, k, sig) => indexFile(p, { params: k.params, digest: k.digest, threads: 1, signal: sig }), signal).catch((err) => {
        if (!signal?.aborted) this.log.warn(`seed ${path}: cannot index it: ${(err as Error).message}`);
      });
      if (signal?.aborted) return;
    }
    this.log.info(`seed indexes ready for ${paths.length} seed(s) in ${Date.now() - started} ms`);
  }

  /** After a verified delta: remember its index for the installed image and for warm-up chunking. */
  async remember(targetName: string, index: ChunkIndex): Promise<void> {
    await mkdir(this.adoptDir, { recursive: true });
    const bytes = serializeIndex(index);
    await writeAtomic(join(this.adoptDir, `${basename(targetName)}.caibx`), bytes);
    await writeAtomic(this.lastTargetPath, bytes);
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
      return parseIndex(await readFile(path), { source: path, allowArchive: false });
    } catch {
      return undefined;
    }
  }
}

async function writeAtomic(path: string, data: Uint8Array): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, data);
  await rename(tmp, path);
}
