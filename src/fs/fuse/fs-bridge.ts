/**
 * The bridge from FUSE requests to the filesystem core: one short handler per opcode (decode, await the
 * core, return the reply). It also reports the kernel's lookup counts to the core: every entry handed to
 * the kernel counts one lookup of its inode (fs.remember), FORGET and BATCH_FORGET take them back
 * (fs.forget); the core keeps an unlinked inode until the kernel has forgotten it.
 */
import type { BufferPool } from '../../bufferpool/buffer-pool.js';
import { FsError, fsErr } from '../errors.js';
import type { Filesystem } from '../filesystem.js';
import type { Attr, Ctx, SetAttr } from '../types.js';
import { placeholderAttr, type OpTable, type Reply } from './session.js';
import {
  DirentPacker, DirentPlusPacker, FATTR, INIT_FLAGS, REQUEST_FLAGS, negotiateInit, type InHeader,
} from './wire/index.js';

export interface BridgeOptions {
  /** ask the kernel for its writeback cache */
  writebackCache?: boolean;
  /** keep the kernel's page cache across opens (one mount per volume) */
  keepCache?: boolean;
  /** called once the kernel's INIT was answered, with what was agreed */
  onInit?: (info: { minor: number; flags: bigint }) => void;
  /** the largest WRITE the channel takes whole */
  maxWrite: number;
  /** the session's parse options, updated at INIT */
  parseOptions: { setxattrExt?: boolean };
  /** entries returned for readdirplus need the session's timeouts */
  entryOut: (attr: Attr) => import('./wire/index.js').EntryOut;
}

const ctxOf = (h: InHeader): Ctx => ({ uid: h.uid, gid: h.gid, pid: h.pid });
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const FALLOC_FL_KEEP_SIZE = 1;

