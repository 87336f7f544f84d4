// Small upstream files (SHA256SUMS, signatures, indexes) kept on disk and
// revalidated on every request with conditional GETs (If-None-Match /
// If-Modified-Since), so a new release is seen at once; when the upstream is
// unreachable or failing, the last good copy is served marked stale. A 404 is
// passed on (and forgets the copy): signature fallback chains depend on it.
import { mkdir, readFile, unlink } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { HttpClient } from '../fetch/http-client.js';
import { MetadataTooLargeError, OriginError } from '../errors.js';
import { writeFileAtomic } from '../util/fs-io.js';

export interface MetadataEntry {
  status: number;
  body: Buffer;
  contentType?: string;
  etag?: string;
  lastModified?: string;
  /** Served from disk because the upstream could not be reached or failed. */
  stale: boolean;
}

interface StoredHeader {
  url: string;
  contentType?: string;
  etag?: string;
  lastModified?: string;
  length: number;
}

export class MetadataCache {
  constructor(
    private readonly dir: string,
    private readonly client: HttpClient,
    /** Largest file kept (default 64 MiB, enough for the index of a 100 GiB image). */
    private readonly maxBytes = 64 * 1024 * 1024,
  ) {}

  private pathOf(url: string): string {
    return join(this.dir, createHash('sha256').update(url).digest('hex'));
  }

  /** The upstream's current answer for `url` (200 body, 404, other 4xx), or the cached copy marked stale. */
  async fetch(url: string, signal?: AbortSignal): Promise<MetadataEntry> {
    const cached = await this.load(url);
    const headers: Record<string, string> = {};
    if (cached?.etag) headers['if-none-match'] = cached.etag;
    if (cached?.lastModified) headers['if-modified-since'] = cached.lastModified;
    try {
      return await this.client.withRetry(async () => {
        const res = await this.client.request(url, { headers, signal });
        const status = res.statusCode;
        if (status === 304 && cached) {
          await res.body.dump();
          return cached;
        }
        if (status === 200) {
          const declared = Number(res.headers['content-length'] ?? NaN);
          if (declared > this.maxBytes) {
            res.body.destroy();
            throw new MetadataTooLargeError(
              `GET ${url}: ${declared} bytes is more than the ${this.maxBytes}-byte limit for cached files`,
            );
          }
          const body = await this.client.readBody(res.body, this.maxBytes, url).catch((err: Error) => {
            throw /exceeds the/.test(err.message) ? new MetadataTooLargeError(err.message) : err;
          });
          if (!Number.isNaN(declared) && body.length !== declared)
            throw new OriginError(`GET ${url}: truncated body (${body.length} of ${declared} bytes)`, {
              transient: true,
            });
          const entry: MetadataEntry = {
            status,
            body,
            contentType: str(res.headers['content-type']),
            etag: str(res.headers.etag),
            lastModified: str(res.headers['last-modified']),
            stale: false,
          };
          await this.save(url, entry);
          return entry;
        }
        await res.body.dump();
        if (status === 404 || status === 410) {
          await unlink(this.pathOf(url)).catch(() => {});
          return { status, body: Buffer.alloc(0), stale: false };
        }
        throw new OriginError(`GET ${url}: HTTP ${status}`, { status, transient: status >= 500 || status === 429 });
      }, signal);
    } catch (err) {
      if (signal?.aborted || err instanceof MetadataTooLargeError) throw err;
      const status = (err as OriginError).status;
      // A definite client error (401, 403...) is the upstream's answer, not an outage.
      if (status !== undefined && status >= 400 && status < 500 && status !== 429)
        return { status, body: Buffer.alloc(0), stale: false };
      if (cached) return { ...cached, stale: true };
      throw err;
    }
  }

  private async load(url: string): Promise<MetadataEntry | null> {
    let raw: Buffer;
    try {
      raw = await readFile(this.pathOf(url));
    } catch {
      return null;
    }
    try {
      const n = raw.readUInt32LE(0);
      const head = JSON.parse(raw.subarray(4, 4 + n).toString('utf8')) as StoredHeader;
      const body = raw.subarray(4 + n);
      if (head.url !== url || body.length !== head.length) return null;
      return {
        status: 200,
        body,
        contentType: head.contentType,
        etag: head.etag,
        lastModified: head.lastModified,
        stale: false,
      };
    } catch {
      return null;
    }
  }

  /** Writes `[u32 header length][JSON header][body]` to a temp file and renames it into place. */
  private async save(url: string, e: MetadataEntry): Promise<void> {
    const head: StoredHeader = {
      url,
      contentType: e.contentType,
      etag: e.etag,
      lastModified: e.lastModified,
      length: e.body.length,
    };
    const json = Buffer.from(JSON.stringify(head));
    const len = Buffer.alloc(4);
    len.writeUInt32LE(json.length);
    const final = this.pathOf(url);
    try {
      await mkdir(this.dir, { recursive: true });
      // Not flushed: a cached copy lost in a crash is fetched again.
      await writeFileAtomic(final, Buffer.concat([len, json, e.body]), { durable: false });
    } catch {
      // A full disk only costs the stale fallback for this file (writeFileAtomic leaves no temp file).
    }
  }
}

function str(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}
