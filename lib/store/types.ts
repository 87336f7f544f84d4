// The chunk-store contract shared by local directories, HTTP stores, the fleet
// proxy's cache and the assembler. Everything returned is verified data.
import type { TakeBuffer } from './compression.js';

export type { TakeBuffer };

export interface ChunkRequest {
  /** 32-byte chunk ID (digest of the uncompressed bytes). */
  id: Uint8Array;
  /** Expected uncompressed size, from the index; checked when given. */
  size?: number;
}

export interface ChunkStore {
  /** Human-readable location (directory or URL), for messages. */
  readonly location: string;
  /**
   * Returns the chunk's uncompressed bytes, verified against its ID (and size),
   * or null when the store does not have it. Throws ChunkVerifyError for
   * corrupt content and other errors for I/O or network failures. A store may
   * decode into a buffer from `take` (of exactly the size asked for), so that
   * chunks come in reused buffers; others ignore it.
   */
  get(req: ChunkRequest, signal?: AbortSignal, take?: TakeBuffer): Promise<Buffer | null>;
  has(id: Uint8Array, signal?: AbortSignal): Promise<boolean>;
  /**
   * Optional batch fetch (a deltad proxy's batch endpoint): yields verified
   * chunks as they arrive, in any order, by position in `reqs`; chunks the
   * store lacks are simply not yielded.
   */
  getMany?(reqs: ChunkRequest[], signal?: AbortSignal): AsyncIterable<{ index: number; data: Buffer }>;
  close?(): Promise<void>;
}

export interface WritableChunkStore extends ChunkStore {
  /** Stores uncompressed data under id (atomically; a no-op when present). Returns true when written. */
  put(id: Uint8Array, data: Uint8Array): Promise<boolean>;
}
