// deltad's library API: everything the daemon, the CLI and other programs use.
// Internal helpers (worker entry points, chunk-file layout, kernels) stay unexported.

// Basics: errors, chunk IDs, the index format, HTTP.
export * from './errors.js';
export * from './format/digest.js';
export * from './format/caibx.js';
export * from './fetch/http-client.js';

// Chunking and indexing.
export * from './chunking/chunker.js';
export * from './chunking/indexer.js';
export * from './seed/index-cache.js';

// Chunk stores and their contents.
export type * from './store/types.js';
export * from './store/compression.js';
export * from './store/local-store.js';
export * from './store/http-store.js';
export * from './store/open-store.js';
export * from './fleet/caching-store.js';
export * from './fleet/image-range-store.js';
export * from './fleet/batch-store.js';
export * from './fleet/chunk-cache.js';
export * from './fleet/batch-wire.js';
export * from './tools/chop.js';
export * from './tools/verify.js';

// Delta assembly: seeds, plans, remote sources, the assembler, the high-level API.
export * from './seed/seed.js';
export * from './plan/planner.js';
export * from './plan/cost.js';
export * from './fetch/multipart.js';
export * from './fetch/range-fetcher.js';
export * from './assemble/remote-source.js';
export * from './assemble/unit-fetch.js';
export * from './assemble/assembler.js';
export * from './assemble/partial-file.js';
export * from './assemble/ordered-stream.js';
export * from './delta/extract.js';
export * from './delta/routes.js';

// The block-pack path (docs/BLOCKPACK.md).
export * as blockpack from './blockpack/index.js';
