// multipart/byteranges parsing (quirks, lies, truncation, any split of the
// body) and RangeFetcher against a real origin in every Range mode.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MultipartParser, multipartBoundary, parseContentRange, type ContentRange } from '../lib/fetch/multipart.js';
import { RangeFetcher } from '../lib/fetch/range-fetcher.js';
import { HttpClient } from '../lib/fetch/http-client.js';
import { startOrigin, type Origin } from './helpers/origin.js';
import { tmpDir } from './helpers/tmp.js';
import { MultiRangeUnsupportedError, RangeUnsupportedError } from '../lib/errors.js';
import { seededBytes } from './helpers/images.js';
import { indexBuffer } from '../lib/chunking/indexer.js';
import { RangeSource } from '../lib/assemble/remote-source.js';
import { CostModel } from '../lib/plan/cost.js';

function parseAll(
  body: Buffer,
  splits: number[],
  boundary = 'XyZ',
): { parts: ContentRange[]; data: Map<number, Buffer> } {
  const parts: ContentRange[] = [];
  const data = new Map<number, Buffer>();
  const p = new MultipartParser(
    boundary,
    {
      onPart: (r) => parts.push(r),
      onData: (off, b) => {
        const r = parts[parts.length - 1];
        const prev = data.get(r.start) ?? Buffer.alloc(0);
        assert.equal(off, r.start + prev.length, 'data arrives in order at its offset');
        data.set(r.start, Buffer.concat([prev, b]));
      },
    },
    'test',
  );
  let pos = 0;
  for (const s of [...splits, body.length]) {
    p.write(body.subarray(pos, s));
    pos = s;
  }
  p.end();
  return { parts, data };
}

const d1 = Buffer.from('--XyZ\r\n--XyZ--\r\nbinary with the boundary inside');
const d2 = seededBytes(300, 'ranges:d2');

function body(eol: string, leadingEol: boolean): Buffer {
  return Buffer.concat([
    Buffer.from(
      `${leadingEol ? eol : ''}--XyZ${eol}Content-Type: application/octet-stream${eol}Content-Range: bytes 10-${10 + d1.length - 1}/1000${eol}${eol}`,
    ),
    d1,
    Buffer.from(`${eol}--XyZ  ${eol}content-range:bytes 500-799/1000${eol}${eol}`),
    d2,
    Buffer.from(`${eol}--XyZ--${eol}epilogue`),
  ]);
}

test('multipart: CRLF or LF, with or without leading CRLF, padding, boundary bytes in data, any split', () => {
  for (const [eol, lead] of [
    ['\r\n', true],
    ['\n', false],
    ['\r\n', false],
  ] as const) {
    const b = Buffer.concat([Buffer.from('preamble line\r\n'), body(eol, lead)]);
    for (const splits of [[], [1, 2, 3, 50, 51, 120], Array.from({ length: b.length - 1 }, (_, i) => i + 1)]) {
      const { parts, data } = parseAll(b, splits);
      assert.deepEqual(
        parts.map((p) => [p.start, p.end, p.total]),
        [
          [10, 10 + d1.length, 1000],
          [500, 800, 1000],
        ],
      );
      assert.ok(data.get(10)!.equals(d1));
      assert.ok(data.get(500)!.equals(d2));
    }
  }
});

test('multipart: truncation, missing Content-Range, garbage between parts', () => {
  const b = body('\r\n', true);
  assert.throws(() => parseAll(b.subarray(0, 150), []), /truncated|missing final boundary/);
  assert.throws(() => parseAll(Buffer.from('--XyZ\r\nContent-Type: x\r\n\r\nabc'), []), /part without Content-Range/);
  assert.throws(() => parseAll(Buffer.from('--XyZ\r\nContent-Range: bytes 5-1/9\r\n\r\n'), []), /invalid part header/);
  const garbage = Buffer.concat([Buffer.from('--XyZ\r\nContent-Range: bytes 0-2/9\r\n\r\nabcJUNK\r\n--XyZ--\r\n')]);
  assert.throws(() => parseAll(garbage, []), /expected boundary after part 0-2/);
});

