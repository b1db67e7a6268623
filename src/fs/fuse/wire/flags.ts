/**
 * The other flag and constant groups of <linux/fuse.h> (7.38), exact values, grouped by where they travel.
 * INIT capabilities are in init-flags.ts.
 */

/** protocol version of this wire layer, and the root's node id */
export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 38;
export const FUSE_ROOT_ID = 1;

/** fuse_setattr_in.valid: which fields to change */
export const FATTR = {
  FATTR_MODE: 1 << 0,
  FATTR_UID: 1 << 1,
  FATTR_GID: 1 << 2,
  FATTR_SIZE: 1 << 3,
  FATTR_ATIME: 1 << 4,
  FATTR_MTIME: 1 << 5,
  FATTR_FH: 1 << 6,
  FATTR_ATIME_NOW: 1 << 7,
  FATTR_MTIME_NOW: 1 << 8,
  FATTR_LOCKOWNER: 1 << 9,
  FATTR_CTIME: 1 << 10,
  FATTR_KILL_SUIDGID: 1 << 11,
} as const;

/** fuse_open_out.open_flags: how the kernel should treat an open file */
export const FOPEN = {
  FOPEN_DIRECT_IO: 1 << 0,
  FOPEN_KEEP_CACHE: 1 << 1,
  FOPEN_NONSEEKABLE: 1 << 2,
  FOPEN_CACHE_DIR: 1 << 3,
  FOPEN_STREAM: 1 << 4,
  FOPEN_NOFLUSH: 1 << 5,
  FOPEN_PARALLEL_DIRECT_WRITES: 1 << 6,
} as const;

/** request-side flags of single opcodes */
export const REQUEST_FLAGS = {
  /** fuse_release_in.release_flags */
  FUSE_RELEASE_FLUSH: 1 << 0,
  FUSE_RELEASE_FLOCK_UNLOCK: 1 << 1,
  /** fuse_getattr_in.getattr_flags: fh is valid */
  FUSE_GETATTR_FH: 1 << 0,
  /** fuse_lk_in.lk_flags: a flock(2) lock, not a POSIX one */
  FUSE_LK_FLOCK: 1 << 0,
  /** fuse_write_in.write_flags */
  FUSE_WRITE_CACHE: 1 << 0,
  FUSE_WRITE_LOCKOWNER: 1 << 1,
  FUSE_WRITE_KILL_SUIDGID: 1 << 2,
  /** fuse_read_in.read_flags */
  FUSE_READ_LOCKOWNER: 1 << 1,
  /** fuse_fsync_in.fsync_flags */
  FUSE_FSYNC_FDATASYNC: 1 << 0,
  /** fuse_open_in.open_flags, fuse_create_in.open_flags */
  FUSE_OPEN_KILL_SUIDGID: 1 << 0,
  /** fuse_setxattr_in.setxattr_flags */
  FUSE_SETXATTR_ACL_KILL_SGID: 1 << 0,
  /** fuse_poll_in.flags */
  FUSE_POLL_SCHEDULE_NOTIFY: 1 << 0,
} as const;

/** fuse_ioctl_in.flags / fuse_ioctl_out.flags */
export const IOCTL = {
  FUSE_IOCTL_COMPAT: 1 << 0,
  FUSE_IOCTL_UNRESTRICTED: 1 << 1,
  FUSE_IOCTL_RETRY: 1 << 2,
  FUSE_IOCTL_32BIT: 1 << 3,
  FUSE_IOCTL_DIR: 1 << 4,
  FUSE_IOCTL_COMPAT_X32: 1 << 5,
  FUSE_IOCTL_MAX_IOV: 256,
} as const;

/** fuse_attr.flags */
export const ATTR_FLAGS = {
  FUSE_ATTR_SUBMOUNT: 1 << 0,
  FUSE_ATTR_DAX: 1 << 1,
} as const;

/** sizes the kernel relies on */
export const SIZES = {
  /** a /dev/fuse read buffer must be at least this large */
  FUSE_MIN_READ_BUFFER: 8192,
} as const;
