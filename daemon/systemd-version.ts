// The host's systemd version, for `deltad redirect` (252-256 read whole
// `*.conf` transfer files, 257+ `*.transfer` files with drop-ins). Asked of
// systemd-sysupdate itself, else systemctl; undefined when neither answers
// (then the transfer file's suffix decides). Only ever run for the root "/":
// under --root the binaries of the running host say nothing about the tree.
import { execFile } from 'node:child_process';

const CANDIDATES: [string, string[]][] = [
  ['/usr/lib/systemd/systemd-sysupdate', ['--version']],
  ['/lib/systemd/systemd-sysupdate', ['--version']],
  ['systemctl', ['--version']],
];

/** "systemd 257 (257.4-1)" -> 257. */
export function parseSystemdVersion(text: string): number | undefined {
  const m = /^systemd (\d+)/m.exec(text);
  return m ? Number(m[1]) : undefined;
}

function versionOf(cmd: string, args: string[]): Promise<number | undefined> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 5_000, encoding: 'utf8' }, (err, stdout) => {
      resolve(err ? undefined : parseSystemdVersion(stdout));
    });
  });
}

export async function detectSystemdVersion(root: string): Promise<number | undefined> {
  if (root !== '/') return undefined;
  for (const [cmd, args] of CANDIDATES) {
    const v = await versionOf(cmd, args);
    if (v !== undefined) return v;
  }
  return undefined;
}
