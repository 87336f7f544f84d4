// Reads systemd-sysupdate transfer definitions (sysupdate.d(5)) and writes or
// removes deltad's drop-in that points a transfer's [Source] Path= at the daemon.
// Specifiers in Path= (%w, %W, %a, ...) are kept verbatim: sysupdate expands them.
import { mkdir, readdir, readFile, rename, rm, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { UsageError } from '../lib/errors.js';
import { globToRegExp } from './glob.js';

/** Search order of sysupdate.d; a file in an earlier directory masks the same name later. */
export const TRANSFER_DIRS = ['etc/sysupdate.d', 'run/sysupdate.d', 'usr/local/lib/sysupdate.d', 'usr/lib/sysupdate.d'];
export const DROPIN_NAME = '50-deltad.conf';

export interface Transfer {
  /** File name without ".transfer", e.g. "50-root". */
  name: string;
  file: string;
  sourceType: string;
  sourcePath: string;
  matchPatterns: string[];
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

async function listDir(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch {
    return [];
  }
}

/**
 * Effective transfers under `root`: each .transfer file (first directory wins)
 * plus its drop-ins from every directory, in file-name order, except deltad's own.
 */
export async function readTransfers(root: string): Promise<Transfer[]> {
  const files = new Map<string, string>();
  for (const dir of TRANSFER_DIRS) {
    for (const f of await listDir(join(root, dir))) {
      if (f.endsWith('.transfer') && !files.has(f)) files.set(f, join(root, dir, f));
    }
  }
  const out: Transfer[] = [];
  for (const [f, file] of [...files].sort(([a], [b]) => a.localeCompare(b))) {
    const sections = parseUnitFile(await readFile(file, 'utf8'));
    const dropins = new Map<string, string>();
    for (const dir of TRANSFER_DIRS) {
      const d = join(root, dir, `${f}.d`);
      for (const c of await listDir(d)) if (c.endsWith('.conf') && c !== DROPIN_NAME && !dropins.has(c)) dropins.set(c, join(d, c));
    }
    for (const [, p] of [...dropins].sort(([a], [b]) => a.localeCompare(b))) parseUnitFile(await readFile(p, 'utf8'), sections);
    out.push({
      name: f.slice(0, -'.transfer'.length),
      file,
      sourceType: last(sections, 'Source', 'Type'),
      sourcePath: last(sections, 'Source', 'Path'),
      matchPatterns: sections.get('Source')?.get('MatchPattern')?.flatMap((v) => v.split(/\s+/)) ?? [],
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
 * The Path= that sends a transfer through the daemon: the part after the
 * configured origin, appended to the daemon's address. The daemon resolves
 * request paths against that same origin, so both always agree.
 */
export function redirectedPath(t: Transfer, origin: string, listen: string): string {
  if (t.sourceType !== 'url-file') throw new UsageError(`${t.file}: [Source] Type=${t.sourceType || '(unset)'}; only url-file transfers can go through deltad`);
  if (!origin) throw new UsageError(`no origin configured; set "origin" to the start of ${t.file}'s Path=${t.sourcePath}`);
  if (!t.sourcePath.startsWith(origin)) {
    throw new UsageError(`${t.file}: [Source] Path=${t.sourcePath} is not under the configured origin ${origin}; set "origin" to a prefix of it`);
  }
  return `http://${listen}/${t.sourcePath.slice(origin.length)}`;
}

export function dropinDir(root: string, transferName: string): string {
  // A name from the command line must not lead outside run/sysupdate.d (e.g. "../../usr/lib/sysupdate.d/50-root").
  if (!transferName || transferName === '.' || transferName === '..' || /[/\0]/.test(transferName)) {
    throw new UsageError(`invalid transfer name "${transferName}": expected a .transfer file name without the suffix`);
  }
  return join(root, 'run/sysupdate.d', `${transferName}.transfer.d`);
}

export async function writeDropin(root: string, transferName: string, path: string): Promise<string> {
  const dir = dropinDir(root, transferName);
  await mkdir(dir, { recursive: true });
  const target = join(dir, DROPIN_NAME);
  const tmp = `${target}.tmp-${process.pid}`;
  const text = `# Written by "deltad redirect" while deltad.socket is active; removed when it stops.\n[Source]\nPath=${path}\n`;
  await writeFile(tmp, text, { mode: 0o644 });
  await rename(tmp, target);
  return target;
}

/** Removes deltad's drop-in (and the directory if that leaves it empty). Returns the removed file or undefined. */
export async function removeDropin(root: string, transferName: string): Promise<string | undefined> {
  const dir = dropinDir(root, transferName);
  const target = join(dir, DROPIN_NAME);
  try {
    await rm(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  await rmdir(dir).catch(() => {});
  return target;
}

/** Names of transfers that currently have deltad's drop-in. */
export async function redirectedTransfers(root: string): Promise<string[]> {
  const base = join(root, 'run/sysupdate.d');
  const names: string[] = [];
  for (const d of await listDir(base)) {
    if (d.endsWith('.transfer.d') && (await listDir(join(base, d))).includes(DROPIN_NAME)) names.push(d.slice(0, -'.transfer.d'.length));
  }
  return names;
}
