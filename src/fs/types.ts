/**
 * The shapes the filesystem core speaks in. Drivers (src/fs/fuse) translate these to and from the wire.
 * Inode numbers are plain numbers (safe integers; the root is 1). File handles are numbers the core hands out.
 */
export type { Attr, Ino, Timespec } from '../volume/types.js';
export { RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INO } from '../volume/types.js';
import type { Attr, Ino, Timespec } from '../volume/types.js';
export type Fh = number;

/** Who is asking: the caller's credentials as the kernel reported them. */
export interface Ctx {
  uid: number;
  gid: number;
  pid: number;
}

/** The changes of one setattr call; absent fields stay as they are. 'now' is the store's current time. */
export interface SetAttr {
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  atime?: Timespec | 'now';
  mtime?: Timespec | 'now';
  /** set ctime explicitly (rare: FUSE's FATTR_CTIME); otherwise ctime follows POSIX */
  ctime?: Timespec;
}

export interface DirEntry {
  name: string;
  ino: Ino;
  /** type bits of st_mode (S_IFREG, S_IFDIR, ...) */
  type: number;
  /** the cookie to pass as offset to continue after this entry */
  next: number;
  /** attributes, for readdirplus */
  attr?: Attr;
}

export interface StatFs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  namemax: number;
}

/** setxattr flags */
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;

/**
 * An index of file data the FUSE driver may answer READ (and FLUSH) requests from without asking the core (the native
 * channel's reader threads do: native/read-index.h). The core publishes the committed, immutable bytes of a
 * chunk it has just read, and takes them back (synchronously, before the change is visible) whenever the
 * chunk or the file's size changes. `data` stays alive and unchanged until it is retracted; null is a hole.
 * `retract` returns only when the driver no longer reads the bytes it took back.
 */
export interface ReadIndex {
  /** mark: the driver reports (through the core's readAheadHint) the first READ it serves from this chunk */
  publish(ino: Ino, size: number, chunkSize: number, idx: number, data: Uint8Array | null, mark?: boolean): void;
  /**
   * The same for a chunk whose committed bytes are the first `length` bytes of an immutable file (a blob file of
   * the store, KvStore.blobFile): the driver reads the file itself; one it cannot read sends the READ to the core.
   */
  publishFile?(ino: Ino, size: number, chunkSize: number, idx: number, path: string, length: number, mark?: boolean): void;
  setSize(ino: Ino, size: number): void;
  /**
   * The driver answers GETATTRs of attr.ino with attr until retractAttr or another publishAttr. The core
   * publishes only current attributes, and replaces or retracts them (synchronously) before it acknowledges a
   * change; both return once the driver no longer answers with what they replaced.
   */
  publishAttr?(attr: Attr): void;
  retractAttr?(ino: Ino): void;
  /**
   * Whether the file has nothing uncommitted, so that the driver may answer a FLUSH (close) by itself. Set
   * false synchronously before any change to the file is acknowledged.
   */
  setClean(ino: Ino, clean: boolean): void;
  /** one chunk, or the whole file when idx is absent */
  retract(ino: Ino, idx?: number): void;
}
