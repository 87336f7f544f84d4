// Typed errors: every failure deltad reports names what was wrong and where,
// so the CLI and the daemon can print one clear line and pick an exit code.

export class DeltadError extends Error {
  /** Stable machine-readable code, e.g. "EINDEX", "ECHUNK". */
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A malformed .caibx/.caidx: names the field and its byte offset. */
export class IndexFormatError extends DeltadError {
  readonly field: string;
  readonly offset: number;
  constructor(field: string, offset: number, detail: string, source?: string) {
    super('EINDEX', `${source ? source + ': ' : ''}invalid index: ${field} at byte ${offset}: ${detail}`);
    this.field = field;
    this.offset = offset;
  }
}

/** Chunk content that does not hash to its ID (or has the wrong size). */
export class ChunkVerifyError extends DeltadError {
  readonly chunkId: string;
  constructor(chunkId: string, detail: string, source?: string) {
    super('ECHUNK', `chunk ${chunkId} ${detail}${source ? ` (from ${source})` : ''}`);
    this.chunkId = chunkId;
  }
}

/** A chunk that a store does not have (HTTP 404, missing file). */
export class ChunkMissingError extends DeltadError {
  readonly chunkId: string;
  constructor(chunkId: string, store: string) {
    super('EMISSING', `chunk ${chunkId} not found in store ${store}`);
    this.chunkId = chunkId;
  }
}

/** Bad command-line or configuration input. */
export class UsageError extends DeltadError {
  constructor(message: string) {
    super('EUSAGE', message);
  }
}

/** A network/origin problem: status, protocol violation, truncated body. */
export class OriginError extends DeltadError {
  readonly status?: number;
  /** true when retrying may help (reset, timeout, 5xx). */
  readonly transient: boolean;
  constructor(message: string, opts: { status?: number; transient?: boolean; cause?: unknown; code?: string } = {}) {
    super(opts.code ?? 'EORIGIN', message, { cause: opts.cause });
    this.status = opts.status;
    this.transient = opts.transient ?? false;
  }
}

/** The whole assembled file does not match its expected SHA-256. */
export class ChecksumMismatchError extends DeltadError {
  constructor(expected: string, actual: string, what: string) {
    super('ESHA256', `${what}: SHA-256 mismatch: expected ${expected}, got ${actual}`);
  }
}

/** A redirect deltad will not follow: too many hops, a scheme other than http(s), or https to http. */
export class RedirectError extends OriginError {
  constructor(url: string, detail: string) {
    super(`${url}: redirect refused: ${detail}`, { code: 'ERR_DELTAD_REDIRECT' });
  }
}

/** A response body slower than the low-speed limit for the low-speed time (curl's --speed-limit/--speed-time). */
export class LowSpeedError extends OriginError {
  constructor(url: string, bytesPerSec: number, limit: number, seconds: number) {
    super(`${url}: transfer too slow: ${formatRate(bytesPerSec)} for ${seconds} s (limit ${formatRate(limit)})`, {
      code: 'ERR_DELTAD_LOW_SPEED', transient: true,
    });
  }
}

/** A request that outlived its deadline (scaled to the bytes it carries). */
export class RequestDeadlineError extends OriginError {
  constructor(url: string, ms: number, bytes: number, expected: number | undefined) {
    const of = expected === undefined ? '' : ` of ${expected}`;
    super(`${url}: request deadline of ${Math.round(ms / 1000)} s passed after ${bytes}${of} bytes`, {
      code: 'ERR_DELTAD_DEADLINE', transient: true,
    });
  }
}

/** No verified byte for too long in a whole update (extract's stall watchdog). */
export class StallError extends DeltadError {
  constructor(what: string, ms: number, detail: string) {
    super('ERR_DELTAD_STALLED', `${what}: no progress for ${Math.round(ms / 1000)} s (${detail})`);
  }
}

/** The image changed on the server during the update (validator or size no longer matches). */
export class ImageChangedError extends OriginError {
  constructor(url: string, detail: string) {
    super(`${url}: the image changed on the server during the update (${detail}); start the update again`, {
      code: 'ERR_DELTAD_IMAGE_CHANGED',
    });
  }
}

/** The release asks clients to skip the delta (e.g. `X-KDE-Delta: false`). */
export class DeltaDisabledError extends DeltadError {
  constructor(url: string, header: string) {
    const message = `${url}: the server disables delta updates (${header}); download the full image`;
    super('ERR_DELTAD_DELTA_DISABLED', message);
  }
}

function formatRate(bytesPerSec: number): string {
  if (bytesPerSec >= 10 * 1024) return `${Math.round(bytesPerSec / 1024)} KiB/s`;
  return `${Math.round(bytesPerSec * 10) / 10} B/s`;
}
