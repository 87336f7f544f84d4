// zstd benchmark: node:zlib's zstd (what deltad uses) against the zstd-napi addon
// (what it used before), on the frame shapes deltad writes: casync .cacnk chunks
// (level 3, no dictionary) at 16/64/256 KiB, and block-pack frames (level 19,
// no checksum, no dictionary ID, content size) of 1 and 64 4-KiB blocks, with the
// release's dictionary and without. Prints MB/s for compress and decompress,
// the compressed bytes, whether the frames are byte-identical and whether each
// library decodes the other's frames. zstd-napi is skipped when not installed.
//
//   node dist/bench/zstd.js [--input FILE] [--mib 16] [--pack-mib 4] [--min-ms 1000]
//
// Input: FILE, else the first erofs image of the corpus ($BENCH/img), else the
// first MiBs of the files under /usr/lib and /usr/bin (real binaries and text).
import { readdirSync, statSync, openSync, readSync, closeSync, existsSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { trainCoverDictionary } from '../lib/blockpack/dictionary.js';

const { values } = parseArgs({
  options: {
    input: { type: 'string' },
    mib: { type: 'string', default: '16' },
    'pack-mib': { type: 'string', default: '4' },
    'min-ms': { type: 'string', default: '1000' },
  },
});
const MIB = 1024 * 1024;
const MIN_MS = Number(values['min-ms']);
const C = zlib.constants;

// ---- input -------------------------------------------------------------------------
function readHead(path: string, size: number): Buffer {
  const buf = Buffer.alloc(size);
  const fd = openSync(path, 'r');
  try {
    const n = readSync(fd, buf, 0, size, 0);
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

function usrSample(size: number): Buffer {
  const parts: Buffer[] = [];
  let have = 0;
  const walk = (dir: string): void => {
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch {
      return;
    }
    for (const name of names) {
      if (have >= size) return;
      const p = join(dir, name);
      let st;
      try {
        st = statSync(p, { throwIfNoEntry: false });
      } catch {
        continue;
      }
      if (!st) continue;
      if (st.isDirectory()) walk(p);
      else if (st.isFile() && st.size > 0) {
        const b = readHead(p, Math.min(st.size, size - have, 4 * MIB));
        parts.push(b);
        have += b.length;
      }
    }
  };
  for (const d of ['/usr/lib', '/usr/bin']) walk(d);
  return Buffer.concat(parts, have);
}

function input(size: number): { data: Buffer; what: string } {
  if (values.input) return { data: readHead(values.input, size), what: values.input };
  const img = join(process.env.BENCH ?? '/var/tmp/deltad-bench', 'img');
  if (existsSync(img)) {
    const first = readdirSync(img)
      .filter((n) => n.endsWith('.erofs'))
      .sort()[0];
    if (first) return { data: readHead(join(img, first), size), what: join(img, first) };
  }
  return { data: usrSample(size), what: 'files under /usr/lib and /usr/bin' };
}

// ---- the two libraries, behind one shape ---------------------------------------------
interface FrameOpts {
  level: number;
  dictionary: Buffer | null;
  /** Block-pack frames: no checksum, no dictionary ID (what lib/blockpack writes). */
  pack: boolean;
}
interface Codec {
  name: string;
  compress(data: Uint8Array): Buffer;
  decompress(frame: Uint8Array, size: number): Buffer;
  compressAsync?(data: Uint8Array): Promise<Buffer>;
  decompressAsync?(frame: Uint8Array, size: number): Promise<Buffer>;
}

function nodeCodec(o: FrameOpts): Codec {
  const params: Record<number, number> = { [C.ZSTD_c_compressionLevel]: o.level };
  if (o.pack)
    Object.assign(params, { [C.ZSTD_c_checksumFlag]: 0, [C.ZSTD_c_dictIDFlag]: 0, [C.ZSTD_c_contentSizeFlag]: 1 });
  const dict = o.dictionary ? { dictionary: o.dictionary } : {};
  const copts = { params, ...dict };
  const dopts = (size: number) => ({
    ...dict,
    maxOutputLength: size,
    chunkSize: Math.max(64, size),
    rejectGarbageAfterEnd: true,
  });
  const compressP = promisify(zlib.zstdCompress) as (b: Uint8Array, o: zlib.ZstdOptions) => Promise<Buffer>;
  const decompressP = promisify(zlib.zstdDecompress) as (b: Uint8Array, o: zlib.ZstdOptions) => Promise<Buffer>;
  return {
    name: 'node:zlib',
    compress: (data) => zlib.zstdCompressSync(data, { ...copts, pledgedSrcSize: data.length }),
    decompress: (frame, size) => zlib.zstdDecompressSync(frame, dopts(size)),
    compressAsync: (data) => compressP(data, { ...copts, pledgedSrcSize: data.length }),
    decompressAsync: (frame, size) => decompressP(frame, dopts(size)),
  };
}

/**
 * node:zlib with one long-lived ZstdCompress engine: every write is one whole
 * frame (flush = ZSTD_e_end), so the dictionary is loaded once, not per frame.
 * This is how lib/blockpack/frame-codec.ts compresses; async only.
 */
function nodeStreamCodec(o: FrameOpts): Codec {
  const base = nodeCodec(o);
  const params: Record<number, number> = { [C.ZSTD_c_compressionLevel]: o.level };
  if (o.pack)
    Object.assign(params, { [C.ZSTD_c_checksumFlag]: 0, [C.ZSTD_c_dictIDFlag]: 0, [C.ZSTD_c_contentSizeFlag]: 1 });
  // readableHighWaterMark: a whole frame's output waits in the readable buffer for read().
  const opts = {
    params,
    ...(o.dictionary ? { dictionary: o.dictionary } : {}),
    flush: C.ZSTD_e_end,
    readableHighWaterMark: Number.MAX_SAFE_INTEGER,
  };
  const engine = zlib.createZstdCompress(opts);
  const compressAsync = (data: Uint8Array): Promise<Buffer> =>
    new Promise((resolve, reject) => {
      engine.write(data, (err) => (err ? reject(err) : resolve((engine.read() as Buffer | null) ?? Buffer.alloc(0))));
    });
  return { name: 'node:zlib, one engine', compress: base.compress, decompress: base.decompress, compressAsync };
}

// The subset of zstd-napi's binding.js used here (typed locally: it may be absent).
interface NapiBinding {
  CCtx: new () => {
    setParameter(p: number, v: number): void;
    loadDictionary(d: Uint8Array): void;
    compress2(dst: Uint8Array, src: Uint8Array): number;
  };
  DCtx: new () => {
    decompress(dst: Uint8Array, src: Uint8Array): number;
    decompressUsingDDict(dst: Uint8Array, src: Uint8Array, d: unknown): number;
  };
  DDict: new (d: Uint8Array) => unknown;
  CParameter: Record<string, number>;
  compressBound(n: number): number;
}

async function loadNapi(): Promise<NapiBinding | null> {
  const spec = 'zstd-napi/binding.js';
  try {
    return ((await import(spec)) as { default: NapiBinding }).default;
  } catch {
    return null;
  }
}

function napiCodec(z: NapiBinding, o: FrameOpts): Codec {
  const cctx = new z.CCtx();
  cctx.setParameter(z.CParameter.compressionLevel, o.level);
  if (o.pack) {
    cctx.setParameter(z.CParameter.checksumFlag, 0);
    cctx.setParameter(z.CParameter.dictIDFlag, 0);
    cctx.setParameter(z.CParameter.contentSizeFlag, 1);
  }
  if (o.dictionary) cctx.loadDictionary(o.dictionary);
  const dctx = new z.DCtx();
  const ddict = o.dictionary ? new z.DDict(o.dictionary) : null;
  let scratch = Buffer.alloc(0);
  return {
    name: 'zstd-napi',
    compress(data) {
      const bound = z.compressBound(data.length);
      if (scratch.length < bound) scratch = Buffer.allocUnsafeSlow(bound);
      return Buffer.from(scratch.subarray(0, cctx.compress2(scratch, data)));
    },
    decompress(frame, size) {
      const out = Buffer.allocUnsafe(size + 1);
      const n = ddict ? dctx.decompressUsingDDict(out, frame, ddict) : dctx.decompress(out, frame);
      return out.subarray(0, n);
    },
  };
}

// ---- measuring -----------------------------------------------------------------------
function frames(data: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0; off + size <= data.length; off += size) out.push(data.subarray(off, off + size));
  return out;
}

/** Runs `pass` until minMs have gone by (at least once); returns MB/s for `bytes` per pass. */
async function rate(bytes: number, minMs: number, pass: () => void | Promise<void>): Promise<number> {
  let n = 0;
  const t0 = performance.now();
  do {
    await pass();
    n++;
  } while (performance.now() - t0 < minMs);
  return (bytes * n) / MIB / ((performance.now() - t0) / 1000);
}

/** Up to `depth` promises in flight (the libuv pool has 4 threads). */
async function inFlight<T>(items: T[], depth: number, fn: (x: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: depth }, async () => {
      while (next < items.length) await fn(items[next++]);
    }),
  );
}

