// A 4 GiB+ image pair for scale runs, made from the corpus with local tools
// only: big.v1.bin and big.v2.bin in $BENCH/img are concatenations of real
// release transitions (v1→v2 and v2→v3 of the reproducible erofs images,
// v1→v2 of the lz4hc ones, in turn), segment k of both files XORed with the
// same key byte k. The key makes every segment's bytes distinct (no segment
// can be found in another, as 4 GiB of different packages would be) while
// keeping what matters to delta tools: the compressibility, the 4 KiB block
// structure and the real edit pattern of each upgrade. All-zero 4 KiB blocks
// stay zero (as in the images). Every byte is written: no sparse tricks.
//
//   npm run build && node dist/bench/make-big-pair.js [--size 4G]
//   BENCH=/var/tmp/deltad-bench; writes $BENCH/img/big.v{1,2}.bin, their lines in
//   $BENCH/img/SHA256SUMS and $BENCH/manifests/big-segments.txt.
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BENCH } from './corpus.js';

const { values } = parseArgs({ options: { size: { type: 'string', default: '4G' } } });
/** "4G", "4500M", "4294967296" (powers of 1024). */
function parseSize(s: string): number {
  const m = /^(\d+)([KMGT]?)(i?B)?$/i.exec(s.trim());
  if (!m) throw new Error(`--size "${s}": expected e.g. 4G`);
  return Number(m[1]) * 1024 ** ' KMGT'.indexOf((m[2] || ' ').toUpperCase());
}
const target = parseSize(values.size!);
const img = join(BENCH, 'img');
const TRANSITIONS: [string, string][] = [
  ['v1.repro.erofs', 'v2.repro.erofs'],
  ['v2.repro.erofs', 'v3.repro.erofs'],
  ['v1.repro-lz4hc.erofs', 'v2.repro-lz4hc.erofs'],
];
const BLOCK = 4096;
const BUF = 8 * 1024 * 1024;

/** Appends `src` XORed with `key` (all-zero blocks kept) to `fd`; returns bytes written. */
function appendXored(fd: number, src: string, key: number, hash: ReturnType<typeof createHash>): number {
  const inFd = openSync(src, 'r');
  const buf = Buffer.allocUnsafeSlow(BUF); // own, aligned ArrayBuffer for the word view
  let total = 0;
  try {
    for (;;) {
      const n = readSync(inFd, buf, 0, BUF, null);
      if (n === 0) break;
      const words = new Uint32Array(buf.buffer, buf.byteOffset, n >>> 2);
      const key32 = (key * 0x01010101) >>> 0;
      for (let b = 0; b < n; b += BLOCK) {
        const end = Math.min(n, b + BLOCK);
        if (end - b === BLOCK) {
          const w0 = b >>> 2;
          const w1 = w0 + BLOCK / 4;
          let zero = true;
          for (let i = w0; i < w1; i++) {
            if (words[i] !== 0) {
              zero = false;
              break;
            }
          }
          if (!zero) for (let i = w0; i < w1; i++) words[i] ^= key32;
        } else if (buf.subarray(b, end).some((x) => x !== 0)) {
          for (let i = b; i < end; i++) buf[i] ^= key;
        }
      }
      const chunk = buf.subarray(0, n);
      hash.update(chunk);
      for (let off = 0; off < n; ) off += writeSync(fd, chunk, off, n - off);
      total += n;
    }
  } finally {
    closeSync(inFd);
  }
  return total;
}

function main(): void {
  for (const [a, b] of TRANSITIONS) {
    for (const f of [a, b])
      if (!existsSync(join(img, f))) throw new Error(`${join(img, f)} missing: build the corpus first`);
  }
  const outs = ['big.v1.bin', 'big.v2.bin'].map((n) => ({
    name: n,
    tmp: join(img, `.${n}.tmp`),
    hash: createHash('sha256'),
    size: 0,
  }));
  const fds = outs.map((o) => openSync(o.tmp, 'w'));
  const manifest: string[] = [];
  try {
    for (let k = 0; outs[0].size < target; k++) {
      const [oldName, newName] = TRANSITIONS[k % TRANSITIONS.length];
      const key = ((k * 37 + 11) % 255) + 1;
      const at = [outs[0].size, outs[1].size];
      outs[0].size += appendXored(fds[0], join(img, oldName), key, outs[0].hash);
      outs[1].size += appendXored(fds[1], join(img, newName), key, outs[1].hash);
      manifest.push(
        `segment ${k}: key 0x${key.toString(16).padStart(2, '0')}, v1 @${at[0]} ${oldName}, v2 @${at[1]} ${newName}`,
      );
      process.stderr.write(`${manifest.at(-1)}\n`);
    }
  } finally {
    for (const fd of fds) closeSync(fd);
  }
  for (const o of outs) {
    if (statSync(o.tmp).size !== o.size) throw new Error(`${o.tmp}: size mismatch`);
    renameSync(o.tmp, join(img, o.name));
  }
  const sumsPath = join(img, 'SHA256SUMS');
  const kept = existsSync(sumsPath)
    ? readFileSync(sumsPath, 'utf8')
        .split('\n')
        .filter((l) => l && !outs.some((o) => l.endsWith(`  ${o.name}`)))
    : [];
  writeFileSync(sumsPath, [...kept, ...outs.map((o) => `${o.hash.digest('hex')}  ${o.name}`)].join('\n') + '\n');
  mkdirSync(join(BENCH, 'manifests'), { recursive: true });
  writeFileSync(
    join(BENCH, 'manifests', 'big-segments.txt'),
    [...manifest, ...outs.map((o) => `${o.name} ${o.size}`)].join('\n') + '\n',
  );
  for (const o of outs) console.log(`${join(img, o.name)}: ${o.size} bytes`);
}

main();
