/**
 * The POSIX filesystem of a mount, written once over the KV interface. Every operation is inode-based (as
 * FUSE's low-level protocol); drivers in src/fs/fuse translate requests to these calls and errors to errnos.
 * The volume's own operations (inodes, names, removal) are the volume layer's (src/volume/inodes.ts); this class
 * adds what a mount adds: locks, the view of open files, the driver's published attributes, counters and the
 * janitor, and it hands on to its parts: open files and handles (handles.ts), inode lifetime and the session
 * (lifetime.ts), extended attributes (xattrs.ts).
 *
 * Contract:
 *  - Every metadata change is one transaction (src/volume/txn.ts): it applies whole or not at all, so a crash
 *    never leaves a half-made entry, a dangling entry or a wrong link count.
 *  - Operations on the same directories and inodes of this mount run one at a time (KeyedMutex), so they do
 *    not conflict with each other; other mounts are kept out by the store's compare-and-swap.
 *  - File data goes through FileData (write-back per open file). `flush`/`release` commit it to the store;
 *    `fsync` also makes the store put it on stable storage. getattr shows this mount's uncommitted size.
 *  - An inode whose last link goes while it is open stays (an orphan record names it) and is removed at the
 *    last release; otherwise removal queues the inode for purge and its blobs for GC (src/volume/queues.ts, drained by src/fs/janitor.ts).
 *  - Permission checks are the kernel's (default_permissions); `access` answers for drivers that ask.
 *    New inodes take the caller's uid, and the caller's gid or, under a setgid directory, the directory's.
 *  - Times: create sets all three; data writes set mtime and ctime; metadata changes set ctime; directory
 *    changes set the directory's mtime and ctime. atime changes only by utimens (the mount is noatime).
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import type { KvStore } from '../backend/kv.js';
import { BlobCache } from './blob-cache.js';
import { Published } from './published.js';
import { fsErr } from './errors.js';
import { ChunkBuffers, WriteBudget, type DataContext } from './file-data.js';
import { Handles } from './handles.js';
import { Janitor } from './janitor.js';
import { Counters } from './counters.js';
import { KeyedMutex } from './keyed-mutex.js';
import { Lifetime } from './lifetime.js';
import { Xattrs } from './xattrs.js';
import { DIR_SIZE, NAME_MAX, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, Volume, checkName, isDir, isReg } from '../volume/inodes.js';
import { INO_BATCH, K, nowTs, type Inode, type VolumeRecord } from '../volume/schema.js';
import { transact } from '../volume/txn.js';
import {
  RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INO,
  type Attr, type Ctx, type DirEntry, type Fh, type Ino, type ReadIndex, type SetAttr, type StatFs,
} from './types.js';
import { readVolume, upgradeVolume } from '../volume/format.js';
import { STATFS_BLOCK, volumeSpace } from '../volume/space.js';
import { Limits, VOLUME_REFRESH_MS } from '../volume/limits.js';

export { xattrStored } from './xattrs.js';

const S_ISGID = 0o2000;
/** how old the usage counters may be when a quota decides (a mount's own changes always count at once) */
const USAGE_AGE_MS = 1000;
const S_ISUID = 0o4000;

export interface FsOptions {
  /** bytes of blobs kept in memory (default 64 MiB) */
  blobCacheBytes?: number;
  /** bytes of write-back buffers across all files before writes commit early (default 64 MiB) */
  writeBufferBytes?: number;
  /** how users name the store (its URL), for the commands messages suggest */
  storeName?: string;
  /** how long this mount's session outlives its last heartbeat: a killed mount's orphans wait this long (default 30 s) */
  sessionTtlMs?: number;
}

export interface FsStats {
  openFiles: number;
  writeBackBytes: number;
  writeBackHighWater: number;
  blobCacheBytes: number;
  blobCacheHits: number;
  blobCacheMisses: number;
  idleChunkBuffers: number;
  /** chunks the driver may serve READs from by itself (published.ts) */
  publishedChunks: number;
  /** bytes callers wrote and read through the core, and what the store was sent and asked for them (IoStats) */
  bytesWritten: number;
  bytesSent: number;
  bytesReturned: number;
  bytesFetched: number;
  purged: number;
  collected: number;
}

