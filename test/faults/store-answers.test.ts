// Fault class: a chunk store answering one chunk badly. An oversized answer,
// garbage and the wrong content are all treated alike: asked once more, then
// the next store is asked (with a warning naming chunk and URL); the update
// fails only when no store has the chunk intact, naming it, and OUT is kept.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cp, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startOrigin, type Origin } from '../helpers/origin.js';
import { makeDeltaFixture, requireCasync, TEST_PARAMS, type DeltaFixture } from '../helpers/delta-images.js';
import { chunkRelativePath } from '../../lib/store/chunk-file.js';
import { compressChunk, maxEncodedSize } from '../../lib/store/compression.js';
import { deltad } from './run-cli.js';
import { seededBytes } from '../helpers/images.js';

let fx: DeltaFixture;
let origin: Origin;
let casync = true;
/** Bad answers by kind: the chunk index each store spoils. */
const KINDS = { oversized: 0, garbage: 1, wrong: 2 } as const;

before(async (t) => {
  casync = requireCasync(t as unknown as { skip: (m: string) => void });
  if (!casync) return;
  fx = await makeDeltaFixture(t, 1024 * 1024);
  for (const [kind, i] of Object.entries(KINDS)) {
    const store = join(fx.www, `${kind}.castr`);
    await cp(fx.storeDir, store, { recursive: true });
    const file = join(store, chunkRelativePath(fx.index.idHex(i), true));
    const body =
      kind === 'oversized'
        ? seededBytes(maxEncodedSize(TEST_PARAMS.max) + 4096, 'oversized')
        : kind === 'garbage'
          ? seededBytes(300, 'garbage')
          : compressChunk(seededBytes(fx.index.chunkSize(i), 'wrong'));
    await writeFile(file, body);
  }
  origin = await startOrigin({ root: fx.www });
});
after(async () => {
  await origin?.close();
});

const chunkPath = (kind: keyof typeof KINDS): string =>
  `/${kind}.castr/${chunkRelativePath(fx.index.idHex(KINDS[kind]), true)}`;

for (const kind of Object.keys(KINDS) as (keyof typeof KINDS)[]) {
  test(`${kind} store answer: asked twice, then the next store; exit 0 with the right bytes`, {
    timeout: 30_000,
  }, async (t) => {
    if (!casync) return t.skip('casync not installed');
    const out = join(fx.dir, `${kind}-ok.img`);
    origin.log.length = 0;
    const r = await deltad(
      [
        'extract',
        '--mode',
        'store',
        '--store',
        `${origin.url}/${kind}.castr`,
        '--store',
        `${origin.url}/v2.castr`,
        fx.indexPath,
        out,
      ],
      { env: { XDG_CACHE_HOME: join(fx.dir, 'xdg') } },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.ok((await readFile(out)).equals(fx.v2));
    const hex = fx.index.idHex(KINDS[kind]);
    assert.match(
      r.stderr,
      new RegExp(
        `warning: chunk ${hex} .*\\(from ${origin.url}${chunkPath(kind)}\\), also when asked again; trying the next store`,
      ),
    );
    assert.equal(
      origin.log.filter((e) => e.path === chunkPath(kind)).length,
      2,
      'the bad store was asked exactly twice',
    );
  });

  test(`${kind} store answer and no other store: a clean failure naming chunk and URL, OUT kept`, {
    timeout: 30_000,
  }, async (t) => {
    if (!casync) return t.skip('casync not installed');
    const dir = join(fx.dir, `${kind}-fail`);
    await mkdir(dir);
    const out = join(dir, 'out.img');
    const previous = Buffer.from('the previous image\n');
    await writeFile(out, previous);
    const r = await deltad(
      ['extract', '--mode', 'store', '--concurrency', '1', '--store', `${origin.url}/${kind}.castr`, fx.indexPath, out],
      { env: { XDG_CACHE_HOME: join(fx.dir, 'xdg') } },
    );
    assert.equal(r.code, 1, r.stderr);
    const hex = fx.index.idHex(KINDS[kind]);
    assert.match(
      r.stderr,
      new RegExp(
        `chunk ${hex} could not be fetched intact from any source \\(chunk ${hex} .*\\(from ${origin.url}${chunkPath(kind)}\\), also when asked again\\)`,
      ),
    );
    assert.ok((await readFile(out)).equals(previous), 'OUT is byte-identical');
    const left = (await readdir(dir)).filter((n) => n !== 'out.img');
    assert.ok(
      left.every((n) => n === '.out.img.deltad-partial' || n === '.out.img.deltad-partial.journal'),
      `only the resume file is left: ${left.join(', ')}`,
    );
  });
}

test('a range URL that sends a chunk wrong twice: the chunk store has it, exit 0 with the right bytes', {
  timeout: 30_000,
}, async (t) => {
  if (!casync) return t.skip('casync not installed');
  const out = join(fx.dir, 'range-wrong.img');
  origin.fault({ path: '/v2.img', rangedOnly: true, kind: 'wrong-bytes', times: Infinity });
  t.after(() => origin.clearFaults());
  const r = await deltad(
    [
      'extract',
      '--json',
      '--mode',
      'auto',
      '--range-url',
      `${origin.url}/v2.img`,
      '--store',
      `${origin.url}/v2.castr`,
      fx.indexPath,
      out,
    ],
    { env: { XDG_CACHE_HOME: join(fx.dir, 'xdg') } },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).mode, 'range', 'byte ranges were the chosen source');
  assert.match(
    r.stderr,
    /warning: chunk [0-9a-f]{64} at target offset \d+ has the wrong content twice \(from .*\/v2\.img\); fetching it from the chunk store/,
  );
  assert.ok((await readFile(out)).equals(fx.v2));
});
