// Version <-> file name through sysupdate's MatchPattern= (sysupdate.d(5)), for
// the transfers that go through deltad (url-file, Path= under the origin):
// - the image of version V, for /v1/updatesize?version=V: the source pattern
//   with @v = V, under the transfer's Path= relative to the origin;
// - the name sysupdate installs a downloaded image as, for adoption of its
//   index: the version from the source pattern put into the target pattern
//   (kde-linux_7_root-x86-64.erofs -> kde-linux_7.erofs).
// Specifiers (%a, %w, %A, ...) are expanded as sysupdate does, from the
// architecture and os-release; a pattern with another placeholder (@u, @t,
// ...) or an unknown specifier cannot be turned into a name and is skipped.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathUnderOrigin, readTransfers, transfersImage, type Transfer } from './sysupdate-transfers.js';

/** systemd's architecture names (architecture_to_string) for Node's process.arch. */
const ARCH: Record<string, string> = {
  x64: 'x86-64',
  ia32: 'x86',
  arm64: 'arm64',
  arm: 'arm',
  ppc64: 'ppc64-le',
  riscv64: 'riscv64',
  s390x: 's390x',
  loong64: 'loongarch64',
  mips64el: 'mips64-le',
  mipsel: 'mips-le',
};
/** Specifiers taken from os-release. */
const OS_RELEASE: Record<string, string> = {
  A: 'IMAGE_VERSION',
  B: 'BUILD_ID',
  M: 'IMAGE_ID',
  o: 'ID',
  w: 'VERSION_ID',
  W: 'VARIANT_ID',
};

export type Specifiers = Record<string, string>;

