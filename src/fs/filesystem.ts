/**
 * The POSIX filesystem, written once over the KV interface. Every operation is inode-based (as FUSE's
 * low-level protocol); drivers in src/fs/fuse translate requests to these calls and errors to errnos.
 *
 * Contract:
 *  - Every metadata change is one transaction (src/fs/txn.ts): it applies whole or not at all, so a crash
 *    never leaves a half-made entry, a dangling entry or a wrong link count.
 *  - Operations on the same directories and inodes of this mount run one at a time (KeyedMutex), so they do
 *    not conflict with each other; other mounts are kept out by the store's compare-and-swap.
 *  - File data goes through FileData (write-back per open file). `flush`/`release` commit it to the store;
 *    `fsync` also makes the store put it on stable storage. getattr shows this mount's uncommitted size.
 *  - An inode whose last link goes while it is open stays (an orphan record names it) and is removed at the
 *    last release; otherwise removal queues the inode for purge and its blobs for GC (src/fs/janitor.ts).
 *  - Permission checks are the kernel's (default_permissions); `access` answers for drivers that ask.
 *    New inodes take the caller's uid, and the caller's gid or, under a setgid directory, the directory's.
 *  - Times: create sets all three; data writes set mtime and ctime; metadata changes set ctime; directory
 *    changes set the directory's mtime and ctime. atime changes only by utimens (the mount is noatime).
 */
import { log } from '../log.js';
import { randomBytes } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { constants } from 'node:fs';
import type { KvStore } from '../backend/kv.js';
import { BlobCache } from './blob-cache.js';
import { Published } from './published.js';
import { fsErr } from './errors.js';
import { ChunkBuffers, DELETE_BATCH, FileData, WriteBudget, type DataContext } from './file-data.js';
import { Janitor } from './janitor.js';
import { Counters } from './counters.js';
import { KeyedMutex } from './keyed-mutex.js';
import {
  INO_BATCH, K, decodeDirent, decodeInode, encodeDirent, encodeInode, memberOf, nowTs, toAttr,
  type Inode, type VolumeRecord,
} from './schema.js';
import { transact, type Txn } from './txn.js';
import {
  RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INO, XATTR_CREATE, XATTR_REPLACE,
  type Attr, type Ctx, type DirEntry, type Fh, type Ino, type ReadIndex, type SetAttr, type StatFs, type Timespec,
} from './types.js';
import { readVolume, upgradeVolume } from './volume.js';
import { STATFS_BLOCK, volumeSpace } from './volume-space.js';

/**
 * The extended attributes a volume stores: the user., trusted. and security. namespaces, but security.selinux.
 * Others (system.posix_acl_*: no ACLs) and SELinux labels (the kernel labels a FUSE mount itself, never through
 * the filesystem's xattrs) are EOPNOTSUPP to set, get and remove.
 */
export const xattrStored = (name: string) => /^(user|trusted|security)\./.test(name) && name !== 'security.selinux';

/** an inode removed with at most this many xattrs is removed in its unlink's commit (more: the purge queue) */
const INLINE_XATTRS = 64;
/** how long the orphans the kernel forgets gather before one commit removes them (queueReap) */
const REAP_DELAY_MS = 20;

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_ISGID = 0o2000;
const S_ISUID = 0o4000;
const NAME_MAX = 255;
const XATTR_NAME_MAX = 255;
const XATTR_SIZE_MAX = 65536;
const DIR_SIZE = 4096;
/** a mount's session record lives this long without a heartbeat */
const SESSION_TTL_MS = 30_000;

export interface FsOptions {
  /** bytes of blobs kept in memory (default 64 MiB) */
  blobCacheBytes?: number;
  /** bytes of write-back buffers across all files before writes commit early (default 64 MiB) */
  writeBufferBytes?: number;
}

/** The most one copy_file_range call copies (the caller loops on a short count). */
const COPY_MAX = 16 << 20;

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

interface FileHandle { kind: 'file'; ino: Ino; flags: number; data: FileData; keepCache: boolean }
interface DirHandle { kind: 'dir'; ino: Ino; entries?: DirEntry[] }
type Handle = FileHandle | DirHandle;

const isDir = (mode: number) => (mode & S_IFMT) === S_IFDIR;
const isReg = (mode: number) => (mode & S_IFMT) === S_IFREG;

function checkName(name: string): void {
  if (name.length === 0 || name.includes('/') || name.includes('\0')) throw fsErr('EINVAL', `bad name '${name}'`);
  if (Buffer.byteLength(name) > NAME_MAX) throw fsErr('ENAMETOOLONG');
}

