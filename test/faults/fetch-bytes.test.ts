// Fault class: large chunks multiplied by the request concurrency. Remote
// batches in flight are capped in chunk bytes: the chunks held by batches
// running together never exceed the budget (one batch always runs), whatever
// the concurrency; with room for many they overlap up to the concurrency.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { indexBuffer } from '../../lib/chunking/indexer.js';
import { planChunks } from '../../lib/plan/planner.js';
import { Assembler } from '../../lib/assemble/assembler.js';
import type { AssemblySink } from '../../lib/assemble/sink.js';
import type { Deliver, RemoteSource, Run } from '../../lib/assemble/remote-source.js';
import type { ChunkIndex } from '../../lib/format/caibx.js';
import { seededBytes } from '../helpers/images.js';
import { newProgress } from '../../lib/assemble/progress.js';

/** A remote source that serves chunks from memory after a short wait, recording the largest set in flight. */
class CountingSource implements RemoteSource {
  readonly kind = 'store';
  readonly stats = { requests: 0, bytes: 0 };
  running = 0;
  maxInFlight = 0;
  heldBytes = 0;
  maxHeldBytes = 0;
  /** Largest bytes held while more than one batch ran (the cap applies then). */
  maxSharedBytes = 0;
  constructor(
    private readonly index: ChunkIndex,
    private readonly data: Buffer,
  ) {}
  batches(runs: readonly Run[]): Run[][] {
    return runs.flatMap((r) => Array.from({ length: r.count }, (_, k) => [{ first: r.first + k, count: 1 }]));
  }
  async fetch(runs: readonly Run[], deliver: Deliver): Promise<void> {
    const i = runs[0].first;
    const size = this.index.chunkSize(i);
    this.running++;
    this.heldBytes += size;
    this.maxInFlight = Math.max(this.maxInFlight, this.running);
    this.maxHeldBytes = Math.max(this.maxHeldBytes, this.heldBytes);
    if (this.running > 1) this.maxSharedBytes = Math.max(this.maxSharedBytes, this.heldBytes);
    await sleep(15);
    this.stats.requests++;
    deliver(i, Buffer.from(this.data.subarray(this.index.start(i), this.index.end(i))));
    this.running--;
    this.heldBytes -= size;
  }
}

const sink = (): AssemblySink => ({
  put: () => {},
  readBack: async () => null,
  has: () => false,
  zeroFilled: true,
  retainRepeats: false,
  holdsData: false,
});

async function run(maxFetchBytes: number): Promise<{ source: CountingSource }> {
  const data = seededBytes(6 * 1024 * 1024, 'fetch-bytes');
  const index = indexBuffer(data, {
    params: { min: 256 * 1024, avg: 512 * 1024, max: 1024 * 1024 },
    digest: 'sha512-256',
  });
  const source = new CountingSource(index, data);
  const plan = planChunks(index, [], { nullSeed: false, selfSeed: false });
  const progress = newProgress(index.size);
  await new Assembler({ plan, sink: sink(), remote: source, concurrency: 8, maxFetchBytes, progress }).run();
  assert.equal(progress.fromNetwork, index.size, 'every chunk arrived');
  return { source };
}

test('remote batches in flight are capped in chunk bytes, not only in requests', { timeout: 30_000 }, async () => {
  for (const budget of [1024 * 1024, 2 * 1024 * 1024]) {
    const { source } = await run(budget);
    assert.ok(
      source.maxSharedBytes <= budget,
      `budget ${budget}: ${source.maxSharedBytes} bytes held by batches running together`,
    );
    assert.ok(
      source.maxInFlight < 8,
      `budget ${budget}: fewer batches than the concurrency ran (${source.maxInFlight})`,
    );
  }
  const roomy = await run(64 * 1024 * 1024);
  assert.equal(roomy.source.maxInFlight, 8, 'with room, the concurrency is the limit');
});
