// The one cost model every route is priced with (chunk ranges, chunk stores,
// block pack frames, a full download). A request costs a round trip, and on a
// link of some throughput a round trip is worth rtt x throughput bytes; with
// `parallelism` requests in flight each one waits for only a share of it. The
// same price decides which gaps between wanted ranges are worth downloading
// (merged) instead of asking for separately.
import type { LinkEstimate } from '../fetch/link-monitor.js';
import {
  countRangeRequests,
  planRangeRequests,
  rangeRequests,
  type RangePlanOptions,
  type RangeRequest,
} from '../fetch/range-fetcher.js';
import type { Run } from '../util/runs.js';

/** What is known about the link to the origin: the HTTP client's measurement (lib/fetch/link-monitor.ts). */
export type { LinkEstimate };

/** Defaults: a 10 ms round trip at 100 Mibit/s, so one round trip is worth 128 KiB of body bytes. */
export const DEFAULT_LINK: LinkEstimate = { rttMs: 10, bytesPerSec: (100 * 1024 * 1024) / 8 };

/** multipart/byteranges framing per part (boundary and part headers; nginx, measured). */
export const PART_OVERHEAD = 100;
/** Status line and headers of one response (nginx, measured): not body bytes, but paid per request. */
export const RESPONSE_OVERHEAD = 300;

/** Bytes on the wire and requests of one way of getting data. */
export interface Traffic {
  bytes: number;
  requests: number;
}

/** A round trip never counts as less than this: a request costs both ends some work even on loopback. */
export const MIN_RTT_MS = 2;

/**
 * The link as measured by the HTTP client so far (the index download and the probes), where it has measured it:
 * the round trip once any request answered, the throughput once enough bytes arrived.
 */
export function measuredLink(measured: LinkEstimate | undefined): Partial<LinkEstimate> {
  if (!measured) return {};
  const link: Partial<LinkEstimate> = { rttMs: Math.max(MIN_RTT_MS, measured.rttMs) };
  if (measured.bytesPerSec > 0) link.bytesPerSec = measured.bytesPerSec;
  return link;
}

export class CostModel {
  readonly link: LinkEstimate;
  constructor(link: Partial<LinkEstimate> = {}) {
    this.link = { ...DEFAULT_LINK, ...link };
  }

  /** Body bytes one request is worth when `parallelism` requests are in flight. */
  requestBytes(parallelism: number): number {
    const { rttMs, bytesPerSec } = this.link;
    return Math.round(((rttMs / 1000) * bytesPerSec) / Math.max(1, parallelism)) + RESPONSE_OVERHEAD;
  }

  /** Traffic in body bytes: every request priced as requestBytes(parallelism). */
  weigh(t: Traffic, parallelism: number): number {
    return t.bytes + t.requests * this.requestBytes(parallelism);
  }

  /** Estimated seconds for the traffic on this link. */
  seconds(t: Traffic, parallelism: number): number {
    return this.weigh(t, parallelism) / this.link.bytesPerSec;
  }

  /**
   * Range requests for runs of units of `layout` (chunks of an image, frames of a pack). A gap
   * between wanted ranges is downloaded (merged) when that costs less than what it saves: the
   * framing of another part with multi-range, a whole request without.
   */
  planRequests(
    layout: Pick<RangeLayout, 'start' | 'end'>,
    runs: readonly Run[],
    multi: boolean,
    parallelism: number,
    opts: Omit<RangePlanOptions, 'multi' | 'maxGap'> = {},
  ): RangeRequest[] {
    return planRangeRequests(layout, runs, this.planOptions(multi, parallelism, opts));
  }

  /** planRequests' requests one at a time, each made when the caller takes it (lib/fetch/range-fetcher.ts). */
  requests(
    layout: Pick<RangeLayout, 'start' | 'end'>,
    runs: readonly Run[],
    multi: boolean,
    parallelism: number,
    opts: Omit<RangePlanOptions, 'multi' | 'maxGap'> = {},
  ): Generator<RangeRequest> {
    return rangeRequests(layout, runs, this.planOptions(multi, parallelism, opts));
  }

  /** The body bytes and requests of what planRequests plans, counted without making the requests. */
  traffic(
    layout: Pick<RangeLayout, 'start' | 'end'>,
    runs: readonly Run[],
    multi: boolean,
    parallelism: number,
    opts: Omit<RangePlanOptions, 'multi' | 'maxGap'> = {},
  ): Traffic {
    const n = countRangeRequests(layout, runs, this.planOptions(multi, parallelism, opts));
    return { bytes: n.bytes + n.multipartRanges * PART_OVERHEAD, requests: n.requests };
  }

  private planOptions(
    multi: boolean,
    parallelism: number,
    opts: Omit<RangePlanOptions, 'multi' | 'maxGap'>,
  ): RangePlanOptions {
    return { ...opts, multi, maxGap: multi ? PART_OVERHEAD : this.requestBytes(parallelism) };
  }
}

/** Byte offsets of numbered units: a chunk index, or a pack's frames. */
export interface RangeLayout {
  start(i: number): number;
  end(i: number): number;
  chunkAt(offset: number): number;
}

/** Body bytes of range requests: asked bytes plus the multipart framing of multi-part answers. */
export function bodyBytes(reqs: readonly RangeRequest[]): number {
  return reqs.reduce((n, r) => n + r.bytes + (r.ranges.length > 1 ? r.ranges.length * PART_OVERHEAD : 0), 0);
}

export const defaultCostModel = new CostModel();
