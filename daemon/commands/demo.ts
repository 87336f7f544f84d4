// `deltad demo`: the whole product on a fresh machine, with nothing to set up.
// Makes v1 and v2 of a small image, publishes them (with .caibx indexes and
// SHA256SUMS) from a local origin on 127.0.0.1, starts the sysupdate sidecar
// seeded with v1, downloads v2 through it the way systemd-sysupdate does
// (systemd-pull when installed, else deltad's HTTP client), checks the
// SHA-256 and reports what was reused, what was downloaded, and the time.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Command } from '../command.js';
import { UsageError } from '../../lib/errors.js';
import { replaceFile, writeFully } from '../../lib/util/fs-io.js';
import { HttpClient } from '../../lib/fetch/http-client.js';
import { serializeIndex } from '../../lib/format/caibx.js';
import { indexBuffer } from '../../lib/chunking/indexer.js';
import { DEFAULT_CHUNK_PARAMS } from '../../lib/chunking/chunker.js';
import { flag, parseCount, str } from '../cli-args.js';
import { defaultConfig } from '../config.js';
import { makeDemoImages } from '../demo-image.js';
import { startDemoOrigin } from '../demo-origin.js';
import { createNotifier } from '../notify.js';
import { silentLogger } from '../log.js';
import { createProgress, formatBytes } from '../progress.js';
import { buildServer } from '../server.js';
import { findSha256 } from '../../lib/format/sha256sums.js';

const SYSTEMD_PULL = ['/usr/lib/systemd/systemd-pull', '/lib/systemd/systemd-pull'].find((p) => existsSync(p));
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

