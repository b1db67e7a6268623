/**
 * The kernel's mount table as drivers and the CLI need it: is a path a mount point, of which kind, which FUSE
 * connection serves it, the descriptors that serve it, and unmounting.
 *
 * Rule: nothing here makes a call on a mountpoint that can block. A FUSE mount whose daemon is stopped or stuck
 * answers stat(2) only when the daemon does, so everything is read from /proc/self, and unmounting runs `umount --no-canonicalize` or `fusermount3 -u` (both unmount
 * by name, through the parent directory) in a child process with a deadline.
 */
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { resolve } from 'node:path';

/** the fs type of every kvfs mount, on both drivers (fuse + subtype kvfs) */
export const KVFS_FSTYPE = 'fuse.kvfs';

export interface MountEntry {
  mountPoint: string;
  fsType: string;
  source: string;
  /** the device number, "major:minor": a new mount on the same path has another */
  dev: string;
  /** the filesystem's own options (for FUSE: user_id=, group_id=, allow_other, ...) */
  superOptions: string;
}

/** decodes the octal escapes of /proc/self/mountinfo (\040 for a space, ...) */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function mounts(): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    if (!line) continue;
    const [left, right] = line.split(' - ');
    const f = left.split(' ');
    const r = (right ?? '').split(' ');
    out.push({ mountPoint: unescape(f[4]), fsType: r[0] ?? '', source: unescape(r[1] ?? ''), dev: f[2], superOptions: r[2] ?? '' });
  }
  return out;
}

/** the mount at exactly this path, if any (the last one, when mounts are stacked) */
export function mountAt(path: string): MountEntry | undefined {
  const p = resolve(path);
  return mounts().filter((m) => m.mountPoint === p).pop();
}

/** the mount that holds this (absolute, resolved) path: the longest mount point above it */
export function mountHolding(path: string): MountEntry | undefined {
  const p = resolve(path);
  let best: MountEntry | undefined;
  for (const m of mounts()) {
    const inside = m.mountPoint === '/' || p === m.mountPoint || p.startsWith(m.mountPoint + '/');
    if (inside && (!best || m.mountPoint.length >= best.mountPoint.length)) best = m;
  }
  return best;
}

export const isKvfsMount = (m: MountEntry | undefined): boolean => m?.fsType === KVFS_FSTYPE;

/** the uid a FUSE mount belongs to (its user_id= option), if it says */
export function mountOwner(m: MountEntry): number | undefined {
  const id = /(?:^|,)user_id=(\d+)/.exec(m.superOptions)?.[1];
  return id === undefined ? undefined : Number(id);
}

/**
 * The descriptors of this process open on /dev/fuse. A FUSE session ends for its daemon when the kernel ends
 * the connection and the driver closes them (after an unmount, and for a lazily detached mount once its last
 * user left); this is how a driver that gives no other sign (libfuse's loop) is watched.
 */
export function fuseDeviceFds(): number[] {
  const out: number[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === '/dev/fuse') out.push(Number(fd));
    } catch { /* closed meanwhile */ }
  }
  return out;
}

export interface RunResult { ok: boolean; err: string; timedOut: boolean }

function run(cmd: string, args: string[], timeoutMs: number): Promise<RunResult> {
  return new Promise((res) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL' }, (error, _stdout, stderr) => res({
      ok: !error,
      err: String(stderr || error?.message || '').trim(),
      timedOut: !!error && (error as { killed?: boolean }).killed === true,
    }));
  });
}

export class UnmountError extends Error {
  constructor(message: string, readonly busy: boolean, readonly timedOut: boolean) {
    super(message);
  }
}

/**
 * Unmounts a FUSE mount by name, never touching it otherwise: `lazy` detaches it now (it is served until its
 * last user leaves). Resolves when the path is no longer a mount point; rejects with an UnmountError (`busy`
 * when the kernel said so, `timedOut` when the tool did not return within timeoutMs) and the tools' own words.
 */
export async function unmount(path: string, opts: { lazy?: boolean; timeoutMs?: number } = {}): Promise<void> {
  const p = resolve(path);
  if (!mountAt(p)) throw new UnmountError(`${p} is not mounted`, false, false);
  const root = process.getuid?.() === 0;
  const attempts: [string, string[]][] = root
    ? [['umount', ['--no-canonicalize', ...(opts.lazy ? ['--lazy'] : []), '--', p]]]
    : [['fusermount3', [opts.lazy ? '-uz' : '-u', '--', p]], ['fusermount', [opts.lazy ? '-uz' : '-u', '--', p]]];
  const errors: string[] = [];
  let busy = false;
  let timedOut = false;
  for (const [cmd, args] of attempts) {
    const r = await run(cmd, args, opts.timeoutMs ?? 10_000);
    if (!mountAt(p)) return;
    if (r.ok) continue;
    busy ||= /busy/i.test(r.err);
    timedOut ||= r.timedOut;
    errors.push(`${cmd}: ${r.timedOut ? 'did not return in time' : r.err.replace(/\s*\n\s*/g, ' ')}`);
    if (busy) break;
  }
  throw new UnmountError(`cannot unmount ${p}: ${errors.join('; ')}`, busy, timedOut);
}
