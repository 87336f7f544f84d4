// Waiting on a promise that an abort must be able to interrupt (the promise itself may never settle).

/** Resolves with `p`, or rejects when the signal aborts first (without leaving a listener behind). */
export async function unlessAborted(p: Promise<void>, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted();
  let onAbort!: () => void;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    await Promise.race([p, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}
