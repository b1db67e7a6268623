/**
 * The inode-level operations of a volume: reading and writing inodes and directory entries, making and removing
 * names, renaming, and removing inodes, as steps inside a transaction (txn.ts) over the KV interface. They need
 * no mount, no handles and no kernel: the mount (src/fs/filesystem.ts) goes through them, and so do the tools
 * that work on a volume without one.
 *
 * Contract:
 *  - Each step reads and writes through the Txn it is given (and scans, which transactions do not cover: the
 *    schema keeps the counts a decision needs); the caller runs `transact` around one or more steps, and takes
 *    its own locks if it has any.
 *  - Every POSIX outcome is an FsError (ENOENT, EEXIST, ENOTEMPTY, ...) decided from what the Txn read, so a
 *    commit that conflicts decides again.
 *  - Steps that take the last link of an inode leave its fate to the caller's `drop` (a mount keeps an inode in
 *    use as an orphan); `removeInode` removes one that nothing uses.
 *  - Hooks let a mount follow what commits do (an inode record written or deleted, purge work queued, the count
 *    of live inodes); the volume's invariants need none of them.
 */
import type { KvStore } from '../backend/kv.js';
import { fsErr } from './errors.js';
import { K, decodeChunk, decodeDirent, decodeInode, encodeDirent, encodeInode, entryBlobs, nowTs, type Inode } from './schema.js';
import { queueGc } from './queues.js';
import type { Txn } from './txn.js';
import { RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INO, type Ino, type Timespec } from './types.js';

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const NAME_MAX = 255;
export const XATTR_NAME_MAX = 255;
export const XATTR_SIZE_MAX = 65536;

/**
 * Whether a volume stores the xattr `name`: the user, trusted and security namespaces but security.selinux
 * (src/fs/xattrs.ts says why); others are the kernel's business (system.posix_acl_* among them).
 */
export const xattrStored = (name: string) => /^(user|trusted|security)\./.test(name) && name !== 'security.selinux';
/** st_size of a directory */
export const DIR_SIZE = 4096;
/** an inode removed with at most this many xattrs is removed in its unlink's commit (more: the purge queue) */
const INLINE_XATTRS = 64;

export const isDir = (mode: number) => (mode & S_IFMT) === S_IFDIR;
export const isReg = (mode: number) => (mode & S_IFMT) === S_IFREG;

/** EINVAL for a name no directory may hold, ENAMETOOLONG past NAME_MAX bytes */
export function checkName(name: string): void {
  if (name.length === 0 || name.includes('/') || name.includes('\0')) throw fsErr('EINVAL', `bad name '${name}'`);
  if (Buffer.byteLength(name) > NAME_MAX) throw fsErr('ENAMETOOLONG');
}

export interface VolumeHooks {
  /** an inode record is written in tx (n as written) */
  written?(tx: Txn, n: Inode): void;
  /** an inode record is deleted in tx */
  deleted?(tx: Txn, ino: Ino): void;
  /** the purge queue gets an inode, or the GC queue blobs, in tx (work for the janitor once it commits) */
  purgeQueued?(tx: Txn): void;
  /** the number of live inodes changed by delta (called once the commit is done) */
  counted?(delta: number): void;
}

/** What to do with an inode whose last link a step took (nlink 0, not yet written): write it or remove it. */
export type Drop = (tx: Txn, n: Inode) => Promise<void>;

export class Volume {
  constructor(readonly store: KvStore, private readonly hooks: VolumeHooks = {}) {}

  async inode(tx: Txn | KvStore, ino: Ino): Promise<Inode> {
    const raw = await tx.get(K.inode(ino));
    if (!raw) throw fsErr('ENOENT', `no inode ${ino}`);
    return decodeInode(ino, raw);
  }

  async dirInode(tx: Txn | KvStore, ino: Ino): Promise<Inode> {
    const n = await this.inode(tx, ino);
    if (!isDir(n.mode)) throw fsErr('ENOTDIR');
    return n;
  }

  async entry(tx: Txn | KvStore, parent: Ino, name: string): Promise<{ ino: Ino; type: number } | undefined> {
    const raw = await tx.get(K.dirent(parent, name));
    return raw ? decodeDirent(raw) : undefined;
  }

  /** writes an inode (its version bumped) in tx */
  put(tx: Txn, n: Inode): void {
    n.version++;
    tx.set(K.inode(n.ino), encodeInode(n));
    this.hooks.written?.(tx, n);
  }

  touchDir(tx: Txn, dir: Inode, t: Timespec): void {
    dir.mtime = t;
    dir.ctime = t;
    this.put(tx, dir);
  }

  /** deletes ino's inode record in tx */
  dropRecord(tx: Txn, ino: Ino): void {
    tx.del(K.inode(ino));
    this.hooks.deleted?.(tx, ino);
  }

  /** deletes ino's inode record in tx and queues the rest of it (chunks, xattrs) for purge */
  queuePurge(tx: Txn, ino: Ino): void {
    this.dropRecord(tx, ino);
    tx.set(K.purge(ino), Buffer.alloc(0));
    this.hooks.purgeQueued?.(tx);
  }

