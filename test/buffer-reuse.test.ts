// Buffers of a stream are reused only once every consumer is done with them: the ordered stream hands a put's
// buffer back when the bytes are acknowledged (never otherwise), and the shared assembly acknowledges only what
// every client's writes have completed. A producer here scribbles over each buffer it gets back, so a buffer handed
// back too early shows as a wrong SHA-256 at a slow client.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { OrderedStream } from '../lib/assemble/ordered-stream.js';
import { newProgress } from '../lib/assemble/progress.js';
import { indexBuffer } from '../lib/chunking/indexer.js';
import type { ChunkIndex } from '../lib/format/caibx.js';
import type { ExtractResult, ExtractStream } from '../lib/delta/extract.js';
import { SharedAssembly } from '../daemon/assemblies.js';
import { seededBytes } from './helpers/images.js';
import { TEST_PARAMS } from './helpers/delta-images.js';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function target(size: number): { bytes: Buffer; index: ChunkIndex } {
  const bytes = seededBytes(size, `reuse:${size}`);
  return { bytes, index: indexBuffer(bytes, { params: TEST_PARAMS, digest: 'sha256' }) };
}

/** Chunk groups of about `bytes` each, in order: [first, count]. */
function groups(index: ChunkIndex, bytes: number): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i < index.count; ) {
    let n = 1;
    while (i + n < index.count && index.end(i + n) - index.start(i) <= bytes) n++;
    out.push([i, n]);
    i += n;
  }
  return out;
}

test('ordered stream: a put is handed back once its bytes are acknowledged, never without acknowledgement', async () => {
  const { bytes, index } = target(1024 * 1024);
  assert.ok(index.count > 8, `${index.count} chunks`);
  for (const acknowledged of [true, false]) {
    const stream = new OrderedStream({
      target: index,
      start: 0,
      end: index.size,
      windowBytes: index.size,
      sha256: sha(bytes),
      onCancel: () => {},
      acknowledged,
    });
    const released: number[] = [];
    const half = Math.floor(index.count / 2);
    // Chunks [0, half) in one buffer, the rest one buffer each, put last first.
    for (let i = index.count - 1; i >= half; i--)
      stream.put(i, 1, Buffer.from(bytes.subarray(index.start(i), index.end(i))), () => released.push(i));
    const head = Buffer.from(bytes.subarray(0, index.end(half - 1)));
    stream.put(0, half, head, () => released.push(0));
    // Flowing, as the shared assembly reads: one piece per push (an async iterator would concatenate them).
    const pieces: Buffer[] = [];
    stream.on('data', (b: Buffer) => pieces.push(b));
    await new Promise((r) => stream.on('end', r));
    assert.equal(sha(Buffer.concat(pieces)), sha(bytes));
    assert.equal(pieces[0].length, head.length, 'the first put went out as one piece');
    assert.deepEqual(released, [], 'nothing is handed back before an acknowledgement');
    if (!acknowledged) continue;
    stream.acknowledge(head.length - 1);
    assert.deepEqual(released, [], 'a put is handed back only when all of it is acknowledged');
    stream.acknowledge(index.end(half));
    assert.deepEqual(released, [0, half]);
    stream.acknowledge(index.size);
    assert.equal(released.length, 1 + index.count - half);
    assert.equal(new Set(released).size, released.length, 'each put handed back once');
  }
});

test('ordered stream: pieces never emitted are handed back when it is destroyed, emitted ones are not', async () => {
  const { bytes, index } = target(512 * 1024);
  const stream = new OrderedStream({
    target: index,
    start: 0,
    end: index.size,
    windowBytes: index.size,
    onCancel: () => {},
    acknowledged: true,
  });
  stream.on('error', () => {});
  const released: number[] = [];
  const put = (i: number) =>
    stream.put(i, 1, Buffer.from(bytes.subarray(index.start(i), index.end(i))), () => released.push(i));
  put(0);
  put(2); // waits for chunk 1
  await new Promise<void>((r) => stream.once('data', () => r()));
  stream.destroy();
  assert.deepEqual(released, [2]);
  put(3); // after the end: at once
  assert.deepEqual(released, [2, 3]);
});

test('ordered stream: with an acknowledging consumer, the window counts from the acknowledged byte', async () => {
  const { bytes, index } = target(1024 * 1024);
  const stream = new OrderedStream({
    target: index,
    start: 0,
    end: index.size,
    windowBytes: 256 * 1024,
    onCancel: () => {},
    acknowledged: true,
  });
  stream.on('data', () => {});
  const upTo = index.chunkAt(300 * 1024);
  stream.put(0, upTo, Buffer.from(bytes.subarray(0, index.start(upTo))), () => {});
  await new Promise((r) => setImmediate(r));
  // Everything before `upTo` is emitted, nothing acknowledged: a task ending 200 KiB further waits.
  const far = index.chunkAt(index.start(upTo) + 200 * 1024);
  let admitted = false;
  const waiting = stream.admit(index.start(far), index.end(far), far);
  assert.ok(waiting, 'not admitted while the consumer holds the bytes');
  void Promise.resolve(waiting).then(() => (admitted = true));
  await new Promise((r) => setImmediate(r));
  assert.equal(admitted, false);
  stream.acknowledge(index.start(upTo));
  await new Promise((r) => setImmediate(r));
  assert.equal(admitted, true, 'admitted once the consumer is done with them');
  stream.destroy();
});

/**
 * A stand-in for the engine: an ordered stream fed from a few reused buffers, each filled with 0xee when it comes
 * back (as the next task's read would overwrite it).
 */
