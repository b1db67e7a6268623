/**
 * The data of one open file: its chunks, the write-back buffers that hold changes not yet in the store, and
 * the commit that swaps new blobs into the chunk map.
 *
 * Contract:
 *  - One FileData per inode while any handle (or an internal user such as truncate) holds it; all handles of
 *    the inode share it, so a read sees every write of this mount at once.
 *  - `size` is the file's size as this mount sees it; the store learns it at the next commit.
 *  - Changed chunks live in `dirty` (a whole chunk buffer each; bytes past `size` are zero). A commit
 *    (`flush`) moves them to `flushing`, writes each as a new immutable blob, then swaps all of them into the
 *    chunk map in one transaction with the inode's size and times, putting the replaced blobs on the GC queue.
 *    A write that lands on a flushing chunk copies it first, so a blob is never changed while it is written.
 *  - Commits of one file run one at a time (`commitLock`); truncate holds the same lock.
 *  - Memory: dirty and flushing buffers are counted against the WriteBudget; a write that finds the budget
 *    spent commits this file's dirty chunks before it returns.
 */
import type { KvStore } from '../backend/kv.js';
import { StoreError } from '../backend/errors.js';
import { fsErr } from './errors.js';
import {
  K, chunkIndexOf, decodeChunk, decodeInode, encodeChunk, encodeInode, nowTs, type Inode,
} from './schema.js';
import { transact } from './txn.js';
import type { Ino, Timespec } from './types.js';
import type { BlobCache } from './blob-cache.js';
import type { Counters } from './counters.js';
import type { Published } from './published.js';

/** How many stale chunk entries one truncate/purge commit deletes. */
export const DELETE_BATCH = 512;

export interface ChunkEntry { length: number; blobId: string }

/** Bytes that moved, for `kvfs status` and the benches: what the store costs per byte a caller read or wrote. */
export interface IoStats {
  /** bytes callers wrote through the core, and bytes of blobs sent to the store for them */
  written: number;
  sent: number;
  /** bytes the core returned to readers, and bytes it fetched from the store for them */
  returned: number;
  fetched: number;
}

/** Shared by all files of a mount: the chunk size, the store, caches, buffer recycling, the write budget. */
export interface DataContext {
  /**
   * a cold chunk's small random reads fetch only their bytes (KvStore.getRange) instead of the whole blob; off
   * for an in-process store, whose whole blobs cost no copy and feed the driver's read index
   */
  rangeReads: boolean;
  io: IoStats;
  store: KvStore;
  chunkSize: number;
  blobs: BlobCache;
  /** the driver's read index: clean chunks this mount read, which the driver may serve itself */
  published: Published;
  buffers: ChunkBuffers;
  budget: WriteBudget;
  newBlobId(): string;
  /** called after commits that queued garbage */
  kickJanitor(): void;
  /** usage counters (batched) */
  counters: Counters;
}

/**
 * Recycles chunk-sized buffers: fresh memory is dear on these machines (first touch costs more than a copy),
 * so buffers are kept and reused rather than freed and allocated again. Idle buffers and the write-back
 * buffers in use together stay within the write budget's limit: write-back memory never exceeds
 * --write-buffer-mb, idle or not.
 */
export class ChunkBuffers {
  private readonly free: Buffer[] = [];
  constructor(readonly size: number, private readonly budget: WriteBudget) {}
  /** a buffer of `size` bytes, zero-filled when `zero` */
  take(zero: boolean): Buffer {
    const b = this.free.pop() ?? Buffer.allocUnsafeSlow(this.size);
    if (zero) b.fill(0);
    return b;
  }
  give(b: Buffer): void {
    if (b.length === this.size && (this.free.length + 1) * this.size + this.budget.used <= this.budget.limit) this.free.push(b);
  }
  get idle(): number {
    return this.free.length;
  }
}

