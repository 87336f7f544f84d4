// Waiting for what a daemon writes after the response: a directory's entries settle
// once its background work (an index kept beside a delivered image) is done.
import { readdir } from 'node:fs/promises';

/** The directory's entries (sorted) once they are `want`, or what they are after `ms`. */
export async function settled(dir: string, want: string[], ms = 5_000): Promise<string[]> {
  const end = Date.now() + ms;
  for (;;) {
    const got = (await readdir(dir).catch(() => [] as string[])).sort();
    if (got.join('/') === [...want].sort().join('/') || Date.now() > end) return got;
    await new Promise((r) => setTimeout(r, 20));
  }
}
