// Missing chunks as HTTP byte ranges of the target image: which ranges to ask
// for (adjacent chunks coalesce; small gaps merge when that saves requests),
// how to group them into requests (several ranges per request when the server
// does multi-range), and the requests themselves, validated part by part.
import type { Dispatcher } from 'undici';
import type { ChunkIndex } from '../format/caibx.js';
import {
  DeltadError,
  DeltaDisabledError,
  ImageChangedError,
  MultiRangeUnsupportedError,
  OriginError,
  RangeUnsupportedError,
} from '../errors.js';
import type { HttpClient } from './http-client.js';
import { deltaDisabledBy } from './release-policy.js';
import { MultipartParser, multipartBoundary, parseContentRange } from './multipart.js';
import type { Run } from '../util/runs.js';
import { freeNow } from '../util/buffer-pool.js';

export interface ByteRange {
  start: number;
  /** Exclusive. */
  end: number;
}

/** One HTTP request: its ranges and the target chunks [first, first+count) it carries. */
export interface RangeRequest {
  ranges: ByteRange[];
  chunks: Run[];
  /** Bytes asked for (chunk bytes plus merged gaps). */
  bytes: number;
}

export interface RangePlanOptions {
  multi: boolean;
  /** Ranges per request (default 200: Apache's default MaxRanges). */
  maxRangesPerRequest?: number;
  /** Range header length limit (default 8000 bytes). */
  maxHeaderBytes?: number;
  /** Bytes per request, so that several requests run in parallel (default 16 MiB). */
  maxRequestBytes?: number;
  /** Largest target span one request may cover (the stream's reorder window); default unlimited. */
  maxSpan?: number;
  /** Merge gaps up to this many bytes (default: 128 with multi-range, 8 KiB without). */
  maxGap?: number;
  /** With multi-range, aim for at most this many requests by merging the smallest gaps (default 100). */
  targetRequests?: number;
}

/**
 * Groups runs of missing target chunks (in target order) into range requests.
 * Gaps between runs are merged when a gap costs fewer bytes than the framing
 * of a separate range, or when there are more ranges than targetRequests full
 * requests can carry (smallest gaps first).
 */
export function planRangeRequests(
  index: Pick<ChunkIndex, 'start' | 'end'>,
  runs: readonly Run[],
  opts: RangePlanOptions,
): RangeRequest[] {
  return [...rangeRequests(index, runs, opts)];
}

/**
 * planRangeRequests' requests one at a time, in target order, each made when the caller asks for the next: a
 * 4 GiB image misses thousands of runs, and all its requests with their ranges at once were megabytes held for
 * the whole update. Iterating it to the end gives exactly planRangeRequests' requests.
 */
export function* rangeRequests(
  index: Pick<ChunkIndex, 'start' | 'end'>,
  runs: readonly Run[],
  opts: RangePlanOptions,
): Generator<RangeRequest> {
  let cur: RangeRequest = { ranges: [], chunks: [], bytes: 0 };
  const steps: RequestSteps = {
    open: () => (cur = { ranges: [], chunks: [], bytes: 0 }),
    range: (start, end) => {
      cur.ranges.push({ start, end });
      cur.bytes += end - start;
    },
    extend: (end) => {
      const last = cur.ranges[cur.ranges.length - 1];
      cur.bytes += end - last.end;
      last.end = end;
    },
    chunks: (first, count) => cur.chunks.push({ first, count }),
  };
  for (const _ of walkRangeRequests(index, runs, opts, steps)) yield cur;
}

/** What planRangeRequests would plan, counted: requests, bytes asked for, and ranges of multi-range requests. */
export interface RangeRequestCount {
  requests: number;
  bytes: number;
  /** Ranges of the requests with more than one (each is a part of a multipart answer). */
  multipartRanges: number;
}

/**
 * planRangeRequests' requests counted, not made: pricing a plan of many ranges made hundreds of thousands of
 * objects in one go, old garbage by the time the plan was priced (~30 MiB for a 4 GiB image).
 */
export function countRangeRequests(
  index: Pick<ChunkIndex, 'start' | 'end'>,
  runs: readonly Run[],
  opts: RangePlanOptions,
): RangeRequestCount {
  const count: RangeRequestCount = { requests: 0, bytes: 0, multipartRanges: 0 };
  let ranges = 0;
  const steps: RequestSteps = {
    open: () => {
      count.requests++;
      ranges = 0;
    },
    range: (start, end) => {
      ranges++;
      count.bytes += end - start;
    },
    extend: (end, lastEnd) => {
      count.bytes += end - lastEnd;
    },
    chunks: () => {},
  };
  for (const _ of walkRangeRequests(index, runs, opts, steps)) if (ranges > 1) count.multipartRanges += ranges;
  return count;
}

