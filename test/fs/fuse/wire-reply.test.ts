/**
 * Golden reply fixtures for the FUSE wire layer: every reply encoded and compared byte for byte with a fixture
 * built by hand, one commented line per field; the dirent packers (alignment, the size limit, multi-byte names);
 * negotiateInit.
 *
 * The byte helpers are independent of the code under test (plain shifts).
 */
import t, { type Test } from 'tap';
import {
  DirentPacker, DirentPlusPacker, FOPEN, INIT_FLAGS, InitRefused, OUT_HEADER_SIZE, REPLY, encodeReply, fuseAttr,
  negotiateInit, notifyInvalInode, outHeader, parseRequest, replyBytes, replyError, replyOk, wireErrno, writeError, writeReply,
  type EntryOut, type FuseAttr, type ReplyBody,
} from '../../../src/fs/fuse/wire/index.js';
import { u16, u32, u64, utf8, zero } from '../../helpers/bytes.js';


const UNIQUE = 0x1234n;
/** fuse_out_header of a success reply with a body of n bytes */
const okHeader = (n: number) => [
  ...u32(16 + n), // len
  ...u32(0), //      error
  ...u64(UNIQUE), // unique
];

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

const ATTR: FuseAttr = {
  ino: 2, size: 5, blocks: 8,
  atime: { sec: -1, nsec: 999_999_999 }, mtime: { sec: 1_700_000_000, nsec: 123 }, ctime: { sec: 1_700_000_001, nsec: 0 },
  mode: S_IFREG | 0o644, nlink: 1, uid: 1000, gid: 100, rdev: 0, blksize: 4096,
};
/** fuse_attr of ATTR, 88 bytes */
const ATTR_BYTES = [
  ...u64(2), //             ino
  ...u64(5), //             size
  ...u64(8), //             blocks
  ...u64(-1), //            atime: 1969-12-31T23:59:59 (two's complement)
  ...u64(1_700_000_000), // mtime
  ...u64(1_700_000_001), // ctime
  ...u32(999_999_999), //   atimensec
  ...u32(123), //           mtimensec
  ...u32(0), //             ctimensec
  ...u32(0o100644), //      mode
  ...u32(1), //             nlink
  ...u32(1000), //          uid
  ...u32(100), //           gid
  ...u32(0), //             rdev
  ...u32(4096), //          blksize
  ...u32(0), //             flags
];
const ENTRY: EntryOut = {
  nodeid: 2, generation: 1, entry_valid: 1, entry_valid_nsec: 0, attr_valid: 2, attr_valid_nsec: 500_000_000, attr: ATTR,
};
/** fuse_entry_out of ENTRY, 128 bytes */
const ENTRY_BYTES = [
  ...u64(2), //            nodeid
  ...u64(1), //            generation
  ...u64(1), //            entry_valid
  ...u64(2), //            attr_valid
  ...u32(0), //            entry_valid_nsec
  ...u32(500_000_000), //  attr_valid_nsec
  ...ATTR_BYTES, //        attr
];

/** encode into a dirty buffer at an offset: the bytes around must stay, every byte inside must be written */
function dirty(t: Test, body: { size: number }, write: (buf: Buffer, off: number) => number): number[] {
  const buf = Buffer.alloc(body.size + OUT_HEADER_SIZE + 16, 0xaa);
  const n = write(buf, 8);
  t.equal(n, OUT_HEADER_SIZE + body.size, 'returns the reply length');
  t.ok(buf.subarray(0, 8).every((b) => b === 0xaa), 'nothing before the offset');
  t.ok(buf.subarray(8 + n).every((b) => b === 0xaa), 'nothing after the reply');
  return [...buf.subarray(8, 8 + n)];
}

