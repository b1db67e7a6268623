/**
 * A mount's open files and directories: the handles it hands out, and the file data (FileData, write-back)
 * each open file shares across its handles.
 *
 * Contract:
 *  - One FileData per open inode, counted by its handles; the last release commits what it holds (a close whose
 *    commit fails reports that error and still releases) and lets the inode go (lifetime.ts: an unlinked one is
 *    then removed).
 *  - `flush` commits a file (close(2)); `fsync` also makes the store put everything committed on stable storage.
 *  - Close-to-open on a shared store: an open that finds the file changed by another mount since this mount last
 *    opened it drops what this mount caches of it, and the kernel's pages (keepsCache false).
 *  - A directory handle keeps the listing taken at offset 0, so cookies stay valid while the directory changes.
 *  - `view` is an inode as this mount sees it: with the uncommitted size and times of its open file.
 */
import { constants } from 'node:fs';
import { LRUCache } from 'lru-cache';
import { fsErr } from './errors.js';
import { FileData, type DataContext } from './file-data.js';
import { foreground } from './foreground.js';
import type { KeyedMutex } from './keyed-mutex.js';
import type { Lifetime } from './lifetime.js';
import type { Volume } from '../volume/inodes.js';
import { K, decodeDirent, decodeInode, memberOf, nowTs, toAttr, type Inode } from '../volume/schema.js';
import { scanPages } from '../volume/scan.js';
import { transact } from '../volume/txn.js';
import { S_IFDIR, S_IFLNK, S_IFMT, isDir } from '../volume/inodes.js';
import type { Attr, DirEntry, Fh, Ino } from './types.js';

/** The most one copy_file_range call copies (the caller loops on a short count). */
const COPY_MAX = 16 << 20;

interface FileHandle { kind: 'file'; ino: Ino; flags: number; data: FileData; keepCache: boolean }
interface DirHandle { kind: 'dir'; ino: Ino; entries?: DirEntry[] }
type Handle = FileHandle | DirHandle;

export interface HandlesContext {
  vol: Volume;
  data: DataContext;
  lifetime: Lifetime;
  locks: KeyedMutex;
  session: string;
  shared: boolean;
  /** what the kernel caches of ino's attributes is stale (Filesystem.onInodeChanged) */
  inodeChanged(ino: Ino): void;
}

export class Handles {
  readonly files = new Map<Ino, FileData>();
  private readonly opening = new Map<Ino, Promise<FileData>>();
  private readonly handles = new Map<Fh, Handle>();
  private nextFh = 1;
  /** shared stores: each inode's data stamp (mtime, size) as this mount last opened it */
  private readonly stamps = new LRUCache<Ino, string>({ max: 100_000 });

  constructor(private readonly cx: HandlesContext) {}

  /** handles open on ino */
  refs(ino: Ino): number {
    return this.files.get(ino)?.refs ?? 0;
  }

  /** the attributes this mount sees: the stored inode with this mount's uncommitted size and times */
  view(n: Inode): Attr {
    const a = toAttr(n);
    const f = this.files.get(n.ino);
    if (f) {
      a.size = f.size;
      if (f.mtime) {
        a.mtime = f.mtime;
        a.ctime = f.mtime;
      }
      a.blocks = Math.max(a.blocks, Math.ceil(Math.min(f.size, n.stored + f.dirtyBytes) / 512));
    }
    return a;
  }

  /** the open file of ino, one more reference to it (opened when it is not) */
  async fileData(ino: Ino): Promise<FileData> {
    const { vol, shared, lifetime } = this.cx;
    for (;;) {
      const f = this.files.get(ino);
      if (f) {
        f.refs++;
        return f;
      }
      const pending = this.opening.get(ino);
      if (pending) {
        await pending.catch(() => undefined);
        continue;
      }
      const p = (async () => {
        // Shared stores: other mounts keep the inode while this one holds it open (lifetime.ts releaseUse).
        const n = !shared ? await vol.inode(vol.store, ino) : await transact(vol.store, async (tx) => {
          const inode = await vol.inode(tx, ino);
          await lifetime.takeUse(tx, ino);
          return inode;
        });
        const fd = new FileData(ino, n, this.cx.data);
        try {
          await fd.recover();
          fd.markIfClean();
        } catch (e) {
          if (shared) await lifetime.releaseUse(this.cx.session, ino).catch(() => undefined);
          throw e;
        }
        this.files.set(ino, fd);
        return fd;
      })();
      this.opening.set(ino, p);
      try {
        await p;
      } finally {
        this.opening.delete(ino);
      }
    }
  }

