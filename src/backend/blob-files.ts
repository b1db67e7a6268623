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
 *  3. del unlinks; a missing file is not an error. Deletes need not be durable (a file back after a crash is
 *     named by nothing: a leak, never wrong data).
 *  4. Reads of a blob that has no file fall back to `legacy` (blobs that an older layout kept inside LMDB).
 */
import { mkdirSync } from 'node:fs';
import { open, opendir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { StoreError } from './errors.js';
import { errnoName, native } from '../native.js';

export const BLOB_PREFIX = 'b/';

/** at most this many files are fsynced at once */
const SYNC_PARALLEL = 16;

/**
 * From this many files to sync on, one syncfs(2) of the filesystem holding them: 4,096 blob files of 256 KiB
 * (a 1 GiB write) took 760 ms to fdatasync one by one here and about 400 ms as one file. It also writes out
 * what other programs left dirty on that filesystem, so a few files are synced one by one.
 */
const SYNCFS_FROM = 64;

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

  constructor(dir: string) {
    this.root = join(dir, 'blobs');
    mkdirSync(this.root, { recursive: true });
    void this.#countExisting();
  }

  /** adds up the files there at open, off the event loop's critical path */
  async #countExisting(): Promise<void> {
    try {
      for (const ff of await readdir(this.root)) {
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
    const p = writeFile(path, bytes);
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

  /** the bytes of a blob, or undefined when it has no file */
  async get(key: string): Promise<Buffer | undefined> {
    try {
      return await readFile(this.path(key));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  }

  /** bytes [offset, offset + length) of a blob (fewer at its end), or undefined when it has no file */
  async getRange(key: string, offset: number, length: number): Promise<Buffer | undefined> {
    let fh;
    try {
      fh = await open(this.path(key), 'r');
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

  async del(keys: readonly string[]): Promise<void> {
    await Promise.all(keys.map(async (key) => {
      const path = this.path(key);
      this.#touched?.add(path);
      let size = 0;
      try {
        size = (await stat(path)).size;
        await rm(path);
        this.#bytes -= size;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      this.#unsynced.delete(path);
    }));
  }

  /** every blob key with a file under prefix, `limit` at a time, directory by directory (maintenance walks) */
  async *keyPages(prefix: string, limit: number): AsyncGenerator<string[]> {
    let page: string[] = [];
    for (const ff of (await readdir(this.root).catch(() => [] as string[])).sort()) {
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
  if (r < 0) {
    const code = errnoName(-r);
    throw Object.assign(new Error(`syncfs of the filesystem holding ${dir}: ${code}`), { code, errno: r });
  }
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

/** two hex digits of FNV-1a over the id's UTF-16 code units */
function fanOut(id: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) {
    h ^= id.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return ((h >>> 24) & 0xff).toString(16).padStart(2, '0');
}
