/**
 * The kernel's mount table as drivers and the CLI need it: is a path a mount point, is it a live or a dead
 * FUSE mount, and unmounting (also a mount whose daemon died, which answers ENOTCONN).
 */
import { execFile } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';

export interface MountEntry {
  mountPoint: string;
  fsType: string;
  source: string;
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
    out.push({ mountPoint: unescape(f[4]), fsType: r[0] ?? '', source: unescape(r[1] ?? '') });
  }
  return out;
}

/** the mount at exactly this path, if any (the last one, when mounts are stacked) */
export function mountAt(path: string): MountEntry | undefined {
  const p = resolve(path);
  return mounts().filter((m) => m.mountPoint === p).pop();
}

/** true when the path is a FUSE mount whose daemon is gone (stat fails with ENOTCONN) */
export function isDeadMount(path: string): boolean {
  try {
    statSync(path);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOTCONN';
  }
}

function run(cmd: string, args: string[]): Promise<{ ok: boolean; err: string }> {
  return new Promise((res) => {
    execFile(cmd, args, { timeout: 20_000 }, (error, _stdout, stderr) => res({ ok: !error, err: String(stderr || error?.message || '').trim() }));
  });
}

/**
 * Unmounts a FUSE mount: a clean unmount (umount / fusermount3 -u); a dead mount (or `lazy`) is detached
 * lazily. `fromDaemon`: called by the daemon that serves the mount, which must not probe it. Resolves when the path is no longer a mount point; rejects with the tools' own words otherwise.
 */
export async function unmount(path: string, opts: { lazy?: boolean; fromDaemon?: boolean } = {}): Promise<void> {
  const p = resolve(path);
  if (!mountAt(p)) throw new Error(`${p} is not mounted`);
  const root = process.getuid?.() === 0;
  const attempts: [string, string[]][] = root
    ? [['umount', [p]], ['fusermount3', ['-u', p]]]
    : [['fusermount3', ['-u', p]], ['fusermount', ['-u', p]]];
  // A dead mount (daemon gone) or an explicit lazy request is detached lazily; a busy live mount is refused.
  // The daemon serving the mount must never touch it synchronously: a stat would wait for an answer that
  // only its own (blocked) event loop can give. It is alive, so the mount is not dead.
  if (opts.lazy || (!opts.fromDaemon && isDeadMount(p))) attempts.unshift(root ? ['umount', ['-l', p]] : ['fusermount3', ['-uz', p]]);
  const errors: string[] = [];
  for (const [cmd, args] of attempts) {
    const r = await run(cmd, args);
    if (!mountAt(p)) return;
    if (!r.ok) errors.push(`${cmd} ${args.join(' ')}: ${r.err}`);
  }
  throw new Error(`cannot unmount ${p}: ${errors.join('; ')}`);
}
