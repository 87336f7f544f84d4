// Real clients for the sysupdate sidecar: systemd-pull exactly as
// systemd-sysupdate runs it (one plain GET, --verify=<sha256> or checksum),
// and curl. Each run is bounded in time. A missing tool fails under CI.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';

export const SYSTEMD_PULL = ['/usr/lib/systemd/systemd-pull', '/lib/systemd/systemd-pull'].find((p) => existsSync(p));

/** Skips (or, under CI, fails) a test when a tool is missing. Returns false when the test should stop. */
export function requireTool(t: { skip(msg: string): void }, present: boolean, name: string): boolean {
  if (present) return true;
  if (process.env.CI) throw new Error(`${name} is required under CI (scripts/test-deps.sh installs it)`);
  t.skip(`${name} is not installed`);
  return false;
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

export function run(cmd: string, args: string[], timeoutMs = 60_000, env?: NodeJS.ProcessEnv): Promise<RunResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      {
        timeout: timeoutMs,
        killSignal: 'SIGKILL',
        maxBuffer: 64 * 1024 * 1024,
        encoding: 'utf8',
        env: env ?? process.env,
      },
      (err, stdout, stderr) => {
        const code = err
          ? typeof (err as { code?: unknown }).code === 'number'
            ? (err as { code: number }).code
            : null
          : 0;
        resolve({ code, stdout, stderr, ms: Date.now() - started });
      },
    );
  });
}

/** `systemd-pull raw --direct --verify=<verify> --sync=no URL OUT`, as systemd-sysupdate does. */
export function systemdPull(url: string, out: string, verify: string, timeoutMs = 60_000): Promise<RunResult> {
  if (!SYSTEMD_PULL) throw new Error('systemd-pull not found');
  // NOTIFY_SOCKET is dropped so that systemd-pull never talks to a real manager.
  const env = { ...process.env };
  delete env.NOTIFY_SOCKET;
  return run(SYSTEMD_PULL, ['raw', '--direct', `--verify=${verify}`, '--sync=no', url, out], timeoutMs, env);
}
