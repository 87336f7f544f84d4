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
  constructor(message: string, opts: { status?: number; transient?: boolean; cause?: unknown } = {}) {
    super('EORIGIN', message, { cause: opts.cause });
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

/** Another run is writing the same output (its lock file names the owner). */
export class OutputBusyError extends DeltadError {
  constructor(out: string, lock: string, owner: string) {
    super('ERR_DELTAD_OUTPUT_BUSY', `${out}: another deltad run (${owner}) is writing it; wait for it to finish, or remove ${lock} if no deltad runs`);
  }
}

/** The partial file or lock of an output was replaced behind this run's back: nothing is renamed. */
export class OutputReplacedError extends DeltadError {
  constructor(out: string, detail: string) {
    super('ERR_DELTAD_OUTPUT_REPLACED', `${out}: not renamed into place: ${detail}`);
  }
}

/** A local input (seed, file to index) that is not a readable regular file or block device. */
export class UnusableInputError extends DeltadError {
  readonly path: string;
  constructor(path: string, detail: string) {
    super('ERR_DELTAD_UNUSABLE_INPUT', `${path}: ${detail}`);
    this.path = path;
  }
}

/** A response body larger than the caller allows (refused from its Content-Length, or cut once it passed the limit). */
export class BodyTooLargeError extends OriginError {
  readonly limit: number;
  constructor(message: string, limit: number) {
    super(message);
    this.limit = limit;
  }
}

/** Not enough room on the file system for what deltad is about to write (said before writing, or when it ran out). */
export class NoSpaceError extends DeltadError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_DELTAD_NO_SPACE', message, options);
  }
}
