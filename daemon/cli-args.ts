// Shared parsing of CLI option values: chunk sizes, digests, counts, sizes.
import { UsageError } from '../lib/errors.js';
export { parseSize } from '../lib/util/size.js';
import { parseDigestName, type DigestName } from '../lib/format/digest.js';
import type { CommandContext } from './command.js';

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
  if (!Number.isInteger(v) || v < min || v > max)
    throw new UsageError(`${what}: "${s}" must be a whole number from ${min} to ${max}`);
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
    throw new UsageError(
      `expected ${names.length} argument${names.length === 1 ? '' : 's'} (${names.join(' ')}), got ${ctx.positionals.length}`,
    );
  }
  return ctx.positionals;
}

/** A FILE argument that is read at random offsets (and in parallel): stdin ('-') cannot be. */
export function seekableFile(name: string, path: string): string {
  if (path === '-') throw new UsageError(`${name} must be a file: '-' (stdin) cannot be read at random offsets`);
  return path;
}

/** Writes bytes to a stream (stdout) and waits until they are handed to the OS. */
export function writeAll(stream: NodeJS.WritableStream, data: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(data, (err) => (err ? reject(err) : resolve()));
  });
}

/** Reads all of stdin (an index given as '-'). */
export async function readStdin(): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of process.stdin) parts.push(part as Buffer);
  return Buffer.concat(parts);
}
