// The block route as the engine runs it (lib/delta/routes.ts) against a real
// origin on 127.0.0.1: it streams (a prefix goes out while the pack request
// is stalled, and the first chunks while the block index is), its pack
// requests run ahead of the tasks, it resumes an interrupted extract from the
// partial file, a seed block that changed after indexing costs a frame, a
// stale pack hands over to the chunk route without a wrong byte, and a seed
// that lies when every chunk is local is repaired from the origin.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { open, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { HttpClient } from '../lib/fetch/http-client.js';
import { costBlockPath, packImage } from '../lib/blockpack/index.js';
import { indexBuffer } from '../lib/chunking/indexer.js';
import { serializeIndex, type ChunkIndex } from '../lib/format/caibx.js';
import { extractToFile, openExtractStream, planUpdate } from '../lib/delta/extract.js';
import { partialPaths } from '../lib/assemble/partial-file.js';
import { BufferPool, SLAB_BYTES } from '../lib/util/buffer-pool.js';
import { HashThread } from '../lib/util/hash-thread.js';
import { startOrigin, type Origin } from './helpers/origin.js';
import { tmpDir } from './helpers/tmp.js';
import { rewritten, seededBytes, type Region } from './helpers/images.js';

const BS = 4096;
const BLOCKS = 6144; // 24 MiB
const PARAMS = { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };

let dir: string;
let origin: Origin;
let v1Path: string;
let v2: Buffer;
let v2Index: ChunkIndex;
let sha: string;

before(async (t) => {
  dir = await tmpDir(t, 'block-route');
  const www = join(dir, 'www');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(www);
  const v1 = seededBytes(BLOCKS * BS, 'block-route:v1');
  // One changed block in every 64: the pack frames the update needs are spread over the whole image.
  const changed: Region[] = [];
  for (let b = 7; b < BLOCKS; b += 64) changed.push({ at: b * BS, length: BS });
  v2 = rewritten(v1, changed, 'block-route:v2');
  v1Path = join(dir, 'v1.img');
  await writeFile(v1Path, v1);
  await writeFile(join(www, 'v2.img'), v2);
  await packImage(join(www, 'v2.img'), { outDir: www, level: 1, dictSize: 0, threads: 0 });
  v2Index = indexBuffer(v2, { params: PARAMS, digest: 'sha512-256' });
  await writeFile(join(www, 'v2.img.caibx'), serializeIndex(v2Index));
  sha = createHash('sha256').update(v2).digest('hex');
  origin = await startOrigin({ root: www });
});
after(async () => {
  await origin?.close();
});

let n = 0;
function setup(): {
  http: HttpClient;
  out: string;
  source: Parameters<typeof extractToFile>[2] & { http: HttpClient };
  warnings: string[];
} {
  origin.clearFaults();
  origin.log.length = 0;
  origin.ranges = 'multi';
  const http = new HttpClient({ attempts: 3, retryBaseMs: 10, timeoutMs: 8000 });
  const warnings: string[] = [];
  return {
    http,
    warnings,
    out: join(dir, `out${++n}.img`),
    source: {
      http,
      rangeUrl: `${origin.url}/v2.img`,
      seeds: [{ path: v1Path }],
      cacheDir: join(dir, 'cache'),
      onWarning: (m) => warnings.push(m),
    },
  };
}

test('block route streams: a verified prefix goes out while the pack request is stalled', async () => {
  const { http, source } = setup();
  try {
    // The pack answer stops after a third of its body and never goes on: only a streaming route gets anywhere.
    // (The first pack request, the header and one frame, goes through.)
    origin.fault({
      kind: 'stall',
      path: '/v2.img.bpk',
      rangedOnly: true,
      skip: 1,
      afterBytes: 130 * 1024,
      stallMs: 60_000,
      times: Infinity,
    });
    const stream = openExtractStream(v2Index, { ...source, sha256: sha });
    const prefix = await new Promise<Buffer>((resolve, reject) => {
      const parts: Buffer[] = [];
      let received = 0;
      const timer = setTimeout(() => reject(new Error(`only ${received} bytes streamed in 30 s`)), 30_000);
      stream.on('data', (part: Buffer) => {
        parts.push(part);
        received += part.length;
        if (received < 4 * 1024 * 1024) return;
        clearTimeout(timer);
        stream.pause();
        resolve(Buffer.concat(parts));
      });
      stream.on('error', reject);
    });
    assert.ok(prefix.equals(v2.subarray(0, prefix.length)), `the first ${prefix.length} bytes are the target's`);
    const pack = origin.log.filter((e) => e.path === '/v2.img.bpk');
    assert.ok(
      pack.length >= 2 && pack.slice(1).every((e) => e.fault === 'stall'),
      'after the first, the only pack answers so far are stalled ones',
    );
    stream.destroy();
    await assert.rejects(stream.result);
  } finally {
    await http.close();
  }
});

