// `deltad pack IMAGE`: the publisher side of the block path. Writes the block
// pack, its dictionary and the block index next to where the release is hosted.
import { dirname } from 'node:path';
import { packImage, type Trainer } from '../../lib/blockpack/index.js';
import { UsageError } from '../../lib/errors.js';
import type { Command } from '../command.js';
import { flag, list, parseCount, parseSize, positionals, str } from '../cli-args.js';
import { createProgress, formatBytes } from '../progress.js';

const TRAINERS: Trainer[] = ['cover', 'zstd', 'none'];

export const command: Command = {
  name: 'pack',
  usage: `Usage: deltad pack [-o DIR] [--block-size N] [--level N] [--dict-size N]
                   [--trainer cover|zstd|none] [--previous OLD_IMAGE]... [--group-blocks N]
                   [--threads N] [--json] IMAGE

Writes IMAGE.bpk (every distinct non-zero block as an independent zstd frame),
IMAGE.bpdict (the zstd dictionary the frames use, trained on IMAGE) and
IMAGE.bpidx (per block: its hash and frame; tied to IMAGE's SHA-256) into DIR.
Host them next to IMAGE: clients that find IMAGE.bpidx fetch only the frames
of the blocks they do not already have (docs/BLOCKPACK.md).

Options:
  -o, --output DIR      where to write (default: beside IMAGE)
  --block-size N        block size, a power of two (default 4096: erofs/ext4 blocks)
  --level N             zstd level of the frames, 1..22 (default 19)
  --dict-size N         dictionary size (default 256K)
  --trainer T           cover (built in, default), zstd (the zstd CLI's --train,
                        smaller packs when installed) or none (no dictionary)
  --previous OLD_IMAGE  an earlier release: runs of blocks it does not have are
                        compressed together (smaller downloads from that release)
  --group-blocks N      largest such run in one frame, 1..256 (default 64)
  --threads N           compression threads (default: cores, at most 4)
  --json                print the result as JSON

Example:
  deltad pack --trainer zstd --previous os_1.img -o /srv/www os_2.img`,
  options: {
    output: { type: 'string', short: 'o' },
    'block-size': { type: 'string' },
    level: { type: 'string' },
    'dict-size': { type: 'string' },
    trainer: { type: 'string' },
    previous: { type: 'string', multiple: true },
    'group-blocks': { type: 'string' },
    threads: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run(ctx) {
    const [image] = positionals(ctx, ['IMAGE']);
    const trainer = (str(ctx, 'trainer') ?? 'cover') as Trainer;
    if (!TRAINERS.includes(trainer))
      throw new UsageError(`--trainer: "${trainer}" must be one of ${TRAINERS.join(', ')}`);
    const bs = str(ctx, 'block-size');
    const ds = str(ctx, 'dict-size');
    const bar = createProgress({ label: 'pack', interactive: ctx.interactive, stream: ctx.stderr });
    try {
      const r = await packImage(image, {
        outDir: str(ctx, 'output') ?? dirname(image),
        blockSize: bs === undefined ? undefined : parseSize(bs, '--block-size'),
        level: parseCount(str(ctx, 'level'), '--level', 19, 1, 22),
        dictSize: ds === undefined ? undefined : parseSize(ds, '--dict-size'),
        trainer,
        previous: list(ctx, 'previous'),
        groupBlocks: parseCount(str(ctx, 'group-blocks'), '--group-blocks', 64, 1, 256),
        threads: str(ctx, 'threads') === undefined ? undefined : parseCount(str(ctx, 'threads'), '--threads', 1, 0, 64),
        onProgress: (phase, done, total) => {
          bar.setTotal(total);
          bar.update(done, phase);
        },
      });
      bar.finish();
      if (flag(ctx, 'json')) {
        ctx.stdout.write(JSON.stringify(r, null, 2) + '\n');
        return 0;
      }
      const mbps = r.imageSize / 1e6 / (r.wallMs / 1000);
      ctx.stdout.write(
        [
          `${image}: ${formatBytes(r.imageSize)}, ${r.blocks} blocks (${r.zeroBlocks} zero, ${r.distinctBlocks} distinct) in ${r.frames} frames`,
          `  ${r.packPath}: ${formatBytes(r.packSize)}`,
          `  ${r.dictPath}: ${formatBytes(r.dictSize)}`,
          `  ${r.indexPath}: ${formatBytes(r.indexSize)}`,
          `  ${(r.wallMs / 1000).toFixed(1)} s (${mbps.toFixed(1)} MB/s)`,
        ].join('\n') + '\n',
      );
      return 0;
    } catch (err) {
      bar.finish();
      throw err;
    }
  },
};
