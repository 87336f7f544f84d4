// One way to turn a store argument (`--store X`, a config value) into a store:
// http(s):// URLs are HTTP stores, file:// URLs and plain paths are directories.
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';
import { UsageError } from '../errors.js';
import { HttpStore, type HttpStoreOptions } from './http-store.js';
import { LocalStore, type LocalStoreOptions } from './local-store.js';
import type { ChunkStore } from './types.js';

export type OpenStoreOptions = LocalStoreOptions & HttpStoreOptions;

const URL_SCHEME = /^([a-z][a-z0-9+.-]*):\/\//i;

export function openStore(spec: string, opts: OpenStoreOptions = {}): ChunkStore {
  const scheme = URL_SCHEME.exec(spec)?.[1].toLowerCase();
  if (scheme === 'http' || scheme === 'https') return new HttpStore(spec, opts);
  return openLocalStore(spec, opts);
}

/** Stores deltad can write to: local directories only (HTTP stores are read-only). */
export function openWritableStore(spec: string, opts: LocalStoreOptions = {}): LocalStore {
  const scheme = URL_SCHEME.exec(spec)?.[1].toLowerCase();
  if (scheme === 'http' || scheme === 'https') {
    throw new UsageError(`store ${spec}: HTTP stores are read-only; give a local directory to write chunks to`);
  }
  return openLocalStore(spec, opts);
}

function openLocalStore(spec: string, opts: LocalStoreOptions): LocalStore {
  if (spec === '') throw new UsageError('empty store location');
  const scheme = URL_SCHEME.exec(spec)?.[1].toLowerCase();
  if (scheme === 'file') return new LocalStore(fileURLToPath(spec), opts);
  if (scheme)
    throw new UsageError(
      `store ${spec}: unsupported scheme "${scheme}" (use a directory, file://, http:// or https://)`,
    );
  return new LocalStore(resolve(spec), opts);
}
