// The real deltad CLI in a child process, as the CLI and fault tests run it:
// killed after a bound, optionally as another user (setpriv to nobody: root
// reads everything), with its exit code, output, wall time and peak memory
// (VmHWM from /proc/<pid>/status, polled until it exits).
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './repo.js';

export const CLI = join(REPO_ROOT, 'dist', 'daemon', 'cli.js');

export interface CliRun {
  code: number;
  stdout: Buffer;
  stderr: string;
  ms: number;
  /** Peak resident memory of the CLI process in bytes (0 when /proc was not readable). */
  peakRss: number;
}

export interface CliOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Standard input (default: none, closed at once). */
  stdin?: Buffer;
  /** Run as this user and group (via setpriv), e.g. ['nobody', 'nogroup']. */
  as?: [string, string];
  /** Gets the child, e.g. to signal it. */
  onSpawn?: (child: ChildProcess) => void;
  /** Killed after this long (default 30 s). */
  timeoutMs?: number;
}

function vmHwm(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

export function runCli(args: string[], opts: CliOptions = {}): Promise<CliRun> {
  const argv = [CLI, ...args];
  const [cmd, cmdArgs] = opts.as
    ? ['setpriv', [`--reuid=${opts.as[0]}`, `--regid=${opts.as[1]}`, '--clear-groups', process.execPath, ...argv]]
    : [process.execPath, argv];
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child = spawn(cmd, cmdArgs, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env, cwd: opts.cwd });
    opts.onSpawn?.(child);
    const out: Buffer[] = [];
    let stderr = '';
    let peakRss = 0;
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d) => (stderr += d));
    child.stdin.on('error', () => {}); // a child that refuses its arguments exits without reading stdin
    child.stdin.end(opts.stdin ?? Buffer.alloc(0));
    // setpriv execs node in the same process, so the pid is the CLI's.
    const poll = setInterval(() => {
      peakRss = Math.max(peakRss, vmHwm(child.pid ?? 0));
    }, 20);
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.on('error', reject);
    child.on('exit', () => clearInterval(poll));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        code: code ?? (signal ? -1 : -2),
        stdout: Buffer.concat(out),
        stderr,
        ms: Date.now() - started,
        peakRss,
      });
    });
  });
}
