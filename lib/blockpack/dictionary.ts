// Dictionary training for the block pack. node:zlib has no zstd trainer, so this is
// a small COVER-style one: count how often each 8-byte string (d-mer) occurs
// across sample blocks, then, epoch by epoch over the samples, keep the
// segment whose not-yet-covered d-mers are most frequent. zstd accepts the
// result as a raw-content dictionary. When the zstd CLI is installed,
// `zstd --train` (a formatted dictionary with entropy tables) can be used
// instead; docs/BLOCKPACK.md and bench/RESULTS.md compare the two.
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeltadError } from '../errors.js';

const DMER = 8;
const TABLE_BITS = 22;

export interface TrainOptions {
  /** Dictionary size in bytes. */
  size: number;
  /** Segment length (default 2048). */
  segment?: number;
}

/** Hash of the 8 bytes at i into TABLE_BITS bits. */
function dmerHash(s: Buffer, i: number): number {
  const a = s.readUInt32LE(i);
  const b = s.readUInt32LE(i + 4);
  return (Math.imul(a, 0x9e3779b1) ^ Math.imul(b ^ (a >>> 15), 0x85ebca77)) >>> (32 - TABLE_BITS);
}

/**
 * Trains a raw-content dictionary from `samples` (concatenated sample blocks).
 * Deterministic: the same samples give the same dictionary.
 */
export function trainCoverDictionary(samples: Buffer, opts: TrainOptions): Buffer {
  const k = opts.segment ?? 2048;
  const positions = samples.length - DMER + 1;
  if (positions <= k) return Buffer.from(samples.subarray(0, Math.min(samples.length, opts.size)));
  const freq = new Uint32Array(1 << TABLE_BITS);
  for (let i = 0; i < positions; i++) freq[dmerHash(samples, i)]++;
  // A d-mer seen once is worthless to a dictionary.
  for (let h = 0; h < freq.length; h++) if (freq[h] < 2) freq[h] = 0;

  const epochs = Math.max(1, Math.floor(opts.size / k));
  const epochLen = Math.max(k, Math.floor(positions / epochs));
  const inWindow = new Uint16Array(1 << TABLE_BITS);
  const dict = Buffer.alloc(opts.size);
  let fill = opts.size; // segments are placed from the end: the last ones are the cheapest to reference
  for (let e = 0; e < epochs && fill > 0; e++) {
    const from = e * epochLen;
    const to = Math.min(positions, from + epochLen);
    if (to - from < k) break;
    let score = 0;
    let best = -1;
    let bestScore = 0;
    for (let i = from; i < to; i++) {
      const h = dmerHash(samples, i);
      if (inWindow[h]++ === 0) score += freq[h];
      if (i - from >= k - DMER + 1) {
        const out = dmerHash(samples, i - (k - DMER + 1));
        if (--inWindow[out] === 0) score -= freq[out];
      }
      if (i - from >= k - DMER && score > bestScore) {
        bestScore = score;
        best = i - (k - DMER);
      }
    }
    // Clear the window counters touched in this epoch.
    for (let i = Math.max(from, to - (k - DMER + 1)); i < to; i++) inWindow[dmerHash(samples, i)] = 0;
    if (best < 0) continue;
    for (let i = best; i <= best + k - DMER; i++) freq[dmerHash(samples, i)] = 0;
    const n = Math.min(k, fill);
    samples.copy(dict, fill - n, best, best + n);
    fill -= n;
  }
  return dict.subarray(fill);
}

/** True when the zstd CLI can be run. */
export async function zstdCliAvailable(): Promise<boolean> {
  return new Promise((resolve) => {
    const p = spawn('zstd', ['--version'], { stdio: 'ignore' });
    p.on('error', () => resolve(false));
    p.on('close', (code) => resolve(code === 0));
  });
}

/** Trains with `zstd --train` on the samples cut into blocks of `blockSize`. */
export async function trainZstdCliDictionary(samples: Buffer, blockSize: number, opts: TrainOptions): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), 'deltad-train-'));
  try {
    const input = join(dir, 'samples');
    const output = join(dir, 'dict');
    await writeFile(input, samples);
    const stderr: Buffer[] = [];
    const code = await new Promise<number>((resolve, reject) => {
      const p = spawn('zstd', ['-q', '--train', `-B${blockSize}`, `--maxdict=${opts.size}`, '-o', output, input], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      p.stderr.on('data', (b: Buffer) => stderr.push(b));
      p.on('error', reject);
      p.on('close', (c) => resolve(c ?? 1));
    });
    if (code !== 0)
      throw new DeltadError(
        'ERR_DELTAD_WORKER',
        `zstd --train failed (exit ${code}): ${Buffer.concat(stderr).toString().trim().slice(0, 300)}`,
      );
    return await readFile(output);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
