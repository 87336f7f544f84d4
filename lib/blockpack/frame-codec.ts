// One pack frame = one or more consecutive distinct blocks, compressed as an
// independent zstd frame with the release's dictionary, stored without the
// 4-byte zstd magic; or stored raw when compression would not make it smaller
// (a stored length equal to the uncompressed length means raw).
import { constants, createZstdCompress, zstdDecompressSync, type ZstdCompress } from 'node:zlib';
import { ZSTD_MAGIC } from './format.js';
import { PackError } from '../errors.js';
import { ZstdInto } from '../util/zstd-into.js';

export class FrameCompressor {
  /**
   * One long-lived engine: each write is a whole frame (flush = ZSTD_e_end, so
   * zstd knows its size), and the dictionary is loaded once, not per frame (a
   * one-shot zstdCompressSync per 4 KiB frame is ~15x slower, bench/RESULTS.md).
   */
  private readonly engine: ZstdCompress;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(dictionary: Uint8Array, level: number) {
    const options = {
      params: {
        [constants.ZSTD_c_compressionLevel]: level,
        [constants.ZSTD_c_checksumFlag]: 0,
        [constants.ZSTD_c_dictIDFlag]: 0,
        [constants.ZSTD_c_contentSizeFlag]: 1,
      },
      ...(dictionary.length > 0 ? { dictionary } : {}),
      flush: constants.ZSTD_e_end,
      // A frame's whole output waits in the readable buffer until its write completes.
      readableHighWaterMark: Number.MAX_SAFE_INTEGER,
    };
    this.engine = createZstdCompress(options);
    this.engine.on('error', () => {
      /* also given to the failing write's callback */
    });
  }

  /** The stored form of `data`. Calls run one after another, in call order. */
  compress(data: Uint8Array): Promise<Buffer> {
    const next = this.queue.then(() => this.frame(data));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private frame(data: Uint8Array): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.engine.write(data, (err) => {
        if (err) return reject(new PackError(`zstd compression failed: ${err.message}`));
        const out = (this.engine.read() as Buffer | null) ?? Buffer.alloc(0);
        if (out.length - ZSTD_MAGIC.length >= data.length) resolve(Buffer.from(data));
        else resolve(out.subarray(ZSTD_MAGIC.length));
      });
    });
  }

  close(): void {
    this.engine.destroy();
  }
}

/** One long-lived zstd decoder (`util/zstd-into.ts`) with the dictionary loaded once, decoding into the caller's buffer. */
class IntoDecoder {
  private constructor(private readonly zstd: ZstdInto) {}

  /** A decoder, or undefined when this Node's zlib does not have the native handle as expected. */
  static open(dictionary: Uint8Array | undefined): IntoDecoder | undefined {
    const zstd = ZstdInto.open(dictionary ? { dictionary } : {});
    return zstd && new IntoDecoder(zstd);
  }

  /**
   * Decodes one stored frame (magic put back) to out[at, at + length); out's bytes after that may be overwritten.
   * False when it is not valid zstd or decodes to another length.
   */
  frame(stored: Uint8Array, out: Buffer, at: number, length: number): boolean {
    const { zstd } = this;
    // From a clean state every time: a bad frame before must not spill into this one.
    zstd.reset();
    const room = out.length - at;
    if (zstd.write(constants.ZSTD_e_continue, ZSTD_MAGIC, 0, ZSTD_MAGIC.length, out, at, room) || zstd.inLeft !== 0)
      return false;
    const left = zstd.outLeft;
    if (zstd.write(constants.ZSTD_e_end, stored, 0, stored.length, out, at + room - left, left)) return false;
    // All input used, exactly `length` bytes out and room to spare (so a longer frame shows).
    return zstd.inLeft === 0 && room - zstd.outLeft === length && zstd.outLeft > 0;
  }

  close(): void {
    this.zstd.close();
  }
}

export class FrameDecompressor {
  private readonly dictionary: Uint8Array | undefined;
  /** Undefined until first used; null when node:zlib has no decoder that writes into a given buffer. */
  private into: IntoDecoder | null | undefined;

