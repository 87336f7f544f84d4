// Sizes as people type them: "65536", "64K", "1M", "2GiB", "1.5G" (powers of 1024, like casync). The one size
// grammar of the CLI and the configuration file, and sizes as people read them.
import { UsageError } from '../errors.js';

/** "65536", "64K", "1M", "1.5G" (powers of 1024, like casync; a fraction is rounded down to whole bytes). */
export function parseSize(s: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(s.trim());
  if (!m) throw new UsageError(`${what}: "${s}" is not a size (examples: 65536, 64K, 1M)`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[
    m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'
  ];
  const v = Math.floor(Number(m[1]) * mult);
  if (!Number.isSafeInteger(v)) throw new UsageError(`${what}: "${s}" is too large`);
  return v;
}

/** "512 B", "1.5 MiB", "120 GiB": for messages and progress. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}
