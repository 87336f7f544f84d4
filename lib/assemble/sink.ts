// The contract between the assembler and where its verified chunks go: a partial file
// (lib/assemble/partial-file.ts) or an ordered stream (lib/assemble/ordered-stream.ts).

/** Where verified chunks go. */
export interface AssemblySink {
  /**
   * Takes verified target chunks [first, first+count) whose bytes are `data`. A sink that holds data calls
   * `release` once it no longer needs them (the producer may then reuse the buffer), or never.
   */
  put(first: number, count: number, data: Buffer, release?: () => void): Promise<void> | void;
  /** True when target chunk i is already in the sink (or outside what it takes): routes skip it. */
  has(i: number): boolean;
  /** Bytes of an already verified chunk again (for repeats), or null when they are gone. */
  readBack(i: number): Promise<Buffer | null>;
  /** True when unwritten target bytes already read as zero (a fresh sparse file). */
  readonly zeroFilled: boolean;
  /** Keep repeated chunks in memory for their later copies (no readBack). */
  readonly retainRepeats: boolean;
  /** put() keeps references to the bytes it was given (else they may be reused once it resolves; see `release`). */
  readonly holdsData: boolean;
  /** Resolves when a task spanning target bytes [start, end) from chunk `first` may start (the stream's window). */
  admit?(start: number, end: number, first: number): Promise<void> | void;
}
