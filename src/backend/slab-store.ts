/**
 * Memory for large values: fixed-size slots cut from 32 MiB slabs that are allocated once and reused, never
 * freed. One ArrayBuffer per blob would make V8 count every blob as fresh external memory and run full garbage
 * collections over and over (measured on Redis reads: a mark-compact every ~40 ms at 450 MB/s, and twice the read
 * rate with slots), and each new blob would touch fresh pages (dear on these machines); slots reuse memory that is
 * already warm.
 *
 * A slot comes back in one of two ways, by how its value was taken:
 *  - store(v) / release(v): the owner says when the value is gone (the memory engine deletes or replaces a key),
 *    and the slot is reused after a quarantine (below).
 *  - take(len): values handed to callers that keep them as long as they like (blobs a Redis store read, which the
 *    blob cache keeps and its callers copy from): the slot comes back only once V8 has collected the value's view
 *    (a FinalizationRegistry: after a full collection; no reference to the bytes is left anywhere). take() never
 *    grows the slabs past maxSlabs: it returns undefined when every slot is held, and the caller allocates.
 *
 * The memory engine's quarantine:
 * A released slot is reused only after QUARANTINE_MS, so a reader that took the value's bytes just before
 * the key was deleted still copies what it read (readers copy within microtasks of the get). Callers must
 * not keep values of a memory store beyond the operation that read them (the filesystem runs no blob cache
 * over a memory store, src/fs/filesystem.ts), except what the filesystem publishes to its driver's read
 * index: that is taken back before any commit can make the blob garbage (src/fs/published.ts).
 * The quarantine is short on purpose: a file rewritten at speed frees its old blobs as fast as it takes new
 * ones, and slots back in use within 100 ms stay warm (a whole second of fresh slabs cost more than the copy).
 */
export const SLAB_BYTES = 32 << 20;
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
  private readonly collected = new FinalizationRegistry<Slot>((slot) => {
    this.held -= slot.size;
    this.listOf(slot.size).push(slot);
  });
  slabs = 0;
  /** bytes of slots handed out by take() and not yet collected */
  held = 0;
  /** take() calls that found every slot held (their callers allocated on their own) */
  dry = 0;

  /** maxSlabs: how many slabs take() may cut (store() is not bounded: the memory engine holds what it holds) */
  constructor(private readonly maxSlabs = Infinity) {}

  /** bytes of the slabs cut so far */
  get bytes(): number {
    return this.slabs * SLAB_BYTES;
  }

  /**
   * A view of len bytes (contents undefined) in a slot that comes back once the view is collected (see above);
   * undefined for sizes slots do not serve, or when every slot is held and maxSlabs are cut.
   */
  take(len: number): Buffer | undefined {
    if (len < SLOT_MIN || len > SLAB_BYTES) return undefined;
    const slot = this.slot(slotSize(len), this.slabs < this.maxSlabs);
    if (!slot) {
      this.dry++;
      return undefined;
    }
    const view = Buffer.from(slot.slab, slot.offset, len);
    this.held += slot.size;
    this.collected.register(view, slot);
    return view;
  }

  /** a copy of v in a slot, or undefined when v is too large for one */
  store(v: Uint8Array): Uint8Array | undefined {
    if (v.length < SLOT_MIN || v.length > SLAB_BYTES) return undefined;
    const slot = this.slot(slotSize(v.length), true)!;
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

  /** a free slot of this size; a new slab is cut for it only when mayGrow (else undefined) */
  private slot(size: number, mayGrow: boolean): Slot | undefined {
    const now = Date.now();
    while (this.quarantine.length && now - this.quarantine[0].at >= QUARANTINE_MS) {
      const { slot } = this.quarantine.shift()!;
      this.listOf(slot.size).push(slot);
    }
    const list = this.listOf(size);
    const got = list.pop();
    if (got || !mayGrow) return got;
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

/** the slot size for len bytes: a power of two from SLOT_MIN */
function slotSize(len: number): number {
  let size = SLOT_MIN;
  while (size < len) size *= 2;
  return size;
}