export class Filesystem {
  readonly volume: VolumeRecord;
  readonly session: string;
  private readonly locks = new KeyedMutex();
  private readonly files = new Map<Ino, FileData>();
  private readonly opening = new Map<Ino, Promise<FileData>>();
  private readonly handles = new Map<Fh, Handle>();
  /** lookup counts of the kernel (native driver): inodes it may still name in a request */
  private readonly kernelRefs = new Map<Ino, number>();
  /** inodes of this mount with no links left, kept while in use */
  private readonly orphans = new Set<Ino>();
  private nextFh = 1;
  private inoNext = 0;
  private inoEnd = -1;
  private inoAlloc: Promise<void> | undefined;
  private beat: NodeJS.Timeout | undefined;
  private reaper: NodeJS.Timeout | undefined;
  private blobSeq = 0;
  private readonly cx: DataContext;
  readonly janitor: Janitor;
  private readonly counters: Counters;
  private readonly blobs: BlobCache;
  private readonly budget: WriteBudget;
  private readonly buffers: ChunkBuffers;
  /** other mounts may change the volume (a server-based store): opens revalidate (close-to-open) */
  readonly shared: boolean;
  /** shared stores: each inode's data stamp (mtime, size) as this mount last opened it */
  private readonly stamps = new LRUCache<Ino, string>({ max: 100_000 });
  /**
   * Called when what the kernel caches of an inode's attributes is stale: an open found that another mount
   * changed the file since this mount last opened it (the page cache is dropped by the open), or a commit
   * changed its stored bytes (st_blocks) after the reply that the kernel cached. The driver drops the
   * kernel's copy of the attributes.
   */
  onInodeChanged: ((ino: Ino) => void) | undefined;
  /** orphans the kernel forgot, waiting for queueReap's batch */
  private readonly reapQueue: Ino[] = [];
  /** what this mount's driver may answer READs from by itself (published.ts) */
  private readonly published = new Published();

  /** the driver's read index (the native channel has one); undefined: every READ comes to the core */
  setReadIndex(index: ReadIndex | undefined): void {
    this.published.attach(index);
  }

  /** the driver served a READ from a chunk published with a mark: a sequential reader got there */
  readAheadHint(ino: Ino, idx: number): void {
    this.files.get(ino)?.readAheadHint(idx);
  }

