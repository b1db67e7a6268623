/**
 * The shapes a volume is made of, below any mount: inode numbers (plain safe integers; the root is 1),
 * timestamps and attributes.
 */
export type Ino = number;

export const ROOT_INO: Ino = 1;

/** A timestamp: whole seconds and nanoseconds since the epoch. */
export interface Timespec {
  sec: number;
  nsec: number;
}

export interface Attr {
  ino: Ino;
  /** type and permission bits, as st_mode */
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  size: number;
  /** 512-byte blocks actually stored */
  blocks: number;
  atime: Timespec;
  mtime: Timespec;
  ctime: Timespec;
}

/** rename(2) flags, as in <linux/fs.h> */
export const RENAME_NOREPLACE = 1;
export const RENAME_EXCHANGE = 2;
