// The one way tests make scratch directories: a fresh directory under the system's
// temp dir, removed with everything in it after the test that asked for it. Called
// with a test's context, it goes after that test; with the context of a file-level
// before() hook, or as fileTmpDir() at the top of a file, after the file's last test.
// node:test runs after-hooks in the order they were registered: a process that must
// stop before its directory goes (nginx, a mount) registers its stop before tmpDir.
import { mkdtempSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after as afterFile, type SuiteContext } from 'node:test';

/** What tmpDir needs of a node:test context: a TestContext, or a before() hook's (typed as either). */
export interface AfterHooks {
  after(fn: () => unknown): void;
}
/** A test's context or a before() hook's. */
export type TmpContext = AfterHooks | SuiteContext;

function after(t: TmpContext, fn: () => unknown): void {
  if (!('after' in t)) throw new TypeError('tmpDir: a test context (or a file-level before() hook context) is needed');
  t.after(fn);
}

/** A new empty directory `deltad-<name>-XXXXXX`, removed after `t`. */
export async function tmpDir(t: TmpContext, name = 'test'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `deltad-${name}-`));
  after(t, () => rm(dir, { recursive: true, force: true, maxRetries: 3 }));
  return dir;
}

/** tmpDir for synchronous setup. */
export function tmpDirSync(t: TmpContext, name = 'test'): string {
  const dir = mkdtempSync(join(tmpdir(), `deltad-${name}-`));
  after(t, () => rmSync(dir, { recursive: true, force: true, maxRetries: 3 }));
  return dir;
}

/** A directory for a whole test file (call it at the top level): made now, removed after the file's last test. */
export function fileTmpDir(name = 'test'): string {
  return tmpDirSync({ after: (fn) => afterFile(fn) }, name);
}