t.test('headers, errors, empty and raw replies', async (t) => {
  t.strictSame([...replyError(0x1234n, 2)], [
    0x10, 0x00, 0x00, 0x00, //                         len 16: the header alone
    0xfe, 0xff, 0xff, 0xff, //                         error -2 (ENOENT)
    0x34, 0x12, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // unique
  ]);
  for (const bad of [0, -5, 512, 600, 1.5, NaN]) {
    t.strictSame([...replyError(UNIQUE, bad)], [...u32(16), ...u32(-5), ...u64(UNIQUE)], `errno ${bad} becomes EIO`);
  }
  t.equal(wireErrno(511), 511);
  t.strictSame([...replyOk(UNIQUE)], okHeader(0));
  t.strictSame([...outHeader(UNIQUE, 4096)], okHeader(4096), 'a header for writev: len counts the body');
  t.strictSame([...replyBytes(UNIQUE, Buffer.from('target'))], [...okHeader(6), ...utf8('target')]);
  const buf = Buffer.alloc(20, 0xaa);
  t.equal(writeError(buf, 2, 7n, 13), 16);
  t.strictSame([...buf], [0xaa, 0xaa, ...u32(16), ...u32(-13), ...u64(7n), 0xaa, 0xaa]);
});

t.test('FUSE_NOTIFY_INVAL_INODE: an unsolicited message, attributes only', async (t) => {
  t.strictSame([...notifyInvalInode(0x0102030405n)], [
    ...u32(16 + 24), // fuse_out_header.len
    ...u32(2), //       .error: the notify code FUSE_NOTIFY_INVAL_INODE, positive
    ...u64(0), //       .unique: 0 for a notification
    ...u64(0x0102030405), // fuse_notify_inval_inode_out.ino
    ...u64(-1), //      .off: -1 drops the cached attributes and no pages
    ...u64(0), //       .len
  ]);
});

t.test('entry_out (LOOKUP, MKDIR, MKNOD, SYMLINK, LINK)', async (t) => {
  const got = dirty(t, REPLY.entry, (buf, off) => writeReply(buf, off, UNIQUE, REPLY.entry, ENTRY));
  t.strictSame(got, [...okHeader(128), ...ENTRY_BYTES]);
  t.strictSame([...encodeReply(UNIQUE, REPLY.entry, ENTRY)], got, 'the allocating form is the same');
  const negative = encodeReply(UNIQUE, REPLY.entry, { ...ENTRY, nodeid: 0, attr: { ...ATTR, blksize: undefined } });
  t.strictSame([...negative.subarray(16, 24)], u64(0), 'nodeid 0: a negative entry');
  t.strictSame([...negative.subarray(16 + 40 + 80, 16 + 40 + 84)], u32(0), 'blksize defaults to 0 (kernel default)');
  // fuseAttr (what the session replies with): an Attr with its blksize, the same bytes as ATTR
  const { blksize: _b, ...plain } = ATTR;
  const made = fuseAttr(plain, 4096);
  t.strictSame([...encodeReply(UNIQUE, REPLY.entry, { ...ENTRY, attr: made })], got, 'fuseAttr(attr, 4096) encodes as ATTR does');
});

t.test('attr_out (GETATTR, SETATTR)', async (t) => {
  const got = dirty(t, REPLY.attr, (buf, off) =>
    writeReply(buf, off, UNIQUE, REPLY.attr, { attr_valid: 1, attr_valid_nsec: 250, attr: ATTR }));
  t.strictSame(got, [
    ...okHeader(104),
    ...u64(1), //   attr_valid
    ...u32(250), // attr_valid_nsec
    ...u32(0), //   dummy
    ...ATTR_BYTES,
  ]);
});

t.test('open_out (OPEN, OPENDIR) and create (CREATE, TMPFILE)', async (t) => {
  const open = { fh: 42, open_flags: FOPEN.FOPEN_KEEP_CACHE | FOPEN.FOPEN_PARALLEL_DIRECT_WRITES };
  t.strictSame(dirty(t, REPLY.open, (buf, off) => writeReply(buf, off, UNIQUE, REPLY.open, open)), [
    ...okHeader(16),
    ...u64(42), //        fh
    ...u32(0b1000010), // open_flags: FOPEN_KEEP_CACHE | FOPEN_PARALLEL_DIRECT_WRITES
    ...u32(0), //         padding
  ]);
  t.strictSame(dirty(t, REPLY.create, (buf, off) => writeReply(buf, off, UNIQUE, REPLY.create, { entry: ENTRY, open })), [
    ...okHeader(144),
    ...ENTRY_BYTES, //    fuse_entry_out
    ...u64(42), //        fuse_open_out.fh
    ...u32(0b1000010), // open_flags
    ...u32(0), //         padding
  ]);
});

