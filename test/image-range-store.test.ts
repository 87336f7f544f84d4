// The fleet proxy's byte-range chunk source is a ChunkStore like any other:
// it hands out verified chunks only, even when the upstream image changed
// under the index it was shown.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { HttpClient } from '../lib/fetch/http-client.js';
import { ImageRangeStore } from '../lib/fleet/image-range-store.js';
import { indexBuffer } from '../lib/chunking/indexer.js';
import { ChunkVerifyError } from '../lib/errors.js';
import { startOrigin } from './helpers/origin.js';
import { tmpDir } from './helpers/tmp.js';
import { seededBytes } from './helpers/images.js';

test('image range store: verified chunks only; a chunk whose image bytes changed is an error, after the good ones (getMany)', async (t) => {
  const dir = await tmpDir(t, 'image-range');
  const origin = await startOrigin({ root: dir });
  const http = new HttpClient({ attempts: 1, timeoutMs: 5000 });
  t.after(async () => {
    await http.close();
    await origin.close();
  });
  const image = seededBytes(512 * 1024, 'image-range');
  const index = indexBuffer(image, {
    params: { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 },
    digest: 'sha512-256',
  });
  assert.ok(index.count >= 3);
  const changed = Buffer.from(image);
  changed[index.start(1) + 5] ^= 1; // chunk 1 is no longer what the index says
  await writeFile(join(dir, 'os.img'), changed);
  const store = new ImageRangeStore({ client: http });
  store.addImage(`${origin.url}/os.img`, index);
  const req = (i: number) => ({ id: index.id(i), size: index.chunkSize(i) });

  assert.ok((await store.get(req(0)))!.equals(image.subarray(0, index.end(0))));
  await assert.rejects(
    store.get(req(1)),
    (err: Error) => err instanceof ChunkVerifyError && /does not match its ID/.test(err.message),
  );
  const got = new Map<number, Buffer>();
  await assert.rejects(
    async () => {
      for await (const { index: k, data } of store.getMany([req(0), req(1), req(2)])) got.set(k, data);
    },
    (err: Error) => err instanceof ChunkVerifyError && err.message.includes(index.idHex(1)),
  );
  assert.deepEqual([...got.keys()].sort(), [0, 2], 'the changed chunk is not yielded');
  assert.ok(got.get(2)!.equals(image.subarray(index.start(2), index.end(2))));
  assert.equal(await store.get({ id: Buffer.alloc(32, 7) }), null, 'an unknown chunk is null');
});
