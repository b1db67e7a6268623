/**
 * Reply bodies: one codec per fixed reply struct, each writing exactly `size` bytes (padding and unused fields
 * zeroed, so a pooled buffer's old bytes never leak to the kernel) at an offset of a caller's Buffer.
 * A codec throws RangeError when a value does not fit its field; the session then answers EIO instead.
 *
 * Attributes are encoded from the core's Attr (src/fs/types.ts): times {sec, nsec} become fuse_attr's
 * seconds (signed: times before 1970 are negative) and nanoseconds; blksize 0 lets the kernel use the
 * superblock's block size; fuse_attr.flags are FUSE_ATTR_* (0 for us).
 */
import type { Attr, StatFs } from '../../types.js';
import { encode, type Fields } from './layout.js';
import type { FileLock } from './request.js';
import { STRUCTS } from './structs.js';

/** Attr as the kernel sees it: st_blksize and fuse_attr.flags may be given, default 0 */
export type FuseAttr = Attr & { blksize?: number; flags?: number };

/** fuse_entry_out. nodeid 0 with entry_valid > 0 is a negative entry (the kernel caches the ENOENT). */
export interface EntryOut {
  nodeid: number;
  generation: number;
  /** how long the kernel may cache the name, seconds + nanoseconds */
  entry_valid: number;
  entry_valid_nsec: number;
  /** how long the kernel may cache the attributes */
  attr_valid: number;
  attr_valid_nsec: number;
  attr: FuseAttr;
}

export interface AttrOut {
  attr_valid: number;
  attr_valid_nsec: number;
  attr: FuseAttr;
}

/** open_flags: FOPEN_* (flags.ts) */
export type OpenOut = Fields<typeof STRUCTS.fuse_open_out>;
/** CREATE and TMPFILE: fuse_entry_out then fuse_open_out */
export interface CreateOut {
  entry: EntryOut;
  open: OpenOut;
}
export type WriteOut = Fields<typeof STRUCTS.fuse_write_out>;
export type GetxattrOut = Fields<typeof STRUCTS.fuse_getxattr_out>;
export type InitOut = Fields<typeof STRUCTS.fuse_init_out>;
export type BmapOut = Fields<typeof STRUCTS.fuse_bmap_out>;
export type LseekOut = Fields<typeof STRUCTS.fuse_lseek_out>;
export type PollOut = Fields<typeof STRUCTS.fuse_poll_out>;
export type IoctlOut = Fields<typeof STRUCTS.fuse_ioctl_out>;

export interface ReplyBody<T> {
  /** the kernel struct written */
  readonly struct: string;
  /** bytes written, always */
  readonly size: number;
  write(buf: Buffer, off: number, v: T): void;
}

/**
 * Attr with st_blksize, made in one place: every reply's attributes then have one shape (a spread of Attr gave them
 * several, and the loads of writeAttr went to the runtime on every LOOKUP and CREATE reply).
 */
export function fuseAttr(a: Attr, blksize: number): FuseAttr {
  return {
    ino: a.ino, mode: a.mode, nlink: a.nlink, uid: a.uid, gid: a.gid, rdev: a.rdev, size: a.size, blocks: a.blocks,
    atime: a.atime, mtime: a.mtime, ctime: a.ctime, blksize, flags: 0,
  };
}

/** fuse_attr (88 bytes) at off */
export function writeAttr(buf: Buffer, off: number, a: FuseAttr): void {
  encode(STRUCTS.fuse_attr, buf, off, {
    ino: a.ino, size: a.size, blocks: a.blocks,
    atime: a.atime.sec, mtime: a.mtime.sec, ctime: a.ctime.sec,
    atimensec: a.atime.nsec, mtimensec: a.mtime.nsec, ctimensec: a.ctime.nsec,
    mode: a.mode, nlink: a.nlink, uid: a.uid, gid: a.gid, rdev: a.rdev,
    blksize: a.blksize ?? 0, flags: a.flags ?? 0,
  });
}

/** fuse_entry_out (128 bytes) at off */
export function writeEntryOut(buf: Buffer, off: number, e: EntryOut): void {
  const l = STRUCTS.fuse_entry_out;
  encode(l, buf, off, e);
  writeAttr(buf, off + l.fields.attr[0], e.attr);
}

function flat<T>(l: { name: string; size: number }, write: (buf: Buffer, off: number, v: T) => void): ReplyBody<T> {
  return { struct: l.name, size: l.size, write };
}

function simple<L extends (typeof STRUCTS)[keyof typeof STRUCTS]>(l: L): ReplyBody<Fields<L>> {
  return flat(l, (buf, off, v) => encode(l, buf, off, v));
}

const S = STRUCTS;

/** The fixed reply bodies, by reply kind (opcodes.ts ReplyKind). */
export const REPLY = {
  entry: flat<EntryOut>(S.fuse_entry_out, writeEntryOut),
  attr: flat<AttrOut>(S.fuse_attr_out, (buf, off, v) => {
    encode(S.fuse_attr_out, buf, off, v);
    writeAttr(buf, off + S.fuse_attr_out.fields.attr[0], v.attr);
  }),
  open: simple(S.fuse_open_out),
  create: flat<CreateOut>(
    { name: 'fuse_entry_out + fuse_open_out', size: S.fuse_entry_out.size + S.fuse_open_out.size },
    (buf, off, v) => {
      writeEntryOut(buf, off, v.entry);
      encode(S.fuse_open_out, buf, off + S.fuse_entry_out.size, v.open);
    },
  ),
  write: simple(S.fuse_write_out),
  /** fuse_statfs_out from the core's StatFs (namemax is fuse_kstatfs.namelen) */
  statfs: flat<StatFs>(S.fuse_statfs_out, (buf, off, v) => {
    encode(S.fuse_statfs_out, buf, off, {});
    encode(S.fuse_kstatfs, buf, off + S.fuse_statfs_out.fields.st[0], {
      blocks: v.blocks, bfree: v.bfree, bavail: v.bavail, files: v.files, ffree: v.ffree,
      bsize: v.bsize, namelen: v.namemax, frsize: v.frsize,
    });
  }),
  /** GETXATTR/LISTXATTR size queries (request size 0) */
  getxattr: simple(S.fuse_getxattr_out),
  init: simple(S.fuse_init_out),
  /** GETLK: the conflicting lock, or type F_UNLCK when none */
  lk: flat<FileLock>(S.fuse_lk_out, (buf, off, v) => {
    encode(S.fuse_lk_out, buf, off, {});
    encode(S.fuse_file_lock, buf, off + S.fuse_lk_out.fields.lk[0], v);
  }),
  bmap: simple(S.fuse_bmap_out),
  lseek: simple(S.fuse_lseek_out),
  poll: simple(S.fuse_poll_out),
  ioctl: simple(S.fuse_ioctl_out),
} as const;
