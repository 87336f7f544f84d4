// `deltad make INDEX FILE`: chunk a file into a casync index (optionally filling
// a chunk store), byte-identical to `casync make` with the same parameters.
import { indexFile } from '../../lib/chunking/indexer.js';
import { serializeIndex } from '../../lib/format/caibx.js';
import { DEFAULT_CHUNK_PARAMS, parseChunkSize } from '../../lib/chunking/chunker.js';
import { chopFile } from '../../lib/tools/chop.js';
import { defaultThreads } from '../../lib/store/chunk-encoder.js';
import { openWritableStore } from '../../lib/store/open-store.js';
import type { Command } from '../command.js';
import { flag, parseCount, parseDigest, positionals, str, writeAll, seekableFile } from '../cli-args.js';
import { createProgress, formatBytes } from '../progress.js';
import { writeFileAtomic } from '../../lib/util/fs-io.js';

export const command: Command = {
  name: 'make',
  usage: `Usage: deltad make [options] INDEX FILE

Chunks FILE with casync's content-defined chunker and writes the index INDEX
(.caibx; '-' writes it to stdout), byte-identical to 'casync make' with the same
chunk sizes and digest. With --store, also writes every chunk to the store (like
'casync make --store'); the index is written only once the store has them all.
Name the index after the image (os_2.raw.caibx for os_2.raw): the sidecar looks
for that name.

Options:
  --chunk-size MIN:AVG:MAX  chunk sizes, or AVG alone (min = AVG/4, max = AVG*4);
                            suffixes K, M, G (B for bytes); default 16K:64K:256K.
                            A number without a unit is bytes, as in casync; one
                            below 1024 is refused (desync's -m 16:64:256 means
                            KiB: write 16K:64K:256K)
  --digest NAME             sha512-256 (default) or sha256
  --desync                  desync's boundary rule (first cut test at min+1, no clamp)
  --store DIR               also write the chunks to this casync store (zstd .cacnk)
  --threads N               worker threads (default: by file size and cores)
  --json                    print a JSON summary

Examples:
  deltad make os_2.raw.caibx os_2.raw
  deltad make --chunk-size 1M:2M:4M --store default.castr os_2.raw.caibx os_2.raw`,
  options: {
    'chunk-size': { type: 'string' },
    digest: { type: 'string' },
    desync: { type: 'boolean' },
    store: { type: 'string' },
    threads: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run(ctx) {
    const [indexPath, fileArg] = positionals(ctx, ['INDEX', 'FILE']);
    const file = seekableFile('FILE', fileArg);
    const variant = flag(ctx, 'desync') ? 'desync' : 'casync';
    const sizeText = str(ctx, 'chunk-size');
    const params = sizeText ? parseChunkSize(sizeText, variant) : DEFAULT_CHUNK_PARAMS;
    const digest = parseDigest(str(ctx, 'digest'));
    const threadsText = str(ctx, 'threads');
    const threads = threadsText === undefined ? undefined : parseCount(threadsText, '--threads', 1, 1, 64);
    const started = Date.now();

    const progress = createProgress({ label: 'index', interactive: ctx.interactive, stream: ctx.stderr });
    const index = await indexFile(file, {
      params,
      digest,
      variant,
      threads,
      onProgress: (done, total) => {
        progress.setTotal(total);
        progress.update(done);
      },
    });
    progress.finish();
    const indexSeconds = (Date.now() - started) / 1000;

    // The store first: an index is written only when every chunk it lists is stored.
    let chop;
    const storeDir = str(ctx, 'store');
    if (storeDir) {
      const store = openWritableStore(storeDir, { digest, maxChunkSize: params.max });
      const bar = createProgress({
        label: 'store',
        total: index.size,
        interactive: ctx.interactive,
        stream: ctx.stderr,
      });
      try {
        chop = await chopFile(index, file, store, {
          threads: defaultThreads(),
          onProgress: (done) => bar.update(done),
        });
      } finally {
        bar.finish();
      }
    }
    const toStdout = indexPath === '-';
    if (toStdout) await writeAll(ctx.stdout, serializeIndex(index));
    // Through a temp file beside the target: a failed run never leaves half an index.
    else await writeFileAtomic(indexPath, serializeIndex(index));
    // With the index on stdout, the summary goes to stderr.
    const out = toStdout ? ctx.stderr : ctx.stdout;
    const seconds = (Date.now() - started) / 1000;
    if (flag(ctx, 'json')) {
      out.write(
        JSON.stringify(
          {
            index: indexPath,
            size: index.size,
            chunks: index.count,
            params,
            digest,
            variant,
            indexSeconds,
            seconds,
            store: chop,
          },
          null,
          2,
        ) + '\n',
      );
    } else {
      const rate = indexSeconds > 0 ? ` (${formatBytes(index.size / indexSeconds)}/s)` : '';
      out.write(
        `${toStdout ? 'index' : indexPath}: ${index.count} chunks, ${formatBytes(index.size)} indexed in ${indexSeconds.toFixed(2)} s${rate}\n`,
      );
      if (chop)
        out.write(
          `${storeDir}: ${chop.written} chunks written (${formatBytes(chop.bytesStored)}), ${chop.existing} already present\n`,
        );
    }
    return 0;
  },
};
