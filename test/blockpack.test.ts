// Block pack: `deltad pack` artifacts, planning against seeds, and verified
// assembly through a real HTTP origin on 127.0.0.1, including a corrupted
// frame, a corrupted dictionary, lying block indexes, a server without
// multi-range, a stale seed and a release without a pack.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { cp, mkdir, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { HttpClient } from '../lib/fetch/http-client.js';
import { ChecksumMismatchError, IndexFormatError, PackError } from '../lib/errors.js';
import {
  assembleBlocks,
  costOf,
  packImage,
  parseBlockIndex,
  planBlockUpdate,
  probeBlockPack,
  type BlockIndex,
} from '../lib/blockpack/index.js';
import { HASH_BYTES, PACK_HEADER_SIZE, ZERO_BLOCK, serializeBlockIndex } from '../lib/blockpack/format.js';
import { startOrigin, type Origin } from './helpers/origin.js';
import { serializeIndex } from '../lib/format/caibx.js';
import { indexBuffer } from '../lib/chunking/indexer.js';
import { extractToFile, loadIndex, openExtractStream, planUpdate } from '../lib/delta/extract.js';
import { fileTmpDir, tmpDir } from './helpers/tmp.js';
import { textBytes } from './helpers/images.js';

const BS = 4096;

/** v1: 700 text blocks with zero runs and repeats; v2: scattered edits, an inserted run, a short tail. */
function makeImages(): { v1: Buffer; v2: Buffer } {
  const v1Blocks: Buffer[] = [];
  for (let i = 0; i < 700; i++) {
    if (i % 97 === 5) v1Blocks.push(Buffer.alloc(BS));
    else if (i % 50 === 7)
      v1Blocks.push(textBytes(BS, 3)); // a block repeated across the image
    else v1Blocks.push(textBytes(BS, 1000 + i));
  }
  const v2Blocks = v1Blocks.slice();
  for (let i = 20; i < 700; i += 37) v2Blocks[i] = textBytes(BS, 50_000 + i); // isolated changed blocks (moved inodes)
  v2Blocks.splice(300, 0, ...Array.from({ length: 40 }, (_, k) => textBytes(BS, 90_000 + k))); // a new file
  const v2 = Buffer.concat([...v2Blocks, textBytes(1000, 77)]); // short last block
  return { v1: Buffer.concat(v1Blocks), v2 };
}

interface Fixture {
  dir: string;
  www: string;
  v1Path: string;
  v2: Buffer;
  origin: Origin;
  http: HttpClient;
  imageUrl: string;
  sha256: string;
}

/** v2 packed once per test file (packing dominates a fixture's cost); each test gets its own copy. */
const templateDir = fileTmpDir('blockpack-template');
let packed: Promise<{ dir: string; v1: Buffer; v2: Buffer }> | undefined;
function packedTemplate(): Promise<{ dir: string; v1: Buffer; v2: Buffer }> {
  packed ??= (async () => {
    const dir = join(templateDir, 'template');
    await mkdir(dir);
    const { v1, v2 } = makeImages();
    await writeFile(join(dir, 'os_2.img'), v2);
    await packImage(join(dir, 'os_2.img'), { outDir: dir, level: 9, dictSize: 32 * 1024, trainer: 'cover' });
    return { dir, v1, v2 };
  })();
  return packed;
}

async function fixture(t: { after: (fn: () => Promise<void>) => void }): Promise<Fixture> {
  const dir = await tmpDir(t, 'blockpack');
  const www = join(dir, 'www');
  const template = await packedTemplate();
  const { v1, v2 } = template;
  const v1Path = join(dir, 'v1.img');
  await writeFile(v1Path, v1);
  await cp(template.dir, www, { recursive: true });
  const origin = await startOrigin({ root: www });
  const http = new HttpClient({ attempts: 2, retryBaseMs: 10, timeoutMs: 5000 });
  t.after(async () => {
    await http.close();
    await origin.close();
  });
  return {
    dir,
    www,
    v1Path,
    v2,
    origin,
    http,
    imageUrl: `${origin.url}/os_2.img`,
    sha256: createHash('sha256').update(v2).digest('hex'),
  };
}

