/**
 * The libfuse driver: fuse-native (libfuse 2, high-level path API) adapted onto the inode core.
 * Portable, and the baseline every benchmark of the native channel is measured against (`--driver libfuse`).
 *
 * Each handler resolves paths to inodes (PathIndex), awaits the core, and answers with the result or with
 * `-toErrno(e)`. What libfuse 2's high-level API cannot carry, and so this driver cannot offer:
 *  - the caller's uid/gid (fuse-native does not pass fuse_get_context): new files belong to the daemon's user;
 *  - rename flags (RENAME_NOREPLACE / RENAME_EXCHANGE reach the kernel as EINVAL);
 *  - timestamps finer than a millisecond (fuse-native carries milliseconds);
 *  - setting one timestamp alone (utimensat with UTIME_OMIT for the other): libfuse 2.9 drops the change;
 *  - an atime and an mtime that differ: fuse-native hands over the atime in the mtime's place, so both get the atime;
 *  - times outside [1970-01-01, 2^53-1 ms after it] (fuse-native carries times as unsigned milliseconds, and
 *    JavaScript numbers are exact to 2^53): a time set outside is clamped to the nearest end, as the kernel clamps
 *    times a filesystem cannot store; a stored time outside (set through the native driver) reads clamped;
 *  - unlink or rename over an open file is libfuse's "hide and remove at last close" (.fuse_hidden files), not
 *    the core's own orphan handling: such a rename is two steps, and the hidden names show in listings;
 *  - hard links: libfuse gives each path its own kernel inode, so cached attributes of one link do not see a
 *    change made through another; this driver therefore defaults to attr_timeout=0.
 * The native driver has none of these limits.
 */
import { createRequire } from 'node:module';
import { constants } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { allowOtherProblem, escapeOptionValue, fusermountRefused, isRoot, mountSource, setuidFusermount } from '../../fuse-access.js';
import type { Filesystem } from '../filesystem.js';
import { toErrno } from '../errors.js';
import type { Attr, Ctx, StatFs } from '../types.js';
import { PathIndex } from './path-index.js';

const require = createRequire(import.meta.url);

export interface LibfuseMountOptions {
  allowOther?: boolean;
  /** the mount's source as findmnt and df show it (the store URL, never a secret); default `kvfs` */
  source?: string;
  debug?: boolean;
  /** seconds the kernel may cache attributes and entries */
  attrTimeout?: number;
  entryTimeout?: number;
}

type Cb = (...args: unknown[]) => void;

/** fuse-native copies the -o string into a 1024-byte buffer: 1023 bytes and its NUL */
const OPTIONS_MAX = 1023;

/** the times fuse-native carries: milliseconds since 1970, unsigned, exact as a JavaScript number */
export const TIME_MS_MIN = 0;
export const TIME_MS_MAX = Number.MAX_SAFE_INTEGER;

/** a time in milliseconds clamped to what fuse-native carries */
export const clampMs = (ms: number): number => Math.min(TIME_MS_MAX, Math.max(TIME_MS_MIN, ms));

/**
 * fuse-native's utimens arguments (a time as the low and high 32 bits of C's `(uint64_t)(tv_sec * 1000 +
 * tv_nsec / 1e6)`) as milliseconds: read as signed, so a time before 1970 is negative, then clamped.
 */
export function utimensMs(low: number, high: number): number {
  const ms = BigInt.asIntN(64, (BigInt(high >>> 0) << 32n) | BigInt(low >>> 0));
  return ms < BigInt(TIME_MS_MIN) ? TIME_MS_MIN : ms > BigInt(TIME_MS_MAX) ? TIME_MS_MAX : Number(ms);
}

/** a stat object as fuse-native takes it (times in milliseconds, clamped to what it carries) */
function toStat(a: Attr): object {
  const ms = (t: { sec: number; nsec: number }) => clampMs(t.sec * 1000 + Math.floor(t.nsec / 1e6));
  return {
    mode: a.mode, uid: a.uid, gid: a.gid, size: a.size, dev: 0, nlink: a.nlink, ino: a.ino, rdev: a.rdev,
    blksize: 4096, blocks: a.blocks, atime: ms(a.atime), mtime: ms(a.mtime), ctime: ms(a.ctime),
  };
}

