// Seeds: local files that may already hold chunks of the target, each with an
// index (given, cached, or built with the *target's* chunking so IDs can
// match). Seeds are opened read-only and only ever read; every chunk read from
// one is hashed by the assembler before use.
import type { FileHandle } from 'node:fs/promises';
import { readdirSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { openInput } from '../util/open-input.js';
import { readIndexFile, startsLikeIndex, type ChunkIndex } from '../format/caibx.js';
import { IndexFormatError } from '../errors.js';
import type { IndexCache, IndexBuilder } from './index-cache.js';
import { readFully } from '../util/fs-io.js';

export interface Seed {
  /** Path, for messages. */
  readonly path: string;
  readonly index: ChunkIndex;
  readonly fh: FileHandle;
}

export interface OpenSeedOptions {
  target: ChunkIndex;
  cache: IndexCache;
  /** Chunks a seed that has no usable index (the indexer). */
  build?: IndexBuilder;
  onWarning?: (message: string) => void;
  signal?: AbortSignal;
}

/**
 * Opens a seed read-only and finds its index: the given one when it matches
 * the file and the target's digest, else the cache, else the indexer.
 */
export async function openSeed(
  path: string,
  given: string | ChunkIndex | undefined,
  opts: OpenSeedOptions,
): Promise<Seed> {
  const { fh, st } = await openInput(path, { blockDevices: true });
  try {
    const head = Buffer.alloc(16);
    await fh.read(head, 0, 16, 0);
    if (startsLikeIndex(head)) opts.onWarning?.(indexAsSeedWarning(path));
    let index: ChunkIndex | undefined =
      typeof given === 'string' ? await readIndexFile(given, { allowArchive: false }) : given;
    const size = st.isFile() ? st.size : undefined;
    if (index && size !== undefined && index.size !== size) {
      opts.onWarning?.(
        `seed ${path}: its index describes ${index.size} bytes but the file has ${size}; re-chunking it`,
      );
      index = undefined;
    } else if (index && index.digest !== opts.target.digest) {
      opts.onWarning?.(
        `seed ${path}: its index uses ${index.digest}, the target ${opts.target.digest}; re-chunking it`,
      );
      index = undefined;
    }
    if (!index) {
      const key = { params: opts.target.params, digest: opts.target.digest };
      if (!opts.build)
        throw new IndexFormatError('seed', 0, 'no index given and no indexer available to chunk it', path);
      index = await opts.cache.getOrBuild(path, key, opts.build, opts.signal);
    }
    return { path, index, fh };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/** desync's --seed takes an index (the image beside it); deltad's takes the image. */
function indexAsSeedWarning(path: string): string {
  const image = imageBeside(path);
  const hint = image ? ` (here: ${image}:${path})` : '';
  return (
    `seed ${path} is a casync index, not an image: no chunk of the target can come from it; ` +
    `give the image itself, with its index as IMAGE:INDEX${hint}`
  );
}

/** The file an index is named after: `os.raw` for `os.raw.caibx` (desync), or `os.raw` for `os.caibx`. */
function imageBeside(index: string): string | undefined {
  const stem = basename(index).replace(/\.cai[bd]x$/, '');
  if (stem === basename(index)) return undefined;
  try {
    const names = readdirSync(dirname(index)).filter(
      (n) => (n === stem || n.startsWith(`${stem}.`)) && !/\.cai[bd]x$/.test(n),
    );
    const found = names.sort((a, b) => a.length - b.length).find((n) => statSync(join(dirname(index), n)).isFile());
    return found && join(dirname(index), found);
  } catch {
    return undefined;
  }
}

export async function closeSeeds(seeds: readonly Seed[]): Promise<void> {
  await Promise.all(seeds.map((s) => s.fh.close().catch(() => {})));
}

/**
 * Reads seed bytes [start, end) fully (a short read means the file shrank: the
 * rest is zero-filled and fails verification), into `into` (at least that
 * long) or a new buffer.
 */
export async function readSeedRange(seed: Seed, start: number, end: number, into?: Buffer): Promise<Buffer> {
  const buf = into ? into.subarray(0, end - start) : Buffer.allocUnsafeSlow(end - start);
  const got = await readFully(seed.fh, buf, start);
  buf.fill(0, got);
  return buf;
}
