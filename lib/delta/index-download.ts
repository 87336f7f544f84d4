// A target index over HTTP, parsed as it arrives (lib/format/caibx.ts
// IndexParser): memory follows what the header and the maximum target size
// allow, never what the origin sends. An announced length beyond that is
// refused before the body is read; an endless or oversized body fails at the
// first byte too many.
import { createHash } from 'node:crypto';
import { IndexFormatError, OriginError } from '../errors.js';
import { IndexParser, MAX_INDEX_BYTES, type ChunkIndex } from '../format/caibx.js';
import { toOriginError, type HttpClient } from '../fetch/http-client.js';

export interface IndexDownloadOptions {
  signal?: AbortSignal;
  /** Largest target the index may describe (default 64 GiB). */
  maxTargetSize?: number;
  /** Accept an archive index (.caidx); default false (a blob index is required). */
  allowArchive?: boolean;
}

export interface DownloadedIndex {
  index: ChunkIndex;
  /** SHA-256 (hex) of the index file as downloaded: identifies this version. */
  sha256: string;
  /** Body bytes received. */
  bytes: number;
}

/** GETs and parses an index (with the client's retries); null on 404/410. Other statuses and bad bodies throw. */
export async function downloadIndex(
  http: HttpClient,
  url: string,
  opts: IndexDownloadOptions = {},
): Promise<DownloadedIndex | null> {
  return http.withRetry(async () => {
    const res = await http.request(url, { signal: opts.signal });
    if (res.statusCode === 404 || res.statusCode === 410) {
      await res.body.dump();
      return null;
    }
    if (res.statusCode < 200 || res.statusCode >= 300) {
      await res.body.dump();
      const transient = res.statusCode >= 500 || res.statusCode === 429;
      throw new OriginError(`GET ${url}: HTTP ${res.statusCode}`, { status: res.statusCode, transient });
    }
    const declaredHeader = res.headers['content-length'];
    const declared = declaredHeader === undefined ? undefined : Number(declaredHeader);
    if (declared !== undefined && declared > MAX_INDEX_BYTES) {
      res.body.destroy();
      const detail = `${declared} bytes announced, more than the ${MAX_INDEX_BYTES}-byte limit`;
      throw new IndexFormatError('file size', 0, detail, url);
    }
    const parseOpts = { source: url, allowArchive: opts.allowArchive ?? false, maxTargetSize: opts.maxTargetSize };
    const parser = new IndexParser(parseOpts, declared);
    const hash = createHash('sha256');
    let bytes = 0;
    try {
      for await (const part of res.body) {
        const b = part as Buffer;
        bytes += b.length;
        hash.update(b);
        parser.push(b);
      }
    } catch (err) {
      res.body.destroy();
      throw err instanceof IndexFormatError ? err : toOriginError(err, url);
    }
    if (declared !== undefined && bytes !== declared) {
      throw new OriginError(`GET ${url}: truncated body (${bytes} of ${declared} bytes)`, { transient: true });
    }
    return { index: parser.finish(), sha256: hash.digest('hex'), bytes };
  }, opts.signal);
}
