// deltad's library API: everything the daemon, the CLI and other programs use.
// Internal helpers (worker entry points, chunk-file layout, kernels) stay unexported.

// Basics: errors, chunk IDs, the index format, HTTP.
export * from './errors.js';
export * from './digest.js';
export * from './caibx.js';
export * from './http-client.js';

// Chunking and indexing.
export * from './chunker.js';
export * from './indexer.js';
export * from './index-cache.js';

// Chunk stores and their contents.
export type * from './store/types.js';
export * from './compression.js';
export * from './store/local-store.js';
export * from './store/http-store.js';
export * from './store/open-store.js';
export * from './store/caching-store.js';
export * from './store/image-range-store.js';
export * from './store/batch-store.js';
export * from './chunk-cache.js';
export * from './batch-wire.js';
export * from './chop.js';
export * from './verify.js';

// Delta assembly: seeds, plans, remote sources, the assembler, the high-level API.
export * from './seed.js';
export * from './planner.js';
export * from './multipart.js';
export * from './range-fetcher.js';
export * from './remote-source.js';
export * from './assembler.js';
export * from './partial-file.js';
export * from './ordered-stream.js';
export * from './extract.js';

// The block-pack path (docs/BLOCKPACK.md).
export * as blockpack from './blockpack/index.js';
