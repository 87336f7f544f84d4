// Small upstream files (SHA256SUMS, signatures, indexes) kept on disk and
// revalidated on every request with conditional GETs (If-None-Match /
// If-Modified-Since), so a new release is seen at once; when the upstream is
// unreachable or failing, the last good copy is served marked stale. A 404 is
// passed on (and forgets the copy): signature fallback chains depend on it.
// The GET itself (revalidation, bounds, an index parsed and hashed as it
// arrives) is lib/fetch/release-files.ts, shared with the sidecar and the CLI.
import { mkdir, readFile, unlink } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { HttpClient } from '../fetch/http-client.js';
import { fetchReleaseFile, type ReleaseFile, type ReleaseFileSource } from '../fetch/release-files.js';
import { BodyTooLargeError, IndexFormatError, type OriginError } from '../errors.js';
import { parseIndex, type ChunkIndex } from '../format/caibx.js';
import { writeFileAtomic } from '../util/fs-io.js';

export interface MetadataEntry extends ReleaseFile {
  /** Served from disk because the upstream could not be reached or failed. */
  stale: boolean;
}

interface StoredHeader {
  url: string;
  contentType?: string;
  etag?: string;
  lastModified?: string;
  length: number;
  /** SHA-256 of an index file's body (so a copy read back is not hashed again). */
  digest?: string;
}

export class MetadataCache implements ReleaseFileSource {
  /** Indexes parsed so far, by URL: a copy read back from disk with the same digest is not parsed again. */
  private readonly parsed = new Map<string, { digest: string; index: ChunkIndex }>();

  constructor(
    private readonly dir: string,
    private readonly client: HttpClient,
    /** Largest file kept (default 64 MiB, enough for the index of a 100 GiB image). */
    private readonly maxBytes = 64 * 1024 * 1024,
    /** Largest target an index may describe (default 64 GiB). */
    private readonly maxTargetSize?: number,
  ) {}

  private pathOf(url: string): string {
    return join(this.dir, createHash('sha256').update(url).digest('hex'));
  }

  /**
   * The upstream's current answer for `url` (200 body, 404, other 4xx), or the cached copy marked stale. `index`: the
   * body is an index, parsed as it arrives (an IndexFormatError when it is not one). A body beyond the limit is a
   * BodyTooLargeError: stream it through instead.
   */
  async file(url: string, opts: { index?: boolean; signal?: AbortSignal } = {}): Promise<MetadataEntry> {
    const { signal } = opts;
    const index = opts.index ? { maxTargetSize: this.maxTargetSize } : undefined;
    const cached = await this.load(url, opts.index ?? false);
    try {
      const got = await fetchReleaseFile(this.client, url, {
        maxBytes: this.maxBytes,
        index,
        keepBody: true,
        previous: cached ?? undefined,
        signal,
      });
      if (got === cached) return cached;
      if (got.status === 200) {
        await this.save(url, got);
        if (got.index && got.digest) this.parsed.set(url, { digest: got.digest, index: got.index });
      } else {
        await unlink(this.pathOf(url)).catch(() => {});
        this.parsed.delete(url);
      }
      return { ...got, stale: false };
    } catch (err) {
      // Too large to keep, or not an index: the upstream's answer as it is, not an outage.
      if (signal?.aborted || err instanceof BodyTooLargeError || err instanceof IndexFormatError) throw err;
      const status = (err as OriginError).status;
      // A definite client error (401, 403...) is the upstream's answer, not an outage.
      if (status !== undefined && status >= 400 && status < 500 && status !== 429)
        return { status, body: Buffer.alloc(0), stale: false };
      if (cached) return { ...cached, stale: true };
      throw err;
    }
  }

  /** The copy on disk (an index parsed, unless this digest was parsed before); null when none or unreadable. */
  private async load(url: string, isIndex: boolean): Promise<MetadataEntry | null> {
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
      // The body is checked, not the stored digest trusted: a copy damaged on disk is fetched again, never served.
      const digest = createHash('sha256').update(body).digest('hex');
      if (head.digest !== undefined && head.digest !== digest) return null;
      const entry: MetadataEntry = {
        status: 200,
        body,
        contentType: head.contentType,
        etag: head.etag,
        lastModified: head.lastModified,
        stale: false,
      };
      if (!isIndex) return entry;
      const known = this.parsed.get(url);
      const index =
        known?.digest === digest
          ? known.index
          : parseIndex(body, { source: url, allowArchive: false, maxTargetSize: this.maxTargetSize });
      this.parsed.set(url, { digest, index });
      return { ...entry, index, digest };
    } catch {
      // Damaged, or not an index after all: fetched again in full.
      return null;
    }
  }

  /** Writes `[u32 header length][JSON header][body]` to a temp file and renames it into place. */
  private async save(url: string, e: ReleaseFile): Promise<void> {
    const head: StoredHeader = {
      url,
      contentType: e.contentType,
      etag: e.etag,
      lastModified: e.lastModified,
      length: e.body.length,
      digest: e.digest ?? createHash('sha256').update(e.body).digest('hex'),
    };
    const json = Buffer.from(JSON.stringify(head));
    const len = Buffer.alloc(4);
    len.writeUInt32LE(json.length);
    const final = this.pathOf(url);
    try {
      await mkdir(this.dir, { recursive: true });
      // Not flushed: a cached copy lost in a crash is fetched again.
      await writeFileAtomic(final, Buffer.concat([len, json, e.body]), { durable: false, sweep: true });
    } catch {
      // A full disk only costs the stale fallback for this file (writeFileAtomic leaves no temp file).
    }
  }
}
