// The small files that describe a release (its .caibx index, SHA256SUMS,
// signatures), fetched the one way every caller shares: the sidecar's release
// preparation (lib/delta/release.ts, kept while fresh), the fleet proxy's
// metadata cache (lib/fleet/metadata-cache.ts, kept on disk, served stale when
// the upstream is down) and the CLI's index download (lib/delta/extract.ts
// loadIndex, kept nowhere). One GET: revalidated against the copy the caller
// kept (If-None-Match / If-Modified-Since, a 304 answers with that copy),
// bounded before and while the body is read, and an index is parsed and
// hashed as it arrives, so an endless or oversized index fails at the first
// byte too many whoever asked.
import { createHash } from 'node:crypto';
import { BodyTooLargeError, OriginError } from '../errors.js';
import { IndexParser, MAX_INDEX_BYTES, type ChunkIndex } from '../format/caibx.js';
import { findSha256 } from '../format/sha256sums.js';
import type { HttpClient } from './http-client.js';

/** A release file as last answered: status 200 with its body, or 404/410 (nothing there, empty body). */
export interface ReleaseFile {
  status: number;
  /** The body (empty for an index fetched without `keepBody`). */
  body: Buffer;
  contentType?: string;
  etag?: string;
  lastModified?: string;
  /** An index file: parsed as it arrived (its body never grew past what the parser allows). */
  index?: ChunkIndex;
  /** SHA-256 (hex) of an index file's body, computed once as it arrived: identifies this version. */
  digest?: string;
}

/** How an index file is read. */
export interface IndexFileOptions {
  /** Largest target the index may describe (default 64 GiB). */
  maxTargetSize?: number;
  /** Accept an archive index (.caidx); default false (a blob index is required). */
  allowArchive?: boolean;
}

export interface ReleaseFileOptions {
  /** Largest body accepted (default: MAX_INDEX_BYTES for an index, else 1 MiB). */
  maxBytes?: number;
  /** Parse the body as an index, as it arrives. */
  index?: IndexFileOptions;
  /** Keep the body of an index too (default false: the parsed index and its digest are what callers use). */
  keepBody?: boolean;
  /** The copy kept from an earlier answer: revalidated, and returned as it is on a 304. */
  previous?: ReleaseFile;
  /** An index's download, told about each part as it is parsed (the start of its table, before the rest arrives). */
  arrival?: IndexArrival;
  signal?: AbortSignal;
}

/**
 * An index on its way: the first chunks of its table as they are parsed, for a first body byte that does not wait
 * for the rest (the table of a 4 GiB image is ~4 MB: seconds on a slow link). What it hands out is only ever a
 * start of the table; whoever uses it checks the whole index against it once that has arrived (it may have come
 * from another attempt), and the whole download can still fail.
 */
export class IndexArrival {
  private parser?: IndexParser;
  private ended = false;
  private waiters: { bytes: number; resolve: (head: ChunkIndex | undefined) => void }[] = [];

  /** A download (attempt) starts: what an earlier one parsed no longer counts. */
  start(): void {
    this.parser = undefined;
    this.ended = false;
  }

  /** The download's parser after a part of the body. */
  update(parser: IndexParser): void {
    this.parser = parser;
    if (this.waiters.length === 0) return;
    const covered = parser.parsedBytes;
    this.waiters = this.waiters.filter((w) => {
      if (covered < w.bytes) return true;
      w.resolve(parser.prefix());
      return false;
    });
  }

  /** The download ended (complete, failed, or not an index): the whole answer is what counts now. */
  end(): void {
    this.ended = true;
    this.parser = undefined;
    for (const w of this.waiters.splice(0)) w.resolve(undefined);
  }

  /**
   * The table's first chunks once they cover `bytes` target bytes; undefined when the download ends first (then
   * the whole index, or its failure, is the answer), or `until` settles first (e.g. no download of this URL comes).
   */
  head(bytes: number, until?: Promise<unknown>): Promise<ChunkIndex | undefined> {
    if (this.ended) return Promise.resolve(undefined);
    const p = this.parser;
    if (p && p.parsedBytes >= bytes) return Promise.resolve(p.prefix());
    return new Promise((resolve) => {
      const waiter = { bytes, resolve };
      this.waiters.push(waiter);
      const drop = () => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        resolve(undefined);
      };
      until?.then(drop, drop);
    });
  }
}

/** Largest SHA256SUMS (or other small file) by default. */
export const MANIFEST_MAX = 1024 * 1024;

