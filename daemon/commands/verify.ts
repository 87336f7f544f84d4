// `deltad verify INDEX [FILE] [--store S]`: check a file and/or a chunk store
// against an index. Exit 0 when everything matches, 1 otherwise.
import { verifyFile, verifyStore } from '../../lib/tools/verify.js';
import { openStore } from '../../lib/store/open-store.js';
import { defaultThreads } from '../../lib/store/chunk-encoder.js';
import { UsageError } from '../../lib/errors.js';
import type { Command } from '../command.js';
import { readIndexArg } from '../delta-args.js';
import { flag, parseCount, str, seekableFile } from '../cli-args.js';
import { createProgress } from '../progress.js';

/** Problems listed in text output before "... and N more". */
const SHOW = 20;

export const command: Command = {
  name: 'verify',
  usage: `Usage: deltad verify [options] INDEX [FILE]

With FILE: hashes every chunk of FILE as INDEX (.caibx path, URL or - for stdin) lays it
out and reports chunks that differ and a size mismatch.
With --store: fetches every distinct chunk of INDEX from the store (directory
or http(s) URL), decodes and verifies it, and reports missing and corrupt ones.
Exit status 0 when everything matches, 1 when something does not.

Options:
  --store DIR|URL     chunk store to check
  --concurrency N     store requests in flight (default 8)
  --threads N         hashing threads for FILE (default: cores, at most 4)
  --json              print the results as JSON

Examples:
  deltad verify os_2.raw.caibx os_2.raw
  deltad verify --store https://example.org/os/default.castr os_2.raw.caibx`,
  options: {
    store: { type: 'string' },
    concurrency: { type: 'string' },
    threads: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run(ctx) {
    const [indexSpec, file, ...extra] = ctx.positionals;
    const storeSpec = str(ctx, 'store');
    if (!indexSpec || extra.length > 0) throw new UsageError('expected INDEX [FILE]');
    if (!file && !storeSpec) throw new UsageError('nothing to verify: give FILE and/or --store');
    if (file) seekableFile('FILE', file);
    const index = await readIndexArg(indexSpec);
    const json = flag(ctx, 'json');
    const lines: string[] = [];
    const out: Record<string, unknown> = {};
    let ok = true;

    if (file) {
      const progress = createProgress({
        label: 'verify file',
        total: index.size,
        interactive: ctx.interactive,
        stream: ctx.stderr,
      });
      const r = await verifyFile(index, file, {
        threads: parseCount(str(ctx, 'threads'), '--threads', defaultThreads(), 0, 64),
        onProgress: (done) => progress.update(done),
      });
      progress.finish();
      out.file = r;
      ok &&= r.ok;
      lines.push(
        `${file}: ${r.ok ? 'OK' : 'MISMATCH'}, ${r.checked} of ${index.count} chunks hashed, ${r.bad.length} bad`,
      );
      if (r.fileSize !== r.indexSize) lines.push(`  file is ${r.fileSize} bytes, the index describes ${r.indexSize}`);
      for (const b of r.bad.slice(0, SHOW))
        lines.push(`  chunk #${b.chunk} at offset ${b.offset} (${b.id}): ${b.reason}`);
      if (r.bad.length > SHOW) lines.push(`  ... and ${r.bad.length - SHOW} more`);
    }

    if (storeSpec) {
      const store = openStore(storeSpec, { digest: index.digest, maxChunkSize: index.params.max });
      try {
        const progress = createProgress({
          label: 'verify store',
          interactive: ctx.interactive,
          stream: ctx.stderr,
          unit: 'count',
        });
        const r = await verifyStore(index, store, {
          concurrency: parseCount(str(ctx, 'concurrency'), '--concurrency', 8),
          onProgress: (done, total) => {
            progress.setTotal(total);
            progress.update(done);
          },
        });
        progress.finish();
        out.store = { location: store.location, ...r };
        ok &&= r.ok;
        lines.push(
          `${store.location}: ${r.ok ? 'OK' : 'INCOMPLETE'}, ${r.checked} distinct chunks, ${r.missing.length} missing, ${r.corrupt.length} corrupt`,
        );
        const problems = [
          ...r.missing.map((p) => ({ ...p, kind: 'missing' })),
          ...r.corrupt.map((p) => ({ ...p, kind: 'corrupt' })),
        ];
        for (const p of problems.slice(0, SHOW))
          lines.push(`  ${p.kind} chunk #${p.chunk} (${p.id})${p.kind === 'corrupt' ? `: ${p.reason}` : ''}`);
        if (problems.length > SHOW) lines.push(`  ... and ${problems.length - SHOW} more`);
      } finally {
        await store.close?.();
      }
    }

    ctx.stdout.write(json ? JSON.stringify({ ok, ...out }, null, 2) + '\n' : lines.join('\n') + '\n');
    return ok ? 0 : 1;
  },
};
