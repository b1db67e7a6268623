/**
 * What an LMDB store can still take, and the gate that keeps writes that cannot fit away from LMDB.
 *
 * Why a gate: when a write transaction cannot get the disk space it needs, lmdb-js's copy of LMDB (3.5)
 * prints `mdb_page_spill flushing error 5`, `mdb_page_spill error 5` or `Write error: ...` on the process's
 * stderr (unconditional fprintf calls in its mdb.c; no option turns them off), and when a page write gets
 * ENOSPC without writing a byte its error path overflows a 100-byte buffer, which can abort the process
 * ("double free or corruption"). So the store never asks LMDB for space it cannot have: a write the gate
 * refuses is NOSPACE at once, and LMDB sees nothing.
 *
 * The space model (bytes):
 *  - fileEnd:  pages of the data file up to the last one in use, (last page + 1) x page size
 *  - allocated: what the data file holds on disk (its blocks); beyond fileEnd after a write that failed part-way
 *  - live:     pages the B-trees use (the main and the free-page tree, and the two meta pages)
 *  - diskFree: what the filesystem under the store still gives (statfs f_bavail)
 *  - growRoom = diskFree + (allocated - fileEnd): how far the file can grow with no write failing
 *  - reusable = fileEnd - live: freed pages inside the file; LMDB reuses them (the file never shrinks)
 *  - capacity = diskFree + max(allocated, fileEnd): all the store could hold
 * LMDB's map is no limit: lmdb-js grows it on demand (it doubles it in mdb_page_alloc), so capacity is the
 * filesystem's.
 *
 * Rules of the gate, for a write that may need `need` bytes of new pages (needOf: values, their leaves, the pages
 * a transaction copies on write, and for a blob those of the commit that will name it):
 *  1. A write that frees (a delete, a commit that deletes and writes little, a counter) is admitted when the
 *     store has any room for it: need <= growRoom + reusable. Deletes are how a full store gets space back.
 *  2. A write that grows the store is admitted when it fits on the disk and leaves `keep` bytes there:
 *     need <= growRoom - keep, where keep = KEEP_FOR_FREES + max(MIN_KEEP, the largest need that succeeded).
 *     Or when it fits in the reusable pages (less KEEP_FOR_FREES: pages freed in the last transactions are not
 *     reusable yet) and, should LMDB not find a long enough run of them, the disk can take it all the same:
 *     need <= reusable - KEEP_FOR_FREES and need + KEEP_FOR_FREES <= growRoom.
 *  3. A write LMDB refused for space all the same (another process filled the disk, a quota) blocks writes at
 *     least as large until the room grows by that much.
 *  4. The figures (statfs, stat of data.mdb, LMDB's statistics: 12 us here) are measured at most once a second
 *     while growRoom, less what was admitted since, stays FAST_MARGIN above need + keep, and before every write
 *     otherwise. All synchronous: writes keep their call order.
 */
