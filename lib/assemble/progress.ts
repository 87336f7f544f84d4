// What an assembly reports while it runs and when it ends, whichever route produced the target.

export interface ExtractProgress {
  /** Target bytes to assemble (the range, for a ranged stream). */
  total: number;
  /** Target bytes verified so far (all sources). */
  done: number;
  fromSeeds: number;
  fromSelf: number;
  fromZero: number;
  fromCache: number;
  /** Chunk bytes obtained from the remote source (including fromLocalStore). */
  fromNetwork: number;
  /** Of fromNetwork, the chunk bytes read from local store directories (`--store DIR`): no network. */
  fromLocalStore: number;
  /** Bytes received over HTTP (the index, probes, bodies, multipart framing, merged gaps, compressed store chunks). */
  networkBytes: number;
  networkRequests: number;
}

export interface ExtractResult extends ExtractProgress {
  mode: 'range' | 'store' | 'none' | 'blocks';
  /** SHA-256 (hex) of the assembled bytes: always for streams, for files when `sha256` was given. */
  sha256?: string;
  wallMs: number;
  /** Chunks taken from the partial file of an interrupted run. */
  resumedBytes: number;
  /** Seed chunks that did not match their ID (fetched remotely instead). */
  seedMismatches: number;
}

/** A fresh report for an assembly of `total` target bytes: nothing done yet. */
export function newProgress(total: number): ExtractProgress {
  return {
    total,
    done: 0,
    fromSeeds: 0,
    fromSelf: 0,
    fromZero: 0,
    fromCache: 0,
    fromNetwork: 0,
    fromLocalStore: 0,
    networkBytes: 0,
    networkRequests: 0,
  };
}
