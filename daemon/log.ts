// Journal-friendly logging: one line per event, no colours. When stderr goes to
// the journal (systemd sets JOURNAL_STREAM), each line carries a syslog level
// prefix (<3> error, <4> warning, <5> notice, <6> info) so journalctl can filter by priority.

export type LogLevel = 'error' | 'warn' | 'notice' | 'info';

export interface Logger {
  error(msg: string): void;
  warn(msg: string): void;
  /** Normal but significant (e.g. the server switched deltas off). */
  notice(msg: string): void;
  info(msg: string): void;
}

const PRIORITY: Record<LogLevel, number> = { error: 3, warn: 4, notice: 5, info: 6 };

export function createLogger(
  stream: NodeJS.WritableStream = process.stderr,
  env: NodeJS.ProcessEnv = process.env,
): Logger {
  const journal = Boolean(env.JOURNAL_STREAM);
  const write = (level: LogLevel, msg: string) => {
    const line = msg.replace(/[\r\n]+/g, ' ');
    stream.write(journal ? `<${PRIORITY[level]}>${line}\n` : `${level === 'info' ? '' : level + ': '}${line}\n`);
  };
  return {
    error: (m) => write('error', m),
    warn: (m) => write('warn', m),
    notice: (m) => write('notice', m),
    info: (m) => write('info', m),
  };
}

export const silentLogger: Logger = { error() {}, warn() {}, notice() {}, info() {} };
