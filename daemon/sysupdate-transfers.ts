// Reads systemd-sysupdate transfer definitions (sysupdate.d(5)) and writes or
// removes what points a transfer's [Source] Path= at the daemon.
// - systemd 257+ reads `*.transfer` files and their `<name>.transfer.d/*.conf`
//   drop-ins: deltad writes a drop-in that overrides Path= only.
// - systemd 252-256 read `*.conf` files, whole, without drop-ins: deltad writes
//   a complete copy of the file with only Path= rewritten into run/sysupdate.d
//   under the same name, which masks the one in usr/lib/sysupdate.d. The copy
//   starts with COPY_MARKER so that deltad never takes an admin's file for its own.
// Specifiers in Path= (%w, %W, %a, ...) are kept verbatim: sysupdate expands them.
import { mkdir, open, readdir, readFile, rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { UsageError } from '../lib/errors.js';
import { globToRegExp } from './glob.js';
import { writeFileAtomic } from '../lib/util/fs-io.js';

/** Search order of sysupdate.d; a file in an earlier directory masks the same name later. */
export const TRANSFER_DIRS = ['etc/sysupdate.d', 'run/sysupdate.d', 'usr/local/lib/sysupdate.d', 'usr/lib/sysupdate.d'];
export const RUN_DIR = 'run/sysupdate.d';
export const DROPIN_NAME = '50-deltad.conf';
/** First line of every transfer copy deltad writes (and the only thing --remove trusts). */
export const COPY_MARKER = '# Written by "deltad redirect": a copy of';
/** The first systemd whose sysupdate reads `.transfer` files and drop-ins. */
export const DROPIN_SYSTEMD = 257;

export type TransferSuffix = '.transfer' | '.conf';

export interface Transfer {
  /** File name without its suffix, e.g. "50-root". */
  name: string;
  suffix: TransferSuffix;
  /** The effective file (first directory wins; deltad's own copies are skipped). */
  file: string;
  /** Its directory relative to the root, one of TRANSFER_DIRS. */
  dir: string;
  sourceType: string;
  sourcePath: string;
  matchPatterns: string[];
  targetType: string;
  targetPath: string;
  targetPatterns: string[];
}

type Sections = Map<string, Map<string, string[]>>;

/** Minimal unit-file parser: sections, `Key=Value`, comments; repeated keys accumulate. */
function parseUnitFile(text: string, into: Sections = new Map()): Sections {
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const m = /^\[(.+)\]$/.exec(line);
    if (m) {
      section = m[1];
      continue;
    }
    const eq = line.indexOf('=');
    if (eq < 0 || !section) continue;
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    const keys = into.get(section) ?? new Map<string, string[]>();
    into.set(section, keys);
    // An empty assignment resets a list (unit-file semantics).
    keys.set(key, value === '' ? [] : [...(keys.get(key) ?? []), value]);
  }
  return into;
}

const last = (s: Sections, section: string, key: string) => s.get(section)?.get(key)?.at(-1) ?? '';
const patterns = (s: Sections, section: string) =>
  s
    .get(section)
    ?.get('MatchPattern')
    ?.flatMap((v) => v.split(/\s+/)) ?? [];

async function listDir(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch {
    return [];
  }
}

/** True when `path` is a transfer copy written by deltad (its first line is COPY_MARKER). */
export async function isDeltadCopy(path: string): Promise<boolean> {
  let fh;
  try {
    fh = await open(path, 'r');
    const buf = Buffer.alloc(COPY_MARKER.length);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    return buf.subarray(0, bytesRead).toString('utf8') === COPY_MARKER;
  } catch {
    return false;
  } finally {
    await fh?.close();
  }
}

/**
 * Effective transfers under `root`: each `.transfer` and `.conf` file (first
 * directory wins, deltad's own copies skipped) and, for `.transfer` files,
 * their drop-ins from every directory in file-name order, except deltad's own.
 */