interface Case {
  name: string;
  frameSize: number;
  opts: FrameOpts;
  data: Buffer;
}

async function main(): Promise<void> {
  const napi = await loadNapi();
  const big = input(Number(values.mib) * MIB);
  const packData = big.data.subarray(0, Math.min(big.data.length, Number(values['pack-mib']) * MIB));
  // The publisher trains on the release's blocks; here on the same input (256 KiB, deltad pack's default).
  const t0 = performance.now();
  const dictionary = trainCoverDictionary(Buffer.from(big.data), { size: 256 * 1024 });
  const trainMs = performance.now() - t0;

  const cases: Case[] = [];
  for (const k of [16, 64, 256])
    cases.push({
      name: `.cacnk ${k} KiB, level 3`,
      frameSize: k * 1024,
      opts: { level: 3, dictionary: null, pack: false },
      data: big.data,
    });
  for (const blocks of [1, 64]) {
    for (const dict of [true, false]) {
      cases.push({
        name: `pack frame ${blocks}x4 KiB, level 19, ${dict ? 'dictionary' : 'no dictionary'}`,
        frameSize: blocks * 4096,
        opts: { level: 19, dictionary: dict ? dictionary : null, pack: true },
        data: packData,
      });
    }
  }

  console.log(`# zstd: node:zlib against zstd-napi`);
  console.log(
    `node ${process.version} (zstd ${process.versions.zstd ?? '?'}), ${cpus().length}x ${cpus()[0]?.model ?? '?'}, load ${loadavg()[0].toFixed(2)}`,
  );
  console.log(
    `input: ${big.what}, ${(big.data.length / MIB).toFixed(1)} MiB (pack frames: first ${(packData.length / MIB).toFixed(1)} MiB); ` +
      `dictionary ${dictionary.length} bytes (cover trainer, ${trainMs.toFixed(0)} ms)`,
  );
  if (!napi) console.log('zstd-napi is not installed: its rows are skipped');
  console.log('');
  console.log(
    '| frames | library | compress MB/s | decompress MB/s | async compress MB/s | async decompress MB/s | compressed | identical frames | decoded by the other |',
  );
  console.log('|---|---|---:|---:|---:|---:|---:|---|---|');

  for (const c of cases) {
    const list = frames(c.data, c.frameSize);
    const bytes = list.length * c.frameSize;
    const minMs = c.opts.level >= 19 ? 0 : MIN_MS;
    const codecs = [nodeCodec(c.opts), ...(napi ? [napiCodec(napi, c.opts)] : [])];
    const engineCodec = nodeStreamCodec(c.opts);
    const outputs: Buffer[][] = [];
    const rows: string[][] = [];
    for (const codec of codecs) {
      const out = list.map((f) => codec.compress(f));
      outputs.push(out);
      const comp = await rate(bytes, minMs, () => {
        for (const f of list) codec.compress(f);
      });
      const dec = await rate(bytes, minMs, () => {
        for (const f of out) codec.decompress(f, c.frameSize);
      });
      let acomp = '';
      let adec = '';
      if (codec.compressAsync && codec.decompressAsync) {
        const ca = codec.compressAsync;
        const da = codec.decompressAsync;
        acomp = (await rate(bytes, minMs, () => inFlight(list, 4, (f) => ca(f)))).toFixed(1);
        adec = (await rate(bytes, minMs, () => inFlight(out, 4, (f) => da(f, c.frameSize)))).toFixed(1);
      }
      const size = out.reduce((n, f) => n + f.length, 0);
      rows.push([
        c.name,
        codec.name,
        comp.toFixed(1),
        dec.toFixed(1),
        acomp,
        adec,
        `${size} (${((100 * size) / bytes).toFixed(1)}%)`,
      ]);
    }
    // Frame identity and cross-decoding (every frame, checked against the input).
    if (outputs.length === 2) {
      const identical = outputs[0].filter((f, i) => f.equals(outputs[1][i])).length;
      for (let me = 0; me < 2; me++) {
        const other = codecs[1 - me];
        let ok = 0;
        outputs[me].forEach((f, i) => {
          try {
            if (other.decompress(f, c.frameSize).equals(list[i])) ok++;
          } catch {
            /* counted as not decoded */
          }
        });
        rows[me].push(`${identical}/${list.length}`, `${ok}/${list.length} by ${other.name}`);
      }
    } else {
      rows[0].push('-', '-');
    }
    // The long-lived engine (async, one frame at a time as the publisher does): its frames must equal the one-shot ones.
    const viaEngine: Buffer[] = [];
    for (const f of list) viaEngine.push(await engineCodec.compressAsync!(f));
    const same = viaEngine.filter((f, i) => f.equals(outputs[0][i])).length;
    const engineRate = await rate(bytes, minMs, async () => {
      for (const f of list) await engineCodec.compressAsync!(f);
    });
    rows.push([
      c.name,
      engineCodec.name,
      '',
      '',
      engineRate.toFixed(1),
      '',
      `${viaEngine.reduce((n, f) => n + f.length, 0)}`,
      `${same}/${list.length} (with one-shot node:zlib)`,
      '',
    ]);
    for (const r of rows) console.log(`| ${r.join(' | ')} |`);
  }
}

await main();
