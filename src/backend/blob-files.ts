/**
 * Blob files: the embedded engine keeps blob values (keys `b/<id>`, kv.ts) as one file each, beside LMDB, which
 * keeps only metadata. LMDB stores a large value in a run of contiguous overflow pages and looks for such runs in
 * its free list, which degrades as large values are rewritten and freed (the write rate of a rewritten 1 GiB fell
 * to a fifth); a file per blob leaves allocation to the filesystem, and its I/O runs on libuv's threads, never on
 * the event loop.
 *
 * Layout: DIR/blobs/<ff>/<id>, where <ff> is two hex digits of a hash of the id (256 directories). An id is any
 * text without '/' and NUL of 1..255 bytes but `.` and `..` (the kv.ts rule for the part after a collection).
 *
 * Rules:
 *  1. put writes the whole file (O_TRUNC; a blob is written once, before any commit names it) and resolves once
 *     it is in the page cache: it then survives a kill -9 of the process. A put that did not resolve may leave a
 *     partial file that nothing names (a leak for a collector, never a dangling name).
 *  2. sync makes every file written since the last sync durable (fdatasync each, then fsync the directories that
 *     gained entries; from SYNCFS_FROM files on, one syncfs(2) of the filesystem instead: a file each costs its
 *     own journal commit, where one syncfs commits them all at once) before it returns; the engine syncs blob
 *     files before its metadata, so metadata durable on disk never names a blob that is not. A file put apart
 *     (compaction's, which no metadata names until its writer made it durable with syncOnly) is neither waited
 *     for nor synced: an fsync of the volume does not pay for a compaction running beside it.
 *  3. del unlinks, or keeps the file as a spare (below); a missing file is not an error. Deletes need not be
 *     durable (a file back after a crash is named by nothing: a leak, never wrong data).
 *  4. Reads of a blob that has no file fall back to `legacy` (blobs that an older layout kept inside LMDB).
 *  5. Spares: a deleted file is renamed into DIR/blobs/spare/ (up to SPARE_BYTES of them, and only while the
 *     store's owner says the disk has room: `spareWhen`), and a later put renames one over its path and overwrites
 *     it. A new file's first write costs fresh page-cache pages and, at writeback, new extents with a journal
 *     commit (a 1 GiB write of new 256 KiB files ran at a third of the rate of the same files overwritten, syncs
 *     included); a spare's pages and blocks exist. A file being read by this process (get, getRange) is never made
 *     a spare (a read through an open descriptor would see the next blob's bytes); the driver's readers read a blob
 *     file only while it is published, and a chunk is retracted before the commit that puts its blob on the GC
 *     queue. Spares are found again at open; releaseSpares unlinks them all (the owner's gate, when the disk is
 *     short). Puts and deletes run in the native addon, one trip off the event loop each (blob-io.h); without it,
 *     node:fs and no spares.
 */
