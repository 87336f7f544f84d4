// Two versions of a small, file-system-like image for `deltad demo`: v1 is a
// sequence of 4 KiB-aligned "files" (text, binary, zero runs); v2 is v1 after
// a plausible update: a new header, some files rewritten in place, a file
// inserted (shifting everything after it) and new data appended. Generated
// from a fixed seed (AES-CTR keystream), so every run shows the same numbers.
import { createCipheriv, createHash } from 'node:crypto';

const BLOCK = 4096;
const WORDS =
  'the of and to in is for on with as by at from that this be are or an it not which system image update file chunk seed index version kernel module library config service unit boot root partition verity'.split(
    ' ',
  );

/** A deterministic byte stream: AES-128-CTR over zeros, keyed by a label. */
class Stream {
  private readonly cipher;
  constructor(label: string) {
    const key = createHash('sha256').update(label).digest();
    this.cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
  }
  bytes(n: number): Buffer {
    return this.cipher.update(Buffer.alloc(n));
  }
  int(max: number): number {
    return this.bytes(4).readUInt32LE(0) % max;
  }
}

function textFile(s: Stream, n: number): Buffer {
  const out = Buffer.alloc(n);
  const picks = s.bytes(n);
  let o = 0;
  for (let i = 0; o < n; i++)
    o += out.write(WORDS[picks[i % n] % WORDS.length] + (picks[(i + 7) % n] % 11 === 0 ? '\n' : ' '), o);
  return out;
}

function file(s: Stream): Buffer {
  const blocks = 1 + s.int(96); // 4 KiB .. 384 KiB
  const n = blocks * BLOCK;
  switch (s.int(4)) {
    case 0:
      return Buffer.alloc(n); // sparse / empty space
    case 1:
      return textFile(s, n);
    default:
      return s.bytes(n); // compressed or binary content
  }
}

export interface DemoImages {
  v1: Buffer;
  v2: Buffer;
  /** What changed, for the demo's output. */
  edits: string;
}

export function makeDemoImages(sizeBytes: number): DemoImages {
  const s = new Stream('deltad demo v1');
  const files: Buffer[] = [];
  let total = 0;
  while (total < sizeBytes) {
    const f = file(s);
    files.push(f);
    total += f.length;
  }
  const v1 = Buffer.concat(files).subarray(0, sizeBytes);

  const u = new Stream('deltad demo v2');
  const next: Buffer[] = files.map((f) => Buffer.from(f));
  next[0] = Buffer.concat([u.bytes(BLOCK), next[0].subarray(BLOCK)]); // header: new version, timestamps
  const rewritten = Math.max(3, Math.round(files.length * 0.03));
  for (let k = 0; k < rewritten; k++) {
    const i = 1 + u.int(next.length - 1);
    next[i] = u.bytes(next[i].length);
  }
  const insertAt = Math.floor(next.length / 3);
  const inserted = Buffer.concat([textFile(u, 96 * 1024), u.bytes(160 * 1024)]);
  next.splice(insertAt, 0, inserted);
  const appended = u.bytes(512 * 1024);
  const v2 = Buffer.concat([...next, appended]).subarray(0, sizeBytes + inserted.length + appended.length);
  return {
    v1,
    v2,
    edits: `header updated, ${rewritten} files rewritten, a ${inserted.length / 1024} KiB file inserted, ${appended.length / 1024} KiB appended`,
  };
}
