// `deltad publish IMAGE`: everything a release needs beside its image for delta
// clients, in one command (docs/PUBLISHING.md): the chunk index under the name
// clients try first, optionally a casync chunk store, and the block pack; then
// the SHA256SUMS line to add, and what must stay out of SHA256SUMS.
import { createReadStream } from 'node:fs';
import { createHash } from 'node:crypto';
import { basename, dirname, extname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { packImage, type PackResult } from '../../lib/blockpack/index.js';
import { DEFAULT_CHUNK_PARAMS, parseChunkSize } from '../../lib/chunking/chunker.js';
import { indexFile } from '../../lib/chunking/indexer.js';
import { serializeIndex } from '../../lib/format/caibx.js';
import { defaultThreads } from '../../lib/store/chunk-encoder.js';
import { openWritableStore } from '../../lib/store/open-store.js';
import { chopFile } from '../../lib/tools/chop.js';
import { writeFileAtomic } from '../../lib/util/fs-io.js';
import type { Command } from '../command.js';
import { flag, list, positionals, seekableFile, str } from '../cli-args.js';
import { createProgress, formatBytes } from '../progress.js';

/** The index name deltad (and KDE's clients) try first: the image name without its extension, plus .caibx. */
export function primaryIndexName(imageName: string): string {
  const ext = extname(imageName);
  return `${ext ? imageName.slice(0, -ext.length) : imageName}.caibx`;
}

export const command: Command = {
  name: 'publish',
  usage: `Usage: deltad publish [-o DIR] [--chunk-size MIN:AVG:MAX] [--store DIR] [--no-pack]
                      [--previous OLD_IMAGE]... [--json] IMAGE

Writes what delta clients look for beside IMAGE (into DIR, default IMAGE's
directory), then prints the line to add to SHA256SUMS:
  <name>.caibx            the chunk index (IMAGE's name without its extension;
                          e.g. os_2.caibx for os_2.raw), default chunk sizes
  IMAGE.bpk, .bpdict, .bpidx
                          the block pack (smallest downloads; skip with --no-pack)
  with --store DIR        every chunk in a casync store (for casync/desync clients
                          and the fleet proxy), written before the index
List only the image in SHA256SUMS, never these files (systemd #38605). Serve
the image uncompressed: a delta needs byte ranges of it. docs/PUBLISHING.md
explains the choices.

Options:
  -o, --output DIR          where to write (default: beside IMAGE)
  --chunk-size MIN:AVG:MAX  chunk sizes (default 16K:64K:256K; see docs/PUBLISHING.md)
  --store DIR               also fill this casync chunk store
  --no-pack                 no block pack
  --previous OLD_IMAGE      an earlier release the pack is tuned for (repeatable)
  --json                    print a JSON summary

Example:
  deltad publish --previous /srv/www/os_1.raw -o /srv/www os_2.raw`,
  options: {
    output: { type: 'string', short: 'o' },
    'chunk-size': { type: 'string' },
    store: { type: 'string' },
    'no-pack': { type: 'boolean' },
    previous: { type: 'string', multiple: true },
    json: { type: 'boolean' },
  },
  async run(ctx) {
    const [imageArg] = positionals(ctx, ['IMAGE']);
    const image = seekableFile('IMAGE', imageArg);
    const outDir = str(ctx, 'output') ?? dirname(image);
    const sizeText = str(ctx, 'chunk-size');
    const params = sizeText ? parseChunkSize(sizeText) : DEFAULT_CHUNK_PARAMS;
    const name = basename(image);
    const started = Date.now();

    const bar = createProgress({ label: 'index', interactive: ctx.interactive, stream: ctx.stderr });
    const index = await indexFile(image, {
      params,
      digest: 'sha512-256',
      onProgress: (done, total) => {
        bar.setTotal(total);
        bar.update(done);
      },
    });
    bar.finish();
    const storeDir = str(ctx, 'store');
    if (storeDir) {
      const store = openWritableStore(storeDir, { maxChunkSize: params.max });
      const storeBar = createProgress({
        label: 'store',
        total: index.size,
        interactive: ctx.interactive,
        stream: ctx.stderr,
      });
      try {
        await chopFile(index, image, store, { threads: defaultThreads(), onProgress: (done) => storeBar.update(done) });
      } finally {
        storeBar.finish();
      }
    }
    // The index only once its store (if any) holds every chunk it lists.
    const indexPath = join(outDir, primaryIndexName(name));
    await writeFileAtomic(indexPath, serializeIndex(index));

    let pack: PackResult | undefined;
    if (!flag(ctx, 'no-pack')) {
      const packBar = createProgress({ label: 'pack', interactive: ctx.interactive, stream: ctx.stderr });
      pack = await packImage(image, {
        outDir,
        previous: list(ctx, 'previous'),
        onProgress: (phase, done, total) => {
          packBar.setTotal(total);
          packBar.update(done, phase);
        },
      });
      packBar.finish();
    }
    const sha256 = pack?.imageSha256 ?? (await sha256Of(image));
    const sumsLine = `${sha256}  ${name}`;
    const seconds = (Date.now() - started) / 1000;
    if (flag(ctx, 'json')) {
      const summary = {
        image,
        size: index.size,
        sha256,
        sha256sumsLine: sumsLine,
        index: indexPath,
        chunks: index.count,
        params,
        store: storeDir ?? null,
        pack: pack
          ? { index: pack.indexPath, pack: pack.packPath, dict: pack.dictPath, packSize: pack.packSize }
          : null,
        seconds,
      };
      ctx.stdout.write(JSON.stringify(summary, null, 2) + '\n');
      return 0;
    }
    const lines = [`${indexPath}: ${index.count} chunks over ${formatBytes(index.size)}`];
    if (storeDir) lines.push(`${storeDir}: every chunk stored`);
    if (pack)
      lines.push(
        `${pack.packPath}: ${formatBytes(pack.packSize)} (+ ${basename(pack.dictPath)}, ${basename(pack.indexPath)})`,
      );
    lines.push(
      `done in ${seconds.toFixed(1)} s. Add this line to SHA256SUMS (and list none of the files above there):`,
      sumsLine,
    );
    ctx.stdout.write(lines.join('\n') + '\n');
    return 0;
  },
};

async function sha256Of(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}