function reusingEngine(bytes: Buffer, index: ChunkIndex, windowBytes: number) {
  const free: Buffer[] = [];
  const stats = { allocated: 0, puts: 0, released: 0 };
  const stream = new OrderedStream({
    target: index,
    start: 0,
    end: index.size,
    windowBytes,
    sha256: sha(bytes),
    onCancel: () => {},
    acknowledged: true,
  });
  const result = (async (): Promise<ExtractResult> => {
    for (const [first, count] of groups(index, 64 * 1024)) {
      const start = index.start(first);
      const end = index.end(first + count - 1);
      await stream.admit(start, end, first);
      if (stream.destroyed) throw new Error('destroyed');
      let buf = free.pop();
      if (!buf) {
        stats.allocated++;
        buf = Buffer.alloc(128 * 1024);
      }
      bytes.copy(buf, 0, start, end);
      stats.puts++;
      const mine = buf;
      stream.put(first, count, buf.subarray(0, end - start), () => {
        stats.released++;
        mine.fill(0xee);
        free.push(mine);
      });
      await sleep(0);
    }
    await stream.complete;
    return { ...newProgress(index.size), mode: 'range', wallMs: 0, resumedBytes: 0, seedMismatches: 0 };
  })();
  result.catch(() => {});
  return { stats, stream: Object.assign(stream, { progress: newProgress(index.size), result }) as ExtractStream };
}

/** A client whose writes complete late (a slow socket): it reads each chunk only when completing the write. */
function slowClient(delayMs: number): { out: Writable; digest: () => string; writes: () => number } {
  const hash = createHash('sha256');
  let writes = 0;
  const out = new Writable({
    highWaterMark: 64 * 1024,
    write(chunk: Buffer, _enc, cb) {
      writes++;
      setTimeout(() => {
        hash.update(chunk);
        cb();
      }, delayMs);
    },
  });
  return { out, digest: () => hash.digest('hex'), writes: () => writes };
}

/** A shared assembly of a `size`-byte image from the reusing engine, with 512 KiB of window and of client buffer. */
function shared(size: number) {
  const { bytes, index } = target(size);
  const engine = reusingEngine(bytes, index, 512 * 1024);
  const assembly = new SharedAssembly(
    'reuse',
    index.size,
    async () => engine.stream,
    () => {},
    10_000,
    512 * 1024,
  );
  return { bytes, index, engine, assembly };
}

test('shared assembly: buffers are reused only after every client has written them', async () => {
  const { bytes, index, engine, assembly } = shared(8 * 1024 * 1024);
  const fast = slowClient(0);
  const slow = slowClient(2);
  const a = assembly.join();
  const b = assembly.join();
  await Promise.all([a.send(fast.out), b.send(slow.out)]);
  await assembly.result;
  assert.equal(fast.digest(), sha(bytes), 'the fast client got the image');
  assert.equal(slow.digest(), sha(bytes), 'the slow client got the image: no buffer was reused under it');
  const { allocated, puts, released } = engine.stats;
  assert.ok(puts > 100, `${puts} puts`);
  assert.equal(released, puts, 'every buffer came back once both clients had it');
  // What can be out at once: the window, the clients' buffer, the stream's own 1 MiB and the writes in flight,
  // each a piece or so over, in puts of the average size; not one buffer per put.
  const bound = Math.ceil((512 * 1024 + 512 * 1024 + 1024 * 1024 + 2 * 64 * 1024) / (index.size / puts)) + 8;
  assert.ok(allocated <= bound, `${allocated} buffers allocated for ${puts} puts (at most ${bound})`);
});

test('shared assembly: a client that leaves midway lets the others finish, and its share is released', async () => {
  const { bytes, engine, assembly } = shared(4 * 1024 * 1024);
  const stays = slowClient(1);
  const leaves = slowClient(1);
  const a = assembly.join();
  const b = assembly.join();
  const leaving = b.send(leaves.out);
  leaving.catch(() => {});
  setTimeout(() => leaves.out.destroy(), 200);
  await a.send(stays.out);
  await assert.rejects(leaving, /went away|destroyed|premature/i);
  assert.ok(leaves.out.destroyed);
  assert.equal(stays.digest(), sha(bytes));
  assert.equal(engine.stats.released, engine.stats.puts);
});

test('ordered stream: on a whole-file digest mismatch, the put held back unemitted is handed back', async () => {
  const { bytes, index } = target(512 * 1024);
  const stream = new OrderedStream({
    target: index,
    start: 0,
    end: index.size,
    windowBytes: index.size,
    sha256: sha(Buffer.from('something else')),
    onCancel: () => {},
    acknowledged: true,
  });
  const failed = new Promise<Error>((r) => stream.on('error', r));
  stream.on('data', () => {});
  const released: number[] = [];
  const last = index.count - 1;
  stream.put(0, last, Buffer.from(bytes.subarray(0, index.start(last))), () => released.push(0));
  stream.put(last, 1, Buffer.from(bytes.subarray(index.start(last))), () => released.push(last));
  assert.equal(((await failed) as NodeJS.ErrnoException).code, 'ERR_DELTAD_SHA256');
  assert.deepEqual(released, [last], 'the last put was never emitted: nobody holds it');
  stream.acknowledge(index.start(last));
  assert.deepEqual(released, [last, 0], 'an emitted put is still handed back on acknowledgement');
  stream.acknowledge(index.size);
  assert.deepEqual(released, [last, 0], 'each put handed back once');
});
