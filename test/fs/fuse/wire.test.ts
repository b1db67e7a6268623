/**
 * Golden request fixtures for the FUSE wire layer (src/fs/fuse/wire): for every opcode of enum fuse_opcode, a
 * request built by hand as little-endian bytes, one commented line per struct field, parsed and checked field by
 * field; then the typed parse errors. Reply fixtures are in wire-reply.test.ts, the C layout cross-check in
 * wire-layout.test.ts, the fuzz test in wire-fuzz.test.ts.
 *
 * The byte helpers below are deliberately independent of the code under test (plain shifts, no DataView).
 */
import t from 'tap';
import {
  BadName, BadNodeId, LengthMismatch, OPCODE_TABLE, ShortBody, ShortHeader, UnknownOpcode, WireParseError,
  parseRequest, type ParseOptions, type Request,
} from '../../../src/fs/fuse/wire/index.js';
import { cstr, u16, u32, u64, utf8 as bytes, zero } from '../../helpers/bytes.js';


interface Hdr {
  unique?: bigint;
  nodeid?: number | bigint;
  uid?: number;
  gid?: number;
  pid?: number;
  extlen?: number;
  /** override len (default 40 + body length) */
  len?: number;
}

/** fuse_in_header, 40 bytes */
function header(opcode: number, bodyLength: number, h: Hdr = {}): number[] {
  return [
    ...u32(h.len ?? 40 + bodyLength), // len: header + body
    ...u32(opcode), //                   opcode
    ...u64(h.unique ?? 0x1234n), //      unique
    ...u64(h.nodeid ?? 1), //            nodeid
    ...u32(h.uid ?? 1000), //            uid
    ...u32(h.gid ?? 100), //             gid
    ...u32(h.pid ?? 4242), //            pid
    ...u16(h.extlen ?? 0), //            total_extlen (8-byte units)
    ...u16(0), //                        padding
  ];
}

function parse(opcode: number, body: number[], h: Hdr = {}, opts?: ParseOptions): Request {
  return parseRequest(Uint8Array.from(header(opcode, body.length, h)), Uint8Array.from(body), opts);
}

/** the op fields of a request, with byte views as plain arrays for comparison */
function fields(r: Request): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(r)) {
    if (k === 'header' || k === 'ext') continue;
    out[k] = v instanceof Uint8Array ? [...v] : v;
  }
  return out;
}

const OWNER = 0xdeadbeefcafef00dn; // a kernel lock owner: a hashed pointer, far beyond 2^53
const OFFSET_MAX = 0x7fffffffffffffffn; // a POSIX lock "to the end of file"

interface Case {
  opcode: number;
  what?: string;
  body: number[];
  want: Record<string, unknown>;
  hdr?: Hdr;
  opts?: ParseOptions;
}