export async function readTransfers(root: string): Promise<Transfer[]> {
  const files = new Map<string, { file: string; dir: string }>();
  for (const dir of TRANSFER_DIRS) {
    for (const f of await listDir(join(root, dir))) {
      if (!(f.endsWith('.transfer') || f.endsWith('.conf')) || files.has(f)) continue;
      const file = join(root, dir, f);
      if (dir === RUN_DIR && (await isDeltadCopy(file))) continue;
      files.set(f, { file, dir });
    }
  }
  const out: Transfer[] = [];
  for (const [f, { file, dir }] of [...files].sort(([a], [b]) => a.localeCompare(b))) {
    const suffix: TransferSuffix = f.endsWith('.transfer') ? '.transfer' : '.conf';
    const sections = parseUnitFile(await readFile(file, 'utf8'));
    if (suffix === '.transfer') {
      const dropins = new Map<string, string>();
      for (const d of TRANSFER_DIRS) {
        const dd = join(root, d, `${f}.d`);
        for (const c of await listDir(dd)) {
          if (c.endsWith('.conf') && c !== DROPIN_NAME && !dropins.has(c)) dropins.set(c, join(dd, c));
        }
      }
      for (const [, p] of [...dropins].sort(([a], [b]) => a.localeCompare(b))) {
        parseUnitFile(await readFile(p, 'utf8'), sections);
      }
    }
    out.push({
      name: f.slice(0, -suffix.length),
      suffix,
      file,
      dir,
      sourceType: last(sections, 'Source', 'Type'),
      sourcePath: last(sections, 'Source', 'Path'),
      matchPatterns: patterns(sections, 'Source'),
      targetType: last(sections, 'Target', 'Type'),
      targetPath: last(sections, 'Target', 'Path'),
      targetPatterns: patterns(sections, 'Target'),
    });
  }
  return out;
}

/** True when one of the transfer's MatchPattern= names is an image deltad assembles. */
export function transfersImage(t: Transfer, imagePatterns: string[]): boolean {
  const res = imagePatterns.map(globToRegExp);
  // @v, @u, ... are sysupdate's version/field placeholders; any text stands in for them.
  return t.matchPatterns.some((p) => res.some((re) => re.test(p.replace(/@[a-zA-Z]/g, 'X'))));
}

/**
 * The part of Path= after the configured origin ('' when Path= is the origin
 * itself, with or without a trailing '/'); undefined when Path= is not under it.
 */
export function pathUnderOrigin(sourcePath: string, origin: string): string | undefined {
  if (!origin) return undefined;
  const base = origin.endsWith('/') ? origin : `${origin}/`;
  if (sourcePath === base.slice(0, -1)) return '';
  return sourcePath.startsWith(base) ? sourcePath.slice(base.length) : undefined;
}

/**
 * The Path= that sends a transfer through the daemon: the part after the
 * configured origin, appended to the daemon's address. The daemon resolves
 * request paths against that same origin, so both always agree.
 */
export function redirectedPath(t: Transfer, origin: string, listen: string): string {
  if (t.sourceType !== 'url-file')
    throw new UsageError(
      `${t.file}: [Source] Type=${t.sourceType || '(unset)'}; only url-file transfers can go through deltad`,
    );
  if (!origin)
    throw new UsageError(`no origin configured; set "origin" to the start of ${t.file}'s Path=${t.sourcePath}`);
  const rest = pathUnderOrigin(t.sourcePath, origin);
  if (rest === undefined) {
    throw new UsageError(
      `${t.file}: [Source] Path=${t.sourcePath} is not under the configured origin ${origin}; set "origin" to a prefix of it`,
    );
  }
  return `http://${listen}/${rest}`;
}

function checkName(transferName: string): void {
  // A name from the command line must not lead outside run/sysupdate.d (e.g. "../../usr/lib/sysupdate.d/50-root").
  if (!transferName || transferName === '.' || transferName === '..' || /[/\0]/.test(transferName)) {
    throw new UsageError(`invalid transfer name "${transferName}": expected a transfer file name without the suffix`);
  }
}

export function dropinDir(root: string, transferName: string): string {
  checkName(transferName);
  return join(root, RUN_DIR, `${transferName}.transfer.d`);
}

export function copyPath(root: string, transferName: string): string {
  checkName(transferName);
  return join(root, RUN_DIR, `${transferName}.conf`);
}

