/**
 * The one place that loads kvfs's native addon (build/Release/kvfs_native.node, built by `npm install`).
 * Native functions return a result or -errno; this file turns -errno into errors.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { existsSync } from 'node:fs';
import { constants } from 'node:os';

/** The native channel (native/channel.h states its contract). Methods return a result or -errno. */
export interface NativeChannelHandle {
  start(): number;
  /** copies up to max records into out; status[0] = 1 once closed, status[1] = size classes readers wait for */
  poll(out: Uint8Array, max: number, status: Uint32Array): number;
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
  };
  /** readers answer READs of published data themselves (native/read-index.h) */
  enableFastReads(on: boolean): void;
  /** chunk idx of ino holds data (null: a hole), the file is size bytes; mark: report its first use; 0 or -EINVAL */
  publish(ino: number, size: number, chunkSize: number, idx: number, data: Uint8Array | null, mark: boolean): number;
  setSize(ino: number, size: number): void;
  /** whether a FLUSH of ino may be answered at once (nothing of it uncommitted) */
  setClean(ino: number, clean: boolean): void;
  /** returns once no reader uses what was taken back (idx -1 or absent: the whole file) */
  retract(ino: number, idx?: number): void;
}

interface Addon {
  probeFuseDevice(): number;
  openFuseDevice(): number;
  cloneFuseDevice(fd: number): number;
  mountFuse(fd: number, mountpoint: string, fstype: string, source: string, options: string, flags: number): number;
  fusermountMount(mountpoint: string, options: string): number;
  closeFd(fd: number): number;
  NativeChannel: new (fds: number[], arena: ArrayBuffer, classSizes: number[], pipeSize: number,
    onWake: () => void) => NativeChannelHandle;
  recordSize: number;
  inlineBody: number;
  /** the opcode of hint records (a fast read used a marked chunk): not requests */
  hintOpcode: number;
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

/** undefined when /dev/fuse can serve a mount, else the reason */
export function fuseDeviceProblem(): string | undefined {
  const r = native().probeFuseDevice();
  if (r >= 0) return undefined;
  const name = errnoName(-r);
  if (name === 'ENOENT') return '/dev/fuse does not exist (load the fuse module: modprobe fuse)';
  if (name === 'EACCES' || name === 'EPERM') return `/dev/fuse cannot be opened (${name}): run as root or add the user to the fuse group`;
  return `/dev/fuse cannot be opened (${name})`;
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