/** Counts write-back bytes across the mount against a limit. */
export class WriteBudget {
  used = 0;
  highWater = 0;
  constructor(readonly limit: number) {}
  add(n: number): void {
    this.used += n;
    if (this.used > this.highWater) this.highWater = this.used;
  }
  sub(n: number): void {
    this.used -= n;
  }
  get spent(): boolean {
    return this.used >= this.limit;
  }
}

/** How far ahead a sequential reader's chunks are fetched and published (published.ts). */
const READ_AHEAD = 4 << 20;

/**
 * Copies `count` bytes of committed chunk bytes `data` from `start` to out at `at`; what lies past the end of
 * `data` (a blob shorter than its chunk, or a hole: no data) reads as zeros.
 */
function copyChunkPart(out: Buffer, at: number, data: Uint8Array | undefined, start: number, count: number): void {
  const have = data ? Math.max(0, Math.min(count, data.length - start)) : 0;
  if (have > 0) out.set(data!.subarray(start, start + have), at);
  if (have < count) out.fill(0, at + have, at + count);
}

/** The unit of a range read: whole pages around the bytes asked for. */
const PAGE = 4096;

/** Most chunks one file keeps dirty before a write commits them. */
const MAX_DIRTY_CHUNKS = 16;

export class FileData {
  refs = 0;
  size: number;
  /** pending mtime/ctime of writes not yet committed */
  mtime: Timespec | undefined;
  /** set when the last link went away while open: the last release removes the file instead of committing */
  unlinked = false;
  private readonly dirty = new Map<number, Buffer>();
  private readonly flushing = new Map<number, Buffer>();
  private readonly loading = new Map<number, Promise<Buffer>>();
  private readonly entries = new Map<number, ChunkEntry | null>();
  /** bumped whenever this mount changes the chunk map (or forgets it): reads of the map begun before are stale */
  private mapChanges = 0;
  /** in-memory bound of a pending truncate: entries at or above are stale (0 = none) */
  private truncFrom: number;
  private commitTail: Promise<unknown> = Promise.resolve();
  /** bumped by every shrinking truncate: chunk bytes loaded before it are stale */
  private truncations = 0;
  /** writes in progress, and a truncate waiting for them: a truncate runs between writes, never inside one */
  private activeWrites = 0;
  private truncating: Promise<void> | undefined;
  private writesDrained: (() => void) | undefined;
  /** where the last read through the core ended, and where the read-ahead window ends (-1: none) */
  private seqNext = 0;
  private aheadTo = -1;
  /** the first chunk of the read-ahead window (published with a mark) */
  private aheadFrom = -1;
  /** a commit started by a write that did not wait for it */
  private behind: Promise<void> | undefined;

  constructor(readonly ino: Ino, inode: Inode, private readonly cx: DataContext) {
    this.size = inode.size;
    this.truncFrom = inode.truncFrom;
  }

  get dirtyBytes(): number {
    return (this.dirty.size + this.flushing.size) * this.cx.chunkSize;
  }

  /**
   * Takes the inode as another mount committed it (a shared store): size, pending truncate, and the chunk
   * map cache. Only when this mount has nothing of its own in flight; returns whether it did.
   */
  refresh(inode: Inode): boolean {
    if (this.dirty.size || this.flushing.size || this.loading.size || this.activeWrites || this.truncating || this.mtime !== undefined) return false;
    this.cx.published.retractFile(this.ino);
    this.size = inode.size;
    this.truncFrom = inode.truncFrom;
    this.entries.clear();
    this.mapChanges++;
    return true;
  }

  /** Finishes a truncate a crashed mount left pending. Call once before first use. */
  async recover(): Promise<void> {
    if (this.truncFrom) await this.serial(() => this.deleteStaleChunks());
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.commitTail.then(fn, fn);
    this.commitTail = run.catch(() => undefined);
    return run;
  }

  // ---------------------------------------------------------------- reading

