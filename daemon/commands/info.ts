// `deltad info INDEX`: what an index holds (flags, chunker, chunk statistics).
import type { ChunkIndex } from '../../lib/format/caibx.js';
import { toHex } from '../../lib/format/digest.js';
import type { Command } from '../command.js';
import { flag, positionals, str } from '../cli-args.js';
import { parseTimeout, readIndexArg } from '../delta-args.js';
import { formatBytes } from '../progress.js';

export function indexSummary(idx: ChunkIndex) {
  const unique = new Set<string>();
  let smallest = Infinity;
  let largest = 0;
  let uniqueBytes = 0;
  for (let i = 0; i < idx.count; i++) {
    const size = idx.chunkSize(i);
    smallest = Math.min(smallest, size);
    largest = Math.max(largest, size);
    const id = toHex(idx.id(i));
    if (!unique.has(id)) {
      unique.add(id);
      uniqueBytes += size;
    }
  }
  return {
    featureFlags: '0x' + idx.featureFlags.toString(16).padStart(16, '0'),
    kind: idx.isArchive ? 'archive (.caidx)' : 'blob (.caibx)',
    digest: idx.digest,
    chunkSizeMin: idx.params.min,
    chunkSizeAvg: idx.params.avg,
    chunkSizeMax: idx.params.max,
    size: idx.size,
    chunks: idx.count,
    uniqueChunks: unique.size,
    uniqueBytes,
    smallestChunk: idx.count ? smallest : 0,
    largestChunk: largest,
    averageChunk: idx.count ? Math.round(idx.size / idx.count) : 0,
  };
}

export const command: Command = {
  name: 'info',
  usage: `Usage: deltad info [--json] [--timeout SECONDS] INDEX

Prints the index's feature flags, digest, chunker parameters, blob size and
chunk statistics (count, unique chunks, sizes). INDEX is a file, an http(s)
URL, or '-' for stdin.

Options:
  --json               print one JSON object instead of text
  --timeout SECONDS    longest wait for the server (INDEX a URL; default 30)`,
  options: { json: { type: 'boolean' }, timeout: { type: 'string' } },
  async run(ctx) {
    const [path] = positionals(ctx, ['INDEX']);
    const s = indexSummary(
      await readIndexArg(path, { allowArchive: true, timeoutMs: parseTimeout(str(ctx, 'timeout')) }),
    );
    if (flag(ctx, 'json')) {
      ctx.stdout.write(JSON.stringify(s, null, 2) + '\n');
      return 0;
    }
    ctx.stdout.write(
      [
        `Index:          ${path} (${s.kind})`,
        `Feature flags:  ${s.featureFlags}`,
        `Digest:         ${s.digest}`,
        `Chunk sizes:    min ${s.chunkSizeMin}, avg ${s.chunkSizeAvg}, max ${s.chunkSizeMax}`,
        `Blob size:      ${s.size} bytes (${formatBytes(s.size)})`,
        `Chunks:         ${s.chunks} (${s.uniqueChunks} unique, ${formatBytes(s.uniqueBytes)})`,
        `Chunk size:     smallest ${s.smallestChunk}, average ${s.averageChunk}, largest ${s.largestChunk}`,
      ].join('\n') + '\n',
    );
    return 0;
  },
};
