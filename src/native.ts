/**
 * The one place that loads kvfs's native addon (build/Release/kvfs_native.node, built by `npm install`).
 * Native functions return a result or -errno; this file turns -errno into errors.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { existsSync } from 'node:fs';
import { constants, userInfo } from 'node:os';
import { describeDevice, isRoot, setuidFusermount } from './fuse-access.js';

/** The native channel (native/channel.h states its contract). Methods return a result or -errno. */
export interface NativeChannelHandle {
  start(): number;
  /** copies up to max records into out; status[0] = 1 once closed, status[1] = size classes readers wait for */
  poll(out: Uint8Array, max: number, status: Uint32Array): number;
  /** waits up to us microseconds on the CPU for a queued request; true when one is queued */
  spin(us: number): boolean;
  stock(cls: number, offset: number): number;
  /** one stocked buffer of class cls back: its offset, or -1 when a reader has taken them all */
  unstockOne(cls: number): number;
  /** every stocked buffer back: [cls, offset, cls, offset, ...] */
  unstock(): number[];
  reply(reader: number, a: Uint8Array, b?: Uint8Array, c?: Uint8Array): number;
  stop(): void;
  stats(): {
    requests: number; inlineRequests: number; poolWaits: number; wakes: number; maxQueue: number;
    fastReads: number; fastReadMisses: number; publishedFiles: number; publishedChunks: number; readAheadMarks: number;
    fastFlushes: number;
    fileReads: number;
    fileReadMisses: number;
    splicedReads: number;
    publishedAttrs: number;
    fastGetattrs: number;
    earlyWrites: number;
  };
  /** readers answer READs of published data themselves (native/read-index.h) */
  enableFastReads(on: boolean): void;
  /** readers answer WRITEs as soon as they are queued (native/channel.h, early writes) */
  enableEarlyWrites(on: boolean): void;
  /** readers splice the replies of READs they answer from one published file (on by default) */
  enableSpliceReads(on: boolean): void;
  /** an early write of ino was applied (each answered WRITE's record, once) */
  endWrite(ino: number): void;
  /** chunk idx of ino holds data (null: a hole), the file is size bytes; mark: report its first use; 0 or -EINVAL */
  publish(ino: number, size: number, chunkSize: number, idx: number, data: Uint8Array | null, mark: boolean): number;
  publishFile(ino: number, size: number, chunkSize: number, idx: number, path: string, length: number, mark: boolean): number;
  /** GETATTRs of ino are answered with body (a fuse_attr_out, 104 bytes) until retractAttr; 0 or -EINVAL */
  publishAttr(ino: number, body: Uint8Array): number;
  /** returns once no reader writes a reply with what was taken back */
  retractAttr(ino: number): void;
  setSize(ino: number, size: number): void;
  /** whether a FLUSH of ino may be answered at once (nothing of it uncommitted) */
  setClean(ino: number, clean: boolean): void;
  /** returns once no reader uses what was taken back (idx -1 or absent: the whole file) */
  retract(ino: number, idx?: number): void;
}

