// Shared parsing of CLI option values: chunk sizes, digests, counts, sizes.
import { UsageError } from '../lib/errors.js';
import { CHUNK_SIZE_LIMIT_MAX, type ChunkParams } from '../lib/caibx.js';
import { parseDigestName, type DigestName } from '../lib/digest.js';
import type { CommandContext } from './command.js';

export const DEFAULT_CHUNK_PARAMS: ChunkParams = { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };

/** "65536", "64K", "1M" (powers of 1024, like casync). */
export function parseSize(s: string, what: string): number {
  const m = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(s.trim());
  if (!m) throw new UsageError(`${what}: "${s}" is not a size (examples: 65536, 64K, 1M)`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const v = Number(m[1]) * mult;
  if (!Number.isSafeInteger(v)) throw new UsageError(`${what}: "${s}" is too large`);
  return v;
}

/**
 * casync's --chunk-size: "AVG" (min = AVG/4, max = AVG*4) or "MIN:AVG:MAX".
 * Requires 1 <= min <= avg <= max <= 128 MiB.
 */
export function parseChunkSize(s: string): ChunkParams {
  const parts = s.split(':');
  let p: ChunkParams;
  if (parts.length === 1) {
    const avg = parseSize(parts[0], '--chunk-size');
    p = { min: Math.max(1, Math.floor(avg / 4)), avg, max: Math.min(CHUNK_SIZE_LIMIT_MAX, avg * 4) };
  } else if (parts.length === 3) {
    const [min, avg, max] = parts.map((x) => parseSize(x, '--chunk-size'));
    p = { min, avg, max };
  } else {
    throw new UsageError(`--chunk-size: "${s}" must be AVG or MIN:AVG:MAX`);
  }
  if (p.min < 1) throw new UsageError(`--chunk-size: min must be at least 1 (got ${p.min})`);
  if (p.min > p.avg) throw new UsageError(`--chunk-size: min ${p.min} is larger than avg ${p.avg}`);
  if (p.avg > p.max) throw new UsageError(`--chunk-size: avg ${p.avg} is larger than max ${p.max}`);
  if (p.max > CHUNK_SIZE_LIMIT_MAX) throw new UsageError(`--chunk-size: max ${p.max} exceeds the 128 MiB limit`);
  return p;
}

export function parseDigest(s: string | undefined): DigestName {
  if (s === undefined) return 'sha512-256';
  try {
    return parseDigestName(s);
  } catch (err) {
    throw new UsageError(`--digest: ${(err as Error).message}`);
  }
}

export function parseCount(s: string | undefined, what: string, fallback: number, min = 1, max = 1024): number {
  if (s === undefined) return fallback;
  const v = Number(s);
  if (!Number.isInteger(v) || v < min || v > max) throw new UsageError(`${what}: "${s}" must be a whole number from ${min} to ${max}`);
  return v;
}

export function str(ctx: CommandContext, name: string): string | undefined {
  const v = ctx.values[name];
  return typeof v === 'string' ? v : undefined;
}

export function flag(ctx: CommandContext, name: string): boolean {
  return ctx.values[name] === true;
}

export function list(ctx: CommandContext, name: string): string[] {
  const v = ctx.values[name];
  return Array.isArray(v) ? v : typeof v === 'string' ? [v] : [];
}

/** Exactly n positionals, named for the error message. */
export function positionals(ctx: CommandContext, names: string[]): string[] {
  if (ctx.positionals.length !== names.length) {
    throw new UsageError(`expected ${names.length} argument${names.length === 1 ? '' : 's'} (${names.join(' ')}), got ${ctx.positionals.length}`);
  }
  return ctx.positionals;
}
