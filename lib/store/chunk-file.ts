// What local and HTTP stores share about one stored chunk (SPEC §4.1–4.2): its
// name in the casync layout, and turning its stored bytes into verified data.
import { ChunkEncodingError, ChunkVerifyError, UsageError } from '../errors.js';
import { chunkId, fromHex, toHex, type DigestName } from '../format/digest.js';
import { decompressChunk, type TakeBuffer } from './compression.js';
import { CHUNK_SIZE_LIMIT_MAX } from '../format/caibx.js';

export const COMPRESSED_SUFFIX = '.cacnk';

/** `<4hex>/<64hex>.cacnk`, or without the suffix for an uncompressed chunk. */
export function chunkRelativePath(id: Uint8Array | string, compressed: boolean): string {
  // A string ID must be 64 lowercase hex characters: never a path of its own.
  const hex = typeof id === 'string' ? toHex(fromHex(id)) : toHex(id);
  if (hex.length !== 64) throw new UsageError(`invalid chunk id ${hex}: expected 32 bytes`);
  return `${hex.slice(0, 4)}/${hex}${compressed ? COMPRESSED_SUFFIX : ''}`;
}

export interface StoreFormat {
  /** Digest the store's chunk IDs use (the index's). Default sha512-256. */
  digest?: DigestName;
  /** Largest chunk accepted when the index gives no size (the index's max). Default 128 MiB. */
  maxChunkSize?: number;
}

export function resolveFormat(opts: StoreFormat): Required<StoreFormat> {
  return { digest: opts.digest ?? 'sha512-256', maxChunkSize: opts.maxChunkSize ?? CHUNK_SIZE_LIMIT_MAX };
}

/** Most uncompressed bytes a request may yield: its index size, else the store's max. */
export function sizeLimit(size: number | undefined, format: Required<StoreFormat>): number {
  return size ?? format.maxChunkSize;
}

/**
 * Decodes stored bytes (compressed or raw) and checks size and digest against
 * the request. Throws ChunkVerifyError naming the ID and `source` (path or URL).
 * With `take`, the data comes in a buffer it gave (a copy for a raw chunk).
 */
export function decodeChunk(
  stored: Uint8Array,
  compressed: boolean,
  req: { id: Uint8Array; size?: number },
  format: Required<StoreFormat>,
  source: string,
  take?: TakeBuffer,
): Buffer {
  const hex = toHex(req.id);
  const limit = sizeLimit(req.size, format);
  let data: Buffer;
  if (compressed) {
    try {
      data = decompressChunk(stored, limit, take, req.size !== undefined);
    } catch (err) {
      if (err instanceof ChunkEncodingError) throw new ChunkVerifyError(hex, `is unreadable: ${err.message}`, source);
      throw err;
    }
  } else {
    if (stored.length === 0) throw new ChunkVerifyError(hex, 'is empty', source);
    if (stored.length > limit)
      throw new ChunkVerifyError(hex, `has ${stored.length} bytes, more than the ${limit}-byte limit`, source);
    data = Buffer.from(stored.buffer, stored.byteOffset, stored.byteLength);
    if (take) {
      const copy = take(data.length);
      copy.set(data);
      data = copy;
    }
  }
  if (req.size !== undefined && data.length !== req.size) {
    throw new ChunkVerifyError(hex, `has ${data.length} bytes, the index says ${req.size}`, source);
  }
  const actual = chunkId(format.digest, data);
  if (!actual.equals(req.id)) {
    throw new ChunkVerifyError(
      hex,
      `content does not match its ID (${format.digest} of the content is ${toHex(actual)})`,
      source,
    );
  }
  return data;
}
