// A whole file over HTTP into a local path: what a client does when the
// release switches deltas off. Written by the one atomic write (lib/util/fs-io:
// a temp file beside the output, never through a planted symlink, synced,
// renamed), checked against the announced length and the expected SHA-256
// before the rename; on any failure the temp file is removed and `out` is untouched.
import { createHash } from 'node:crypto';
import { basename } from 'node:path';
import { ChecksumMismatchError, DeltadError, fileError, OriginError } from '../errors.js';
import { replaceFile, writeFully } from '../util/fs-io.js';
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
  const hash = createHash('sha256');
  let bytes = 0;
  let sha256 = '';
  try {
    // A fixed temp name: a run that died leaves one image-sized file, which the next run replaces.
    const temp = `.${basename(out)}.deltad-download`;
    await replaceFile(
      out,
      async (file) => {
        try {
          for await (const part of res.body) {
            const b = part as Buffer;
            hash.update(b);
            await writeFully(file, b, bytes).catch((err: unknown) => Promise.reject(fileError(err, out, true)));
            bytes += b.length;
            opts.onProgress?.(bytes, total);
          }
        } catch (err) {
          // The origin's failures and our own (a full disk) as they are; anything else cut the body.
          if ((err as Error).name === 'AbortError' || err instanceof DeltadError) throw err;
          throw new OriginError(`GET ${url}: ${(err as Error).message}`, { transient: true, cause: err });
        }
        if (total !== undefined && bytes !== total) {
          throw new OriginError(`GET ${url}: truncated body (${bytes} of ${total} bytes)`);
        }
        sha256 = hash.digest('hex');
        const expected = opts.sha256?.toLowerCase();
        if (expected && sha256 !== expected) throw new ChecksumMismatchError(expected, sha256, url);
      },
      { mode: opts.fileMode ?? 0o644, temp },
    );
    return { bytes, sha256, url: res.url };
  } catch (err) {
    res.body.destroy();
    throw err;
  }
}