export class Filesystem {
  private record: VolumeRecord;
  readonly session: string;
  /** the volume's quota (src/volume/limits.ts), from its record as last read */
  private readonly limits: Limits;
  private refresher: NodeJS.Timeout | undefined;
  private readonly locks = new KeyedMutex();
  private inoNext = 0;
  private inoEnd = -1;
  private inoAlloc: Promise<void> | undefined;
  private blobSeq = 0;
  private readonly cx: DataContext;
  private readonly vol: Volume;
  private readonly lifetime: Lifetime;
  private readonly handles: Handles;
  private readonly xattrs: Xattrs;
  readonly janitor: Janitor;
  private readonly counters: Counters;
  private readonly blobs: BlobCache;
  private readonly budget: WriteBudget;
  private readonly buffers: ChunkBuffers;
  /** other mounts may change the volume (a server-based store): opens revalidate (close-to-open) */
  readonly shared: boolean;
  /**
   * Called when what the kernel caches of an inode's attributes is stale: an open found that another mount
   * changed the file since this mount last opened it (the page cache is dropped by the open), or a commit
   * changed its stored bytes (st_blocks) after the reply that the kernel cached. The driver drops the
   * kernel's copy of the attributes.
   */
  onInodeChanged: ((ino: Ino) => void) | undefined;
  /** what this mount's driver may answer READs from by itself (published.ts) */
  private readonly published = new Published();

  /** the driver's read index (the native channel has one); undefined: every READ comes to the core */
  setReadIndex(index: ReadIndex | undefined): void {
    this.published.attach(index);
  }

  /** the driver served a READ from a chunk published with a mark: a sequential reader got there */
  readAheadHint(ino: Ino, idx: number): void {
    this.handles.files.get(ino)?.readAheadHint(idx);
  }

  private constructor(private readonly store: KvStore, volume: VolumeRecord, opts: FsOptions, shared: boolean, inProcess: boolean) {
    this.record = volume;
    this.limits = new Limits(volume, opts.storeName ?? 'STORE');
    this.shared = shared;
    this.session = randomBytes(6).toString('base64url');
    this.blobs = new BlobCache(store, inProcess ? 0 : opts.blobCacheBytes ?? 64 << 20, inProcess);
    this.blobs.onDrop = (id) => this.published.blobDropped(id);
    this.budget = new WriteBudget(opts.writeBufferBytes ?? 64 << 20);
    this.buffers = new ChunkBuffers(volume.chunkSize, this.budget);
    this.counters = new Counters(store);
    this.janitor = new Janitor(store, this.blobs, this.counters);
    this.cx = {
      rangeReads: !inProcess && typeof store.getRange === 'function',
      io: { written: 0, sent: 0, returned: 0, fetched: 0 },
      counters: this.counters,
      store, chunkSize: volume.chunkSize, blobs: this.blobs, published: this.published, buffers: this.buffers,
      budget: this.budget,
      newBlobId: () => `${this.session}.${(this.blobSeq++).toString(36)}`,
      kickJanitor: () => this.janitor.kick(),
      storedChanged: (ino) => this.onInodeChanged?.(ino),
      admit: async (bytes) => {
        if (this.limits.capacity !== undefined) this.limits.admitBytes(await this.counters.recent(K.byteCount, USAGE_AGE_MS), bytes);
      },
    };
    this.vol = new Volume(store, {
      written: (tx, n) => {
        if (!isDir(n.mode) || !this.publishesAttrs) return;
        // the driver answers GETATTR with what this commit stores, from before the change is acknowledged
        const attr = this.handles.view(n);
        tx.after.push(() => this.published.publishAttr(attr));
      },
      // once the commit is done, the driver no longer answers GETATTR for it
      deleted: (tx, ino) => tx.after.push(() => this.published.retractAttr(ino)),
      purgeQueued: (tx) => tx.after.push(() => this.janitor.kick()),
      counted: (delta) => this.counters.add(K.inodeCount, delta),
    });
    this.lifetime = new Lifetime({
      store, vol: this.vol, session: this.session, shared, sessionTtlMs: opts.sessionTtlMs,
      openRefs: (ino) => this.handles.refs(ino),
      unlinkedWhileOpen: (ino) => this.handles.unlinked(ino),
      forgotten: (ino) => this.published.retractAttr(ino),
    });
    this.handles = new Handles({
      vol: this.vol, data: this.cx, lifetime: this.lifetime, locks: this.locks, session: this.session, shared,
      inodeChanged: (ino) => this.onInodeChanged?.(ino),
    });
    this.xattrs = new Xattrs(this.vol, this.locks);
  }

