/**
 * The opcode table: one row per opcode of enum fuse_opcode (FUSE_LOOKUP … FUSE_TMPFILE; CUSE_INIT is excluded),
 * the one place that says what each request carries and what its reply is. Everything else (parsing, the session's
 * "exactly one reply" rule) reads this table instead of switching on opcodes.
 *
 * A request body is: the fixed input struct (`inStruct`, `inSize` bytes), then `names` NUL-terminated names, then,
 * when `trailing`, bytes whose length a struct field gives (WRITE data, SETXATTR value, IOCTL input, NOTIFY_REPLY
 * data, BATCH_FORGET / REMOVEMAPPING entries), then extensions (fuse_in_header.total_extlen, handled by the parser).
 *
 * Names per opcode follow the kernel (fs/fuse/dir.c), not intuition: RENAME and RENAME2 carry two names (old, new)
 * after their struct; SYMLINK carries the new entry's name, then the link target; LINK carries the new name only
 * (the inode is fuse_link_in.oldnodeid); TMPFILE carries a name (the VFS passes "/").
 */
import type { StructName } from './structs.js';

/** What the reply body is. 'none': the kernel expects no reply at all. 'empty': header only. */
export type ReplyKind =
  | 'none' | 'empty' | 'entry' | 'attr' | 'open' | 'create' | 'write' | 'statfs' | 'init' | 'lk' | 'bmap'
  | 'ioctl' | 'poll' | 'lseek'
  /** fuse_getxattr_out when the request's size is 0 (a size query), else the raw value / name list */
  | 'xattr'
  /** raw bytes: READ data, READLINK target, packed dirents (READDIR) or direntplus records (READDIRPLUS) */
  | 'bytes';

export interface OpcodeInfo {
  readonly opcode: number;
  /** short name, the `op` of a parsed Request */
  readonly name: OpName;
  /** the kernel's name, e.g. FUSE_LOOKUP */
  readonly kernel: string;
  /** the fixed input struct, or null when the body starts with the names (or is empty) */
  readonly inStruct: StructName | null;
  /** sizeof(inStruct), 0 when none */
  readonly inSize: number;
  /**
   * the smallest struct the parser accepts, when the kernel may send less than sizeof: fuse_init_in is 16 bytes
   * before 7.36; fuse_setxattr_in is 8 bytes unless FUSE_SETXATTR_EXT was negotiated
   */
  readonly compatInSize?: number;
  /** NUL-terminated names after the struct */
  readonly names: 0 | 1 | 2;
  /** bytes follow the struct and names, sized by a struct field */
  readonly trailing: boolean;
  /** whether the kernel waits for a reply; INTERRUPT may be answered (EAGAIN) but we never do */
  readonly replies: boolean;
  readonly reply: ReplyKind;
}

type Row = readonly [
  opcode: number, name: string, inStruct: StructName | null, inSize: number, names: 0 | 1 | 2, trailing: boolean,
  reply: ReplyKind,
];

