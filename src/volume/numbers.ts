/**
 * Compact sets for walks of a whole volume (fsck, gc), whose memory must stay bounded: numbers in a growing
 * Float64Array (8 bytes each, no object per member), sorted once and then searched by bisection. Blob ids enter
 * as 53-bit hashes (idHash): two ids share one with odds of about n / 2^53 per lookup (1 in 9 billion for a volume
 * of a million blobs), and each caller says which way such a false match errs.
 */

export class SortedNumbers {
  #a: Float64Array;
  #n = 0;
  #sorted = true;

  /** `expected`: how many members the caller foresees (room for them is taken at once, not by doubling) */
  constructor(expected = 1024) {
    this.#a = new Float64Array(Math.max(16, Math.ceil(expected)));
  }

  get size(): number {
    return this.#n;
  }

  add(x: number): void {
    if (this.#n === this.#a.length) {
      const grown = new Float64Array(Math.max(1024, this.#a.length * 2));
      grown.set(this.#a);
      this.#a = grown;
    }
    if (this.#n && x < this.#a[this.#n - 1]!) this.#sorted = false;
    this.#a[this.#n++] = x;
  }

  /** the position of x in sorted order, or -1 (sorts first when members were added out of order) */
  indexOf(x: number): number {
    return rankOf(this.#sort(), x);
  }

  has(x: number): boolean {
    return this.indexOf(x) >= 0;
  }

  /** empties the set and lets its memory go */
  clear(): void {
    this.#a = new Float64Array(0);
    this.#n = 0;
    this.#sorted = true;
  }

  /** the members in the order they were added, unless a search sorted them already */
  added(): Float64Array {
    return this.#a.subarray(0, this.#n);
  }

  /** the members in ascending order (duplicates kept) */
  sorted(): Float64Array {
    return this.#sort();
  }

  /** sorts in place (spare room stays spare: no copy) */
  #sort(): Float64Array {
    const a = this.#a.subarray(0, this.#n);
    if (!this.#sorted) {
      a.sort();
      this.#sorted = true;
    }
    return a;
  }
}

/** the index of x in the ascending array a, or -1 */
export function rankOf(a: Float64Array, x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo < a.length && a[lo] === x ? lo : -1;
}

/** a 53-bit hash of a string (cyrb53: two 32-bit multiply-xorshift lanes), exact in a double */
export function idHash(s: string): number {
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 4294967296 * (2097151 & h2) + (h1 >>> 0);
}