async function extract(f: Fixture, out: string, opts: { sha256?: string; seeds?: string[] } = {}) {
  const probe = await probeBlockPack(f.http, f.imageUrl);
  assert.ok(probe, 'the release has a block pack');
  const plan = await planBlockUpdate(probe, opts.seeds ?? [f.v1Path], { cacheDir: join(f.dir, 'cache') });
  const result = await assembleBlocks(plan, out, {
    http: f.http,
    packUrl: probe.packUrl,
    dictUrl: probe.dictUrl,
    sha256: opts.sha256,
    retryBaseMs: 10,
  });
  return { probe, plan, result };
}

/** Files left in a directory besides the expected ones (temp files must not survive). */
async function leftovers(dir: string, expected: string[]): Promise<string[]> {
  return (await readdir(dir)).filter((n) => !expected.includes(n));
}

/** Rebuilds the fields serializeBlockIndex needs from a parsed index (to write lying variants). */
function contentOf(idx: BlockIndex) {
  const frameBlocks: number[] = [];
  const frameLengths: number[] = [];
  for (let f = 0; f < idx.frameCount; f++) {
    frameBlocks.push(idx.frames.blocks(f));
    frameLengths.push(idx.frames.length(f));
  }
  return { ...idx, frameBlocks, frameLengths };
}

test('pack: zero blocks are not stored, repeated blocks once, and the index round-trips', async (t) => {
  const f = await fixture(t);
  const buf = await readFile(join(f.www, 'os_2.img.bpidx'));
  const idx = parseBlockIndex(buf, 'os_2.img.bpidx');
  assert.equal(idx.imageSize, f.v2.length);
  assert.equal(idx.blockCount, Math.ceil(f.v2.length / BS));
  assert.equal(idx.imageSha256.toString('hex'), f.sha256);
  // Count what the image really holds and compare.
  const seen = new Set<string>();
  let zeros = 0;
  for (let b = 0; b < idx.blockCount; b++) {
    const block = f.v2.subarray(b * BS, (b + 1) * BS);
    if (block.every((x) => x === 0)) zeros++;
    else seen.add(block.toString('latin1'));
  }
  assert.equal(idx.distinctCount, seen.size);
  assert.equal([...idx.distinctOf].filter((d) => d === ZERO_BLOCK).length, zeros);
  const pack = await readFile(join(f.www, 'os_2.img.bpk'));
  assert.equal(pack.length, idx.packSize);
  assert.ok(pack.length < f.v2.length / 2, `pack ${pack.length} bytes should be well under the image's ${f.v2.length}`);
  // Re-serializing the parsed content gives the same bytes: the format is fully described by the index.
  assert.deepEqual(serializeBlockIndex(contentOf(idx)), buf);
});

test('pack: a dictionary makes the pack smaller than no dictionary', async (t) => {
  const dir = await tmpDir(t, 'blockpack');
  const img = join(dir, 'a.img');
  await writeFile(img, makeImages().v2);
  const withDict = await packImage(img, { outDir: dir, level: 9, dictSize: 32 * 1024, trainer: 'cover' });
  const withoutDir = join(dir, 'nodict');
  await mkdir(withoutDir);
  const without = await packImage(img, { outDir: withoutDir, level: 9, trainer: 'none' });
  assert.equal(without.dictSize, 0);
  assert.ok(withDict.packSize < without.packSize, `with dictionary ${withDict.packSize}, without ${without.packSize}`);
});