export const command: Command = {
  name: 'demo',
  usage: `Usage: deltad demo [--size MIB] [--client auto|systemd-pull|http] [--keep]

Generates v1 and v2 of a small image, publishes them from a local origin on
127.0.0.1, starts the sysupdate sidecar seeded with v1, downloads v2 through
it, checks the SHA-256, and prints what was reused and what was downloaded.
Exits 0 only if the downloaded image is correct.

Options:
  --size MIB       size of v1 in MiB (default 32)
  --client NAME    systemd-pull (as systemd-sysupdate runs it), http (deltad's
                   own client), or auto: systemd-pull when installed (default)
  --keep           keep the temporary directory and print its path`,
  options: {
    size: { type: 'string' },
    client: { type: 'string' },
    keep: { type: 'boolean' },
  },
  async run(ctx) {
    const sizeMiB = parseCount(str(ctx, 'size'), '--size', 32, 1, 1024);
    const clientArg = str(ctx, 'client') ?? 'auto';
    if (!['auto', 'systemd-pull', 'http'].includes(clientArg))
      throw new UsageError(`--client: "${clientArg}" must be auto, systemd-pull or http`);
    if (clientArg === 'systemd-pull' && !SYSTEMD_PULL)
      throw new UsageError('--client systemd-pull: systemd-pull is not installed (Debian: systemd-container)');
    const client = clientArg === 'http' || !SYSTEMD_PULL ? 'http' : 'systemd-pull';
    const say = (s: string) => ctx.stdout.write(s + '\n');

    const dir = await mkdtemp(join(tmpdir(), 'deltad-demo-'));
    const originDir = join(dir, 'origin');
    const systemDir = join(dir, 'system');
    await Promise.all([mkdir(originDir), mkdir(systemDir), mkdir(join(dir, 'download'))]);
    const cleanups: (() => Promise<void>)[] = [];
    try {
      say(`deltad demo: a delta update through the systemd-sysupdate sidecar`);
      const { v1, v2, edits } = makeDemoImages(sizeMiB * 1024 * 1024);
      const publish = async (name: string, data: Buffer) => {
        const index = indexBuffer(data, { params: DEFAULT_CHUNK_PARAMS, digest: 'sha512-256' });
        await writeFile(join(originDir, name), data);
        await writeFile(join(originDir, `${name}.caibx`), serializeIndex(index));
        return `${sha256(data)}  ${name}\n`;
      };
      await writeFile(join(originDir, 'SHA256SUMS'), (await publish('os_1.img', v1)) + (await publish('os_2.img', v2)));
      await writeFile(join(systemDir, 'os_1.img'), v1);
      say(`  images    v1 ${formatBytes(v1.length)}, v2 ${formatBytes(v2.length)} (${edits})`);

      const origin = await startDemoOrigin(originDir);
      cleanups.push(() => origin.close());
      say(`  origin    ${origin.url} publishes os_1.img, os_2.img, their .caibx indexes and SHA256SUMS`);

      const config = {
        ...defaultConfig({}),
        origin: origin.url,
        seedGlobs: [join(systemDir, '*.img')],
        cacheDir: join(dir, 'cache'),
        idleTimeout: 0,
      };
      const { app, ctx: daemon } = await buildServer(config, {
        log: silentLogger,
        notifier: createNotifier({ env: {} }),
      });
      cleanups.push(() => app.close());
      await app.listen({ host: '127.0.0.1', port: 0 });
      const daemonUrl = `http://127.0.0.1:${(app.server.address() as { port: number }).port}/`;
      say(`  daemon    ${daemonUrl} (deltad serve), seed ${join(systemDir, 'os_1.img')}`);

      const manifest = await readFile(join(originDir, 'SHA256SUMS'), 'utf8');
      const expected = findSha256(manifest, 'os_2.img')!;
      const out = join(dir, 'download', 'os_2.img');
      say(
        `  download  ${daemonUrl}os_2.img with ${client === 'systemd-pull' ? `systemd-pull (as systemd-sysupdate runs it)` : "deltad's HTTP client"}`,
      );
      const bar = createProgress({
        label: '  os_2.img',
        total: v2.length,
        interactive: ctx.interactive,
        stream: ctx.stderr,
      });
      const tick = setInterval(() => bar.update(daemon.counters.bytesServed), 100);
      const started = Date.now();
      try {
        if (client === 'systemd-pull')
          await promisify(execFile)(
            SYSTEMD_PULL!,
            ['raw', '--direct', `--verify=${expected}`, '--sync=no', `${daemonUrl}os_2.img`, out],
            { timeout: 300_000 },
          );
        else await httpDownload(`${daemonUrl}os_2.img`, out);
      } finally {
        clearInterval(tick);
        bar.finish();
      }
      const seconds = (Date.now() - started) / 1000;

      const got = await readFile(out);
      const ok = sha256(got) === expected && got.equals(v2);
      const image = origin.served.get('/os_2.img') ?? { bytes: 0, requests: 0 };
      const index = origin.served.get('/os_2.img.caibx') ?? { bytes: 0, requests: 0 };
      const reused = daemon.counters.bytesReused;
      const pct = (n: number) => `${((100 * n) / v2.length).toFixed(1)}%`;
      say(
        ok
          ? `  verified  SHA-256 ${expected} matches SHA256SUMS`
          : `  FAILED    the downloaded image does not match v2 (SHA-256 ${sha256(got)}, expected ${expected})`,
      );
      say(`  reused    ${formatBytes(reused)} (${pct(reused)}) from the local v1`);
      say(
        `  fetched   ${formatBytes(image.bytes)} (${pct(image.bytes)}) of image data in ${image.requests} requests, plus the ${formatBytes(index.bytes)} index`,
      );
      say(`  time      ${seconds.toFixed(2)} s; a plain download would have transferred ${formatBytes(v2.length)}`);
      if (flag(ctx, 'keep')) say(`  kept      ${dir}`);
      return ok ? 0 : 1;
    } finally {
      for (const c of cleanups.reverse()) await c().catch(() => {});
      if (!flag(ctx, 'keep')) await rm(dir, { recursive: true, force: true });
    }
  },
};

/** GET url into out (temp file + rename), failing on any non-200 or short body. */
async function httpDownload(url: string, out: string): Promise<void> {
  const http = new HttpClient();
  try {
    const res = await http.request(url);
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw new Error(`GET ${url}: HTTP ${res.statusCode}`);
    }
    const declared = Number(res.headers['content-length']);
    await replaceFile(
      out,
      async (fh) => {
        let n = 0;
        for await (const chunk of res.body) {
          await writeFully(fh, chunk as Buffer, n);
          n += (chunk as Buffer).length;
        }
        if (n !== declared) throw new Error(`GET ${url}: received ${n} of ${declared} bytes`);
      },
      { durable: false },
    );
  } finally {
    await http.close();
  }
}
