// The SHA256SUMS manifest sysupdate verifies images against: lines of
// "<64 hex> <' ' or '*'><name>". deltad reads the entry for an image so that it
// can refuse to complete a download whose bytes would not match it.

/** Finds `name`'s SHA-256 (lowercase hex) in a manifest, or undefined. */
export function findSha256(manifest: string, name: string): string | undefined {
  for (const line of manifest.split('\n')) {
    const m = /^([0-9a-fA-F]{64}) [ *](.+?)\r?$/.exec(line);
    if (m && m[2] === name) return m[1].toLowerCase();
  }
  return undefined;
}

/** The file names a manifest lists, in its order. */
export function listedNames(manifest: string): string[] {
  const out: string[] = [];
  for (const line of manifest.split('\n')) {
    const m = /^[0-9a-fA-F]{64} [ *](.+?)\r?$/.exec(line);
    if (m) out.push(m[1]);
  }
  return out;
}
