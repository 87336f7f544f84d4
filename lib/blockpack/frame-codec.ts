// One pack frame = one or more consecutive distinct blocks, compressed as an
// independent zstd frame with the release's dictionary, stored without the
// 4-byte zstd magic; or stored raw when compression would not make it smaller
// (a stored length equal to the uncompressed length means raw).
import zstd from 'zstd-napi/binding.js';
import { ZSTD_MAGIC } from './format.js';
import { PackError } from '../errors.js';

export class FrameCompressor {
  private readonly cctx = new zstd.CCtx();
  private out = Buffer.alloc(0);

  constructor(dictionary: Uint8Array, level: number) {
    this.cctx.setParameter(zstd.CParameter.compressionLevel, level);
    this.cctx.setParameter(zstd.CParameter.checksumFlag, 0);
    this.cctx.setParameter(zstd.CParameter.dictIDFlag, 0);
    this.cctx.setParameter(zstd.CParameter.contentSizeFlag, 1);
    if (dictionary.length > 0) this.cctx.loadDictionary(dictionary);
  }

  /** The stored form of `data` (a view valid until the next call). */
  compress(data: Uint8Array): Buffer {
    const bound = zstd.compressBound(data.length);
    if (this.out.length < bound) this.out = Buffer.alloc(bound);
    const n = this.cctx.compress2(this.out, data);
    if (n - ZSTD_MAGIC.length >= data.length) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    return this.out.subarray(ZSTD_MAGIC.length, n);
  }
}

export class FrameDecompressor {
  private readonly dctx = new zstd.DCtx();
  private readonly ddict: zstd.DDict | null;

  constructor(dictionary: Uint8Array) {
    this.ddict = dictionary.length > 0 ? new zstd.DDict(dictionary) : null;
  }

  /**
   * Restores a frame of `length` uncompressed bytes. Throws (with `what` in
   * the message) when the frame is not valid zstd or decodes to another size.
   */
  decompress(stored: Uint8Array, length: number, what: string): Buffer {
    if (stored.length === length) return Buffer.from(stored);
    const frame = Buffer.concat([ZSTD_MAGIC, stored]);
    // One spare byte: a frame that decodes to more than `length` is caught, not truncated.
    const out = Buffer.alloc(length + 1);
    let n: number;
    try {
      n = this.ddict ? this.dctx.decompressUsingDDict(out, frame, this.ddict) : this.dctx.decompress(out, frame);
    } catch (err) {
      throw new PackError(`${what}: invalid zstd frame: ${(err as Error).message}`);
    }
    if (n !== length) throw new PackError(`${what}: frame decodes to ${n} bytes, expected ${length}`);
    return out.subarray(0, length);
  }
}
