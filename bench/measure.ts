// What a benchmarked process cost: wall time, peak RSS and bytes written to
// disk. The figures are the kernel's per-process counters: peak RSS is
// /proc/<pid>/status VmHWM, disk writes are /proc/<pid>/io write_bytes (bytes
// the process dirtied in the page cache of a block device: not tmpfs, not
// pipes or sockets). Both are read at exit through wait4(2) by GNU time
// (ru_maxrss = VmHWM, ru_oublock = write_bytes / 512, both including the
// process's threads and its waited-for children), so nothing written in the
// last moments is missed; a command stopped at its time limit is still counted. While the process runs, sample() reads
// the same
// counters from /proc (e.g. a daemon between requests).
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface ProcSample {
  /** Peak and current resident set (VmHWM, VmRSS), in KiB. */
  vmHwmKiB: number;
  vmRssKiB: number;
  /** /proc/<pid>/io write_bytes and read_bytes. */
  writeBytes: number;
  readBytes: number;
}

/** The counters of a running process, or null when it is gone. */
export function sampleProc(pid: number): ProcSample | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const io = readFileSync(`/proc/${pid}/io`, 'utf8');
    const field = (text: string, name: string): number =>
      Number(new RegExp(`^${name}:\\s*(\\d+)`, 'm').exec(text)?.[1] ?? NaN);
    return {
      vmHwmKiB: field(status, 'VmHWM'),
      vmRssKiB: field(status, 'VmRSS'),
      writeBytes: field(io, 'write_bytes'),
      readBytes: field(io, 'read_bytes'),
    };
  } catch {
    return null;
  }
}

/** VmRSS, RssAnon and RssFile (+ RssShmem) of a running process in MiB, or null when it is gone. */
function rssSplit(pid: number): { rssMiB: number; anonMiB: number; fileMiB: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const mib = (name: string): number => Number(new RegExp(`^${name}:\\s*(\\d+)`, 'm').exec(status)?.[1] ?? 0) / 1024;
    return { rssMiB: mib('VmRSS'), anonMiB: mib('RssAnon'), fileMiB: mib('RssFile') + mib('RssShmem') };
  } catch {
    return null;
  }
}

export interface Measured {
  code: number | null;
  /** Killed at the time limit. */
  timedOut: boolean;
  wallS: number;
  peakRssMiB: number;
  /** User + system CPU seconds (less sensitive than wall time to what else the machine runs). */
  cpuS: number;
  writeBytes: number;
  /**
   * With `peakSplit`: the resident set at the highest VmRSS seen by sampling every 20 ms, split into anonymous
   * memory (heaps, buffers) and file pages (mostly the node binary's code, ~50 MiB that no change to deltad moves).
   */
  peakSplit?: { rssMiB: number; anonMiB: number; fileMiB: number };
  stdout: string;
  stderr: string;
}

export interface MeasuredProcess {
  /** The measured process itself (not the GNU time wrapper); 0 until known. */
  pid(): number;
  sample(): ProcSample | null;
  /** Resolves when the process exits. */
  done: Promise<Measured>;
  kill(signal?: NodeJS.Signals): void;
}

let serial = 0;

/**
 * Starts `cmd` under GNU time in its own process group. `timeoutS` stops the
 * command (SIGTERM, then SIGKILL to the group after 3 s). `onStdout` sees output as it comes.
 */