export interface Addon {
  probeFuseDevice(): number;
  openFuseDevice(): number;
  cloneFuseDevice(fd: number): number;
  mountFuse(fd: number, mountpoint: string, fstype: string, source: string, options: string, flags: number): number;
  fusermountMount(mountpoint: string, options: string): number;
  closeFd(fd: number): number;
  /** an exclusive flock(2) on path (created 0600): the fd holding it, -EWOULDBLOCK when held elsewhere, or -errno */
  lockFile(path: string): number;
  /**
   * drops this process's page-table entries for its shared mappings of the file at path (resolved), which stay in
   * the page cache: the bytes advised, or -errno (native/mapped.h)
   */
  releaseMapped(path: string): number;
  /** glibc malloc's bytes handed out, and the bytes it keeps free in its arenas (mallinfo2) */
  mallocInfo(): { inUse: number; free: number };
  /** the names of path's extended attributes, not following a symlink, or -errno */
  listXattrs(path: string): string[] | number;
  /** the value of path's extended attribute name, not following a symlink, or -errno */
  getXattr(path: string, name: string): Buffer | number;
  /** descriptors 1 and 2 to the end of path (created 0600): 0 or -errno */
  redirectOutput(path: string): number;
  /** the uid of the peer of a connected Unix socket (SO_PEERCRED), or -errno */
  peerUid(fd: number): number;
  /** syncfs(2) of the filesystem holding the directory dir, off the event loop: done(0) or done(-errno) */
  syncfs(dir: string, done: (result: number) => void): void;
  /**
   * the file at path holds exactly data, off the event loop (native/blob-io.h PutFile): spare ('' for none) takes
   * its place. done(0) or done(-errno); data must not change until done.
   */
  putFile(spare: string, path: string, data: Uint8Array, done: (result: number) => void): void;
  /** removes the file at path, renamed to spare ('' for none: unlinked), off the event loop: done(its size) or done(-errno) */
  retireFile(path: string, spare: string, done: (result: number) => void): void;
  NativeChannel: new (fds: number[], arena: ArrayBuffer, classSizes: number[], pipeSize: number,
    onWake: () => void) => NativeChannelHandle;
  recordSize: number;
  inlineBody: number;
  /** the opcode of hint records (a fast read used a marked chunk): not requests */
  hintOpcode: number;
  /** set in a record's reader field: the request was answered already (an early write) */
  answeredFlag: number;
}

/** the package root: the nearest folder above this file (src/ or dist/src/) that has binding.gyp */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'binding.gyp')) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
}

const root = packageRoot();
let addon: Addon | undefined;

/** the addon; throws a clear error when it was not built */
export function native(): Addon {
  if (!addon) {
    const require = createRequire(import.meta.url);
    try {
      addon = require(join(root, 'build', 'Release', 'kvfs_native.node')) as Addon;
    } catch (e) {
      throw new Error(`kvfs's native addon is not built (run \`npm install\` or \`npm run build\` in ${root}): ${(e as Error).message}`);
    }
  }
  return addon;
}

/** the name of an errno number, e.g. 2 -> ENOENT */
export function errnoName(n: number): string {
  const e = Object.entries(constants.errno).find(([, v]) => v === n);
  return e ? e[0] : `errno ${n}`;
}

/**
 * undefined when this process can mount FUSE, else the reason and what to do. Root needs /dev/fuse; an
 * ordinary user needs /dev/fuse too (fusermount3 opens it with the user's rights) and a setuid-root
 * fusermount3 (src/fuse-access.ts).
 */
export function fuseDeviceProblem(): string | undefined {
  const r = native().probeFuseDevice();
  const name = r < 0 ? errnoName(-r) : undefined;
  if (name === 'ENOENT' || name === 'ENODEV' || name === 'ENXIO') {
    return '/dev/fuse does not exist (the fuse kernel module is not loaded: as root, run modprobe fuse)';
  }
  if (isRoot()) return name && `/dev/fuse cannot be opened (${name})`;
  const device = name === undefined || name === 'EACCES' || name === 'EPERM';
  if (!device) return `/dev/fuse cannot be opened (${name})`;
  const helper = setuidFusermount();
  if (name === undefined && helper) return undefined;
  let who: string;
  try {
    who = userInfo().username;
  } catch {
    who = `uid ${process.getuid?.()}`;
  }
  const problems: string[] = [];
  const todo: string[] = [];
  if (name) {
    problems.push(`/dev/fuse cannot be opened by ${who} (${name}; it is ${describeDevice()})`);
    todo.push('/dev/fuse must be readable and writable by users (udev makes it mode 0666; where udev does not run, ' +
      'as root: chmod 0666 /dev/fuse)');
  }
  if (!helper) {
    problems.push('no setuid-root fusermount3 is installed');
    todo.push('install fuse3 (as root: apt install fuse3)');
  }
  return `${problems.join(', and ')}: an ordinary user mounts through fusermount3, which opens /dev/fuse with ` +
    `the user's own rights. On Debian 12: ${todo.join('; ')}. Or run kvfs mount as root`;
}

/** a native result: the value when non-negative, else an Error with the errno's name as code */
export function check(r: number, what: string): number {
  if (r >= 0) return r;
  const code = errnoName(-r);
  const e = new Error(`${what}: ${code}`) as NodeJS.ErrnoException;
  e.code = code;
  e.errno = -r;
  throw e;
}
