// A tiny tmpfs for disk-full tests: a real ENOSPC, not a simulated one.
// Mounting needs root; under CI that is a failure, elsewhere the test skips.
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

/**
 * Mounts a tmpfs of `size` (e.g. '64k'), unmounted and removed after the test; undefined when skipped.
 * `readOnly`: mounted read-only (writes fail with EROFS, even for root).
 */
export async function mountTinyTmpfs(t: TestContext, size = '64k', readOnly = false): Promise<string | undefined> {
  const mnt = await mkdtemp(join(tmpdir(), 'deltad-tmpfs-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}${readOnly ? ',ro' : ''}`, 'tmpfs', mnt], {
      stdio: 'pipe',
    });
  } catch (err) {
    await rm(mnt, { recursive: true, force: true });
    if (process.env.CI) throw new Error(`cannot mount a tmpfs for the disk-full test: ${(err as Error).message}`);
    t.skip('mounting a tmpfs needs root');
    return undefined;
  }
  t.after(async () => {
    execFileSync('umount', [mnt]);
    await rm(mnt, { recursive: true, force: true });
  });
  return mnt;
}
