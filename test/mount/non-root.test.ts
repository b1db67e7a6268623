/**
 * Mounting as an ordinary user: a real second uid (TEST_USER, through runuser) mounts with `kvfs mount
 * --background`, uses the mount, and unmounts with `kvfs umount`, on both drivers (the native driver's
 * fusermount3 descriptor passing; libfuse 2, whose fuse_mount runs `fusermount`, here a link to fusermount3).
 * The user has its own KVFS_DATA_DIR and a mountpoint it owns; its store URL has a space and a comma, which
 * the mount's source must show as they are (findmnt, df).
 *
 * An ordinary user needs /dev/fuse readable and writable (fusermount3 opens it with the user's own rights):
 * udev makes it mode 0666 on Debian 12, and this file sets that mode for its run (the machine it was written on
 * has no udev rule and keeps /dev/fuse at 0600), then one case puts 0600 back to see the refusal. The
 * allow_other cases add or remove the line `user_allow_other` of /etc/fuse.conf. Both are restored in every
 * outcome: teardown, the exit hooks, and a watchdog if this process dies by SIGKILL. Leftover mounts are
 * detached lazily as root.
 */
import t from 'tap';
import type { Test } from 'tap';
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expectExit } from '../helpers/assert.js';
import {
  describe, driverArgs, ensureUser, guardMount, isMounted, kvfsBin, mountsAt, processesMentioning, run, runAs,
  tempDir, TEST_USER,
} from '../helpers/mount.js';
import { code, pyOps } from '../helpers/pyops.js';
import { atProcessEnd, startWatchdog } from '../helpers/run.js';
import { runtimeDirOf } from '../../bin/daemons.js';

t.setTimeout(240_000);

const DEV = '/dev/fuse';
const CONF = '/etc/fuse.conf';
const DRIVERS = ['default', 'libfuse'];

const { uid, gid } = ensureUser(TEST_USER);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ machine state, restored in every outcome

const saved = { mode: statSync(DEV).mode & 0o7777, conf: existsSync(CONF) ? readFileSync(CONF) : undefined };
const backupDir = tempDir(t, 'kvfs-test-fuseconf-');
const backup = join(backupDir, 'fuse.conf');
if (saved.conf) copyFileSync(CONF, backup);
function restore(): void {
  try {
    chmodSync(DEV, saved.mode);
  } catch { /* best effort */ }
  try {
    if (saved.conf === undefined) rmSync(CONF, { force: true });
    else writeFileSync(CONF, saved.conf);
  } catch { /* best effort */ }
}
atProcessEnd(restore);
const watchdog = startWatchdog('kvfs-test-watchdog', `chmod "$1" ${DEV}
if [ -f "$2" ]; then cat "$2" > ${CONF}; else rm -f ${CONF}; fi
case "$3" in /tmp/kvfs-test-fuseconf-?*) rm -rf "$3" ;; esac`, [saved.mode.toString(8), saved.conf ? backup : '', backupDir]);
t.teardown(() => {
  restore();
  try {
    process.kill(-watchdog.pid!, 'SIGKILL');
  } catch { /* gone */ }
});