/** What walkRangeRequests plans, step by step. */
interface RequestSteps {
  /** A new request. */
  open(): void;
  /** A new range of the current request. */
  range(start: number, end: number): void;
  /** The current request's last range, which ended at lastEnd, now ends at `end` (a gap merged). */
  extend(end: number, lastEnd: number): void;
  /** Target chunks [first, first + count) go with the current request. */
  chunks(first: number, count: number): void;
}

/**
 * The one planning of range requests (see planRangeRequests), told step by step to `steps`; it yields each time
 * the current request is complete (before the next one opens, and after the last), so that a caller can take the
 * requests one at a time.
 */
function* walkRangeRequests(
  index: Pick<ChunkIndex, 'start' | 'end'>,
  runs: readonly Run[],
  opts: RangePlanOptions,
  steps: RequestSteps,
): Generator<void> {
  if (runs.length === 0) return;
  const maxBytes = opts.maxRequestBytes ?? 16 * 1024 * 1024;
  const maxSpan = opts.maxSpan ?? Infinity;
  const limit = Math.min(maxBytes, maxSpan);
  const perReq = opts.multi ? Math.max(1, opts.maxRangesPerRequest ?? 200) : 1;
  const maxHeader = opts.maxHeaderBytes ?? 8000;
  let maxGap = opts.maxGap ?? (opts.multi ? 128 : 8192);
  const target = opts.targetRequests ?? 100;
  // Only with multi-range: a merged gap then costs bytes but saves a part, not a round trip per range.
  const rangesAllowed = target * perReq;
  if (opts.multi) {
    let pieces = 0;
    for (const _ of piecesOf(index, runs, limit)) pieces++;
    if (pieces > rangesAllowed) {
      const gaps = new Float64Array(pieces - 1);
      let k = -1;
      let prevEnd = 0;
      for (const { first, count } of piecesOf(index, runs, limit)) {
        if (k >= 0) gaps[k] = index.start(first) - prevEnd;
        k++;
        prevEnd = index.end(first + count - 1);
      }
      gaps.sort();
      maxGap = Math.max(maxGap, gaps[pieces - rangesAllowed - 1]);
    }
  }

  // The current request: whether there is one, its bytes and ranges, its last range's end, header length, span.
  let open = false;
  let bytes = 0;
  let ranges = 0;
  let lastEnd = 0;
  let header = 0;
  let spanStart = 0;
  for (const { first, count } of piecesOf(index, runs, limit)) {
    const start = index.start(first);
    const end = index.end(first + count - 1);
    if (open && start - lastEnd <= maxGap && end - spanStart <= maxSpan && bytes + (end - lastEnd) <= maxBytes) {
      bytes += end - lastEnd;
      steps.extend(end, lastEnd);
      lastEnd = end;
      steps.chunks(first, count);
      continue;
    }
    const spec = `${start}-${end - 1},`.length;
    if (
      !open ||
      ranges >= perReq ||
      header + spec > maxHeader ||
      bytes + (end - start) > maxBytes ||
      end - spanStart > maxSpan
    ) {
      if (open) yield;
      steps.open();
      open = true;
      bytes = 0;
      ranges = 0;
      header = 'bytes='.length;
      spanStart = start;
    }
    steps.range(start, end);
    steps.chunks(first, count);
    ranges++;
    bytes += end - start;
    header += spec;
    lastEnd = end;
  }
  if (open) yield;
}

/**
 * The runs cut at chunk boundaries into pieces of at most `limit` bytes (a piece has at least one chunk). Each
 * piece is the same object, updated: read it before asking for the next.
 */
function* piecesOf(index: Pick<ChunkIndex, 'start' | 'end'>, runs: readonly Run[], limit: number): Generator<Run> {
  const size = (i: number): number => index.end(i) - index.start(i);
  const piece: Run = { first: 0, count: 0 };
  for (const run of runs) {
    let first = run.first;
    const end = run.first + run.count;
    while (first < end) {
      let last = first + 1;
      let bytes = size(first);
      while (last < end && bytes + size(last) <= limit) bytes += size(last++);
      piece.first = first;
      piece.count = last - first;
      yield piece;
      first = last;
    }
  }
}

export function rangeHeader(ranges: readonly ByteRange[]): string {
  return 'bytes=' + ranges.map((r) => `${r.start}-${r.end - 1}`).join(',');
}

