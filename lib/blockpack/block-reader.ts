// Sequential block-by-block reading of an image or seed with large reads:
// the publisher and seed indexing both walk whole files this way.
import type { FileHandle } from 'node:fs/promises';
import { DeltadError } from '../errors.js';
import { readFully } from '../util/fs-io.js';

const READ_BYTES = 4 * 1024 * 1024;

/**
 * Calls fn(b, data) for every block in order (the last one may be short);
 * data is only valid until fn returns (or its promise settles: a returned
 * promise pauses reading, for backpressure).
 */
export async function forEachBlock(
  fh: FileHandle,
  size: number,
  blockSize: number,
  fn: (b: number, data: Buffer) => void | Promise<void>,
  progress?: (done: number) => void,
  signal?: AbortSignal,
): Promise<void> {
  const buf = Buffer.allocUnsafe(Math.max(blockSize, READ_BYTES - (READ_BYTES % blockSize)));
  let pos = 0;
  let b = 0;
  while (pos < size) {
    signal?.throwIfAborted();
    const want = Math.min(buf.length, size - pos);
    const got = await readFully(fh, buf, pos, want);
    if (got < want)
      throw new DeltadError('ERR_DELTAD_READ', `file shrank while reading (at byte ${pos + got} of ${size})`);
    for (let off = 0; off < got; off += blockSize, b++) {
      const wait = fn(b, buf.subarray(off, Math.min(got, off + blockSize)));
      if (wait) await wait;
    }
    pos += got;
    progress?.(pos);
  }
}