test("the lead's stall (the chunk route serving the first bytes while the block index waits): a clear error, soon", async () => {
  const { http, source } = setup();
  try {
    // Every image range answer trickles a byte a second: no HTTP timeout ever fires, no chunk completes.
    origin.fault({ kind: 'trickle', path: '/v2.img', rangedOnly: true, intervalMs: 1000, times: Infinity });
    for (const run of ['file', 'stream'] as const) {
      const started = Date.now();
      const opts = { ...source, sha256: sha, stallMs: 2000 };
      const out = join(dir, `stalled-${run}.img`);
      const stream = run === 'stream' ? openExtractStream(v2Index, opts) : undefined;
      stream?.on('error', () => {}); // the same error as `result`
      const done = stream ? stream.result : extractToFile(v2Index, out, opts);
      let timer: NodeJS.Timeout | undefined;
      const limit = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${run}: still running after 20 s`)), 20_000);
      });
      try {
        await assert.rejects(Promise.race([done, limit]), (err: NodeJS.ErrnoException) => {
          assert.equal(err.code, 'ERR_DELTAD_STALLED', `${run}: ${err.message}`);
          return true;
        });
      } finally {
        clearTimeout(timer);
      }
      assert.ok(Date.now() - started < 10_000, `${run}: ended ${Date.now() - started} ms after the start`);
      assert.ok(
        origin.log.some((e) => e.path === '/v2.img' && e.fault === 'trickle'),
        'the lead was asking',
      );
      assert.ok(!existsSync(out), 'no output in place');
    }
  } finally {
    await http.close();
  }
});

/** Reads a stream until `bytes` have arrived (or fails after 30 s); resolves with them, the stream paused. */
function firstBytes(stream: NodeJS.ReadableStream, bytes: number): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const parts: Buffer[] = [];
    let received = 0;
    const timer = setTimeout(() => reject(new Error(`only ${received} bytes streamed in 30 s`)), 30_000);
    stream.on('data', (part: Buffer) => {
      parts.push(part);
      received += part.length;
      if (received < bytes) return;
      clearTimeout(timer);
      stream.pause();
      resolve(Buffer.concat(parts));
    });
    stream.on('error', reject);
  });
}

test('seeds first: the first chunks go out while the block index is still on its way', async () => {
  const { http, source } = setup();
  try {
    // The block index (after its one-byte probe) answers 200 and then stops after 1000 bytes: the block route
    // cannot plan, the first chunks still come.
    origin.fault({ kind: 'stall', path: '/v2.img.bpidx', skip: 1, afterBytes: 1000, stallMs: 60_000, times: Infinity });
    const stream = openExtractStream(v2Index, { ...source, sha256: sha });
    const prefix = await firstBytes(stream, 64 * 1024);
    assert.ok(prefix.equals(v2.subarray(0, prefix.length)), `the first ${prefix.length} bytes are the target's`);
    const index = origin.log.filter((e) => e.path === '/v2.img.bpidx');
    // The one-byte probe, then (once the first missing chunks are in) the body, still on its way and not retried.
    assert.ok(index.length <= 2 && index[0].status === 206, 'the probe answered');
    assert.ok(
      index.slice(1).every((e) => e.fault === 'stall'),
      'no block index body got through',
    );
    assert.equal(origin.stats('/v2.img.bpk').requests, 0, 'no pack request: the block route has not started');
    stream.destroy();
    await assert.rejects(stream.result);
  } finally {
    await http.close();
  }
});

test('seeds first: the block index body waits until the first missing chunks are fetched', async () => {
  const { http, source } = setup();
  try {
    // Queued first on a slow link, the block index would hold up the lead's first chunks (here answered in 400 ms).
    origin.fault({ kind: 'delay', path: '/v2.img', rangedOnly: true, delayMs: 400 });
    const isLead = (e: (typeof origin.log)[number]): boolean => e.path === '/v2.img' && e.fault === 'delay';
    const isBody = (e: (typeof origin.log)[number]): boolean => e.path === '/v2.img.bpidx' && e.range === undefined;
    let leadAnsweredFirst: boolean | undefined;
    const poll = setInterval(() => {
      if (leadAnsweredFirst === undefined && origin.log.some(isBody))
        leadAnsweredFirst = (origin.log.find(isLead)?.status ?? 0) !== 0;
    }, 2);
    try {
      const stream = openExtractStream(v2Index, { ...source, sha256: sha });
      const parts: Buffer[] = [];
      for await (const part of stream) parts.push(part as Buffer);
      assert.equal((await stream.result).mode, 'blocks');
      assert.ok(Buffer.concat(parts).equals(v2));
    } finally {
      clearInterval(poll);
    }
    assert.equal(leadAnsweredFirst, true, 'the first chunks were answered before the block index body was asked for');
  } finally {
    await http.close();
  }
});

test('block route: pack requests run ahead of the tasks that need them', async () => {
  const { http, source } = setup();
  try {
    // Single ranges (one request per frame) that each take 300 ms to answer; a 512 KiB window (256 KiB tasks,
    // one changed block each), so only two or three tasks are admitted at a time.
    origin.ranges = 'reject-multi';
    origin.fault({ kind: 'delay', path: '/v2.img.bpk', rangedOnly: true, delayMs: 300, times: Infinity });
    let waiting = 0;
    const poll = setInterval(() => {
      const open = origin.log.filter((e) => e.path === '/v2.img.bpk' && e.status === 0).length;
      waiting = Math.max(waiting, open);
    }, 5);
    try {
      const link = { rttMs: 2, bytesPerSec: 10e6 }; // no gap between frames is worth merging
      const stream = openExtractStream(v2Index, { ...source, link, sha256: sha, windowBytes: 512 * 1024 });
      const parts: Buffer[] = [];
      for await (const part of stream) parts.push(part as Buffer);
      assert.equal((await stream.result).mode, 'blocks');
      assert.ok(Buffer.concat(parts).equals(v2));
    } finally {
      clearInterval(poll);
    }
    const requests = origin.stats('/v2.img.bpk').requests;
    // The tasks admitted need three frames at most; ahead of them, the client's eight connections are all busy.
    assert.ok(waiting >= 6, `${waiting} of ${requests} pack requests open at once`);
  } finally {
    await http.close();
  }
});

test('block route: a seed block that changed after indexing costs a frame, not a wrong byte or the chunk route', async () => {
  const { http, source, warnings } = setup();
  const seed = join(dir, 'changing.img');
  try {
    await writeFile(seed, await readFile(v1Path));
    const mtime = new Date(1_700_000_000_000); // whole seconds: the cached indexes' key survives utimes
    await utimes(seed, mtime, mtime);
    const seeds = [{ path: seed }];
    assert.equal(
      (await planUpdate(v2Index, { ...source, seeds })).chosen,
      'blocks',
      'indexed, and the pack is cheapest',
    );
    // One byte of a block in the middle changes in place; size, inode and mtime stay: the caches still trust it.
    const fh = await open(seed, 'r+');
    await fh.write(Buffer.from([v2[12 * 1024 * 1024 + 100] ^ 0x40]), 0, 1, 12 * 1024 * 1024 + 100);
    await fh.close();
    await utimes(seed, mtime, mtime);
    // Asked to check blocks (checkBlocks, with the SHA-256), the small index is kept and every block checked by its
    // hash: the changed block is caught as it is read. By default the chunk IDs are the check and the plan keeps no
    // block hashes: the failed chunk has the whole index fetched again (after the planning's own) to find the block.
    for (const { checkBlocks, bodies } of [
      { checkBlocks: true, bodies: 1 },
      { checkBlocks: false, bodies: 2 },
    ]) {
      origin.log.length = 0;
      warnings.length = 0;
      const stream = openExtractStream(v2Index, { ...source, seeds, sha256: sha, checkBlocks });
      const parts: Buffer[] = [];
      for await (const part of stream) parts.push(part as Buffer);
      const r = await stream.result;
      assert.ok(Buffer.concat(parts).equals(v2), 'byte-identical result');
      assert.equal(r.mode, 'blocks', 'the block route finished it');
      assert.equal(r.seedMismatches, 1);
      assert.ok(
        warnings.some((w) => w.includes(seed) && /block 3072 at byte 12582912 does not match its hash/.test(w)),
        warnings.join('\n'),
      );
      const got = origin.log.filter((e) => e.path === '/v2.img.bpidx' && !e.range && e.status === 200);
      assert.equal(got.length, bodies, `the block index body, checkBlocks ${checkBlocks}`);
    }
  } finally {
    await rm(seed, { force: true });
    await http.close();
  }
});

test('block route: a block index that cannot be fetched again to check a failed chunk hands over to the chunk route', async () => {
  const { http, source, warnings } = setup();
  const seed = join(dir, 'changing-2.img');
  try {
    await writeFile(seed, await readFile(v1Path));
    const mtime = new Date(1_700_000_000_000);
    await utimes(seed, mtime, mtime);
    const seeds = [{ path: seed }];
    assert.equal((await planUpdate(v2Index, { ...source, seeds })).chosen, 'blocks');
    const fh = await open(seed, 'r+');
    await fh.write(Buffer.from([v2[12 * 1024 * 1024 + 100] ^ 0x40]), 0, 1, 12 * 1024 * 1024 + 100);
    await fh.close();
    await utimes(seed, mtime, mtime);
    // The planning's body GET goes through; the one after the failed chunk finds no index any more.
    origin.fault({ kind: 'status', status: 404, path: '/v2.img.bpidx', unrangedOnly: true, skip: 1, times: Infinity });
    // The chunk IDs are the check, so the plan dropped the block hashes (see the test above).
    const stream = openExtractStream(v2Index, { ...source, seeds, sha256: sha });
    const parts: Buffer[] = [];
    for await (const part of stream) parts.push(part as Buffer);
    const r = await stream.result;
    assert.ok(Buffer.concat(parts).equals(v2), 'byte-identical result');
    assert.notEqual(r.mode, 'blocks', 'the chunk route finished it');
    assert.ok(
      warnings.some((w) => /blocks route: .*bpidx: HTTP 404 .*fetched again to check blocks.*falling back/.test(w)),
      warnings.join('\n'),
    );
  } finally {
    await rm(seed, { force: true });
    await http.close();
  }
});

test('block route: pack frames damaged on their way (right length, wrong bytes) are fetched again, not emitted', async () => {
  const { http, source } = setup();
  try {
    // The pack is incompressible (frames stored raw): a flipped byte decodes to the right length, and only the
    // chunk IDs see it. The first pack request (header and first frame) is intact, the next one is damaged.
    origin.fault({ kind: 'wrong-bytes', path: '/v2.img.bpk', rangedOnly: true, skip: 1 });
    const stream = openExtractStream(v2Index, { ...source, sha256: sha });
    const parts: Buffer[] = [];
    for await (const part of stream) parts.push(part as Buffer);
    const r = await stream.result;
    assert.ok(Buffer.concat(parts).equals(v2), 'byte-identical result');
    assert.equal(r.mode, 'blocks', 'the block route finished it');
    const pack = origin.log.filter((e) => e.path === '/v2.img.bpk' && e.range);
    const damaged = pack.findIndex((e) => e.fault === 'wrong-bytes');
    assert.ok(damaged > 0, 'a pack request after the first was damaged');
    const spans = (e: { range?: string }) =>
      e
        .range!.replace('bytes=', '')
        .split(',')
        .map((r) => r.split('-').map(Number));
    const inDamaged = (at: number) => spans(pack[damaged]).some(([s, e]) => at >= s && at <= e);
    assert.ok(
      pack.slice(damaged + 1).some((e) => spans(e).some(([s]) => inDamaged(s))),
      `bytes of the damaged request were asked for again: ${pack.map((e) => e.range).join(' ')}`,
    );
  } finally {
    await http.close();
  }
});

test('block route with its hashing thread (hashThread): damaged frames are still caught and fetched again', async () => {
  const { http, source } = setup();
  const proto = HashThread.prototype;
  const { digests } = proto;
  let hashedThere = 0;
  proto.digests = function (this: HashThread, algorithm: string, data: Uint8Array, ends: number[]) {
    hashedThere += ends.length;
    return digests.call(this, algorithm, data, ends);
  };
  try {
    origin.fault({ kind: 'wrong-bytes', path: '/v2.img.bpk', rangedOnly: true, skip: 1 });
    // The chunk IDs are the check (by default, with the SHA-256 too), and the thread is what computes them.
    const stream = openExtractStream(v2Index, { ...source, sha256: sha, hashThread: true });
    const parts: Buffer[] = [];
    for await (const part of stream) parts.push(part as Buffer);
    const r = await stream.result;
    assert.ok(Buffer.concat(parts).equals(v2), 'byte-identical result');
    assert.equal(r.mode, 'blocks', 'the block route finished it');
    assert.ok(hashedThere > 0, 'chunks were checked on the hashing thread');
    assert.ok(
      origin.log.some((e) => e.fault === 'wrong-bytes'),
      'a pack answer was damaged',
    );

    // Asked to check blocks (with the SHA-256), the damaged frame is caught by its blocks' hashes, and no chunk ID is
    // computed at all.
    hashedThere = 0;
    origin.log.length = 0;
    origin.fault({ kind: 'wrong-bytes', path: '/v2.img.bpk', rangedOnly: true, skip: 1 });
    const checked = openExtractStream(v2Index, { ...source, sha256: sha, checkBlocks: true, hashThread: true });
    const again: Buffer[] = [];
    for await (const part of checked) again.push(part as Buffer);
    assert.equal((await checked.result).mode, 'blocks');
    assert.ok(Buffer.concat(again).equals(v2), 'byte-identical result');
    assert.ok(
      origin.log.some((e) => e.fault === 'wrong-bytes'),
      'a pack answer was damaged',
    );
    assert.equal(hashedThere, 0, 'no chunk was hashed for its ID');
  } finally {
    proto.digests = digests;
    await http.close();
  }
});

test('block route resumes: an interrupted extract keeps its verified chunks, the rerun fetches only the rest', async () => {
  const { http, out, source } = setup();
  try {
    const full = await extractToFile(`${origin.url}/v2.img.caibx`, join(dir, 'full.img'), source);
    assert.equal(full.mode, 'blocks');
    origin.log.length = 0;
    origin.fault({
      kind: 'stall',
      path: '/v2.img.bpk',
      rangedOnly: true,
      skip: 1,
      afterBytes: 130 * 1024,
      stallMs: 20_000,
      times: Infinity,
    });
    const ctl = new AbortController();
    const first = extractToFile(`${origin.url}/v2.img.caibx`, out, {
      ...source,
      signal: ctl.signal,
      onProgress: (p) => {
        if (p.done >= 4 * 1024 * 1024) ctl.abort(new Error('interrupted'));
      },
    });
    await assert.rejects(first, /interrupted/);
    assert.ok(!existsSync(out), 'no output after the interruption');
    const { partial, journal } = partialPaths(out);
    assert.ok(existsSync(partial) && existsSync(journal), 'partial file and journal kept');

    origin.clearFaults();
    origin.log.length = 0;
    const r = await extractToFile(`${origin.url}/v2.img.caibx`, out, { ...source, sha256: sha });
    assert.equal(r.mode, 'blocks');
    assert.ok((await readFile(out)).equals(v2), 'byte-identical result');
    assert.ok(r.resumedBytes >= 4 * 1024 * 1024, `resumed ${r.resumedBytes} bytes`);
    assert.ok(
      r.fromNetwork < full.fromNetwork,
      `fewer pack bytes the second time (${r.fromNetwork} < ${full.fromNetwork})`,
    );
    assert.equal(r.fromSeeds + r.fromNetwork + r.fromZero, v2.length, 'resumed bytes count as local');
    assert.ok(!existsSync(partial) && !existsSync(journal));
  } finally {
    await http.close();
  }
});

test('block route, stale pack while streaming: the chunk route continues, no wrong chunk is emitted', async () => {
  const { http, source, warnings } = setup();
  const www = join(dir, 'www');
  try {
    // A new image at the same URL whose pack was not rebuilt: its blocks past 10 MiB differ.
    const v3 = rewritten(v2, [{ at: 2600 * BS, length: 4 * BS }], 'block-route:v3');
    const v3Index = indexBuffer(v3, { params: PARAMS, digest: 'sha512-256' });
    await writeFile(join(www, 'v2.img'), v3);
    // No SHA-256 known: only the target chunk index can tell the pack's image from the target.
    const stream = openExtractStream(v3Index, source);
    const parts: Buffer[] = [];
    let offset = 0;
    for await (const part of stream) {
      const b = part as Buffer;
      assert.ok(b.equals(v3.subarray(offset, offset + b.length)), `bytes at ${offset} are the target's`);
      offset += b.length;
      parts.push(b);
    }
    const r = await stream.result;
    assert.equal(offset, v3.length);
    assert.equal(r.mode, 'range', 'finished on the chunk route');
    assert.ok(
      warnings.some((w) => /not the target index's image.*falling back to the chunk path/.test(w)),
      warnings.join('\n'),
    );
  } finally {
    await writeFile(join(www, 'v2.img'), v2);
    await http.close();
  }
});

test('a seed that lies while every chunk is local: the chunk comes from the origin, or the assembly fails clearly', async () => {
  const { http, out, source, warnings } = setup();
  try {
    // The seed claims to be v2 (its index is v2's) but one byte changed after indexing.
    const lying = join(dir, 'lying.img');
    const bytes = Buffer.from(v2);
    bytes[5 * 1024 * 1024 + 17] ^= 0x40;
    await writeFile(lying, bytes);
    const seeds = [{ path: lying, index: v2Index }];
    const r = await extractToFile(v2Index, out, { ...source, seeds, blockPack: false, sha256: sha });
    assert.ok((await readFile(out)).equals(v2));
    assert.equal(r.seedMismatches, 1);
    assert.equal(r.mode, 'range');
    assert.ok(r.fromNetwork > 0 && r.fromNetwork <= PARAMS.max);
    assert.ok(
      warnings.some((w) => w.includes(lying) && /fetching it remotely/.test(w)),
      warnings.join('\n'),
    );

    const stream = openExtractStream(v2Index, { ...source, seeds, blockPack: false, sha256: sha });
    const parts: Buffer[] = [];
    for await (const part of stream) parts.push(part as Buffer);
    assert.ok(Buffer.concat(parts).equals(v2));
    assert.equal((await stream.result).seedMismatches, 1);

    // No origin at all: a clear error, and no output.
    const out2 = join(dir, 'no-origin.img');
    await assert.rejects(
      extractToFile(v2Index, out2, { seeds, cacheDir: source.cacheDir }),
      /not available locally and there is no remote source/,
    );
    assert.ok(!existsSync(out2));
  } finally {
    await http.close();
  }
});

test('block route: every pool buffer is handed back, a pack answer cut mid-frame too', async () => {
  const { http, out, source } = setup();
  const proto = BufferPool.prototype;
  const { take, give } = proto;
  const pooled = new Map<ArrayBufferLike, Set<number>>();
  proto.take = function (this: BufferPool, size: number): Buffer {
    const buf = take.call(this, size);
    if (buf.buffer.byteLength === SLAB_BYTES) {
      if (!pooled.has(buf.buffer)) pooled.set(buf.buffer, new Set());
      pooled.get(buf.buffer)!.add(buf.byteOffset);
    }
    return buf;
  };
  proto.give = function (this: BufferPool, buf: Uint8Array): void {
    pooled.get(buf.buffer)?.delete(buf.byteOffset);
    give.call(this, buf);
  };
  try {
    origin.fault({ kind: 'cut', path: '/v2.img.bpk', rangedOnly: true, skip: 1, afterBytes: 5000, times: 1 });
    const r = await extractToFile(v2Index, out, { ...source, sha256: sha });
    assert.equal(r.mode, 'blocks');
    assert.ok((await readFile(out)).equals(v2));
    assert.equal(origin.log.filter((e) => e.fault === 'cut').length, 1, 'the cut was injected');
    const left = [...pooled.values()].reduce((n, s) => n + s.size, 0);
    assert.equal(left, 0, 'pool buffers never handed back');
  } finally {
    proto.take = take;
    proto.give = give;
    await http.close();
  }
});

test('block path: the index tables are kept only when asked to check blocks', async () => {
  const { http, source } = setup();
  try {
    const opts = { http, imageUrl: source.rangeUrl!, seeds: [v1Path], cacheDir: source.cacheDir };
    const checked = await costBlockPath({ ...opts, checkBlocks: true });
    assert.ok(checked?.plan.full, 'asked to check blocks, the small index keeps its tables');
    const unchecked = await costBlockPath(opts);
    assert.ok(unchecked && unchecked.plan.full === undefined, 'by default they are dropped once planned');
  } finally {
    await http.close();
  }
});
