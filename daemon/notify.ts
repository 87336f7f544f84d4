// sd_notify: READY=1, STATUS=<text>, STOPPING=1 to $NOTIFY_SOCKET.
// Node's dgram cannot send to an AF_UNIX datagram socket, so this spawns
// systemd-notify (no native addon to build; the unit sets NotifyAccess=all
// because the message comes from a child). systemd-notify waits on a barrier
// until systemd has read the message, so attribution to our unit is reliable.
// Everything is optional: without $NOTIFY_SOCKET or the binary, it does nothing.
import { spawn } from 'node:child_process';
import type { Logger } from './log.js';

export interface Notifier {
  ready(status?: string): void;
  /** Human status line (systemctl status). Coalesced: only the newest pending one is sent. */
  status(text: string): void;
  stopping(): void;
  /** Resolves once every queued message was handed to systemd-notify. */
  flush(): Promise<void>;
}

export interface NotifierOptions {
  env?: NodeJS.ProcessEnv;
  /** systemd-notify binary (default: from PATH). */
  binary?: string;
  log?: Logger;
}

export function createNotifier(opts: NotifierOptions = {}): Notifier {
  const env = opts.env ?? process.env;
  const socket = env.NOTIFY_SOCKET;
  if (!socket) return { ready() {}, status() {}, stopping() {}, flush: async () => {} };
  const binary = opts.binary ?? 'systemd-notify';
  const queue: string[][] = [];
  let pendingStatus: string | undefined;
  let running: Promise<void> | undefined;
  let warned = false;

  const send = (assignments: string[]) =>
    new Promise<void>((resolve) => {
      const child = spawn(binary, assignments, {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...env, NOTIFY_SOCKET: socket },
      });
      let err = '';
      child.stderr.on('data', (d) => (err += d));
      const done = (problem?: string) => {
        if (problem && !warned) {
          warned = true;
          opts.log?.warn(`sd_notify via ${binary} failed: ${problem} (further failures not logged)`);
        }
        resolve();
      };
      child.on('error', (e) => done(e.message));
      child.on('close', (code) => done(code === 0 ? undefined : `exit ${code}: ${err.trim()}`));
    });

  const pump = async () => {
    for (;;) {
      let next = queue.shift();
      if (!next && pendingStatus !== undefined) {
        next = [`STATUS=${pendingStatus}`];
        pendingStatus = undefined;
      }
      if (!next) break;
      await send(next);
    }
    running = undefined;
  };
  const kick = () => {
    running ??= pump();
  };
  const oneLine = (s: string) => s.replace(/[\r\n]+/g, ' ');

  return {
    ready(status) {
      queue.push(status === undefined ? ['READY=1'] : ['READY=1', `STATUS=${oneLine(status)}`]);
      kick();
    },
    status(text) {
      pendingStatus = oneLine(text);
      kick();
    },
    stopping() {
      queue.push(['STOPPING=1']);
      kick();
    },
    async flush() {
      while (running) await running;
    },
  };
}