  /**
   * Opens the volume in a store (NOVOLUME / VERSION errors when it cannot), registers this mount's session
   * with a heartbeat, and removes orphans that mounts which ended without cleaning up left behind.
   */
  static async open(store: KvStore, opts: FsOptions = {}): Promise<Filesystem> {
    const vol = await upgradeVolume(store, await readVolume(store));
    // A store in this process's memory is its own cache, and reuses a deleted blob's memory (slab-store.ts):
    // nothing may keep its values beyond one operation, except the read index (published.ts), which lets a
    // blob go before any commit can make it garbage.
    const info = await store.info();
    const inProcess = info.engine === 'memory';
    const fs = new Filesystem(store, vol, opts, !!info.shared, inProcess);
    await fs.lifetime.start();
    fs.janitor.kick();
    fs.refresher = setInterval(() => void fs.refreshVolume().catch(() => undefined), VOLUME_REFRESH_MS);
    fs.refresher.unref?.();
    return fs;
  }

  /** the volume record as last read (its limits change under a mount: `kvfs config`) */
  get volume(): VolumeRecord {
    return this.record;
  }

  /** reads the volume record again: a quota set or changed by `kvfs config` applies from here */
  async refreshVolume(): Promise<void> {
    this.record = await readVolume(this.store);
    this.limits.update(this.record);
  }

  /** Commits every open file and stops background work. The store stays open (the caller owns it). */
  async close(): Promise<void> {
    clearInterval(this.refresher);
    await Promise.all([...this.handles.files.values()].map((f) => f.flush().catch(() => undefined)));
    // Shared stores: files still open here are released (the last user of an unlinked one removes it).
    await this.lifetime.stop();
    await this.janitor.run().catch(() => undefined);
    await this.janitor.close();
    await this.counters.close().catch(() => undefined);
    await this.lifetime.end();
  }

  stats(): FsStats {
    return {
      openFiles: this.handles.files.size, writeBackBytes: this.budget.used, writeBackHighWater: this.budget.highWater,
      blobCacheBytes: this.blobs.bytes, blobCacheHits: this.blobs.hits, blobCacheMisses: this.blobs.misses,
      idleChunkBuffers: this.buffers.idle, publishedChunks: this.published.chunks, purged: this.janitor.purged, collected: this.janitor.collected,
      bytesWritten: this.cx.io.written, bytesSent: this.cx.io.sent, bytesReturned: this.cx.io.returned,
      bytesFetched: this.cx.io.fetched + this.blobs.fetched,
    };
  }

  private async allocIno(): Promise<Ino> {
    while (this.inoNext > this.inoEnd) {
      if (!this.inoAlloc) {
        this.inoAlloc = this.store.incr(K.inoCounter, INO_BATCH).then((end) => {
          this.inoNext = Math.max(end - INO_BATCH + 1, ROOT_INO + 1);
          this.inoEnd = end;
        }).finally(() => { this.inoAlloc = undefined; });
      }
      await this.inoAlloc;
    }
    return this.inoNext++;
  }

  /**
   * The driver answers GETATTR of directories itself (published.ts): on a single-mount volume, where every
   * change to a directory passes through this mount. The kernel asks for a directory's attributes again after
   * every change in it (fuse_dir_changed), and with default_permissions before the next lookup in it: without
   * this, each create or unlink costs one or two more trips through JavaScript.
   */
  private get publishesAttrs(): boolean {
    return !this.shared && this.published.takesAttrs;
  }

  /** the attributes this mount sees: the stored inode with this mount's uncommitted size and times */
  private view(n: Inode): Attr {
    return this.handles.view(n);
  }

  /** the kernel learned of an inode (an entry reply): it may use it until it forgets it */
  remember(ino: Ino): void {
    this.lifetime.remember(ino);
  }

  /** the kernel forgot n lookups of an inode; at zero this mount drops it (and removes it, when unlinked) */
  forget(ino: Ino, n: number): void {
    this.lifetime.forget(ino, n);
  }

