/**
 * The daemon as a system service (issue 11): signals sent to the real process, `kvfs umount` of busy, stopped
 * and foreign mounts, one daemon per local store, the inspector that SIGUSR1 must never open, and the CLI's
 * small refusals (format into a non-empty dir or a kvfs mount, format memory:, status of a mountpoint).
 * Every mount is driven from child processes (bash, a python session holding descriptors and a cwd inside).
 */
import t from 'tap';
import type { Test } from 'tap';
import { mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expectCliError, expectExit } from '../helpers/assert.js';
import { bash, isMounted, kvfs, mountKvfs, run, tempDir, testDrivers, waitFor, type Mounted } from '../helpers/mount.js';
import { pySession } from '../helpers/py-session.js';

t.setTimeout(300_000);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const MiB = 1 << 20;

/** a formatted local: store in a fresh directory */
async function localStore(t: Test): Promise<{ url: string; dataDir: string }> {
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const url = `local:${join(dataDir, 'vol')}`;
  expectExit(t, await kvfs(['format', url], { dataDir }), 'kvfs format');
  return { url, dataDir };
}

/** the TCP ports a process listens on (its socket inodes matched against /proc/net/tcp and tcp6) */
function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch { /* closed meanwhile */ }
  }
  const ports: number[] = [];
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[3] === '0A' && inodes.has(f[9]!)) ports.push(parseInt(f[1]!.split(':')[1]!, 16));
    }
  }
  return ports;
}

const stderrOf = (m: Mounted) => m.output().stderr;

/** exit of the current daemon, or undefined when it still runs after ms */
async function exitWithin(m: Mounted, ms: number): Promise<boolean> {
  return waitFor(() => !m.alive(), ms);
}

t.test('SIGUSR1 opens no debugger port, and the mount keeps serving', async (t) => {
  const m = await mountKvfs(t, { store: 'memory:' });
  t.same(listeningPorts(m.pid), [], 'no listening port before');
  process.kill(m.pid, 'SIGUSR1');
  await waitFor(() => stderrOf(m).includes('SIGUSR1'), 3000);
  await sleep(500); // the inspector, if it started, listens within milliseconds
  t.same(listeningPorts(m.pid), [], 'no listening port after SIGUSR1 (the inspector would listen on 9229)');
  t.match(stderrOf(m), /SIGUSR1 ignored/, 'the log says it was ignored');
  const r = await bash('echo served > "$1/f" && cat "$1/f"', [m.mnt]);
  expectExit(t, r, 'write and read after SIGUSR1');
  t.equal(r.stdout, 'served\n', 'the mount serves');
  t.ok(m.alive(), 'the daemon lives');
});

for (const driver of testDrivers()) {
  t.test(`[${driver}] SIGTERM while busy: keeps serving and says who holds it; unmounts when the holder leaves; everything committed`, async (t) => {
    const { url, dataDir } = await localStore(t);
    const m = await mountKvfs(t, { store: url, dataDir, driver });
    const holder = pySession(t, { cwd: m.mnt });
    const fd = await holder.ok<number>(['open', 'held', ['O_RDWR', 'O_CREAT']]);
    await holder.ok(['write_fd', fd, 3 * MiB + 17, 1]);

    process.kill(m.pid, 'SIGTERM');
    t.ok(await waitFor(() => /busy/.test(stderrOf(m)), 15_000), 'the log says the mount is busy', { stderr: stderrOf(m) });
    t.match(stderrOf(m), new RegExp(`used by pid ${holder.started.child.pid}`), 'and names the holder');
    t.match(stderrOf(m), /kvfs umount --lazy/, 'and how to detach it now');
    t.ok(isMounted(m.mnt) && m.alive(), 'still mounted, daemon alive');
    const r = await bash('echo later > "$1/later" && cat "$1/later" && cat "$1/held" | wc -c', [m.mnt]);
    expectExit(t, r, 'a new process still reads and writes');
    t.equal(r.stdout, `later\n${3 * MiB + 17}\n`, 'what it read');

    await holder.ok(['write_fd', fd, MiB, 2]);
    const held = await holder.ok<{ size: number; sha256: string }>(['pread_all', fd]);
    await holder.ok(['close', fd]);
    await holder.close();
    t.ok(await exitWithin(m, 20_000), 'the daemon exits once the holder left', { stderr: stderrOf(m) });
    t.notOk(isMounted(m.mnt), 'unmounted');
    t.match(stderrOf(m), /everything committed/, 'the log says everything was committed');

    await m.remount();
    const check = pySession(t);
    t.same(await check.ok(['cat', join(m.mnt, 'held')]), held, 'the held file, remounted, is what its writer saw');
    t.equal(readFileSync(join(m.mnt, 'later'), 'utf8'), 'later\n', 'the file written while busy is there');
    await check.close();
  });

  t.test(`[${driver}] the signal again detaches lazily: processes inside keep working until they leave`, async (t) => {
    const { url, dataDir } = await localStore(t);
    const m = await mountKvfs(t, { store: url, dataDir, driver });
    const holder = pySession(t, { cwd: m.mnt });
    const a = await holder.ok(['write_file', 'a', 300_000, 3]);
    process.kill(m.pid, 'SIGINT');
    t.ok(await waitFor(() => /busy/.test(stderrOf(m)), 15_000), 'busy at the first SIGINT', { stderr: stderrOf(m) });
    process.kill(m.pid, 'SIGINT');
    t.ok(await waitFor(() => !isMounted(m.mnt), 10_000), 'the second SIGINT takes the mount out of the table', { stderr: stderrOf(m) });
    t.match(stderrOf(m), /lazily/, 'the log says it detached lazily');
    t.ok(m.alive(), 'the daemon still serves the process inside');
    const b = await holder.ok(['write_file', 'b', 700_000, 4]);
    t.same(await holder.ok(['cat', 'a']), a, 'the holder reads a file through the detached mount');
    t.same(await holder.ok(['listdir', '.']), ['a', 'b'], 'and lists it');
    await holder.close();
    t.ok(await exitWithin(m, 20_000), 'the daemon exits when the last user left', { stderr: stderrOf(m) });
    t.equal(m.alive(), false);
    await m.remount();
    const check = pySession(t);
    t.same(await check.ok(['cat', join(m.mnt, 'a')]), a, 'a survived');
    t.same(await check.ok(['cat', join(m.mnt, 'b')]), b, 'b, written after the lazy detach, survived');
    await check.close();
  });
}

