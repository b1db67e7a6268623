/**
 * Real-mount check of big directories: `ls -l` of a directory of 3,000 files on an LMDB volume (a fresh local:
 * store), right after a remount so that nothing is cached, lists every file once with its mode, link count and
 * size, on every driver (env KVFS_TEST_DRIVERS=default,libfuse; default: both). 3,000 entries take many
 * READDIRPLUS replies (native driver) and several libfuse buffers.
 *
 * Also: the extended attributes `ls -l` asks for about every file. system.posix_acl_access and security.selinux
 * are EOPNOTSUPP (no ACLs, no SELinux labels stored: ls stops asking for the rest of the device) while an unset
 * user.* name is ENODATA (a stored namespace, nothing set); on the native driver, the daemon's per-opcode counts
 * (its stats) show the listing took several READDIRPLUS replies and a handful of GETXATTR requests in all
 * (two per file before). Timings are in bench/bigdir.ts, not here.
 */
import t from 'tap';
import { join } from 'node:path';
import { expectExit, sameLines } from '../helpers/assert.js';
import { bash, kvfs, mountKvfs, run, tempDir, testDrivers, PYTHON } from '../helpers/mount.js';
import { daemonStats } from '../../bin/diag.js';

const FILES = 3000;
/** modes umask 022 leaves alone */
const MODES = [0o644, 0o600, 0o755, 0o640];
const drivers = testDrivers();
t.setTimeout(240_000 * drivers.length);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * the native daemon's requests by opcode from its stats; retried for up to 5 s, since a daemon opens its control
 * socket only after its mount appears (which is when mountKvfs and remount return)
 */
async function requestsByOp(mnt: string): Promise<Record<string, number>> {
  for (const end = Date.now() + 5000; ; await sleep(50)) {
    try {
      return ((await daemonStats(mnt)) as unknown as { session: { byOp: Record<string, number> } }).session.byOp;
    } catch (e) {
      if (Date.now() >= end) throw e;
    }
  }
}

/** mode, link count and size of file i, as `ls -l` prints them */
function expected(i: number): string {
  const mode = MODES[i % MODES.length]!;
  const rwx = (b: number) => `${b & 4 ? 'r' : '-'}${b & 2 ? 'w' : '-'}${b & 1 ? 'x' : '-'}`;
  return `f${String(i).padStart(5, '0')} -${rwx(mode >> 6)}${rwx((mode >> 3) & 7)}${rwx(mode & 7)} 1 ${i % 5 === 0 ? i * 13 : 0}`;
}

const CREATE_PY = `
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
modes = [0o644, 0o600, 0o755, 0o640]
os.mkdir(d)
for i in range(n):
    p = os.path.join(d, 'f%05d' % i)
    os.mknod(p, 0o100000 | modes[i % 4])
    if i % 5 == 0:
        os.truncate(p, i * 13)
`;

const XATTRS_PY = `
import errno, os, sys
for name in sys.argv[2:]:
    try:
        os.getxattr(sys.argv[1], name, follow_symlinks=False)
        print(name, 'value')
    except OSError as e:
        print(name, 'EOPNOTSUPP' if e.errno == errno.EOPNOTSUPP else errno.errorcode[e.errno])
`;

for (const driver of drivers) {
  t.test(`ls -l of ${FILES} files on an LMDB volume (${driver} driver)`, async (t) => {
    const base = tempDir(t, 'kvfs-test-bigdir-');
    const store = `local:${join(base, 'store')}`;
    expectExit(t, await kvfs(['format', store], { dataDir: join(base, 'data') }), 'kvfs format');
    const native = driver === 'default' || driver === 'native';
    const m = await mountKvfs(t, { store, driver });
    const dir = join(m.mnt, 'big');
    expectExit(t, await run(PYTHON, ['-c', CREATE_PY, dir, String(FILES)], { timeout: 180_000 }), `create ${FILES} files`);

    await m.remount();
    const before = native ? await requestsByOp(m.mnt) : {};
    // mode, links, size and name of every line but "total"; the owner and the time are not checked
    const ls = await bash('LC_ALL=C ls -l "$1" | awk \'NR > 1 { print $9, $1, $2, $5 }\' | LC_ALL=C sort', [dir], { timeout: 120_000 });
    expectExit(t, ls, 'ls -l');
    const want = Array.from({ length: FILES }, (_, i) => expected(i)).sort().join('\n') + '\n';
    sameLines(t, ls.stdout, want, `ls -l shows each of the ${FILES} files once, with its mode, link count and size`);
    if (native) {
      const after = await requestsByOp(m.mnt);
      const n = (op: string) => (after[op] ?? 0) - (before[op] ?? 0);
      t.ok(n('READDIRPLUS') > 1, `the listing took several READDIRPLUS replies (${n('READDIRPLUS')})`);
      // ls asks for system.posix_acl_access and security.selinux of every file until the first EOPNOTSUPP of each
      t.ok(n('GETXATTR') <= 10, `GETXATTR requests during ls -l of ${FILES} files: ${n('GETXATTR')}, not one per file`);
    }

    const x = await run(PYTHON, ['-c', XATTRS_PY, join(dir, 'f00001'), 'system.posix_acl_access', 'security.selinux', 'user.unset']);
    expectExit(t, x, 'getxattr');
    t.equal(x.stdout, 'system.posix_acl_access EOPNOTSUPP\nsecurity.selinux EOPNOTSUPP\nuser.unset ENODATA\n',
      'getxattr: ACLs and SELinux labels are unsupported (EOPNOTSUPP), a stored namespace with nothing set is ENODATA');
    await m.unmount();
  });
}