const cases: Case[] = [
  { opcode: 1, body: cstr('hello'), want: { op: 'LOOKUP', name: 'hello' } },
  { opcode: 2, hdr: { nodeid: 5 }, body: [
    ...u64(3), // fuse_forget_in.nlookup
  ], want: { op: 'FORGET', nlookup: 3 } },
  { opcode: 3, body: [
    ...u32(1), // getattr_flags: FUSE_GETATTR_FH
    ...u32(0), // dummy
    ...u64(7), // fh
  ], want: { op: 'GETATTR', getattr_flags: 1, fh: 7 } },
  { opcode: 4, body: [
    ...u32(0x79), //         valid: FATTR_MODE|FATTR_SIZE|FATTR_ATIME|FATTR_MTIME|FATTR_FH
    ...u32(0), //            padding
    ...u64(9), //            fh
    ...u64(4096), //         size
    ...u64(OWNER), //        lock_owner
    ...u64(-1), //           atime: one second before the epoch (u64 on the wire, signed time64 in the kernel)
    ...u64(1700000000), //   mtime
    ...u64(0), //            ctime
    ...u32(500), //          atimensec
    ...u32(999999999), //    mtimensec
    ...u32(0), //            ctimensec
    ...u32(0o100644), //     mode
    ...u32(0), //            unused4
    ...u32(1001), //         uid (the new owner; the caller's is in the header)
    ...u32(1002), //         gid
    ...u32(0), //            unused5
  ], want: {
    op: 'SETATTR', valid: 0x79, fh: 9, size: 4096, lock_owner: OWNER, atime: -1, mtime: 1700000000, ctime: 0,
    atimensec: 500, mtimensec: 999999999, ctimensec: 0, mode: 0o100644, uid: 1001, gid: 1002,
  } },
  { opcode: 5, body: [], want: { op: 'READLINK' } },
  { opcode: 6, body: [
    ...cstr('link'), //      the new entry's name
    ...cstr('../target'), // what it points to
  ], want: { op: 'SYMLINK', name: 'link', target: '../target' } },
  { opcode: 8, body: [
    ...u32(0o10644), // mode: S_IFIFO | 0644
    ...u32(0), //       rdev
    ...u32(0o022), //   umask
    ...u32(0), //       padding
    ...cstr('fifo'),
  ], want: { op: 'MKNOD', mode: 0o10644, rdev: 0, umask: 0o022, name: 'fifo' } },
  { opcode: 9, body: [
    ...u32(0o755), // mode
    ...u32(0o022), // umask
    ...cstr('dir'),
  ], want: { op: 'MKDIR', mode: 0o755, umask: 0o022, name: 'dir' } },
  { opcode: 10, body: cstr('gone'), want: { op: 'UNLINK', name: 'gone' } },
  { opcode: 11, body: cstr('old'), want: { op: 'RMDIR', name: 'old' } },
  { opcode: 12, body: [
    ...u64(7), //    newdir
    ...cstr('a'), // old name (in header.nodeid)
    ...cstr('b'), // new name (in newdir)
  ], want: { op: 'RENAME', newdir: 7, oldname: 'a', newname: 'b' } },
  { opcode: 13, body: [
    ...u64(12), //      oldnodeid: the inode to link
    ...cstr('hard'), // the new name in header.nodeid
  ], want: { op: 'LINK', oldnodeid: 12, name: 'hard' } },
  { opcode: 14, body: [
    ...u32(0o1002), // flags: O_RDWR|O_TRUNC
    ...u32(0), //      open_flags
  ], want: { op: 'OPEN', flags: 0o1002, open_flags: 0 } },
  { opcode: 15, body: [
    ...u64(3), //        fh
    ...u64(8192), //     offset
    ...u32(131072), //   size
    ...u32(2), //        read_flags: FUSE_READ_LOCKOWNER
    ...u64(OWNER), //    lock_owner
    ...u32(0o100000), // flags: O_LARGEFILE
    ...u32(0), //        padding
  ], want: { op: 'READ', fh: 3, offset: 8192, size: 131072, read_flags: 2, lock_owner: OWNER, flags: 0o100000 } },
  { opcode: 16, body: [
    ...u64(3), //     fh
    ...u64(10), //    offset
    ...u32(5), //     size
    ...u32(1), //     write_flags: FUSE_WRITE_CACHE
    ...u64(0), //     lock_owner
    ...u32(1), //     flags: O_WRONLY
    ...u32(0), //     padding
    ...bytes('hello'), // data
  ], want: {
    op: 'WRITE', fh: 3, offset: 10, size: 5, write_flags: 1, lock_owner: 0n, flags: 1, data: bytes('hello'),
  } },
  { opcode: 17, body: [], want: { op: 'STATFS' } },
  { opcode: 18, body: [
    ...u64(3), //     fh
    ...u32(1), //     flags: O_WRONLY
    ...u32(1), //     release_flags: FUSE_RELEASE_FLUSH
    ...u64(OWNER), // lock_owner
  ], want: { op: 'RELEASE', fh: 3, flags: 1, release_flags: 1, lock_owner: OWNER } },
  { opcode: 20, body: [
    ...u64(3), // fh
    ...u32(1), // fsync_flags: FUSE_FSYNC_FDATASYNC
    ...u32(0), // padding
  ], want: { op: 'FSYNC', fh: 3, fsync_flags: 1 } },
  { opcode: 21, what: 'compat fuse_setxattr_in (8 bytes)', body: [
    ...u32(3), //          size of the value
    ...u32(1), //          flags: XATTR_CREATE
    ...cstr('user.a'), //  name
    ...bytes('xyz'), //    value
  ], want: { op: 'SETXATTR', size: 3, flags: 1, setxattr_flags: 0, name: 'user.a', value: bytes('xyz') } },
  { opcode: 21, what: 'FUSE_SETXATTR_EXT (16 bytes)', opts: { setxattrExt: true }, body: [
    ...u32(3), //          size
    ...u32(2), //          flags: XATTR_REPLACE
    ...u32(1), //          setxattr_flags: FUSE_SETXATTR_ACL_KILL_SGID
    ...u32(0), //          padding
    ...cstr('user.a'),
    ...[0, 1, 0], //       value: binary, with NULs
  ], want: { op: 'SETXATTR', size: 3, flags: 2, setxattr_flags: 1, name: 'user.a', value: [0, 1, 0] } },
  { opcode: 22, body: [
    ...u32(0), //  size: 0 = a size query
    ...u32(0), //  padding
    ...cstr('user.a'),
  ], want: { op: 'GETXATTR', size: 0, name: 'user.a' } },
  { opcode: 23, body: [
    ...u32(4096), // size
    ...u32(0), //    padding
  ], want: { op: 'LISTXATTR', size: 4096 } },
  { opcode: 24, body: cstr('user.a'), want: { op: 'REMOVEXATTR', name: 'user.a' } },
  { opcode: 25, body: [
    ...u64(3), //     fh
    ...u32(0), //     unused
    ...u32(0), //     padding
    ...u64(OWNER), // lock_owner
  ], want: { op: 'FLUSH', fh: 3, lock_owner: OWNER } },
  { opcode: 26, what: 'fuse_init_in before 7.36 (16 bytes)', hdr: { nodeid: 0 }, body: [
    ...u32(7), //          major
    ...u32(31), //         minor
    ...u32(131072), //     max_readahead
    ...u32(0x0040_2021), // flags: ASYNC_READ|BIG_WRITES|DO_READDIRPLUS|MAX_PAGES
  ], want: { op: 'INIT', major: 7, minor: 31, max_readahead: 131072, flags: 0x0040_2021n } },
  { opcode: 26, what: 'fuse_init_in from 7.36 (64 bytes, flags2)', hdr: { nodeid: 0 }, body: [
    ...u32(7), //          major
    ...u32(38), //         minor
    ...u32(131072), //     max_readahead
    ...u32(0x4000_0001), // flags: ASYNC_READ|INIT_EXT
    ...u32(0b1001), //     flags2: SECURITY_CTX (bit 32), HAS_EXPIRE_ONLY (bit 35)
    ...zero(44), //        unused[11]
  ], want: { op: 'INIT', major: 7, minor: 38, max_readahead: 131072, flags: 0x9_4000_0001n } },
  { opcode: 26, what: 'flags2 without FUSE_INIT_EXT is ignored', hdr: { nodeid: 0 }, body: [
    ...u32(7), ...u32(38), ...u32(0), // major, minor, max_readahead
    ...u32(1), //                        flags: ASYNC_READ, no INIT_EXT
    ...u32(0xffffffff), //               flags2: not to be read
    ...zero(44),
  ], want: { op: 'INIT', major: 7, minor: 38, max_readahead: 0, flags: 1n } },
  { opcode: 27, body: [
    ...u32(0o200000), // flags: O_DIRECTORY
    ...u32(0), //        open_flags
  ], want: { op: 'OPENDIR', flags: 0o200000, open_flags: 0 } },
  { opcode: 28, body: [
    ...u64(4), //    fh
    ...u64(3), //    offset: the cookie of the last entry sent
    ...u32(4096), // size
    ...u32(0), //    read_flags
    ...u64(0), //    lock_owner
    ...u32(0), //    flags
    ...u32(0), //    padding
  ], want: { op: 'READDIR', fh: 4, offset: 3, size: 4096, read_flags: 0, lock_owner: 0n, flags: 0 } },
  { opcode: 29, body: [
    ...u64(4), // fh
    ...u32(0o200000), // flags
    ...u32(0), // release_flags
    ...u64(0), // lock_owner
  ], want: { op: 'RELEASEDIR', fh: 4, flags: 0o200000, release_flags: 0, lock_owner: 0n } },
  { opcode: 30, body: [
    ...u64(4), // fh
    ...u32(0), // fsync_flags
    ...u32(0), // padding
  ], want: { op: 'FSYNCDIR', fh: 4, fsync_flags: 0 } },
  { opcode: 31, body: [
    ...u64(3), //          fh
    ...u64(OWNER), //      owner
    ...u64(0), //          lk.start
    ...u64(OFFSET_MAX), // lk.end
    ...u32(1), //          lk.type: F_WRLCK
    ...u32(4242), //       lk.pid
    ...u32(0), //          lk_flags
    ...u32(0), //          padding
  ], want: { op: 'GETLK', fh: 3, owner: OWNER, lk_flags: 0, lk: { start: 0n, end: OFFSET_MAX, type: 1, pid: 4242 } } },
  { opcode: 32, body: [
    ...u64(3), ...u64(OWNER), // fh, owner
    ...u64(100), ...u64(199), // lk.start, lk.end
    ...u32(2), ...u32(0), //     lk.type: F_UNLCK, lk.pid
    ...u32(1), ...u32(0), //     lk_flags: FUSE_LK_FLOCK, padding
  ], want: { op: 'SETLK', fh: 3, owner: OWNER, lk_flags: 1, lk: { start: 100n, end: 199n, type: 2, pid: 0 } } },
  { opcode: 33, body: [
    ...u64(3), ...u64(OWNER), //       fh, owner
    ...u64(0), ...u64(OFFSET_MAX), //  lk.start, lk.end
    ...u32(0), ...u32(7), //           lk.type: F_RDLCK, lk.pid
    ...u32(0), ...u32(0), //           lk_flags, padding
  ], want: { op: 'SETLKW', fh: 3, owner: OWNER, lk_flags: 0, lk: { start: 0n, end: OFFSET_MAX, type: 0, pid: 7 } } },
  { opcode: 34, body: [
    ...u32(4), // mask: R_OK
    ...u32(0), // padding
  ], want: { op: 'ACCESS', mask: 4 } },
  { opcode: 35, body: [
    ...u32(0o301), //    flags: O_WRONLY|O_CREAT|O_EXCL
    ...u32(0o100644), // mode
    ...u32(0o022), //    umask
    ...u32(0), //        open_flags
    ...cstr('new'),
  ], want: { op: 'CREATE', flags: 0o301, mode: 0o100644, umask: 0o022, open_flags: 0, name: 'new' } },
  { opcode: 36, hdr: { nodeid: 0 }, body: [
    ...u64(0x1233n), // unique of the request to interrupt
  ], want: { op: 'INTERRUPT', unique: 0x1233n } },
  { opcode: 37, body: [
    ...u64(10), //   block
    ...u32(4096), // blocksize
    ...u32(0), //    padding
  ], want: { op: 'BMAP', block: 10, blocksize: 4096 } },
  { opcode: 38, hdr: { nodeid: 0 }, body: [], want: { op: 'DESTROY' } },
  { opcode: 39, body: [
    ...u64(3), //               fh
    ...u32(0), //               flags
    ...u32(0x80086601), //      cmd: FS_IOC_GETFLAGS
    ...u64(0x7ffd12345678n), // arg: a user pointer
    ...u32(4), //               in_size
    ...u32(8), //               out_size
    ...[1, 2, 3, 4], //         input data
  ], want: {
    op: 'IOCTL', fh: 3, flags: 0, cmd: 0x80086601, arg: 0x7ffd12345678n, in_size: 4, out_size: 8, data: [1, 2, 3, 4],
  } },
  { opcode: 40, body: [
    ...u64(3), //       fh
    ...u64(OWNER), //   kh: the kernel's poll handle
    ...u32(1), //       flags: FUSE_POLL_SCHEDULE_NOTIFY
    ...u32(1), //       events: POLLIN
  ], want: { op: 'POLL', fh: 3, kh: OWNER, flags: 1, events: 1 } },
  { opcode: 41, body: [
    ...u64(0), //    dummy1
    ...u64(4096), // offset
    ...u32(3), //    size
    ...u32(0), //    dummy2
    ...u64(0), //    dummy3
    ...u64(0), //    dummy4
    ...bytes('abc'), // data
  ], want: { op: 'NOTIFY_REPLY', offset: 4096, size: 3, data: bytes('abc') } },
  { opcode: 42, hdr: { nodeid: 0 }, body: [
    ...u32(2), //  count
    ...u32(0), //  dummy
    ...u64(5), ...u64(1), // [0] nodeid, nlookup
    ...u64(6), ...u64(3), // [1] nodeid, nlookup
  ], want: { op: 'BATCH_FORGET', items: [{ nodeid: 5, nlookup: 1 }, { nodeid: 6, nlookup: 3 }] } },
  { opcode: 43, body: [
    ...u64(3), //      fh
    ...u64(4096), //   offset
    ...u64(65536), //  length
    ...u32(1), //      mode: FALLOC_FL_KEEP_SIZE
    ...u32(0), //      padding
  ], want: { op: 'FALLOCATE', fh: 3, offset: 4096, length: 65536, mode: 1 } },
  { opcode: 44, body: [
    ...u64(4), ...u64(0), //  fh, offset
    ...u32(65536), ...u32(0), // size, read_flags
    ...u64(0), //               lock_owner
    ...u32(0), ...u32(0), //    flags, padding
  ], want: { op: 'READDIRPLUS', fh: 4, offset: 0, size: 65536, read_flags: 0, lock_owner: 0n, flags: 0 } },
  { opcode: 45, body: [
    ...u64(7), //    newdir
    ...u32(1), //    flags: RENAME_NOREPLACE
    ...u32(0), //    padding
    ...cstr('a'), // old name
    ...cstr('b'), // new name
  ], want: { op: 'RENAME2', newdir: 7, flags: 1, oldname: 'a', newname: 'b' } },
  { opcode: 46, body: [
    ...u64(3), //    fh
    ...u64(100), //  offset
    ...u32(3), //    whence: SEEK_DATA
    ...u32(0), //    padding
  ], want: { op: 'LSEEK', fh: 3, offset: 100, whence: 3 } },
  { opcode: 47, body: [
    ...u64(3), //        fh_in
    ...u64(0), //        off_in
    ...u64(9), //        nodeid_out
    ...u64(4), //        fh_out
    ...u64(8192), //     off_out
    ...u64(1 << 20), //  len
    ...u64(0), //        flags
  ], want: { op: 'COPY_FILE_RANGE', fh_in: 3, off_in: 0, nodeid_out: 9, fh_out: 4, off_out: 8192, len: 1 << 20, flags: 0 } },
  { opcode: 48, body: [
    ...u64(3), //       fh
    ...u64(0), //       foffset
    ...u64(2 << 20), // len
    ...u64(3), //       flags: FUSE_SETUPMAPPING_FLAG_WRITE|READ
    ...u64(1 << 21), // moffset
  ], want: { op: 'SETUPMAPPING', fh: 3, foffset: 0, len: 2 << 20, flags: 3, moffset: 1 << 21 } },
  { opcode: 49, body: [
    ...u32(1), //         count (fuse_removemapping_in is 4 bytes: the entries start unaligned)
    ...u64(1 << 21), //   [0] moffset
    ...u64(2 << 20), //   [0] len
  ], want: { op: 'REMOVEMAPPING', items: [{ moffset: 1 << 21, len: 2 << 20 }] } },
  { opcode: 50, body: [
    ...u64(0), // padding
  ], want: { op: 'SYNCFS' } },
  { opcode: 51, body: [
    ...u32(0o102), //    flags: O_RDWR|O_CREAT (O_TMPFILE's directory bit is consumed by the VFS)
    ...u32(0o100600), // mode
    ...u32(0o022), //    umask
    ...u32(0), //        open_flags
    ...cstr('/'), //     the unnamed dentry's name
  ], want: { op: 'TMPFILE', flags: 0o102, mode: 0o100600, umask: 0o022, open_flags: 0, name: '/' } },
];