t.test('SIGHUP commits everything (a clean stop), even what an open file has not flushed', async (t) => {
  const { url, dataDir } = await localStore(t);
  const m = await mountKvfs(t, { store: url, dataDir });
  const holder = pySession(t, { cwd: m.mnt });
  const fd = await holder.ok<number>(['open', 'open-file', ['O_RDWR', 'O_CREAT']]);
  await holder.ok(['write_fd', fd, 2 * MiB + 5, 7]);
  const seen = await holder.ok(['pread_all', fd]);
  process.kill(m.pid, 'SIGHUP');
  t.ok(await waitFor(() => /busy/.test(stderrOf(m)), 15_000), 'SIGHUP stops cleanly: commits, then finds the mount busy', { stderr: stderrOf(m) });
  t.ok(m.alive(), 'SIGHUP did not kill the daemon');
  // Whatever happens next (here: the worst), what the signal committed stays.
  await m.kill9();
  await holder.close();
  await m.remount();
  const check = pySession(t);
  t.same(await check.ok(['cat', join(m.mnt, 'open-file')]), seen, 'the unflushed writes were committed by SIGHUP');
  await check.close();
});

t.test('kvfs umount and kvfs mount never hang on a stopped daemon', async (t) => {
  const { url, dataDir } = await localStore(t);
  const m = await mountKvfs(t, { store: url, dataDir });
  const written = await pySession(t).ok(['write_file', join(m.mnt, 'f'), 100_000, 9]);
  process.kill(m.pid, 'SIGSTOP');
  t.teardown(() => { try { process.kill(m.pid, 'SIGCONT'); } catch { /* gone */ } });

  const other = join(tempDir(t, 'kvfs-test-base-'), 'other');
  mkdirSync(other);
  const again = await kvfs(['mount', 'memory:', m.mnt], { dataDir, timeout: 15_000 });
  t.notOk(again.timedOut, 'kvfs mount on the stopped mount returns');
  expectCliError(t, again, 'kvfs mount on a mounted path', /already mounted/);

  const st = await kvfs(['status', m.mnt], { dataDir, timeout: 15_000 });
  t.notOk(st.timedOut, 'kvfs status of the stopped mount returns');
  expectExit(t, st, 'kvfs status MOUNTPOINT');
  t.match(st.stdout, /STOPPED/, 'and says the daemon is stopped');

  const u = await kvfs(['umount', m.mnt], { dataDir, timeout: 15_000 });
  t.notOk(u.timedOut, 'kvfs umount of a stopped daemon returns');
  expectExit(t, u, 'kvfs umount of a stopped daemon');
  t.match(u.stdout, /lazy/, 'it says it detached lazily');
  t.match(u.stdout, /stopped/, 'and why');
  t.notOk(isMounted(m.mnt), 'the mount left the table');
  process.kill(m.pid, 'SIGCONT');
  t.ok(await exitWithin(m, 20_000), 'continued, the daemon commits and exits', { stderr: stderrOf(m) });
  await m.remount();
  t.same(await pySession(t).ok(['cat', join(m.mnt, 'f')]), written, 'the file is in the store');
});

