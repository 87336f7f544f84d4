// One pack frame = one or more consecutive distinct blocks, compressed as an
// independent zstd frame with the release's dictionary, stored without the
// 4-byte zstd magic; or stored raw when compression would not make it smaller
// (a stored length equal to the uncompressed length means raw).
import { constants, createZstdCompress, zstdDecompressSync, type ZstdCompress } from 'node:zlib';
import { ZSTD_MAGIC } from './format.js';
import { PackError } from '../errors.js';

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

export class FrameDecompressor {
  private readonly dictionary: Uint8Array | undefined;

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
}
