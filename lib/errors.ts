// Every error deltad raises, in one place. Each names what was wrong and where
// (file, field, byte offset, chunk ID, URL), so the CLI and the daemon can print
// one clear line and pick an exit code. Codes carry the ERR_DELTAD_ prefix so
// they never collide with errno codes (ENOSPC, EIO) that Node puts on `code`.
import { dirname } from 'node:path';

/** Stable machine-readable codes of deltad's own errors. */
export type DeltadErrorCode =
  | 'ERR_DELTAD_INDEX'
  | 'ERR_DELTAD_CHUNK'
  | 'ERR_DELTAD_MISSING'
  | 'ERR_DELTAD_USAGE'
  | 'ERR_DELTAD_ORIGIN'
  | 'ERR_DELTAD_SHA256'
  | 'ERR_DELTAD_PACK'
  | 'ERR_DELTAD_NO_RANGES'
  | 'ERR_DELTAD_NO_MULTI_RANGE'
  | 'ERR_DELTAD_ENCODING'
  | 'ERR_DELTAD_NO_SPACE'
  | 'ERR_DELTAD_STORE'
  | 'ERR_DELTAD_SIZE_MISMATCH'
  | 'ERR_DELTAD_INPUT'
  | 'ERR_DELTAD_READ'
  | 'ERR_DELTAD_WORKER'
  | 'ERR_DELTAD_FILE'
  | 'ERR_DELTAD_REDIRECT'
  | 'ERR_DELTAD_LOW_SPEED'
  | 'ERR_DELTAD_DEADLINE'
  | 'ERR_DELTAD_STALLED'
  | 'ERR_DELTAD_IMAGE_CHANGED'
  | 'ERR_DELTAD_DELTA_DISABLED'
  | 'ERR_DELTAD_OUTPUT_BUSY'
  | 'ERR_DELTAD_OUTPUT_REPLACED'
  | 'ERR_DELTAD_UNUSABLE_INPUT';

export class DeltadError extends Error {
  readonly code: DeltadErrorCode;
  constructor(code: DeltadErrorCode, message: string, options?: { cause?: unknown }) {
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
    super('ERR_DELTAD_INDEX', `${source ? source + ': ' : ''}invalid index: ${field} at byte ${offset}: ${detail}`);
    this.field = field;
    this.offset = offset;
  }
}

/** Chunk content that does not hash to its ID (or has the wrong size). */
export class ChunkVerifyError extends DeltadError {
  readonly chunkId: string;
  constructor(chunkId: string, detail: string, source?: string) {
    super('ERR_DELTAD_CHUNK', `chunk ${chunkId} ${detail}${source ? ` (from ${source})` : ''}`);
    this.chunkId = chunkId;
  }
}

/** A chunk that a store does not have (HTTP 404, missing file). */
export class ChunkMissingError extends DeltadError {
  readonly chunkId: string;
  constructor(chunkId: string, store: string) {
    super('ERR_DELTAD_MISSING', `chunk ${chunkId} not found in store ${store}`);
    this.chunkId = chunkId;
  }
}

/** Bad command-line or configuration input. */
export class UsageError extends DeltadError {
  constructor(message: string) {
    super('ERR_DELTAD_USAGE', message);
  }
}

/** A network/origin problem: status, protocol violation, truncated body. */
export class OriginError extends DeltadError {
  readonly status?: number;
  /** true when retrying may help (reset, timeout, 5xx). */
  readonly transient: boolean;
  constructor(
    message: string,
    opts: { status?: number; transient?: boolean; cause?: unknown; code?: DeltadErrorCode } = {},
  ) {
    super(opts.code ?? 'ERR_DELTAD_ORIGIN', message, { cause: opts.cause });
    this.status = opts.status;
    this.transient = opts.transient ?? false;
  }
}

/** The whole assembled file does not match its expected SHA-256. */
export class ChecksumMismatchError extends DeltadError {
  constructor(expected: string, actual: string, what: string) {
    super('ERR_DELTAD_SHA256', `${what}: SHA-256 mismatch: expected ${expected}, got ${actual}`);
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
      code: 'ERR_DELTAD_LOW_SPEED',
      transient: true,
    });
  }
}