t.test('every opcode of the table has a golden request', async (t) => {
  const covered = new Set(cases.map((c) => c.opcode));
  for (const info of OPCODE_TABLE) t.ok(covered.has(info.opcode), `${info.kernel} (${info.opcode}) has a fixture`);
});

for (const c of cases) {
  const info = OPCODE_TABLE.find((i) => i.opcode === c.opcode);
  t.test(`${info?.kernel ?? c.opcode}${c.what ? `: ${c.what}` : ''}`, async (t) => {
    const r = parse(c.opcode, c.body, c.hdr, c.opts);
    t.strictSame(fields(r), c.want);
    t.equal(r.header.opcode, c.opcode);
    t.equal(r.header.len, 40 + c.body.length);
    t.equal(r.ext.length, 0);
  });
}

t.test('a fully literal LOOKUP: header fields and the name', async (t) => {
  const header = Uint8Array.from([
    0x2e, 0x00, 0x00, 0x00, //                         len 46 = 40 + 6
    0x01, 0x00, 0x00, 0x00, //                         opcode 1 (FUSE_LOOKUP)
    0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // unique 0x0102030405060708
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // nodeid 1 (FUSE_ROOT_ID)
    0xe8, 0x03, 0x00, 0x00, //                         uid 1000
    0x64, 0x00, 0x00, 0x00, //                         gid 100
    0x92, 0x10, 0x00, 0x00, //                         pid 4242
    0x00, 0x00, //                                     total_extlen 0
    0x00, 0x00, //                                     padding
  ]);
  const body = Uint8Array.from([0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x00]); // "hello\0"
  const r = parseRequest(header, body);
  t.strictSame(r.header, {
    len: 46, opcode: 1, unique: 0x0102030405060708n, nodeid: 1, uid: 1000, gid: 100, pid: 4242, total_extlen: 0,
  });
  t.equal(r.op, 'LOOKUP');
  if (r.op === 'LOOKUP') t.equal(r.name, 'hello');
});