t.test('small fixed replies', async (t) => {
  const check = <T>(name: keyof typeof REPLY, v: T, body: number[]) => {
    const r = REPLY[name] as unknown as ReplyBody<T>;
    t.equal(r.size, body.length, `${name}: size`);
    t.strictSame(dirty(t, r, (buf, off) => writeReply(buf, off, UNIQUE, r, v)), [...okHeader(body.length), ...body], name);
  };
  check('write', { size: 131072 }, [
    ...u32(131072), // size written
    ...u32(0), //      padding
  ]);
  check('getxattr', { size: 17 }, [
    ...u32(17), // size of the value
    ...u32(0), //  padding
  ]);
  check('bmap', { block: 12345 }, [...u64(12345)]); // block
  check('lseek', { offset: 2 ** 40 }, [...u64(2 ** 40)]); // offset
  check('poll', { revents: 0x41 }, [
    ...u32(0x41), // revents: POLLIN|POLLRDNORM
    ...u32(0), //    padding
  ]);
  check('ioctl', { result: -1, flags: 4, in_iovs: 1, out_iovs: 2 }, [
    ...u32(-1), // result (signed)
    ...u32(4), //  flags: FUSE_IOCTL_RETRY
    ...u32(1), //  in_iovs
    ...u32(2), //  out_iovs
  ]);
  check('lk', { start: 0n, end: 0x7fffffffffffffffn, type: 1, pid: 42 }, [
    ...u64(0), //                     lk.start
    ...u64(0x7fffffffffffffffn), //   lk.end: OFFSET_MAX, exact
    ...u32(1), //                     lk.type: F_WRLCK
    ...u32(42), //                    lk.pid
  ]);
  check('statfs', { bsize: 4096, frsize: 4096, blocks: 1000, bfree: 500, bavail: 400, files: 100, ffree: 50, namemax: 255 }, [
    ...u64(1000), // st.blocks
    ...u64(500), //  st.bfree
    ...u64(400), //  st.bavail
    ...u64(100), //  st.files
    ...u64(50), //   st.ffree
    ...u32(4096), // st.bsize
    ...u32(255), //  st.namelen
    ...u32(4096), // st.frsize
    ...u32(0), //    st.padding
    ...zero(24), //  st.spare[6]
  ]);
  check('init', {
    major: 7, minor: 38, max_readahead: 131072, flags: 0x4040_0001, max_background: 12, congestion_threshold: 9,
    max_write: 1 << 20, time_gran: 1, max_pages: 256, map_alignment: 0, flags2: 0b1000,
  }, [
    ...u32(7), //          major
    ...u32(38), //         minor
    ...u32(131072), //     max_readahead
    ...u32(0x4040_0001), // flags: ASYNC_READ|MAX_PAGES|INIT_EXT
    ...u16(12), //         max_background
    ...u16(9), //          congestion_threshold
    ...u32(1 << 20), //    max_write
    ...u32(1), //          time_gran
    ...u16(256), //        max_pages
    ...u16(0), //          map_alignment
    ...u32(0b1000), //     flags2: HAS_EXPIRE_ONLY (bit 35)
    ...zero(28), //        unused[7]
  ]);
});

