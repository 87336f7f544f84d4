// Worker threads, written once: every CPU-bound pool in deltad (the parallel
// indexer, chunk hashing and compression, pack frame compression) runs its
// jobs here. Each worker is a V8 isolate of its own, about 14 MiB of resident
// memory, so a worker starts only when a job needs it (a pool that is never
// used costs nothing) and ends after a short idle time; an idle worker never
// keeps the process alive. Jobs move their bytes in transferred ArrayBuffers
// and allocate little on a worker's JS heap, so every worker runs with a small
// young generation (resourceLimits): V8's default lets it grow to 32 MiB
// semi-spaces, which only keeps garbage longer.
import { Worker, parentPort, type TransferListItem } from 'node:worker_threads';
import { DeltadError } from '../errors.js';

/** Young generation of each worker, MiB (V8 splits it into two semi-spaces and a large-object space). */
const WORKER_YOUNG_GENERATION_MB = 3;
/** A worker without a job for this long ends (the next job starts a new one). */
const DEFAULT_IDLE_MS = 2000;

export interface WorkerPoolOptions {
  /** The worker's module; it answers jobs with serveJobs(). */
  script: URL;
  /** Most workers at once (at least 1). */
  threads: number;
  /** What the workers do, for error messages ("chunk encoder"). */
  name: string;
  /** Handed to every worker at start (node:worker_threads workerData). */
  workerData?: unknown;
  /** A worker without a job for this long ends (default 2 s; Infinity: only close() ends it). */
  idleMs?: number;
  /** Young generation of each worker, MiB (default 3). */
  youngGenerationMb?: number;
}

export interface RunOptions<Event> {
  /** ArrayBuffers moved to the worker with the job (not copied; unusable here afterwards). */
  transfer?: TransferListItem[];
  /** Called with what the worker reports while the job runs (progress). */
  onEvent?: (event: Event) => void;
}

/** What a worker posts back: events while a job runs, then its result or its error. */
export type Answer =
  | { kind: 'event'; value: unknown }
  | { kind: 'result'; value: unknown }
  | { kind: 'error'; message: string };

interface Job {
  payload: unknown;
  transfer: TransferListItem[];
  onEvent?: (event: never) => void;
  resolve: (result: never) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker;
  job?: Job;
  idleTimer?: NodeJS.Timeout;
}

/**
 * Runs jobs on at most `threads` workers, first come first served, one job per
 * worker at a time. A job that throws in the worker rejects alone; a worker
 * that dies fails the pool (its job, the queued ones and every later one).
 */
export class WorkerPool<J, R, E = never> {
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  private failure: Error | undefined;
  private closed = false;

  constructor(private readonly opts: WorkerPoolOptions) {
    if (!Number.isInteger(opts.threads) || opts.threads < 1)
      throw new RangeError(`threads must be a positive integer (got ${opts.threads})`);
  }

  /** Workers running now (started and not yet ended). */
  get running(): number {
    return this.slots.length;
  }

  run(payload: J, opts: RunOptions<E> = {}): Promise<R> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(this.stopped());
    return new Promise<R>((resolve, reject) => {
      this.queue.push({
        payload,
        transfer: opts.transfer ?? [],
        onEvent: opts.onEvent as ((event: never) => void) | undefined,
        resolve: resolve as (result: never) => void,
        reject,
      });
      this.dispatch();
    });
  }

  /** Ends every worker; jobs not yet answered reject. */
  async close(): Promise<void> {
    this.closed = true;
    const err = this.stopped();
    for (const job of this.queue.splice(0)) job.reject(err);
    const slots = this.slots.splice(0);
    for (const s of slots) {
      clearTimeout(s.idleTimer);
      s.job?.reject(err);
      s.job = undefined;
    }
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  private stopped(): Error {
    return new DeltadError('ERR_DELTAD_WORKER', `${this.opts.name} threads were stopped`);
  }

  private dispatch(): void {
    while (this.queue.length > 0) {
      let slot = this.slots.find((s) => !s.job);
      if (!slot) {
        if (this.slots.length >= this.opts.threads) return;
        slot = this.start();
      }
      clearTimeout(slot.idleTimer);
      const job = this.queue.shift()!;
      slot.job = job;
      slot.worker.ref();
      slot.worker.postMessage(job.payload, job.transfer);
    }
  }

  private start(): Slot {
    const worker = new Worker(this.opts.script, {
      workerData: this.opts.workerData,
      resourceLimits: { maxYoungGenerationSizeMb: this.opts.youngGenerationMb ?? WORKER_YOUNG_GENERATION_MB },
    });
    const slot: Slot = { worker };
    worker.on('message', (a: Answer) => this.answer(slot, a));
    worker.on('error', (err) => this.fail(slot, err.message, err));
    worker.on('exit', (code) => this.fail(slot, `exited with code ${code}`));
    this.slots.push(slot);
    return slot;
  }

  private answer(slot: Slot, a: Answer): void {
    const job = slot.job;
    if (!job) return;
    if (a.kind === 'event') {
      job.onEvent?.(a.value as never);
      return;
    }
    slot.job = undefined;
    if (a.kind === 'result') job.resolve(a.value as never);
    else job.reject(new DeltadError('ERR_DELTAD_WORKER', `${this.opts.name} thread: ${a.message}`));
    this.dispatch();
    if (!slot.job) this.idle(slot);
  }

  private idle(slot: Slot): void {
    slot.worker.unref();
    if (this.opts.idleMs === Infinity) return;
    slot.idleTimer = setTimeout(() => {
      const i = this.slots.indexOf(slot);
      if (i < 0 || slot.job) return;
      this.slots.splice(i, 1);
      void slot.worker.terminate();
    }, this.opts.idleMs ?? DEFAULT_IDLE_MS);
    slot.idleTimer.unref();
  }

  /** A worker died (an uncaught error, out of memory, terminated from outside): the pool is failed. */
  private fail(slot: Slot, message: string, cause?: Error): void {
    const i = this.slots.indexOf(slot);
    if (i < 0) return; // ended by close() or the idle timer
    this.slots.splice(i, 1);
    clearTimeout(slot.idleTimer);
    this.failure ??= new DeltadError('ERR_DELTAD_WORKER', `${this.opts.name} thread failed: ${message}`, { cause });
    slot.job?.reject(this.failure);
    slot.job = undefined;
    for (const job of this.queue.splice(0)) job.reject(this.failure);
    void slot.worker.terminate();
  }
}

/**
 * The worker's side: answers each job the pool posts with `handle`'s result
 * (moving the buffers `transfers` names), or with its error. `emit` reports
 * events (progress) to the job's onEvent.
 */
export function serveJobs<J, R, E = never>(
  handle: (job: J, emit: (event: E) => void) => R | Promise<R>,
  transfers: (result: R) => TransferListItem[] = () => [],
): void {
  const port = parentPort;
  if (!port) throw new DeltadError('ERR_DELTAD_WORKER', 'serveJobs() runs only in a worker thread');
  const emit = (event: E): void => port.postMessage({ kind: 'event', value: event } satisfies Answer);
  port.on('message', async (job: J) => {
    let answer: Answer;
    let moved: TransferListItem[] = [];
    try {
      const value = await handle(job, emit);
      answer = { kind: 'result', value };
      moved = transfers(value);
    } catch (err) {
      answer = { kind: 'error', message: (err as Error)?.message ?? String(err) };
    }
    port.postMessage(answer, moved);
  });
}