test('Content-Range and Content-Type parsing', () => {
  assert.deepEqual(parseContentRange('bytes 0-9/100'), { start: 0, end: 10, total: 100 });
  assert.deepEqual(parseContentRange('bytes 5-5/*'), { start: 5, end: 6, total: undefined });
  assert.equal(parseContentRange('bytes 9-5/100'), null);
  assert.equal(parseContentRange('bytes 0-100/100'), null);
  assert.equal(parseContentRange(undefined), null);
  assert.equal(multipartBoundary('multipart/byteranges; boundary="a b"'), 'a b');
  assert.equal(multipartBoundary('multipart/byteranges;boundary=3d6b6a416f9b5'), '3d6b6a416f9b5');
  assert.equal(multipartBoundary('application/octet-stream'), null);
});

let dir: string;
let origin: Origin;
let http: HttpClient;
const file = seededBytes(200_000, 'ranges:file');

before(async (t) => {
  dir = await tmpDir(t, 'ranges');
  await writeFile(join(dir, 'f.img'), file);
  origin = await startOrigin({ root: dir });
  http = new HttpClient({ retryBaseMs: 5, timeoutMs: 2000 });
});
after(async () => {
  await http?.close();
  await origin?.close();
});

async function collect(f: RangeFetcher, ranges: { start: number; end: number }[]): Promise<Buffer> {
  const out = Buffer.alloc(file.length);
  let n = 0;
  await f.fetch(ranges, (off, b) => {
    b.copy(out, off);
    n += b.length;
  });
  assert.equal(
    n,
    ranges.reduce((s, r) => s + r.end - r.start, 0),
    'exactly the asked bytes are passed on',
  );
  return out;
}

test('fetcher: multi-range, probe per origin mode, 200 and 416 detection', async () => {
  const f = () => new RangeFetcher(http, `${origin.url}/f.img`, file.length);
  const ranges = [
    { start: 5, end: 1000 },
    { start: 50_000, end: 50_001 },
    { start: 199_000, end: 200_000 },
  ];
  origin.ranges = 'multi';
  const got = await collect(f(), ranges);
  for (const r of ranges) assert.ok(got.subarray(r.start, r.end).equals(file.subarray(r.start, r.end)));
  assert.deepEqual(await f().probe(), { ranges: true, multi: true, size: file.length });

  origin.ranges = 'single';
  await assert.rejects(
    f().fetch(ranges, () => {}),
    MultiRangeUnsupportedError,
  );
  assert.deepEqual(await f().probe(), { ranges: true, multi: false, size: file.length });
  origin.ranges = 'reject-multi';
  await assert.rejects(
    f().fetch(ranges, () => {}),
    MultiRangeUnsupportedError,
  );
  assert.deepEqual(await f().probe(), { ranges: true, multi: false, size: file.length });

  // 200 to several ranges, 206 to one: multi-range is refused (once per fetcher), single ranges work.
  origin.ranges = 'ignore-multi';
  const noMulti = f();
  origin.log.length = 0;
  await assert.rejects(
    noMulti.fetch(ranges, () => {}),
    MultiRangeUnsupportedError,
  );
  await assert.rejects(
    noMulti.fetch(ranges, () => {}),
    MultiRangeUnsupportedError,
  );
  assert.equal(origin.log.length, 1, 'the second multi-range call made no request');
  assert.ok((await collect(noMulti, [ranges[0]])).subarray(5, 1000).equals(file.subarray(5, 1000)));
  assert.deepEqual(await f().probe(), { ranges: true, multi: false, size: file.length });

  origin.ranges = 'none';
  const fetcher = f();
  origin.log.length = 0;
  await assert.rejects(
    fetcher.fetch([ranges[0]], () => {}),
    RangeUnsupportedError,
  );
  // Parallel calls after the 200: none of them asks again.
  await Promise.all(
    [1, 2, 3].map(() =>
      assert.rejects(
        fetcher.fetch([ranges[0]], () => {}),
        RangeUnsupportedError,
      ),
    ),
  );
  assert.equal(origin.log.length, 1);
  assert.deepEqual(await f().probe(), { ranges: false, multi: false });
  origin.ranges = 'multi';
});