t.test('a header longer than 40 bytes: only the first 40 count', async (t) => {
  const h = [...header(1, 2), 0xff, 0xff, 0xff];
  const r = parseRequest(Uint8Array.from(h), Uint8Array.from(cstr('x')));
  t.equal(r.op, 'LOOKUP');
});

t.test('views into a larger pooled buffer', async (t) => {
  // the reader hands subarrays of pool buffers: offsets must be honoured
  const pool = new Uint8Array(4096).fill(0xee);
  const body = [...u64(3), ...u64(0), ...u32(4), ...u32(0), ...u64(0), ...u32(0), ...u32(0), ...bytes('data')];
  const h = header(16, body.length);
  pool.set(h, 100);
  pool.set(body, 1000);
  const hb = pool.subarray(100, 140);
  const bb = pool.subarray(1000, 1000 + body.length);
  const r = parseRequest(hb, bb);
  t.equal(r.op, 'WRITE');
  if (r.op !== 'WRITE') return;
  t.equal(r.fh, 3);
  t.equal(Buffer.from(r.data).toString(), 'data');
  t.equal(r.data.buffer, pool.buffer, 'data is a view, not a copy');
  t.equal(r.data.byteOffset, 1040);
});

t.test('extensions (total_extlen) are split off the end', async (t) => {
  const ext = [...u32(16), ...u32(32), ...zero(8)]; // one fuse_ext_header {size 16, type 32} and 8 bytes
  const body = [
    ...u32(0o755), ...u32(0o022), // fuse_mkdir_in
    ...cstr('d'), ...zero(6), //     name, then padding up to the 8-byte aligned extension
    ...ext,
  ];
  const r = parse(9, body, { extlen: 2 });
  t.equal(r.header.total_extlen, 2);
  t.strictSame([...r.ext], ext);
  t.strictSame(fields(r), { op: 'MKDIR', mode: 0o755, umask: 0o022, name: 'd' });
  t.throws(() => parse(9, [...u32(0o755), ...u32(0), ...cstr('d')], { extlen: 4 }), ShortBody);
});