test('extract: rebuilds the image byte for byte, fetching only the frames no seed has', async (t) => {
  const f = await fixture(t);
  const out = join(f.dir, 'out.img');
  const { plan, result, probe } = await extract(f, out, { sha256: f.sha256 });
  assert.deepEqual(await readFile(out), f.v2);
  assert.equal(result.sha256, f.sha256);
  assert.ok(result.fromSeeds > f.v2.length * 0.7, `from seeds ${result.fromSeeds}`);
  // 19 changed blocks + 40 new ones + the tail: about 60 frames.
  assert.ok(plan.totals.frames >= 55 && plan.totals.frames <= 70, `frames ${plan.totals.frames}`);
  const served = f.origin.stats('/os_2.img.bpk');
  assert.ok(served.requests <= 2, `pack requests ${served.requests}`);
  const total = f.origin.stats('/');
  assert.ok(total.bytes < f.v2.length / 4, `downloaded ${total.bytes} of a ${f.v2.length}-byte image`);
  // The planner's estimate is what the client then downloads (within framing noise).
  const cost = costOf(plan, { multi: true });
  assert.ok(
    Math.abs(cost.bytes - (probe.indexBytes + result.networkBytes)) < 2000,
    `estimate ${cost.bytes}, actual ${probe.indexBytes + result.networkBytes}`,
  );
  assert.deepEqual(await leftovers(f.dir, ['v1.img', 'www', 'cache', 'out.img']), []);
});

for (const mode of ['single', 'reject-multi'] as const) {
  test(`extract: a server without multi-range (${mode}) gets single ranges`, async (t) => {
    const f = await fixture(t);
    f.origin.ranges = mode;
    const out = join(f.dir, 'out.img');
    await extract(f, out);
    assert.deepEqual(await readFile(out), f.v2);
    const packLog = f.origin.log.filter((e) => e.path === '/os_2.img.bpk');
    assert.ok(packLog.length >= 2, 'a refused multi-range request, then single ranges');
    assert.ok(
      packLog.slice(1).every((e) => e.range && !e.range.includes(',')),
      'single ranges after the fallback',
    );
    assert.ok(packLog.length < 70, `requests stay bounded: ${packLog.length}`);
  });
}

test('extract: a corrupted pack frame is detected and nothing is written', async (t) => {
  const f = await fixture(t);
  const idx = parseBlockIndex(await readFile(join(f.www, 'os_2.img.bpidx')));
  const packPath = join(f.www, 'os_2.img.bpk');
  const pack = await readFile(packPath);
  // The frame of the first block of the inserted run (no seed has it).
  const d = idx.distinctOf[310];
  const fr = idx.frames.of(d);
  pack[idx.frames.start(fr) + Math.floor(idx.frames.length(fr) / 2)] ^= 0x55;
  await writeFile(packPath, pack);
  const out = join(f.dir, 'out.img');
  await assert.rejects(
    extract(f, out),
    (err: Error) => err instanceof PackError && /frame \d+ at byte/.test(err.message),
  );
  assert.deepEqual(await leftovers(f.dir, ['v1.img', 'www', 'cache']), [], 'no output and no temp file');
});

test('extract: a corrupted dictionary is refused before any frame is fetched', async (t) => {
  const f = await fixture(t);
  const dictPath = join(f.www, 'os_2.img.bpdict');
  const dict = await readFile(dictPath);
  dict[100] ^= 1;
  await writeFile(dictPath, dict);
  await assert.rejects(
    extract(f, join(f.dir, 'out.img')),
    (err: Error) => err instanceof PackError && /dictionary/.test(err.message),
  );
  assert.equal(f.origin.stats('/os_2.img.bpk').requests, 0);
  assert.deepEqual(await leftovers(f.dir, ['v1.img', 'www', 'cache']), []);
});

