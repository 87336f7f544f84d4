// Free space where deltad is about to write, for checks made before writing.
import { statfs } from 'node:fs/promises';
import { dirname } from 'node:path';

/** Bytes an unprivileged writer may still use on the file system of `path` (its nearest existing ancestor). */
export async function freeBytes(path: string): Promise<number> {
  for (let p = path; ; p = dirname(p)) {
    try {
      const fs = await statfs(p);
      return fs.bavail * fs.bsize;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || dirname(p) === p) throw err;
    }
  }
}