t.test('names: UTF-8, exact', async (t) => {
  for (const name of ['héllo', '日本語ファイル', 'emoji-😀', '\u{feff}bom-first', 'a b\tc', '-', '.hidden']) {
    const r = parse(1, cstr(name));
    t.equal(r.op === 'LOOKUP' && r.name, name, JSON.stringify(name));
  }
  const r = parse(6, [...cstr('ü'), ...cstr('/abs/ö/path')]);
  t.strictSame(fields(r), { op: 'SYMLINK', name: 'ü', target: '/abs/ö/path' });
});

t.test('64-bit fields beyond 2^53', async (t) => {
  const big = [...u64(-1n), ...u64(1n << 63n)]; // fh = 2^64 - 1, offset = 2^63
  const r = parse(15, [...big, ...u32(4096), ...u32(0), ...u64(0), ...u32(0), ...u32(0)]);
  if (r.op !== 'READ') return t.fail('not READ');
  t.ok(r.fh >= 2 ** 53, 'an unsafe fh is approximated, never below 2^53 (so it never equals one we issued)');
  t.ok(r.offset >= 2 ** 53, 'an offset past our range stays past it');
  const safe = parse(2, u64(1), { nodeid: 2 ** 53 - 1 });
  t.equal(safe.header.nodeid, Number.MAX_SAFE_INTEGER, 'the largest safe node id passes');
});

