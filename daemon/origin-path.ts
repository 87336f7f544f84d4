// Maps a request target onto the configured origin. The origin comes only from
// the configuration: the Host header and absolute-form targets are never used.
// Anything that could step outside the origin base or smuggle a separator is
// refused: dot segments (also percent-encoded), encoded slashes or backslashes,
// backslashes, NUL and control characters, empty segments.

export class UnsafePathError extends Error {}

export interface OriginTarget {
  /** The decoded path relative to the origin base, e.g. "v2/image_2.erofs". */
  relPath: string;
  /** Absolute origin URL (origin base + the request's still-encoded path). */
  url: string;
  /** Last path segment, decoded (what image patterns match against). */
  name: string;
  /** The request's query string with its '?' ('' when none): kept on pass-through (withQuery), never used for deltas. */
  search: string;
}

/** `rawTarget` is the request-target exactly as received (req.url); `prefix` is a route prefix to strip. */
export function resolveOriginTarget(originBase: string, rawTarget: string, prefix = '/'): OriginTarget {
  if (!rawTarget.startsWith('/')) throw new UnsafePathError('only origin-form request targets ("/path") are accepted');
  if (!rawTarget.startsWith(prefix)) throw new UnsafePathError(`path must start with ${prefix}`);
  const q = rawTarget.search(/[?#]/);
  const encoded = (q < 0 ? rawTarget : rawTarget.slice(0, q)).slice(prefix.length);
  const search = q < 0 || rawTarget[q] === '#' ? '' : rawTarget.slice(q).replace(/#.*$/, '');
  if (encoded === '') throw new UnsafePathError('empty path');
  const segments = encoded.split('/');
  const decoded: string[] = [];
  for (const seg of segments) {
    if (seg === '') throw new UnsafePathError('empty path segment');
    if (/%2f|%5c/i.test(seg)) throw new UnsafePathError('encoded slash or backslash in path');
    let d: string;
    try {
      d = decodeURIComponent(seg);
    } catch {
      throw new UnsafePathError('malformed percent-encoding in path');
    }
    if (d === '.' || d === '..') throw new UnsafePathError('dot segment in path');
    if (/[\\\x00-\x1f\x7f]/.test(d)) throw new UnsafePathError('backslash or control character in path');
    decoded.push(d);
  }
  const base = new URL(originBase);
  const url = new URL(encoded, base);
  // Defence in depth: the result must stay under the base.
  if (url.origin !== base.origin || !url.pathname.startsWith(base.pathname))
    throw new UnsafePathError('path escapes the origin base');
  const name = decoded[decoded.length - 1];
  return { relPath: decoded.join('/'), url: url.href, name, search: search === '?' ? '' : search };
}

/** URL of a sibling file in the same origin directory (e.g. SHA256SUMS next to an image). */
export function siblingUrl(url: string, name: string): string {
  return new URL(encodeURIComponent(name), url).href;
}
