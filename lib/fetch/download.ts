// A whole file over HTTP into a local path: what a client does when the
// release switches deltas off. Written to a temp file beside the output
// (created exclusively, so a planted symlink is never followed), checked
// against the announced length and the expected SHA-256, synced, then renamed
// into place; on any failure the temp file is removed and `out` is untouched.
import { createHash } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ChecksumMismatchError, OriginError } from '../errors.js';
import type { HttpClient } from './http-client.js';

export interface DownloadOptions {
  /** Expected SHA-256 (hex) of the whole file. */
  sha256?: string;
  fileMode?: number;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number | undefined) => void;
}

export interface DownloadResult {
  bytes: number;
  sha256: string;
  /** Where the bytes came from (after redirects). */
  url: string;
}

export async function downloadToFile(
  http: HttpClient,
  url: string,
  out: string,
  opts: DownloadOptions = {},
): Promise<DownloadResult> {
  const tmp = join(dirname(out), `.${basename(out)}.deltad-download`);
  const res = await http.withRetry(async () => {
    const r = await http.request(url, { signal: opts.signal });
    if (r.statusCode !== 200) {
      await r.body.dump();
      const transient = r.statusCode >= 500 || r.statusCode === 429;
      throw new OriginError(`GET ${url}: HTTP ${r.statusCode}`, { status: r.statusCode, transient });
    }
    return r;
  }, opts.signal);
  const declared = Number(res.headers['content-length']);
  const total = Number.isSafeInteger(declared) ? declared : undefined;
  await unlink(tmp).catch(() => {});
  const file = await open(tmp, 'wx', opts.fileMode ?? 0o644);
  const hash = createHash('sha256');
  let bytes = 0;
  try {
    try {
      for await (const part of res.body) {
        const b = part as Buffer;
        hash.update(b);
        await file.write(b);
        bytes += b.length;
        opts.onProgress?.(bytes, total);
      }
    } catch (err) {
      if ((err as Error).name === 'AbortError' || err instanceof OriginError) throw err;
      throw new OriginError(`GET ${url}: ${(err as Error).message}`, { transient: true, cause: err });
    }
    if (total !== undefined && bytes !== total) {
      throw new OriginError(`GET ${url}: truncated body (${bytes} of ${total} bytes)`);
    }
    const sha256 = hash.digest('hex');
    const expected = opts.sha256?.toLowerCase();
    if (expected && sha256 !== expected) throw new ChecksumMismatchError(expected, sha256, url);
    await file.sync();
    await file.close();
    await rename(tmp, out);
    return { bytes, sha256, url: res.url };
  } catch (err) {
    res.body.destroy();
    await file.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw err;
  }
}