t.test('typed parse errors', async (t) => {
  t.test('ShortHeader', async (t) => {
    const e = catchErr(() => parseRequest(new Uint8Array(39), new Uint8Array(0)));
    t.type(e, ShortHeader);
    t.match(e, { code: 'FUSE_SHORT_HEADER', errno: 5, unique: undefined, replyWanted: false });
  });

  t.test('LengthMismatch', async (t) => {
    const e = catchErr(() => parse(3, zero(16), { len: 100, unique: 77n }));
    t.type(e, LengthMismatch);
    t.match(e, { code: 'FUSE_LENGTH_MISMATCH', errno: 5, unique: 77n, opcode: 3, replyWanted: true, len: 100 });
    t.type(catchErr(() => parse(3, zero(16), { len: 40 })), LengthMismatch);
  });

  t.test('ShortBody', async (t) => {
    const short: [string, number, number[], ParseOptions?][] = [
      ['GETATTR one byte short', 3, zero(15)],
      ['SETATTR empty', 4, []],
      ['LOOKUP without NUL', 1, bytes('hello')],
      ['LOOKUP empty body', 1, []],
      ['SYMLINK with one name', 6, cstr('only')],
      ['RENAME without the new name', 12, [...u64(7), ...cstr('a')]],
      ['WRITE data shorter than size', 16, [...u64(3), ...u64(0), ...u32(10), ...zero(20), ...bytes('hello')]],
      ['SETXATTR value shorter than size', 21, [...u32(4), ...u32(0), ...cstr('user.a'), ...bytes('xyz')]],
      ['SETXATTR_EXT struct short', 21, [...u32(0), ...u32(0), ...zero(4)], { setxattrExt: true }],
      ['INIT of 15 bytes', 26, zero(15)],
      ['GETLK without lk_flags', 31, zero(40)],
      ['BATCH_FORGET count 3, two entries', 42, [...u32(3), ...u32(0), ...zero(32)]],
      ['BATCH_FORGET count 2^32-1', 42, [...u32(0xffffffff), ...u32(0)]],
      ['REMOVEMAPPING count 2, one entry', 49, [...u32(2), ...zero(16)]],
      ['IOCTL input shorter than in_size', 39, [...zero(24), ...u32(8), ...u32(0), 1, 2]],
      ['NOTIFY_REPLY data short', 41, [...zero(16), ...u32(9), ...zero(20), 1]],
    ];
    for (const [what, opcode, body, opts] of short) {
      const e = catchErr(() => parse(opcode, body, {}, opts));
      t.type(e, ShortBody, what);
      t.match(e, { code: 'FUSE_SHORT_BODY', errno: 5, unique: 0x1234n, opcode }, what);
    }
    const forget = catchErr(() => parse(2, zero(7)));
    t.equal((forget as WireParseError).replyWanted, false, 'FORGET never gets a reply, not even an error');
    const lookup = catchErr(() => parse(1, []));
    t.equal((lookup as WireParseError).replyWanted, true);
  });

  t.test('UnknownOpcode', async (t) => {
    for (const opcode of [0, 7, 19, 52 /* FUSE_STATX, 7.39 */, 4096 /* CUSE_INIT */, 0xffffffff]) {
      const e = catchErr(() => parse(opcode, zero(8)));
      t.type(e, UnknownOpcode, `opcode ${opcode}`);
      t.match(e, { code: 'FUSE_UNKNOWN_OPCODE', errno: 38, opcode, unique: 0x1234n, replyWanted: true });
    }
  });

  t.test('BadName', async (t) => {
    const bad: [string, number[]][] = [
      ['invalid bytes', [0xff, 0xfe]],
      ['a truncated sequence', [0x61, 0xe6, 0x97]],
      ['an overlong "/"', [0xc0, 0xaf]],
      ['a UTF-16 surrogate', [0xed, 0xa0, 0x80]],
      ['beyond U+10FFFF', [0xf4, 0x90, 0x80, 0x80]],
    ];
    for (const [what, raw] of bad) {
      const e = catchErr(() => parse(1, [...raw, 0]));
      t.type(e, BadName, what);
      t.match(e, { code: 'FUSE_BAD_NAME', errno: 22, replyWanted: true }, what);
      t.strictSame([...(e as BadName).bytes], raw, `${what}: the bytes are kept`);
    }
    t.type(catchErr(() => parse(12, [...u64(7), ...cstr('ok'), 0xff, 0])), BadName, 'the second name is checked too');
  });

  t.test('BadNodeId', async (t) => {
    const e = catchErr(() => parse(3, zero(16), { nodeid: 2n ** 53n, unique: 9n }));
    t.type(e, BadNodeId);
    t.match(e, { code: 'FUSE_BAD_NODEID', nodeid: 2n ** 53n, unique: 9n, opcode: 3, replyWanted: true });
    t.type(catchErr(() => parse(13, [...u64(1n << 60n), ...cstr('x')])), BadNodeId, 'LINK oldnodeid');
    t.type(catchErr(() => parse(12, [...u64(-1n), ...cstr('a'), ...cstr('b')])), BadNodeId, 'RENAME newdir');
    t.type(catchErr(() => parse(42, [...u32(1), ...u32(0), ...u64(-1n), ...u64(1)])), BadNodeId, 'BATCH_FORGET item');
    t.type(catchErr(() => parse(47, [...zero(16), ...u64(1n << 53n), ...zero(32)])), BadNodeId, 'COPY_FILE_RANGE');
  });
});

function catchErr(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}
