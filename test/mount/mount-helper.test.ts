/**
 * mount(8), fstab and the mount.kvfs helper (issue 11): `kvfs install-helper` puts the helper where mount(8)
 * finds it (idempotent, --uninstall removes it, a foreign file is never overwritten); real `mount -t kvfs` and
 * `mount -T FSTAB` lines with _netdev and nofail mount in the background and return; every option is reachable
 * as -o name=value; findmnt and df name the store; umount(8) stops the daemon after its last commit.
 */
import t from 'tap';
import type { Test } from 'tap';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expectCliError, expectExit } from '../helpers/assert.js';
import { bash, ensureUser, guardMount, isMounted, kvfs, kvfsBin, run, runAs, tempDir, TEST_USER } from '../helpers/mount.js';

t.setTimeout(180_000);

const HELPER = '/usr/sbin/mount.kvfs';
const foreign = existsSync(HELPER) && !readFileSync(HELPER, 'utf8').includes('# kvfs mount helper');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** the daemon pid in `kvfs: mounted at MNT (daemon pid N, log L)` */
const daemonPid = (out: string) => Number(/daemon pid (\d+)/.exec(out)?.[1]);
const alive = (pid: number) => existsSync(`/proc/${pid}`) && !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));

async function gone(pid: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (alive(pid)) {
    if (Date.now() > end) return false;
    await sleep(50);
  }
  return true;
}

/** a scene: data dir, a mountpoint guarded against leaks, and the pid of whatever daemon mounts there */
function scene(t: Test) {
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const base = tempDir(t, 'kvfs-test-base-');
  const mnt = join(base, 'mnt');
  mkdirSync(mnt);
  const s = { dataDir, base, mnt, pid: undefined as number | undefined };
  guardMount(t, mnt, () => s.pid);
  return s;
}

t.test('install-helper refusals (need no install)', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const dir = tempDir(t, 'kvfs-test-base-');
  writeFileSync(join(dir, 'mount.kvfs'), '#!/bin/sh\necho someone else\n');
  expectCliError(t, await kvfs(['install-helper', '--dir', dir], { dataDir }), 'a foreign mount.kvfs', /not kvfs's helper/);
  t.equal(readFileSync(join(dir, 'mount.kvfs'), 'utf8'), '#!/bin/sh\necho someone else\n', 'left as it was');
  ensureUser();
  const user = await runAs(TEST_USER, process.execPath, [kvfsBin(), 'install-helper', '--dir', dir],
    { env: { KVFS_DATA_DIR: '/tmp' } });
  t.not(user.code, 0, 'non-root: refused');
  t.match(user.stderr, /run it as root/, 'says it needs root');
});