  /**
   * Removes an inode in use nowhere, in tx. One with at most one chunk and few xattrs (most unlinks, every rmdir)
   * goes in this same commit, its chunk's blobs to the GC queue; a larger one goes to the purge queue. The scans
   * need no checks: no chunk can appear for an inode in use nowhere, and an xattr set meanwhile changes the inode,
   * which this commit checks (the caller read it in tx); the one chunk is read in tx, so the commit checks it too.
   */
  async removeInode(tx: Txn, ino: Ino): Promise<void> {
    const chunks = await this.store.scan(K.chunkPrefix(ino), { limit: 2 });
    const xattrs = chunks.length > 1 ? [] : await this.store.scan(K.xattrPrefix(ino), { limit: INLINE_XATTRS + 1 });
    if (chunks.length > 1 || xattrs.length > INLINE_XATTRS) {
      this.queuePurge(tx, ino);
      return;
    }
    this.dropRecord(tx, ino);
    for (const [k] of xattrs) tx.del(k);
    for (const [key] of chunks) {
      const raw = await tx.get(key);
      if (!raw) continue;
      tx.del(key);
      for (const b of entryBlobs(decodeChunk(raw))) queueGc(tx, b.blobId, b.length);
      this.hooks.purgeQueued?.(tx);
    }
    tx.after.push(() => this.hooks.counted?.(-1));
  }

  /** removes an inode whose last link went, when nothing else keeps it (the Drop of a volume without a mount) */
  readonly remove: Drop = (tx, n) => this.removeInode(tx, n.ino);

  /** true when `ino` is `dir` or one of its ancestors (walks parent pointers inside the transaction) */
  async isAncestor(tx: Txn, ino: Ino, dir: Ino): Promise<boolean> {
    for (let cur = dir, hops = 0; ; hops++) {
      if (cur === ino) return true;
      if (cur === ROOT_INO) return false;
      if (hops > 4096) throw fsErr('ELOOP', 'directory tree too deep or cyclic');
      cur = (await this.dirInode(tx, cur)).parent;
    }
  }

  /**
   * Makes `name` in `parent` name a new inode, which `make` builds from the directory and the time (its version
   * 0): EEXIST when the name is taken, ENOENT when the directory was removed. Counts the new inode.
   */
  async addNode(tx: Txn, parent: Ino, name: string, make: (dir: Inode, t: Timespec) => Inode): Promise<Inode> {
    const dir = await this.dirInode(tx, parent);
    if (dir.nlink === 0) throw fsErr('ENOENT', 'the directory was removed');
    if (await this.entry(tx, parent, name)) throw fsErr('EEXIST');
    const t = nowTs();
    const node = make(dir, t);
    this.put(tx, node);
    tx.set(K.dirent(parent, name), encodeDirent(node.ino, node.mode));
    dir.children++;
    if (isDir(node.mode)) dir.nlink++;
    this.touchDir(tx, dir, t);
    tx.after.push(() => this.hooks.counted?.(1));
    return node;
  }

  /** a new name `newName` in `newParent` for the file ino (hard link); returns the inode as written */
  async addLink(tx: Txn, ino: Ino, newParent: Ino, newName: string): Promise<Inode> {
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
  }

  /** removes the name of a non-directory; an inode left without links goes to `drop` */
  async unlink(tx: Txn, parent: Ino, name: string, drop: Drop): Promise<void> {
    const dir = await this.dirInode(tx, parent);
    const e = await this.entry(tx, parent, name);
    if (!e) throw fsErr('ENOENT');
    if (isDir(e.type)) throw fsErr('EISDIR');
    const node = await this.inode(tx, e.ino);
    const t = nowTs();
    tx.del(K.dirent(parent, name));
    dir.children--;
    this.touchDir(tx, dir, t);
    await this.unlinked(tx, node, t, drop);
  }

  /** an inode lost one link at t: written back, or, at nlink 0, handed to drop */
  private async unlinked(tx: Txn, node: Inode, t: Timespec, drop: Drop): Promise<void> {
    node.nlink--;
    node.ctime = t;
    if (node.nlink > 0) this.put(tx, node);
    else await drop(tx, node);
  }

  /** removes an empty directory (ENOTEMPTY otherwise); the inode goes to the purge queue */
  async rmdir(tx: Txn, parent: Ino, name: string): Promise<void> {
    const dir = await this.dirInode(tx, parent);
    const e = await this.entry(tx, parent, name);
    if (!e) throw fsErr('ENOENT');
    if (!isDir(e.type)) throw fsErr('ENOTDIR');
    const node = await this.inode(tx, e.ino);
    if (node.children > 0) throw fsErr('ENOTEMPTY');
    tx.del(K.dirent(parent, name));
    this.queuePurge(tx, node.ino);
    dir.children--;
    dir.nlink--;
    this.touchDir(tx, dir, nowTs());
  }

  /**
   * rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE: a file replaced at the destination loses a link (to
   * `drop` at nlink 0), a replaced empty directory goes to the purge queue. Two names of one inode: nothing.
   */
  async rename(tx: Txn, parent: Ino, name: string, newParent: Ino, newName: string, flags: number, drop: Drop): Promise<void> {
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
        await this.unlinked(tx, victim, t, drop);
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
  }
}