  /** inodes the kernel currently holds */
  get kernelInodes(): number {
    return this.lifetime.kernelInodes;
  }

  // ------------------------------------------------------------------ names

  async lookup(parent: Ino, name: string): Promise<Attr> {
    if (name === '.' || name === '..') {
      const dir = await this.vol.dirInode(this.store, parent);
      return this.getattr(name === '.' ? parent : dir.parent);
    }
    checkName(name);
    await this.vol.dirInode(this.store, parent);
    const e = await this.vol.entry(this.store, parent, name);
    if (!e) throw fsErr('ENOENT');
    return this.getattr(e.ino);
  }

  async getattr(ino: Ino): Promise<Attr> {
    const epoch = this.published.attrEpoch;
    const attr = this.view(await this.vol.inode(this.store, ino));
    // a directory's attributes go to the driver, unless a directory changed while they were read (they may be older)
    if (isDir(attr.mode) && this.publishesAttrs && epoch === this.published.attrEpoch) this.published.publishAttr(attr);
    return attr;
  }

  private async makeNode(parent: Ino, name: string, mode: number, ctx: Ctx,
    extra: { rdev?: number; target?: string } = {}): Promise<Attr> {
    checkName(name);
    if (name === '.' || name === '..') throw fsErr('EEXIST');
    if (this.limits.inodeCapacity !== undefined) this.limits.admitInode(await this.counters.recent(K.inodeCount, USAGE_AGE_MS));
    const ino = await this.allocIno();
    const n = await this.locks.with([parent], () => transact(this.store, (tx) => this.vol.addNode(tx, parent, name, (dir, t) => {
      let gid = ctx.gid;
      let m = mode;
      if (dir.mode & S_ISGID) {
        gid = dir.gid;
        if (isDir(mode)) m |= S_ISGID;
      }
      return {
        ino, version: 0, mode: m, nlink: isDir(m) ? 2 : 1, uid: ctx.uid, gid, rdev: extra.rdev ?? 0,
        size: isDir(m) ? DIR_SIZE : extra.target !== undefined ? Buffer.byteLength(extra.target) : 0,
        atime: t, mtime: t, ctime: t, parent: isDir(m) ? parent : 0, children: 0, stored: 0, truncFrom: 0,
        target: extra.target,
      };
    })));
    return this.view(n);
  }

  async mknod(parent: Ino, name: string, mode: number, rdev: number, ctx: Ctx): Promise<Attr> {
    if ((mode & S_IFMT) === 0) mode |= S_IFREG;
    if (isDir(mode) || (mode & S_IFMT) === S_IFLNK) throw fsErr('EINVAL');
    return this.makeNode(parent, name, mode, ctx, { rdev });
  }

  async mkdir(parent: Ino, name: string, mode: number, ctx: Ctx): Promise<Attr> {
    return this.makeNode(parent, name, S_IFDIR | (mode & 0o7777), ctx);
  }

  async symlink(parent: Ino, name: string, target: string, ctx: Ctx): Promise<Attr> {
    if (target.length === 0) throw fsErr('ENOENT');
    if (Buffer.byteLength(target) > 4095) throw fsErr('ENAMETOOLONG');
    return this.makeNode(parent, name, S_IFLNK | 0o777, ctx, { target });
  }

  async readlink(ino: Ino): Promise<string> {
    const n = await this.vol.inode(this.store, ino);
    if ((n.mode & S_IFMT) !== S_IFLNK || n.target === undefined) throw fsErr('EINVAL');
    return n.target;
  }

  async link(ino: Ino, newParent: Ino, newName: string): Promise<Attr> {
    checkName(newName);
    if (newName === '.' || newName === '..') throw fsErr('EEXIST');
    const n = await this.locks.with([newParent, ino], () => transact(this.store, (tx) => this.vol.addLink(tx, ino, newParent, newName)));
    return this.view(n);
  }

  async unlink(parent: Ino, name: string): Promise<void> {
    checkName(name);
    if (name === '.' || name === '..') throw fsErr('EISDIR');
    await this.locks.with([parent], () => transact(this.store, (tx) => this.vol.unlink(tx, parent, name, this.lifetime.drop)));
  }

