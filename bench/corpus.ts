// The benchmark corpus (../shared/bench/make-corpus.sh, in $BENCH/img) and the
// publisher-side artifacts the benchmarks serve, made once and kept where
// every benchmark finds them: casync index + store per chunk size and the old
// image's index (bench/extract.ts's $BENCH/deltad-extract/<pair>/), zsync
// control file, block pack (bench/blockpack.ts's --previous layout).
import { spawnSync } from 'node:child_process';
import { existsSync, linkSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

export const BENCH = resolve(process.env.BENCH ?? '/var/tmp/deltad-bench');
export const CLI = resolve(new URL('../daemon/cli.js', import.meta.url).pathname);
/**
 * deltad as it is started in use: through its launcher (bin/deltad: V8 and malloc settings), on the
 * benchmark's own Node runtime (first on PATH for every child). Setup steps run CLI directly.
 */
export const DELTAD = [resolve(new URL('../../bin/deltad', import.meta.url).pathname)];
process.env.PATH = `${dirname(process.execPath)}:${process.env.PATH ?? ''}`;

/** Image pairs (old, new) in $BENCH/img. `big` is made by bench/make-big-pair.ts. */
/**
 * `deltad serve`'s arguments in a benchmark: on loopback, the origin, the installed images as seeds, and a short
 * idle exit (so the process ends, and its peak RSS and CPU are read, soon after the update).
 */
export function serveArgs(o: {
  port: number;
  origin: string;
  seedGlob: string;
  imagePattern: string;
  cacheDir: string;
  idleS?: number;
}): string[] {
  return [
    'serve',
    '--listen',
    `127.0.0.1:${o.port}`,
    '--origin',
    o.origin,
    '--seed-glob',
    o.seedGlob,
    '--image-pattern',
    o.imagePattern,
    '--cache-dir',
    o.cacheDir,
    '--idle-timeout',
    String(o.idleS ?? 2),
  ];
}

export const PAIRS: Record<string, [string, string]> = {
  'v1-v2.repro': ['v1.repro.erofs', 'v2.repro.erofs'],
  'v2-v3.repro': ['v2.repro.erofs', 'v3.repro.erofs'],
  synth: ['synth.v1.bin', 'synth.v2.bin'],
  big: ['big.v1.bin', 'big.v2.bin'],
};

export const CHUNK_64K = '16384:65536:262144';
export const CHUNK_16K = '4096:16384:65536';

export interface Pair {
  name: string;
  oldName: string;
  newName: string;
  old: string;
  new: string;
  newSize: number;
  /** Per-pair work directory of bench/extract.ts (shared artifacts live here). */
  work: string;
}

export function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

/** Hard link (the corpus is large; same file system), replacing a stale one. */
export function link(from: string, to: string): void {
  if (existsSync(to) && statSync(to).ino === statSync(from).ino) return;
  rmSync(to, { force: true });
  linkSync(from, to);
}

export function pair(name: string): Pair {
  const p = PAIRS[name];
  if (!p) throw new Error(`unknown pair ${name} (${Object.keys(PAIRS).join(', ')})`);
  const [oldName, newName] = p;
  const img = join(BENCH, 'img');
  const oldPath = join(img, oldName);
  const newPath = join(img, newName);
  for (const f of [oldPath, newPath]) {
    if (!existsSync(f)) throw new Error(`${f} missing: build the corpus (../shared/bench/make-corpus.sh)`);
  }
  const work = join(BENCH, 'deltad-extract', name);
  mkdirSync(join(work, 'www'), { recursive: true });
  return { name, oldName, newName, old: oldPath, new: newPath, newSize: statSync(newPath).size, work };
}

/** SHA-256 of the new image from $BENCH/img/SHA256SUMS (computed when not listed). */
export function newSha256(p: Pair): string {
  const sums = join(BENCH, 'img', 'SHA256SUMS');
  const line = existsSync(sums)
    ? readFileSync(sums, 'utf8')
        .split('\n')
        .find((l) => l.endsWith(`  ${p.newName}`))
    : undefined;
  return line ? line.split(/\s+/)[0] : sh('sha256sum', [p.new]).split(/\s+/)[0];
}

export interface CasyncArtifacts {
  /** The new image as bench/extract.ts serves it (www/new.img). */
  image: string;
  index: string;
  store: string;
  /** The old image's index with the same chunk parameters (a seed with a known index). */
  oldIndex: string;
}

/** casync make of the new image (index + store) and of the old one (index), once per pair and chunk size. */
export function casyncArtifacts(p: Pair, chunk: string): CasyncArtifacts {
  const www = join(p.work, 'www');
  const image = join(www, 'new.img');
  link(p.new, image);
  const tag = chunk.replace(/:/g, '-');
  const index = join(www, `new.${tag}.caibx`);
  const store = join(www, `new.${tag}.castr`);
  const oldIndex = join(p.work, `old.${tag}.caibx`);
  if (!existsSync(index)) sh('casync', [`--chunk-size=${chunk}`, `--store=${store}`, 'make', index, image]);
  if (!existsSync(oldIndex)) {
    const scratch = join(p.work, 'scratch.castr');
    sh('casync', [`--chunk-size=${chunk}`, `--store=${scratch}`, 'make', oldIndex, p.old]);
    rmSync(scratch, { recursive: true, force: true });
  }
  return { image, index, store, oldIndex };
}

/** zsyncmake of the new image (control file beside www/new.img, URL "new.img"). */
export function zsyncArtifact(p: Pair): string {
  const www = join(p.work, 'www');
  link(p.new, join(www, 'new.img'));
  const file = join(www, 'new.img.zsync');
  if (!existsSync(file)) sh('zsyncmake', ['-u', 'new.img', '-o', file, join(www, 'new.img')]);
  return file;
}

/** Block pack files of the new image: IMAGE.bpidx, .bpk, .bpdict. */
export interface BlockPack {
  dir: string;
  files: string[];
}

/**
 * `deltad pack --trainer zstd --previous OLD` (level 19, 256 KiB dictionary,
 * groups of 64): bench/blockpack.ts's `--previous` defaults and directory, so
 * either benchmark reuses the other's pack. Takes minutes the first time.
 */
export function blockPack(p: Pair): BlockPack {
  const dir = join(BENCH, 'blockpack', 'packs-zstd-l19-d262144-prev-g64', p.name);
  const files = ['bpidx', 'bpk', 'bpdict'].map((e) => join(dir, `${p.newName}.${e}`));
  if (!files.every((f) => existsSync(f))) {
    mkdirSync(dir, { recursive: true });
    const started = Date.now();
    const out = sh(process.execPath, [
      CLI,
      'pack',
      '--json',
      '--trainer',
      'zstd',
      '--level',
      '19',
      '--dict-size',
      '262144',
      '--group-blocks',
      '64',
      '--previous',
      p.old,
      '-o',
      dir,
      p.new,
    ]);
    const r = JSON.parse(out) as { imageSize?: number; wallMs?: number };
    const wallMs = r.wallMs ?? Date.now() - started;
    const imageSize = r.imageSize ?? p.newSize;
    writeFileSync(
      join(dir, 'pack.json'),
      JSON.stringify({ ...r, wallMs, imageSize, mbPerS: imageSize / 1e6 / (wallMs / 1000) }, null, 2),
    );
  }
  return { dir, files };
}

export interface DaemonSite {
  /** What the origin publishes: os_2.erofs, os_2.erofs.caibx (deltad make, 64K chunks), SHA256SUMS. */
  www: string;
  /** Where the installed image lives: system/os_1.erofs (the daemon's seed). */
  system: string;
  image: string;
  seed: string;
  sha256: string;
  work: string;
}

/** bench/daemon.ts's origin and installed system for a pair ($BENCH/deltad-daemon/<pair>/). */
export function daemonSite(p: Pair): DaemonSite {
  const work = join(BENCH, 'deltad-daemon', p.name);
  const www = join(work, 'www');
  const system = join(work, 'system');
  mkdirSync(www, { recursive: true });
  mkdirSync(system, { recursive: true });
  const image = join(www, 'os_2.erofs');
  const seed = join(system, 'os_1.erofs');
  link(p.new, image);
  link(p.old, seed);
  const index = `${image}.caibx`;
  if (!existsSync(index)) sh(process.execPath, [CLI, 'make', index, image]);
  const sha256 = newSha256(p);
  writeFileSync(join(www, 'SHA256SUMS'), `${sha256}  os_2.erofs\n`);
  return { www, system, image, seed, sha256, work };
}
