// The library as a user's program sees it: `import 'deltad'` and the subpaths in
// package.json's exports resolve (Node's package self-reference), give the public
// API, and internal modules are not reachable by path.
import assert from 'node:assert/strict';
import { test } from 'node:test';

test('deltad and its subpath exports resolve to the public API; internals stay private', async () => {
  const api = await import('deltad');
  for (const name of [
    'extractToFile',
    'openExtractStream',
    'planUpdate',
    'loadIndex',
    'indexFile',
    'parseIndex',
    'openStore',
    'Releases',
    'DeltadError',
  ]) {
    assert.equal(typeof (api as Record<string, unknown>)[name], 'function', name);
  }
  assert.equal(typeof api.blockpack.packImage, 'function');
  const extract = await import('deltad/extract');
  assert.equal(extract.extractToFile, api.extractToFile, 'one module, whichever way it is reached');
  assert.equal(typeof (await import('deltad/caibx')).serializeIndex, 'function');
  // Not part of the API: internal modules are refused by path.
  const deep = 'deltad/dist/lib/fleet/chunk-cache.js';
  await assert.rejects(import(deep), (err: NodeJS.ErrnoException) => err.code === 'ERR_PACKAGE_PATH_NOT_EXPORTED');
});
