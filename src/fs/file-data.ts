/**
 * The data of one open file: its chunks, the write-back buffers that hold changes not yet in the store, and
 * the commit that swaps new blobs into the chunk map.
 *
 * Contract:
 *  - One FileData per inode while any handle (or an internal user such as truncate) holds it; all handles of
 *    the inode share it, so a read sees every write of this mount at once.
 *  - `size` is the file's size as this mount sees it; the store learns it at the next commit.
 *  - Changed chunks live in `dirty` (a chunk-sized buffer each; bytes past `size` are zero). A buffer is whole
 *    (it holds the chunk), or sparse: page-aligned writes to a chunk not in memory fill only their pages
 *    (`sparse` marks which), so they need no load of the committed chunk. A write or truncate that keeps part
 *    of a page the buffer lacks completes it first (the committed bytes fill the pages it lacks). Reads take
 *    what a sparse buffer holds over the committed bytes.
 *  - A commit (`flush`) moves dirty buffers to `flushing` and writes each whole buffer as a new immutable
 *    blob, each sparse one as slices (a small blob per run of written pages, laid over the chunk's committed
 *    blob and slices: schema.ts ChunkEntry), unless the chunk already has many slices: then it is completed and
 *    written whole (compaction). It then swaps all of them into the chunk map in one transaction with the
 *    inode's size and times, putting the blobs nothing names any more on the GC queue. A write that lands on a
 *    flushing chunk copies it first, so a blob is never changed while it is written; the copy's commit sends only
 *    the pages written since (`pending`), and takes the flushing one's too if that commit fails.
 *  - Commits of one file run one at a time (`commitLock`); truncate holds the same lock.
 *  - Memory: dirty and flushing buffers are counted against the WriteBudget; a write that finds the budget
 *    spent commits this file's dirty chunks before it returns.
 */
import type { KvStore } from '../backend/kv.js';
import { StoreError } from '../backend/errors.js';
import { fsErr } from './errors.js';
import {
  K, appendSlices, chunkIndexOf, decodeChunk, decodeInode, encodeEntry, encodeInode, entryBlobs, entryExtent, entryKey,
  entryStored, makeSlice, nowTs, type ChunkEntry, type Inode, type Slice,
} from '../volume/schema.js';
import { transact } from '../volume/txn.js';
import type { Ino, Timespec } from './types.js';
import type { BlobCache } from './blob-cache.js';
import type { Counters } from './counters.js';
import type { Published } from './published.js';

/** How many stale chunk entries one truncate commit deletes: as many as a purge commit (queues.ts). */
import { DELETE_BATCH, queueGc } from '../volume/queues.js';

/** Bytes that moved, for `kvfs status` and the benches: what the store costs per byte a caller read or wrote. */
export interface IoStats {
  /** bytes callers wrote through the core, and bytes of blobs sent to the store for them */
  written: number;
  sent: number;
  /** bytes the core returned to readers, and bytes it fetched from the store for them */
  returned: number;
  fetched: number;
}

/**
 * One chunk of a commit: its flushing buffer and the bytes of it below the size; prepare() sets how it is
 * written (blobId: whole; slices), and the transaction the entry it leaves (undefined: unchanged).
 */
interface CommitPart { idx: number; buf: Buffer; length: number; blobId: string; slices?: Slice[]; entry?: ChunkEntry | null }

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
  /** a commit changed what a file stores (st_blocks) after the kernel last asked: its cached attributes are stale */
  storedChanged(ino: Ino): void;
  /** usage counters (batched) */
  counters: Counters;
  /** NOSPACE when `bytes` more of file data would pass the volume's capacity (src/volume/limits.ts) */
  admit(bytes: number): Promise<void>;
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

/** The unit of sparse write-back buffers and of range reads. */
const PAGE = 4096;

/** the runs of written pages (mask: 1 per written page) that lie below `limit`, clipped to it */
function pageRuns(mask: Uint8Array, limit: number): { off: number; len: number }[] {
  const runs: { off: number; len: number }[] = [];
  for (let p = 0; p < mask.length && p * PAGE < limit; p++) {
    if (!mask[p]) continue;
    const off = p * PAGE;
    while (p + 1 < mask.length && mask[p + 1] && (p + 1) * PAGE < limit) p++;
    runs.push({ off, len: Math.min(limit, (p + 1) * PAGE) - off });
  }
  return runs;
}

/** whether one of `by` covers slice x whole */
function coveredBy(by: readonly { off: number; len: number }[], x: Slice): boolean {
  for (const n of by) if (n.off <= x.off && x.off + x.len <= n.off + n.len) return true;
  return false;
}

/**
 * What a compaction of `old` leaves over its new blob when the entry is now `cur`: cur's slices committed after old
 * (`later`, in order), and `kept`, old's slices cur still holds (the new blob holds their bytes: they go). Commits
 * since old only added slices after its own and dropped some of its that a new one covered; undefined when cur is
 * anything else (another base: a truncate, a whole write, another compaction).
 */
