// openExtractStream on an index still on its way (ArrivingIndex): the first
// chunks stream from the head of the table, the rest once the whole index has
// arrived; a whole index that does not start with the head, describes another
// size, or never arrives fails the stream, which then never ends looking
// complete. Real origin on 127.0.0.1 (byte ranges), real seed file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { openExtractStream, type ArrivingIndex } from '../lib/delta/extract.js';
import { IndexParser, serializeIndex, type ChunkIndex } from '../lib/format/caibx.js';
import { IndexFormatError, OriginError } from '../lib/errors.js';
import { startOrigin, type Origin } from './helpers/origin.js';
import { FLEET_PARAMS, makeReleases, type Release } from './helpers/fleet.js';
import { indexBuffer } from '../lib/chunking/indexer.js';
import { fileTmpDir } from './helpers/tmp.js';

const SIZE = 4 * 1024 * 1024;
const dir = fileTmpDir('arriving-stream');
let shared: Promise<{ v1: Release; v2: Release; root: string; origin: Origin }> | undefined;
function fixture() {
  shared ??= (async () => {
    const root = join(dir, 'origin');
    await mkdir(root);
    const [v1, v2] = await makeReleases(root, SIZE, 2);
    return { v1, v2, root, origin: await startOrigin({ root }) };
  })();
  return shared;
}
test.after(async () => {
  if (shared) await (await shared).origin.close();
});

/** The first `n` chunks of `index`, as the parser hands them out while the rest is still on its way. */
function headOf(index: ChunkIndex, n: number): ChunkIndex {
  const bytes = serializeIndex(index);
  const parser = new IndexParser({}, bytes.length);
  parser.push(bytes.subarray(0, 64 + 40 * n));
  const head = parser.prefix()!;
  assert.equal(head.count, n);
  return head;
}

/** Reads the stream to its end or its error: the bytes, and the error if any. */
async function drain(s: NodeJS.ReadableStream & { result: Promise<unknown> }) {
  const parts: Buffer[] = [];
  let error: unknown;
  try {
    for await (const b of s) parts.push(b as Buffer);
  } catch (err) {
    error = err;
  }
  await s.result.catch((err: unknown) => (error ??= err));
  return { body: Buffer.concat(parts), error };
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

test('an arriving index: the head streams first, the whole follows, the image is exact', async () => {
  const f = await fixture();
  let wholeGiven = false;
  let bytesBeforeWhole = -1;
  let resolveWhole!: (i: ChunkIndex) => void;
  const arriving: ArrivingIndex = {
    head: headOf(f.v2.index, 8),
    size: SIZE,
    whole: new Promise((r) => (resolveWhole = r)),
  };
  const s = openExtractStream(arriving, {
    seeds: [{ path: join(f.root, f.v1.name), index: f.v1.index }],
    rangeUrl: `${f.origin.url}/${f.v2.name}`,
    cacheDir: join(dir, 'cache'),
    sha256: sha(f.v2.data),
  });
  const parts: Buffer[] = [];
  let got = 0;
  for await (const b of s) {
    parts.push(b as Buffer);
    got += (b as Buffer).length;
    if (!wholeGiven) {
      // Bytes came before the whole index was handed over: give it now.
      wholeGiven = true;
      bytesBeforeWhole = got;
      resolveWhole(f.v2.index);
    }
  }
  const r = await s.result;
  assert.ok(bytesBeforeWhole > 0 && bytesBeforeWhole <= arriving.head.size, `${bytesBeforeWhole} bytes before`);
  assert.ok(Buffer.concat(parts).equals(f.v2.data));
  assert.equal(r.sha256, sha(f.v2.data));
});

for (const c of [
  {
    what: 'an index that does not start with the head',
    // The same image with its first byte changed: chunk 0 has another ID, every offset is the same.
    whole: (f: { v2: Release }) => {
      const data = Buffer.from(f.v2.data);
      data[0] ^= 0xff;
      return indexBuffer(data, { params: FLEET_PARAMS, digest: 'sha512-256' });
    },
    err: OriginError,
    message: /does not start with the chunks streamed/,
  },
  {
    what: 'an index malformed past the head',
    whole: () => {
      throw new IndexFormatError('item[9].offset', 424, 'offsets must strictly increase', 'test');
    },
    err: IndexFormatError,
    message: /offsets must strictly increase/,
  },
]) {
  test(`${c.what}: the stream fails and never ends looking complete`, async () => {
    const f = await fixture();
    const arriving: ArrivingIndex = {
      head: headOf(f.v2.index, 8),
      size: SIZE,
      whole: new Promise((resolve, reject) =>
        setTimeout(() => {
          try {
            resolve(c.whole(f));
          } catch (err) {
            reject(err);
          }
        }, 200),
      ),
    };
    const s = openExtractStream(arriving, {
      seeds: [{ path: join(f.root, f.v1.name), index: f.v1.index }],
      rangeUrl: `${f.origin.url}/${f.v2.name}`,
      cacheDir: join(dir, 'cache'),
      sha256: sha(f.v2.data),
    });
    const { body, error } = await drain(s);
    assert.ok(error instanceof c.err && c.message.test(error.message), `failed with ${error}`);
    assert.ok(body.length < SIZE, `${body.length} of ${SIZE} bytes`);
    assert.ok(body.equals(f.v2.data.subarray(0, body.length)), 'what came is the start of the image');
  });
}