test('extract: lying block indexes are caught (wrong frame hash, swapped seed hashes, another image, truncation)', async (t) => {
  const f = await fixture(t);
  const indexPath = join(f.www, 'os_2.img.bpidx');
  const original = await readFile(indexPath);
  const idx = parseBlockIndex(original);
  const out = join(f.dir, 'out.img');

  // 1. A pack block's hash is wrong: the frame does not verify.
  const d = idx.distinctOf[310];
  const lie1 = contentOf(idx);
  lie1.hashes = Uint8Array.from(idx.hashes);
  lie1.hashes[d * HASH_BYTES] ^= 1;
  await writeFile(indexPath, serializeBlockIndex(lie1));
  await assert.rejects(
    extract(f, out),
    (err: Error) => err instanceof PackError && /does not match its hash/.test(err.message),
  );

  // 2. Two seed blocks' hashes swapped: each block verifies, the whole file does not.
  const a = idx.distinctOf[1];
  const b = idx.distinctOf[2];
  const lie2 = contentOf(idx);
  lie2.hashes = Uint8Array.from(idx.hashes);
  lie2.hashes.set(idx.hashes.subarray(b * HASH_BYTES, (b + 1) * HASH_BYTES), a * HASH_BYTES);
  lie2.hashes.set(idx.hashes.subarray(a * HASH_BYTES, (a + 1) * HASH_BYTES), b * HASH_BYTES);
  await writeFile(indexPath, serializeBlockIndex(lie2));
  await assert.rejects(extract(f, out), ChecksumMismatchError);

  // 3. An index made for another image than the release: refused before fetching anything.
  await writeFile(indexPath, original);
  const before = f.origin.log.length;
  await assert.rejects(
    extract(f, out, { sha256: 'ab'.repeat(32) }),
    (err: Error) => err instanceof PackError && /stale or swapped index/.test(err.message),
  );
  assert.ok(f.origin.log.slice(before).every((e) => e.path === '/os_2.img.bpidx'));

  // 4. A truncated index fails to parse, naming the field.
  await writeFile(indexPath, original.subarray(0, original.length - 10));
  await assert.rejects(
    probeBlockPack(f.http, f.imageUrl),
    (err: Error) => err instanceof IndexFormatError && /body_length/.test(err.message),
  );

  assert.deepEqual(await leftovers(f.dir, ['v1.img', 'www', 'cache']), []);
});

test('extract: a seed that changed after it was indexed costs a fetch, not a wrong byte', async (t) => {
  const f = await fixture(t);
  const probe = await probeBlockPack(f.http, f.imageUrl);
  assert.ok(probe);
  const plan = await planBlockUpdate(probe, [f.v1Path], { cacheDir: join(f.dir, 'cache') });
  // Overwrite a seed block in place after planning (same size: the plan still points at it).
  const v1 = await readFile(f.v1Path);
  textBytes(BS, 424242).copy(v1, 100 * BS);
  await writeFile(f.v1Path, v1);
  const out = join(f.dir, 'out.img');
  const result = await assembleBlocks(plan, out, { http: f.http, packUrl: probe.packUrl, dictUrl: probe.dictUrl });
  assert.ok(result.seedMismatches >= 1);
  assert.deepEqual(await readFile(out), f.v2);
});

test('probe: a release without a block pack answers null (the chunk path is used)', async (t) => {
  const f = await fixture(t);
  await rm(join(f.www, 'os_2.img.bpidx'));
  assert.equal(await probeBlockPack(f.http, f.imageUrl), null);
});