  /** drops one reference; the last one commits (or, for a file unlinked meanwhile, lets it go) */
  async unref(f: FileData): Promise<void> {
    let failed: unknown;
    try {
      if (f.refs === 1 && !f.unlinked) await f.flush();
    } catch (e) {
      failed = e; // reported to the caller; the handle goes all the same
    }
    f.refs--;
    if (f.refs === 0) {
      this.files.delete(f.ino);
      // Whatever is still uncommitted could not be committed (its error went to the caller): let it go,
      // with its write-back memory.
      f.discard();
      if (this.cx.shared) await this.cx.lifetime.releaseUse(this.cx.session, f.ino);
      if (f.unlinked) await this.cx.lifetime.reapOrphanBatch([f.ino]);
    }
    if (failed) throw failed;
  }

  /** the file ino, open here, lost its last link: its data is never committed again */
  unlinked(ino: Ino): void {
    const open = this.files.get(ino);
    if (open) open.unlinked = true;
  }

  private handle(fh: Fh): Handle {
    const h = this.handles.get(fh);
    if (!h) throw fsErr('EBADF', `no handle ${fh}`);
    return h;
  }

  private fileHandle(fh: Fh): FileHandle {
    const h = this.handle(fh);
    if (h.kind !== 'file') throw fsErr('EBADF');
    return h;
  }

  private addHandle(h: Handle): Fh {
    while (this.handles.has(this.nextFh) || this.nextFh === 0) this.nextFh = (this.nextFh + 1) >>> 0;
    const fh = this.nextFh;
    this.nextFh = (this.nextFh + 1) >>> 0;
    this.handles.set(fh, h);
    return fh;
  }

  // ------------------------------------------------------------------ files

  async open(ino: Ino, flags: number): Promise<Fh> {
    const { vol } = this.cx;
    const n = await vol.inode(vol.store, ino);
    if (isDir(n.mode)) throw fsErr('EISDIR');
    if ((n.mode & S_IFMT) === S_IFLNK) throw fsErr('ELOOP');
    const data = await this.fileData(ino);
    // Close-to-open on a shared store: what another mount committed before this open is what it reads.
    let keepCache = true;
    if (this.cx.shared) {
      const stamp = `${n.mtime.sec}.${n.mtime.nsec}:${n.size}`;
      if (this.stamps.get(ino) !== stamp) {
        keepCache = false;
        this.stamps.set(ino, stamp);
        if (data.refs > 1) data.refresh(n);
        this.cx.inodeChanged(ino);
      }
    }
    if (flags & constants.O_TRUNC && (flags & 3) !== constants.O_RDONLY) {
      try {
        await this.cx.locks.with([ino], () => data.truncate(0, nowTs()));
      } catch (e) {
        await this.unref(data);
        throw e;
      }
    }
    return this.addHandle({ kind: 'file', ino, flags, data, keepCache });
  }

  /** whether the kernel may keep the pages it cached of this file across this open (FOPEN_KEEP_CACHE) */
  keepsCache(fh: Fh): boolean {
    return this.fileHandle(fh).keepCache;
  }

  /** up to `length` bytes at `offset` (fewer at end of file), in `into` when given (it must hold length) */
  async read(fh: Fh, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const h = this.fileHandle(fh);
    if ((h.flags & 3) === constants.O_WRONLY) throw fsErr('EBADF');
    if (offset < 0 || length < 0 || (into && into.length < length)) throw fsErr('EINVAL');
    return h.data.read(offset, length, into);
  }