import { readFileSync, realpathSync, statfsSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** the figures of one measurement */
export interface LmdbFigures {
  pageSize: number;
  /** (last page + 1) x page size */
  fileEnd: number;
  /** bytes the data file holds on disk */
  allocated: number;
  /** bytes of the pages the trees use */
  live: number;
  /** bytes the filesystem still gives (f_bavail) */
  diskFree: number;
  /** the filesystem's size (f_blocks) */
  diskTotal: number;
  /** the memory map's current size (grows on demand) */
  mapSize: number;
}

/** disk kept for writes that free (their copied-on-write pages) */
export const KEEP_FOR_FREES = 256 * 1024;
/** the least disk kept besides, for reuse that misses */
export const MIN_KEEP = 1024 * 1024;
/** above need + keep + this, no measurement for a second */
export const FAST_MARGIN = 64 * 1024 * 1024;
/** pages a transaction may copy on write besides its values (tree paths, free-page records, meta) */
export const OVERHEAD_PAGES = 16;
const REMEASURE_MS = 1000;

export type WriteKind = 'grow' | 'free';

export const growRoom = (f: LmdbFigures): number => f.diskFree + Math.max(0, f.allocated - f.fileEnd);
export const reusable = (f: LmdbFigures): number => Math.max(0, f.fileEnd - f.live);
export const capacity = (f: LmdbFigures): number => f.diskFree + Math.max(f.allocated, f.fileEnd);

/**
 * Bytes of new pages a transaction writing these values (and deleting, for the rest) may take. `named`: what it
 * writes is named by a commit that follows (a blob: kv.ts), and room for that commit's pages is counted too, so a
 * blob that fits never leaves its commit without room (which would leave the blob named by nothing).
 */
export function needOf(pageSize: number, writes: readonly { key: string; value: Uint8Array | null }[], named = false): number {
  let pages = named ? 2 * OVERHEAD_PAGES : OVERHEAD_PAGES;
  let small = 0;
  for (const w of writes) {
    const n = w.key.length + (w.value?.length ?? 0) + 8;
    // a value over half a page goes to its own (overflow) pages, with a 16-byte header
    if (w.value && n > pageSize / 2) pages += Math.ceil((w.value.length + 16) / pageSize);
    else small += n;
  }
  // small entries share leaves; count each leaf half full
  return (pages + Math.ceil((2 * small) / pageSize)) * pageSize;
}

/** 'free' for a commit that deletes and writes little besides (a delete queue entry per key), else 'grow' */
export function kindOf(writes: readonly { value: Uint8Array | null }[]): WriteKind {
  let deletes = 0;
  let bytes = 0;
  for (const w of writes) {
    if (w.value === null) deletes++;
    else bytes += w.value.length;
  }
  return deletes > 0 && bytes <= 4096 + 512 * deletes ? 'free' : 'grow';
}

/** the gate's verdict on a write: rules 1 to 3, pure */
export function fits(f: LmdbFigures, need: number, kind: WriteKind, keep: number): boolean {
  const room = growRoom(f);
  if (kind === 'free') return need <= room + reusable(f);
  return need <= room - keep || (need <= reusable(f) - KEEP_FOR_FREES && need + KEEP_FOR_FREES <= room);
}

/** what the store can still take for writes that grow it: capacity - live - keep */
export const available = (f: LmdbFigures, keep: number): number => Math.max(0, capacity(f) - f.live - keep);

/** a write LMDB refused for space (rule 3): the room then */
interface Refusal {
  need: number;
  room: number;
  reusable: number;
}

/** what the filesystem says of the store's data file and the disk under it */
export interface DiskProbe {
  (dir: string): { allocated: number; diskFree: number; diskTotal: number };
}

/** statfs of the store's directory and stat of its data.mdb */
export const realDisk: DiskProbe = (dir) => {
  const fs = statfsSync(dir);
  return { allocated: statSync(join(dir, 'data.mdb')).blocks * 512, diskFree: fs.bavail * fs.bsize, diskTotal: fs.blocks * fs.bsize };
};

/** LMDB's statistics, as lmdb-js's getStats() gives them */
export interface LmdbStats {
  pageSize: number;
  lastPageNumber: number;
  mapSize: number;
  treeBranchPageCount: number;
  treeLeafPageCount: number;
  overflowPages: number;
  free: { treeBranchPageCount: number; treeLeafPageCount: number; overflowPages: number };
}

export class LmdbSpace {
  /** the mount point of the filesystem holding the store, for messages */
  readonly mountPoint: string | undefined;
  #figures: LmdbFigures | undefined;
  #measuredAt = 0;
  /** need of the writes admitted since the last measurement */
  #admitted = 0;
  #largest = 0;
  #refusal: Refusal | undefined;

  constructor(readonly dir: string, private readonly stats: () => LmdbStats, private readonly disk: DiskProbe = realDisk) {
    let real = dir;
    try {
      real = realpathSync(dir);
    } catch { /* the path as given */ }
    this.mountPoint = mountPointOf(real);
  }

  /** disk the gate keeps from growing writes */
  get keep(): number {
    return KEEP_FOR_FREES + Math.max(MIN_KEEP, this.#largest);
  }

  /** fresh figures (throws what statfs, stat or LMDB throws) */
  measure(): LmdbFigures {
    const s = this.stats();
    const d = this.disk(this.dir);
    const ps = s.pageSize;
    const livePages = s.treeBranchPageCount + s.treeLeafPageCount + s.overflowPages +
      s.free.treeBranchPageCount + s.free.treeLeafPageCount + s.free.overflowPages + 2;
    this.#figures = {
      pageSize: ps,
      fileEnd: (s.lastPageNumber + 1) * ps,
      allocated: d.allocated,
      live: livePages * ps,
      diskFree: d.diskFree,
      diskTotal: d.diskTotal,
      mapSize: s.mapSize,
    };
    this.#measuredAt = Date.now();
    this.#admitted = 0;
    return this.#figures;
  }

  /** the page size (measured once) */
  get pageSize(): number {
    return (this.#figures ?? this.measure()).pageSize;
  }

  /**
   * Admits a write (undefined) or refuses it: the figures that refused it. `need` from needOf; an admitted write
   * reports success with succeeded(), a failure for space with refused().
   */
  admit(need: number, kind: WriteKind): LmdbFigures | undefined {
    if (!this.#refusal && this.roomy(need + FAST_MARGIN)) {
      this.#admitted += need;
      return undefined;
    }
    const f = this.measure();
    const r = this.#refusal;
    if (r && kind === 'grow' && need >= r.need) {
      if (growRoom(f) < r.room + r.need && reusable(f) < r.reusable + r.need) return f;
      this.#refusal = undefined;
    }
    if (!fits(f, need, kind, this.keep)) return f;
    this.#admitted += need;
    return undefined;
  }

  /** whether the last figures (a second old at most) leave `bytes` beyond what the gate keeps; false before any */
  roomy(bytes: number): boolean {
    const f = this.#figures;
    return f !== undefined && Date.now() - this.#measuredAt < REMEASURE_MS && growRoom(f) - this.#admitted >= bytes + this.keep;
  }

  /** an admitted write succeeded */
  succeeded(need: number, kind: WriteKind): void {
    if (kind === 'grow') this.#largest = Math.max(this.#largest, need);
  }

  /** fresh figures, or undefined when they cannot be measured */
  tryMeasure(): LmdbFigures | undefined {
    try {
      return this.measure();
    } catch {
      return undefined;
    }
  }

  /** an admitted write failed for space in LMDB itself (rule 3), with the figures measured after it */
  refused(need: number, f: LmdbFigures | undefined): void {
    this.#refusal = { need, room: f ? growRoom(f) : 0, reusable: f ? reusable(f) : 0 };
  }
}

/** the mount point of the filesystem holding `dir` (the longest mount point that is a prefix), or undefined */
export function mountPointOf(dir: string, mountinfo?: string): string | undefined {
  let text = mountinfo;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/mountinfo', 'utf8');
    } catch {
      return undefined;
    }
  }
  let best: string | undefined;
  for (const line of text.split('\n')) {
    const raw = line.split(' ')[4];
    if (!raw) continue;
    const mp = raw.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    const inside = mp === '/' || dir === mp || dir.startsWith(mp.endsWith('/') ? mp : `${mp}/`);
    if (inside && (best === undefined || mp.length > best.length)) best = mp;
  }
  return best;
}
