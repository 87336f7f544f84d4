// Positions of chunk IDs in an index, looked up by ID, in one typed array: a
// 4 GiB image has ~70,000 chunks, and a Map from ID strings to arrays of
// positions costs ~130 bytes of JS heap per chunk (10 MiB per seed); this table
// costs 8. Open addressing with linear probing on the ID's first 4 bytes (IDs
// are uniform hashes); positions with equal IDs are returned in the order they
// were added.
import { ID_SIZE } from './caibx.js';

export class IdTable {
  /** Position + 1 per slot, 0 = empty; at most half full. */
  private readonly slots: Int32Array;
  private readonly mask: number;

  /**
   * @param ids the IDs the positions refer to (ID_SIZE bytes each), e.g. an index's `ids`
   * @param capacity most positions that will be added
   */
  constructor(
    private readonly ids: Uint8Array,
    capacity: number,
  ) {
    let size = 16;
    while (size < capacity * 2) size *= 2;
    this.slots = new Int32Array(size);
    this.mask = size - 1;
  }

  /** Adds position `i` unless `max` positions with its ID are there already; true when added. */
  add(i: number, max = Number.POSITIVE_INFINITY): boolean {
    let seen = 0;
    for (let s = this.home(this.ids, i); ; s = (s + 1) & this.mask) {
      const p = this.slots[s];
      if (p === 0) {
        this.slots[s] = i + 1;
        return true;
      }
      if (equalIds(this.ids, p - 1, this.ids, i) && ++seen >= max) return false;
    }
  }

  /** Positions whose ID equals ID `j` of `ids` (another index's, or the same), in the order they were added. */
  find(ids: Uint8Array, j: number): number[] {
    const out: number[] = [];
    for (let s = this.home(ids, j); ; s = (s + 1) & this.mask) {
      const p = this.slots[s];
      if (p === 0) return out;
      if (equalIds(this.ids, p - 1, ids, j)) out.push(p - 1);
    }
  }

  /** The first position added with ID `j` of `ids`, or -1. */
  first(ids: Uint8Array, j: number): number {
    for (let s = this.home(ids, j); ; s = (s + 1) & this.mask) {
      const p = this.slots[s];
      if (p === 0) return -1;
      if (equalIds(this.ids, p - 1, ids, j)) return p - 1;
    }
  }

  private home(ids: Uint8Array, i: number): number {
    const o = i * ID_SIZE;
    return (ids[o] | (ids[o + 1] << 8) | (ids[o + 2] << 16) | (ids[o + 3] << 24)) & this.mask;
  }
}

function equalIds(a: Uint8Array, ai: number, b: Uint8Array, bi: number): boolean {
  const x = ai * ID_SIZE;
  const y = bi * ID_SIZE;
  for (let k = 0; k < ID_SIZE; k++) if (a[x + k] !== b[y + k]) return false;
  return true;
}
