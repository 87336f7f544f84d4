// A casync/desync chunk store over HTTP(S) (SPEC §4.3), read-only: GET
// `<base>/<4hex>/<id>.cacnk` (or the raw name for an uncompressed store), HEAD
// for has(). Retries, timeouts and counters come from the shared HttpClient;
// every body is bounded, decoded and verified before it is returned.
import { HttpClient, joinParts } from '../fetch/http-client.js';
import { BodyTooLargeError, ChunkVerifyError, OriginError } from '../errors.js';
import { toHex } from '../format/digest.js';
import { maxEncodedSize } from './compression.js';
import type { ChunkRequest, ChunkStore, TakeBuffer } from './types.js';
import { chunkRelativePath, decodeChunk, resolveFormat, sizeLimit, type StoreFormat } from './chunk-file.js';

export interface HttpStoreOptions extends StoreFormat {
  /** Shared client (its counters then include this store's traffic). One is created when absent. */
  client?: HttpClient;
  /** The store holds extension-less uncompressed chunks (desync `uncompressed`). */
  uncompressed?: boolean;
  /** Extra request headers, e.g. desync's `Authorization` (http-auth) or `Cookie`. */
  headers?: Record<string, string>;
}

/** casync's rule: cut the URL at the first `?` or `;` and drop trailing slashes. */
export function normalizeStoreUrl(url: string): string {
  const cut = url.search(/[?;]/);
  return (cut === -1 ? url : url.slice(0, cut)).replace(/\/+$/, '');
}

export class HttpStore implements ChunkStore {
  readonly location: string;
  readonly client: HttpClient;
  readonly uncompressed: boolean;
  private readonly ownsClient: boolean;
  private readonly format: ReturnType<typeof resolveFormat>;
  private readonly headers: Record<string, string>;

  constructor(baseUrl: string, opts: HttpStoreOptions = {}) {
    this.location = normalizeStoreUrl(baseUrl);
    this.ownsClient = !opts.client;
    this.client = opts.client ?? new HttpClient();
    this.uncompressed = opts.uncompressed ?? false;
    this.format = resolveFormat(opts);
    this.headers = opts.headers ?? {};
  }

  chunkUrl(id: Uint8Array | string): string {
    return `${this.location}/${chunkRelativePath(id, !this.uncompressed)}`;
  }

  async get(req: ChunkRequest, signal?: AbortSignal, take?: TakeBuffer): Promise<Buffer | null> {
    const url = this.chunkUrl(req.id);
    const limit = sizeLimit(req.size, this.format);
    const maxBytes = this.uncompressed ? limit : maxEncodedSize(limit);
    const res = await this.client.getParts(url, { headers: this.headers, signal, maxBytes }).catch((err) => {
      // An oversized answer is this chunk's problem (like garbage or wrong content), not the store's.
      if (err instanceof BodyTooLargeError)
        throw new ChunkVerifyError(
          toHex(req.id),
          `answer exceeds the ${maxBytes}-byte limit of a ${limit}-byte chunk`,
          url,
        );
      throw err;
    });
    if (res.status === 404 || res.status === 410) return null;
    if (this.uncompressed || res.parts.length === 1)
      return decodeChunk(joinParts(res.parts, res.length), !this.uncompressed, req, this.format, url, take);
    // A compressed chunk of several reads is joined in a buffer reused for the next one: decoding (synchronous,
    // right here) makes new bytes, so the joined copy is not needed after it.
    if (this.joined.length < res.length)
      this.joined = Buffer.allocUnsafeSlow(Math.max(res.length, 2 * this.joined.length));
    let at = 0;
    for (const p of res.parts) {
      this.joined.set(p, at);
      at += p.length;
    }
    return decodeChunk(this.joined.subarray(0, at), true, req, this.format, url, take);
  }

  /** Where a compressed chunk that came in several reads is joined (grows to the largest such chunk). */
  private joined: Buffer = Buffer.alloc(0);

  async has(id: Uint8Array, signal?: AbortSignal): Promise<boolean> {
    const url = this.chunkUrl(id);
    return this.client.withRetry(async () => {
      const res = await this.client.request(url, { method: 'HEAD', headers: this.headers, signal });
      await res.body.dump();
      if (res.statusCode >= 200 && res.statusCode < 300) return true;
      if (res.statusCode === 404 || res.statusCode === 410) return false;
      throw new OriginError(`HEAD ${url}: HTTP ${res.statusCode}`, {
        status: res.statusCode,
        transient: res.statusCode >= 500 || res.statusCode === 429,
      });
    }, signal);
  }

  async close(): Promise<void> {
    if (this.ownsClient) await this.client.close();
  }
}
