// One preparation per image version. The index, the SHA256SUMS entry and the
// origin's answers to a HEAD, a range probe and a block index probe are
// fetched once, all at once, and shared by every request that arrives while
// they are fresh (a burst of clients costs one of each); after that they are
// revalidated with conditional requests (If-None-Match / If-Modified-Since),
// so an unchanged release costs a 304.
// Shared fetches run without any one request's signal: a client that leaves
// does not fail the others' preparation.
// The files themselves are fetched, bounded, parsed and revalidated by
// lib/fetch/release-files.ts, the same code as the fleet proxy and the CLI.
import { OriginError } from '../errors.js';
import type { HttpClient } from '../fetch/http-client.js';
import { deltaDisabledBy } from '../fetch/release-policy.js';
import {
  IndexArrival,
  fetchReleaseFile,
  findIndex,
  listedSha256,
  type ReleaseFile,
  type ReleaseFileSource,
} from '../fetch/release-files.js';
import type { ChunkIndex } from '../format/caibx.js';
import { askBlockIndex, type BlockIndexAnswer } from '../blockpack/index.js';
import { parseContentRange } from '../fetch/multipart.js';
import { DEFAULT_FRESH_MS } from '../util/defaults.js';

export { DEFAULT_FRESH_MS };
const MAX_ENTRIES = 64;
/** The image's first bytes asked by the range probe: its first chunks (casync's: 16-256 KiB, 64 KiB on average). */
export const IMAGE_START_BYTES = 128 * 1024;

/** Single-flight answers kept for `freshMs`, at most MAX_ENTRIES (oldest dropped first). */
class FreshMemo<T> {
  private readonly entries = new Map<string, { at: number; value: Promise<T> }>();
  constructor(private readonly freshMs: number) {}

  get(key: string, compute: (previous: T | undefined) => Promise<T>): Promise<T> {
    const hit = this.entries.get(key);
    if (hit && Date.now() - hit.at < this.freshMs) return hit.value;
    const previous = hit?.value.catch(() => undefined) ?? Promise.resolve(undefined);
    const value = previous.then(compute);
    const entry = { at: Date.now(), value };
    this.entries.delete(key);
    this.entries.set(key, entry);
    // A failure is not kept: the next request asks again.
    value.then(
      () => (entry.at = Date.now()),
      () => this.entries.get(key) === entry && this.entries.delete(key),
    );
    while (this.entries.size > MAX_ENTRIES) this.entries.delete(this.entries.keys().next().value!);
    return value;
  }
}

/** Where one image and the files that describe it live on the origin. */
export interface ReleaseTarget {
  /** The image's URL. */
  url: string;
  /** The image's file name, as listed in SHA256SUMS. */
  name: string;
  /** Candidate index URLs, tried in order (a 404 or 410 moves on to the next). */
  indexUrls: string[];
  /** The SHA256SUMS beside the image. */
  sumsUrl: string;
}

export interface PreparedImage {
  index: ChunkIndex;
  /** The index URL that answered. */
  indexUrl: string;
  /** SHA-256 from the origin's SHA256SUMS, when it lists the image. */
  sha256?: string;
  /** Identifies this version of the image: its URL, the digest of its index and the expected SHA-256. */
  key: string;
}

export class Releases implements ReleaseFileSource {
  private readonly files: FreshMemo<ReleaseFile>;
  private readonly probes: FreshMemo<unknown>;

  private readonly maxTargetSize?: number;
  /** Index downloads by URL, for the start of a table before the rest arrives (the last MAX_ENTRIES URLs). */
  private readonly arrivals = new Map<string, IndexArrival>();

  constructor(
    private readonly http: HttpClient,
    opts: { freshMs?: number; maxTargetSize?: number } = {},
  ) {
    this.maxTargetSize = opts.maxTargetSize;
    const freshMs = opts.freshMs ?? DEFAULT_FRESH_MS;
    this.files = new FreshMemo(freshMs);
    this.probes = new FreshMemo(freshMs);
  }

  /** A release file, shared and revalidated as described above (an index parsed as it arrives). */
  file(url: string, opts: { index?: boolean } = {}): Promise<ReleaseFile> {
    const index = opts.index ? { maxTargetSize: this.maxTargetSize } : undefined;
    const arrival = opts.index ? this.arrival(url) : undefined;
    return this.files.get(url, (previous) => fetchReleaseFile(this.http, url, { index, previous, arrival }));
  }

  private arrival(url: string): IndexArrival {
    let a = this.arrivals.get(url);
    if (!a) {
      a = new IndexArrival();
      this.arrivals.set(url, a);
      while (this.arrivals.size > MAX_ENTRIES) this.arrivals.delete(this.arrivals.keys().next().value!);
    }
    return a;
  }