t.test('values that do not fit their field throw RangeError', async (t) => {
  t.throws(() => encodeReply(UNIQUE, REPLY.write, { size: -1 }), RangeError);
  t.throws(() => encodeReply(UNIQUE, REPLY.write, { size: 2 ** 32 }), RangeError);
  t.throws(() => encodeReply(UNIQUE, REPLY.entry, { ...ENTRY, attr: { ...ATTR, uid: -1 } }), RangeError);
  t.throws(() => encodeReply(UNIQUE, REPLY.lseek, { offset: -1 }), RangeError);
  t.throws(() => encodeReply(UNIQUE, REPLY.init, { ...negotiateInit(INIT_REQ, { flags: 0n }).out, max_pages: 65536 }), RangeError);
  t.throws(() => writeReply(Buffer.alloc(100), 0, UNIQUE, REPLY.entry, ENTRY), RangeError, 'buffer too small');
  t.throws(() => writeReply(Buffer.alloc(200), 100, UNIQUE, REPLY.entry, ENTRY), RangeError, 'offset too far');
});

t.test('DirentPacker: records, alignment, type, UTF-8', async (t) => {
  const p = new DirentPacker(4096);
  t.ok(p.add({ ino: 1, off: 1, type: S_IFDIR | 0o755, name: '.' }));
  t.ok(p.add({ ino: 5, off: 2, type: S_IFREG | 0o644, name: 'héllo' }));
  t.ok(p.add({ ino: 6, off: 3, type: S_IFLNK | 0o777, name: '日本語' }));
  t.equal(p.count, 3);
  t.strictSame([...p.bytes()], [
    ...u64(1), //            ino
    ...u64(1), //            off: the cookie after this entry
    ...u32(1), //            namelen
    ...u32(4), //            type: DT_DIR
    ...utf8('.'), ...zero(7), // name, padded to 8: 24 + 1 → 32
    ...u64(5), ...u64(2), //  ino, off
    ...u32(6), //            namelen: "héllo" is 6 bytes
    ...u32(8), //            type: DT_REG
    ...utf8('héllo'), ...zero(2), // 24 + 6 → 32
    ...u64(6), ...u64(3), //  ino, off
    ...u32(9), //            namelen: three 3-byte characters
    ...u32(10), //           type: DT_LNK
    ...utf8('日本語'), ...zero(7), // 24 + 9 → 40
  ]);
  t.equal(p.length, 104);
});

t.test('DirentPacker: every name length pads to 8 with zeros, in a dirty buffer', async (t) => {
  for (let n = 1; n <= 40; n++) {
    const buf = Buffer.alloc(200, 0xaa);
    const p = new DirentPacker(150, buf, 10);
    t.ok(p.add({ ino: 1, off: 1, type: S_IFREG, name: 'x'.repeat(n) }));
    const rec = Math.ceil((24 + n) / 8) * 8;
    t.equal(p.length, rec, `name of ${n}: record of ${rec}`);
    t.equal(DirentPacker.recordSize(n), rec);
    t.ok(buf.subarray(10 + 24 + n, 10 + rec).every((b) => b === 0), `name of ${n}: padding zeroed`);
    t.equal(buf[10 + rec], 0xaa, 'nothing written past the record');
    t.equal(p.bytes().byteOffset, buf.byteOffset + 10);
  }
});

