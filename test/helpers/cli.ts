// The real deltad CLI in a child process, as the CLI tests run it: killed after
// a bound, with its exit code, output and wall time.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT } from './repo.js';

export const CLI = join(REPO_ROOT, 'dist', 'daemon', 'cli.js');

export interface CliRun {
  code: number;
  stdout: Buffer;
  stderr: string;
  ms: number;
}

export interface CliOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Standard input (default: none, closed at once). */
  stdin?: Buffer;
  /** Gets the child, e.g. to signal it. */
  onSpawn?: (child: ChildProcess) => void;
  /** Killed after this long (default 30 s). */
  timeoutMs?: number;
}

export function runCli(args: string[], opts: CliOptions = {}): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child = spawn(process.execPath, [CLI, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: opts.env,
      cwd: opts.cwd,
    });
    opts.onSpawn?.(child);
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d) => (stderr += d));
    child.stdin.on('error', () => {}); // a child that refuses its arguments exits without reading stdin
    child.stdin.end(opts.stdin ?? Buffer.alloc(0));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout: Buffer.concat(out), stderr, ms: Date.now() - started });
    });
  });
}
