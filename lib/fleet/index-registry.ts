// The indexes a fleet proxy has seen, by URL: each tells the image-range store
// where the image's chunks live, so store and batch requests by chunk ID can be
// served from an upstream that has no chunk store. The indexes arrive parsed
// (lib/fetch/release-files.ts, through the metadata cache); a new release's
// index replaces the old one's locations.
import type { ChunkIndex } from '../format/caibx.js';
import type { ImageRangeStore } from './image-range-store.js';

export class IndexRegistry {
  constructor(
    private readonly ranges: ImageRangeStore,
    /** What the image's name gains to become its index's (e.g. ".caibx"). */
    private readonly indexSuffix: string,
  ) {}

  /**
   * Records the chunks' locations of `index` in `imageUrl`, or, when not given, in the image its name implies (the
   * index URL less the suffix). Cheap when the same index is shown again.
   */
  register(indexUrl: string, index: ChunkIndex, imageUrl?: string): ChunkIndex {
    const image =
      imageUrl ?? (indexUrl.endsWith(this.indexSuffix) ? indexUrl.slice(0, -this.indexSuffix.length) : undefined);
    if (image) this.ranges.addImage(image, index);
    return index;
  }
}