t.test('kvfs umount: busy is refused with who holds it, --lazy detaches, a live idle daemon exits before it returns', async (t) => {
  const { url, dataDir } = await localStore(t);
  const m = await mountKvfs(t, { store: url, dataDir });
  const holder = pySession(t, { cwd: m.mnt });
  await holder.ok(['write_file', 'x', 1000, 1]);
  const busy = await kvfs(['umount', m.mnt], { dataDir });
  expectCliError(t, busy, 'kvfs umount of a busy mount', /busy/);
  t.match(busy.stderr, new RegExp(`pid ${holder.started.child.pid}`), 'names the holder');
  t.match(busy.stderr, /--lazy/, 'says how to detach it now');
  t.ok(isMounted(m.mnt) && m.alive(), 'still mounted and served');

  const lazy = await kvfs(['umount', '--lazy', m.mnt], { dataDir });
  expectExit(t, lazy, 'kvfs umount --lazy');
  t.notOk(isMounted(m.mnt), 'out of the table');
  t.ok(m.alive(), 'the daemon serves the holder');
  t.same(await holder.ok(['listdir', '.']), ['x'], 'the holder still lists');
  await holder.close();
  t.ok(await exitWithin(m, 20_000), 'the daemon exits when the holder left');

  await m.remount();
  const idle = await kvfs(['umount', m.mnt], { dataDir });
  expectExit(t, idle, 'kvfs umount of an idle mount');
  t.match(idle.stdout, /unmounted/, 'says unmounted');
  t.ok(await exitWithin(m, 2000), 'the daemon had committed and exited by then');
});

t.test('kvfs umount refuses what is not a kvfs mount', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const dir = tempDir(t, 'kvfs-test-base-');
  expectCliError(t, await kvfs(['umount', dir], { dataDir }), 'a plain directory', /is not mounted/);
  expectExit(t, await run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'kvfs-test-tmpfs', dir]), 'mount a tmpfs');
  t.teardown(() => run('umount', ['-l', dir]));
  const r = await kvfs(['umount', dir], { dataDir });
  expectCliError(t, r, 'a tmpfs', /not a kvfs mount/);
  t.ok(isMounted(dir), 'the tmpfs is still mounted');
});

t.test('one daemon per local store; a dead daemon\'s lock does not block the next', async (t) => {
  const { url, dataDir } = await localStore(t);
  const m = await mountKvfs(t, { store: url, dataDir });
  const f = await pySession(t).ok(['write_file', join(m.mnt, 'f'), 50_000, 5, true]);
  const base = tempDir(t, 'kvfs-test-base-');
  const m2 = join(base, 'm2');
  mkdirSync(m2);
  const second = await kvfs(['mount', url, m2], { dataDir });
  expectCliError(t, second, 'a second daemon on the store', /in use by kvfs pid \d+/);
  t.match(second.stderr, new RegExp(`pid ${m.pid} \\(mount at ${m.mnt}\\)`), 'names the running daemon and its mountpoint');
  t.notOk(isMounted(m2), 'nothing mounted at the second mountpoint');
  expectCliError(t, await kvfs(['format', url], { dataDir }), 'format of a mounted store', /in use by kvfs pid/);

  await m.kill9();
  const clean = await kvfs(['umount', m.mnt], { dataDir });
  expectExit(t, clean, 'kvfs umount after kill -9');
  t.match(clean.stdout, /daemon is gone/, 'says the daemon is gone');
  await m.remount();
  t.same(await pySession(t).ok(['cat', join(m.mnt, 'f')]), f, 'the next daemon mounts the store and serves the data');
});

t.test('format and status: the small refusals', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const base = tempDir(t, 'kvfs-test-base-');
  const full = join(base, 'full');
  mkdirSync(full);
  writeFileSync(join(full, 'precious'), 'keep me');
  expectCliError(t, await kvfs(['format', `local:${full}`], { dataDir }), 'format into a non-empty directory', /not empty/);
  t.same(readdirSync(full), ['precious'], 'nothing written there');
  expectCliError(t, await kvfs(['format', 'memory:'], { dataDir }), 'format memory:', /nothing to format/);

  const m = await mountKvfs(t, { store: 'memory:' });
  expectCliError(t, await kvfs(['format', `local:${join(m.mnt, 'store')}`], { dataDir }), 'format inside a kvfs mount', /inside the kvfs mount/);
  expectCliError(t, await kvfs(['mount', `local:${join(m.mnt, 'store')}`, join(base)], { dataDir }), 'mount a store inside a kvfs mount', /inside the kvfs mount/);
  const st = await kvfs(['status', m.mnt], { dataDir });
  expectExit(t, st, 'kvfs status MOUNTPOINT of a memory volume');
  t.match(st.stdout, new RegExp(`mountpoint: +${m.mnt}`), 'shows the mountpoint');
  t.match(st.stdout, new RegExp(`daemon: +pid ${m.pid}`), 'and the daemon');
  t.match(st.stdout, /memory/, 'and the store');
  expectCliError(t, await kvfs(['status', base], { dataDir }), 'status of a plain directory', /neither a store URL .* nor a mounted kvfs volume/);

  const { url, dataDir: d2 } = await localStore(t);
  const lm = await mountKvfs(t, { store: url, dataDir: d2 });
  await bash('head -c 12345 /dev/zero > "$1/z"', [lm.mnt]);
  const ls = await kvfs(['status', lm.mnt], { dataDir: d2 });
  expectExit(t, ls, 'kvfs status MOUNTPOINT of an LMDB volume');
  t.match(ls.stdout, /volume: +kvfs/, 'shows the volume record');
  t.match(ls.stdout, /inodes: +2/, 'and its usage');
});
