// A tiny tmpfs for disk-full tests: a real ENOSPC, not a simulated one.
// Mounting needs root; under CI that is a failure, elsewhere the test skips.
import { execFileSync } from 'node:child_process';
import type { TestContext } from 'node:test';
import { tmpDir } from './tmp.js';

/**
 * Mounts a tmpfs of `size` (e.g. '64k'), unmounted and removed after the test; undefined when skipped.
 * `readOnly`: mounted read-only (writes fail with EROFS, even for root).
 */
export async function mountTinyTmpfs(t: TestContext, size = '64k', readOnly = false): Promise<string | undefined> {
  // Registered before the mount point's removal (after-hooks run in order), so the unmount comes first.
  let mounted: string | undefined;
  t.after(() => {
    if (mounted) execFileSync('umount', [mounted]);
  });
  const mnt = await tmpDir(t, 'tmpfs');
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}${readOnly ? ',ro' : ''}`, 'tmpfs', mnt], {
      stdio: 'pipe',
    });
  } catch (err) {
    if (process.env.CI) throw new Error(`cannot mount a tmpfs for the disk-full test: ${(err as Error).message}`);
    t.skip('mounting a tmpfs needs root');
    return undefined;
  }
  mounted = mnt;
  return mnt;
}
