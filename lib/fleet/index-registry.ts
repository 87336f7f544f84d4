// The indexes a fleet proxy has seen, by URL. Each is parsed once per content
// (keyed on the body's digest, so a new release replaces the old) and tells the
// image-range store where the image's chunks live, so store and batch requests
// by chunk ID can be served from an upstream that has no chunk store.
import { createHash } from 'node:crypto';
import { parseIndex, type ChunkIndex } from '../format/caibx.js';
import type { ImageRangeStore } from './image-range-store.js';

export class IndexRegistry {
  private readonly indexes = new Map<string, { digest: string; index: ChunkIndex }>();

  constructor(
    private readonly ranges: ImageRangeStore,
    /** What the image's name gains to become its index's (e.g. ".caibx"). */
    private readonly indexSuffix: string,
    private readonly onWarning: (message: string) => void = () => {},
  ) {}

  /**
   * Parses `body` (once per content) and records its chunks' locations in `imageUrl`, or, when not given, in the
   * image its name implies (the index URL less the suffix); null if malformed.
   */
  register(indexUrl: string, body: Buffer, imageUrl?: string): ChunkIndex | null {
    const digest = createHash('sha256').update(body).digest('hex');
    const image =
      imageUrl ?? (indexUrl.endsWith(this.indexSuffix) ? indexUrl.slice(0, -this.indexSuffix.length) : undefined);
    const known = this.indexes.get(indexUrl);
    if (known?.digest === digest) {
      if (image) this.ranges.addImage(image, known.index);
      return known.index;
    }
    let index: ChunkIndex;
    try {
      index = parseIndex(body, { source: indexUrl, allowArchive: false });
    } catch (err) {
      this.onWarning((err as Error).message);
      return null;
    }
    this.indexes.set(indexUrl, { digest, index });
    if (image) this.ranges.addImage(image, index);
    return index;
  }
}
