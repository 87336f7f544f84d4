// Opening a local input (a seed, a file to index) read-only without ever
// blocking: open(2) of a FIFO waits for a writer, so the file is opened with
// O_NONBLOCK and its type checked on the descriptor (not the path, which may
// have been swapped since it was looked at). O_NONBLOCK changes nothing for
// reads of regular files and block devices.
import { constants, type Stats } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { UnusableInputError } from '../errors.js';

function kindOf(st: Stats): string {
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isDirectory()) return 'a directory';
  return 'not a regular file';
}

/**
 * Opens `path` read-only; throws UnusableInputError when it cannot be read or is not a regular file (or a block
 * device, when allowed).
 */
export async function openInput(path: string, opts: { blockDevices: boolean }): Promise<{ fh: FileHandle; st: Stats }> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') throw new UnusableInputError(path, 'cannot be read: permission denied');
    throw err;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile() && !(opts.blockDevices && st.isBlockDevice())) {
      const allowed = opts.blockDevices ? 'a regular file or block device' : 'a regular file';
      throw new UnusableInputError(path, `is ${kindOf(st)}, not ${allowed}`);
    }
    return { fh, st };
  } catch (err) {
    await fh.close();
    throw err;
  }
}
