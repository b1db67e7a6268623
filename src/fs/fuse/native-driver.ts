/**
 * The native driver (the default): kvfs's own channel to /dev/fuse (native/), the tiered buffer pool, the
 * session loop and the bridge to the core. Mounting: mount(2) as root, fusermount3 otherwise.
 *
 * Lifecycle: mount -> the kernel sends INIT -> `mountNative` resolves once INIT is answered. It ends when
 * the kernel ends the session (unmount from anywhere): the readers see ENODEV, `closed` resolves.
 */
import { log } from '../../log.js';
import { readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { BufferPool, defaultClasses } from '../../bufferpool/buffer-pool.js';
import { allowOtherProblem, escapeOptionValue, fusermountRefused, mountSource } from '../../fuse-access.js';
import { check, native } from '../../native.js';
import type { Filesystem } from '../filesystem.js';
import { fsBridge } from './fs-bridge.js';
import { unmount } from './mount-table.js';
import { NativeChannel } from './native-channel.js';
import { Session } from './session.js';

export interface NativeMountOptions {
  allowOther?: boolean;
  /** the mount's source as findmnt and df show it (the store URL, never a secret); default `kvfs` */
  source?: string;
  /** reader threads (default 2) */
  readers?: number;
  /** the buffer pool's capacity in bytes (default 64 MiB) */
  poolBytes?: number;
  attrTimeout?: number;
  entryTimeout?: number;
  writebackCache?: boolean;
  debugPool?: boolean;
  /** seconds after which an unanswered request is answered EIO */
  requestTimeout?: number;
  /** reader threads answer READs of data the core published (default true; KVFS_FAST_READS=0 turns it off) */
  fastReads?: boolean;
  /**
   * reader threads answer WRITEs once queued, before JavaScript applies them; a failure is reported by the
   * file's next fsync or close (default true; KVFS_EARLY_WRITES=0 turns it off)
   */
  earlyWrites?: boolean;
  /**
   * microseconds to wait on the CPU for the next request once every request is answered (default 100; 0: none).
   * A caller that waits for each answer sends its next request within tens of microseconds; a thread that went
   * to sleep meanwhile costs a wake-up on each side (15-20 us each on these machines, more than the work of
   * many requests). Bounded per answer, so an idle daemon does not spin.
   */
  spinUs?: number;
  /** whether no store call is under way: the wait on the CPU happens only then (a completion would wait behind it) */
  storeIdle?: () => boolean;
}

/** `spinUs` when the mount does not say */
export const DEFAULT_SPIN_US = 100;

export interface NativeMount {
  /** resolves when the kernel ended the session */
  closed: Promise<void>;
  stats(): object;
  pool: BufferPool;
}

/**
 * How long the kernel may keep names and attributes by default. A shared store (several mounts) changes under
 * this kernel: 1 s. Any other store has one mount at a time (a local store is locked by its daemon, a memory
 * store lives in it): every change passes through this kernel, which updates or drops what it caches on each
 * reply, and the core tells it when a commit changes what it cannot see (st_blocks, onInodeChanged). An hour
 * there: a stat of a known name never reaches the daemon.
 */
export const SHARED_CACHE_SECONDS = 1;
export const SINGLE_MOUNT_CACHE_SECONDS = 3600;

function cacheSeconds(fs: Filesystem): number {
  return fs.shared ? SHARED_CACHE_SECONDS : SINGLE_MOUNT_CACHE_SECONDS;
}

const MS_NOSUID = 2;
const MS_NODEV = 4;
const MIB = 1 << 20;

/**
 * The readers' pipe size and the largest WRITE that fits it whole. The kernel moves a WRITE into the pipe as
 * one slot for its headers and one per data page (two for an unaligned page), and a pipe has size/4096
 * slots. 1 MiB writes need a 2 MiB pipe, which only CAP_SYS_RESOURCE or fs.pipe-max-size >= 2 MiB allows;
 * otherwise writes are split at the largest power of two that fits (512 KiB with the default 1 MiB).
 */
export function pipePlan(): { pipeSize: number; maxWrite: number; note?: string } {
  const maxSize = Number(readFileSync('/proc/sys/fs/pipe-max-size', 'utf8').trim()) || MIB;
  const capEff = /CapEff:\s*([0-9a-f]+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0';
  const sysResource = (BigInt('0x' + capEff) >> 24n) & 1n;
  if (sysResource || maxSize >= 2 * MIB) return { pipeSize: 2 * MIB, maxWrite: MIB };
  const slots = Math.floor(maxSize / 4096) - 3;
  let maxWrite = 4096;
  while (maxWrite * 2 <= slots * 4096) maxWrite *= 2;
  return {
    pipeSize: maxSize, maxWrite,
    note: `fs.pipe-max-size is ${maxSize}: writes reach kvfs in pieces of ${maxWrite >> 10} KiB ` +
      '(sysctl fs.pipe-max-size=2097152 allows 1 MiB)',
  };
}

export async function mountNative(fs: Filesystem, mnt: string, opts: NativeMountOptions = {}): Promise<NativeMount> {
  const n = native();
  const refused = opts.allowOther ? allowOtherProblem() : undefined;
  if (refused) throw new Error(refused);
  const source = mountSource(opts.source);
  const plan = pipePlan();
  if (plan.note) log.info(plan.note);
  const pool = new BufferPool({ classes: defaultClasses(opts.poolBytes ?? 64 << 20), debug: opts.debugPool });
  const mountOpts = ['default_permissions', ...(opts.allowOther ? ['allow_other'] : []), `max_read=${1 << 20}`];
  const root = process.getuid?.() === 0;
  let fd: number;
  if (root) {
    fd = check(n.openFuseDevice(), 'opening /dev/fuse');
    const r = n.mountFuse(fd, mnt, 'fuse.kvfs', source, mountOpts.join(','), MS_NOSUID | MS_NODEV);
    if (r < 0) {
      n.closeFd(fd);
      check(r, `mounting ${mnt}`);
    }
  } else {
    const fusermountOpts = [...mountOpts, `fsname=${escapeOptionValue(source)}`, 'subtype=kvfs'].join(',');
    const r = n.fusermountMount(mnt, fusermountOpts);
    // -EPERM: fusermount3 exited with an error (its own words do not reach us)
    if (r === -osConstants.errno.EPERM) throw new Error(fusermountRefused('fusermount3', mnt));
    fd = check(r, `mounting ${mnt} with fusermount3`);
  }
  const fds = [fd];
  for (let i = 1; i < (opts.readers ?? 2); i++) {
    const c = n.cloneFuseDevice(fd);
    if (c >= 0) fds.push(c);
  }

  let initDone!: () => void;
  let initFailed!: (e: Error) => void;
  const init = new Promise<void>((res, rej) => { initDone = res; initFailed = rej; });
  let closedResolve!: () => void;
  const closed = new Promise<void>((res) => { closedResolve = res; });
  const parseOptions: { setxattrExt?: boolean } = {};
  let session!: Session;
  const ops = fsBridge(fs, pool, {
    writebackCache: opts.writebackCache, keepCache: true, parseOptions, maxWrite: plan.maxWrite,
    entryOut: (a) => session.entryOut(a),
    onInit: () => initDone(),
  });
  const channel = new NativeChannel(fds, pool, (raw) => session.handle(raw), () => {
    fs.setReadIndex(undefined);
    session.close();
    channel.stop();
    if (opts.debugPool) {
      for (const l of pool.leaks()) log.error(`buffer of ${l.size} bytes never released, taken at: ${l.stack}`);
    }
    for (const f of fds) n.closeFd(f);
    pool.close();
    initFailed(new Error('the kernel ended the session before INIT'));
    closedResolve();
  }, pool.arena, {
    pipeSize: plan.pipeSize, onReadHint: (ino, idx) => fs.readAheadHint(ino, idx), spinUs: opts.spinUs ?? DEFAULT_SPIN_US,
    spinWhen: opts.storeIdle,
  });
  session = new Session(channel, ops, {
    entryTimeout: opts.entryTimeout ?? cacheSeconds(fs), attrTimeout: opts.attrTimeout ?? cacheSeconds(fs), parseOptions,
    requestTimeout: opts.requestTimeout,
  });
  fs.onInodeChanged = (ino) => session.notifyInvalInode(ino);
  if (opts.fastReads ?? process.env.KVFS_FAST_READS !== '0') {
    channel.attrBody = (a) => session.attrBody(a);
    fs.setReadIndex(channel);
    channel.enableFastReads(true);
  }
  if (opts.earlyWrites ?? process.env.KVFS_EARLY_WRITES !== '0') channel.enableEarlyWrites(true);
  // (off with KVFS_SPLICE_READS=0: the readers then read a file's bytes into a buffer and write the reply from it)
  channel.enableSpliceReads(process.env.KVFS_SPLICE_READS !== '0');
  try {
    channel.start();
  } catch (e) {
    await unmount(mnt, { lazy: true }).catch(() => undefined);
    throw e;
  }
  await init;
  return {
    closed,
    pool,
    stats: () => ({ channel: channel.stats(), session: session.stats(), pool: pool.stats(), kernelInodes: fs.kernelInodes, fs: fs.stats() }),
  };
}
