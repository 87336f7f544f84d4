// Typed errors: every failure deltad reports names what was wrong and where,
// so the CLI and the daemon can print one clear line and pick an exit code.
import { dirname } from 'node:path';

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
  ELOOP: 'too many symbolic links',
};

/** A file-system failure about a path the user gave (not the temp file deltad was using for it). */
export class FileError extends DeltadError {
  readonly path: string;
  /** The errno code (ENOENT, EROFS, ...). */
  readonly errno?: string;
  constructor(path: string, detail: string, errno?: string, cause?: unknown) {
    super(errno === 'ENOSPC' || errno === 'EDQUOT' ? 'ENOSPC' : 'EFILE', `${path}: ${detail}`, { cause });
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
export function fileError(err: unknown, path: string, writing: boolean, doing = writing ? 'cannot write' : 'cannot read'): unknown {
  if (err instanceof DeltadError) return err;
  const code = (err as NodeJS.ErrnoException)?.code;
  if (typeof code !== 'string' || !/^E[A-Z]+$/.test(code)) return err;
  if (code === 'ENOENT') {
    const detail = writing ? `${doing}: directory ${dirname(path)} does not exist` : 'no such file or directory';
    return new FileError(path, detail, code, err);
  }
  return new FileError(path, `${doing}: ${FS_WORDS[code] ?? (err as Error).message}`, code, err);
}