// opcode, name, input struct, its size, names, trailing bytes, reply
const ROWS = [
  [1, 'LOOKUP', null, 0, 1, false, 'entry'],
  [2, 'FORGET', 'fuse_forget_in', 8, 0, false, 'none'],
  [3, 'GETATTR', 'fuse_getattr_in', 16, 0, false, 'attr'],
  [4, 'SETATTR', 'fuse_setattr_in', 88, 0, false, 'attr'],
  [5, 'READLINK', null, 0, 0, false, 'bytes'],
  [6, 'SYMLINK', null, 0, 2, false, 'entry'],
  [8, 'MKNOD', 'fuse_mknod_in', 16, 1, false, 'entry'],
  [9, 'MKDIR', 'fuse_mkdir_in', 8, 1, false, 'entry'],
  [10, 'UNLINK', null, 0, 1, false, 'empty'],
  [11, 'RMDIR', null, 0, 1, false, 'empty'],
  [12, 'RENAME', 'fuse_rename_in', 8, 2, false, 'empty'],
  [13, 'LINK', 'fuse_link_in', 8, 1, false, 'entry'],
  [14, 'OPEN', 'fuse_open_in', 8, 0, false, 'open'],
  [15, 'READ', 'fuse_read_in', 40, 0, false, 'bytes'],
  [16, 'WRITE', 'fuse_write_in', 40, 0, true, 'write'],
  [17, 'STATFS', null, 0, 0, false, 'statfs'],
  [18, 'RELEASE', 'fuse_release_in', 24, 0, false, 'empty'],
  [20, 'FSYNC', 'fuse_fsync_in', 16, 0, false, 'empty'],
  [21, 'SETXATTR', 'fuse_setxattr_in', 16, 1, true, 'empty'],
  [22, 'GETXATTR', 'fuse_getxattr_in', 8, 1, false, 'xattr'],
  [23, 'LISTXATTR', 'fuse_getxattr_in', 8, 0, false, 'xattr'],
  [24, 'REMOVEXATTR', null, 0, 1, false, 'empty'],
  [25, 'FLUSH', 'fuse_flush_in', 24, 0, false, 'empty'],
  [26, 'INIT', 'fuse_init_in', 64, 0, false, 'init'],
  [27, 'OPENDIR', 'fuse_open_in', 8, 0, false, 'open'],
  [28, 'READDIR', 'fuse_read_in', 40, 0, false, 'bytes'],
  [29, 'RELEASEDIR', 'fuse_release_in', 24, 0, false, 'empty'],
  [30, 'FSYNCDIR', 'fuse_fsync_in', 16, 0, false, 'empty'],
  [31, 'GETLK', 'fuse_lk_in', 48, 0, false, 'lk'],
  [32, 'SETLK', 'fuse_lk_in', 48, 0, false, 'empty'],
  [33, 'SETLKW', 'fuse_lk_in', 48, 0, false, 'empty'],
  [34, 'ACCESS', 'fuse_access_in', 8, 0, false, 'empty'],
  [35, 'CREATE', 'fuse_create_in', 16, 1, false, 'create'],
  [36, 'INTERRUPT', 'fuse_interrupt_in', 8, 0, false, 'none'],
  [37, 'BMAP', 'fuse_bmap_in', 16, 0, false, 'bmap'],
  [38, 'DESTROY', null, 0, 0, false, 'empty'],
  [39, 'IOCTL', 'fuse_ioctl_in', 32, 0, true, 'ioctl'],
  [40, 'POLL', 'fuse_poll_in', 24, 0, false, 'poll'],
  [41, 'NOTIFY_REPLY', 'fuse_notify_retrieve_in', 40, 0, true, 'none'],
  [42, 'BATCH_FORGET', 'fuse_batch_forget_in', 8, 0, true, 'none'],
  [43, 'FALLOCATE', 'fuse_fallocate_in', 32, 0, false, 'empty'],
  [44, 'READDIRPLUS', 'fuse_read_in', 40, 0, false, 'bytes'],
  [45, 'RENAME2', 'fuse_rename2_in', 16, 2, false, 'empty'],
  [46, 'LSEEK', 'fuse_lseek_in', 24, 0, false, 'lseek'],
  [47, 'COPY_FILE_RANGE', 'fuse_copy_file_range_in', 56, 0, false, 'write'],
  [48, 'SETUPMAPPING', 'fuse_setupmapping_in', 40, 0, false, 'empty'],
  [49, 'REMOVEMAPPING', 'fuse_removemapping_in', 4, 0, true, 'empty'],
  [50, 'SYNCFS', 'fuse_syncfs_in', 8, 0, false, 'empty'],
  [51, 'TMPFILE', 'fuse_create_in', 16, 1, false, 'create'],
] as const satisfies readonly Row[];

export type OpName = (typeof ROWS)[number][1];

const COMPAT_IN_SIZE: Partial<Record<OpName, number>> = { INIT: 16, SETXATTR: 8 };

/** Every row, in opcode order. */
export const OPCODE_TABLE: readonly OpcodeInfo[] = ROWS.map(([opcode, name, inStruct, inSize, names, trailing, reply]) => ({
  opcode, name, kernel: `FUSE_${name}`, inStruct, inSize, names, trailing, reply, replies: reply !== 'none',
  ...(COMPAT_IN_SIZE[name] !== undefined ? { compatInSize: COMPAT_IN_SIZE[name] } : {}),
}));

const BY_OPCODE: (OpcodeInfo | undefined)[] = [];
for (const info of OPCODE_TABLE) BY_OPCODE[info.opcode] = info;

/** The row of an opcode, or undefined for opcodes we do not know (answer ENOSYS). */
export function opcodeInfo(opcode: number): OpcodeInfo | undefined {
  return BY_OPCODE[opcode];
}
