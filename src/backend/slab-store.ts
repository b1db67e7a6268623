/**
 * Memory for large values of the memory engine: fixed-size slots cut from 32 MiB slabs that are allocated
 * once and reused, never freed. One ArrayBuffer per blob would make V8 count every blob as fresh external
 * memory and run full garbage collections over and over while files are written, and each new blob would
 * touch fresh pages (dear on these machines); slots reuse memory that is already warm.
 *
 * A released slot is reused only after QUARANTINE_MS, so a reader that took the value's bytes just before
 * the key was deleted still copies what it read (readers copy within microtasks of the get). Callers must
 * not keep values of a memory store beyond the operation that read them (the filesystem runs no blob cache
 * over a memory store, src/fs/filesystem.ts), except what the filesystem publishes to its driver's read
 * index: that is taken back before any commit can make the blob garbage (src/fs/published.ts).
 * The quarantine is short on purpose: a file rewritten at speed frees its old blobs as fast as it takes new
 * ones, and slots back in use within 100 ms stay warm (a whole second of fresh slabs cost more than the copy).
 */
const SLAB_BYTES = 32 << 20;
const QUARANTINE_MS = 100;
/** values this size or larger live in slots (power-of-two classes up to the slab size) */
export const SLOT_MIN = 64 << 10;

interface Slot {
  slab: ArrayBuffer;
  offset: number;
  size: number;
}

export class SlabStore {
  private readonly free = new Map<number, Slot[]>();
  private readonly quarantine: { slot: Slot; at: number }[] = [];
  private readonly owner = new WeakMap<Uint8Array, Slot>();
  slabs = 0;

  /** a copy of v in a slot, or undefined when v is too large for one */
  store(v: Uint8Array): Uint8Array | undefined {
    if (v.length < SLOT_MIN || v.length > SLAB_BYTES) return undefined;
    let size = SLOT_MIN;
    while (size < v.length) size *= 2;
    const slot = this.take(size);
    const view = Buffer.from(slot.slab, slot.offset, v.length);
    view.set(v);
    this.owner.set(view, slot);
    return view;
  }

  /** the value's slot (if it has one) goes back, after the quarantine */
  release(v: Uint8Array): void {
    const slot = this.owner.get(v);
    if (!slot) return;
    this.owner.delete(v);
    this.quarantine.push({ slot, at: Date.now() });
  }

  private take(size: number): Slot {
    const now = Date.now();
    while (this.quarantine.length && now - this.quarantine[0].at >= QUARANTINE_MS) {
      const { slot } = this.quarantine.shift()!;
      this.listOf(slot.size).push(slot);
    }
    const list = this.listOf(size);
    const got = list.pop();
    if (got) return got;
    const slab = new ArrayBuffer(SLAB_BYTES);
    this.slabs++;
    for (let off = SLAB_BYTES - size; off > 0; off -= size) list.push({ slab, offset: off, size });
    return { slab, offset: 0, size };
  }

  private listOf(size: number): Slot[] {
    let l = this.free.get(size);
    if (!l) this.free.set(size, (l = []));
    return l;
  }
}
