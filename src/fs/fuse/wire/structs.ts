/**
 * The structs of <linux/fuse.h> (protocol 7.38), one layout each, named as in the header. Offsets are bytes from the
 * start of the struct; padding, `unused` and `dummy` fields are not listed (they are zero when we write and ignored
 * when we read). test/fs/fuse/wire-layout.test.ts compiles a C program against the installed header and checks every
 * size, offset and field width here.
 */
import { layout } from './layout.js';

export const STRUCTS = {
  fuse_in_header: layout('fuse_in_header', 40, {
    len: [0, 'u32'], opcode: [4, 'u32'], unique: [8, 'big'], nodeid: [16, 'nodeid'],
    uid: [24, 'u32'], gid: [28, 'u32'], pid: [32, 'u32'], total_extlen: [36, 'u16'],
  }),
  fuse_out_header: layout('fuse_out_header', 16, { len: [0, 'u32'], error: [4, 'i32'], unique: [8, 'big'] }),

  // shared
  fuse_attr: layout('fuse_attr', 88, {
    ino: [0, 'u64'], size: [8, 'u64'], blocks: [16, 'u64'],
    atime: [24, 'i64'], mtime: [32, 'i64'], ctime: [40, 'i64'],
    atimensec: [48, 'u32'], mtimensec: [52, 'u32'], ctimensec: [56, 'u32'],
    mode: [60, 'u32'], nlink: [64, 'u32'], uid: [68, 'u32'], gid: [72, 'u32'], rdev: [76, 'u32'],
    blksize: [80, 'u32'], flags: [84, 'u32'],
  }),
  fuse_kstatfs: layout('fuse_kstatfs', 80, {
    blocks: [0, 'u64'], bfree: [8, 'u64'], bavail: [16, 'u64'], files: [24, 'u64'], ffree: [32, 'u64'],
    bsize: [40, 'u32'], namelen: [44, 'u32'], frsize: [48, 'u32'],
  }),
  fuse_file_lock: layout('fuse_file_lock', 24, { start: [0, 'big'], end: [8, 'big'], type: [16, 'u32'], pid: [20, 'u32'] }),

  // requests
  fuse_forget_in: layout('fuse_forget_in', 8, { nlookup: [0, 'u64'] }),
  fuse_forget_one: layout('fuse_forget_one', 16, { nodeid: [0, 'nodeid'], nlookup: [8, 'u64'] }),
  fuse_batch_forget_in: layout('fuse_batch_forget_in', 8, { count: [0, 'u32'] }),
  fuse_getattr_in: layout('fuse_getattr_in', 16, { getattr_flags: [0, 'u32'], fh: [8, 'u64'] }),
  fuse_setattr_in: layout('fuse_setattr_in', 88, {
    valid: [0, 'u32'], fh: [8, 'u64'], size: [16, 'u64'], lock_owner: [24, 'big'],
    atime: [32, 'i64'], mtime: [40, 'i64'], ctime: [48, 'i64'],
    atimensec: [56, 'u32'], mtimensec: [60, 'u32'], ctimensec: [64, 'u32'],
    mode: [68, 'u32'], uid: [76, 'u32'], gid: [80, 'u32'],
  }),
  fuse_mknod_in: layout('fuse_mknod_in', 16, { mode: [0, 'u32'], rdev: [4, 'u32'], umask: [8, 'u32'] }),
  fuse_mkdir_in: layout('fuse_mkdir_in', 8, { mode: [0, 'u32'], umask: [4, 'u32'] }),
  fuse_rename_in: layout('fuse_rename_in', 8, { newdir: [0, 'nodeid'] }),
  fuse_rename2_in: layout('fuse_rename2_in', 16, { newdir: [0, 'nodeid'], flags: [8, 'u32'] }),
  fuse_link_in: layout('fuse_link_in', 8, { oldnodeid: [0, 'nodeid'] }),
  fuse_open_in: layout('fuse_open_in', 8, { flags: [0, 'u32'], open_flags: [4, 'u32'] }),
  fuse_create_in: layout('fuse_create_in', 16, { flags: [0, 'u32'], mode: [4, 'u32'], umask: [8, 'u32'], open_flags: [12, 'u32'] }),
  fuse_release_in: layout('fuse_release_in', 24, {
    fh: [0, 'u64'], flags: [8, 'u32'], release_flags: [12, 'u32'], lock_owner: [16, 'big'],
  }),
  fuse_flush_in: layout('fuse_flush_in', 24, { fh: [0, 'u64'], lock_owner: [16, 'big'] }),
  fuse_read_in: layout('fuse_read_in', 40, {
    fh: [0, 'u64'], offset: [8, 'u64'], size: [16, 'u32'], read_flags: [20, 'u32'], lock_owner: [24, 'big'], flags: [32, 'u32'],
  }),
  fuse_write_in: layout('fuse_write_in', 40, {
    fh: [0, 'u64'], offset: [8, 'u64'], size: [16, 'u32'], write_flags: [20, 'u32'], lock_owner: [24, 'big'], flags: [32, 'u32'],
  }),
  fuse_fsync_in: layout('fuse_fsync_in', 16, { fh: [0, 'u64'], fsync_flags: [8, 'u32'] }),
  fuse_setxattr_in: layout('fuse_setxattr_in', 16, { size: [0, 'u32'], flags: [4, 'u32'], setxattr_flags: [8, 'u32'] }),
  fuse_getxattr_in: layout('fuse_getxattr_in', 8, { size: [0, 'u32'] }),
  fuse_lk_in: layout('fuse_lk_in', 48, { fh: [0, 'u64'], owner: [8, 'big'], lk: [16, 'struct'], lk_flags: [40, 'u32'] }),
  fuse_access_in: layout('fuse_access_in', 8, { mask: [0, 'u32'] }),
  fuse_init_in: layout('fuse_init_in', 64, {
    major: [0, 'u32'], minor: [4, 'u32'], max_readahead: [8, 'u32'], flags: [12, 'u32'], flags2: [16, 'u32'],
  }),
  fuse_interrupt_in: layout('fuse_interrupt_in', 8, { unique: [0, 'big'] }),
  fuse_bmap_in: layout('fuse_bmap_in', 16, { block: [0, 'u64'], blocksize: [8, 'u32'] }),
  fuse_ioctl_in: layout('fuse_ioctl_in', 32, {
    fh: [0, 'u64'], flags: [8, 'u32'], cmd: [12, 'u32'], arg: [16, 'big'], in_size: [24, 'u32'], out_size: [28, 'u32'],
  }),
  fuse_poll_in: layout('fuse_poll_in', 24, { fh: [0, 'u64'], kh: [8, 'big'], flags: [16, 'u32'], events: [20, 'u32'] }),
  fuse_fallocate_in: layout('fuse_fallocate_in', 32, { fh: [0, 'u64'], offset: [8, 'u64'], length: [16, 'u64'], mode: [24, 'u32'] }),
  fuse_notify_retrieve_in: layout('fuse_notify_retrieve_in', 40, { offset: [8, 'u64'], size: [16, 'u32'] }),
  fuse_lseek_in: layout('fuse_lseek_in', 24, { fh: [0, 'u64'], offset: [8, 'u64'], whence: [16, 'u32'] }),
  fuse_copy_file_range_in: layout('fuse_copy_file_range_in', 56, {
    fh_in: [0, 'u64'], off_in: [8, 'u64'], nodeid_out: [16, 'nodeid'], fh_out: [24, 'u64'], off_out: [32, 'u64'],
    len: [40, 'u64'], flags: [48, 'u64'],
  }),
  fuse_setupmapping_in: layout('fuse_setupmapping_in', 40, {
    fh: [0, 'u64'], foffset: [8, 'u64'], len: [16, 'u64'], flags: [24, 'u64'], moffset: [32, 'u64'],
  }),
  fuse_removemapping_in: layout('fuse_removemapping_in', 4, { count: [0, 'u32'] }),
  fuse_removemapping_one: layout('fuse_removemapping_one', 16, { moffset: [0, 'u64'], len: [8, 'u64'] }),
  fuse_syncfs_in: layout('fuse_syncfs_in', 8, {}),

  // replies
  fuse_entry_out: layout('fuse_entry_out', 128, {
    nodeid: [0, 'u64'], generation: [8, 'u64'], entry_valid: [16, 'u64'], attr_valid: [24, 'u64'],
    entry_valid_nsec: [32, 'u32'], attr_valid_nsec: [36, 'u32'], attr: [40, 'struct'],
  }),
  fuse_attr_out: layout('fuse_attr_out', 104, { attr_valid: [0, 'u64'], attr_valid_nsec: [8, 'u32'], attr: [16, 'struct'] }),
  fuse_open_out: layout('fuse_open_out', 16, { fh: [0, 'u64'], open_flags: [8, 'u32'] }),
  fuse_write_out: layout('fuse_write_out', 8, { size: [0, 'u32'] }),
  fuse_statfs_out: layout('fuse_statfs_out', 80, { st: [0, 'struct'] }),
  fuse_getxattr_out: layout('fuse_getxattr_out', 8, { size: [0, 'u32'] }),
  fuse_lk_out: layout('fuse_lk_out', 24, { lk: [0, 'struct'] }),
  fuse_init_out: layout('fuse_init_out', 64, {
    major: [0, 'u32'], minor: [4, 'u32'], max_readahead: [8, 'u32'], flags: [12, 'u32'],
    max_background: [16, 'u16'], congestion_threshold: [18, 'u16'], max_write: [20, 'u32'], time_gran: [24, 'u32'],
    max_pages: [28, 'u16'], map_alignment: [30, 'u16'], flags2: [32, 'u32'],
  }),
  fuse_bmap_out: layout('fuse_bmap_out', 8, { block: [0, 'u64'] }),
  fuse_ioctl_out: layout('fuse_ioctl_out', 16, { result: [0, 'i32'], flags: [4, 'u32'], in_iovs: [8, 'u32'], out_iovs: [12, 'u32'] }),
  fuse_poll_out: layout('fuse_poll_out', 8, { revents: [0, 'u32'] }),
  fuse_lseek_out: layout('fuse_lseek_out', 8, { offset: [0, 'u64'] }),
  fuse_dirent: layout('fuse_dirent', 24, {
    ino: [0, 'u64'], off: [8, 'u64'], namelen: [16, 'u32'], type: [20, 'u32'], name: [24, 'struct'],
  }),
  fuse_direntplus: layout('fuse_direntplus', 152, { entry_out: [0, 'struct'], dirent: [128, 'struct'] }),
} as const;

export type StructName = keyof typeof STRUCTS;
