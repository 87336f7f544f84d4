// deltad's library API: what a program needs to index images, serve and read
// casync stores, and download a new image as a delta. Everything else in lib/
// is internal (the daemon and the tests import it by path); package.json's
// `exports` also offers a few stage modules as subpaths (deltad/extract, ...).

// Errors: every failure is a DeltadError with an ERR_DELTAD_* code.
export * from './errors.js';

// Chunk IDs and the .caibx index format.
export { chunkId, fromHex, isChunkIdHex, toHex, type DigestName } from './format/digest.js';
export {
  ChunkIndex,
  ChunkIndexBuilder,
  parseIndex,
  readIndexFile,
  serializeIndex,
  type ChunkParams,
  type ParseOptions,
} from './format/caibx.js';
export { findSha256 } from './format/sha256sums.js';

// Chunking and indexing (byte-identical to casync make).
export { Chunker, DEFAULT_CHUNK_PARAMS, parseChunkSize, type ChunkerVariant } from './chunking/chunker.js';
export { indexBuffer, indexFile, type IndexOptions } from './chunking/indexer.js';
export { defaultCacheDir, IndexCache } from './seed/index-cache.js';

// The HTTP client every fetch goes through.
export { HttpClient, type HttpClientOptions, type HttpStats } from './fetch/http-client.js';

// Chunk stores (casync/desync layout), filling and checking them.
export type { ChunkRequest, ChunkStore, WritableChunkStore } from './store/types.js';
export { LocalStore, type LocalStoreOptions } from './store/local-store.js';
export { HttpStore, type HttpStoreOptions } from './store/http-store.js';
export { openStore, openWritableStore } from './store/open-store.js';
export { chopFile, type ChopOptions, type ChopResult } from './tools/chop.js';
export { verifyFile, verifyStore, type VerifyFileResult, type VerifyStoreResult } from './tools/verify.js';

// Delta downloads: plan, extract to a file or a verified stream, one preparation per release.
export {
  extractToFile,
  loadIndex,
  openExtractStream,
  planUpdate,
  type AssembleOptions,
  type ExtractProgress,
  type ExtractResult,
  type ExtractStream,
  type ExtractStreamOptions,
  type ExtractToFileOptions,
  type FetchMode,
  type PlanReport,
  type SeedSpec,
  type SourceOptions,
} from './delta/extract.js';
export { Releases, type PreparedImage, type ReleaseTarget } from './delta/release.js';
// What the HTTP client may measure and the cost model prices requests with (SourceOptions.link).
export type { LinkEstimate } from './plan/cost.js';

// Fleet: a sidecar's client of a deltad proxy's batch endpoint.
export { openProxyStore, type BatchStoreOptions } from './fleet/batch-store.js';

// The block-pack path (docs/BLOCKPACK.md).
export * as blockpack from './blockpack/index.js';
