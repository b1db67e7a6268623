/**
 * INIT capability flags, exactly as <linux/fuse.h> defines them, as 64-bit bigints: bits 0..31 travel in
 * fuse_init_in/out.flags, bits 32..63 in flags2 (shifted down 32; only read by either side when FUSE_INIT_EXT is set).
 */
export const INIT_FLAGS = {
  FUSE_ASYNC_READ: 1n << 0n,
  FUSE_POSIX_LOCKS: 1n << 1n,
  FUSE_FILE_OPS: 1n << 2n,
  FUSE_ATOMIC_O_TRUNC: 1n << 3n,
  FUSE_EXPORT_SUPPORT: 1n << 4n,
  FUSE_BIG_WRITES: 1n << 5n,
  FUSE_DONT_MASK: 1n << 6n,
  FUSE_SPLICE_WRITE: 1n << 7n,
  FUSE_SPLICE_MOVE: 1n << 8n,
  FUSE_SPLICE_READ: 1n << 9n,
  FUSE_FLOCK_LOCKS: 1n << 10n,
  FUSE_HAS_IOCTL_DIR: 1n << 11n,
  FUSE_AUTO_INVAL_DATA: 1n << 12n,
  FUSE_DO_READDIRPLUS: 1n << 13n,
  FUSE_READDIRPLUS_AUTO: 1n << 14n,
  FUSE_ASYNC_DIO: 1n << 15n,
  FUSE_WRITEBACK_CACHE: 1n << 16n,
  FUSE_NO_OPEN_SUPPORT: 1n << 17n,
  FUSE_PARALLEL_DIROPS: 1n << 18n,
  FUSE_HANDLE_KILLPRIV: 1n << 19n,
  FUSE_POSIX_ACL: 1n << 20n,
  FUSE_ABORT_ERROR: 1n << 21n,
  FUSE_MAX_PAGES: 1n << 22n,
  FUSE_CACHE_SYMLINKS: 1n << 23n,
  FUSE_NO_OPENDIR_SUPPORT: 1n << 24n,
  FUSE_EXPLICIT_INVAL_DATA: 1n << 25n,
  FUSE_MAP_ALIGNMENT: 1n << 26n,
  FUSE_SUBMOUNTS: 1n << 27n,
  FUSE_HANDLE_KILLPRIV_V2: 1n << 28n,
  FUSE_SETXATTR_EXT: 1n << 29n,
  FUSE_INIT_EXT: 1n << 30n,
  FUSE_INIT_RESERVED: 1n << 31n,
  FUSE_SECURITY_CTX: 1n << 32n,
  FUSE_HAS_INODE_DAX: 1n << 33n,
  FUSE_HAS_EXPIRE_ONLY: 1n << 35n,
} as const;

export type InitFlagName = keyof typeof INIT_FLAGS;

/** The names of the bits set in `flags` (unknown bits as `bit N`), for logs. */
export function initFlagNames(flags: bigint): string[] {
  const out: string[] = [];
  let rest = flags;
  for (const [name, bit] of Object.entries(INIT_FLAGS)) {
    if (flags & bit) out.push(name);
    rest &= ~bit;
  }
  for (let i = 0n; rest !== 0n && i < 64n; i++) {
    if (rest & (1n << i)) out.push(`bit ${i}`);
    rest &= ~(1n << i);
  }
  return out;
}
