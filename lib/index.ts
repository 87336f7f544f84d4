// deltad's library API: everything the daemon, the CLI and other programs use.
export * from './errors.js';
export * from './digest.js';
export * from './caibx.js';
export * from './http-client.js';
export type * from './store/types.js';
export * from './index-cache.js';
export * from './extract.js';
