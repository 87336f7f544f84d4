// Progress bars for interactive commands: one redrawn line on a terminal
// (rate, ETA, optional detail), nothing at all in pipes and logs.

export interface ProgressOptions {
  label: string;
  /** Total units (bytes); 0 or undefined draws a counter without a bar. */
  total?: number;
  /** Draw only when true (the CLI passes "stderr is a TTY"). */
  interactive: boolean;
  stream?: NodeJS.WritableStream;
  /** Format for done/total values; default bytes. */
  unit?: 'bytes' | 'count';
}

export interface Progress {
  update(done: number, detail?: string): void;
  /** Sets a new total (e.g. once it is known). */
  setTotal(total: number): void;
  /** Clears the bar; prints the summary line when given (interactive only). */
  finish(summary?: string): void;
}

const REDRAW_MS = 100;
const BAR_WIDTH = 24;

import { formatBytes } from '../lib/util/size.js';

export { formatBytes };

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  const mm = String(m).padStart(2, '0');
  const ss = String(r).padStart(2, '0');
  return h > 0 ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

export function createProgress(opts: ProgressOptions): Progress {
  const stream = opts.stream ?? process.stderr;
  let total = opts.total ?? 0;
  const started = Date.now();
  let lastDraw = 0;
  let drawn = false;
  const fmt = opts.unit === 'count' ? (n: number) => String(n) : formatBytes;

  const draw = (done: number, detail?: string) => {
    const elapsed = (Date.now() - started) / 1000;
    const rate = elapsed > 0 ? done / elapsed : 0;
    let line = opts.label;
    if (total > 0) {
      const frac = Math.min(1, done / total);
      const filled = Math.round(frac * BAR_WIDTH);
      const eta = rate > 0 ? (total - done) / rate : Infinity;
      line += ` [${'#'.repeat(filled)}${'-'.repeat(BAR_WIDTH - filled)}] ${(frac * 100).toFixed(1).padStart(5)}% ${fmt(done)}/${fmt(total)}`;
      line += opts.unit === 'count' ? '' : ` ${formatBytes(rate)}/s ETA ${formatDuration(eta)}`;
    } else {
      line += ` ${fmt(done)}`;
    }
    if (detail) line += `  ${detail}`;
    const cols = (stream as NodeJS.WriteStream).columns ?? 120;
    if (line.length > cols - 1) line = line.slice(0, cols - 1);
    stream.write(`\r\x1b[2K${line}`);
    drawn = true;
  };

  return {
    update(done, detail) {
      if (!opts.interactive) return;
      const now = Date.now();
      if (now - lastDraw < REDRAW_MS && done < total) return;
      lastDraw = now;
      draw(done, detail);
    },
    setTotal(t) {
      total = t;
    },
    finish(summary) {
      if (!opts.interactive) return;
      if (drawn) stream.write('\r\x1b[2K');
      if (summary) stream.write(summary + '\n');
    },
  };
}
