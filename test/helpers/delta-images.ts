// Generated image pairs for delta tests: v1 (seeded pseudo-random) and a "v2" with
// edits, an insertion, a zero run and a repeated block (images.ts deltaV2), in a
// temp directory. v2's index and chunk store are made by the real `casync make`;
// www/ holds what an origin serves (v2.img, v2.caibx, v2.castr/), v1.img sits
// outside as a seed.
import { spawnSync } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { startOrigin, type Origin } from './origin.js';
import { tmpDir, type TmpContext } from './tmp.js';
import { deltaV2, seededBytes } from './images.js';
import { readIndexFile, type ChunkIndex, type ChunkParams } from '../../lib/format/caibx.js';

export const TEST_PARAMS: ChunkParams = { min: 4096, avg: 16384, max: 65536 };

export interface DeltaFixture {
  dir: string;
  www: string;
  v1Path: string;
  v2Path: string;
  v1: Buffer;
  v2: Buffer;
  indexPath: string;
  index: ChunkIndex;
  storeDir: string;
}

/** Fails (in CI) or reports false (elsewhere) when casync is not installed. */
export function requireCasync(t: { skip: (msg: string) => void }): boolean {
  const r = spawnSync('casync', ['--version'], { stdio: 'pipe' });
  if (r.status === 0) return true;
  if (process.env.CI) throw new Error('casync is required in CI (scripts/test-deps.sh installs it)');
  t.skip('casync not installed');
  return false;
}

/** A delta fixture in a new directory, removed after `t` (a test, or a file-level before() hook). */
export async function makeDeltaFixture(t: TmpContext, size = 3 * 1024 * 1024): Promise<DeltaFixture> {
  const dir = await tmpDir(t, 'delta');
  const www = join(dir, 'www');
  await mkdir(www);
  const v1 = seededBytes(size, `delta-v1:${size}`);
  const v2 = deltaV2(v1);
  const v1Path = join(dir, 'v1.img');
  const v2Path = join(www, 'v2.img');
  await writeFile(v1Path, v1);
  await writeFile(v2Path, v2);
  const indexPath = join(www, 'v2.caibx');
  const storeDir = join(www, 'v2.castr');
  const { min, avg, max } = TEST_PARAMS;
  const r = spawnSync(
    'casync',
    [`--chunk-size=${min}:${avg}:${max}`, `--store=${storeDir}`, 'make', indexPath, v2Path],
    { stdio: 'pipe' },
  );
  if (r.status !== 0) throw new Error(`casync make failed: ${r.stderr}`);
  return {
    dir,
    www,
    v1Path,
    v2Path,
    v1,
    v2,
    indexPath,
    index: await readIndexFile(indexPath),
    storeDir,
  };
}

/**
 * Registers before/after hooks for a test file: a delta fixture of `size` bytes served by a test origin, handed to
 * `onReady` (null when casync is not installed: the file's tests skip), removed after the file.
 */
export function withDeltaFixture(
  size: number,
  onReady: (s: { fx: DeltaFixture; origin: Origin } | null) => void,
): void {
  let fx: DeltaFixture | undefined;
  let origin: Origin | undefined;
  before(async (t) => {
    if (!requireCasync(t as unknown as { skip: (m: string) => void })) return onReady(null);
    fx = await makeDeltaFixture(t, size);
    origin = await startOrigin({ root: fx.www });
    onReady({ fx, origin });
  });
  after(async () => {
    await origin?.close();
  });
}