test('fetcher: a server that lies about the size, or is cut mid-body', async () => {
  const wrongSize = new RangeFetcher(http, `${origin.url}/f.img`, file.length + 1);
  await assert.rejects(
    wrongSize.fetch([{ start: 0, end: 10 }], () => {}),
    /file has 200000 bytes, the index 200001/,
  );
  origin.fault({ kind: 'cut', path: '/f.img' });
  const f = new RangeFetcher(http, `${origin.url}/f.img`, file.length);
  await assert.rejects(
    f.fetch([{ start: 0, end: 100_000 }], () => {}),
    (err: Error & { transient?: boolean }) => err.transient === true,
  );
  origin.fault({ kind: 'cut', path: '/f.img' });
  await assert.rejects(
    f.fetch(
      [
        { start: 0, end: 100 },
        { start: 1000, end: 100_000 },
      ],
      () => {},
    ),
    (err: Error & { transient?: boolean }) => err.transient === true,
  );
  assert.ok(
    (await collect(f, [{ start: 0, end: 10 }])).subarray(0, 10).equals(file.subarray(0, 10)),
    'works again after the faults',
  );
});

test('range source: its batches are the planned requests, each made as it is taken, and fetch their chunks', async () => {
  const index = indexBuffer(file, { params: { min: 512, avg: 2048, max: 8192 }, digest: 'sha512-256' });
  assert.ok(index.count > 40);
  // Every third chunk and a longer run missing: gaps of other chunks between them.
  const runs = [];
  for (let i = 0; i < index.count - 10; i += 3) runs.push({ first: i, count: 1 });
  runs.push({ first: index.count - 8, count: 8 });
  const cost = new CostModel({ rttMs: 1, bytesPerSec: 1e6 });
  const span = 20_000;
  const planned = cost.planRequests(index, runs, true, 4, { maxSpan: span }).map((r) => r.chunks);
  assert.ok(planned.length > 3, `${planned.length} requests`);
  origin.ranges = 'multi';
  const source = new RangeSource(index, http, `${origin.url}/f.img`, {
    retry: { attempts: 2, retryBaseMs: 5 },
    cost,
    parallelism: 4,
  });
  const got = new Map<number, Buffer>();
  const taken: typeof planned = [];
  const ctl = new AbortController();
  for (const batch of source.batches(runs, span)) {
    // What a batch holds is final when it is taken (fetched before the next one is planned).
    taken.push(structuredClone(batch));
    await source.fetch(batch, (i, data) => got.set(i, Buffer.from(data)), ctl.signal);
  }
  assert.deepEqual(taken, planned);
  const missing = runs.flatMap((r) => Array.from({ length: r.count }, (_, k) => r.first + k));
  assert.deepEqual(
    [...got.keys()].sort((a, b) => a - b),
    missing,
  );
  for (const [i, data] of got) assert.ok(data.equals(file.subarray(index.start(i), index.end(i))), `chunk ${i}`);
  assert.equal(source.stats.requests, planned.length, 'one request per batch');
});

test('fetcher: a socket read of nothing but body bytes is freed once passed on (the bytes were right while passed)', async () => {
  origin.ranges = 'multi';
  const f = new RangeFetcher(http, `${origin.url}/f.img`, file.length);
  const range = { start: 1000, end: 199_000 };
  const out = Buffer.alloc(file.length);
  const seen: Buffer[] = [];
  await f.fetch([range], (off, data) => {
    data.copy(out, off);
    seen.push(data);
  });
  assert.ok(out.subarray(range.start, range.end).equals(file.subarray(range.start, range.end)));
  const freed = seen.filter((b) => (b.buffer as ArrayBuffer & { detached: boolean }).detached);
  assert.ok(freed.length > 0, `${freed.length} of ${seen.length} reads freed`);
  assert.ok(freed.length < seen.length, 'the read with the headers in it is left to the collector');
});