import { mkdirSync } from 'node:fs';
import { open, opendir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { constants } from 'node:os';
import { join } from 'node:path';
import { StoreError } from './errors.js';
import { errnoName, native, type Addon } from '../native.js';

export const BLOB_PREFIX = 'b/';

/** the directory under blobs/ that holds spares (rule 5): not two hex digits, so never a blob's */
const SPARE_DIR = 'spare';

/** at most this many files are fsynced at once */
const SYNC_PARALLEL = 16;

/**
 * From this many files to sync on, one syncfs(2) of the filesystem holding them: 4,096 blob files of 256 KiB
 * (a 1 GiB write) took 760 ms to fdatasync one by one here and about 400 ms as one file. It also writes out
 * what other programs left dirty on that filesystem, so a few files are synced one by one.
 */
const SYNCFS_FROM = 64;

/** spares kept at most (bytes): a GC that lags the writes by this much still hands every put a spare */
const SPARE_BYTES = 256 << 20;

export interface BlobFilesOptions {
  /** whether the disk has room for spares now (asked at each delete; default: yes) */
  spareWhen?: () => boolean;
}

/** a file kept for reuse (rule 5) */
interface Spare { path: string; size: number }

/** the addon, or undefined when it cannot be loaded (node:fs then, and no spares) */
function addonOrNone(): Addon | undefined {
  try {
    return native();
  } catch {
    return undefined;
  }
}

export class BlobFiles {
  readonly root: string;
  /** files written since the last sync began, and the directories they went into */
  #unsynced = new Set<string>();
  #dirsUnsynced = new Set<string>();
  /** puts under way (close and sync wait for them) */
  readonly #writing = new Set<Promise<unknown>>();
  /** syncs under way */
  readonly #syncing = new Set<Promise<void>>();
  #dirsMade = new Set<string>();
  /** bytes of the blob files: those found at open (counted in the background) and those written since */
  #bytes = 0;
  /** paths put or deleted while the files found at open are being counted (the count skips them) */
  #touched: Set<string> | undefined = new Set();
  readonly #addon = addonOrNone();
  readonly #spareDir: string;
  readonly #spareWhen: () => boolean;
  /** spares ready for puts (a put takes the last), and their bytes */
  #spares: Spare[] = [];
  #spareBytes = 0;
  /** resolves once the spares left by earlier opens are taken up (spareBytes counts them from then on) */
  readonly sparesFound: Promise<void>;
  /** names of this open's spares: a prefix of its own (those found at open keep theirs), and a count */
  readonly #sparePrefix = `${process.pid}.${Date.now().toString(36)}.`;
  #spareSeq = 0;
  /** paths this process is reading (get, getRange), with how many reads each: never made spares */
  readonly #reading = new Map<string, number>();

  constructor(dir: string, opts: BlobFilesOptions = {}) {
    this.root = join(dir, 'blobs');
    this.#spareDir = join(this.root, SPARE_DIR);
    this.#spareWhen = opts.spareWhen ?? (() => true);
    mkdirSync(this.#spareDir, { recursive: true });
    this.sparesFound = this.#findSpares();
    void this.sparesFound.then(() => this.#countBytes());
  }

  /** takes up the spares earlier opens left (rule 5), off the event loop's critical path */
  async #findSpares(): Promise<void> {
    try {
      for (const name of await readdir(this.#spareDir)) {
        if (name.startsWith(this.#sparePrefix)) continue; // made since this open: known already
        const path = join(this.#spareDir, name);
        const size = await stat(path).then((s) => s.size, () => -1);
        if (size < 0) continue;
        if (this.#addon && this.#spareBytes + size <= SPARE_BYTES) this.#addSpare(path, size);
        else await rm(path, { force: true });
      }
    } catch { /* no spares */ }
  }

  /** adds up the blob files there at open (a walk of every file: after the spares, in the background) */
  async #countBytes(): Promise<void> {
    try {
      for (const ff of await readdir(this.root)) {
        if (ff === SPARE_DIR) continue;
        for (const id of await readdir(join(this.root, ff)).catch(() => [] as string[])) {
          const path = join(this.root, ff, id);
          if (this.#touched?.has(path)) continue;
          const size = await stat(path).then((s) => s.size, () => 0);
          if (!this.#touched?.has(path)) this.#bytes += size;
        }
      }
    } catch { /* an unreadable directory counts as empty */ }
    this.#touched = undefined;
  }

  /** the file of a blob key */
  path(key: string): string {
    const id = key.slice(BLOB_PREFIX.length);
    if (!id || id === '.' || id === '..' || id.includes('/') || id.includes('\0') || Buffer.byteLength(id) > 255) {
      throw new StoreError('INVALID', `blob key '${key}' cannot name a file (1..255 bytes, no '/' or NUL, not . or ..)`);
    }
    return join(this.root, fanOut(id), id);
  }

  /** `apart`: the caller makes it durable with syncOnly (sync neither waits for it nor syncs it: rule 2 holds, as nothing names it before) */
  async put(key: string, value: Uint8Array, apart = false): Promise<void> {
    const path = this.path(key);
    const dir = path.slice(0, path.lastIndexOf('/'));
    if (!this.#dirsMade.has(dir)) {
      mkdirSync(dir, { recursive: true });
      this.#dirsMade.add(dir);
      this.#dirsUnsynced.add(dir);
      this.#dirsUnsynced.add(this.root);
    }
    // written from the caller's buffer, which stays unchanged until the put settles (kv.ts)
    const bytes = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    this.#touched?.add(path);
    const p = this.#write(path, bytes);
    if (apart) {
      await p;
    } else {
      this.#writing.add(p);
      try {
        await p;
      } finally {
        this.#writing.delete(p);
      }
      this.#unsynced.add(path);
      this.#dirsUnsynced.add(dir);
    }
    this.#bytes += bytes.length;
  }

  /** writes the file at path, over a spare when there is one */
  async #write(path: string, bytes: Buffer): Promise<void> {
    const addon = this.#addon;
    if (!addon) return writeFile(path, bytes);
    const spare = this.#spares.pop();
    if (spare) this.#spareBytes -= spare.size;
    const r = await new Promise<number>((resolve) => addon.putFile(spare?.path ?? '', path, bytes, resolve));
    if (r < 0) throw errnoError(-r, `writing blob file ${path}`);
  }

  /** runs a read of the file at path, which is never made a spare meanwhile (rule 5) */
  async #reads<T>(path: string, read: () => Promise<T>): Promise<T> {
    this.#reading.set(path, (this.#reading.get(path) ?? 0) + 1);
    try {
      return await read();
    } finally {
      const n = this.#reading.get(path)! - 1;
      if (n) this.#reading.set(path, n);
      else this.#reading.delete(path);
    }
  }

  /** the bytes of a blob, or undefined when it has no file */
  async get(key: string): Promise<Buffer | undefined> {
    const path = this.path(key);
    try {
      return await this.#reads(path, () => readFile(path));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  }

  /** bytes [offset, offset + length) of a blob (fewer at its end), or undefined when it has no file */
  getRange(key: string, offset: number, length: number): Promise<Buffer | undefined> {
    const path = this.path(key);
    return this.#reads(path, () => readRange(path, offset, length));
  }

  async del(keys: readonly string[]): Promise<void> {
    await Promise.all(keys.map(async (key) => {
      const path = this.path(key);
      this.#touched?.add(path);
      this.#unsynced.delete(path);
      const size = await this.#retire(path);
      if (size >= 0) this.#bytes -= size;
    }));
  }

  /** removes the file at path, kept as a spare when rule 5 allows: its size, or -1 when it had no file */
  async #retire(path: string): Promise<number> {
    const addon = this.#addon;
    if (!addon) {
      try {
        const size = (await stat(path)).size;
        await rm(path);
        return size;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return -1;
        throw e;
      }
    }
    const keep = this.#spareBytes < SPARE_BYTES && !this.#reading.has(path) && this.#spareWhen();
    const spare = keep ? join(this.#spareDir, this.#sparePrefix + String(++this.#spareSeq)) : '';
    const r = await new Promise<number>((resolve) => addon.retireFile(path, spare, resolve));
    if (r === -constants.errno.ENOENT) return -1;
    if (r < 0) throw errnoError(-r, `deleting blob file ${path}`);
    if (spare) {
      this.#addSpare(spare, r);
      // deletes run at once, each deciding before any had its size: the last ones past the cap go
      if (this.#spareBytes > SPARE_BYTES) await this.#dropSpare(spare);
    }
    return r;
  }

  async #dropSpare(path: string): Promise<void> {
    const i = this.#spares.findIndex((s) => s.path === path);
    if (i < 0) return;
    this.#spareBytes -= this.#spares[i]!.size;
    this.#spares.splice(i, 1);
    await rm(path, { force: true });
  }

  #addSpare(path: string, size: number): void {
    this.#spares.push({ path, size });
    this.#spareBytes += size;
  }

  /** unlinks every spare (the disk is short): the bytes they held */
  async releaseSpares(): Promise<number> {
    const all = this.#spares;
    this.#spares = [];
    this.#spareBytes = 0;
    await Promise.all(all.map((s) => rm(s.path, { force: true })));
    return all.reduce((n, s) => n + s.size, 0);
  }

  /** bytes of the spares kept (rule 5): disk the store gives back on demand */
  get spareBytes(): number {
    return this.#spareBytes;
  }

  /** every blob key with a file under prefix, `limit` at a time, directory by directory (maintenance walks) */
  async *keyPages(prefix: string, limit: number): AsyncGenerator<string[]> {
    let page: string[] = [];
    for (const ff of (await readdir(this.root).catch(() => [] as string[])).sort()) {
      if (ff === SPARE_DIR) continue;
      let dir;
      try {
        dir = await opendir(join(this.root, ff), { bufferSize: 256 });
      } catch {
        continue; // not a directory of ours, or gone
      }
      for await (const d of dir) {
        const key = BLOB_PREFIX + d.name;
        if (!key.startsWith(prefix)) continue;
        page.push(key);
        if (page.length >= limit) {
          yield page;
          page = [];
        }
      }
    }
    if (page.length) yield page;
  }

  /**
   * Waits for the puts under way, then makes every file written so far durable (rule 2): the files it takes, and
   * those that syncs already running took (a background sync may hold files that this one must not return before).
   */
  async sync(): Promise<void> {
    const earlier = [...this.#syncing];
    const mine = this.#syncNow();
    this.#syncing.add(mine);
    try {
      await mine;
    } finally {
      this.#syncing.delete(mine);
    }
    // an earlier sync's failure left its files to sync again: this one reports it
    const failed = (await Promise.allSettled(earlier)).find((r) => r.status === 'rejected');
    if (failed) return this.sync();
  }

  /**
   * Makes the files of these keys (written, and settled) and their directories durable, on their own: no sync under
   * way is waited for, and later syncs do not wait for this one (the caller names these blobs only afterwards).
   */
  async syncOnly(keys: readonly string[]): Promise<void> {
    const files = keys.map((k) => this.path(k));
    for (const f of files) this.#unsynced.delete(f);
    try {
      await Promise.all(files.map((f) => fsyncPath(f, true)));
      const dirs = new Set(files.map((f) => f.slice(0, f.lastIndexOf('/'))));
      // a directory made for one of them is named in the root
      if (this.#dirsUnsynced.has(this.root)) dirs.add(this.root);
      await Promise.all([...dirs].map((d) => fsyncPath(d, false)));
    } catch (e) {
      for (const f of files) this.#unsynced.add(f);
      throw e;
    }
  }

  async #syncNow(): Promise<void> {
    await Promise.allSettled([...this.#writing]);
    const files = [...this.#unsynced];
    const dirs = [...this.#dirsUnsynced];
    this.#unsynced = new Set();
    this.#dirsUnsynced = new Set();
    try {
      if (files.length < SYNCFS_FROM || !(await syncFilesystem(this.root))) {
        for (let i = 0; i < files.length; i += SYNC_PARALLEL) {
          await Promise.all(files.slice(i, i + SYNC_PARALLEL).map((f) => fsyncPath(f, true)));
        }
        await Promise.all(dirs.map((d) => fsyncPath(d, false)));
      }
    } catch (e) {
      // what was not made durable stays to be synced
      for (const f of files) this.#unsynced.add(f);
      for (const d of dirs) this.#dirsUnsynced.add(d);
      throw e;
    }
  }

  /** files written that the next sync makes durable (a put apart is not among them) */
  get pending(): number {
    return this.#unsynced.size;
  }

  /** bytes the blob files hold (those found at open join the figure as they are counted, in the background) */
  get bytes(): number {
    return this.#bytes;
  }
}

/**
 * syncfs(2) of the filesystem holding dir, off the event loop (the addon's); false when the addon cannot be
 * loaded (the caller syncs file by file). Since Linux 5.8 it reports the filesystem's writeback errors.
 */
async function syncFilesystem(dir: string): Promise<boolean> {
  let addon;
  try {
    addon = native();
  } catch {
    return false;
  }
  const r = await new Promise<number>((resolve) => addon.syncfs(dir, resolve));
  if (r < 0) throw errnoError(-r, `syncfs of the filesystem holding ${dir}`);
  return true;
}

/** fdatasync (a file) or fsync (a directory) of a path; a file deleted meanwhile needs nothing */
async function fsyncPath(path: string, file: boolean): Promise<void> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  try {
    if (file) await fh.datasync();
    else await fh.sync();
  } finally {
    await fh.close();
  }
}

/** bytes [offset, offset + length) of the file at path (fewer at its end), or undefined when it has no file */
async function readRange(path: string, offset: number, length: number): Promise<Buffer | undefined> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    const out = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await fh.read(out, got, length - got, offset + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return out.subarray(0, got);
  } finally {
    await fh.close();
  }
}

/** an error as node:fs makes them (code, errno), for the addon's -errno results */
function errnoError(errno: number, what: string): NodeJS.ErrnoException {
  const code = errnoName(errno);
  return Object.assign(new Error(`${what}: ${code}`), { code, errno: -errno });
}

/** two hex digits of FNV-1a over the id's UTF-16 code units */
function fanOut(id: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) {
    h ^= id.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return ((h >>> 24) & 0xff).toString(16).padStart(2, '0');
}