t.test('DirentPacker: the size limit', async (t) => {
  const a = { ino: 1, off: 1, type: S_IFDIR, name: '.' }; // 32 bytes
  const b = { ino: 5, off: 2, type: S_IFREG, name: 'héllo' }; // 32 bytes
  const c = { ino: 6, off: 3, type: S_IFREG, name: 'c' }; // 32 bytes
  const exact = new DirentPacker(64);
  t.ok(exact.fits('.'));
  t.ok(exact.add(a));
  t.ok(exact.fits('héllo'), 'fits: 32 more bytes');
  t.notOk(exact.fits('héllo!!!'), 'fits: 40 more bytes do not');
  t.ok(exact.add(b), 'a record that ends exactly at the limit fits');
  t.notOk(exact.add(c), 'the next does not');
  t.equal(exact.length, 64);
  t.equal(exact.count, 2);
  const short = new DirentPacker(63);
  t.ok(short.add(a));
  t.notOk(short.add(b), 'one byte short: refused');
  t.equal(short.length, 32, 'nothing of the refused record was counted');
  t.notOk(new DirentPacker(31).add(a), 'a first record can be refused too (size smaller than one record)');
  const multi = new DirentPacker(32 + 24 + 8);
  t.ok(multi.add(a));
  t.notOk(multi.add({ ino: 9, off: 9, type: S_IFREG, name: 'é'.repeat(5) }), 'the limit counts UTF-8 bytes (10), not characters (5)');
  t.ok(multi.add({ ino: 9, off: 9, type: S_IFREG, name: 'é'.repeat(4) }), '8 bytes fit');
  t.throws(() => new DirentPacker(10).add({ ino: 1, off: 1, type: S_IFREG, name: '' }), RangeError, 'empty name');
  t.throws(() => new DirentPacker(100).add({ ino: 1, off: 1, type: S_IFREG, name: 'a/b' }), RangeError, 'slash');
  t.throws(() => new DirentPacker(100, Buffer.alloc(50)), RangeError, 'size beyond the buffer');
});

t.test('DirentPlusPacker: entry_out then dirent, padded', async (t) => {
  const buf = Buffer.alloc(400, 0xaa);
  const p = new DirentPlusPacker(360, buf, 4);
  t.ok(p.add({ ino: 2, off: 7, type: S_IFREG, name: 'ü' }, ENTRY));
  t.equal(DirentPlusPacker.recordSize(2), 160);
  t.strictSame([...p.bytes()], [
    ...ENTRY_BYTES, //  fuse_entry_out (128)
    ...u64(2), //       dirent.ino
    ...u64(7), //       dirent.off
    ...u32(2), //       dirent.namelen
    ...u32(8), //       dirent.type: DT_REG
    ...utf8('ü'), ...zero(6), // 152 + 2 → 160
  ]);
  t.ok(p.add({ ino: 2, off: 8, type: S_IFREG, name: 'x' }, ENTRY));
  t.notOk(p.fits('y'), 'fits counts the entry_out too');
  t.notOk(p.add({ ino: 2, off: 9, type: S_IFREG, name: 'y' }, ENTRY), '3 × 160 > 360');
  t.equal(p.length, 320);
  t.equal(buf[4 + 320], 0xaa);
});

/** INIT as a 6.x kernel sends it (7.38 here), parsed from bytes */
const INIT_REQ = (() => {
  const body = [
    ...u32(7), ...u32(38), ...u32(131072), //   major, minor, max_readahead
    ...u32(0x7fff_ffff), //                      flags: bits 0..30 (all but INIT_RESERVED)
    ...u32(0b1011), //                           flags2: SECURITY_CTX, HAS_INODE_DAX, HAS_EXPIRE_ONLY
    ...zero(44), //                              unused
  ];
  const header = [...u32(104), ...u32(26), ...u64(UNIQUE), ...u64(0), ...u32(0), ...u32(0), ...u32(0), ...u32(0)];
  const r = parseRequest(Uint8Array.from(header), Uint8Array.from(body));
  if (r.op !== 'INIT') throw new Error('not INIT');
  return r;
})();