  /** Reads up to `length` bytes at `offset` into `out` (a new buffer when absent); shorter at end of file. */
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const end = Math.min(offset + length, this.size);
    if (offset >= end) return Buffer.alloc(0);
    const out = into ? into.subarray(0, end - offset) : Buffer.allocUnsafe(end - offset);
    const cs = this.cx.chunkSize;
    // a small read away from where the last one ended: a cold chunk gives only the bytes asked for
    const ranged = this.cx.rangeReads && offset !== this.seqNext && offset !== this.aheadTo && end - offset <= cs / 4;
    let jobs: Promise<void>[] | undefined;
    for (let idx = Math.floor(offset / cs); idx * cs < end; idx++) {
      const base = idx * cs;
      const from = Math.max(offset, base);
      const to = Math.min(end, base + cs);
      // Chunks in memory (write-back, or a cached blob of a known entry) are copied at once; the rest are
      // fetched in parallel.
      if (!this.readCached(idx, from - base, to - base, out, from - offset)) {
        (jobs ??= []).push(this.readChunkInto(idx, from - base, to - base, out, from - offset, ranged));
      }
    }
    if (jobs) await Promise.all(jobs);
    this.cx.io.returned += out.length;
    if (this.cx.published.active && (offset === this.seqNext || offset === this.aheadTo)) this.readAhead(end);
    this.seqNext = end;
    return out;
  }

  /**
   * Sequential reading: the chunks after `from` (READ_AHEAD bytes' worth, a window) are fetched and published,
   * so that the driver serves the next READs itself. The window's first chunk is published with a mark: when
   * the driver serves a READ from it, readAheadHint publishes the next window, a whole window before the
   * reader needs it. A READ that still reaches the core at the window's end moves it on too.
   */
  private readAhead(from: number): void {
    const cs = this.cx.chunkSize;
    const first = Math.ceil(from / cs);
    const last = Math.min(first + Math.max(2, Math.floor(READ_AHEAD / cs)), Math.ceil(this.size / cs));
    const gen = this.truncations;
    for (let idx = first; idx < last; idx++) {
      if (this.dirty.has(idx) || this.flushing.has(idx) || (idx !== first && this.cx.published.has(this.ino, idx))) continue;
      this.storedChunk(idx).then(({ data, blobId }) => this.publish(idx, gen, blobId, data, idx === first), () => undefined);
    }
    this.aheadFrom = first;
    this.aheadTo = last * cs;
  }

  /** the driver served a READ from the marked first chunk of the read-ahead window: publish the next one */
  readAheadHint(idx: number): void {
    if (idx === this.aheadFrom && this.aheadTo > 0 && this.aheadTo < this.size) this.readAhead(this.aheadTo);
  }

  /** copies chunk idx's bytes [from, to) to out at `at` if they are in memory now; false when they are not */
  private readCached(idx: number, from: number, to: number, out: Buffer, at: number): boolean {
    const mem = this.dirty.get(idx) ?? this.flushing.get(idx);
    if (mem) {
      mem.copy(out, at, from, to);
      return true;
    }
    if (this.truncFrom && idx >= this.truncFrom) return false;
    const e = this.entries.get(idx);
    if (e === undefined) return false;
    const data = e === null ? undefined : this.cx.blobs.peek(e.blobId);
    if (e !== null && !data) return false;
    copyChunkPart(out, at, data, from, to - from);
    this.publish(idx, this.truncations, e?.blobId ?? null, data);
    return true;
  }

  /**
   * Offers chunk idx's committed bytes to the driver's read index (published.ts), if they are still what the
   * chunk holds now: no write-back copy, no truncate since the read began (gen), the same chunk map entry,
   * and bytes the blob cache (or an in-process store) keeps.
   */
  private publish(idx: number, gen: number, blobId: string | null, data: Uint8Array | undefined, mark = false): void {
    const pub = this.cx.published;
    if (!pub.active || gen !== this.truncations || this.dirty.has(idx) || this.flushing.has(idx)) return;
    if ((this.truncFrom && idx >= this.truncFrom) || idx * this.cx.chunkSize >= this.size) return;
    const e = this.entries.get(idx);
    if (e === undefined || (e === null ? blobId !== null : e.blobId !== blobId)) return;
    if (blobId !== null && (!data || !this.cx.blobs.keeps(blobId, data))) return;
    pub.publish(this.ino, this.size, this.cx.chunkSize, idx, blobId, blobId === null ? null : data!, mark);
  }

  private async readChunkInto(idx: number, from: number, to: number, out: Buffer, at: number, ranged = false): Promise<void> {
    const mem = this.dirty.get(idx) ?? this.flushing.get(idx);
    if (mem) {
      mem.copy(out, at, from, to);
      return;
    }
    if (ranged) return this.readRangeInto(idx, from, to, out, at);
    const gen = this.truncations;
    const { data, blobId } = await this.storedChunk(idx);
    // A concurrent write may have made the chunk dirty while we fetched: the dirty copy is newer.
    const newer = this.dirty.get(idx) ?? this.flushing.get(idx);
    if (newer) {
      newer.copy(out, at, from, to);
      return;
    }
    copyChunkPart(out, at, data, from, to - from);
    this.publish(idx, gen, blobId, data);
  }

  /**
   * Bytes [from, to) of chunk idx's committed blob, fetched alone (the 4 KiB pages around them): nothing else of
   * the chunk is read, cached or published. A write that made the chunk dirty meanwhile wins, as in readChunkInto.
   */
  private async readRangeInto(idx: number, from: number, to: number, out: Buffer, at: number): Promise<void> {
    const lo = from - (from % PAGE);
    const hi = Math.min(this.cx.chunkSize, Math.ceil(to / PAGE) * PAGE);
    const { data: got } = await this.fromBlob(idx, (id) => this.cx.store.getRange!(K.blob(id), lo, hi - lo));
    this.cx.io.fetched += got?.length ?? 0;
    const newer = this.dirty.get(idx) ?? this.flushing.get(idx);
    if (newer) {
      newer.copy(out, at, from, to);
      return;
    }
    copyChunkPart(out, at, got, from - lo, to - from);
  }

  /** The committed bytes of chunk idx (possibly shorter than a chunk) and their blob; a hole has neither. */
  private async storedChunk(idx: number): Promise<{ data?: Uint8Array; blobId: string | null }> {
    return this.fromBlob(idx, (id) => this.cx.blobs.get(id));
  }

  /**
   * `fetch` applied to chunk idx's committed blob ({ blobId: null } for a hole). A blob replaced and collected
   * after the chunk map was read is missing: the map is read again, twice at most.
   */
  private async fromBlob(idx: number, fetch: (blobId: string) => Promise<Uint8Array | undefined>): Promise<{ data?: Uint8Array; blobId: string | null }> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const e = await this.entry(idx, attempt > 0);
      if (!e) return { blobId: null };
      const data = await fetch(e.blobId);
      if (data) return { data, blobId: e.blobId };
    }
    throw new StoreError('CORRUPT', `file ${this.ino} chunk ${idx}: its blob is missing from the store`);
  }

  /**
   * Chunk idx's map entry (null: a hole), from the cache unless `fresh`. An answer that arrives after this mount
   * changed the map (a commit, a truncate) may predate the change: it is neither kept nor used, and the entry is
   * taken from the cache the change left, or read again.
   */
  private async entry(idx: number, fresh: boolean): Promise<ChunkEntry | null> {
    for (;;) {
      if (this.truncFrom && idx >= this.truncFrom) return null;
      if (!fresh && this.entries.has(idx)) return this.entries.get(idx)!;
      const changes = this.mapChanges;
      const raw = await this.cx.store.get(K.chunk(this.ino, idx));
      if (changes !== this.mapChanges) {
        fresh = false;
        continue;
      }
      const e = raw ? decodeChunk(raw) : null;
      this.entries.set(idx, e);
      return e;
    }
  }

  // ---------------------------------------------------------------- writing

  /**
   * Writes data at offset into the write-back buffers; commits when this file or the mount holds too much.
   * Each chunk's bytes and the size they imply change together, synchronously, so a commit that starts
   * between two chunks of one write sees every chunk it takes with a size that covers it.
   */
  async write(offset: number, data: Uint8Array): Promise<number> {
    if (data.length === 0) return 0;
    while (this.truncating) await this.truncating;
    this.activeWrites++;
    this.cx.published.setClean(this.ino, false);
    try {
      await this.writeChunks(offset, data);
      this.cx.io.written += data.length;
    } finally {
      if (--this.activeWrites === 0) this.writesDrained?.();
    }
    this.mtime = nowTs();
    if (this.cx.budget.spent) await this.flush();
    else if (this.dirty.size >= MAX_DIRTY_CHUNKS) this.flushBehind();
    return data.length;
  }

  /**
   * Starts committing the dirty chunks without making the write wait (one such commit at a time). A failure
   * loses nothing: the chunks go back to dirty, and the next flush, fsync or close commits them or reports
   * the error. Writes wait only when the mount's write-back budget is spent.
   */
  private flushBehind(): void {
    if (this.behind) return;
    // Started on the next turn of the event loop, so the write's reply goes out first.
    this.behind = new Promise<void>((r) => setImmediate(r)).then(() => this.flush()).catch(() => undefined).finally(() => {
      this.behind = undefined;
    });
  }

  private async writeChunks(offset: number, data: Uint8Array): Promise<void> {
    const cs = this.cx.chunkSize;
    const end = offset + data.length;
    const src = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    for (let idx = Math.floor(offset / cs); idx * cs < end; idx++) {
      const base = idx * cs;
      const from = Math.max(offset, base);
      const to = Math.min(end, base + cs);
      await this.writable(idx, from === base && to === base + cs, (buf) => {
        src.copy(buf, from - base, from - offset, to - offset);
        if (to > this.size) {
          this.size = to;
          this.cx.published.setSize(this.ino, to);
        }
      });
    }
  }

  /**
   * Applies `change` to the dirty buffer of chunk idx, loading the committed bytes first unless `overwrite`
   * says the change covers the whole chunk. `change` runs synchronously with the buffer's adoption, so no
   * reader ever sees a buffer that is not yet filled. Bytes loaded before a truncate are never used after it.
   */
  private async writable(idx: number, overwrite: boolean, change: (b: Buffer) => void): Promise<void> {
    for (;;) {
      const d = this.dirty.get(idx);
      if (d) {
        change(d);
        return;
      }
      const inFlight = this.loading.get(idx);
      if (inFlight) {
        await inFlight.catch(() => undefined);
        continue;
      }
      const flushingBuf = this.flushing.get(idx);
      if (flushingBuf || overwrite || idx * this.cx.chunkSize >= this.size) {
        const b = this.cx.buffers.take(!flushingBuf && !overwrite);
        if (flushingBuf) flushingBuf.copy(b);
        change(b);
        this.adopt(idx, b);
        return;
      }
      const gen = this.truncations;
      const p = this.load(idx);
      this.loading.set(idx, p);
      let b: Buffer;
      try {
        b = await p;
      } finally {
        this.loading.delete(idx);
      }
      // Adopt what was loaded unless the chunk changed meanwhile (a newer dirty copy, or a truncate).
      if (gen === this.truncations && !this.dirty.has(idx) && !this.flushing.has(idx)) this.adopt(idx, b);
      else this.cx.buffers.give(b);
    }
  }

  /** the committed bytes of chunk idx in a chunk buffer, zeros past them */
  private async load(idx: number): Promise<Buffer> {
    const { data } = await this.storedChunk(idx);
    const b = this.cx.buffers.take(false);
    const n = data ? Math.min(data.length, b.length) : 0;
    if (n) Buffer.from(data!.buffer, data!.byteOffset, n).copy(b, 0, 0, n);
    b.fill(0, n);
    return b;
  }

  private adopt(idx: number, b: Buffer): void {
    this.cx.published.retractChunk(this.ino, idx);
    this.dirty.set(idx, b);
    this.cx.budget.add(b.length);
  }

  private drop(map: Map<number, Buffer>, idx: number): void {
    const b = map.get(idx);
    if (!b) return;
    map.delete(idx);
    this.cx.budget.sub(b.length);
    this.cx.buffers.give(b);
  }

  /** Drops all write-back state without committing (the file is gone). */
  discard(): void {
    this.cx.published.retractFile(this.ino);
    this.cx.published.setClean(this.ino, false);
    for (const idx of [...this.dirty.keys()]) this.drop(this.dirty, idx);
    this.mtime = undefined;
  }

  // ---------------------------------------------------------------- committing

  /** Commits every dirty chunk and the size and times: the store then holds what this mount wrote. */
  flush(): Promise<void> {
    return this.serial(() => this.commitDirty({})).then(() => this.markIfClean());
  }

  /** tells the driver it may answer a FLUSH by itself, when nothing of this file is uncommitted */
  markIfClean(): void {
    if (this.dirty.size || this.flushing.size || this.mtime !== undefined || this.activeWrites || this.truncating || this.truncFrom) return;
    this.cx.published.setClean(this.ino, true);
  }

  get hasChanges(): boolean {
    return this.dirty.size > 0 || this.mtime !== undefined;
  }

  /**
   * Moves dirty chunks to flushing, writes their blobs, and commits them with the inode. `extra` lets
   * truncate put its own inode changes in the same commit.
   */
  private async commitDirty(extra: { truncFrom?: number; force?: boolean }): Promise<void> {
    if (!this.hasChanges && !extra.force) return;
    const cs = this.cx.chunkSize;
    const batch: { idx: number; buf: Buffer; length: number; blobId: string }[] = [];
    for (const [idx, buf] of this.dirty) {
      this.dirty.delete(idx);
      this.flushing.set(idx, buf);
      const length = Math.max(0, Math.min(cs, this.size - idx * cs));
      batch.push({ idx, buf, length, blobId: length ? this.cx.newBlobId() : '' });
    }
    const mtime = this.mtime;
    const size = this.size;
    try {
      await Promise.all(batch.filter((c) => c.length).map((c) => {
        this.cx.io.sent += c.length;
        return this.cx.store.put(K.blob(c.blobId), c.buf.subarray(0, c.length));
      }));
      let added = 0;
      await transact(this.cx.store, async (tx) => {
        added = 0;
        const raw = await tx.get(K.inode(this.ino));
        if (!raw) throw fsErr('ESTALE', `file ${this.ino} is gone`);
        const inode = decodeInode(this.ino, raw);
        for (const c of batch) {
          const key = K.chunk(this.ino, c.idx);
          const oldRaw = await tx.get(key);
          if (oldRaw) {
            const old = decodeChunk(oldRaw);
            tx.set(K.gc(old.blobId), Buffer.from(String(old.length)));
            inode.stored -= old.length;
          }
          if (c.length) {
            tx.set(key, encodeChunk(c.length, c.blobId));
            inode.stored += c.length;
            added += c.length;
          } else if (oldRaw) {
            tx.del(key);
          }
        }
        inode.size = size;
        if (mtime) {
          inode.mtime = mtime;
          inode.ctime = mtime;
        }
        if (extra.truncFrom !== undefined) inode.truncFrom = extra.truncFrom;
        inode.version++;
        tx.set(K.inode(this.ino), encodeInode(inode));
        if (batch.length) tx.after.push(() => this.cx.kickJanitor());
      });
      this.cx.counters.add(K.byteCount, added);
      for (const c of batch) this.entries.set(c.idx, c.length ? { length: c.length, blobId: c.blobId } : null);
      this.mapChanges++;
      if (this.mtime === mtime) this.mtime = undefined;
    } catch (e) {
      // Nothing was committed: the chunks go back to dirty unless a newer write already replaced them.
      for (const c of batch) {
        this.flushing.delete(c.idx);
        if (this.dirty.has(c.idx)) {
          this.cx.budget.sub(c.buf.length);
          this.cx.buffers.give(c.buf);
        } else {
          this.dirty.set(c.idx, c.buf);
        }
      }
      throw e;
    }
    for (const c of batch) this.drop(this.flushing, c.idx);
  }

  /**
   * Changes the size. Shrinking zeroes the tail of the boundary chunk and deletes the chunks past it.
   * New writes wait while a truncate runs, and the truncate waits for writes already in progress, so the
   * result is always that of one order or the other.
   */
  async truncate(newSize: number, stamp: Timespec): Promise<void> {
    while (this.truncating) await this.truncating;
    let open!: () => void;
    this.truncating = new Promise<void>((r) => { open = r; });
    this.cx.published.setClean(this.ino, false);
    try {
      if (this.activeWrites > 0) await new Promise<void>((r) => { this.writesDrained = r; });
      this.writesDrained = undefined;
      await this.truncateNow(newSize, stamp);
    } finally {
      this.truncating = undefined;
      open();
    }
    this.markIfClean();
  }

  private truncateNow(newSize: number, stamp: Timespec): Promise<void> {
    return this.serial(async () => {
      const cs = this.cx.chunkSize;
      if (newSize < this.size) {
        this.truncations++;
        this.cx.published.retractFile(this.ino);
        const keep = Math.ceil(newSize / cs);
        for (const idx of [...this.dirty.keys()]) if (idx >= keep) this.drop(this.dirty, idx);
        if (newSize % cs) {
          const idx = keep - 1;
          await this.writable(idx, false, (b) => b.fill(0, newSize % cs));
        }
        this.size = newSize;
        // From here the chunks past the end are holes (until deleteStaleChunks removes them from the store):
        // entries read before, even during the await above, are forgotten, and reads still in flight discarded.
        this.truncFrom = keep;
        for (const idx of [...this.entries.keys()]) if (idx >= keep) this.entries.delete(idx);
        this.mapChanges++;
        this.cx.published.retractFile(this.ino);
        this.mtime = stamp;
        await this.commitDirty({ truncFrom: keep, force: true });
        await this.deleteStaleChunks();
      } else {
        this.size = newSize;
        this.cx.published.retractFile(this.ino);
        this.mtime = stamp;
        await this.commitDirty({ force: true });
      }
    });
  }

  /** Deletes chunk entries at or above truncFrom in bounded batches, then clears the pending truncate. */
  private async deleteStaleChunks(): Promise<void> {
    const from = this.truncFrom;
    const prefix = K.chunkPrefix(this.ino);
    const after = from > 0 ? K.chunk(this.ino, from - 1) : undefined;
    for (;;) {
      const page = await this.cx.store.scan(prefix, { after, limit: DELETE_BATCH });
      const stale = page.filter(([k]) => chunkIndexOf(k) >= from);
      await transact(this.cx.store, async (tx) => {
        const raw = await tx.get(K.inode(this.ino));
        if (!raw) return;
        const inode = decodeInode(this.ino, raw);
        for (const [key, val] of stale) {
          const old = decodeChunk(val);
          tx.del(key);
          tx.set(K.gc(old.blobId), Buffer.from(String(old.length)));
          inode.stored -= old.length;
        }
        if (stale.length < DELETE_BATCH) inode.truncFrom = 0;
        inode.version++;
        tx.set(K.inode(this.ino), encodeInode(inode));
        if (stale.length) tx.after.push(() => this.cx.kickJanitor());
      });
      if (stale.length < DELETE_BATCH) break;
    }
    this.truncFrom = 0;
  }
}
