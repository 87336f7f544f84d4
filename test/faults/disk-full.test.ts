// Fault class: the disk fills up. An extract whose file system fills during
// the run fails with a clear message that says what it kept (how many verified
// bytes, where) and how to resume or remove it, leaves no stray .journal.tmp,
// keeps OUT byte-identical, and resumes once there is room. The sidecar writes
// no image-sized file: a cache directory far smaller than the image does not
// stop it from serving the delta.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { copyFile, open, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { startOrigin, type Origin } from '../helpers/origin.js';
import { type DeltaFixture, TEST_PARAMS, withDeltaFixture } from '../helpers/delta-images.js';
import { seededBytes } from '../helpers/images.js';
import { tmpDir } from '../helpers/tmp.js';
import { indexBuffer } from '../../lib/chunking/indexer.js';
import { serializeIndex } from '../../lib/format/caibx.js';
import { HttpClient } from '../../lib/fetch/http-client.js';
import { extractToFile } from '../../lib/delta/extract.js';
import { mountTinyTmpfs } from '../helpers/tmpfs.js';
import { partialPaths } from '../../lib/assemble/partial-file.js';
import { buildServer } from '../../daemon/server.js';
import { defaultConfig } from '../../daemon/config.js';
import { createNotifier } from '../../daemon/notify.js';
import { createLogger } from '../../daemon/log.js';
import { deltad } from './run-cli.js';

let fx: DeltaFixture;
let origin: Origin;
let casync = true;
withDeltaFixture(2 * 1024 * 1024, (s) => {
  casync = s !== null;
  if (s) ({ fx, origin } = s);
});

/** Writes a file until the file system is full; returns its path. */
async function fill(dir: string): Promise<string> {
  const path = join(dir, 'filler');
  const fh = await open(path, 'w');
  const block = Buffer.alloc(16 * 1024, 1);
  try {
    for (;;) await fh.write(block);
  } catch (err) {
    assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC');
  } finally {
    await fh.close();
  }
  return path;
}

test('ENOSPC during extract: a clear message, the partial kept with its journal, no .journal.tmp, OUT intact; resumes later', {
  timeout: 60_000,
}, async (t) => {
  if (!casync) return t.skip('casync not installed');
  const mnt = await mountTinyTmpfs(t, '4m');
  if (!mnt) return;
  const out = join(mnt, 'out.img');
  const previous = Buffer.from('the previous image\n');
  await writeFile(out, previous);
  const { partial, journal } = partialPaths(out);
  // Seed chunks are written at once; the network part waits, so the disk can fill in between.
  origin.fault({ path: '/v2.img', rangedOnly: true, kind: 'delay', delayMs: 2_500, times: Infinity });
  t.after(() => origin.clearFaults());
  const args = [
    'extract',
    '--seed',
    fx.v1Path,
    '--range-url',
    `${origin.url}/v2.img`,
    '--mode',
    'range',
    fx.indexPath,
    out,
  ];
  const env = { XDG_CACHE_HOME: join(fx.dir, 'xdg') };
  const run = deltad(args, { env });
  for (let k = 0; k < 200 && !existsSync(journal); k++) await sleep(25);
  assert.ok(existsSync(journal), 'the seed chunks were journaled');
  const filler = await fill(mnt);
  const r = await run;
  assert.equal(r.code, 1, r.stderr);
  assert.match(
    r.stderr,
    new RegExp(`${out}: cannot write \\d+ bytes at offset \\d+ of ${partial}: no space left on device`),
  );
  const kept = new RegExp(
    `kept ${partial} \\(([\\d.]+) (KiB|MiB) of [\\d.]+ MiB verified\\) and its journal; run the same command again to resume, or remove both: rm '${partial}' '${journal}'`,
  );
  assert.match(r.stderr, kept);
  assert.ok((await readFile(out)).equals(previous), 'OUT is byte-identical');
  assert.deepEqual(
    (await readdir(mnt)).sort(),
    ['.out.img.deltad-partial', '.out.img.deltad-partial.journal', 'filler', 'out.img'],
    'no stray .journal.tmp or lock',
  );
  // Room again: the same command resumes from the kept chunks.
  await rm(filler);
  origin.clearFaults();
  const again = await deltad(['extract', '--json', ...args.slice(1)], { env });
  assert.equal(again.code, 0, again.stderr);
  assert.ok(JSON.parse(again.stdout).resumedBytes > 0, 'resumed');
  assert.ok((await readFile(out)).equals(fx.v2));
  assert.deepEqual(await readdir(mnt), ['out.img']);
});

