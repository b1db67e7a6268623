/**
 * Who may mount FUSE here, for the checks before a mount (src/native.ts `fuseDeviceProblem`, both drivers).
 *
 * Root mounts with mount(2) on its own /dev/fuse descriptor. An ordinary user mounts through the setuid-root
 * helper fusermount3 (libfuse 2 runs `fusermount`, a link to it on Debian 12): the helper opens /dev/fuse
 * with the user's own rights (it drops to the caller's fsuid first), mounts, and passes the descriptor back.
 * So a user needs both: /dev/fuse readable and writable by them, and a setuid-root helper. `allow_other` is
 * refused to a user unless /etc/fuse.conf has a line `user_allow_other` (fusermount3's rule).
 */
import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';

export const FUSE_CONF = '/etc/fuse.conf';

export const isRoot = (): boolean => process.getuid?.() === 0;

/** the first setuid-root helper of these names this process would run (PATH, then /usr/bin and /bin) */
export function setuidFusermount(names = ['fusermount3', 'fusermount']): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), '/usr/bin', '/bin'];
  for (const name of names) {
    for (const dir of dirs) {
      const p = join(dir, name);
      try {
        const st = statSync(p);
        accessSync(p, constants.X_OK);
        if (st.isFile() && st.uid === 0 && (st.mode & 0o4000) !== 0) return p;
      } catch { /* not here */ }
    }
  }
  return undefined;
}

/** whether /etc/fuse.conf has `user_allow_other` on a line of its own (comments after # ignored, as fusermount3 reads it) */
export function userAllowOther(conf = FUSE_CONF): boolean {
  let text: string;
  try {
    text = readFileSync(conf, 'utf8');
  } catch {
    return false;
  }
  return text.split('\n').some((l) => l.replace(/#.*/, '').trim() === 'user_allow_other');
}

/** undefined when this process may mount with allow_other, else the reason and what to do */
export function allowOtherProblem(conf = FUSE_CONF): string | undefined {
  if (isRoot() || userAllowOther(conf)) return undefined;
  return `allow_other (--allow-other) as an ordinary user needs the line user_allow_other in ${conf}, which it ` +
    `lacks: as root, run \`echo user_allow_other >> ${conf}\`; or mount as root, or without allow_other`;
}

/** why fusermount3 may refuse an ordinary user a mount, for when its own words do not reach us */
export const fusermountRefused = (helper: string, mnt: string): string =>
  `${helper} refused to mount ${mnt}: an ordinary user may mount only on a directory they can write (and own, ` +
  'when it is sticky), and at most mount_max FUSE mounts (/etc/fuse.conf)';

/** the owner, group and mode of /dev/fuse, for messages ("mode 0600, owner root") */
export function describeDevice(dev = '/dev/fuse'): string {
  try {
    const st = statSync(dev);
    const name = (id: number, file: string) => {
      try {
        return readFileSync(file, 'utf8').split('\n').find((l) => l.split(':')[2] === String(id))?.split(':')[0] ?? String(id);
      } catch {
        return String(id);
      }
    };
    return `mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}, owner ${name(st.uid, '/etc/passwd')}, group ${name(st.gid, '/etc/group')}`;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? 'unknown';
  }
}

/** the source a kvfs mount shows (findmnt SOURCE, df): the given one (the store URL), else `kvfs`; at most maxBytes of UTF-8 */
export function mountSource(source: string | undefined, maxBytes = 1024): string {
  const s = source || 'kvfs';
  if (Buffer.byteLength(s) <= maxBytes) return s;
  const chars = [...s];
  let bytes = Buffer.byteLength(s);
  while (chars.length && bytes + 3 > maxBytes) bytes -= Buffer.byteLength(chars.pop()!);
  return `${chars.join('')}...`;
}

/** a value inside a -o option list as fusermount3 and libfuse parse it: a backslash before ',' and '\' */
export const escapeOptionValue = (v: string): string => v.replace(/[\\,]/g, (c) => `\\${c}`);
