// Progress bars for interactive commands: one redrawn line on a terminal
// (rate, ETA, optional detail), nothing at all in pipes and logs. Rate and ETA
// come from the last few seconds, so a fast start (chunks copied from seeds)
// does not hide a slow, network-bound tail.

export interface ProgressOptions {
  label: string;
  /** Total units (bytes); 0 or undefined draws a counter without a bar. */
  total?: number;
  /** Draw only when true (the CLI passes "stderr is a TTY"). */
  interactive: boolean;
  stream?: NodeJS.WritableStream;
  /** Format for done/total values; default bytes. */
  unit?: 'bytes' | 'count';
  /** Milliseconds clock (default Date.now; tests pass their own). */
  clock?: () => number;
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
/** The rate is measured over this much recent time (or everything, early on). */
const RATE_WINDOW_MS = 5000;

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

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
  const clock = opts.clock ?? Date.now;
  let total = opts.total ?? 0;
  let lastDraw = 0;
  let drawn = false;
  const fmt = opts.unit === 'count' ? (n: number) => String(n) : formatBytes;
  /** (time, done) samples of the last RATE_WINDOW_MS, oldest first. */
  const samples: [number, number][] = [[clock(), 0]];

  const recentRate = (now: number, done: number): number => {
    samples.push([now, done]);
    while (samples.length > 2 && now - samples[1][0] >= RATE_WINDOW_MS) samples.shift();
    const [t0, d0] = samples[0];
    return now > t0 ? ((done - d0) * 1000) / (now - t0) : 0;
  };

  const draw = (done: number, detail?: string) => {
    const rate = recentRate(clock(), done);
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
      const now = clock();
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