  /**
   * copy_file_range: copies up to `len` bytes (at most COPY_MAX per call; callers loop on short counts) from
   * one open file to another inside the daemon, one chunk-sized piece at a time, through the write-back path
   * like any write. Returns the bytes copied (0 at the source's end). Overlapping ranges of one file: EINVAL.
   */
  async copyFileRange(fhIn: Fh, offIn: number, fhOut: Fh, offOut: number, len: number): Promise<number> {
    const src = this.fileHandle(fhIn);
    const dst = this.fileHandle(fhOut);
    if ((src.flags & 3) === constants.O_WRONLY || (dst.flags & 3) === constants.O_RDONLY) throw fsErr('EBADF');
    if (dst.flags & constants.O_APPEND) throw fsErr('EBADF');
    if (offIn < 0 || offOut < 0 || len < 0) throw fsErr('EINVAL');
    const total = Math.min(len, COPY_MAX);
    if (src.ino === dst.ino && offIn < offOut + total && offOut < offIn + total) throw fsErr('EINVAL');
    if (offOut + total > Number.MAX_SAFE_INTEGER) throw fsErr('EFBIG');
    const buffers = this.cx.data.buffers;
    const buf = buffers.take(false);
    try {
      let done = 0;
      while (done < total) {
        const want = Math.min(buf.length, total - done);
        const data = await src.data.read(offIn + done, want, buf);
        if (data.length === 0) break;
        await dst.data.write(offOut + done, data);
        done += data.length;
        if (data.length < want) break;
      }
      return done;
    } finally {
      buffers.give(buf);
    }
  }

  async write(fh: Fh, offset: number, data: Uint8Array): Promise<number> {
    const h = this.fileHandle(fh);
    if ((h.flags & 3) === constants.O_RDONLY) throw fsErr('EBADF');
    if (offset < 0) throw fsErr('EINVAL');
    const at = h.flags & constants.O_APPEND ? h.data.size : offset;
    if (at + data.length > Number.MAX_SAFE_INTEGER) throw fsErr('EFBIG');
    return h.data.write(at, data);
  }

  /** commits what this handle's file holds (close(2) of one descriptor) */
  async flush(fh: Fh): Promise<void> {
    const h = this.handle(fh);
    if (h.kind === 'file') await foreground.run(() => h.data.flush());
  }

  /** commits and makes the store put it on stable storage */
  async fsync(fh: Fh): Promise<void> {
    const h = this.handle(fh);
    await foreground.run(async () => {
      if (h.kind === 'file') await h.data.flush();
      await this.cx.vol.store.sync();
    });
  }

  /** commits every open file's buffered writes */
  async flushAll(): Promise<void> {
    await Promise.all([...this.files.values()].map((f) => f.flush()));
  }

  async release(fh: Fh): Promise<void> {
    const h = this.handle(fh);
    this.handles.delete(fh);
    if (h.kind === 'file') await this.unref(h.data);
  }

  // ------------------------------------------------------------------ directories

  async opendir(ino: Ino): Promise<Fh> {
    await this.cx.vol.dirInode(this.cx.vol.store, ino);
    return this.addHandle({ kind: 'dir', ino });
  }

  /**
   * At most `max` entries from cookie `offset` on ("." and ".." first). The listing is taken at offset 0 and
   * kept by the handle, so cookies stay valid while the directory changes; `plus` adds attributes, reading the
   * inodes of the entries returned and no others. Drivers pass as `max` what their reply can hold, so a listing
   * costs one scan of the directory and, with `plus`, an inode read or a few per entry, however it is paged.
   */
  async readdir(fh: Fh, offset: number, plus = false, max = Infinity): Promise<DirEntry[]> {
    const h = this.handle(fh);
    if (h.kind !== 'dir') throw fsErr('EBADF');
    const { vol } = this.cx;
    if (!h.entries || offset === 0) {
      const dir = await vol.dirInode(vol.store, h.ino);
      const list: DirEntry[] = [
        { name: '.', ino: h.ino, type: S_IFDIR, next: 1 },
        { name: '..', ino: dir.parent, type: S_IFDIR, next: 2 },
      ];
      const prefix = K.dirPrefix(h.ino);
      for await (const page of scanPages(vol.store, prefix)) {
        for (const [key, val] of page) {
          const e = decodeDirent(val);
          list.push({ name: memberOf(key, prefix), ino: e.ino, type: e.type, next: list.length + 1 });
        }
      }
      h.entries = list;
    }
    const out = h.entries.slice(offset, offset + Math.max(0, Math.min(max, h.entries.length)));
    if (!plus || !out.length) return out;
    // copies: the handle's listing keeps names, never attributes
    const raws = await vol.store.getMany(out.map((e) => K.inode(e.ino)));
    return out.map((e, i) => { const r = raws[i]; return r ? { ...e, attr: this.view(decodeInode(e.ino, r)) } : e; });
  }

  async releasedir(fh: Fh): Promise<void> {
    this.handle(fh);
    this.handles.delete(fh);
  }
}
