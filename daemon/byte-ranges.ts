// The server side of HTTP byte ranges (RFC 9110 §14): parsing a request's
// Range header against a known size, and the multipart/byteranges framing for
// several ranges in one response.
import { randomBytes } from 'node:crypto';

export interface Span {
  start: number;
  /** Exclusive. */
  end: number;
}

/** Most ranges one request may ask for (Apache's MaxRanges default). */
export const MAX_RANGES = 200;

/**
 * Ranges asked for by `header` in a resource of `size` bytes: null to serve
 * the whole resource (no header, not a bytes range, or malformed: RFC 9110 says
 * ignore it), 'unsatisfiable' for 416, else the spans (overlaps merged).
 */
export function parseRangeHeader(header: string | undefined, size: number): Span[] | 'unsatisfiable' | null {
  if (!header) return null;
  const m = /^\s*bytes\s*=\s*(.+)$/i.exec(header);
  if (!m) return null;
  const spans: Span[] = [];
  const specs = m[1].split(',');
  if (specs.length > MAX_RANGES) return null;
  for (const raw of specs) {
    const spec = raw.trim();
    const r = /^(\d*)-(\d*)$/.exec(spec);
    if (!r || (r[1] === '' && r[2] === '')) return null;
    if (r[1] === '') {
      const n = Number(r[2]);
      if (n > 0 && size > 0) spans.push({ start: Math.max(0, size - n), end: size });
      continue;
    }
    const start = Number(r[1]);
    const last = r[2] === '' ? size - 1 : Math.min(Number(r[2]), size - 1);
    if (r[2] !== '' && Number(r[2]) < start) return null;
    if (start < size) spans.push({ start, end: last + 1 });
  }
  if (spans.length === 0) return 'unsatisfiable';
  spans.sort((a, b) => a.start - b.start);
  const merged: Span[] = [spans[0]];
  for (const s of spans.slice(1)) {
    const prev = merged[merged.length - 1];
    if (s.start <= prev.end) prev.end = Math.max(prev.end, s.end);
    else merged.push(s);
  }
  return merged;
}

/** Framing of a multipart/byteranges body: part headers, the closing line, and the total length. */
export class MultipartFraming {
  readonly boundary = `deltad-${randomBytes(12).toString('hex')}`;
  readonly contentType = `multipart/byteranges; boundary=${this.boundary}`;

  constructor(
    private readonly spans: Span[],
    private readonly size: number,
    private readonly partType = 'application/octet-stream',
  ) {}

  partHeader(i: number): Buffer {
    const s = this.spans[i];
    return Buffer.from(
      `${i === 0 ? '' : '\r\n'}--${this.boundary}\r\nContent-Type: ${this.partType}\r\nContent-Range: bytes ${s.start}-${s.end - 1}/${this.size}\r\n\r\n`,
    );
  }

  trailer(): Buffer {
    return Buffer.from(`\r\n--${this.boundary}--\r\n`);
  }

  contentLength(): number {
    let n = this.trailer().length;
    for (let i = 0; i < this.spans.length; i++)
      n += this.partHeader(i).length + this.spans[i].end - this.spans[i].start;
    return n;
  }
}
