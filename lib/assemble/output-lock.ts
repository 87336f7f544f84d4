// One writer per output: `.<out>.deltad-lock` beside the output, created with
// O_EXCL and holding "<pid> <start time>" of its owner, kept until the partial
// file is renamed (or given up), then removed.
//
// Why a lock file and not flock(2): Node has no flock or fcntl locking, and the
// ways around that (a native addon, or a child `flock` process holding the
// descriptor) add a dependency or a process per extract. O_EXCL creation is
// atomic on every local file system. Its weakness, a lock left by a process
// that died, is handled by checking the owner: a lock whose pid is not running,
// or runs with another start time (a reused pid after a reboot), is stale and
// taken over. Two runs racing to take over the same stale lock could both
// think they won; that is why commit() also checks, right before its rename,
// that the lock path still names the lock file this run created.
import { readFileSync } from 'node:fs';
import { lstat, readFile, unlink, type FileHandle } from 'node:fs/promises';
import { OutputBusyError, OutputReplacedError } from '../errors.js';
import { createExclusive } from '../util/fs-io.js';

/** A lock file with no owner written yet is a run between its open and its write; past this it is stale. */
const UNWRITTEN_STALE_MS = 10_000;

/** Start time of a process (field 22 of /proc/<pid>/stat), '' where /proc is not available; null when not running. */
function startTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '';
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return '';
    try {
      process.kill(pid, 0);
      return ''; // running, but /proc is not there to say since when
    } catch (e) {
      return (e as NodeJS.ErrnoException).code === 'EPERM' ? '' : null;
    }
  }
}

/** "<pid> <start>" of a live owner, null when the content names no running process. */
function liveOwner(content: string): number | null {
  const m = /^(\d+) (\S*)\n?$/.exec(content);
  if (!m) return null;
  const pid = Number(m[1]);
  const start = startTime(pid);
  if (start === null) return null;
  return m[2] === '' || start === '' || start === m[2] ? pid : null;
}

export class OutputLock {
  private released = false;

  private constructor(
    readonly path: string,
    readonly out: string,
    private readonly fh: FileHandle,
    private readonly ino: bigint,
    private readonly dev: bigint,
  ) {}

  /** Takes the lock for `out` at `path`, or throws OutputBusyError naming the run that holds it. */
  static async acquire(path: string, out: string): Promise<OutputLock> {
    const me = `${process.pid} ${startTime(process.pid) ?? ''}\n`;
    for (let attempt = 0; ; attempt++) {
      let fh: FileHandle;
      try {
        fh = await createExclusive(path, 0o644);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 3) throw err;
        const content = await readFile(path, 'utf8').catch(() => null);
        if (content === null) continue; // gone meanwhile: try again
        const st = await lstat(path).catch(() => null);
        const fresh = content === '' && st !== null && Date.now() - st.mtimeMs < UNWRITTEN_STALE_MS;
        const owner = fresh ? -1 : liveOwner(content);
        if (owner !== null) {
          throw new OutputBusyError(out, path, owner > 0 ? `pid ${owner}` : 'another run');
        }
        // Stale: removed only if it still holds what was judged stale (another run may have taken it over).
        if ((await readFile(path, 'utf8').catch(() => null)) === content) await unlink(path).catch(() => {});
        continue;
      }
      try {
        await fh.write(me);
        const st = await fh.stat({ bigint: true });
        return new OutputLock(path, out, fh, st.ino, st.dev);
      } catch (err) {
        await fh.close().catch(() => {});
        await unlink(path).catch(() => {});
        throw err;
      }
    }
  }

  /** Throws unless the lock path still names the file this run created (no one took it over). */
  async assertHeld(): Promise<void> {
    const st = await lstat(this.path, { bigint: true }).catch(() => null);
    if (!st || st.ino !== this.ino || st.dev !== this.dev) {
      throw new OutputReplacedError(this.out, `its lock ${this.path} was removed or taken over by another run`);
    }
  }

  /** Removes the lock (only when it is still ours). */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    const ours = await this.assertHeld().then(
      () => true,
      () => false,
    );
    if (ours) await unlink(this.path).catch(() => {});
    await this.fh.close().catch(() => {});
  }
}