/** A one-part answer to several ranges is read when it is at most this much bigger than the ranges. */
const SPAN_SLACK = 1.1;

export interface RangeSupport {
  ranges: boolean;
  multi: boolean;
  /** Size of the resource, when the server said. */
  size?: number;
}

/** Counters of one fetcher: requests made and bytes received (bodies, framing included). */
export interface FetchStats {
  requests: number;
  bytes: number;
  /** Chunk bytes read from local store directories (no network; a store source only). */
  localBytes?: number;
}

/** Requests byte ranges of one URL and hands the bytes over by absolute offset. */
export class RangeFetcher {
  readonly stats: FetchStats = { requests: 0, bytes: 0 };
  /** Set once a response proved that ranges work; until then requests go one at a time. */
  private confirmed = false;
  private firstAnswer?: Promise<void>;
  /** Set when the server answered a single range with the whole file: later calls fail without a request. */
  private unsupported?: RangeUnsupportedError;
  /** Set when the server refused multi-range: later multi-range calls fail without a request. */
  private noMulti?: MultiRangeUnsupportedError;
  /** The image's strong validator from the first 206 (sent as If-Range from then on). */
  private validator?: string;

  constructor(
    private readonly http: HttpClient,
    readonly url: string,
    /** Expected size of the resource; every Content-Range must agree. */
    private readonly size: number,
  ) {}

  /** Asks for the first and last byte in one request to learn whether ranges and multi-range work. */
  async probe(signal?: AbortSignal): Promise<RangeSupport> {
    if (this.size < 2) return { ranges: false, multi: false };
    try {
      await this.fetch(
        [
          { start: 0, end: 1 },
          { start: this.size - 1, end: this.size },
        ],
        () => {},
        signal,
      );
      return { ranges: true, multi: true, size: this.size };
    } catch (err) {
      if (err instanceof RangeUnsupportedError) return { ranges: false, multi: false };
      if (!(err instanceof MultiRangeUnsupportedError)) throw err;
    }
    try {
      await this.fetch([{ start: 0, end: 1 }], () => {}, signal);
      return { ranges: true, multi: false, size: this.size };
    } catch (err) {
      if (err instanceof RangeUnsupportedError) return { ranges: false, multi: false };
      throw err;
    }
  }

  /**
   * One request for `ranges` (ascending, non-overlapping). Calls onData with
   * body bytes at their absolute offsets; bytes outside the asked ranges are
   * never passed on. The bytes are only valid during the call (copy what is
   * kept): a socket read of nothing but body bytes is freed once passed on. Throws RangeUnsupportedError (200 to a single range) at once
   * without reading the body, MultiRangeUnsupportedError (416, 200 or one span
   * for several ranges; single ranges may still work), or OriginError
   * (transient for 5xx, resets and truncation).
   */
  async fetch(
    ranges: readonly ByteRange[],
    onData: (offset: number, data: Buffer) => void,
    signal?: AbortSignal,
    drain?: () => Promise<void> | undefined,
  ): Promise<void> {
    // A server that ignores ranges would send the whole file to every parallel request: ask once first.
    while (!this.confirmed && this.firstAnswer) await this.firstAnswer;
    if (this.unsupported) throw this.unsupported;
    if (this.noMulti && ranges.length > 1) throw this.noMulti;
    let answered = (): void => {};
    if (!this.confirmed) this.firstAnswer = new Promise((r) => (answered = r));
    try {
      await this.fetchOnce(ranges, onData, signal, drain, () => {
        this.confirmed = true;
        answered();
      });
    } catch (err) {
      if (err instanceof RangeUnsupportedError) this.unsupported = err;
      if (err instanceof MultiRangeUnsupportedError) this.noMulti = err;
      throw err;
    } finally {
      if (!this.confirmed) this.firstAnswer = undefined;
      answered();
    }
  }