function msToTs(ms: number): { sec: number; nsec: number } {
  const sec = Math.floor(ms / 1000);
  return { sec, nsec: Math.round((ms - sec * 1000) * 1e6) };
}

/**
 * Mounts `fs` at `mnt` through fuse-native; resolves once the kernel has the mount. The session ends when the
 * kernel ends it (an unmount from anywhere); libfuse's loop then closes its /dev/fuse descriptor.
 */
export async function mountLibfuse(fs: Filesystem, mnt: string, opts: LibfuseMountOptions = {}): Promise<void> {
  const refused = opts.allowOther ? allowOtherProblem() : undefined;
  if (refused) throw new Error(refused);
  // as an ordinary user, libfuse 2's fuse_mount runs `fusermount` (Debian 12's fuse3 links it to fusermount3)
  if (!isRoot() && !setuidFusermount(['fusermount'])) {
    throw new Error('the libfuse driver mounts as an ordinary user through `fusermount`, and no setuid-root one is ' +
      'installed (on Debian 12, fuse3 provides it: apt install fuse3); or use the native driver, or mount as root');
  }
  const Fuse = require('fuse-native') as { new (mnt: string, ops: object, opts: object): FuseInstance; prototype: object };
  interface FuseInstance {
    ops: Record<string, Cb>;
    mount(cb: (err?: Error | null) => void): void;
    unmount(cb: (err?: Error | null) => void): void;
    _fuseOptions(): string;
  }
  const paths = new PathIndex(fs, (opts.entryTimeout ?? 1) * 1000);
  const self: Ctx = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, pid: process.pid };

  /** answers cb with the result of work, or with -errno */
  const reply = <T>(cb: Cb, work: () => Promise<T>, ok: (v: T) => unknown[] = () => [0]) => {
    work().then((v) => cb(...ok(v)), (e) => cb(-toErrno(e)));
  };
  const node = (path: string) => paths.resolve(path);
  const setattr = (path: string, set: Parameters<Filesystem['setattr']>[1]) => node(path).then((ino) => fs.setattr(ino, set));

  const ops = {
    init: (cb: Cb) => cb(0),
    statfs: (_p: string, cb: Cb) => reply(cb, () => fs.statfs(), (s: StatFs) => [0, {
      bsize: s.bsize, frsize: s.frsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files,
      ffree: s.ffree, favail: s.ffree, fsid: 0, flag: 0, namemax: s.namemax,
    }]),
    getattr: (path: string, cb: Cb) => reply(cb, async () => fs.getattr(await node(path)), (a) => [0, toStat(a)]),
    fgetattr: (path: string, _fh: number, cb: Cb) => reply(cb, async () => fs.getattr(await node(path)), (a) => [0, toStat(a)]),
    access: (path: string, mode: number, cb: Cb) => reply(cb, async () => fs.access(await node(path), mode, self)),
    readdir: (path: string, cb: Cb) => reply(cb, async () => {
      const fh = await fs.opendir(await node(path));
      try {
        return await fs.readdir(fh, 0);
      } finally {
        await fs.releasedir(fh);
      }
    }, (list) => [0, list.map((e) => e.name), list.map((e) => ({ ino: e.ino, mode: e.type }))]),
    open: (path: string, flags: number, cb: Cb) => reply(cb, async () => fs.open(await node(path), flags), (fh) => [0, fh]),
    create: (path: string, mode: number, cb: Cb) => reply(cb, async () => {
      const [parent, name] = await paths.parentOf(path);
      const { attr, fh } = await fs.create(parent, name, mode, constants.O_RDWR | constants.O_CREAT, self);
      paths.remember(path, attr.ino);
      return fh;
    }, (fh) => [0, fh]),
    read: (_p: string, fh: number, buf: Buffer, len: number, pos: number, cb: Cb) => {
      fs.read(fh, pos, len).then((data) => { data.copy(buf); cb(data.length); }, (e) => cb(-toErrno(e)));
    },
    write: (_p: string, fh: number, buf: Buffer, len: number, pos: number, cb: Cb) => {
      fs.write(fh, pos, buf.subarray(0, len)).then((n) => cb(n), (e) => cb(-toErrno(e)));
    },
    flush: (_p: string, fh: number, cb: Cb) => reply(cb, () => fs.flush(fh)),
    fsync: (_p: string, datasync: number, fh: number, cb: Cb) => reply(cb, () => fs.fsync(fh, !!datasync)),
    fsyncdir: (_p: string, _d: number, _fh: number, cb: Cb) => reply(cb, () => fs.syncMetadata()),
    release: (_p: string, fh: number, cb: Cb) => reply(cb, () => fs.release(fh)),
    truncate: (path: string, size: number, cb: Cb) => reply(cb, () => setattr(path, { size })),
    ftruncate: (path: string, _fh: number, size: number, cb: Cb) => reply(cb, () => setattr(path, { size })),
    utimens: (path: string, atime: number, mtime: number, cb: Cb) =>
      reply(cb, () => setattr(path, { atime: msToTs(atime), mtime: msToTs(mtime) })),
    chmod: (path: string, mode: number, cb: Cb) => reply(cb, () => setattr(path, { mode })),
    chown: (path: string, uid: number, gid: number, cb: Cb) => reply(cb, () => setattr(path, {
      uid: uid === 0xffffffff ? undefined : uid, gid: gid === 0xffffffff ? undefined : gid,
    })),
    readlink: (path: string, cb: Cb) => reply(cb, async () => fs.readlink(await node(path)), (t) => [0, t]),
    mknod: (path: string, mode: number, dev: number, cb: Cb) => reply(cb, async () => {
      const [parent, name] = await paths.parentOf(path);
      paths.remember(path, (await fs.mknod(parent, name, mode, dev, self)).ino);
    }),
    mkdir: (path: string, mode: number, cb: Cb) => reply(cb, async () => {
      const [parent, name] = await paths.parentOf(path);
      paths.remember(path, (await fs.mkdir(parent, name, mode, self)).ino);
    }),
    symlink: (target: string, path: string, cb: Cb) => reply(cb, async () => {
      const [parent, name] = await paths.parentOf(path);
      paths.remember(path, (await fs.symlink(parent, name, target, self)).ino);
    }),
    link: (src: string, dest: string, cb: Cb) => reply(cb, async () => {
      const ino = await node(src);
      const [parent, name] = await paths.parentOf(dest);
      await fs.link(ino, parent, name);
      paths.remember(dest, ino);
    }),
    unlink: (path: string, cb: Cb) => reply(cb, async () => {
      const [parent, name] = await paths.parentOf(path);
      paths.forget(path);
      await fs.unlink(parent, name);
    }),
    rmdir: (path: string, cb: Cb) => reply(cb, async () => {
      const [parent, name] = await paths.parentOf(path);
      paths.forgetTree(path);
      await fs.rmdir(parent, name);
    }),
    rename: (src: string, dest: string, cb: Cb) => reply(cb, async () => {
      const [sp, sn] = await paths.parentOf(src);
      const [dp, dn] = await paths.parentOf(dest);
      const moved = await node(src);
      const isDir = ((await fs.getattr(moved)).mode & 0o170000) === 0o040000;
      if (isDir) {
        paths.forgetTree(src);
        paths.forgetTree(dest);
      } else {
        paths.forget(src);
        paths.forget(dest);
      }
      await fs.rename(sp, sn, dp, dn, 0);
    }),
    setxattr: (path: string, name: string, value: Buffer, _pos: number, flags: number, cb: Cb) =>
      reply(cb, async () => fs.setxattr(await node(path), name, Buffer.from(value), flags)),
    getxattr: (path: string, name: string, _pos: number, cb: Cb) =>
      reply(cb, async () => fs.getxattr(await node(path), name), (v) => [0, v]),
    listxattr: (path: string, cb: Cb) => reply(cb, async () => fs.listxattr(await node(path)), (l) => [0, l]),
    removexattr: (path: string, name: string, cb: Cb) => reply(cb, async () => fs.removexattr(await node(path), name)),
  };

  // fuse-native takes a fixed list of -o options; ours are added here.
  class KvfsFuse extends (Fuse as unknown as { new (mnt: string, ops: object, opts: object): FuseInstance }) {
    // fuse-native copies a value into the kernel's buffer without checking its size; a value larger than the
    // buffer must be ERANGE (the caller then asks again with a larger one), never a reply longer than asked.
    _op_getxattr(signal: (n: number, b: ArrayBuffer) => void, path: string, name: string, valueBuf: Buffer) {
      ops.getxattr(path, name, 0, (err: unknown, value: unknown) => {
        const v = value as Buffer | undefined;
        if (err) return signal(err as number, valueBuf.buffer as ArrayBuffer);
        if (valueBuf.length && v!.length > valueBuf.length) return signal(-osConstants.errno.ERANGE, valueBuf.buffer as ArrayBuffer);
        v!.copy(valueBuf);
        return signal(v!.length, valueBuf.buffer as ArrayBuffer);
      });
    }

    _op_listxattr(signal: (n: number, b: ArrayBuffer) => void, path: string, listBuf: Buffer) {
      ops.listxattr(path, (err: unknown, list: unknown) => {
        if (err) return signal(err as number, listBuf.buffer as ArrayBuffer);
        const packed = Buffer.concat((list as string[]).map((n) => Buffer.from(n + '\0')));
        if (listBuf.length && packed.length > listBuf.length) return signal(-osConstants.errno.ERANGE, listBuf.buffer as ArrayBuffer);
        if (listBuf.length) packed.copy(listBuf);
        return signal(packed.length, listBuf.buffer as ArrayBuffer);
      });
    }

    // fuse-native's utimens hands over each time as two unsigned 32-bit halves; its own join reads a time
    // before 1970 as one ~584 million years ahead. Ours reads them as signed and clamps (utimensMs).
    _op_utimens(signal: (n: number) => void, path: string, aLow: number, aHigh: number, mLow: number, mHigh: number) {
      ops.utimens(path, utimensMs(aLow, aHigh), utimensMs(mLow, mHigh), (err: unknown) => signal(err as number));
    }

    override _fuseOptions(): string {
      const base = super._fuseOptions();
      const ours = [
        'use_ino', 'readdir_ino', 'big_writes', 'max_write=131072', 'max_read=131072', 'nonempty',
        'subtype=kvfs', 'default_permissions',
        `attr_timeout=${opts.attrTimeout ?? 0}`, `entry_timeout=${opts.entryTimeout ?? 1}`, 'negative_timeout=0',
      ];
      const head = base ? `${base},${ours.join(',')}` : `-o${ours.join(',')}`;
      // fuse-native passes at most OPTIONS_MAX bytes of this string on: the source is shortened to fit
      const room = OPTIONS_MAX - Buffer.byteLength(`${head},fsname=`);
      let fsname = escapeOptionValue(mountSource(opts.source, room));
      if (Buffer.byteLength(fsname) > room) fsname = escapeOptionValue(mountSource(opts.source, Math.floor(room / 2)));
      return `${head},fsname=${fsname}`;
    }
  }

  const fuse = new KvfsFuse(mnt, ops, {
    allowOther: !!opts.allowOther, debug: !!opts.debug, timeout: { default: 120_000 }, force: false, mkdir: false,
  });
  await new Promise<void>((resolve, reject) => fuse.mount((err) => {
    if (!err) return resolve();
    // fuse-native says only "fuse failed"; libfuse's own words went to stderr, fusermount's are lost
    reject(err.message === 'fuse failed' && !isRoot() ? new Error(fusermountRefused('fusermount', mnt)) : err);
  }));
}