export function laterSlices(old: ChunkEntry, cur: ChunkEntry): { later: Slice[]; kept: Slice[] } | undefined {
  if (cur === old) return { later: [], kept: old.slices ?? [] };
  if (cur.blobId !== old.blobId || cur.length !== old.length) return undefined;
  const mine = new Set((old.slices ?? []).map((x) => x.blobId));
  const later: Slice[] = [];
  const kept: Slice[] = [];
  for (const x of cur.slices ?? []) {
    if (!mine.has(x.blobId)) later.push(x);
    else if (later.length) return undefined; // one of old's after a later one: not how commits change an entry
    else kept.push(x);
  }
  // each of old's slices cur lacks was dropped for a later one that covers it: else the new blob's bytes are not
  // what the entry holds under the later slices
  const named = new Set(kept.map((x) => x.blobId));
  for (const x of old.slices ?? []) if (!named.has(x.blobId) && !coveredBy(later, x)) return undefined;
  return { later, kept };
}

/**
 * What a commit does to an entry's slices when `by` (the new ones) are laid over them: of the last RECENT_SLICES,
 * those `by` covers go (`dropped`) and the rest stay (`kept`, in order, from index `cut` on); older slices stay
 * as they are, covered or not, until a compaction replaces the whole entry. So the stored encoding changes only at
 * its end (the part from `cut` is encoded again, everything before it is kept byte for byte), and a commit costs
 * the same whatever the entry holds: dropping every covered slice took an encoding of the whole entry, and with
 * 4 KiB random writes most commits dropped one (rand-write-4k on local: a commit took 51 us per chunk it wrote,
 * 34 this way; see MAX_SLICES). A page written again and again (a database's header) still leaves one slice.
 */
function layOver(slices: readonly Slice[], by: readonly { off: number; len: number }[]): { cut: number; kept: Slice[]; dropped: Slice[] } {
  let cut = slices.length;
  const kept: Slice[] = [];
  const dropped: Slice[] = [];
  for (let i = Math.max(0, slices.length - RECENT_SLICES); i < slices.length; i++) {
    const x = slices[i]!;
    if (coveredBy(by, x)) {
      cut = Math.min(cut, i);
      dropped.push(x);
    } else if (cut < slices.length) {
      kept.push(x);
    }
  }
  return { cut, kept, dropped };
}
const RECENT_SLICES = 8;

/** an entry's stored encoding (encodeChunk) without its slices from index `cut` on */
function cutSlices(raw: Uint8Array, count: number, cut: number): Uint8Array {
  let end = raw.length;
  const b = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  for (let i = count; i > cut; i--) end = b.lastIndexOf(0x3b, end - 1);
  return raw.subarray(0, end);
}

/** the bytes runs or slices cover, added up */
const lengthOf = (parts: readonly { len: number }[]): number => parts.reduce((n, x) => n + x.len, 0);

/**
 * Copies `count` bytes of committed chunk bytes `data` from `start` to out at `at`; what lies past the end of
 * `data` (a blob shorter than its chunk, or a hole: no data) reads as zeros.
 */
function copyChunkPart(out: Buffer, at: number, data: Uint8Array | undefined, start: number, count: number): void {
  const have = data ? Math.max(0, Math.min(count, data.length - start)) : 0;
  if (have > 0) out.set(data!.subarray(start, start + have), at);
  if (have < count) out.fill(0, at + have, at + count);
}

/**
 * Most chunks one file keeps dirty before a write starts committing them behind it, whole or sparse: sequential
 * writes commit every 4 MiB of 256 KiB chunks, random small writes in batches of this many slices, while the
 * writer goes on (an fsync then finds little left to commit: fio's rand-write-4k, an fsync every 64 writes, on
 * memory: went from 8.7k to 12.2-13.0k IOPS against 64 before; on local: no change within the noise).
 */
const MAX_DIRTY_CHUNKS = 16;

/**
 * A chunk is compacted (written whole, its slices dropped) after the commit that would leave it more slices than
 * this, or slices of a chunk's bytes or more (its base blob then holds nothing it reads), counting what the entry
 * keeps (layOver: the older slices a new one covers stay until then). A chunk's reads combine at most this many
 * blobs (slices are small blobs of an in-process engine, or fetched in parallel) and it takes at most twice its
 * bytes. 4 KiB random writes send the store a slice each, plus a whole chunk about every 64 writes of it:
 * rand-write-4k sent 2.4 to 2.8 bytes per byte written on local (1.5 to 2.1 when every covered slice went at once,
 * which cost an encoding of the whole entry per commit).
 */
const MAX_SLICES = 64;
/**
 * A commit that would pass MAX_SLICES but not this writes slices all the same and leaves the compaction to a commit
 * of its own right after (compactBehind), so that an fsync waits for neither the chunk's load nor a whole blob.
 */
const MAX_SLICES_BEHIND = 2 * MAX_SLICES;

/** the stored encoding of a chunk map entry this mount decoded or encoded (FileData.decodeEntry) */
const rawOf = new WeakMap<ChunkEntry, Uint8Array>();