  async rmdir(parent: Ino, name: string): Promise<void> {
    if (name === '.') throw fsErr('EINVAL');
    if (name === '..') throw fsErr('ENOTEMPTY');
    checkName(name);
    await this.locks.with([parent], () => transact(this.store, (tx) => this.vol.rmdir(tx, parent, name)));
  }

  async rename(parent: Ino, name: string, newParent: Ino, newName: string, flags = 0): Promise<void> {
    checkName(name);
    checkName(newName);
    if ([name, newName].some((n) => n === '.' || n === '..')) throw fsErr('EINVAL');
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) || (flags & RENAME_NOREPLACE && flags & RENAME_EXCHANGE)) {
      throw fsErr('EINVAL', 'bad rename flags');
    }
    await this.locks.with([parent, newParent], () => transact(this.store,
      (tx) => this.vol.rename(tx, parent, name, newParent, newName, flags, this.lifetime.drop)));
  }

  // ------------------------------------------------------------------ attributes

  async setattr(ino: Ino, set: SetAttr, _ctx?: Ctx): Promise<Attr> {
    const t = nowTs();
    if (set.size !== undefined) {
      if (!Number.isSafeInteger(set.size) || set.size < 0) throw fsErr('EINVAL');
      const n = await this.vol.inode(this.store, ino);
      if (isDir(n.mode)) throw fsErr('EISDIR');
      if (!isReg(n.mode)) throw fsErr('EINVAL');
      const f = await this.handles.fileData(ino);
      try {
        await this.locks.with([ino], () => f.truncate(set.size!, t));
      } finally {
        await this.handles.unref(f);
      }
    }
    const meta = set.mode !== undefined || set.uid !== undefined || set.gid !== undefined ||
      set.atime !== undefined || set.mtime !== undefined || set.ctime !== undefined;
    if (!meta) return this.getattr(ino);
    const n = await this.locks.with([ino], () => transact(this.store, async (tx) => {
      const node = await this.vol.inode(tx, ino);
      if (set.mode !== undefined) node.mode = (node.mode & S_IFMT) | (set.mode & 0o7777);
      if (set.uid !== undefined) node.uid = set.uid;
      if (set.gid !== undefined) node.gid = set.gid;
      if (set.atime !== undefined) node.atime = set.atime === 'now' ? t : set.atime;
      if (set.mtime !== undefined) node.mtime = set.mtime === 'now' ? t : set.mtime;
      node.ctime = set.ctime ?? t;
      this.vol.put(tx, node);
      return node;
    }));
    const f = this.handles.files.get(ino);
    if (f && set.mtime !== undefined) f.mtime = undefined; // an explicit mtime wins over pending writes' mtime
    return this.view(n);
  }

  /**
   * Clears the privileges a change by an unprivileged caller must drop (as the Linux VFS does): setuid, setgid
   * when the group may execute (otherwise it marks mandatory locking), and security.capability. Nothing is
   * written when there is nothing to clear.
   */
  async killPriv(ino: Ino): Promise<void> {
    const n = await this.vol.inode(this.store, ino);
    const clear = (n.mode & S_ISUID ? S_ISUID : 0) | ((n.mode & (S_ISGID | 0o010)) === (S_ISGID | 0o010) ? S_ISGID : 0);
    const cap = (await this.store.get(K.xattr(ino, 'security.capability'))) !== undefined;
    if (!clear && !cap) return;
    await this.locks.with([ino], () => transact(this.store, async (tx) => {
      const node = await this.vol.inode(tx, ino);
      node.mode &= ~clear;
      if (cap) tx.del(K.xattr(ino, 'security.capability'));
      node.ctime = nowTs();
      this.vol.put(tx, node);
    }));
  }

  // ------------------------------------------------------------------ files and directories (handles.ts)

  open(ino: Ino, flags: number): Promise<Fh> {
    return this.handles.open(ino, flags);
  }

  /** whether the kernel may keep the pages it cached of this file across this open (FOPEN_KEEP_CACHE) */
  keepsCache(fh: Fh): boolean {
    return this.handles.keepsCache(fh);
  }

  async create(parent: Ino, name: string, mode: number, flags: number, ctx: Ctx): Promise<{ attr: Attr; fh: Fh }> {
    let attr: Attr;
    try {
      attr = await this.makeNode(parent, name, S_IFREG | (mode & 0o7777), ctx);
    } catch (e) {
      if ((e as { code?: string }).code !== 'EEXIST' || flags & constants.O_EXCL) throw e;
      attr = await this.lookup(parent, name);
      if (isDir(attr.mode)) throw fsErr('EISDIR');
    }
    const fh = await this.open(attr.ino, flags);
    return { attr: await this.getattr(attr.ino), fh };
  }

  /** up to `length` bytes at `offset` (fewer at end of file), in `into` when given (it must hold length) */
  read(fh: Fh, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.handles.read(fh, offset, length, into);
  }

  /** copy_file_range inside the daemon (handles.ts): the bytes copied, at most 16 MiB per call */
  copyFileRange(fhIn: Fh, offIn: number, fhOut: Fh, offOut: number, len: number): Promise<number> {
    return this.handles.copyFileRange(fhIn, offIn, fhOut, offOut, len);
  }

  write(fh: Fh, offset: number, data: Uint8Array): Promise<number> {
    return this.handles.write(fh, offset, data);
  }

  /** commits what this handle's file holds (close(2) of one descriptor) */
  flush(fh: Fh): Promise<void> {
    return this.handles.flush(fh);
  }

  /** commits and makes the store put it on stable storage */
  fsync(fh: Fh, _datasync = false): Promise<void> {
    return this.handles.fsync(fh);
  }

  /** commits every open file's buffered writes, then has the store put all of it on stable storage (syncfs(2)) */
  async sync(): Promise<void> {
    await this.handles.flushAll();
    await this.store.sync();
  }

  /** has the store put what is committed on stable storage (fsync(2) of a directory) */
  async syncMetadata(): Promise<void> {
    await this.store.sync();
  }

  release(fh: Fh): Promise<void> {
    return this.handles.release(fh);
  }

  opendir(ino: Ino): Promise<Fh> {
    return this.handles.opendir(ino);
  }

  /** at most `max` entries from cookie `offset` on, with attributes when `plus` (handles.ts) */
  readdir(fh: Fh, offset: number, plus = false, max = Infinity): Promise<DirEntry[]> {
    return this.handles.readdir(fh, offset, plus, max);
  }

  releasedir(fh: Fh): Promise<void> {
    return this.handles.releasedir(fh);
  }

  // ------------------------------------------------------------------ the volume

  /**
   * space: the volume's bytes against its capacity, or what its store can hold (src/volume/space.ts); files: the
   * volume's inodes against its inode limit
   */
  async statfs(): Promise<StatFs> {
    const info = await this.store.info();
    const used = await this.counters.read(K.byteCount);
    const inodes = Math.max(0, await this.counters.read(K.inodeCount));
    const maxFiles = this.limits.inodeCapacity ?? 2 ** 30;
    return {
      bsize: STATFS_BLOCK, frsize: STATFS_BLOCK, ...volumeSpace(used, info, this.limits.capacity),
      files: maxFiles, ffree: Math.max(0, maxFiles - inodes), namemax: NAME_MAX,
    };
  }

  // ------------------------------------------------------------------ extended attributes (xattrs.ts)

  setxattr(ino: Ino, name: string, value: Uint8Array, flags = 0): Promise<void> {
    return this.xattrs.set(ino, name, value, flags);
  }

  getxattr(ino: Ino, name: string): Promise<Buffer> {
    return this.xattrs.get(ino, name);
  }

  listxattr(ino: Ino): Promise<string[]> {
    return this.xattrs.list(ino);
  }

  removexattr(ino: Ino, name: string): Promise<void> {
    return this.xattrs.remove(ino, name);
  }

  /** POSIX access(2) against the modes, for drivers that ask (the kernel checks on its own otherwise) */
  async access(ino: Ino, mask: number, ctx: Ctx): Promise<void> {
    const n = await this.vol.inode(this.store, ino);
    if (mask === constants.F_OK) return;
    if (ctx.uid === 0) {
      if (mask & constants.X_OK && !isDir(n.mode) && !(n.mode & 0o111)) throw fsErr('EACCES');
      return;
    }
    const bits = ctx.uid === n.uid ? (n.mode >> 6) & 7 : ctx.gid === n.gid ? (n.mode >> 3) & 7 : n.mode & 7;
    if ((mask & bits) !== mask) throw fsErr('EACCES');
  }

}

