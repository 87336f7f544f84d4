// `deltad publish`: one command leaves what delta clients need beside a release
// image (index under the name clients try first, block pack, optional store) and
// prints the SHA256SUMS line; a client then gets the image as a delta from them.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { runCli } from './helpers/cli.js';
import { makeReleases } from './helpers/fleet.js';
import { startOrigin } from './helpers/origin.js';
import { tmpDir } from './helpers/tmp.js';

test('deltad publish writes index, block pack and store; extract takes v2 from them as a delta', {
  timeout: 120_000,
}, async (t) => {
  const dir = await tmpDir(t, 'publish');
  const gen = join(dir, 'gen');
  const www = join(dir, 'www');
  await mkdir(gen);
  await mkdir(www);
  const [v1, v2] = await makeReleases(gen, 4 * 1024 * 1024, 2);
  await copyFile(join(gen, 'os_2.img'), join(www, 'os_2.img'));
  const env = { ...process.env, XDG_CACHE_HOME: join(dir, 'xdg'), DELTAD_PROGRESS: '0' };
  const store = join(www, 'default.castr');
  const pub = await runCli(
    ['publish', '--previous', join(gen, 'os_1.img'), '--store', store, '--json', join(www, 'os_2.img')],
    { env },
  );
  assert.equal(pub.code, 0, pub.stderr);
  const summary = JSON.parse(pub.stdout.toString()) as { sha256: string; sha256sumsLine: string; index: string };
  const sha = createHash('sha256').update(v2.data).digest('hex');
  assert.equal(summary.sha256, sha);
  assert.equal(summary.sha256sumsLine, `${sha}  os_2.img`);
  assert.equal(summary.index, join(www, 'os_2.caibx'), "the index is named as clients try first (the image's stem)");
  const files = await readdir(www);
  for (const f of ['os_2.caibx', 'os_2.img.bpk', 'os_2.img.bpdict', 'os_2.img.bpidx', 'default.castr'])
    assert.ok(files.includes(f), f);
  assert.ok(!files.some((f) => f.endsWith('.tmp')), 'no temporary file left');

  // The store holds every chunk of the index.
  const verify = await runCli(['verify', '--store', store, join(www, 'os_2.caibx')], { env });
  assert.equal(verify.code, 0, verify.stderr);
  // A client with v1 downloads v2 as a delta from what publish wrote.
  const origin = await startOrigin({ root: www });
  t.after(() => origin.close());
  const out = join(dir, 'out.img');
  const seed = join(gen, 'os_1.img');
  const ex = await runCli(
    [
      'extract',
      '--seed',
      seed,
      '--range-url',
      `${origin.url}/os_2.img`,
      '--sha256',
      sha,
      `${origin.url}/os_2.caibx`,
      out,
    ],
    { env },
  );
  assert.equal(ex.code, 0, ex.stderr);
  assert.ok((await readFile(out)).equals(v2.data), 'byte-identical v2');
  const imageBytes = origin.log.filter((e) => e.path.startsWith('/os_2.img')).reduce((n, e) => n + e.bytes, 0);
  assert.ok(imageBytes < v2.data.length / 2, `a delta: ${imageBytes} of ${v2.data.length} bytes from the origin`);
  assert.ok(v1.data.length === v2.data.length);
});
