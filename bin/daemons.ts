/**
 * Running kvfs daemons as the CLI finds them: a record per mount in the owner's runtime directory, the lock
 * that keeps a local store to one daemon, and what /proc says of a process.
 *
 * Runtime directory (per uid, never shared with another user): uid 0 -> /run/kvfs; else /run/user/UID/kvfs when
 * /run/user/UID is that user's, else /tmp/kvfs-UID. It is created 0700; one that is not a directory owned by
 * the uid with no access for others is refused, so another local user cannot plant records or sockets there.
 * Records: `mount-<hash of the mountpoint>.json`, 0600, written by the daemon once it is mounted and removed
 * when it ends cleanly: { pid, mountpoint, store, dev, driver, started, log }; beside it, the daemon's control
 * socket `mount-<hash>.sock` (0600). A record is trusted only while
 * its pid is alive and its dev matches the mount table (a mount over a reused path is another mount).
 * Nothing here touches a mountpoint: /proc and the runtime directory only.
 */
import { createHash } from 'node:crypto';
import { closeSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, writeFileSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { mountOwner, mounts, type MountEntry } from '../src/fs/fuse/mount-table.js';
import { errnoName, native } from '../src/native.js';

export interface DaemonRecord {
  pid: number;
  mountpoint: string;
  store: string;
  dev: string;
  driver: string;
  started: string;
  log?: string;
  /** set by a daemon whose last commit failed, as it exits */
  failed?: boolean;
}

/** the runtime directory of uid (not created) */
export function runtimeDirOf(uid: number): string {
  if (uid === 0) return '/run/kvfs';
  try {
    const st = lstatSync(`/run/user/${uid}`);
    if (st.isDirectory() && st.uid === uid) return `/run/user/${uid}/kvfs`;
  } catch { /* no per-user runtime dir */ }
  return `/tmp/kvfs-${uid}`;
}

/** this process's runtime directory, created when missing; throws when it is not safely ours */
export function ownRuntimeDir(): string {
  const uid = process.getuid!();
  const dir = runtimeDirOf(uid);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o077) !== 0) {
    throw new Error(`the runtime directory ${dir} is not a directory that only uid ${uid} can use (mode ` +
      `${(st.mode & 0o777).toString(8)}, owner ${st.uid}); remove it and try again`);
  }
  return dir;
}

const mountHash = (mountpoint: string) => createHash('sha256').update(mountpoint).digest('hex').slice(0, 20);
const recordName = (mountpoint: string) => `mount-${mountHash(mountpoint)}.json`;
/** the name of a mount's control socket (bin/diag.ts) in its owner's runtime directory, beside its record */
export const socketName = (mountpoint: string) => `mount-${mountHash(mountpoint)}.sock`;

/** writes (atomically, 0600) this daemon's record; returns its path. Records that daemons killed before they
 * could remove theirs left behind are swept on the way (sweepRecords). */
export function writeRecord(rec: DaemonRecord): string {
  const dir = ownRuntimeDir();
  const path = join(dir, recordName(rec.mountpoint));
  sweepRecords(dir, path);
  writeFileSync(`${path}.tmp`, JSON.stringify(rec) + '\n', { mode: 0o600 });
  renameSync(`${path}.tmp`, path);
  return path;
}

/**
 * Removes, from a runtime directory, the records (and control sockets) of daemons that are gone and whose mountpoint
 * is no longer mounted: a daemon killed with SIGKILL cannot remove its own. A dead daemon's record whose mount is
 * still in the mount table stays (status reports the dead mount and the daemon's log from it). `keep`: this
 * daemon's own record.
 */
export function sweepRecords(dir: string, keep: string): number {
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => /^mount-[0-9a-f]+\.json$/.test(n));
  } catch {
    return 0;
  }
  let mounted: Set<string> | undefined;
  let swept = 0;
  for (const name of names) {
    const path = join(dir, name);
    if (path === keep) continue;
    let rec: DaemonRecord;
    try {
      rec = JSON.parse(readFileSync(path, 'utf8')) as DaemonRecord;
    } catch {
      continue; // being written (renamed into place whole), or not ours to judge
    }
    if (typeof rec.pid !== 'number' || isAlive(processState(rec.pid))) continue;
    mounted ??= new Set(mounts().map((m) => m.mountPoint));
    if (mounted.has(rec.mountpoint)) continue;
    rmSync(path, { force: true });
    rmSync(path.replace(/\.json$/, '.sock'), { force: true });
    swept++;
  }
  return swept;
}

