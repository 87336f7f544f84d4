// zstd frames decoded into a buffer the caller gives. node:zlib's public API
// makes a stream, a zstd context and an output buffer per call
// (zstdDecompressSync): per chunk or pack frame that is garbage, and once an
// output outlives two young collections V8 frees it only at a full one. A
// ZstdDecompress stream has a native handle (Node 24's lib/zlib.js) whose
// writeSync decodes into any buffer at any offset and leaves the output and input
// bytes it did not use in `_writeState`; reset() starts the next frame with the
// same parameters and dictionary. That is not a documented API, so open() looks
// for it and gives undefined when this runtime lacks it: callers keep a one-shot
// path for that case.
import { createZstdDecompress, type ZstdOptions } from 'node:zlib';

interface ZstdHandle {
  writeSync(
    flush: number,
    input: Uint8Array,
    inOff: number,
    inLen: number,
    out: Uint8Array,
    outOff: number,
    outLen: number,
  ): void;
  reset(): void;
  onerror: (message: string, errno: number, code: string) => void;
}

/** What zstd said of a frame it could not decode (node:zlib's code, e.g. ZSTD_error_corruption_detected). */
export interface ZstdFailure {
  code: string;
  message: string;
}

/** One long-lived zstd decoding context writing into the caller's buffers. Synchronous. */
export class ZstdInto {
  private failure: ZstdFailure | undefined;

  private constructor(
    private readonly engine: ReturnType<typeof createZstdDecompress>,
    private readonly handle: ZstdHandle,
    /** [output bytes left, input bytes left] after each write. */
    private readonly state: Uint32Array,
  ) {
    // Instead of node:zlib's handler, which destroys the stream: a bad frame is the caller's to report.
    handle.onerror = (message, _errno, code) => {
      this.failure = { code, message };
    };
  }

  /** A decoder with these options (dictionary, window limit), or undefined when node:zlib has no usable handle. */
  static open(options: ZstdOptions = {}): ZstdInto | undefined {
    try {
      const engine = createZstdDecompress(options);
      const inner = engine as unknown as { _handle?: Partial<ZstdHandle>; _writeState?: unknown };
      const { _handle: handle, _writeState: state } = inner;
      if (typeof handle?.writeSync !== 'function' || typeof handle.reset !== 'function') return undefined;
      if (!(state instanceof Uint32Array) || state.length < 2) return undefined;
      return new ZstdInto(engine, handle as ZstdHandle, state);
    } catch {
      return undefined;
    }
  }

  /**
   * Decodes input[inOff, inOff + inLen) into out[outOff, outOff + outLen) with `flush` (ZSTD_e_continue or
   * ZSTD_e_end); then outLeft and inLeft say what was not used. Returns zstd's failure, if any.
   */
  write(
    flush: number,
    input: Uint8Array,
    inOff: number,
    inLen: number,
    out: Uint8Array,
    outOff: number,
    outLen: number,
  ): ZstdFailure | undefined {
    this.failure = undefined;
    this.handle.writeSync(flush, input, inOff, inLen, out, outOff, outLen);
    return this.failure;
  }

  /** Output bytes the last write left unused. */
  get outLeft(): number {
    return this.state[0];
  }

  /** Input bytes the last write did not consume. */
  get inLeft(): number {
    return this.state[1];
  }

  /** Starts a new frame (after a finished one, or to leave a bad one behind). */
  reset(): void {
    this.handle.reset();
  }

  close(): void {
    this.engine.close();
  }
}