  constructor(dictionary: Uint8Array) {
    this.dictionary = dictionary.length > 0 ? dictionary : undefined;
  }
  /**
   * Restores a frame of `length` uncompressed bytes. Throws (with `what` in
   * the message) when the frame is not valid zstd or decodes to another size.
   */
  decompress(stored: Uint8Array, length: number, what: string): Buffer {
    if (stored.length === length) return Buffer.from(stored);
    const frame = Buffer.concat([ZSTD_MAGIC, stored]);
    let out: Buffer;
    try {
      out = zstdDecompressSync(frame, {
        ...(this.dictionary ? { dictionary: this.dictionary } : {}),
        maxOutputLength: length,
        chunkSize: Math.max(64, length),
        rejectGarbageAfterEnd: true,
      });
    } catch (err) {
      const e = err as { code?: string; message: string };
      if (e.code === 'ERR_BUFFER_TOO_LARGE') throw new PackError(`${what}: frame decodes to more than ${length} bytes`);
      throw new PackError(`${what}: invalid zstd frame: ${e.message}`);
    }
    if (out.length !== length) throw new PackError(`${what}: frame decodes to ${out.length} bytes, expected ${length}`);
    return out;
  }

  /**
   * Restores several frames in one zstd call (a call per 4 KiB frame costs about ten times more: each one sets
   * up a context and loads the dictionary). Returns each frame's content, or undefined when the frames do not
   * decode to exactly these lengths together; the caller then decodes them one by one to name the bad one.
   */
  decompressMany(stored: readonly Uint8Array[], lengths: readonly number[]): Buffer[] | undefined {
    const parts: Uint8Array[] = [];
    let total = 0;
    for (let k = 0; k < stored.length; k++) {
      if (stored[k].length === lengths[k]) continue; // raw
      parts.push(ZSTD_MAGIC, stored[k]);
      total += lengths[k];
    }
    let out: Buffer = Buffer.alloc(0);
    if (parts.length > 0) {
      try {
        out = zstdDecompressSync(Buffer.concat(parts), {
          ...(this.dictionary ? { dictionary: this.dictionary } : {}),
          maxOutputLength: total,
          chunkSize: Math.max(64, total),
        });
      } catch {
        return undefined;
      }
      if (out.length !== total) return undefined;
    }
    const contents: Buffer[] = [];
    for (let k = 0, off = 0; k < stored.length; k++) {
      if (stored[k].length === lengths[k]) contents.push(Buffer.from(stored[k]));
      else {
        contents.push(out.subarray(off, off + lengths[k]));
        off += lengths[k];
      }
    }
    return contents;
  }

  /**
   * Like decompressMany, into `out` (at least the lengths' sum plus one byte): frame k's content at the sum of the
   * lengths before it. A fresh buffer per call is garbage that a task keeps long enough to be promoted, and V8
   * frees it only at a full collection, so this decodes into the caller's reused buffer with one long-lived
   * decoder (the dictionary loaded once); without such a decoder in node:zlib, what decompressMany returns is
   * copied in. Returns the contents (views of `out`), or undefined as decompressMany.
   */
  decompressManyInto(stored: readonly Uint8Array[], lengths: readonly number[], out: Buffer): Buffer[] | undefined {
    const total = lengths.reduce((n, l) => n + l, 0);
    if (out.length <= total) throw new RangeError(`decode buffer of ${out.length} bytes for ${total}`);
    if (this.into === undefined) this.into = IntoDecoder.open(this.dictionary) ?? null;
    const contents: Buffer[] = [];
    if (this.into === null) {
      const fresh = this.decompressMany(stored, lengths);
      if (!fresh) return undefined;
      let at = 0;
      for (const c of fresh) {
        out.set(c, at);
        contents.push(out.subarray(at, at + c.length));
        at += c.length;
      }
      return contents;
    }
    for (let k = 0, at = 0; k < stored.length; at += lengths[k++]) {
      const s = stored[k];
      if (s.length === lengths[k])
        out.set(s, at); // raw
      else if (!this.into.frame(s, out, at, lengths[k])) return undefined;
      contents.push(out.subarray(at, at + lengths[k]));
    }
    return contents;
  }

  /** Releases the long-lived decoder (a later call opens another). */
  close(): void {
    this.into?.close();
    this.into = undefined;
  }
}