test('the sidecar never needs an image-sized file: with its cache directory on a 1 MiB tmpfs it still serves the delta', {
  timeout: 30_000,
}, async (t) => {
  if (!casync) return t.skip('casync not installed');
  const mnt = await mountTinyTmpfs(t, '1m');
  if (!mnt) return;
  await copyFile(fx.indexPath, join(fx.www, 'v2.img.caibx'));
  const logs: string[] = [];
  const log = createLogger({ write: (s: string) => logs.push(s) } as unknown as NodeJS.WritableStream, {});
  const config = {
    ...defaultConfig({}),
    origin: `${origin.url}/`,
    seedGlobs: [fx.v1Path],
    cacheDir: mnt,
    idleTimeout: 0,
  };
  const { app } = await buildServer(config, { log, notifier: createNotifier({ env: {} }) });
  // Closed here, not in an after hook: the tmpfs is unmounted by one that runs first.
  try {
    await app.listen({ host: '127.0.0.1', port: 0 });
    const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}/v2.img`;
    // reset: no keep-alive connection left for close() to wait on.
    const res = await request(url, { headersTimeout: 10_000, bodyTimeout: 10_000, reset: true });
    const body = Buffer.from(await res.body.arrayBuffer());
    assert.equal(res.statusCode, 200);
    assert.ok(body.equals(fx.v2), `a ${fx.v2.length}-byte image through a 1 MiB cache directory`);
    assert.ok(!logs.some((l) => /ENOSPC|no space/i.test(l)), logs.join(''));
  } finally {
    await app.close();
    // The verified index is remembered for the next run once the assembly ends: before the tmpfs goes.
    for (let k = 0; k < 100 && !existsSync(join(mnt, 'last-target.caibx')); k++) await sleep(20);
  }
});

test('an image of mostly zero chunks fits a file system smaller than the image: its zero chunks stay holes', {
  timeout: 60_000,
}, async (t) => {
  const mnt = await mountTinyTmpfs(t, '3m');
  if (!mnt) return;
  const dir = await tmpDir(t, 'sparse');
  // 1 MiB of data, 6 MiB of zeros, 0.5 MiB of data; the seed has the first MiB, none of the zeros.
  const head = seededBytes(1024 * 1024, 'sparse:head');
  const image = Buffer.concat([head, Buffer.alloc(6 * 1024 * 1024), seededBytes(512 * 1024, 'sparse:tail')]);
  const index = indexBuffer(image, { params: TEST_PARAMS, digest: 'sha256' });
  await writeFile(join(dir, 'image.img'), image);
  await writeFile(join(dir, 'image.img.caibx'), serializeIndex(index));
  const seed = join(dir, 'seed.img');
  await writeFile(seed, Buffer.concat([head, seededBytes(256 * 1024, 'sparse:other')]));
  const www = await startOrigin({ root: dir });
  t.after(() => www.close());
  const http = new HttpClient({ retryBaseMs: 5, timeoutMs: 5000 });
  t.after(() => http.close());
  const out = join(mnt, 'out.img');
  const r = await extractToFile(index, out, {
    http,
    seeds: [{ path: seed }],
    rangeUrl: `${www.url}/image.img`,
    cacheDir: join(dir, 'cache'),
  });
  assert.ok(r.fromZero >= 5 * 1024 * 1024, `${r.fromZero} bytes of zero chunks`);
  assert.ok((await readFile(out)).equals(image));
  const st = await stat(out);
  assert.ok(st.blocks * 512 < 3 * 1024 * 1024, `${st.blocks * 512} bytes allocated`);
});