t.test('negotiateInit', async (t) => {
  const F = INIT_FLAGS;
  t.test('refuses other majors and old minors', async (t) => {
    for (const [major, minor] of [[6, 38], [8, 0], [7, 30], [7, 8]] as const) {
      const e = catchErr(() => negotiateInit({ ...INIT_REQ, major, minor }, { flags: 0n }));
      t.type(e, InitRefused, `${major}.${minor}`);
      t.match(e, { code: 'FUSE_INIT_REFUSED', errno: 71, message: new RegExp(`${major}\\.${minor}`) });
    }
    t.equal(negotiateInit({ ...INIT_REQ, minor: 31 }, { flags: 0n }).minor, 31, '7.31 is accepted');
  });

  t.test('the lower minor wins', async (t) => {
    t.equal(negotiateInit({ ...INIT_REQ, minor: 44 }, { flags: 0n }).out.minor, 38, 'a newer kernel gets ours');
    t.equal(negotiateInit({ ...INIT_REQ, minor: 34 }, { flags: 0n }).out.minor, 34, 'an older kernel keeps its own');
  });

  t.test('flags: intersection, plus MAX_PAGES and INIT_EXT when offered', async (t) => {
    const wanted = F.FUSE_ASYNC_READ | F.FUSE_BIG_WRITES | F.FUSE_HAS_EXPIRE_ONLY | F.FUSE_INIT_RESERVED | (1n << 40n);
    const r = negotiateInit(INIT_REQ, { flags: wanted });
    const agreed = F.FUSE_ASYNC_READ | F.FUSE_BIG_WRITES | F.FUSE_HAS_EXPIRE_ONLY | F.FUSE_MAX_PAGES | F.FUSE_INIT_EXT;
    t.equal(r.flags, agreed);
    t.equal(r.out.flags, Number(agreed & 0xffffffffn));
    t.equal(r.out.flags2, 0b1000, 'HAS_EXPIRE_ONLY is bit 3 of flags2');
  });

  t.test('a pre-7.36 kernel: no flags2, ever', async (t) => {
    const old = { major: 7, minor: 31, max_readahead: 65536, flags: F.FUSE_ASYNC_READ | F.FUSE_MAX_PAGES | F.FUSE_WRITEBACK_CACHE };
    const r = negotiateInit(old, { flags: F.FUSE_ASYNC_READ | F.FUSE_SECURITY_CTX | F.FUSE_INIT_EXT });
    t.equal(r.flags, F.FUSE_ASYNC_READ | F.FUSE_MAX_PAGES);
    t.equal(r.out.flags2, 0);
    const noExt = negotiateInit({ ...old, flags: old.flags | F.FUSE_SECURITY_CTX }, { flags: F.FUSE_SECURITY_CTX });
    t.equal(noExt.flags, F.FUSE_MAX_PAGES, 'high bits without INIT_EXT are dropped');
  });

  t.test('sizes and limits', async (t) => {
    const r = negotiateInit(INIT_REQ, { flags: 0n });
    t.match(r.out, {
      major: 7, max_write: 1 << 20, max_pages: 256, time_gran: 1, map_alignment: 0, max_background: 0,
      congestion_threshold: 0, max_readahead: 131072,
    });
    t.equal(negotiateInit(INIT_REQ, { flags: 0n, maxReadahead: 4096 }).out.max_readahead, 4096, 'ours is lower');
    t.equal(negotiateInit(INIT_REQ, { flags: 0n, maxReadahead: 1 << 30 }).out.max_readahead, 131072, 'never above the kernel');
    const bg = negotiateInit(INIT_REQ, { flags: 0n, maxBackground: 64, congestionThreshold: 48 }).out;
    t.match(bg, { max_background: 64, congestion_threshold: 48 });
    t.throws(() => negotiateInit(INIT_REQ, { flags: 0n, maxBackground: 70000 }), RangeError);
  });

  t.test('end to end: INIT bytes in, init_out bytes out', async (t) => {
    const r = negotiateInit(INIT_REQ, { flags: F.FUSE_ASYNC_READ | F.FUSE_BIG_WRITES | F.FUSE_PARALLEL_DIROPS });
    t.strictSame([...encodeReply(INIT_REQ.header.unique, REPLY.init, r.out)], [
      ...okHeader(64),
      ...u32(7), //                major
      ...u32(38), //               minor
      ...u32(131072), //           max_readahead
      ...u32(0x4044_0021), //      flags: ASYNC_READ|BIG_WRITES|PARALLEL_DIROPS|MAX_PAGES|INIT_EXT
      ...u16(0), ...u16(0), //     max_background, congestion_threshold: kernel defaults
      ...u32(1 << 20), //          max_write
      ...u32(1), //                time_gran
      ...u16(256), ...u16(0), //   max_pages, map_alignment
      ...u32(0), //                flags2
      ...zero(28), //              unused
    ]);
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
