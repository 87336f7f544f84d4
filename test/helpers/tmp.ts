// The one way tests make scratch directories: a fresh directory under the system's
// temp dir, removed with everything in it after the test that asked for it. Called
// with a test's context, it goes after that test; called with the context of a
// file-level before() hook, after the file's last test.
import { mkdtempSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SuiteContext } from 'node:test';

/** What tmpDir needs of a node:test context: a TestContext, or a before() hook's (typed as either). */
export interface AfterHooks {
  after(fn: () => unknown): void;
}
type Context = AfterHooks | SuiteContext;

function after(t: Context, fn: () => unknown): void {
  if (!('after' in t)) throw new TypeError('tmpDir: a test context (or a file-level before() hook context) is needed');
  t.after(fn);
}

/** A new empty directory `deltad-<name>-XXXXXX`, removed after `t`. */
export async function tmpDir(t: Context, name = 'test'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `deltad-${name}-`));
  after(t, () => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** tmpDir for synchronous setup. */
export function tmpDirSync(t: Context, name = 'test'): string {
  const dir = mkdtempSync(join(tmpdir(), `deltad-${name}-`));
  after(t, () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
