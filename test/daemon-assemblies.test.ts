// The shared assembly (daemon/assemblies.ts) in front of a stand-in engine whose wind-down (closing its seeds,
// summing up) we control: a client's download ends with the engine's last verified byte, not with the wind-down.
// (Ended late, a response kept its connection busy past the server's close, which then waited out the keep-alive.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Readable, Writable } from 'node:stream';
import { type AssemblyClient, AssemblyRegistry } from '../daemon/assemblies.js';
import type { ExtractResult, ExtractStream } from '../lib/delta/extract.js';
import { newProgress } from '../lib/assemble/progress.js';

/** An engine that streams `data` at once, then settles its result only when `windDown` is called. */
function engine(data: Buffer): { stream: ExtractStream; windDown: (err?: Error) => void } {
  let windDown!: (err?: Error) => void;
  const progress = { ...newProgress(data.length), done: data.length };
  const result = new Promise<ExtractResult>((resolve, reject) => {
    windDown = (err) =>
      err ? reject(err) : resolve({ ...progress, mode: 'range', wallMs: 0, resumedBytes: 0, seedMismatches: 0 });
  });
  const half = data.length >> 1;
  const stream = Object.assign(Readable.from([data.subarray(0, half), data.subarray(half)], { objectMode: false }), {
    progress,
    result,
    acknowledge: () => {},
  });
  return { stream, windDown };
}

/** All that `client` sends, or 'late' when it has not ended within `ms`. */
async function receive(client: AssemblyClient, ms: number): Promise<Buffer | 'late'> {
  const parts: Buffer[] = [];
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      parts.push(Buffer.from(chunk));
      cb();
    },
  });
  const ended = client.send(out).then(() => Buffer.concat(parts));
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), ms)));
  try {
    return await Promise.race([ended, late]);
  } finally {
    clearTimeout(timer);
  }
}

const DATA = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7) & 0xff));

test("clients' downloads end with the last verified byte, while the engine still winds down", async () => {
  const { stream, windDown } = engine(DATA);
  const registry = new AssemblyRegistry(45_000);
  const { assembly } = registry.acquire('k', DATA.length, async () => stream);
  const a = assembly.join();
  const b = assembly.join();
  const [gotA, gotB] = await Promise.all([receive(a, 5_000), receive(b, 5_000)]);
  assert.ok(gotA !== 'late' && gotA.equals(DATA), 'client A got the whole image and its end before the wind-down');
  assert.ok(gotB !== 'late' && gotB.equals(DATA), 'client B too');
  assert.equal(assembly.finished, true);
  assert.deepEqual(registry.active, [], 'not counted as running');
  // The summary (index adoption, the log line) still comes with the engine's result.
  windDown();
  assert.equal((await assembly.result).total, DATA.length);
  assert.equal(assembly.error, undefined);
});

test('a verified image still ends cleanly for a client that reads on after the engine failed in its wind-down', async () => {
  const { stream, windDown } = engine(DATA);
  const registry = new AssemblyRegistry(45_000);
  const { assembly } = registry.acquire('k', DATA.length, async () => stream);
  const slow = assembly.join();
  // The engine's stream ends while the client has not read yet; then its wind-down fails.
  await new Promise<void>((resolve) => stream.once('end', resolve));
  windDown(new Error('closing a seed failed'));
  await assert.rejects(assembly.result, /closing a seed failed/);
  const got = await receive(slow, 5_000);
  assert.ok(got !== 'late' && got.equals(DATA), 'the client got the whole verified image and its end');
});

test('a stream that ends short is not a finished image: the client is cut', async () => {
  const { stream, windDown } = engine(DATA);
  const registry = new AssemblyRegistry(45_000);
  const { assembly } = registry.acquire('k', DATA.length + 1, async () => stream);
  const client = assembly.join();
  const got = receive(client, 5_000);
  windDown();
  await Promise.all([
    assert.rejects(assembly.result, /produced 300000 of 300001 bytes/),
    assert.rejects(got, /produced 300000 of 300001 bytes/),
  ]);
  assert.equal(assembly.finished, false);
});
