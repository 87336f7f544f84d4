// The one generator of test images. Content is seeded, so every run makes the same
// bytes and a failure can be reproduced: seededBytes() is the AES-128-CTR keystream
// of the seed (fast, incompressible, like compressed file-system data), textBytes()
// compressible words (like the files inside an image). New versions are made from
// an old one by named changes: rewritten() (regions overwritten in place) and
// spliced() (old ranges, new bytes, zero runs and repeats in a new order).
import { createCipheriv, createHash } from 'node:crypto';

export type Seed = string | number;

/** `size` pseudo-random bytes, the same for the same seed. */
export function seededBytes(size: number, seed: Seed): Buffer {
  const key = createHash('sha256').update(`deltad-test:${seed}`).digest();
  const cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16));
  return cipher.update(Buffer.alloc(size));
}

const WORDS = [
  'inode',
  'block',
  'erofs',
  'systemd',
  'kernel',
  'module',
  'python3',
  'libssl',
  'usr/lib/',
  '\n',
  '0x',
  'version',
];

/** `size` bytes of compressible text (words of a small vocabulary and hex numbers), the same for the same seed. */
export function textBytes(size: number, seed: number): Buffer {
  let x = seed * 2654435761 + 12345;
  const parts: string[] = [];
  let n = 0;
  while (n < size) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const w = WORDS[x % WORDS.length] + ((x >>> 8) % 1000).toString(16) + ' ';
    parts.push(w);
    n += w.length;
  }
  return Buffer.from(parts.join('')).subarray(0, size);
}

export interface Region {
  at: number;
  length: number;
}

/** A copy of `base` with each region overwritten by new bytes (region i's bytes: seededBytes(length, `seed:i`)). */
export function rewritten(base: Uint8Array, regions: Region[], seed: Seed): Buffer {
  const out = Buffer.from(base);
  for (const [i, r] of regions.entries()) seededBytes(r.length, `${seed}:${i}`).copy(out, r.at);
  return out;
}

/** `count` regions of `length` bytes spread evenly over `size` bytes (the first and last kept clear). */
export function spreadRegions(size: number, count: number, length: number): Region[] {
  return Array.from({ length: count }, (_, i) => ({
    at: Math.floor(((i + 0.5) / count) * (size - length - 10_000)),
    length,
  }));
}

/**
 * One piece of a new version: `[start, end]` of the base, `{ fresh: n }` new bytes (pieces with the same
 * `name` get the same bytes: a repeat), `{ zeros: n }` a zero run, or literal bytes.
 */
export type Piece = [start: number, end?: number] | { fresh: number; name?: string } | { zeros: number } | Buffer;

/** A new version: the pieces in order (new bytes seeded by `seed` and the piece's name or place). */
export function spliced(base: Buffer, pieces: Piece[], seed: Seed): Buffer {
  return Buffer.concat(
    pieces.map((p, i) => {
      if (Buffer.isBuffer(p)) return p;
      if (Array.isArray(p)) return base.subarray(p[0], p[1] ?? base.length);
      if ('zeros' in p) return Buffer.alloc(p.zeros);
      return seededBytes(p.fresh, `${seed}:${p.name ?? i}`);
    }),
  );
}

/**
 * The delta tests' v2 of a v1: the first eighth kept, 100 KiB inserted, the next quarter kept with three 200-byte
 * edits, a 320 KiB zero run, three eighths kept, a new 96 KiB block, an eighth kept, the same block again, the rest.
 */
export function deltaV2(v1: Buffer, seed: Seed = 'v2'): Buffer {
  const q = v1.length >> 3;
  const edits = [q >> 2, q, (3 * q) >> 1].map((at) => ({ at, length: 200 }));
  return spliced(
    v1,
    [
      [0, q],
      { fresh: 100 * 1024 }, // insertion
      rewritten(v1.subarray(q, 3 * q), edits, `${seed}:edits`),
      { zeros: 320 * 1024 },
      [3 * q, 6 * q],
      { fresh: 96 * 1024, name: 'block' },
      [6 * q, 7 * q],
      { fresh: 96 * 1024, name: 'block' }, // a repeat of new data
      [7 * q],
    ],
    seed,
  );
}
