// Guards every pass-through body of an image: it must be exactly `size` bytes
// (when known) and, when the manifest gives one, hash to the expected SHA-256.
// The last bytes are held back until that is known, so a wrong body always
// reaches the client truncated, never complete.
import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { ChecksumMismatchError, OriginError } from '../lib/errors.js';

const HOLD_BACK = 64 * 1024;

/**
 * `sha256` may still be on its way (the SHA256SUMS fetch): it is awaited only at the end, with the last bytes held;
 * when it cannot be had, the size is all that is checked.
 */
export function verifiedBody(
  size: number | undefined,
  sha256: string | undefined | Promise<string | undefined>,
  what: string,
): Transform {
  const hash = createHash('sha256');
  let seen = 0;
  let held: Buffer = Buffer.alloc(0);
  return new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      seen += chunk.length;
      if (size !== undefined && seen > size)
        return cb(new OriginError(`${what}: origin sent more than the ${size} bytes expected`));
      hash.update(chunk);
      held = held.length ? Buffer.concat([held, chunk]) : chunk;
      if (held.length > HOLD_BACK) {
        const release = held.subarray(0, held.length - HOLD_BACK);
        held = Buffer.from(held.subarray(held.length - HOLD_BACK));
        this.push(release);
      }
      cb();
    },
    flush(cb: TransformCallback) {
      if (size !== undefined && seen !== size)
        return cb(new OriginError(`${what}: origin sent ${seen} of ${size} bytes`));
      const actual = hash.digest('hex');
      Promise.resolve(sha256)
        .catch(() => undefined)
        .then((expected) => {
          if (expected && actual !== expected) return cb(new ChecksumMismatchError(expected, actual, what));
          cb(null, held);
        });
    },
  });
}
