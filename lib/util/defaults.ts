// The defaults a user can change, in one place: the library's options and the
// daemon's configuration keys both start from these (docs/CONFIG.md lists them).

/** Parallel origin requests per assembly (`concurrency`). */
export const DEFAULT_CONCURRENCY = 8;
/** Largest image an index may describe (`max-target-size`; systemd-pull's own limit). */
export const DEFAULT_MAX_TARGET_SIZE = 64 * 1024 ** 3;
/** Headers and idle-body timeout of one request (`--timeout`). */
export const DEFAULT_TIMEOUT_MS = 30_000;
/** An answer slower than this many bytes/s ... (`low-speed-limit`, curl's --speed-limit) */
export const DEFAULT_LOW_SPEED_LIMIT = 1024;
/** ... for this long is aborted and retried (`low-speed-time`, curl's --speed-time). */
export const DEFAULT_LOW_SPEED_TIME_MS = 30_000;
/** An update with no verified byte for this long gives up (`--stall-timeout`). */
export const DEFAULT_STALL_MS = 5 * 60_000;
/**
 * Verified bytes an ordered stream holds ahead of its consumer: chunks that arrived out of order wait here for the
 * ones before them. 16 MiB keeps 8 MiB requests in flight (32 x the bandwidth-delay product of 100 Mbit/s at 40 ms);
 * every MiB of it is resident in the sidecar while an image streams.
 */
export const DEFAULT_WINDOW_BYTES = 16 * 1024 * 1024;
/** How long the origin's answers about a release are reused before they are revalidated. */
export const DEFAULT_FRESH_MS = 10_000;