/** A request that outlived its deadline (scaled to the bytes it carries). */
export class RequestDeadlineError extends OriginError {
  constructor(url: string, ms: number, bytes: number, expected: number | undefined) {
    const of = expected === undefined ? '' : ` of ${expected}`;
    super(`${url}: request deadline of ${Math.round(ms / 1000)} s passed after ${bytes}${of} bytes`, {
      code: 'ERR_DELTAD_DEADLINE',
      transient: true,
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

/** Block-pack content that fails its checks (bad frame, wrong hash, wrong header): names what and where. */
export class PackError extends DeltadError {
  constructor(message: string) {
    super('ERR_DELTAD_PACK', message);
  }
}

/** The server answered a range request with the whole file (200): ranges do not work here. */
export class RangeUnsupportedError extends DeltadError {
  constructor(url: string, detail: string) {
    super('ERR_DELTAD_NO_RANGES', `${url}: the server does not serve byte ranges (${detail})`);
  }
}

/** The server cannot do several ranges in one request (416, or one 206 for the whole span). */
export class MultiRangeUnsupportedError extends DeltadError {
  constructor(url: string, detail: string) {
    super('ERR_DELTAD_NO_MULTI_RANGE', `${url}: multi-range request refused (${detail})`);
  }
}

/** A chunk file that cannot be decoded: bad magic, corrupt, truncated, too large, trailing data. */
export class ChunkEncodingError extends DeltadError {
  constructor(message: string) {
    super('ERR_DELTAD_ENCODING', message);
  }
}

/** What a file-system error code means, in words. */
const FS_WORDS: Record<string, string> = {
  EROFS: 'read-only file system',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOSPC: 'no space left on device',
  EDQUOT: 'disk quota exceeded',
  EISDIR: 'is a directory',
  ENOTDIR: 'a component of the path is not a directory',
  EEXIST: 'already exists',
  ENAMETOOLONG: 'file name too long',
  EMFILE: 'too many open files',
  EIO: 'input/output error',
  EBUSY: 'device or resource busy',
  EXDEV: 'not on the same file system',
  ELOOP: 'too many symbolic links',
};

/** A file-system failure about a path the user gave (not the temp file deltad was using for it). */
export class FileError extends DeltadError {
  readonly path: string;
  /** The errno code (ENOENT, EROFS, ...). */
  readonly errno?: string;
  constructor(path: string, detail: string, errno?: string, cause?: unknown) {
    super(errno === 'ENOSPC' || errno === 'EDQUOT' ? 'ERR_DELTAD_NO_SPACE' : 'ERR_DELTAD_FILE', `${path}: ${detail}`, {
      cause,
    });
    this.path = path;
    this.errno = errno;
  }
}

/**
 * Rewrites a Node fs error (which names whatever file failed, often a hidden
 * temp file) as a FileError about `path`, saying in words what is wrong; `doing`
 * leads the words ("cannot write"). When writing, a missing file means its
 * directory is missing. Errors without an errno code pass through.
 */
export function fileError(
  err: unknown,
  path: string,
  writing: boolean,
  doing = writing ? 'cannot write' : 'cannot read',
): unknown {
  if (err instanceof DeltadError) return err;
  const code = (err as NodeJS.ErrnoException)?.code;
  if (typeof code !== 'string' || !/^E[A-Z]+$/.test(code)) return err;
  if (code === 'ENOENT') {
    const detail = writing ? `${doing}: directory ${dirname(path)} does not exist` : 'no such file or directory';
    return new FileError(path, detail, code, err);
  }
  return new FileError(path, `${doing}: ${FS_WORDS[code] ?? (err as Error).message}`, code, err);
}

/** Another run is writing the same output (its lock file names the owner). */
export class OutputBusyError extends DeltadError {
  constructor(out: string, lock: string, owner: string) {
    const what = `${out}: another deltad run (${owner}) is writing it`;
    super('ERR_DELTAD_OUTPUT_BUSY', `${what}; wait for it to finish, or remove ${lock} if no deltad runs`);
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