export function startMeasured(
  cmd: string[],
  opts: {
    env?: NodeJS.ProcessEnv;
    timeoutS?: number;
    onStdout?: (chunk: string) => void;
    cwd?: string;
    /** Sample the anonymous/file split of the resident set at its peak (Measured.peakSplit). */
    peakSplit?: boolean;
  } = {},
): MeasuredProcess {
  const timeFile = join(tmpdir(), `deltad-bench-time-${process.pid}-${++serial}.txt`);
  const child = spawn('/usr/bin/time', ['-f', '%e %M %O %U %S', '-o', timeFile, ...cmd], {
    env: opts.env ?? process.env,
    cwd: opts.cwd,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
    opts.onStdout?.(d);
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-64 * 1024)));
  let inner = 0;
  const pid = (): number => {
    if (inner || !child.pid) return inner;
    try {
      inner = Number(readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim().split(/\s+/)[0]) || 0;
    } catch {
      // not started yet or gone
    }
    return inner;
  };
  let timedOut = false;
  const killGroup = (signal: NodeJS.Signals): void => {
    try {
      if (child.pid) process.kill(-child.pid, signal);
    } catch {
      // already gone
    }
  };
  // At the limit the command (not GNU time) is stopped, so time still reports its counters:
  // SIGTERM, SIGKILL 3 s later, and the whole group only if that did not end it.
  const signalInner = (signal: NodeJS.Signals): void => {
    try {
      process.kill(pid() || -child.pid!, signal);
    } catch {
      // already gone
    }
  };
  const timer = opts.timeoutS
    ? setTimeout(() => {
        timedOut = true;
        signalInner('SIGTERM');
        setTimeout(() => signalInner('SIGKILL'), 3000).unref();
        setTimeout(() => killGroup('SIGKILL'), 10_000).unref();
      }, opts.timeoutS * 1000)
    : undefined;
  const started = performance.now();
  let split: Measured['peakSplit'];
  const splitTimer = opts.peakSplit
    ? setInterval(() => {
        const s = pid() ? rssSplit(pid()) : null;
        if (s && (!split || s.rssMiB > split.rssMiB)) split = s;
      }, 20)
    : undefined;
  const done = new Promise<Measured>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      clearInterval(splitTimer);
      const wallS = (performance.now() - started) / 1000;
      let rss = NaN;
      let blocks = NaN;
      let cpuS = NaN;
      try {
        // The last line is the format; a killed command adds "Command terminated by signal N" before it.
        const last = readFileSync(timeFile, 'utf8').trim().split('\n').pop()!.split(' ').map(Number);
        [, rss, blocks] = last;
        cpuS = last[3] + last[4];
      } catch {
        // time did not write its file
      }
      rmSync(timeFile, { force: true });
      resolve({
        code,
        timedOut,
        wallS,
        peakRssMiB: rss / 1024,
        cpuS,
        writeBytes: blocks * 512,
        peakSplit: split,
        stdout,
        stderr,
      });
    });
  });
  return { pid, sample: () => (pid() ? sampleProc(pid()) : null), done, kill: killGroup };
}

/** Runs `cmd` to the end (or the time limit) and returns what it cost. */
export function runMeasured(cmd: string[], opts: Parameters<typeof startMeasured>[1] = {}): Promise<Measured> {
  return startMeasured(cmd, opts).done;
}

/**
 * CPU seconds a process spends from now until stop(), per kind of thread, from /proc/PID/task/TID/stat polled
 * every 100 ms: its main thread, V8's helper threads (GC marking and sweeping, compilers), worker threads (the
 * hashing thread), and libuv's pool (file reads); a thread counts with its last sample before it ended.
 */
export function threadCpu(pid: number): { stop: () => Record<string, number> } {
  const seen = new Map<string, { kind: string; s: number }>();
  const kindOf = (tid: string, comm: string): string =>
    tid === String(pid)
      ? 'main'
      : comm.startsWith('V8') || comm === 'DelayedTaskSche'
        ? 'v8'
        : comm === 'WorkerThread'
          ? 'worker'
          : comm.startsWith('libuv')
            ? 'libuv'
            : 'other';
  const poll = (): void => {
    let tids: string[] = [];
    try {
      tids = readdirSync(`/proc/${pid}/task`);
    } catch {
      return; // gone
    }
    for (const tid of tids) {
      try {
        const st = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
        const comm = st.slice(st.indexOf('(') + 1, st.lastIndexOf(')'));
        seen.set(tid, { kind: kindOf(tid, comm), s: (Number(f[11]) + Number(f[12])) / 100 });
      } catch {
        // the thread ended
      }
    }
  };
  poll();
  const before = new Map([...seen].map(([tid, t]) => [tid, t.s]));
  const timer = setInterval(poll, 100);
  return {
    stop: () => {
      clearInterval(timer);
      const out: Record<string, number> = {};
      for (const [tid, { kind, s }] of seen)
        out[kind] = Number(((out[kind] ?? 0) + s - (before.get(tid) ?? 0)).toFixed(2));
      return out;
    },
  };
}