  /**
   * The first chunks of the image's index once they cover `bytes` target bytes, while its download (started by
   * `prepared`, this.prepare's answer) is still under way; undefined when the download ends first: then prepare's
   * answer is the one. Whichever candidate URL answers (findIndex moves on only past a 404).
   */
  indexHead(
    t: ReleaseTarget,
    bytes: number,
    prepared: Promise<PreparedImage | undefined>,
  ): Promise<ChunkIndex | undefined> {
    const heads = t.indexUrls.map((url) => this.arrival(url).head(bytes, prepared));
    return new Promise((resolve) => {
      let left = heads.length;
      if (left === 0) resolve(undefined);
      for (const h of heads) void h.then((head) => (head || --left === 0) && resolve(head));
    });
  }

  /** The image's entry in the SHA256SUMS beside it, if any. */
  sha256(t: ReleaseTarget): Promise<string | undefined> {
    return listedSha256(this, t.sumsUrl, t.name);
  }

  /** The image's index and expected SHA-256; undefined when the origin has none of its index names. */
  async prepare(t: ReleaseTarget, sha256 = this.sha256(t)): Promise<PreparedImage | undefined> {
    const found = await findIndex(this, t.indexUrls);
    const expected = await sha256;
    if (!found) return undefined;
    // Parsed and hashed once, when the file arrived: a fresh or revalidated (304) answer is the same object.
    return {
      index: found.index,
      indexUrl: found.url,
      sha256: expected,
      key: `${t.url}#${found.digest}#${expected ?? ''}`,
    };
  }

  /** The image's length from a HEAD: a 200 with a Content-Length, else undefined (any failure too). */
  async headLength(url: string): Promise<number | undefined> {
    return (await this.head(url)).length;
  }

  /** The image's HEAD: its length (as headLength) and the release's kill switch header, if set. */
  head(url: string): Promise<{ length?: number; deltaOff?: string }> {
    return this.probes.get(`HEAD ${url}`, async () => {
      try {
        const r = await this.http.request(url, { method: 'HEAD', gate: false });
        await r.body.dump();
        const n = Number(r.headers['content-length']);
        const length = r.statusCode === 200 && Number.isSafeInteger(n) && n >= 0 ? n : undefined;
        return { length, deltaOff: deltaDisabledBy(r.headers) };
      } catch {
        return {};
      }
    }) as Promise<{ length?: number; deltaOff?: string }>;
  }

  /**
   * The range probe: the image's first IMAGE_START_BYTES bytes as a Range request. A 206 says the origin serves
   * ranges, and its body is the image's first bytes (empty when they did not come as asked), kept for the
   * delta's first chunks (SourceOptions.imageStart): on a slow link, a request for them sent after the index has
   * begun would queue behind it. Rejects naming the status when the answer is not a 206.
   */
  imageStart(url: string): Promise<Buffer> {
    return this.probes.get(`RANGE ${url}`, async () => {
      const r = await this.http.request(url, {
        headers: { range: `bytes=0-${IMAGE_START_BYTES - 1}` },
        gate: false,
      });
      if (r.statusCode !== 206) {
        // Not destroy(): undici's body then emits an 'error' nobody listens to (the image missing, 404, crashed the
        // daemon once the probe went out with the index); dump() reads a little and closes it quietly.
        await r.body.dump().catch(() => {});
        throw new OriginError(
          `${url}: the origin does not serve byte ranges (HTTP ${r.statusCode} to a Range request)`,
          { status: r.statusCode },
        );
      }
      const range = parseContentRange(r.headers['content-range'] as string | undefined);
      const body = await this.http.readBody(r.body, IMAGE_START_BYTES, url).catch(() => Buffer.alloc(0));
      // Only bytes from 0, exactly as announced, are the image's start.
      return range?.start === 0 && body.length === range.end - range.start ? body : Buffer.alloc(0);
    }) as Promise<Buffer>;
  }

  /**
   * The one-byte probe of the image's block index (whether the release has a block pack), shared the same way: sent
   * with the index, it is answered by the time the delta is planned.
   */
  blockIndex(url: string): Promise<BlockIndexAnswer> {
    return this.probes.get(`BLOCKS ${url}`, () => askBlockIndex(this.http, url)) as Promise<BlockIndexAnswer>;
  }

  /** Any other probe of the origin, shared the same way (e.g. whether it is a deltad proxy). */
  probe<T>(key: string, compute: () => Promise<T>): Promise<T> {
    return this.probes.get(key, compute) as Promise<T>;
  }
}
