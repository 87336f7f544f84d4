// Locates the shared reference folder (casync vectors, corpus scripts).
// CI clones main with shared/ beside it; DELTAD_SHARED overrides.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root (works from both test/ and dist/test/). */
export const REPO_ROOT = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('repository root not found');
    dir = up;
  }
  return dir;
})();

export const SHARED_DIR = resolve(process.env.DELTAD_SHARED ?? join(REPO_ROOT, '..', 'shared'));
export const CASYNC_FORMAT_DIR = join(SHARED_DIR, 'casync-format');

export interface VectorChunk {
  offset: number;
  size: number;
  id: string;
}

export interface Vector {
  vector: string;
  input: string;
  input_size: number;
  input_sha256: string;
  caibx: string;
  feature_flags: string;
  digest: 'sha512-256' | 'sha256';
  chunk_size_min: number;
  chunk_size_avg: number;
  chunk_size_max: number;
  chunk_count: number;
  chunks: VectorChunk[];
  kept_chunk_files: { index: number; offset: number; size: number; id: string; file: string; file_size: number }[];
}

/** All casync vectors (vectors/*.json listed in manifest.json). */
export function loadVectors(): Vector[] {
  const dir = join(CASYNC_FORMAT_DIR, 'vectors');
  const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  const entries: { vector: string }[] = Array.isArray(manifest) ? manifest : manifest.vectors;
  return entries.map((e) => JSON.parse(readFileSync(join(dir, `${e.vector}.json`), 'utf8')) as Vector);
}

export function caibxPath(v: Vector): string {
  return join(CASYNC_FORMAT_DIR, 'caibx', `${v.vector}.caibx`);
}

/** The generated vector inputs (gen_inputs.mjs FILES: name → () => Buffer). */
export async function vectorInputs(): Promise<Record<string, () => Buffer>> {
  const mod = await import(join(CASYNC_FORMAT_DIR, 'gen_inputs.mjs'));
  return mod.FILES as Record<string, () => Buffer>;
}