t.test('mount(8) and fstab through mount.kvfs', { skip: foreign ? `${HELPER} exists and is not kvfs's` : false }, async (t) => {
  const had = existsSync(HELPER);
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const inst = await kvfs(['install-helper'], { dataDir });
  expectExit(t, inst, 'kvfs install-helper');
  t.teardown(() => { if (!had) return kvfs(['install-helper', '--uninstall'], { dataDir }); });
  const first = readFileSync(HELPER, 'utf8');
  t.equal(statSync(HELPER).mode & 0o777, 0o755, 'the helper is executable');
  t.ok(existsSync('/usr/sbin/mount.fuse.kvfs'), 'and answers to type fuse.kvfs too');
  expectExit(t, await kvfs(['install-helper'], { dataDir }), 'install-helper again (idempotent)');
  t.equal(readFileSync(HELPER, 'utf8'), first, 'the same helper');

  await t.test('mount -t kvfs memory: DIR -o allow_other,cache_mb=256,log_file=...', async (t) => {
    const s = scene(t);
    const log = join(s.base, 'daemon.log');
    const r = await run('mount', ['-t', 'kvfs', 'memory:', s.mnt, '-o', `allow_other,cache_mb=256,entry_timeout=2,log_file=${log}`],
      { env: { KVFS_DATA_DIR: s.dataDir } });
    expectExit(t, r, 'mount -t kvfs returns once mounted');
    s.pid = daemonPid(r.stdout + r.stderr);
    t.ok(isMounted(s.mnt), 'mounted');
    t.ok(alive(s.pid), 'the daemon runs in the background');
    const cmd = readFileSync(`/proc/${s.pid}/cmdline`, 'utf8').split('\0');
    t.match(cmd.join(' '), /--allow-other --cache-mb 256 --entry-timeout 2 --log-file/, 'each -o option reached the daemon as its flag');
    const fm = await run('findmnt', ['-n', '-o', 'SOURCE,FSTYPE,OPTIONS', s.mnt]);
    t.match(fm.stdout, /^memory: +fuse\.kvfs +\S*allow_other/, 'findmnt: the store, fuse.kvfs, allow_other');
    const io = await bash('echo through-mount8 > "$1/f" && cat "$1/f"', [s.mnt]);
    t.equal(io.stdout, 'through-mount8\n', 'serves files');
    expectExit(t, await run('umount', [s.mnt]), 'umount(8)');
    t.ok(await gone(s.pid, 20_000), 'the daemon exits after umount');
    t.match(readFileSync(log, 'utf8'), /everything committed; stopped/, 'its log (the -o log_file) says it committed');
    t.equal(statSync(log).mode & 0o777, 0o600, 'the log is owner-only');
  });

  await t.test('an fstab line with _netdev,nofail (mount -T FSTAB DIR), df names the store', async (t) => {
    const s = scene(t);
    const store = `local:${join(s.dataDir, 'vol')}`;
    expectExit(t, await kvfs(['format', store], { dataDir: s.dataDir }), 'format');
    const fstab = join(s.base, 'fstab');
    writeFileSync(fstab, `# a test fstab\n${store} ${s.mnt} kvfs _netdev,nofail,defaults,cache_mb=32,x-systemd.requires=network.target 0 0\n`);
    const r = await run('mount', ['-T', fstab, s.mnt], { env: { KVFS_DATA_DIR: s.dataDir } });
    expectExit(t, r, 'mount -T FSTAB DIR');
    s.pid = daemonPid(r.stdout + r.stderr);
    t.ok(isMounted(s.mnt), 'mounted from the fstab line');
    const df = await run('df', ['--output=source,target', s.mnt]);
    t.match(df.stdout, new RegExp(`${store.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} +${s.mnt}`), 'df names the store');
    await bash('head -c 300000 /dev/urandom > "$1/r" && sha256sum < "$1/r" > "$2/sum"', [s.mnt, s.base]);
    expectExit(t, await run('umount', [s.mnt]), 'umount(8)');
    t.ok(await gone(s.pid, 20_000), 'the daemon exits');
    const again = await run('mount', ['-T', fstab, s.mnt], { env: { KVFS_DATA_DIR: s.dataDir } });
    expectExit(t, again, 'mounted again from fstab');
    s.pid = daemonPid(again.stdout + again.stderr);
    const sum = await bash('sha256sum < "$1/r"', [s.mnt]);
    t.equal(sum.stdout, readFileSync(join(s.base, 'sum'), 'utf8'), 'the file written before is intact');
    expectExit(t, await run('umount', [s.mnt]), 'umount(8)');
    t.ok(await gone(s.pid!, 20_000), 'the daemon exits');
  });

  await t.test('bad options are refused with their name, and nothing is mounted', async (t) => {
    const s = scene(t);
    for (const [opts, re] of [
      ['bogus=1', /unknown mount option 'bogus=1'/],
      ['cache_mb', /needs a value/],
      ['allow_other=maybe', /allow_other alone, or =true/],
      ['ro', /read-only/],
      ['cache_mb=-5', /bad --cache-mb/],
      ['background', /unknown mount option 'background'/],
    ] as const) {
      const r = await run('mount', ['-t', 'kvfs', 'memory:', s.mnt, '-o', opts], { env: { KVFS_DATA_DIR: s.dataDir } });
      t.not(r.code, 0, `-o ${opts}: mount fails`);
      t.match(r.stderr, re, `-o ${opts}: says why`);
      t.notOk(isMounted(s.mnt), `-o ${opts}: nothing mounted`);
    }
    const r = await run('mount', ['-t', 'kvfs', 'local:/nonexistent/kvfs-store', s.mnt], { env: { KVFS_DATA_DIR: s.dataDir } });
    t.not(r.code, 0, 'an unformatted store: mount fails');
    t.match(r.stderr, /holds no kvfs volume/, 'and says so');
  });

  await t.test('install-helper --uninstall removes it', async (t) => {
    expectExit(t, await kvfs(['install-helper', '--uninstall'], { dataDir }), 'uninstall');
    t.notOk(existsSync(HELPER), 'mount.kvfs gone');
    t.notOk(existsSync('/usr/sbin/mount.fuse.kvfs'), 'mount.fuse.kvfs gone');
    expectExit(t, await kvfs(['install-helper', '--uninstall'], { dataDir }), 'uninstall again (idempotent)');
    if (had) expectExit(t, await kvfs(['install-helper'], { dataDir }), 'put back the helper that was there');
  });
});
