// deltad's version, read from package.json: the one place it is defined
// (`deltad --version`, the proxy's x-deltad-proxy header, User-Agent).
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function readVersion(): string {
  // Up from this module (dist/lib/... in a checkout, /usr/lib/deltad/dist/lib/... installed).
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const path = join(dir, 'package.json');
    if (existsSync(path)) {
      const pkg = JSON.parse(readFileSync(path, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'deltad' && typeof pkg.version === 'string') return pkg.version;
    }
    const up = dirname(dir);
    if (up === dir) throw new Error(`deltad's package.json not found above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

export const VERSION = readVersion();