export async function loadSpecifiers(root: string, arch: string = process.arch): Promise<Specifiers> {
  const spec: Specifiers = { '%': '%' };
  if (ARCH[arch]) spec.a = ARCH[arch];
  let text = '';
  for (const f of ['etc/os-release', 'usr/lib/os-release']) {
    text = await readFile(join(root, f), 'utf8').catch(() => '');
    if (text) break;
  }
  const vars = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line.trim());
    if (m) vars.set(m[1], m[2].replace(/^(["'])(.*)\1$/, '$2'));
  }
  for (const [c, key] of Object.entries(OS_RELEASE)) {
    const v = vars.get(key);
    if (v) spec[c] = v;
  }
  return spec;
}

/** `text` with its specifiers expanded; undefined when one is unknown. */
export function expandSpecifiers(text: string, spec: Specifiers): string | undefined {
  let unknown = false;
  const out = text.replace(/%(.)/g, (_, c: string) => {
    if (spec[c] === undefined) unknown = true;
    return spec[c] ?? '';
  });
  return unknown ? undefined : out;
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The pattern as a regular expression whose group 1 is @v (other @ fields match anything). */
export function patternRegExp(pattern: string, spec: Specifiers): RegExp | undefined {
  const expanded = expandSpecifiers(pattern, spec);
  if (expanded === undefined) return undefined;
  const re = expanded
    .split(/(@[a-zA-Z])/)
    .map((part, i) => (i % 2 === 0 ? escapeRegExp(part) : part === '@v' ? '([^/]+?)' : '(?:[^/]+?)'))
    .join('');
  return new RegExp(`^${re}$`);
}

/** The pattern with @v = version; undefined when it has other fields or unknown specifiers. */
export function expandPattern(pattern: string, version: string, spec: Specifiers): string | undefined {
  const expanded = expandSpecifiers(pattern, spec);
  if (expanded === undefined || /@[a-uw-zA-Z]/.test(expanded)) return undefined;
  return expanded.replace(/@v/g, version);
}

/** A version sysupdate accepts (no '/', no whitespace, not empty): safe to put into a file name. */
export function isValidVersion(v: string): boolean {
  return /^[A-Za-z0-9._+~^-]{1,200}$/.test(v) && v !== '.' && v !== '..';
}

/**
 * The transfers as they are now: read again on every use (a handful of small
 * files), because sysupdate's definitions may appear or change while the
 * daemon runs (an update that ships new transfers, a test that writes them).
 */
export class SysupdateTransfers {
  constructor(
    private readonly root: string,
    private readonly origin: string,
    private readonly imagePatterns: string[],
    private readonly onError: (err: Error) => void = () => {},
  ) {}

  async current(): Promise<TransferNames> {
    try {
      return await TransferNames.load(this.root, this.origin, this.imagePatterns);
    } catch (err) {
      this.onError(err as Error);
      return new TransferNames([], {});
    }
  }
}

export class TransferNames {
  constructor(
    /** url-file image transfers whose Path= is under the origin, with that rest. */
    private readonly transfers: { t: Transfer; rest: string }[],
    private readonly spec: Specifiers,
  ) {}

  static async load(root: string, origin: string, imagePatterns: string[]): Promise<TransferNames> {
    const all = await readTransfers(root);
    const chosen = [];
    for (const t of all) {
      const rest = pathUnderOrigin(t.sourcePath, origin);
      if (t.sourceType !== 'url-file' || rest === undefined || !transfersImage(t, imagePatterns)) continue;
      chosen.push({ t, rest });
    }
    return new TransferNames(chosen, await loadSpecifiers(root));
  }

  get count(): number {
    return this.transfers.length;
  }

  /**
   * Paths relative to the origin of the images of `version`, one per transfer
   * (the first source pattern that `isImage` accepts).
   */
  imagePaths(version: string, isImage: (name: string) => boolean): string[] {
    if (!isValidVersion(version)) return [];
    const out: string[] = [];
    for (const { t, rest } of this.transfers) {
      const dir = expandSpecifiers(rest, this.spec);
      if (dir === undefined) continue;
      for (const p of t.matchPatterns) {
        const name = expandPattern(p, version, this.spec);
        if (!name || !isImage(name.slice(name.lastIndexOf('/') + 1))) continue;
        // sysupdate appends the file name to Path= with one '/'.
        out.push(dir.replace(/\/+$/, '') ? `${dir.replace(/\/+$/, '')}/${name}` : name);
        break;
      }
    }
    return out;
  }

  /**
   * The version in `downloaded` by the first transfer whose source pattern matches it, with that transfer's number
   * (which images are one series); undefined when none does.
   */
  versionOf(downloaded: string): { transfer: number; version: string } | undefined {
    for (const [transfer, { t }] of this.transfers.entries()) {
      for (const p of t.matchPatterns) {
        const m = patternRegExp(p, this.spec)?.exec(downloaded);
        if (m && m[1] !== undefined) return { transfer, version: m[1] };
      }
    }
    return undefined;
  }

  /** The file names sysupdate installs `downloaded` as (empty when no transfer maps it). */
  installedNames(downloaded: string): string[] {
    const out = new Set<string>();
    for (const { t } of this.transfers) {
      for (const p of t.matchPatterns) {
        const m = patternRegExp(p, this.spec)?.exec(downloaded);
        if (!m || m[1] === undefined) continue;
        for (const target of t.targetPatterns) {
          const name = expandPattern(target, m[1], this.spec);
          if (name) out.add(name.slice(name.lastIndexOf('/') + 1));
        }
      }
    }
    return [...out];
  }
}

/**
 * Orders versions as sysupdate does, closely enough to find the newest (systemd's strverscmp_improved): runs of
 * digits compare as numbers, other characters one by one, '~' before anything (a pre-release), the end of one
 * version before any further characters of the other except '~'.
 */
export function compareVersions(a: string, b: string): number {
  let i = 0;
  let j = 0;
  for (;;) {
    if (a[i] === '~' || b[j] === '~') {
      if (a[i] !== '~') return 1;
      if (b[j] !== '~') return -1;
      i++;
      j++;
      continue;
    }
    if (i >= a.length || j >= b.length) return i >= a.length ? (j >= b.length ? 0 : -1) : 1;
    const da = /^\d+/.exec(a.slice(i))?.[0];
    const db = /^\d+/.exec(b.slice(j))?.[0];
    if (da !== undefined && db !== undefined) {
      const x = da.replace(/^0+/, '');
      const y = db.replace(/^0+/, '');
      if (x.length !== y.length) return x.length < y.length ? -1 : 1;
      if (x !== y) return x < y ? -1 : 1;
      i += da.length;
      j += db.length;
      continue;
    }
    if (a[i] !== b[j]) return a[i] < b[j] ? -1 : 1;
    i++;
    j++;
  }
}