export class FileData {
  refs = 0;
  size: number;
  /** pending mtime/ctime of writes not yet committed */
  mtime: Timespec | undefined;
  /** set when the last link went away while open: the last release removes the file instead of committing */
  unlinked = false;
  private readonly dirty = new Map<number, Buffer>();
  private readonly flushing = new Map<number, Buffer>();
  /** the pages (1: written) of each sparse write-back buffer; a buffer not here holds its whole chunk */
  private readonly sparse = new WeakMap<Buffer, Uint8Array>();
  /**
   * the pages of each sparse buffer its commit sends: those written since it was made. A buffer made from a flushing
   * one holds that one's pages too (reads need them), but they are that one's commit's to send, not its own (sent
   * again, they doubled the bytes random writes sent, and the slices every commit made)
   */
  private readonly pending = new WeakMap<Buffer, Uint8Array>();
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
  /** chunks a commit left for compaction (MAX_SLICES_BEHIND), and the commit that compacts them */
  private readonly toCompact = new Set<number>();
  private compacting: Promise<void> | undefined;

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
    if (this.dirty.size || this.flushing.size || this.activeWrites || this.truncating || this.mtime !== undefined) return false;
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
    const idxs: number[] = [];
    for (let idx = first; idx < last; idx++) {
      if (this.dirty.has(idx) || this.flushing.has(idx) || (idx !== first && this.cx.published.has(this.ino, idx))) continue;
      idxs.push(idx);
    }
    const fetch = () => {
      for (const idx of idxs) this.fetchAhead(idx, gen, idx === first).catch(() => undefined);
    };
    // the chunk map entries the window needs, in one store call rather than one each
    const unknown = idxs.filter((idx) => !this.entries.has(idx));
    if (unknown.length > 1) this.loadEntries(unknown).then(fetch, fetch);
    else fetch();
    this.aheadFrom = first;
    this.aheadTo = last * cs;
  }

  /**
   * One chunk of the read-ahead window: published as its blob file when the store keeps it as one (the driver's
   * readers then read the file themselves: no copy through JavaScript, no blob cached), else fetched and
   * published from memory.
   */
  private async fetchAhead(idx: number, gen: number, mark: boolean): Promise<void> {
    if (this.cx.published.takesFiles && this.cx.store.blobFile) {
      const e = await this.entry(idx, false);
      if (e && !e.slices?.length && this.publishFile(idx, gen, mark)) return;
    }
    const { data, blobId } = await this.storedChunk(idx);
    this.publish(idx, gen, blobId, data, mark);
  }

  /** the driver served a READ from the marked first chunk of the read-ahead window: publish the next one */
  readAheadHint(idx: number): void {
    if (idx === this.aheadFrom && this.aheadTo > 0 && this.aheadTo < this.size) this.readAhead(this.aheadTo);
  }

  /** copies chunk idx's bytes [from, to) to out at `at` if they are in memory now; false when they are not */
  private readCached(idx: number, from: number, to: number, out: Buffer, at: number): boolean {
    const mem = this.dirty.get(idx) ?? this.flushing.get(idx);
    if (mem) {
      if (!this.holds(mem, from, to)) return false;
      mem.copy(out, at, from, to);
      return true;
    }
    if (this.truncFrom && idx >= this.truncFrom) return false;
    const e = this.entries.get(idx);
    if (e === undefined) return false;
    const data = e === null ? undefined : this.cx.blobs.peek(entryKey(e));
    // (a cached blob shorter than its entry says is a damaged one: the store read tells, whole())
    if (e !== null && (!data || data.length < e.length)) return false;
    copyChunkPart(out, at, data, from, to - from);
    this.publish(idx, this.truncations, e ? entryKey(e) : null, data);
    return true;
  }

  /** whether a write-back buffer holds bytes [from, to) of its chunk (a sparse one: on its written pages) */
  private holds(buf: Buffer, from: number, to: number): boolean {
    const m = this.sparse.get(buf);
    if (!m) return true;
    for (let p = Math.floor(from / PAGE); p * PAGE < to; p++) if (!m[p]) return false;
    return true;
  }

  /** copies what a write-back buffer holds of [from, to) to out at `at`: all of it, or a sparse one's written pages */
  private overlay(buf: Buffer, from: number, to: number, out: Buffer, at: number): void {
    const m = this.sparse.get(buf);
    if (!m) {
      buf.copy(out, at, from, to);
      return;
    }
    for (let p = Math.floor(from / PAGE); p * PAGE < to; p++) {
      if (!m[p]) continue;
      const a = Math.max(from, p * PAGE);
      buf.copy(out, at + a - from, a, Math.min(to, (p + 1) * PAGE));
    }
  }

  /**
   * Offers chunk idx's committed bytes to the driver's read index (published.ts), if they are still what the
   * chunk holds now: no write-back copy, no truncate since the read began (gen), the same chunk map entry,
   * and bytes the blob cache (or an in-process store) keeps.
   */
  private publish(idx: number, gen: number, blobId: string | null, data: Uint8Array | undefined, mark = false): void {
    const pub = this.cx.published;
    if (!pub.active || !this.publishable(idx, gen)) return;
    const e = this.entries.get(idx);
    if (e === undefined || (e === null ? blobId !== null : entryKey(e) !== blobId)) return;
    if (blobId !== null && (!data || !this.cx.blobs.keeps(blobId, data))) return;
    pub.publish(this.ino, this.size, this.cx.chunkSize, idx, blobId, blobId === null ? null : data!, mark);
  }

  /**
   * Whether chunk idx's committed bytes are what it holds now, as far as this mount's own state tells: no
   * truncate since a read began (gen), no write-back copy, and inside the file (not past a pending truncate).
   */
  private publishable(idx: number, gen: number): boolean {
    if (gen !== this.truncations || this.dirty.has(idx) || this.flushing.has(idx)) return false;
    return !(this.truncFrom && idx >= this.truncFrom) && idx * this.cx.chunkSize < this.size;
  }

  /**
   * Offers chunk idx's committed blob to the driver as a file (the store names one, and it is one blob without
   * slices), so that the driver's readers answer the next reads of the chunk themselves, with no copy through
   * JavaScript and no blob cached: after a ranged read, and for read-ahead. The same conditions as publish().
   * Returns whether the chunk is published (as a file, or already, unless a mark is to be set).
   */
  private publishFile(idx: number, gen: number, mark = false): boolean {
    const pub = this.cx.published;
    if (!pub.takesFiles || !this.cx.store.blobFile || !this.publishable(idx, gen)) return false;
    if (!mark && pub.has(this.ino, idx)) return true;
    const e = this.entries.get(idx);
    if (!e || e.slices?.length) return false;
    const path = this.cx.store.blobFile(K.blob(e.blobId), e.length);
    if (!path) return false;
    pub.publishFile(this.ino, this.size, this.cx.chunkSize, idx, path, e.length, mark);
    return true;
  }

  /**
   * Bytes [from, to) of chunk idx to out at `at`: from the write-back buffer when it holds them, else the
   * committed bytes (only the pages asked for when `ranged`) with what a write-back buffer holds laid over them.
   * A commit or truncate that changed the chunk map while the committed bytes were fetched makes the read start
   * again: a sparse buffer seen before may have been committed meanwhile, into an entry the fetch did not see.
   */
  private async readChunkInto(idx: number, from: number, to: number, out: Buffer, at: number, ranged = false): Promise<void> {
    for (;;) {
      const mem = this.dirty.get(idx) ?? this.flushing.get(idx);
      if (mem && this.holds(mem, from, to)) {
        mem.copy(out, at, from, to);
        return;
      }
      const gen = this.truncations;
      const changes = this.mapChanges;
      let blobId: string | null = null;
      let data: Uint8Array | undefined;
      let lo = 0;
      if (ranged && !mem) {
        lo = from - (from % PAGE);
        const hi = Math.min(this.cx.chunkSize, Math.ceil(to / PAGE) * PAGE);
        ({ data } = await this.fromEntry(idx, (e) => this.composeRange(e, lo, hi)));
        this.cx.io.fetched += data?.length ?? 0;
      } else {
        ({ data, blobId } = await this.storedChunk(idx));
      }
      if (changes !== this.mapChanges) continue;
      copyChunkPart(out, at, data, from - lo, to - from);
      // A write may have made the chunk dirty while we fetched: what it holds is newer.
      const newer = this.dirty.get(idx) ?? this.flushing.get(idx);
      if (newer) this.overlay(newer, from, to, out, at);
      else if (!ranged || mem) this.publish(idx, gen, blobId, data);
      else this.publishFile(idx, gen);
      return;
    }
  }

  /** The committed bytes of chunk idx (possibly shorter than a chunk) and their id (entryKey); a hole has neither. */
  private async storedChunk(idx: number): Promise<{ data?: Uint8Array; blobId: string | null }> {
    return this.fromEntry(idx, (e) => this.compose(e));
  }

  /**
   * `fetch` applied to chunk idx's committed entry ({ blobId: null } for a hole). A blob replaced and collected
   * after the chunk map was read is missing (fetch gives undefined): the map is read again, twice at most.
   */
  private async fromEntry(idx: number, fetch: (e: ChunkEntry) => Promise<Uint8Array | undefined>): Promise<{ data?: Uint8Array; blobId: string | null }> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const e = await this.entry(idx, attempt > 0);
      if (!e) return { blobId: null };
      const data = await fetch(e);
      if (data) return { data, blobId: entryKey(e) };
    }
    throw new StoreError('CORRUPT', `file ${this.ino} chunk ${idx}: its blob is missing from the store`);
  }

  /**
   * The bytes an entry defines: its blob, or (with slices) its blob with the slices laid over it, kept in the
   * blob cache under the entry's key unless `cached` is false. Undefined when a blob is missing.
   */
  private async compose(e: ChunkEntry, cached = true): Promise<Uint8Array | undefined> {
    const slices = e.slices;
    if (!slices?.length) return this.whole(await this.cx.blobs.get(e.blobId), e.length, e.blobId);
    // (the key is the entry's whole text: a compaction, whose entry is about to go, neither looks nor keeps)
    const key = cached ? entryKey(e) : undefined;
    const hit = key === undefined ? undefined : this.cx.blobs.peek(key);
    if (hit) return hit;
    const parts = await Promise.all([e.blobId ? this.cx.blobs.get(e.blobId) : undefined, ...slices.map((x) => this.cx.blobs.getPart(x.blobId))]);
    if ((e.blobId && !parts[0]) || parts.some((b, i) => i > 0 && !b)) return undefined;
    if (e.blobId) this.whole(parts[0], e.length, e.blobId);
    slices.forEach((x, i) => this.whole(parts[i + 1], x.len, x.blobId));
    const out = Buffer.allocUnsafe(entryExtent(e));
    copyChunkPart(out, 0, parts[0], 0, out.length);
    slices.forEach((x, i) => copyChunkPart(out, x.off, parts[i + 1], 0, x.len));
    if (key !== undefined) this.cx.blobs.add(key, out);
    return out;
  }

  /**
   * `data`, a blob (or a range of one) that must hold `want` bytes: one that holds fewer (a blob file cut short: a
   * damaged store) is CORRUPT, never read as if its missing bytes were zeros, and leaves the blob cache (which
   * took it on the way). Undefined (missing) passes.
   */
  private whole<T extends Uint8Array | undefined>(data: T, want: number, blobId: string): T {
    if (data && data.length < want) {
      this.cx.blobs.evict(blobId);
      throw new StoreError('CORRUPT', `file ${this.ino}: blob ${blobId} holds ${data.length} bytes where the chunk map says ${want}`);
    }
    return data;
  }

  /** bytes [lo, hi) of what an entry defines, fetched alone (KvStore.getRange); undefined when a blob is missing */
  private async composeRange(e: ChunkEntry, lo: number, hi: number): Promise<Uint8Array | undefined> {
    // (a blob holds `length` bytes: a range of it ends there)
    const range = async (id: string, length: number, off: number, len: number) =>
      this.whole(await this.cx.store.getRange!(K.blob(id), off, len), Math.max(0, Math.min(len, length - off)), id);
    if (!e.slices?.length) return range(e.blobId, e.length, lo, hi - lo);
    // each slice's part inside [lo, hi): from `a` to `b` of the chunk
    const over = e.slices.map((x) => ({ x, a: Math.max(lo, x.off), b: Math.min(hi, x.off + x.len) })).filter((o) => o.a < o.b);
    const parts = await Promise.all([
      e.blobId && lo < e.length ? range(e.blobId, e.length, lo, Math.min(hi, e.length) - lo) : Promise.resolve(Buffer.alloc(0)),
      ...over.map(({ x, a, b }) => range(x.blobId, x.len, a - x.off, b - a)),
    ]);
    if (parts.some((p) => !p)) return undefined;
    const out = Buffer.allocUnsafe(hi - lo);
    copyChunkPart(out, 0, parts[0], 0, out.length);
    over.forEach(({ a, b }, i) => copyChunkPart(out, a - lo, parts[i + 1], 0, b - a));
    return out;
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
      const e = raw ? this.decodeEntry(idx, raw) : null;
      this.entries.set(idx, e);
      return e;
    }
  }

  /** the committed entries of chunks idxs, read in one store call into the entries entry() keeps */
  private async loadEntries(idxs: readonly number[]): Promise<void> {
    const changes = this.mapChanges;
    const raws = await this.cx.store.getMany(idxs.map((idx) => K.chunk(this.ino, idx)));
    if (changes !== this.mapChanges) return;
    idxs.forEach((idx, i) => {
      if (this.entries.has(idx) || (this.truncFrom && idx >= this.truncFrom)) return;
      const raw = raws[i];
      this.entries.set(idx, raw ? this.decodeEntry(idx, raw) : null);
    });
  }

  /**
   * A stored chunk map entry decoded: the cached entry of chunk idx when raw is the encoding it was decoded from or
   * encoded to (a commit reads every entry it changes again: most are the ones it wrote before), else decoded anew.
   */
  private decodeEntry(idx: number, raw: Uint8Array): ChunkEntry {
    const e = this.entries.get(idx);
    const known = e ? rawOf.get(e) : undefined;
    if (known && Buffer.from(known.buffer, known.byteOffset, known.byteLength).equals(raw)) return e!;
    const out = decodeChunk(raw);
    rawOf.set(out, raw);
    return out;
  }

  /** the stored encoding `raw` of an entry with `added` slices after its own: `next`'s encoding, remembered for decodeEntry */
  private appendEntry(raw: Uint8Array, next: ChunkEntry, added: readonly Slice[]): Uint8Array {
    const out = appendSlices(raw, added);
    rawOf.set(next, out);
    return out;
  }

  /** an entry's stored encoding: the one it was decoded from or encoded to when known, else encoded */
  private storedEntry(e: ChunkEntry): Uint8Array {
    return rawOf.get(e) ?? encodeEntry(e);
  }

  /** encodeEntry, remembered for decodeEntry */
  private encodeEntry(e: ChunkEntry): Uint8Array {
    const raw = encodeEntry(e);
    rawOf.set(e, raw);
    return raw;
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
      await this.writable(idx, from - base, to - base, (buf) => {
        src.copy(buf, from - base, from - offset, to - offset);
        if (to > this.size) {
          this.size = to;
          this.cx.published.setSize(this.ino, to);
        }
      });
    }
  }

  /**
   * Applies `change`, which writes bytes [from, to) of chunk idx, to its dirty buffer. A chunk not in memory
   * gets a zeroed buffer when it lies past the end of the file or the change covers it, else a sparse one; a
   * change that keeps part of a page the buffer lacks (below the size) completes it first, and so does every
   * change when `whole` (a truncate: the chunk's blob then holds nothing past the new size). `change` runs
   * synchronously with the check, so no reader ever sees a buffer that is not yet filled. Bytes loaded before a
   * truncate are never used after it.
   */
  private async writable(idx: number, from: number, to: number, change: (b: Buffer) => void, whole = false): Promise<void> {
    const cs = this.cx.chunkSize;
    for (;;) {
      const d = this.dirty.get(idx);
      if (d) {
        if (whole ? !this.sparse.has(d) : this.keeps(d, idx * cs, from, to)) {
          this.markWritten(d, from, to);
          change(d);
          return;
        }
        await this.complete(idx, d);
        continue;
      }
      const flushingBuf = this.flushing.get(idx);
      const covered = from === 0 && to === cs;
      const fresh = !flushingBuf && (covered || idx * cs >= this.size);
      const b = this.cx.buffers.take(fresh && !covered);
      if (flushingBuf) {
        flushingBuf.copy(b);
        const m = this.sparse.get(flushingBuf);
        if (m) {
          this.sparse.set(b, m.slice());
          this.pending.set(b, new Uint8Array(cs / PAGE));
        }
      } else if (!fresh) {
        this.sparse.set(b, new Uint8Array(cs / PAGE));
        this.pending.set(b, new Uint8Array(cs / PAGE));
      }
      this.adopt(idx, b);
    }
  }

  /**
   * Whether bytes [from, to) of a dirty buffer can be written as it is: it is whole, or the parts of the first
   * and last pages that the write keeps are held already or lie past the end of the file (zeros).
   */
  private keeps(d: Buffer, base: number, from: number, to: number): boolean {
    const m = this.sparse.get(d);
    if (!m) return true;
    const first = Math.floor(from / PAGE);
    const last = Math.floor((to - 1) / PAGE);
    if (from % PAGE && !m[first] && base + first * PAGE < this.size) return false;
    if (to % PAGE && !m[last] && base + to < this.size) return false;
    return true;
  }

  /**
   * marks the pages of [from, to) written in a sparse buffer, and to be sent by its commit; what they newly hold
   * outside [from, to) is zeros
   */
  private markWritten(d: Buffer, from: number, to: number): void {
    const m = this.sparse.get(d);
    if (!m) return;
    const send = this.pending.get(d)!;
    for (let p = Math.floor(from / PAGE); p * PAGE < to; p++) {
      send[p] = 1;
      if (m[p]) continue;
      d.fill(0, p * PAGE, from);
      d.fill(0, to, (p + 1) * PAGE);
      m[p] = 1;
    }
  }

  /**
   * Fills the pages a sparse buffer lacks with the committed bytes: it then holds its whole chunk. When the
   * buffer stopped being the chunk's dirty one, or a truncate ran, meanwhile, nothing changes (callers look again).
   */
  private async complete(idx: number, d: Buffer): Promise<void> {
    const gen = this.truncations;
    const { data } = await this.storedChunk(idx);
    const m = this.sparse.get(d);
    if (!m || gen !== this.truncations || (this.dirty.get(idx) !== d && this.flushing.get(idx) !== d)) return;
    for (let p = 0; p < m.length; p++) if (!m[p]) copyChunkPart(d, p * PAGE, data, p * PAGE, PAGE);
    this.sparse.delete(d);
    this.pending.delete(d);
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
    this.release(b);
  }

  /** a write-back buffer back to the recycler */
  private release(b: Buffer): void {
    this.sparse.delete(b);
    this.pending.delete(b);
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
    return this.serial(() => this.commitDirty({})).then(() => {
      this.markIfClean();
      if (this.toCompact.size && !this.compacting) setImmediate(() => this.compactBehind());
    });
  }

  /**
   * Compacts the chunks commits left with many slices (MAX_SLICES_BEHIND), off the commit path: the bytes each
   * chunk's entry defines (unchanged: no time changes) are written as one blob and made durable on their own
   * (KvStore.syncBlobs; an fsync meanwhile waits for neither), and only then one commit puts the new blob in the
   * place of the composed part of each entry, the old blobs still named to the GC queue: slices committed meanwhile
   * stay over it (laterSlices). An entry changed otherwise (a truncate, a whole write) keeps its slices and the new
   * blob goes. A failure leaves the slices (they are correct).
   */
  private compactBehind(): void {
    // only while open: a FileData let go (refs 0) may have a successor with newer slices
    if (this.compacting || !this.toCompact.size || this.unlinked || this.refs === 0) return;
    this.compacting = this.compactChunks([...this.toCompact])
      .catch(() => undefined)
      .finally(() => { this.compacting = undefined; });
    this.toCompact.clear();
  }

  private async compactChunks(idxs: number[]): Promise<void> {
    const { store } = this.cx;
    // base: the entry of the new blob alone; next: what the commit leaves (base, with slices committed meanwhile)
    const made: { idx: number; old: ChunkEntry; base: ChunkEntry; next?: ChunkEntry; data: Uint8Array; raw: Uint8Array; applied?: boolean }[] = [];
    try {
      for (const idx of idxs) {
        if (this.unlinked || this.refs === 0) break;
        const old = await this.entry(idx, false);
        if (!old?.slices?.length) continue;
        const data = await this.compose(old, false);
        if (!data) continue;
        const base = { length: data.length, blobId: this.cx.newBlobId() };
        made.push({ idx, old, base, data, raw: this.storedEntry(old) });
        this.cx.io.sent += data.length;
        await store.put(K.blob(base.blobId), data, { syncApart: true });
      }
      if (!made.length) return;
      await (store.syncBlobs ? store.syncBlobs(made.map((m) => K.blob(m.base.blobId))) : store.sync());
      await this.serial(async () => {
        let storedChange = 0;
        await transact(store, async (tx) => {
          storedChange = 0;
          for (const m of made) m.applied = false;
          const raw = await tx.get(K.inode(this.ino));
          if (!raw) throw fsErr('ESTALE', `file ${this.ino} is gone`);
          const inode = decodeInode(this.ino, raw);
          const storedBefore = inode.stored;
          for (const m of made) {
            const raw = await tx.get(K.chunk(this.ino, m.idx));
            if (!raw) continue;
            // the entry composed, or it with slices committed after it (the new blob takes the place of the
            // composed part; the later slices stay over it); any other change keeps the slices
            const cur = Buffer.from(raw).equals(m.raw) ? m.old : this.decodeEntry(m.idx, raw);
            const over = laterSlices(m.old, cur);
            if (!over) continue;
            const next: ChunkEntry = over.later.length ? { length: m.base.length, blobId: m.base.blobId, slices: over.later } : m.base;
            m.next = next;
            tx.set(K.chunk(this.ino, m.idx), this.encodeEntry(next));
            // the old base and the old slices still named (those a later slice covered went to the GC queue then)
            if (m.old.blobId) queueGc(tx, m.old.blobId, m.old.length);
            for (const x of over.kept) queueGc(tx, x.blobId, x.len);
            inode.stored += entryStored(next) - entryStored(cur);
            m.applied = true;
          }
          if (!made.some((m) => m.applied)) return;
          inode.version++;
          storedChange = inode.stored - storedBefore;
          tx.set(K.inode(this.ino), encodeInode(inode));
          tx.after.push(() => this.cx.kickJanitor());
        });
        const applied = made.filter((m) => m.applied);
        // the volume's byte count takes the new blobs now, and gives the old ones back as they are collected
        this.cx.counters.add(K.byteCount, applied.reduce((n, m) => n + m.base.length, 0));
        for (const m of applied) {
          this.entries.set(m.idx, m.next!);
          // the chunk's bytes as its new blob holds them: the next read of it needs no fetch
          this.cx.blobs.add(m.base.blobId, m.data);
        }
        this.mapChanges++;
        if (storedChange) this.cx.storedChanged(this.ino);
      });
    } finally {
      // the blobs of entries that changed meanwhile (or of a compaction that failed) name nothing
      const unused = made.filter((m) => !m.applied).map((m) => K.blob(m.base.blobId));
      if (unused.length) await store.del(unused).catch(() => undefined);
    }
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
    const batch: CommitPart[] = [];
    for (const [idx, buf] of this.dirty) {
      this.dirty.delete(idx);
      this.flushing.set(idx, buf);
      batch.push({ idx, buf, length: Math.max(0, Math.min(cs, this.size - idx * cs)), blobId: '' });
    }
    const mtime = this.mtime;
    const size = this.size;
    try {
      await Promise.all(batch.map((c) => this.prepare(c)));
      // the volume's quota: new data is refused past it; a shrinking truncate only ever frees space
      if (extra.truncFrom === undefined) await this.cx.admit(batch.reduce((n, c) => n + (c.slices ? lengthOf(c.slices) : c.length), 0));
      const puts: [string, Uint8Array][] = [];
      for (const c of batch) {
        if (c.blobId) puts.push([c.blobId, c.buf.subarray(0, c.length)]);
        for (const x of c.slices ?? []) puts.push([x.blobId, c.buf.subarray(x.off, x.off + x.len)]);
      }
      // every put settles before the buffers can change again (they go back to dirty on a failure; kv.ts)
      const sent = await Promise.allSettled(puts.map(([id, bytes]) => {
        this.cx.io.sent += bytes.length;
        return this.cx.store.put(K.blob(id), bytes);
      }));
      const failed = sent.find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
      let added = 0;
      let storedBefore = 0;
      let storedAfter = 0;
      await transact(this.cx.store, async (tx) => {
        added = 0;
        // the inode and every chunk's entry in one read
        const keys = batch.map((c) => K.chunk(this.ino, c.idx));
        const [raw, ...oldRaws] = await tx.getMany([K.inode(this.ino), ...keys]);
        if (!raw) throw fsErr('ESTALE', `file ${this.ino} is gone`);
        const inode = decodeInode(this.ino, raw);
        storedBefore = inode.stored;
        for (const [i, c] of batch.entries()) {
          const key = keys[i]!;
          const oldRaw = oldRaws[i];
          const old = oldRaw ? this.decodeEntry(c.idx, oldRaw) : null;
          c.entry = old;
          let next: ChunkEntry | null;
          if (c.slices) {
            // slices over what the chunk holds; of the recent ones, those a new one covers go (layOver): the stored
            // encoding is kept up to the first that changes, and only what follows is encoded
            if (!c.slices.length) continue;
            const olds = old?.slices ?? [];
            const { cut, kept, dropped } = layOver(olds, c.slices);
            for (const x of dropped) queueGc(tx, x.blobId, x.len);
            const freed = lengthOf(dropped);
            const tail = [...kept, ...c.slices];
            next = { length: old?.length ?? 0, blobId: old?.blobId ?? '', slices: [...olds.slice(0, cut), ...tail] };
            const adds = lengthOf(c.slices);
            tx.set(key, oldRaw ? this.appendEntry(cutSlices(oldRaw, olds.length, cut), next, tail) : this.encodeEntry(next));
            inode.stored += adds - freed;
            added += adds;
          } else {
            next = c.length ? { length: c.length, blobId: c.blobId } : null;
            if (old) {
              for (const b of entryBlobs(old)) queueGc(tx, b.blobId, b.length);
              inode.stored -= entryStored(old);
            }
            if (next) {
              tx.set(key, this.encodeEntry(next));
              inode.stored += c.length;
              added += c.length;
            } else if (oldRaw) {
              tx.del(key);
            }
          }
          c.entry = next;
        }
        inode.size = size;
        if (mtime) {
          inode.mtime = mtime;
          inode.ctime = mtime;
        }
        if (extra.truncFrom !== undefined) inode.truncFrom = extra.truncFrom;
        inode.version++;
        storedAfter = inode.stored;
        tx.set(K.inode(this.ino), encodeInode(inode));
        if (batch.length) tx.after.push(() => this.cx.kickJanitor());
      });
      this.cx.counters.add(K.byteCount, added);
      if (storedAfter !== storedBefore) this.cx.storedChanged(this.ino);
      for (const c of batch) if (c.entry !== undefined) this.entries.set(c.idx, c.entry);
      this.mapChanges++;
      if (this.mtime === mtime) this.mtime = undefined;
    } catch (e) {
      // Nothing was committed: the chunks go back to dirty unless a newer write already replaced them.
      for (const c of batch) {
        this.flushing.delete(c.idx);
        const newer = this.dirty.get(c.idx);
        if (!newer) {
          this.dirty.set(c.idx, c.buf);
          continue;
        }
        // the newer buffer holds these pages too; its commit now sends them (a whole one sends everything)
        const mine = this.pending.get(c.buf);
        const its = this.pending.get(newer);
        if (mine && its) for (let p = 0; p < mine.length; p++) its[p] ||= mine[p]!;
        this.release(c.buf);
      }
      throw e;
    }
    for (const c of batch) this.drop(this.flushing, c.idx);
  }

  /**
   * Decides how a flushing chunk is written: whole (a new blob of its bytes below the size), or, for a sparse
   * buffer, as slices (a blob per run of written pages below the size). A sparse chunk whose entry has slices
   * enough already is completed and written whole (compaction).
   */
  private async prepare(c: CommitPart): Promise<void> {
    const m = this.pending.get(c.buf);
    if (m && c.length) {
      const e = await this.entry(c.idx, false);
      const runs = pageRuns(m, c.length);
      // what the entry will hold: its slices but the recent ones the new ones cover (layOver), and the new ones
      const olds = e?.slices ?? [];
      const { dropped } = layOver(olds, runs);
      const count = olds.length - dropped.length + runs.length;
      const bytes = lengthOf(olds) - lengthOf(dropped) + lengthOf(runs);
      // a run of a quarter chunk or more (a sequential writer that met a commit of its chunk part-way) is
      // compacted behind: the chunk's reads are then one blob's, which the driver's readers serve from its file
      const large = runs.some((r) => r.len >= this.cx.chunkSize / 4);
      if (count <= MAX_SLICES && bytes < this.cx.chunkSize && !large) {
        c.slices = runs.map((r) => makeSlice(r.off, r.len, this.cx.newBlobId()));
        return;
      }
      if (count <= MAX_SLICES_BEHIND && bytes <= 2 * this.cx.chunkSize) {
        c.slices = runs.map((r) => makeSlice(r.off, r.len, this.cx.newBlobId()));
        this.toCompact.add(c.idx);
        return;
      }
      await this.complete(c.idx, c.buf);
      if (this.sparse.has(c.buf)) throw new StoreError('UNAVAILABLE', `file ${this.ino} chunk ${c.idx}: it changed while it was compacted; try again`);
    }
    if (c.length) c.blobId = this.cx.newBlobId();
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
          await this.writable(idx, newSize % cs, cs, (b) => b.fill(0, newSize % cs), true);
        }
        this.size = newSize;
        // From here the chunks past the end are holes (until deleteStaleChunks removes them from the store):
        // entries read before, even during the await above, are forgotten, and reads still in flight discarded.
        this.truncFrom = keep;
        this.forgetEntries(keep);
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

  /** forgets the cached chunk map entries at or above `from`; reads of the map in flight are discarded */
  private forgetEntries(from: number): void {
    for (const idx of [...this.entries.keys()]) if (idx >= from) this.entries.delete(idx);
    this.mapChanges++;
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
          for (const b of entryBlobs(old)) queueGc(tx, b.blobId, b.length);
          inode.stored -= entryStored(old);
        }
        if (stale.length < DELETE_BATCH) inode.truncFrom = 0;
        inode.version++;
        tx.set(K.inode(this.ino), encodeInode(inode));
        if (stale.length) tx.after.push(() => this.cx.kickJanitor());
      });
      if (stale.length) this.cx.storedChanged(this.ino);
      if (stale.length < DELETE_BATCH) break;
    }
    this.truncFrom = 0;
    // Entries read while the stale ones were still in the store (a truncate to 0 leaves truncFrom 0, which
    // hides nothing) are forgotten now that they are gone, and reads of the map still in flight discarded.
    this.forgetEntries(from);
  }
}