export function removeRecord(path: string): void {
  rmSync(path, { force: true });
}

/** one line of /proc/PID/stat: the process's state letter (R, S, D, T, t, Z, ...), or undefined when it is gone */
export function processState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

export const isStopped = (state: string | undefined) => state === 'T' || state === 't';
export const isAlive = (state: string | undefined) => state !== undefined && state !== 'Z' && state !== 'X';

/** the record kept for a mount's mountpoint in its owner's runtime directory, whatever its state */
export function readRecord(m: MountEntry): DaemonRecord | undefined {
  const uid = mountOwner(m) ?? process.getuid!();
  try {
    const rec = JSON.parse(readFileSync(join(runtimeDirOf(uid), recordName(m.mountPoint)), 'utf8')) as DaemonRecord;
    return rec.mountpoint === m.mountPoint ? rec : undefined;
  } catch {
    return undefined;
  }
}

/** the daemon serving a mount: its record, when that names this mount (dev) and a live process */
export function daemonOf(m: MountEntry): DaemonRecord | undefined {
  const rec = readRecord(m);
  return rec && rec.dev === m.dev && isAlive(processState(rec.pid)) ? rec : undefined;
}

/** the processes (pid and command name) with their cwd, root or an open file under a path, read from /proc */
function usersOf(path: string): { pid: number; comm: string }[] {
  const out: { pid: number; comm: string }[] = [];
  const under = (l: string) => l === path || l.startsWith(path + '/');
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    const links: string[] = [];
    try {
      links.push(readlinkSync(`/proc/${pid}/cwd`), readlinkSync(`/proc/${pid}/root`));
      for (const fd of readdirSync(`/proc/${pid}/fd`)) {
        try { links.push(readlinkSync(`/proc/${pid}/fd/${fd}`)); } catch { /* closed meanwhile */ }
      }
    } catch { /* gone, or not ours to read */ }
    if (links.some(under)) {
      let comm = '?';
      try { comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim(); } catch { /* gone */ }
      out.push({ pid, comm });
    }
  }
  return out;
}

/** " (used by pid 12 (bash), pid 40 (vim))" for the processes holding a path, read from /proc; "" for none */
export function holdersOf(path: string): string {
  const users = usersOf(path);
  if (!users.length) return '';
  return ` (used by ${users.slice(0, 8).map((u) => `pid ${u.pid} (${u.comm})`).join(', ')}` +
    `${users.length > 8 ? `, and ${users.length - 8} more` : ''})`;
}

/**
 * One daemon per local store: an exclusive flock on DIR/kvfs-daemon.lock, held until the process ends (the
 * kernel drops it when a daemon dies, kill -9 included). The holder writes who it is into the file, so the
 * refusal names it. Returns the descriptor; throws a one-line Error when another daemon holds the store.
 */
export function lockStoreDir(dir: string, holder: { mountpoint?: string; what: string }): number {
  const path = join(dir, 'kvfs-daemon.lock');
  const fd = native().lockFile(path);
  if (fd === -11 /* EWOULDBLOCK */) {
    let h: { pid?: number; mountpoint?: string; what?: string } = {};
    try { h = JSON.parse(readFileSync(path, 'utf8')); } catch { /* being written */ }
    const who = h.pid ? `kvfs pid ${h.pid} (${h.what}${h.mountpoint ? ` at ${h.mountpoint}` : ''})` : 'another kvfs process';
    throw new Error(`local:${dir} is in use by ${who}: a local store is served by one daemon at a time` +
      (h.mountpoint ? `; unmount it first: kvfs umount ${h.mountpoint}` : ''));
  }
  if (fd < 0) throw new Error(`cannot lock local:${dir} (${path}): ${errnoName(-fd)}`);
  const body = Buffer.from(JSON.stringify({ pid: process.pid, ...holder }) + '\n');
  ftruncateSync(fd, 0);
  writeSync(fd, body, 0, body.length, 0);
  return fd;
}

export const unlockStoreDir = (fd: number) => closeSync(fd);