  private async fetchOnce(
    ranges: readonly ByteRange[],
    onData: (offset: number, data: Buffer) => void,
    signal: AbortSignal | undefined,
    drain: (() => Promise<void> | undefined) | undefined,
    onRangesWork: () => void,
  ): Promise<void> {
    this.stats.requests++;
    const ifRange = this.validator;
    const headers: Record<string, string> = { range: rangeHeader(ranges), 'accept-encoding': 'identity' };
    if (ifRange) headers['if-range'] = ifRange;
    const res = await this.http.request(this.url, { headers, signal });
    const where = res.url === this.url ? this.url : `${this.url} (at ${res.url})`;
    const what = `GET ${where} (${ranges.length} range${ranges.length === 1 ? '' : 's'})`;
    try {
      const off = deltaDisabledBy(res.headers);
      if (off) throw new DeltaDisabledError(this.url, off);
      if (res.statusCode === 200) {
        const now = validatorOf(res.headers);
        // With If-Range, a 200 under another validator means the image is not the one the index describes.
        if (ifRange && now !== ifRange) {
          throw new ImageChangedError(this.url, `If-Range ${ifRange}, now ${now ?? 'no validator'}`);
        }
        const none = res.headers['accept-ranges'] === 'none';
        const whole = none ? 'Accept-Ranges: none' : 'HTTP 200 with the whole file instead of 206';
        // A 200 to several ranges may only mean "not several": single ranges are still worth one request.
        if (ranges.length > 1) throw new MultiRangeUnsupportedError(this.url, whole);
        throw new RangeUnsupportedError(this.url, whole);
      }
      if (res.statusCode === 416 && ranges.length > 1) throw new MultiRangeUnsupportedError(this.url, 'HTTP 416');
      if (res.statusCode !== 206) {
        throw new OriginError(`${what}: HTTP ${res.statusCode}`, {
          status: res.statusCode,
          transient: res.statusCode >= 500 || res.statusCode === 429,
        });
      }
      // Content-Range counts bytes of the coded representation: coded ranges are not image bytes.
      const coding = res.headers['content-encoding'];
      if (coding !== undefined && String(coding).trim().toLowerCase() !== 'identity') {
        const detail = `206 with Content-Encoding ${String(coding)} although identity was asked`;
        throw new RangeUnsupportedError(this.url, detail);
      }
      this.validator ??= validatorOf(res.headers);
      onRangesWork();
      const boundary = multipartBoundary(res.headers['content-type'] as string | undefined);
      const filter = rangeFilter(ranges, onData);
      if (boundary) {
        if (ranges.length === 1) throw new OriginError(`${what}: multipart answer to a single range`);
        const parser = new MultipartParser(
          boundary,
          {
            onPart: (r) => this.checkPart(r, ranges, what),
            onData: filter,
          },
          what,
        );
        await this.consume(
          res,
          (b) => {
            parser.write(b);
            return drain?.();
          },
          what,
        );
        parser.end();
        return;
      }
      const cr = parseContentRange(res.headers['content-range'] as string | undefined);
      if (!cr) throw new RangeUnsupportedError(this.url, 'HTTP 206 without a valid Content-Range');
      this.checkPart(cr, ranges, what);
      // Several ranges answered by one part: only the first range, or the whole span when its gaps are small
      // (a span of far-apart ranges could be most of the image). Its bytes are used, then single ranges follow.
      const first = ranges[0];
      const asked = ranges.reduce((n, r) => n + r.end - r.start, 0);
      const wholeSpan = cr.end === ranges[ranges.length - 1].end && cr.end - cr.start <= asked * SPAN_SLACK;
      const partial = ranges.length > 1 && cr.start === first.start && (cr.end === first.end || wholeSpan);
      const onePart = `one 206 part ${cr.start}-${cr.end - 1} for ${ranges.length} ranges`;
      if (ranges.length > 1 && !partial) throw new MultiRangeUnsupportedError(this.url, onePart);
      if (ranges.length === 1 && (cr.start !== first.start || cr.end !== first.end)) {
        const got = `got Content-Range ${cr.start}-${cr.end - 1}`;
        throw new OriginError(`${what}: asked ${first.start}-${first.end - 1}, ${got}`);
      }
      let pos = cr.start;
      await this.consume(
        res,
        (b) => {
          if (pos + b.length > cr.end) throw new OriginError(`${what}: body longer than its Content-Range`);
          filter(pos, b);
          pos += b.length;
          return drain?.();
        },
        what,
      );
      if (pos !== cr.end)
        throw new OriginError(`${what}: truncated body (${pos - cr.start} of ${cr.end - cr.start} bytes)`, {
          transient: true,
        });
      if (partial) throw new MultiRangeUnsupportedError(this.url, onePart);
    } catch (err) {
      // Stop reading at once (a 200 may be the whole image); the abort error this raises is expected.
      res.body.on('error', () => {});
      res.body.destroy();
      throw err;
    }
  }