export function fsBridge(fs: Filesystem, pool: BufferPool, opts: BridgeOptions): OpTable {
  const entry = (attr: Attr): Reply => {
    fs.remember(attr.ino);
    return { t: 'entry', attr };
  };
  const wanted = INIT_FLAGS.FUSE_ASYNC_READ | INIT_FLAGS.FUSE_ATOMIC_O_TRUNC | INIT_FLAGS.FUSE_BIG_WRITES |
    INIT_FLAGS.FUSE_PARALLEL_DIROPS | INIT_FLAGS.FUSE_DO_READDIRPLUS | INIT_FLAGS.FUSE_READDIRPLUS_AUTO |
    INIT_FLAGS.FUSE_ASYNC_DIO | INIT_FLAGS.FUSE_CACHE_SYMLINKS | INIT_FLAGS.FUSE_EXPORT_SUPPORT |
    // kvfs clears setuid/setgid/capabilities itself when the kernel flags an unprivileged change, so the
    // kernel does not ask for security.capability before every write
    INIT_FLAGS.FUSE_HANDLE_KILLPRIV_V2 | (opts.writebackCache ? INIT_FLAGS.FUSE_WRITEBACK_CACHE : 0n) |
    // other mounts change files: the kernel drops cached pages when it sees a new mtime or size
    (fs.shared ? INIT_FLAGS.FUSE_AUTO_INVAL_DATA : 0n);
  const openFlags = opts.keepCache ? 2 /* FOPEN_KEEP_CACHE */ : 0;

  return {
    INIT: (req) => {
      const r = negotiateInit(req, { flags: wanted, maxBackground: 64, congestionThreshold: 48, maxWrite: opts.maxWrite });
      opts.parseOptions.setxattrExt = (r.flags & INIT_FLAGS.FUSE_SETXATTR_EXT) !== 0n;
      opts.onInit?.({ minor: r.minor, flags: r.flags });
      return { t: 'init', out: r.out };
    },
    DESTROY: () => ({ t: 'empty' }),
    FORGET: (req) => {
      fs.forget(req.header.nodeid, req.nlookup);
      return { t: 'none' };
    },
    BATCH_FORGET: (req) => {
      for (const it of req.items) fs.forget(it.nodeid, it.nlookup);
      return { t: 'none' };
    },
    LOOKUP: async (req) => {
      try {
        return entry(await fs.lookup(req.header.nodeid, req.name));
      } catch (e) {
        // One mount per volume: the kernel may cache "no such name" like any entry (every change to the name
        // goes through it). Several mounts: it may not, or a file another mount creates would stay hidden.
        if (!fs.shared && e instanceof FsError && e.code === 'ENOENT') return { t: 'noEntry' };
        throw e;
      }
    },
    GETATTR: async (req) => ({ t: 'attr', attr: await fs.getattr(req.header.nodeid) }),
    SETATTR: async (req) => {
      const v = req.valid;
      const set: SetAttr = {};
      if (v & FATTR.FATTR_MODE) set.mode = req.mode;
      if (v & FATTR.FATTR_UID) set.uid = req.uid;
      if (v & FATTR.FATTR_GID) set.gid = req.gid;
      if (v & FATTR.FATTR_SIZE) set.size = req.size;
      if (v & FATTR.FATTR_ATIME_NOW) set.atime = 'now';
      else if (v & FATTR.FATTR_ATIME) set.atime = { sec: req.atime, nsec: req.atimensec };
      if (v & FATTR.FATTR_MTIME_NOW) set.mtime = 'now';
      else if (v & FATTR.FATTR_MTIME) set.mtime = { sec: req.mtime, nsec: req.mtimensec };
      if (v & FATTR.FATTR_CTIME) set.ctime = { sec: req.ctime, nsec: req.ctimensec };
      const attr = await fs.setattr(req.header.nodeid, set, ctxOf(req.header));
      if (v & FATTR.FATTR_KILL_SUIDGID || (v & (FATTR.FATTR_UID | FATTR.FATTR_GID) && (attr.mode & 0o170000) !== 0o040000)) {
        await fs.killPriv(req.header.nodeid);
        return { t: 'attr', attr: await fs.getattr(req.header.nodeid) };
      }
      return { t: 'attr', attr };
    },
    READLINK: async (req) => ({ t: 'bytes', data: Buffer.from(await fs.readlink(req.header.nodeid)) }),
    SYMLINK: async (req) => entry(await fs.symlink(req.header.nodeid, req.name, req.target, ctxOf(req.header))),
    MKNOD: async (req) => entry(await fs.mknod(req.header.nodeid, req.name, req.mode, req.rdev, ctxOf(req.header))),
    MKDIR: async (req) => entry(await fs.mkdir(req.header.nodeid, req.name, req.mode, ctxOf(req.header))),
    UNLINK: async (req) => {
      await fs.unlink(req.header.nodeid, req.name);
      return { t: 'empty' };
    },
    RMDIR: async (req) => {
      await fs.rmdir(req.header.nodeid, req.name);
      return { t: 'empty' };
    },
    RENAME: async (req) => {
      await fs.rename(req.header.nodeid, req.oldname, req.newdir, req.newname, 0);
      return { t: 'empty' };
    },
    RENAME2: async (req) => {
      await fs.rename(req.header.nodeid, req.oldname, req.newdir, req.newname, req.flags);
      return { t: 'empty' };
    },
    LINK: async (req) => entry(await fs.link(req.oldnodeid, req.header.nodeid, req.name)),
    OPEN: async (req) => {
      const fh = await fs.open(req.header.nodeid, req.flags);
      if (req.open_flags & REQUEST_FLAGS.FUSE_OPEN_KILL_SUIDGID) await fs.killPriv(req.header.nodeid);
      return { t: 'open', fh, flags: openFlags && fs.keepsCache(fh) ? openFlags : 0 };
    },
    CREATE: async (req) => {
      const { attr, fh } = await fs.create(req.header.nodeid, req.name, req.mode, req.flags, ctxOf(req.header));
      if (req.open_flags & REQUEST_FLAGS.FUSE_OPEN_KILL_SUIDGID) await fs.killPriv(attr.ino);
      fs.remember(attr.ino);
      return { t: 'create', attr, fh, flags: openFlags && fs.keepsCache(fh) ? openFlags : 0 };
    },
    READ: async (req, cx) => {
      const size = Math.min(req.size, pool.maxSize);
      // A free buffer now (the usual case) needs no abort signal; a wait can be interrupted (EINTR).
      const buf = pool.tryAcquire(size) ?? await pool.acquire(size, cx.signal).catch((e) => {
        throw (e as { code?: string }).code === 'ABORTED' ? fsErr('EINTR') : e;
      });
      try {
        const data = await fs.read(req.fh, req.offset, size, buf);
        return { t: 'bytes', data, release: () => pool.release(buf) };
      } catch (e) {
        pool.release(buf);
        throw e;
      }
    },
    WRITE: async (req) => {
      if (req.write_flags & REQUEST_FLAGS.FUSE_WRITE_KILL_SUIDGID) await fs.killPriv(req.header.nodeid);
      return { t: 'write', size: await fs.write(req.fh, req.offset, req.data) };
    },
    STATFS: async () => ({ t: 'statfs', st: await fs.statfs() }),
    RELEASE: async (req) => {
      await fs.release(req.fh);
      return { t: 'empty' };
    },
    FLUSH: async (req) => {
      await fs.flush(req.fh);
      return { t: 'empty' };
    },
    FSYNC: async (req) => {
      await fs.fsync(req.fh, (req.fsync_flags & 1) !== 0);
      return { t: 'empty' };
    },
    SETXATTR: async (req) => {
      await fs.setxattr(req.header.nodeid, req.name, req.value, req.flags);
      return { t: 'empty' };
    },
    GETXATTR: async (req) => {
      const v = await fs.getxattr(req.header.nodeid, req.name);
      if (req.size === 0) return { t: 'xattrSize', size: v.length };
      if (v.length > req.size) throw fsErr('ERANGE');
      return { t: 'bytes', data: v };
    },
    LISTXATTR: async (req) => {
      const names = await fs.listxattr(req.header.nodeid);
      const packed = Buffer.concat(names.map((n) => Buffer.from(n + '\0')));
      if (req.size === 0) return { t: 'xattrSize', size: packed.length };
      if (packed.length > req.size) throw fsErr('ERANGE');
      return { t: 'bytes', data: packed };
    },
    REMOVEXATTR: async (req) => {
      await fs.removexattr(req.header.nodeid, req.name);
      return { t: 'empty' };
    },
    OPENDIR: async (req) => ({ t: 'open', fh: await fs.opendir(req.header.nodeid) }),
    // Each reply asks the core for no more entries than req.size holds records of the smallest size (a name of
    // 1 to 8 bytes): READDIRPLUS reads the inodes of one reply's worth of entries (2.6 times what fits at worst,
    // names of 255 bytes), never those of the rest of the directory, so a listing costs linear time.
    READDIR: async (req) => {
      const list = await fs.readdir(req.fh, req.offset, false, Math.floor(req.size / DirentPacker.recordSize(1)));
      const p = new DirentPacker(req.size);
      for (const e of list) if (!p.add({ ino: e.ino, off: e.next, type: e.type, name: e.name })) break;
      return { t: 'bytes', data: p.bytes() };
    },
    READDIRPLUS: async (req) => {
      const list = await fs.readdir(req.fh, req.offset, true, Math.floor(req.size / DirentPlusPacker.recordSize(1)));
      const p = new DirentPlusPacker(req.size);
      for (const e of list) {
        const dot = e.name === '.' || e.name === '..';
        // "." and ".." carry no entry (nodeid 0): the kernel does not count them as lookups.
        const out = dot || !e.attr ? { ...opts.entryOut(e.attr ?? placeholderAttr(e.ino, e.type, 1)), nodeid: 0 } : opts.entryOut(e.attr);
        if (!p.add({ ino: e.ino, off: e.next, type: e.type, name: e.name }, out)) break;
        if (!dot && e.attr) fs.remember(e.ino);
      }
      return { t: 'bytes', data: p.bytes() };
    },
    RELEASEDIR: async (req) => {
      await fs.releasedir(req.fh);
      return { t: 'empty' };
    },
    FSYNCDIR: async () => {
      await fs.syncMetadata();
      return { t: 'empty' };
    },
    ACCESS: async (req) => {
      await fs.access(req.header.nodeid, req.mask, ctxOf(req.header));
      return { t: 'empty' };
    },
    FALLOCATE: async (req) => {
      if (req.mode & ~FALLOC_FL_KEEP_SIZE) throw fsErr('EOPNOTSUPP');
      const attr = await fs.getattr(req.header.nodeid);
      const end = req.offset + req.length;
      // Space is not reserved ahead in a KV store; allocating means the range reads as data (zeros).
      if (!(req.mode & FALLOC_FL_KEEP_SIZE) && end > attr.size) await fs.setattr(req.header.nodeid, { size: end });
      return { t: 'empty' };
    },
    COPY_FILE_RANGE: async (req) => {
      if (req.flags !== 0) throw fsErr('EINVAL');
      return { t: 'write', size: await fs.copyFileRange(req.fh_in, req.off_in, req.fh_out, req.off_out, req.len) };
    },
    LSEEK: async (req) => {
      const attr = await fs.getattr(req.header.nodeid);
      // The whole file counts as data and its end as the only hole, which POSIX allows.
      if (req.whence === SEEK_DATA) {
        if (req.offset >= attr.size) throw fsErr('ENXIO');
        return { t: 'lseek', offset: req.offset };
      }
      if (req.whence === SEEK_HOLE) {
        if (req.offset >= attr.size) throw fsErr('ENXIO');
        return { t: 'lseek', offset: attr.size };
      }
      throw fsErr('EINVAL');
    },
    SYNCFS: async () => {
      await fs.sync();
      return { t: 'empty' };
    },
  };
}