  private constructor(readonly store: KvStore, volume: VolumeRecord, opts: FsOptions, shared: boolean, inProcess: boolean) {
    this.volume = volume;
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
    };
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
    await fs.heartbeat();
    fs.beat = setInterval(() => void fs.heartbeat().catch(() => undefined), SESSION_TTL_MS / 3);
    fs.beat.unref?.();
    // Mounts that ended without cleaning up (killed, machine lost) leave orphans: each live mount looks for
    // them once per session lifetime, so they go even when no new mount starts.
    fs.reaper = setInterval(() => void fs.reapOrphans().catch(() => undefined), SESSION_TTL_MS);
    fs.reaper.unref?.();
    await fs.reapOrphans();
    fs.janitor.kick();
    return fs;
  }

  /** Commits every open file and stops background work. The store stays open (the caller owns it). */
  async close(): Promise<void> {
    clearInterval(this.beat);
    clearInterval(this.reaper);
    await Promise.all([...this.files.values()].map((f) => f.flush().catch(() => undefined)));
    await this.reapOrphanBatch(this.reapQueue.splice(0)).catch(() => undefined);
    // Shared stores: files still open here are released (the last user of an unlinked one removes it).
    if (this.shared) await this.releaseSession(this.session).catch(() => undefined);
    await this.janitor.run().catch(() => undefined);
    await this.janitor.close();
    await this.counters.close().catch(() => undefined);
    // Orphans still in use here go with the session: the next mount reaps them.
    await this.store.del([K.session(this.session)]).catch(() => undefined);
  }

  private async heartbeat(): Promise<void> {
    await this.store.put(K.session(this.session), Buffer.from(String(Date.now() + SESSION_TTL_MS)));
  }

  stats(): FsStats {
    return {
      openFiles: this.files.size, writeBackBytes: this.budget.used, writeBackHighWater: this.budget.highWater,
      blobCacheBytes: this.blobs.bytes, blobCacheHits: this.blobs.hits, blobCacheMisses: this.blobs.misses,
      idleChunkBuffers: this.buffers.idle, publishedChunks: this.published.chunks, purged: this.janitor.purged, collected: this.janitor.collected,
      bytesWritten: this.cx.io.written, bytesSent: this.cx.io.sent, bytesReturned: this.cx.io.returned,
      bytesFetched: this.cx.io.fetched + this.blobs.fetched,
    };
  }

  // ------------------------------------------------------------------ helpers

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

  private async inode(tx: Txn | KvStore, ino: Ino): Promise<Inode> {
    const raw = await tx.get(K.inode(ino));
    if (!raw) throw fsErr('ENOENT', `no inode ${ino}`);
    return decodeInode(ino, raw);
  }

  private async dirInode(tx: Txn | KvStore, ino: Ino): Promise<Inode> {
    const n = await this.inode(tx, ino);
    if (!isDir(n.mode)) throw fsErr('ENOTDIR');
    return n;
  }

  private async entry(tx: Txn | KvStore, parent: Ino, name: string): Promise<{ ino: Ino; type: number } | undefined> {
    const raw = await tx.get(K.dirent(parent, name));
    return raw ? decodeDirent(raw) : undefined;
  }

  private put(tx: Txn, n: Inode): void {
    n.version++;
    tx.set(K.inode(n.ino), encodeInode(n));
    if (isDir(n.mode) && this.publishesAttrs) {
      // the driver answers GETATTR with what this commit stores, from before the change is acknowledged
      const attr = this.view(n);
      tx.after.push(() => this.published.publishAttr(attr));
    }
  }

  /** deletes ino's inode record in tx; once that commits, the driver no longer answers GETATTR for it */
  private dropRecord(tx: Txn, ino: Ino): void {
    tx.del(K.inode(ino));
    tx.after.push(() => this.published.retractAttr(ino));
  }

  /** deletes ino's inode record in tx and queues the rest (chunks, xattrs) for the janitor */
  private queuePurge(tx: Txn, ino: Ino): void {
    this.dropRecord(tx, ino);
    tx.set(K.purge(ino), Buffer.alloc(0));
    tx.after.push(() => this.janitor.kick());
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

  private touchDir(tx: Txn, dir: Inode, t: Timespec): void {
    dir.mtime = t;
    dir.ctime = t;
    this.put(tx, dir);
  }

  /** the attributes this mount sees: the stored inode with this mount's uncommitted size and times */
  private view(n: Inode): Attr {
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

  /** true while this mount must keep an inode: open here, or known to the kernel (lookup count > 0) */
  private inUse(ino: Ino): boolean {
    return (this.files.get(ino)?.refs ?? 0) > 0 || (this.kernelRefs.get(ino) ?? 0) > 0;
  }

  /**
   * Removes an inode whose last link went away: now, or, while it is in use here (open, or still known to
   * the kernel, which may yet open it through a dentry it holds), when the last use ends (`reapOrphanBatch`).
   */
  private async dropInode(tx: Txn, n: Inode): Promise<void> {
    // Another mount of a shared store holds it open: it stays (nlink 0) until the last of them releases it.
    if (!this.inUse(n.ino) && (await this.openElsewhere(tx, n.ino))) {
      this.put(tx, n);
      return;
    }
    if (this.inUse(n.ino)) {
      tx.set(K.orphan(n.ino), Buffer.from(this.session));
      this.put(tx, n);
      tx.after.push(() => {
        this.orphans.add(n.ino);
        const open = this.files.get(n.ino);
        if (open) open.unlinked = true;
      });
    } else {
      await this.removeInode(tx, n.ino);
    }
  }

  /**
   * Removes an inode in use nowhere, in tx. One with no data and few xattrs (most unlinks, every rmdir) goes
   * in this same commit; one with data goes to the purge queue, whose pages the janitor deletes. The scans
   * need no checks: no chunk can appear for an inode in use nowhere, and an xattr set meanwhile changes the
   * inode, which this commit checks (the caller read it in tx).
   */
  private async removeInode(tx: Txn, ino: Ino): Promise<void> {
    const chunks = await this.store.scan(K.chunkPrefix(ino), { limit: 1 });
    const xattrs = chunks.length ? [] : await this.store.scan(K.xattrPrefix(ino), { limit: INLINE_XATTRS + 1 });
    if (!chunks.length && xattrs.length <= INLINE_XATTRS) {
      this.dropRecord(tx, ino);
      for (const [k] of xattrs) tx.del(k);
      tx.after.push(() => this.counters.add(K.inodeCount, -1));
    } else {
      this.queuePurge(tx, ino);
    }
  }

  /** whether another mount of a shared store holds ino open (its u/<ino> count), as read inside tx */
  private async openElsewhere(tx: Txn, ino: Ino): Promise<boolean> {
    return this.shared && (await this.usersOf(tx, ino)) > 0;
  }

  /** shared stores: how many mounts hold ino open (u/<ino>), as read inside tx */
  private async usersOf(tx: Txn, ino: Ino): Promise<number> {
    const raw = await tx.get(K.users(ino));
    return raw ? Number(Buffer.from(raw).toString()) || 0 : 0;
  }

  /**
   * Shared stores: one fewer mount (`session`) holds ino open. The mount that brings the count to 0 removes an
   * inode with no links left, unless this mount's kernel still knows it (then it becomes this mount's orphan).
   */
  private async releaseUse(session: string, ino: Ino): Promise<void> {
    await transact(this.store, async (tx) => {
      if ((await tx.get(K.use(session, ino))) === undefined) return;
      const left = (await this.usersOf(tx, ino)) - 1;
      if (left > 0) tx.set(K.users(ino), Buffer.from(String(left)));
      else tx.del(K.users(ino));
      tx.del(K.use(session, ino));
      const raw = left > 0 ? undefined : await tx.get(K.inode(ino));
      if (!raw || decodeInode(ino, raw).nlink !== 0) return;
      if (this.inUse(ino)) {
        tx.set(K.orphan(ino), Buffer.from(this.session));
        tx.after.push(() => this.orphans.add(ino));
      } else {
        tx.del(K.orphan(ino));
        await this.removeInode(tx, ino);
      }
    });
  }

  /** Orphans whose mount is gone (no live session) are removed; those of live mounts are left alone. */
  private async reapOrphans(): Promise<void> {
    if (this.shared) await this.reapSessions();
    let after: string | undefined;
    for (;;) {
      const page = await this.store.scan(K.orphanPrefix, { after, limit: 256 });
      for (const [key, owner] of page) {
        const sid = Buffer.from(owner).toString();
        const beat = await this.store.get(K.session(sid));
        if (sid === this.session || (beat && Number(Buffer.from(beat).toString()) > Date.now())) continue;
        const ino = Number(memberOf(key, K.orphanPrefix));
        await transact(this.store, async (tx) => {
          tx.del(key);
          const raw = await tx.get(K.inode(ino));
          // on a shared store, a mount that still holds it open removes it at its release
          if (raw && decodeInode(ino, raw).nlink === 0 && !(await this.openElsewhere(tx, ino))) this.queuePurge(tx, ino);
        });
        // (on a shared store reapSessions removes dead sessions, after releasing their open files)
        if (beat && !this.shared) await this.store.del([K.session(sid)]);
      }
      if (page.length < 256) return;
      after = page[page.length - 1][0];
    }
  }

  /** Shared stores: releases every file a session holds open (w/<session>/). */
  private async releaseSession(sid: string): Promise<void> {
    for (;;) {
      const uses = await this.store.scan(K.usePrefix(sid), { limit: 256 });
      for (const [u] of uses) await this.releaseUse(sid, Number(memberOf(u, K.usePrefix(sid))));
      if (uses.length < 256) return;
    }
  }

  /** Shared stores: the open files of mounts whose session expired (killed, machine lost) are released. */
  private async reapSessions(): Promise<void> {
    let after: string | undefined;
    for (;;) {
      const page = await this.store.scan(K.sessionPrefix, { after, limit: 256 });
      for (const [key, beat] of page) {
        const sid = memberOf(key, K.sessionPrefix);
        if (sid === this.session || Number(Buffer.from(beat).toString()) > Date.now()) continue;
        await this.releaseSession(sid);
        // its orphans (o/) go in reapOrphans, which finds no live session for them
        await this.store.del([key]);
      }
      if (page.length < 256) return;
      after = page[page.length - 1]![0];
    }
  }

  private async fileData(ino: Ino): Promise<FileData> {
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
        // Shared stores: other mounts keep the inode while this one holds it open (see releaseUse).
        const n = !this.shared ? await this.inode(this.store, ino) : await transact(this.store, async (tx) => {
          const inode = await this.inode(tx, ino);
          tx.set(K.users(ino), Buffer.from(String((await this.usersOf(tx, ino)) + 1)));
          tx.set(K.use(this.session, ino), Buffer.alloc(0));
          return inode;
        });
        const fd = new FileData(ino, n, this.cx);
        try {
          await fd.recover();
          fd.markIfClean();
        } catch (e) {
          if (this.shared) await this.releaseUse(this.session, ino).catch(() => undefined);
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
  private async unref(f: FileData): Promise<void> {
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
      if (this.shared) await this.releaseUse(this.session, f.ino);
      if (f.unlinked) await this.reapOrphanBatch([f.ino]);
    }
    if (failed) throw failed;
  }

  /** removes the orphans of this mount among inos that nothing uses any more, in one commit */
  private async reapOrphanBatch(inos: Ino[]): Promise<void> {
    const gone = inos.filter((ino) => this.orphans.has(ino) && !this.inUse(ino));
    if (!gone.length) return;
    for (const ino of gone) this.orphans.delete(ino);
    await transact(this.store, async (tx) => {
      for (const ino of gone) {
        tx.del(K.orphan(ino));
        const raw = await tx.get(K.inode(ino));
        // on a shared store, another mount that holds it open removes it at its release (releaseUse)
        if (raw && decodeInode(ino, raw).nlink === 0 && !(await this.openElsewhere(tx, ino))) await this.removeInode(tx, ino);
      }
    });
  }

  /**
   * Orphans the kernel forgot, removed together REAP_DELAY_MS after the first of them: the FORGETs of `rm -r`
   * (one per unlinked file, as the kernel drops each inode) cost one commit per batch, not one per file.
   */
  private queueReap(ino: Ino): void {
    if (!this.orphans.has(ino)) return;
    this.reapQueue.push(ino);
    if (this.reapQueue.length > 1) return;
    setTimeout(() => {
      const batch = this.reapQueue.splice(0, this.reapQueue.length);
      for (let i = 0; i < batch.length; i += DELETE_BATCH) {
        const part = batch.slice(i, i + DELETE_BATCH);
        this.reapOrphanBatch(part).catch((e) => {
          // put back, so that a later reap (or the next mount) removes them
          for (const ino of part) this.orphans.add(ino);
          log.error(`removing ${part.length} unlinked inode(s) failed (it is retried at the next mount): ${(e as Error)?.message ?? String(e)}`);
        });
      }
    }, REAP_DELAY_MS).unref?.();
  }

  /** the kernel learned of an inode (an entry reply): it may use it until it forgets it */
  remember(ino: Ino): void {
    this.kernelRefs.set(ino, (this.kernelRefs.get(ino) ?? 0) + 1);
  }

  /** the kernel forgot n lookups of an inode; at zero this mount drops it (and removes it, when unlinked) */
  forget(ino: Ino, n: number): void {
    const left = (this.kernelRefs.get(ino) ?? 0) - n;
    if (left > 0) {
      this.kernelRefs.set(ino, left);
      return;
    }
    this.kernelRefs.delete(ino);
    this.published.retractAttr(ino);
    this.queueReap(ino);
  }

  /** inodes the kernel currently holds */
  get kernelInodes(): number {
    return this.kernelRefs.size;
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

  // ------------------------------------------------------------------ names

  async lookup(parent: Ino, name: string): Promise<Attr> {
    if (name === '.' || name === '..') {
      const dir = await this.dirInode(this.store, parent);
      return this.getattr(name === '.' ? parent : dir.parent);
    }
    checkName(name);
    await this.dirInode(this.store, parent);
    const e = await this.entry(this.store, parent, name);
    if (!e) throw fsErr('ENOENT');
    return this.getattr(e.ino);
  }

  async getattr(ino: Ino): Promise<Attr> {
    const epoch = this.published.attrEpoch;
    const attr = this.view(await this.inode(this.store, ino));
    // a directory's attributes go to the driver, unless a directory changed while they were read (they may be older)
    if (isDir(attr.mode) && this.publishesAttrs && epoch === this.published.attrEpoch) this.published.publishAttr(attr);
    return attr;
  }

  private async makeNode(parent: Ino, name: string, mode: number, ctx: Ctx,
    extra: { rdev?: number; target?: string } = {}): Promise<Attr> {
    checkName(name);
    if (name === '.' || name === '..') throw fsErr('EEXIST');
    const ino = await this.allocIno();
    const n = await this.locks.with([parent], () => transact(this.store, async (tx) => {
      const dir = await this.dirInode(tx, parent);
      if (dir.nlink === 0) throw fsErr('ENOENT', 'the directory was removed');
      if (await this.entry(tx, parent, name)) throw fsErr('EEXIST');
      const t = nowTs();
      let gid = ctx.gid;
      let m = mode;
      if (dir.mode & S_ISGID) {
        gid = dir.gid;
        if (isDir(mode)) m |= S_ISGID;
      }
      const node: Inode = {
        ino, version: 0, mode: m, nlink: isDir(m) ? 2 : 1, uid: ctx.uid, gid, rdev: extra.rdev ?? 0,
        size: isDir(m) ? DIR_SIZE : extra.target !== undefined ? Buffer.byteLength(extra.target) : 0,
        atime: t, mtime: t, ctime: t, parent: isDir(m) ? parent : 0, children: 0, stored: 0, truncFrom: 0,
        target: extra.target,
      };
      this.put(tx, node);
      tx.set(K.dirent(parent, name), encodeDirent(ino, m));
      dir.children++;
      if (isDir(m)) dir.nlink++;
      this.touchDir(tx, dir, t);
      return node;
    }));
    this.counters.add(K.inodeCount, 1);
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
    const n = await this.inode(this.store, ino);
    if ((n.mode & S_IFMT) !== S_IFLNK || n.target === undefined) throw fsErr('EINVAL');
    return n.target;
  }

  async link(ino: Ino, newParent: Ino, newName: string): Promise<Attr> {
    checkName(newName);
    if (newName === '.' || newName === '..') throw fsErr('EEXIST');
    const n = await this.locks.with([newParent, ino], () => transact(this.store, async (tx) => {
      const node = await this.inode(tx, ino);
      if (isDir(node.mode)) throw fsErr('EPERM', 'hard links to directories are not allowed');
      if (node.nlink === 0) throw fsErr('ENOENT');
      const dir = await this.dirInode(tx, newParent);
      if (dir.nlink === 0) throw fsErr('ENOENT');
      if (await this.entry(tx, newParent, newName)) throw fsErr('EEXIST');
      const t = nowTs();
      node.nlink++;
      node.ctime = t;
      this.put(tx, node);
      tx.set(K.dirent(newParent, newName), encodeDirent(ino, node.mode));
      dir.children++;
      this.touchDir(tx, dir, t);
      return node;
    }));
    return this.view(n);
  }

  async unlink(parent: Ino, name: string): Promise<void> {
    checkName(name);
    if (name === '.' || name === '..') throw fsErr('EISDIR');
    await this.locks.with([parent], () => transact(this.store, async (tx) => {
      const dir = await this.dirInode(tx, parent);
      const e = await this.entry(tx, parent, name);
      if (!e) throw fsErr('ENOENT');
      if (isDir(e.type)) throw fsErr('EISDIR');
      const node = await this.inode(tx, e.ino);
      const t = nowTs();
      tx.del(K.dirent(parent, name));
      dir.children--;
      this.touchDir(tx, dir, t);
      node.nlink--;
      node.ctime = t;
      if (node.nlink > 0) this.put(tx, node);
      else await this.dropInode(tx, node);
    }));
  }

  async rmdir(parent: Ino, name: string): Promise<void> {
    if (name === '.') throw fsErr('EINVAL');
    if (name === '..') throw fsErr('ENOTEMPTY');
    checkName(name);
    await this.locks.with([parent], () => transact(this.store, async (tx) => {
      const dir = await this.dirInode(tx, parent);
      const e = await this.entry(tx, parent, name);
      if (!e) throw fsErr('ENOENT');
      if (!isDir(e.type)) throw fsErr('ENOTDIR');
      const node = await this.inode(tx, e.ino);
      if (node.children > 0) throw fsErr('ENOTEMPTY');
      const t = nowTs();
      tx.del(K.dirent(parent, name));
      this.queuePurge(tx, node.ino);
      dir.children--;
      dir.nlink--;
      this.touchDir(tx, dir, t);
    }));
  }

  /** true when `ino` is `dir` or one of its ancestors (walks parent pointers inside the transaction) */
  private async isAncestor(tx: Txn, ino: Ino, dir: Ino): Promise<boolean> {
    for (let cur = dir, hops = 0; ; hops++) {
      if (cur === ino) return true;
      if (cur === ROOT_INO) return false;
      if (hops > 4096) throw fsErr('ELOOP', 'directory tree too deep or cyclic');
      cur = (await this.dirInode(tx, cur)).parent;
    }
  }

  async rename(parent: Ino, name: string, newParent: Ino, newName: string, flags = 0): Promise<void> {
    checkName(name);
    checkName(newName);
    if ([name, newName].some((n) => n === '.' || n === '..')) throw fsErr('EINVAL');
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) || (flags & RENAME_NOREPLACE && flags & RENAME_EXCHANGE)) {
      throw fsErr('EINVAL', 'bad rename flags');
    }
    await this.locks.with([parent, newParent], () => transact(this.store, async (tx) => {
      const src = await this.entry(tx, parent, name);
      const srcDir = await this.dirInode(tx, parent);
      const dstDir = parent === newParent ? srcDir : await this.dirInode(tx, newParent);
      if (!src) throw fsErr('ENOENT');
      const dst = await this.entry(tx, newParent, newName);
      if (flags & RENAME_NOREPLACE && dst) throw fsErr('EEXIST');
      if (flags & RENAME_EXCHANGE && !dst) throw fsErr('ENOENT');
      if (dst && dst.ino === src.ino) return; // two links of one inode: POSIX says do nothing
      const node = await this.inode(tx, src.ino);
      const t = nowTs();
      const moving = parent !== newParent;
      if (isDir(node.mode) && moving && await this.isAncestor(tx, node.ino, newParent)) {
        throw fsErr('EINVAL', 'cannot move a directory into itself');
      }

      if (flags & RENAME_EXCHANGE) {
        const other = await this.inode(tx, dst!.ino);
        if (isDir(other.mode) && moving && await this.isAncestor(tx, other.ino, parent)) {
          throw fsErr('EINVAL', 'cannot move a directory into itself');
        }
        tx.set(K.dirent(parent, name), encodeDirent(other.ino, other.mode));
        tx.set(K.dirent(newParent, newName), encodeDirent(node.ino, node.mode));
        if (moving) {
          if (isDir(node.mode)) { node.parent = newParent; srcDir.nlink--; dstDir.nlink++; }
          if (isDir(other.mode)) { other.parent = parent; dstDir.nlink--; srcDir.nlink++; }
        }
        node.ctime = t;
        other.ctime = t;
        this.put(tx, node);
        this.put(tx, other);
        this.touchDir(tx, srcDir, t);
        if (moving) this.touchDir(tx, dstDir, t);
        return;
      }

      if (dst) {
        const victim = await this.inode(tx, dst.ino);
        if (isDir(node.mode)) {
          if (!isDir(victim.mode)) throw fsErr('ENOTDIR');
          if (victim.children > 0) throw fsErr('ENOTEMPTY');
        } else if (isDir(victim.mode)) {
          throw fsErr('EISDIR');
        }
        if (isDir(victim.mode)) {
          this.queuePurge(tx, victim.ino);
          dstDir.nlink--;
        } else {
          victim.nlink--;
          victim.ctime = t;
          if (victim.nlink > 0) this.put(tx, victim);
          else await this.dropInode(tx, victim);
        }
        dstDir.children--;
      }
      tx.del(K.dirent(parent, name));
      tx.set(K.dirent(newParent, newName), encodeDirent(node.ino, node.mode));
      srcDir.children--;
      dstDir.children++;
      if (isDir(node.mode) && moving) {
        node.parent = newParent;
        srcDir.nlink--;
        dstDir.nlink++;
      }
      node.ctime = t;
      this.put(tx, node);
      this.touchDir(tx, srcDir, t);
      if (moving) this.touchDir(tx, dstDir, t);
    }));
  }

  // ------------------------------------------------------------------ attributes

  async setattr(ino: Ino, set: SetAttr, _ctx?: Ctx): Promise<Attr> {
    const t = nowTs();
    if (set.size !== undefined) {
      if (!Number.isSafeInteger(set.size) || set.size < 0) throw fsErr('EINVAL');
      const n = await this.inode(this.store, ino);
      if (isDir(n.mode)) throw fsErr('EISDIR');
      if (!isReg(n.mode)) throw fsErr('EINVAL');
      const f = await this.fileData(ino);
      try {
        await this.locks.with([ino], () => f.truncate(set.size!, t));
      } finally {
        await this.unref(f);
      }
    }
    const meta = set.mode !== undefined || set.uid !== undefined || set.gid !== undefined ||
      set.atime !== undefined || set.mtime !== undefined || set.ctime !== undefined;
    if (!meta) return this.getattr(ino);
    const n = await this.locks.with([ino], () => transact(this.store, async (tx) => {
      const node = await this.inode(tx, ino);
      if (set.mode !== undefined) node.mode = (node.mode & S_IFMT) | (set.mode & 0o7777);
      if (set.uid !== undefined) node.uid = set.uid;
      if (set.gid !== undefined) node.gid = set.gid;
      if (set.atime !== undefined) node.atime = set.atime === 'now' ? t : set.atime;
      if (set.mtime !== undefined) node.mtime = set.mtime === 'now' ? t : set.mtime;
      node.ctime = set.ctime ?? t;
      this.put(tx, node);
      return node;
    }));
    const f = this.files.get(ino);
    if (f && set.mtime !== undefined) f.mtime = undefined; // an explicit mtime wins over pending writes' mtime
    return this.view(n);
  }

  /**
   * Clears the privileges a change by an unprivileged caller must drop (as the Linux VFS does): setuid, setgid
   * when the group may execute (otherwise it marks mandatory locking), and security.capability. Nothing is
   * written when there is nothing to clear.
   */
  async killPriv(ino: Ino): Promise<void> {
    const n = await this.inode(this.store, ino);
    const clear = (n.mode & S_ISUID ? S_ISUID : 0) | ((n.mode & (S_ISGID | 0o010)) === (S_ISGID | 0o010) ? S_ISGID : 0);
    const cap = (await this.store.get(K.xattr(ino, 'security.capability'))) !== undefined;
    if (!clear && !cap) return;
    await this.locks.with([ino], () => transact(this.store, async (tx) => {
      const node = await this.inode(tx, ino);
      node.mode &= ~clear;
      if (cap) tx.del(K.xattr(ino, 'security.capability'));
      node.ctime = nowTs();
      this.put(tx, node);
    }));
  }

  // ------------------------------------------------------------------ files

  async open(ino: Ino, flags: number): Promise<Fh> {
    const n = await this.inode(this.store, ino);
    if (isDir(n.mode)) throw fsErr('EISDIR');
    if ((n.mode & S_IFMT) === S_IFLNK) throw fsErr('ELOOP');
    const data = await this.fileData(ino);
    // Close-to-open on a shared store: what another mount committed before this open is what it reads.
    let keepCache = true;
    if (this.shared) {
      const stamp = `${n.mtime.sec}.${n.mtime.nsec}:${n.size}`;
      if (this.stamps.get(ino) !== stamp) {
        keepCache = false;
        this.stamps.set(ino, stamp);
        if (data.refs > 1) data.refresh(n);
        this.onInodeChanged?.(ino);
      }
    }
    if (flags & constants.O_TRUNC && (flags & 3) !== constants.O_RDONLY) {
      try {
        await this.locks.with([ino], () => data.truncate(0, nowTs()));
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
    const buf = this.buffers.take(false);
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
      this.buffers.give(buf);
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
    if (h.kind === 'file') await h.data.flush();
  }

  /** commits and makes the store put it on stable storage */
  async fsync(fh: Fh, _datasync = false): Promise<void> {
    const h = this.handle(fh);
    if (h.kind === 'file') await h.data.flush();
    await this.store.sync();
  }

  /** commits every open file's buffered writes, then has the store put all of it on stable storage (syncfs(2)) */
  async sync(): Promise<void> {
    await Promise.all([...this.files.values()].map((f) => f.flush()));
    await this.store.sync();
  }

  /** has the store put what is committed on stable storage (fsync(2) of a directory) */
  async syncMetadata(): Promise<void> {
    await this.store.sync();
  }

  async release(fh: Fh): Promise<void> {
    const h = this.handle(fh);
    this.handles.delete(fh);
    if (h.kind === 'file') await this.unref(h.data);
  }

  // ------------------------------------------------------------------ directories

  async opendir(ino: Ino): Promise<Fh> {
    await this.dirInode(this.store, ino);
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
    if (!h.entries || offset === 0) {
      const dir = await this.dirInode(this.store, h.ino);
      const list: DirEntry[] = [
        { name: '.', ino: h.ino, type: S_IFDIR, next: 1 },
        { name: '..', ino: dir.parent, type: S_IFDIR, next: 2 },
      ];
      const prefix = K.dirPrefix(h.ino);
      let after: string | undefined;
      for (;;) {
        const page = await this.store.scan(prefix, { after, limit: 1024 });
        for (const [key, val] of page) {
          const e = decodeDirent(val);
          list.push({ name: memberOf(key, prefix), ino: e.ino, type: e.type, next: list.length + 1 });
        }
        if (page.length < 1024) break;
        after = page[page.length - 1][0];
      }
      h.entries = list;
    }
    const out = h.entries.slice(offset, offset + Math.max(0, Math.min(max, h.entries.length)));
    if (!plus || !out.length) return out;
    // copies: the handle's listing keeps names, never attributes
    const raws = await this.store.getMany(out.map((e) => K.inode(e.ino)));
    return out.map((e, i) => { const r = raws[i]; return r ? { ...e, attr: this.view(decodeInode(e.ino, r)) } : e; });
  }

  async releasedir(fh: Fh): Promise<void> {
    this.handle(fh);
    this.handles.delete(fh);
  }

  // ------------------------------------------------------------------ the volume

  /** space: the volume's bytes against what its store can hold (volume-space.ts); files: the volume's inodes */
  async statfs(): Promise<StatFs> {
    const info = await this.store.info();
    const used = await this.counters.read(K.byteCount);
    const inodes = Math.max(0, await this.counters.read(K.inodeCount));
    const maxFiles = 2 ** 30;
    return {
      bsize: STATFS_BLOCK, frsize: STATFS_BLOCK, ...volumeSpace(used, info),
      files: maxFiles, ffree: Math.max(0, maxFiles - inodes), namemax: NAME_MAX,
    };
  }

  // ------------------------------------------------------------------ extended attributes

  async setxattr(ino: Ino, name: string, value: Uint8Array, flags = 0): Promise<void> {
    if (!name.length || Buffer.byteLength(name) > XATTR_NAME_MAX) throw fsErr('ERANGE');
    if (value.length > XATTR_SIZE_MAX) throw fsErr('E2BIG');
    if (!xattrStored(name)) throw fsErr('EOPNOTSUPP');
    await this.locks.with([ino], () => transact(this.store, async (tx) => {
      const node = await this.inode(tx, ino);
      const exists = (await tx.get(K.xattr(ino, name))) !== undefined;
      if (flags & XATTR_CREATE && exists) throw fsErr('EEXIST');
      if (flags & XATTR_REPLACE && !exists) throw fsErr('ENODATA');
      tx.set(K.xattr(ino, name), value);
      node.ctime = nowTs();
      this.put(tx, node);
    }));
  }

  async getxattr(ino: Ino, name: string): Promise<Buffer> {
    // What is not stored is unsupported, as for setxattr, not merely unset: tools such as `ls -l` then stop
    // asking for the whole device (ACLs, SELinux labels) instead of asking once per file.
    if (!xattrStored(name)) throw fsErr('EOPNOTSUPP');
    await this.inode(this.store, ino);
    const v = await this.store.get(K.xattr(ino, name));
    if (!v) throw fsErr('ENODATA');
    return Buffer.from(v);
  }

  async listxattr(ino: Ino): Promise<string[]> {
    await this.inode(this.store, ino);
    const prefix = K.xattrPrefix(ino);
    const names: string[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await this.store.scan(prefix, { after, limit: 1024 });
      for (const [k] of page) names.push(memberOf(k, prefix));
      if (page.length < 1024) return names;
      after = page[page.length - 1][0];
    }
  }

  async removexattr(ino: Ino, name: string): Promise<void> {
    if (!xattrStored(name)) throw fsErr('EOPNOTSUPP');
    await this.locks.with([ino], () => transact(this.store, async (tx) => {
      const node = await this.inode(tx, ino);
      if ((await tx.get(K.xattr(ino, name))) === undefined) throw fsErr('ENODATA');
      tx.del(K.xattr(ino, name));
      node.ctime = nowTs();
      this.put(tx, node);
    }));
  }

  /** POSIX access(2) against the modes, for drivers that ask (the kernel checks on its own otherwise) */
  async access(ino: Ino, mask: number, ctx: Ctx): Promise<void> {
    const n = await this.inode(this.store, ino);
    if (mask === constants.F_OK) return;
    if (ctx.uid === 0) {
      if (mask & constants.X_OK && !isDir(n.mode) && !(n.mode & 0o111)) throw fsErr('EACCES');
      return;
    }
    const bits = ctx.uid === n.uid ? (n.mode >> 6) & 7 : ctx.gid === n.gid ? (n.mode >> 3) & 7 : n.mode & 7;
    if ((mask & bits) !== mask) throw fsErr('EACCES');
  }

}