/**
 * GETs a release file with the client's retries. 200: the body (and index); 404/410: nothing there; 304 to a kept
 * copy: that copy. Any other status is an OriginError with the status (transient for 5xx and 429); a body announced
 * or read beyond `maxBytes` is a BodyTooLargeError; an index that is not one, or goes beyond what `maxTargetSize`
 * allows (announced or read), is an IndexFormatError at the first byte too many.
 */
export async function fetchReleaseFile(
  http: HttpClient,
  url: string,
  opts: ReleaseFileOptions = {},
): Promise<ReleaseFile> {
  const { previous, index } = opts;
  const maxBytes = opts.maxBytes ?? (index ? MAX_INDEX_BYTES : MANIFEST_MAX);
  const headers: Record<string, string> = {};
  if (previous?.status === 200 && previous.etag) headers['if-none-match'] = previous.etag;
  if (previous?.status === 200 && previous.lastModified) headers['if-modified-since'] = previous.lastModified;
  const arrival = index ? opts.arrival : undefined;
  return http
    .withRetry(async () => {
      arrival?.start();
      // Release files are a few distinct URLs asked together: none waits for another's redirects.
      const res = await http.request(url, { headers, signal: opts.signal, gate: false });
      const status = res.statusCode;
      if (status === 304 && previous?.status === 200) {
        await res.body.dump();
        return previous;
      }
      if (status === 404 || status === 410) {
        await res.body.dump();
        return { status, body: Buffer.alloc(0) };
      }
      if (status !== 200) {
        await res.body.dump();
        throw new OriginError(`GET ${url}: HTTP ${status}`, { status, transient: status >= 500 || status === 429 });
      }
      const length = Number(res.headers['content-length'] ?? Number.NaN);
      const declared = Number.isSafeInteger(length) ? length : undefined;
      if (declared !== undefined && declared > maxBytes) {
        res.body.destroy();
        throw new BodyTooLargeError(`GET ${url}: ${declared} bytes exceeds the ${maxBytes}-byte limit`, maxBytes);
      }
      const parseOpts = {
        source: url,
        allowArchive: index?.allowArchive ?? false,
        maxTargetSize: index?.maxTargetSize,
      };
      const parser = index && new IndexParser(parseOpts, declared);
      const hash = index && createHash('sha256');
      let bytes = 0;
      const onPart = (b: Buffer) => {
        bytes += b.length;
        parser?.push(b);
        hash?.update(b);
        if (parser) arrival?.update(parser);
      };
      const body = await http.readBody(res.body, maxBytes, url, onPart, !index || opts.keepBody === true);
      if (declared !== undefined && bytes !== declared) {
        throw new OriginError(`GET ${url}: truncated body (${bytes} of ${declared} bytes)`, { transient: true });
      }
      return {
        status,
        body,
        contentType: header(res.headers['content-type']),
        etag: header(res.headers.etag),
        lastModified: header(res.headers['last-modified']),
        index: parser?.finish(),
        digest: hash?.digest('hex'),
      };
    }, opts.signal)
    .finally(() => arrival?.end());
}

/** Where a caller's release files come from: fetched with fetchReleaseFile, through that caller's own keeping. */
export interface ReleaseFileSource {
  /** `url` as fetchReleaseFile answers it (an index parsed, when `index`), from the caller's copy where fresh. */
  file(url: string, opts: { index?: boolean; signal?: AbortSignal }): Promise<ReleaseFile>;
}

/** An index file that answered: parsed and hashed. */
export interface FoundIndex {
  url: string;
  index: ChunkIndex;
  digest: string;
}

/**
 * The first of `urls` the origin has as an index: a 404 or 410 moves on to the next, any other answer ends the
 * search; undefined when none answered 200.
 */
export async function findIndex(
  files: ReleaseFileSource,
  urls: readonly string[],
  signal?: AbortSignal,
): Promise<FoundIndex | undefined> {
  for (const url of urls) {
    const file = await files.file(url, { index: true, signal });
    if (file.status === 200 && file.index && file.digest) return { url, index: file.index, digest: file.digest };
    if (file.status !== 404 && file.status !== 410) return undefined;
  }
  return undefined;
}

/** The SHA-256 that the SHA256SUMS at `sumsUrl` lists for `name`; undefined when it has no entry or is not there. */
export async function listedSha256(
  files: ReleaseFileSource,
  sumsUrl: string,
  name: string,
  signal?: AbortSignal,
): Promise<string | undefined> {
  const sums = await files.file(sumsUrl, { signal });
  return sums.status === 200 ? findSha256(sums.body.toString('utf8'), name) : undefined;
}

function header(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}
