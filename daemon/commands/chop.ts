// `deltad chop --store DIR INDEX FILE`: fill a casync chunk store from a file
// and its index, so casync, desync and deltad clients can fetch its chunks.
import { chopFile } from '../../lib/tools/chop.js';
import { defaultThreads } from '../../lib/store/chunk-encoder.js';
import { openWritableStore } from '../../lib/store/open-store.js';
import { UsageError } from '../../lib/errors.js';
import type { Command } from '../command.js';
import { readIndexArg } from '../delta-args.js';
import { flag, parseCount, positionals, str, seekableFile } from '../cli-args.js';
import { createProgress, formatBytes } from '../progress.js';

export const command: Command = {
  name: 'chop',
  usage: `Usage: deltad chop --store DIR [options] INDEX FILE

Reads FILE as INDEX (.caibx path, URL or - for stdin) describes it, checks every chunk
against its ID, and writes the chunks the store lacks as
DIR/<4 hex>/<id>.cacnk (zstd, as casync make does). Fails, naming the chunk,
if FILE does not match INDEX.

Options:
  --store DIR       chunk store directory (created when missing)
  --uncompressed    write raw chunk files without .cacnk (desync "uncompressed")
  --level N         zstd level, 1..19 (default 3, casync's)
  --threads N       hashing/compression threads (default: cores, at most 4)
  --json            print the result as JSON

Example:
  deltad chop --store /srv/os/default.castr os_2.raw.caibx os_2.raw`,
  options: {
    store: { type: 'string' },
    uncompressed: { type: 'boolean' },
    level: { type: 'string' },
    threads: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run(ctx) {
    const [indexSpec, fileArg] = positionals(ctx, ['INDEX', 'FILE']);
    const file = seekableFile('FILE', fileArg);
    const storeDir = str(ctx, 'store');
    if (!storeDir) throw new UsageError('--store DIR is required');
    const index = await readIndexArg(indexSpec);
    const store = openWritableStore(storeDir, {
      digest: index.digest,
      maxChunkSize: index.params.max,
      uncompressed: flag(ctx, 'uncompressed'),
      level: parseCount(str(ctx, 'level'), '--level', 3, 1, 19),
    });
    const progress = createProgress({
      label: 'chop',
      total: index.size,
      interactive: ctx.interactive,
      stream: ctx.stderr,
    });
    const started = Date.now();
    const r = await chopFile(index, file, store, {
      threads: parseCount(str(ctx, 'threads'), '--threads', defaultThreads(), 0, 64),
      onProgress: (done) => progress.update(done),
    });
    const seconds = (Date.now() - started) / 1000;
    progress.finish();
    if (flag(ctx, 'json')) {
      ctx.stdout.write(JSON.stringify({ ...r, store: store.location, seconds }, null, 2) + '\n');
    } else {
      ctx.stdout.write(
        `${r.chunks} chunks (${r.unique} unique): ${r.written} written (${formatBytes(r.bytesStored)}), ${r.existing} already in ${store.location}; ` +
          `${formatBytes(r.bytesIn)} in ${seconds.toFixed(1)} s\n`,
      );
    }
    return 0;
  },
};
