// Streaming parser for `multipart/byteranges` (RFC 9110 §14.6) responses to
// multi-range requests. Part bodies are delimited by their Content-Range
// length rather than by searching for the boundary, so binary data that
// happens to contain the boundary is harmless; boundary lines tolerate LF or
// CRLF, a missing CRLF before the first boundary, preamble and transport
// padding. Every part must carry a valid Content-Range.
import { OriginError } from '../errors.js';

export interface ContentRange {
  start: number;
  /** Exclusive end. */
  end: number;
  /** Full resource size, or undefined for "*". */
  total?: number;
}

/** Parses `bytes a-b/total` (or `/*`); returns null when malformed. */
export function parseContentRange(value: string | undefined): ContentRange | null {
  const m = value && /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(value);
  if (!m) return null;
  const start = Number(m[1]);
  const last = Number(m[2]);
  const total = m[3] === '*' ? undefined : Number(m[3]);
  if (
    !Number.isSafeInteger(start) ||
    !Number.isSafeInteger(last) ||
    last < start ||
    (total !== undefined && last >= total)
  )
    return null;
  return { start, end: last + 1, total };
}

/** The boundary parameter of a multipart/byteranges Content-Type, or null when it is not one. */
export function multipartBoundary(contentType: string | undefined): string | null {
  if (!contentType || !/^\s*multipart\/byteranges\s*;/i.test(contentType)) return null;
  const m = /;\s*boundary\s*=\s*(?:"([^"]+)"|([^\s;]+))/i.exec(contentType);
  return m ? (m[1] ?? m[2]) : null;
}

/** Longest header block / preamble line accepted before the parser gives up. */
const MAX_HEADER_BYTES = 16 * 1024;

export interface MultipartHandlers {
  /** A part begins; the parser has validated its Content-Range syntax. */
  onPart(range: ContentRange): void;
  /** Body bytes of the current part, at absolute resource offset `offset`. */
  onData(offset: number, data: Buffer): void;
}

/** Push-based parser: feed body buffers with write(), then call end(). */
export class MultipartParser {
  private state: 'boundary' | 'headers' | 'body' | 'done' = 'boundary';
  private pending: Buffer = Buffer.alloc(0);
  private part: ContentRange | null = null;
  private pos = 0;
  private readonly delimiter: string;

  constructor(
    boundary: string,
    private readonly handlers: MultipartHandlers,
    private readonly source: string,
  ) {
    this.delimiter = `--${boundary}`;
  }

  private fail(detail: string): never {
    throw new OriginError(`${this.source}: malformed multipart/byteranges response: ${detail}`);
  }

  write(chunk: Buffer): void {
    let buf = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = Buffer.alloc(0);
    while (buf.length > 0) {
      if (this.state === 'body') {
        const part = this.part!;
        const n = Math.min(buf.length, part.end - this.pos);
        this.handlers.onData(this.pos, buf.subarray(0, n));
        this.pos += n;
        buf = buf.subarray(n);
        if (this.pos === part.end) this.state = 'boundary';
        continue;
      }
      if (this.state === 'done') return; // epilogue is ignored
      const nl = buf.indexOf(0x0a);
      if (nl < 0) {
        if (buf.length > MAX_HEADER_BYTES) this.fail(`line longer than ${MAX_HEADER_BYTES} bytes`);
        this.pending = Buffer.from(buf);
        return;
      }
      const line = buf.subarray(0, nl).toString('latin1').replace(/\r$/, '');
      buf = buf.subarray(nl + 1);
      if (this.state === 'boundary') this.boundaryLine(line);
      else this.headerLine(line);
    }
  }

  private headerBytes = 0;
  private headers: string[] = [];

  private boundaryLine(line: string): void {
    const t = line.trimEnd(); // transport padding after the delimiter is allowed
    if (t === `${this.delimiter}--`) {
      this.state = 'done';
    } else if (t === this.delimiter) {
      this.state = 'headers';
      this.headers = [];
      this.headerBytes = 0;
    } else if (t !== '') {
      // Preamble before the first part is allowed; garbage between parts is not.
      if (this.part)
        this.fail(`expected boundary after part ${this.part.start}-${this.part.end - 1}, got "${t.slice(0, 80)}"`);
      this.headerBytes += line.length;
      if (this.headerBytes > MAX_HEADER_BYTES) this.fail('no boundary found');
    }
  }

  private headerLine(line: string): void {
    this.headerBytes += line.length;
    if (this.headerBytes > MAX_HEADER_BYTES) this.fail(`part headers exceed ${MAX_HEADER_BYTES} bytes`);
    if (line !== '') return void this.headers.push(line);
    const cr = this.headers.find((h) => /^content-range\s*:/i.test(h));
    const range = parseContentRange(cr?.slice(cr.indexOf(':') + 1));
    if (!range) this.fail(cr ? `invalid part header "${cr}"` : 'part without Content-Range');
    this.part = range;
    this.pos = range.start;
    this.handlers.onPart(range);
    this.state = 'body';
  }

  /** Call at end of body; throws when the response stopped before its final boundary. */
  end(): void {
    if (this.state === 'body')
      this.fail(`truncated in part ${this.part!.start}-${this.part!.end - 1} at byte ${this.pos}`);
    if (this.state !== 'done') this.fail('missing final boundary (response truncated?)');
  }
}