/** /etc/fuse.conf as it was, with the line user_allow_other present or not */
function setUserAllowOther(on: boolean): void {
  const kept = (saved.conf?.toString('utf8') ?? '').split('\n').filter((l) => l.replace(/#.*/, '').trim() !== 'user_allow_other');
  writeFileSync(CONF, `${kept.join('\n').replace(/\n*$/, '\n')}${on ? 'user_allow_other\n' : ''}`);
}

chmodSync(DEV, 0o666);

// ------------------------------------------------------------------ the user's scene

/** a data dir and an empty mountpoint, both owned by TEST_USER; a mount left behind is detached as root */
function userScene(t: Test): { dataDir: string; mnt: string } {
  const base = tempDir(t, 'kvfs-test-user-');
  chmodSync(base, 0o755);
  const dataDir = join(base, 'data');
  const mnt = join(base, 'mnt');
  for (const d of [dataDir, mnt]) {
    mkdirSync(d);
    chownSync(d, uid, gid);
  }
  guardMount(t, mnt, () => processesMentioning(mnt)[0]);
  // if this process dies by SIGKILL: detach the mount, end the user's daemon, remove the scene
  const w = startWatchdog('kvfs-test-watchdog', `umount -l "$1" 2>/dev/null
for p in $(pgrep -f -- "$1"); do [ "$p" = "$$" ] || kill -9 "$p"; done
case "$2" in /tmp/kvfs-test-user-?*) grep -q " $2/" /proc/self/mountinfo || rm -rf "$2" ;; esac`, [mnt, base]);
  t.teardown(() => {
    try {
      process.kill(-w.pid!, 'SIGKILL');
    } catch { /* gone */ }
  });
  return { dataDir, mnt };
}

/**
 * `kvfs ARGS` as TEST_USER. Through env -u NODE_OPTIONS: tap adds its process-info hook to the NODE_OPTIONS of
 * every child, and that hook's write into this checkout's .tap/ fails for another user.
 */
const asUser = (args: string[], dataDir: string) => run('env', ['-u', 'NODE_OPTIONS', process.execPath, kvfsBin(), ...args], {
  user: TEST_USER, cwd: '/', timeout: 40_000, env: { KVFS_DATA_DIR: dataDir },
});

async function waitGone(mnt: string): Promise<boolean> {
  for (let i = 0; i < 200; i++) {
    if (!isMounted(mnt) && processesMentioning(mnt).length === 0) return true;
    await sleep(50);
  }
  return false;
}

// The user runs node on this checkout: every directory above it must let others in.
const probe = await runAs(TEST_USER, 'env', ['-u', 'NODE_OPTIONS', process.execPath, kvfsBin(), '--help'], { cwd: '/' });
const unreadable = probe.code === 0 ? undefined
  : `${TEST_USER} cannot run ${kvfsBin()} (the checkout must be readable by other users): ${describe(probe)}`;

for (const driver of DRIVERS) {
  t.test(`driver ${driver}: an ordinary user mounts, writes, reads and unmounts`, { skip: unreadable }, async (t) => {
    const { dataDir, mnt } = userScene(t);
    const store = `local:${dataDir}/vol a,b`;
    expectExit(t, await asUser(['format', store], dataDir), `format ${store} as ${TEST_USER}`);
    const m = await asUser(['mount', store, mnt, '--background', ...driverArgs(driver)], dataDir);
    if (!expectExit(t, m, `kvfs mount --background as ${TEST_USER}`)) return;

    const entries = mountsAt(mnt);
    t.equal(entries.length, 1, 'one mount');
    t.equal(entries[0]?.fstype, 'fuse.kvfs', 'type fuse.kvfs');
    t.match(entries[0]?.superOptions, new RegExp(`(^|,)user_id=${uid}(,|$)`), `the mount belongs to uid ${uid}`);
    t.equal((await run('findmnt', ['-n', '-o', 'SOURCE', mnt])).stdout.trim(), store, 'findmnt names the store (space and comma kept)');
    t.equal((await runAs(TEST_USER, 'df', ['--output=source', mnt])).stdout.trim().split('\n')[1], store, 'df (as the user: root may not statfs it) names the store');

    const f = `${mnt}/f`;
    const ops = await pyOps([['write', f, ['O_WRONLY', 'O_CREAT'], 'written by a user'], ['read', f], ['stat', f]], { user: TEST_USER });
    t.same(ops.map(code), ['OK', 'OK', 'OK'], 'write, read and stat as the user', { ops });
    t.equal(ops[1]?.ok && ops[1].value, 'written by a user', 'the user reads what it wrote');
    const st = ops[2]?.ok ? (ops[2].value as { uid: number; gid: number }) : undefined;
    t.same(st && [st.uid, st.gid], [uid, gid], 'the file belongs to the user');

    const [rootStat, rootList] = await pyOps([['stat', f], ['listdir', mnt]]);
    t.equal(code(rootStat), 'EACCES', 'root cannot stat inside a mount without allow_other');
    t.equal(code(rootList), 'EACCES', 'root cannot list it either');

    expectExit(t, await asUser(['umount', mnt], dataDir), `kvfs umount as ${TEST_USER}`);
    t.ok(await waitGone(mnt), 'nothing mounted, the daemon exited', { left: processesMentioning(mnt) });

    const again = await asUser(['mount', store, mnt, '--background', ...driverArgs(driver)], dataDir);
    if (expectExit(t, again, 'mount the store again')) {
      t.equal((await pyOps([['read', f]], { user: TEST_USER }))[0]?.ok, true, 'the file is still there');
      expectExit(t, await asUser(['umount', mnt], dataDir), 'kvfs umount');
      t.ok(await waitGone(mnt), 'nothing mounted');
    }
  });

  t.test(`driver ${driver}: allow_other as an ordinary user`, { skip: unreadable }, async (t) => {
    t.test('without user_allow_other in /etc/fuse.conf: refused with a message that says what to do', async (t) => {
      const { dataDir, mnt } = userScene(t);
      setUserAllowOther(false);
      const r = await asUser(['mount', 'memory:', mnt, '--allow-other', '--background', ...driverArgs(driver)], dataDir);
      t.not(r.code, 0, 'refused', { command: describe(r) });
      t.match(r.stderr, /allow_other.*needs the line user_allow_other in \/etc\/fuse\.conf/, 'names the line and the file');
      t.match(r.stderr, /echo user_allow_other >> \/etc\/fuse\.conf/, 'says how to add it');
      t.ok(await waitGone(mnt), 'nothing mounted, no daemon left');
    });

    t.test('with it: the mount lets root in', async (t) => {
      const { dataDir, mnt } = userScene(t);
      setUserAllowOther(true);
      const m = await asUser(['mount', 'memory:', mnt, '--allow-other', '--background', ...driverArgs(driver)], dataDir);
      if (!expectExit(t, m, 'kvfs mount --allow-other')) return;
      t.match(mountsAt(mnt)[0]?.superOptions, /(^|,)allow_other(,|$)/, 'mounted with allow_other');
      const [w] = await pyOps([['write', `${mnt}/shared`, ['O_WRONLY', 'O_CREAT'], 'for everyone']], { user: TEST_USER });
      t.equal(code(w), 'OK', 'the user writes');
      const [r] = await pyOps([['read', `${mnt}/shared`]]);
      t.same(r, { ok: true, value: 'for everyone' }, 'root reads it');
      expectExit(t, await asUser(['umount', mnt], dataDir), 'kvfs umount');
      t.ok(await waitGone(mnt), 'nothing mounted');
    });
  });
}

t.test('a user who cannot open /dev/fuse is told what to do on Debian 12', { skip: unreadable }, async (t) => {
  const { dataDir, mnt } = userScene(t);
  chmodSync(DEV, 0o600);
  let r;
  try {
    r = await asUser(['mount', 'memory:', mnt, '--background'], dataDir);
  } finally {
    chmodSync(DEV, 0o666);
  }
  t.equal(r.code, 1, 'refused', { command: describe(r) });
  t.match(r.stderr, new RegExp(`/dev/fuse cannot be opened by ${TEST_USER} \\(EACCES; it is mode 0600, owner root`), 'says why, with the mode');
  t.match(r.stderr, /On Debian 12: .*chmod 0666 \/dev\/fuse/, 'says what to do on Debian 12');
  t.match(r.stderr, /run kvfs mount as root/, 'or to run as root');
  t.notMatch(r.stderr, /fuse group/, 'no fuse group (Debian 12 has none)');
  t.notOk(isMounted(mnt), 'nothing mounted');
});

t.test('a runtime directory other users can enter: the mount is refused before anything is mounted', { skip: unreadable }, async (t) => {
  const { dataDir, mnt } = userScene(t);
  const dir = runtimeDirOf(uid);
  if (!existsSync(dir)) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chownSync(dir, uid, gid);
  }
  const was = statSync(dir).mode & 0o7777;
  chmodSync(dir, 0o755);
  let r;
  try {
    r = await asUser(['mount', 'memory:', mnt, '--background'], dataDir);
  } finally {
    chmodSync(dir, was);
  }
  t.equal(r.code, 1, 'refused', { command: describe(r) });
  t.match(r.stderr, new RegExp(`the runtime directory ${dir} is not a directory that only uid ${uid} can use \\(mode 755`), 'names the directory and its mode');
  t.notOk(isMounted(mnt), 'nothing mounted');
  t.ok(await waitGone(mnt), 'no daemon left');
});