  private checkPart(
    r: { start: number; end: number; total?: number },
    ranges: readonly ByteRange[],
    what: string,
  ): void {
    if (r.total !== undefined && r.total !== this.size) {
      const detail = `${what}: Content-Range says the file has ${r.total} bytes, the index ${this.size}`;
      throw new ImageChangedError(this.url, detail);
    }
    if (r.start < ranges[0].start || r.end > ranges[ranges.length - 1].end)
      throw new OriginError(`${what}: part ${r.start}-${r.end - 1} outside the ranges asked for`);
  }

  /** Reads the body into sink; a promise from sink pauses reading until it settles (backpressure). */
  private async consume(
    res: Dispatcher.ResponseData,
    sink: (b: Buffer) => Promise<void> | undefined,
    what: string,
  ): Promise<void> {
    try {
      for await (const b of res.body) {
        this.stats.bytes += (b as Buffer).length;
        const wait = sink(b as Buffer);
        // Its bytes are copied out: left to the collector, a read would wait for a full collection (64 KiB each, tens
        // of MiB of them behind on a fast link). Only a buffer that is all this body's own is freed (freeNow).
        freeNow(b as Buffer);
        if (wait) await wait;
      }
    } catch (err) {
      if (err instanceof DeltadError) throw err;
      const e = err as { name?: string; code?: string; message?: string };
      if (e?.name === 'AbortError') throw err;
      throw new OriginError(`${what}: ${e?.code ?? ''} ${e?.message ?? String(err)}`.trim(), {
        transient: true,
        cause: err,
      });
    }
  }
}

/**
 * The image's strong validator for If-Range: a strong ETag, else Last-Modified
 * (a weak ETag may not be used, RFC 9110 §13.1.5).
 */
function validatorOf(headers: Dispatcher.ResponseData['headers']): string | undefined {
  const etag = headers.etag;
  if (typeof etag === 'string' && etag.startsWith('"')) return etag;
  const lm = headers['last-modified'];
  return typeof lm === 'string' && lm !== '' ? lm : undefined;
}

/** Passes on only the bytes that fall inside the asked ranges (a server may coalesce ranges). */
function rangeFilter(
  ranges: readonly ByteRange[],
  onData: (offset: number, data: Buffer) => void,
): (offset: number, data: Buffer) => void {
  return (offset, data) => {
    const end = offset + data.length;
    for (const r of ranges) {
      if (r.end <= offset) continue;
      if (r.start >= end) break;
      const s = Math.max(r.start, offset);
      const e = Math.min(r.end, end);
      onData(s, data.subarray(s - offset, e - offset));
    }
  };
}

/** A chunk's buffer before its first byte arrives (one shared empty buffer, not one per chunk asked for). */
const NOT_YET = Buffer.alloc(0);

/**
 * Cuts a byte stream (possibly several parts, any order) into the target
 * chunks it was asked for; calls onChunk once per completed chunk.
 */
export class ChunkCollector {
  private readonly pending = new Map<number, { buf: Buffer; filled: number }>();
  private readonly wanted: number[];
  constructor(
    private readonly index: Pick<ChunkIndex, 'start' | 'end' | 'chunkAt'>,
    chunks: readonly number[],
    private readonly onChunk: (i: number, data: Buffer) => void,
    /** Where chunk buffers come from (default: new ones). */
    private readonly alloc: (size: number) => Buffer = Buffer.allocUnsafe,
  ) {
    this.wanted = [...chunks].sort((a, b) => a - b);
    for (const i of this.wanted) this.pending.set(i, { buf: NOT_YET, filled: 0 });
  }

  /** Hands the buffers of chunks begun and not completed to `free` (a cut answer: they are asked for again). */
  abandon(free: (buf: Buffer) => void): void {
    for (const p of this.pending.values()) if (p.buf.length > 0) free(p.buf);
    for (const p of this.pending.values()) p.buf = Buffer.alloc(0);
  }

  /** Chunks not completed yet. */
  missing(): number[] {
    return this.wanted.filter((i) => this.pending.has(i));
  }

  write(offset: number, data: Buffer): void {
    const idx = this.index;
    let pos = offset;
    const end = offset + data.length;
    while (pos < end) {
      const i = idx.chunkAt(pos);
      const cs = idx.start(i);
      const ce = idx.end(i);
      const n = Math.min(ce, end) - pos;
      const p = this.pending.get(i);
      if (p) {
        if (p.buf.length === 0) p.buf = this.alloc(ce - cs);
        data.copy(p.buf, pos - cs, pos - offset, pos - offset + n);
        p.filled += n;
        if (p.filled >= p.buf.length) {
          this.pending.delete(i);
          this.onChunk(i, p.buf);
        }
      }
      pos += n;
    }
  }
}