test('engine: extractToFile and planUpdate take the block path when the release has a pack, and fall back to chunks when it is corrupt', async (t) => {
  const f = await fixture(t);
  await writeFile(
    join(f.www, 'os_2.img.caibx'),
    serializeIndex(indexBuffer(f.v2, { params: { min: 4096, avg: 16384, max: 65536 }, digest: 'sha512-256' })),
  );
  const source = { rangeUrl: f.imageUrl, seeds: [{ path: f.v1Path }], cacheDir: join(f.dir, 'cache'), http: f.http };
  const report = await planUpdate(`${f.imageUrl}.caibx`, source);
  const blocks = report.modes.find((m) => m.mode === 'blocks');
  const range = report.modes.find((m) => m.mode === 'range');
  assert.ok(blocks && range, `modes ${report.modes.map((m) => m.mode).join(', ')}`);
  assert.ok(blocks.bytes < range.bytes, `block path ${blocks.bytes} bytes, chunk ranges ${range.bytes}`);
  assert.equal(report.chosen, 'blocks');

  const out = join(f.dir, 'out.img');
  const r = await extractToFile(`${f.imageUrl}.caibx`, out, {
    ...source,
    sha256: f.sha256,
    onWarning: (m) => assert.fail(m),
  });
  assert.equal(r.mode, 'blocks');
  assert.deepEqual(await readFile(out), f.v2);

  // The daemon's ordered stream takes the same path.
  const stream = openExtractStream(await loadIndex(`${f.imageUrl}.caibx`, { http: f.http }), {
    ...source,
    sha256: f.sha256,
  });
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(part as Buffer);
  assert.equal((await stream.result).mode, 'blocks');
  assert.deepEqual(Buffer.concat(parts), f.v2);

  // A corrupt pack: warned about, and the chunk path still delivers the image.
  const packPath = join(f.www, 'os_2.img.bpk');
  const pack = await readFile(packPath);
  for (let i = 100; i < pack.length; i += 997) pack[i] ^= 0xff;
  await writeFile(packPath, pack);
  const warnings: string[] = [];
  const out2 = join(f.dir, 'out2.img');
  const r2 = await extractToFile(`${f.imageUrl}.caibx`, out2, {
    ...source,
    sha256: f.sha256,
    onWarning: (m) => warnings.push(m),
  });
  assert.equal(r2.mode, 'range');
  assert.deepEqual(await readFile(out2), f.v2);
  assert.ok(
    warnings.some((w) => /falling back to the chunk path/.test(w)),
    warnings.join('\n'),
  );

  // A lying index whose blocks each verify but whose image does not: the chunk IDs send it to the chunk path too.
  // (Two seed blocks past the image's first chunks, which the chunk route streams while the block index arrives.)
  await writeFile(packPath, await readFile(join((await packedTemplate()).dir, 'os_2.img.bpk')));
  const idx = parseBlockIndex(await readFile(join(f.www, 'os_2.img.bpidx')));
  const lie = contentOf(idx);
  lie.hashes = Uint8Array.from(idx.hashes);
  const [a, b] = [idx.distinctOf[401], idx.distinctOf[402]];
  lie.hashes.set(idx.hashes.subarray(b * HASH_BYTES, (b + 1) * HASH_BYTES), a * HASH_BYTES);
  lie.hashes.set(idx.hashes.subarray(a * HASH_BYTES, (a + 1) * HASH_BYTES), b * HASH_BYTES);
  await writeFile(join(f.www, 'os_2.img.bpidx'), serializeBlockIndex(lie));
  warnings.length = 0;
  const out3 = join(f.dir, 'out3.img');
  const r3 = await extractToFile(`${f.imageUrl}.caibx`, out3, { ...source, onWarning: (m) => warnings.push(m) });
  assert.equal(r3.mode, 'range');
  assert.deepEqual(await readFile(out3), f.v2);
  assert.ok(
    warnings.some((w) => /(SHA-256 mismatch|not the target index's image).*falling back to the chunk path/.test(w)),
    warnings.join('\n'),
  );
  assert.deepEqual(await leftovers(f.dir, ['v1.img', 'www', 'cache', 'out.img', 'out2.img', 'out3.img']), []);
});

test('pack --previous: runs of new blocks share frames; seeded and seedless clients both get the exact image', async (t) => {
  const dir = await tmpDir(t, 'blockpack');
  const www = join(dir, 'www');
  await mkdir(www);
  const { v1, v2 } = makeImages();
  const v1Path = join(dir, 'v1.img');
  await writeFile(v1Path, v1);
  await writeFile(join(www, 'os_2.img'), v2);
  const inline = await packImage(join(www, 'os_2.img'), {
    outDir: www,
    level: 9,
    dictSize: 32 * 1024,
    previous: [v1Path],
    groupBlocks: 8,
    threads: 0,
  });
  assert.ok(
    inline.frames < inline.distinctBlocks - 20,
    `${inline.frames} frames for ${inline.distinctBlocks} distinct blocks`,
  );
  // Worker threads write the same bytes as inline compression.
  const again = join(dir, 'again');
  await packImage(join(www, 'os_2.img'), {
    outDir: again,
    level: 9,
    dictSize: 32 * 1024,
    previous: [v1Path],
    groupBlocks: 8,
    threads: 2,
  });
  for (const ext of ['bpidx', 'bpk', 'bpdict'])
    assert.deepEqual(await readFile(join(again, `os_2.img.${ext}`)), await readFile(join(www, `os_2.img.${ext}`)), ext);

  const origin = await startOrigin({ root: www });
  const http = new HttpClient({ attempts: 2, retryBaseMs: 10, timeoutMs: 5000 });
  t.after(async () => {
    await http.close();
    await origin.close();
  });
  const probe = await probeBlockPack(http, `${origin.url}/os_2.img`);
  assert.ok(probe);
  for (const seeds of [[v1Path], []]) {
    const plan = await planBlockUpdate(probe, seeds, { cacheDir: join(dir, 'cache') });
    const out = join(dir, `out-${seeds.length}.img`);
    await assembleBlocks(plan, out, { http, packUrl: probe.packUrl, dictUrl: probe.dictUrl });
    assert.deepEqual(await readFile(out), v2, `with ${seeds.length} seed(s)`);
  }
});

test('extract: a seed that is already the target leaves only the short tail block to fetch', async (t) => {
  const f = await fixture(t);
  const same = join(f.dir, 'same.img');
  await writeFile(same, f.v2);
  const out = join(f.dir, 'out.img');
  const { plan, result } = await extract(f, out, { seeds: [same], sha256: f.sha256 });
  assert.equal(plan.totals.frames, 1, 'only the short last block (never matched against whole seed blocks)');
  assert.deepEqual(await readFile(out), f.v2);
  assert.equal(result.seedMismatches, 0);
  assert.equal(f.origin.stats('/os_2.img.bpk').requests, 1);
});

test('extract: blocks of two seeds whose numbers follow on are read from each seed, not as one run', async (t) => {
  const f = await fixture(t);
  const probe = await probeBlockPack(f.http, f.imageUrl);
  assert.ok(probe);
  // Split the target at a block b where blocks b - 1 and b are both first occurrences: seed A is the target up to
  // b, seed B the rest, so target blocks b - 1 and b are A's last block and B's first, numbered one after the other.
  const { distinctOf } = probe.index;
  let top = -1;
  let split = -1;
  for (let b = 0; b < distinctOf.length - 1; b++) {
    const first = distinctOf[b] > top;
    top = Math.max(top, distinctOf[b]);
    if (b > distinctOf.length / 2 && first && distinctOf[b + 1] > top) {
      split = b + 1;
      break;
    }
  }
  assert.ok(split > 0, 'the image has two new blocks in a row past its middle');
  const [a, b] = [join(f.dir, 'a.img'), join(f.dir, 'b.img')];
  await writeFile(a, f.v2.subarray(0, split * BS));
  await writeFile(b, f.v2.subarray(split * BS));
  const out = join(f.dir, 'out.img');
  const { plan, result } = await extract(f, out, { seeds: [a, b], sha256: f.sha256 });
  assert.equal(plan.sources[split], plan.sources[split - 1] + 1, 'numbers that follow on');
  assert.deepEqual(await readFile(out), f.v2);
  assert.equal(result.seedMismatches, 0, 'no block read from the wrong seed');
  assert.equal(plan.totals.frames, 1, 'only the short last block from the pack');
});

test('engine: a stale block pack (built for another image than the target index) never becomes the output', async (t) => {
  const f = await fixture(t);
  // A new release at the same URL whose pack artifacts were not rebuilt: they still describe v2.
  const v3 = Buffer.from(f.v2);
  for (let i = 100_000; i < 100_000 + 4 * BS; i++) v3[i] ^= 0x5a;
  await writeFile(join(f.www, 'os_2.img'), v3);
  const v3Index = indexBuffer(v3, { params: { min: 4096, avg: 16384, max: 65536 }, digest: 'sha512-256' });
  await writeFile(join(f.www, 'os_2.img.caibx'), serializeIndex(v3Index));
  const source = { rangeUrl: f.imageUrl, seeds: [{ path: f.v1Path }], cacheDir: join(f.dir, 'cache'), http: f.http };
  assert.equal((await planUpdate(`${f.imageUrl}.caibx`, source)).chosen, 'blocks', 'the stale pack looks cheapest');

  const warnings: string[] = [];
  const out = join(f.dir, 'out.img');
  const r = await extractToFile(`${f.imageUrl}.caibx`, out, { ...source, onWarning: (m) => warnings.push(m) });
  assert.ok((await readFile(out)).equals(v3), `the output is the target index's image (mode ${r.mode})`);
  assert.ok(
    warnings.some((w) => /falling back to the chunk path/.test(w)),
    warnings.join('\n'),
  );

  const stream = openExtractStream(v3Index, { ...source, onWarning: () => {} });
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(part as Buffer);
  await stream.result;
  assert.ok(Buffer.concat(parts).equals(v3), "the stream delivers the target index's image");
  assert.deepEqual(await leftovers(f.dir, ['v1.img', 'www', 'cache', 'out.img']), []);
});

test('extract: a symlink planted at the partial file name is replaced, the file it points to is untouched', async (t) => {
  const f = await fixture(t);
  const out = join(f.dir, 'out.img');
  const victim = join(f.dir, 'victim.img');
  const victimBytes = Buffer.from('a seed or the previous image\n');
  await writeFile(victim, victimBytes);
  await symlink(victim, join(f.dir, '.out.img.deltad-partial'));
  await extract(f, out, { sha256: f.sha256 });
  assert.ok((await readFile(victim)).equals(victimBytes), 'the file behind the symlink is unchanged');
  assert.ok((await readFile(out)).equals(f.v2));
});

test('extract: a release that redirects every block-pack file to a mirror still gives the exact image', async (t) => {
  const f = await fixture(t);
  const mirror = await startOrigin({ root: f.www });
  t.after(() => mirror.close());
  f.origin.redirect = { to: mirror.url, status: 302 };
  const out = join(f.dir, 'out.img');
  const { result } = await extract(f, out, { sha256: f.sha256 });
  assert.deepEqual(await readFile(out), f.v2);
  assert.equal(result.sha256, f.sha256);
  assert.ok(
    mirror.log.some((e) => e.path === '/os_2.img.bpk' && e.status === 206),
    'pack ranges from the mirror',
  );
  assert.ok(
    f.origin.log.every((e) => e.status === 302),
    'the origin only redirected',
  );
  const packAtOrigin = f.origin.log.filter((e) => e.path === '/os_2.img.bpk').length;
  assert.equal(packAtOrigin, 1, 'one redirect for every range of the pack');
});

test('a block index answered whole to the range probe is parsed by every probe that shares the answer', async () => {
  // An origin that ignores Range sends the whole index to the one-byte probe; the release preparation shares that
  // answer while fresh, so parsing it must not free its body (a large one: 10,000 distinct blocks, > 64 KiB).
  const n = 10_000;
  const frameBlocks = Array.from({ length: n / 16 }, () => 16);
  const frameLengths = frameBlocks.map(() => 1000);
  const rnd = (k: number) => createHash('sha256').update(`shared-probe:${k}`).digest();
  const hashes = Buffer.concat(Array.from({ length: (n * HASH_BYTES) / 32 }, (_, k) => rnd(k)));
  const body = syntheticIndex(frameBlocks, frameLengths, 'shared-probe', hashes);
  assert.ok(body.length > Buffer.poolSize, `${body.length} bytes`);
  const answer = { status: 200, headers: {}, body: Buffer.from(body), url: 'http://127.0.0.1:9/os.img.bpidx' };
  const asked = Promise.resolve(answer);
  const http = new HttpClient({ attempts: 1, timeoutMs: 1000 });
  try {
    for (const k of [1, 2]) {
      const probe = await probeBlockPack(http, 'http://127.0.0.1:9/os.img', undefined, undefined, asked);
      assert.equal(probe?.index.blockCount, n, `probe ${k} parsed the shared answer`);
    }
    assert.equal(answer.body.length, body.length, 'the shared answer keeps its body');
  } finally {
    await http.close();
  }
});

test('block index: the compact frame table gives every frame its blocks, offset and length, and every byte its frame', () => {
  // Frames of 1 to 64 blocks, some stored longer than 64 KiB (kept aside), over more than one checkpoint (64 frames).
  const frameBlocks: number[] = [];
  const frameLengths: number[] = [];
  for (let f = 0; f < 300; f++) {
    const n = f % 7 === 3 ? 1 + (f % 64) : 1;
    frameBlocks.push(n);
    frameLengths.push(n > 20 && f % 2 === 1 ? 0x10000 + f : 1 + ((f * 37) % (n * BS)));
  }
  const idx = parseBlockIndex(syntheticIndex(frameBlocks, frameLengths, 'frames'));
  assert.ok(
    frameLengths.some((l) => l > 0xffff),
    'some frames are longer than 64 KiB',
  );
  let first = 0;
  let start = PACK_HEADER_SIZE;
  for (let f = 0; f < frameBlocks.length; f++) {
    assert.equal(idx.frames.first(f), first, `frame ${f}: first block`);
    assert.equal(idx.frames.blocks(f), frameBlocks[f], `frame ${f}: blocks`);
    assert.equal(idx.frames.start(f), start, `frame ${f}: offset`);
    assert.equal(idx.frames.length(f), frameLengths[f], `frame ${f}: length`);
    for (let d = first; d < first + frameBlocks[f]; d++) assert.equal(idx.frames.of(d), f, `distinct block ${d}`);
    for (const at of [start, start + frameLengths[f] - 1]) assert.equal(idx.frames.at(at), f, `byte ${at}`);
    first += frameBlocks[f];
    start += frameLengths[f];
  }
  assert.equal(idx.frames.first(frameBlocks.length), idx.distinctCount, 'past the last frame: the distinct count');
  assert.equal(first, idx.distinctCount);
  assert.equal(idx.frames.start(frameBlocks.length), idx.packSize);
  assert.equal(idx.frames.at(idx.packSize), frameBlocks.length, 'past the last frame');
});

test('assemble: a pack block used by more tasks than a byte counts is kept for every one of them', async (t) => {
  // 300 one-chunk tasks (64 blocks of 512 bytes each, the span of a task at most one chunk), every one with the same
  // block in it that no seed has: its use count passes 255.
  const dir = await tmpDir(t, 'blockpack-uses');
  const www = join(dir, 'www');
  await mkdir(www, { recursive: true });
  const bs = 512;
  const chunk = 64 * bs;
  const common = textBytes(bs, 77);
  const image = Buffer.alloc(300 * chunk);
  for (let k = 0; k < 300; k++) {
    textBytes(chunk, 1000 + k).copy(image, k * chunk);
    common.copy(image, k * chunk + (k % 64) * bs);
  }
  await writeFile(join(www, 'os_2.img'), image);
  await packImage(join(www, 'os_2.img'), { outDir: www, blockSize: bs, level: 1, trainer: 'none', threads: 0 });
  const origin = await startOrigin({ root: www });
  const http = new HttpClient({ attempts: 2, retryBaseMs: 10, timeoutMs: 5000 });
  t.after(async () => {
    await http.close();
    await origin.close();
  });
  const probe = await probeBlockPack(http, `${origin.url}/os_2.img`);
  assert.ok(probe);
  const plan = await planBlockUpdate(probe, [], { cacheDir: join(dir, 'cache') });
  const out = join(dir, 'out.img');
  const sha256 = createHash('sha256').update(image).digest('hex');
  const result = await assembleBlocks(plan, out, {
    http,
    packUrl: probe.packUrl,
    dictUrl: probe.dictUrl,
    sha256,
    maxSpan: chunk,
  });
  assert.equal(result.sha256, sha256);
  assert.deepEqual(await readFile(out), image);
});

/** A block index of distinct blocks only (block b is distinct block b) in the given frames; no pack behind it. */
function syntheticIndex(frameBlocks: number[], frameLengths: number[], tag: string, hashes?: Buffer): Buffer {
  const distinct = frameBlocks.reduce((a, b) => a + b, 0);
  const rnd = (k: number) => createHash('sha256').update(`${tag}:${k}`).digest();
  return serializeBlockIndex({
    blockSize: BS,
    imageSize: distinct * BS,
    imageSha256: rnd(-1),
    packSize: PACK_HEADER_SIZE + frameLengths.reduce((a, b) => a + b, 0),
    packSha256: rnd(-2),
    dictSize: 0,
    dictSha256: rnd(-3),
    distinctOf: Int32Array.from({ length: distinct }, (_, b) => b),
    distinctCount: distinct,
    hashes: hashes ?? Buffer.alloc(distinct * HASH_BYTES),
    frameBlocks,
    frameLengths,
  });
}