/** How a transfer is redirected: a drop-in (257+ `.transfer`) or a whole copy (`.conf`, every version). */
export type RedirectKind = 'dropin' | 'copy';

/**
 * How `t` can be redirected on a host running systemd `version` (undefined:
 * unknown, the file suffix decides), or why it cannot.
 */
export function redirectKind(t: Transfer, version: number | undefined): RedirectKind | { skip: string } {
  if (t.suffix === '.transfer') {
    if (version !== undefined && version < DROPIN_SYSTEMD) {
      return { skip: `${t.file}: systemd ${version} reads only *.conf transfer files, not *.transfer` };
    }
    return 'dropin';
  }
  // A copy in run/sysupdate.d only wins over usr/local/lib and usr/lib; an admin's file is never replaced.
  if (t.dir === TRANSFER_DIRS[0] || t.dir === RUN_DIR) {
    const why = `${t.file} is an administrator's file that a copy in /${RUN_DIR} cannot override`;
    return { skip: `${why}; set its Path= by hand` };
  }
  return 'copy';
}

export async function writeDropin(root: string, transferName: string, path: string): Promise<string> {
  const dir = dropinDir(root, transferName);
  await mkdir(dir, { recursive: true });
  const target = join(dir, DROPIN_NAME);
  const note = '# Written by "deltad redirect" while deltad.socket is active; removed when it stops.';
  await writeFileAtomic(target, `${note}\n[Source]\nPath=${path}\n`);
  return target;
}

/** `text` with every [Source] Path= set to `path`; everything else byte for byte. */
export function rewriteSourcePath(text: string, path: string): string {
  let section = '';
  return text
    .split('\n')
    .map((line) => {
      const trimmed = line.trim();
      const m = /^\[(.+)\]$/.exec(trimmed);
      if (m) section = m[1];
      else if (section === 'Source' && /^Path\s*=/.test(trimmed)) return `Path=${path}`;
      return line;
    })
    .join('\n');
}

/** Writes the marked whole-file copy of `t` (a `.conf` transfer) with Path= rewritten. */
export async function writeCopy(root: string, t: Transfer, path: string): Promise<string> {
  const target = copyPath(root, t.name);
  // Never replace a file deltad did not write (readTransfers skipped only marked copies).
  const existing = await readFile(target, 'utf8').catch(() => undefined);
  if (existing !== undefined && !existing.startsWith(COPY_MARKER)) {
    throw new UsageError(`${target} exists and was not written by deltad; not replacing it`);
  }
  await mkdir(join(root, RUN_DIR), { recursive: true });
  const header =
    `${COPY_MARKER} ${t.file} with [Source] Path= pointing at deltad.\n` +
    `# Removed by "deltad redirect --remove" when deltad.socket stops; edit the original, not this file.\n`;
  await writeFileAtomic(target, header + rewriteSourcePath(await readFile(t.file, 'utf8'), path));
  return target;
}

/** Removes deltad's drop-in and its marked copy for a transfer; returns what was removed. */
export async function removeRedirect(root: string, transferName: string): Promise<string[]> {
  const removed: string[] = [];
  const dir = dropinDir(root, transferName);
  const dropin = join(dir, DROPIN_NAME);
  if (await rmIfExists(dropin)) {
    removed.push(dropin);
    await rmdir(dir).catch(() => {});
  }
  const copy = copyPath(root, transferName);
  if ((await isDeltadCopy(copy)) && (await rmIfExists(copy))) removed.push(copy);
  return removed;
}

async function rmIfExists(path: string): Promise<boolean> {
  try {
    await rm(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** Names of transfers that currently have deltad's drop-in or copy. */
export async function redirectedTransfers(root: string): Promise<string[]> {
  const base = join(root, RUN_DIR);
  const names = new Set<string>();
  for (const d of await listDir(base)) {
    const dropin = d.endsWith('.transfer.d') && (await listDir(join(base, d))).includes(DROPIN_NAME);
    if (dropin) names.add(d.slice(0, -'.transfer.d'.length));
    else if (d.endsWith('.conf') && (await isDeltadCopy(join(base, d)))) names.add(d.slice(0, -'.conf'.length));
  }
  return [...names].sort();
}
