// The real `deltad` CLI in a child process for the fault suite: bounded in
// time, optionally as another user (setpriv to nobody: root reads everything),
// with its peak memory (VmHWM from /proc/<pid>/status, polled until it exits).
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../helpers/repo.js';

export const CLI = join(REPO_ROOT, 'dist', 'daemon', 'cli.js');

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
  /** Peak resident memory of the CLI process in bytes (0 when /proc was not readable). */
  peakRss: number;
}

export interface CliOptions {
  env?: Record<string, string>;
  /** Killed after this long (default 30 s). */
  timeoutMs?: number;
  /** Run as this user and group (via setpriv), e.g. ['nobody', 'nogroup']. */
  as?: [string, string];
  onSpawn?: (child: ChildProcess) => void;
}

function vmHwm(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

export function deltad(args: string[], opts: CliOptions = {}): Promise<CliRun> {
  const argv = [CLI, ...args];
  const [cmd, cmdArgs] = opts.as
    ? ['setpriv', [`--reuid=${opts.as[0]}`, `--regid=${opts.as[1]}`, '--clear-groups', process.execPath, ...argv]]
    : [process.execPath, argv];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, cmdArgs, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
    opts.onSpawn?.(child);
    let stdout = '';
    let stderr = '';
    let peakRss = 0;
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    // setpriv execs node in the same process, so the pid is the CLI's.
    const poll = setInterval(() => (peakRss = Math.max(peakRss, vmHwm(child.pid!))), 20);
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.on('error', reject);
    child.on('exit', () => {
      clearInterval(poll);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? -1 : -2), stdout, stderr, peakRss });
    });
  });
}
