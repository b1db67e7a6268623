/**
 * Durability through a real mount: data survives a clean unmount and remount of a local: (LMDB) store, and a
 * SIGKILLed daemon loses nothing that was fsynced (DESIGN: failure model). After a kill -9 the mountpoint answers
 * ENOTCONN until `kvfs umount` cleans it; then a new mount on the same mountpoint works.
 *
 * Runs once per driver (env KVFS_TEST_DRIVERS / KVFS_TEST_DRIVER, see test/helpers/mount.ts).
 */
import t from 'tap';
import type { Test } from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expectExit, sameLines } from '../helpers/assert.js';
import {
  bash,
  describe,
  isMounted,
  kvfs,
  mountKvfs,
  PYTHON,
  run,
  start,
  tempDir,
  testDrivers,
} from '../helpers/mount.js';
import { code, pyOps } from '../helpers/pyops.js';
import { bytes, makeTree } from '../helpers/tree.js';

const drivers = testDrivers();
t.setTimeout(170_000 * drivers.length);

const local = tempDir(t, 'kvfs-test-src-');
const tree = makeTree(join(local, 'tree'), { files: 300, seed: 9 });

/** metadata + content listing of a tree: path, type, size, mode, owner, nlink, mtime, link target; sha256 of files */
async function snapshot(t: Test, dir: string): Promise<string> {
  const r = await bash(
    `cd "$1" && { find . -mindepth 1 \\( -type d -printf '%P|d|%m|%U|%G\\n' \\) -o -printf '%P|%y|%s|%m|%U|%G|%n|%T@|%l\\n'; find . -type f -exec sha256sum {} + ; } | LC_ALL=C sort`,
    [dir],
    { timeout: 60_000 },
  );
  expectExit(t, r, `snapshot of ${dir}`);
  return r.stdout;
}

async function formatLocal(t: Test): Promise<{ store: string; dataDir: string }> {
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const store = `local:${join(tempDir(t, 'kvfs-test-store-'), 'vol')}`;
  expectExit(t, await kvfs(['format', store], { dataDir }), 'kvfs format');
  return { store, dataDir };
}

async function cleanUpDeadMount(t: Test, mnt: string, dataDir: string): Promise<void> {
  // (stat may still be answered from the kernel's attribute cache; reading the directory must reach the daemon)
  const [st] = await pyOps([['listdir', mnt]]);
  t.equal(code(st), 'ENOTCONN', 'after kill -9 the mountpoint answers ENOTCONN (readdir)');
  const ls = await run('ls', [mnt]);
  t.match(ls.stderr, /Transport endpoint is not connected/, 'ls says: transport endpoint is not connected', {
    command: describe(ls),
  });
  const um = await kvfs(['umount', mnt], { dataDir });
  expectExit(t, um, 'kvfs umount of the dead mount');
  t.notOk(isMounted(mnt), 'the dead mount is gone from /proc/self/mountinfo');
  const after = await run('ls', ['-A', mnt]);
  expectExit(t, after, 'the mountpoint is an ordinary directory again');
  t.equal(after.stdout, '', 'and it is empty');
}

for (const driver of drivers) {
  t.test(`durability, driver ${driver}`, async (t) => {
    t.test('data survives unmount and remount (local: store)', async (t) => {
      const { store, dataDir } = await formatLocal(t);
      const m = await mountKvfs(t, { store, dataDir, driver });
      expectExit(t, await run('mkdir', [`${m.mnt}/tree`]), 'mkdir');
      expectExit(t, await bash('tar -C "$1" -cf - . | tar -C "$2" -xf -', [tree.root, `${m.mnt}/tree`], { timeout: 60_000 }), 'tar the tree in');
      const extra = await pyOps([
        ['write', `${m.mnt}/attrs`, ['O_WRONLY', 'O_CREAT'], 'with attributes'],
        ['chmod', `${m.mnt}/attrs`, 0o640],
        ['chown', `${m.mnt}/attrs`, 1234, 2345],
        ['setxattr', `${m.mnt}/attrs`, 'user.kept', 'kept value'],
        ['symlink', 'attrs', `${m.mnt}/link`],
        ['mkdir', `${m.mnt}/empty-dir`],
      ]);
      t.same(extra.map(code), extra.map(() => 'OK'), 'extra files', { extra });
      const before = await snapshot(t, m.mnt);

      const ex = await m.unmount();
      t.equal(ex.code, 0, 'the daemon exits 0 on SIGTERM', { stderr: m.output().stderr.slice(-4000) });
      t.notOk(isMounted(m.mnt), 'unmounted');
      expectExit(t, await run('ls', ['-A', m.mnt]), 'the mountpoint is a plain directory');

      await m.remount();
      sameLines(t, await snapshot(t, m.mnt), before, 'names, metadata and content are the same after remount');
      expectExit(t, await run('diff', ['-r', tree.root, `${m.mnt}/tree`], { timeout: 60_000 }), 'diff -r against the source');
      const [x] = await pyOps([['getxattr', `${m.mnt}/attrs`, 'user.kept']]);
      t.equal(x?.ok ? x.value : code(x), 'kept value', 'xattr kept');

      // and once more, after changes made on the second mount
      expectExit(t, await run('rm', ['-rf', `${m.mnt}/tree/d0`]), 'rm -rf a subtree');
      expectExit(t, await run('mv', [`${m.mnt}/tree/d1`, `${m.mnt}/d1-moved`]), 'mv a subtree');
      const before2 = await snapshot(t, m.mnt);
      const ex2 = await m.unmount();
      t.equal(ex2.code, 0, 'second unmount exits 0');
      await m.remount();
      sameLines(t, await snapshot(t, m.mnt), before2, 'deletes and renames survive too');
      t.equal((await m.unmount()).code, 0, 'third unmount exits 0');
    });

    t.test('fsynced data survives kill -9 of the daemon', async (t) => {
      const { store, dataDir } = await formatLocal(t);
      const m = await mountKvfs(t, { store, dataDir, driver });
      const mnt = m.mnt;
      // pre-existing, closed files that the script then changes and fsyncs
      const pre = bytes(400_000, 21);
      const cut = bytes(300_000, 22);
      writeFileSync(join(local, 'pre'), pre);
      writeFileSync(join(local, 'cut'), cut);
      expectExit(t, await run('cp', [join(local, 'pre'), join(local, 'cut'), `${mnt}/`]), 'cp the pre-existing files');

      const expectedBig = join(local, 'expected-big');
      const writer = start(PYTHON, [
        '-c',
        `import json, os, random, sys
mnt, expected = sys.argv[1], sys.argv[2]
def fsync_dir(p):
    fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY); os.fsync(fd); os.close(fd)
big = random.Random(5).randbytes(3_000_000)
open(expected, 'wb').write(big)
keep = []
fd = os.open(f'{mnt}/big.bin', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
v = memoryview(big)
while v:
    v = v[os.write(fd, v):]
os.fsync(fd); keep.append(fd)
fsync_dir(mnt)
os.mkdir(f'{mnt}/newdir'); fsync_dir(mnt)
fd = os.open(f'{mnt}/newdir/f', os.O_WRONLY | os.O_CREAT, 0o600)
os.write(fd, b'fsynced in a new directory\\n'); os.fsync(fd); keep.append(fd)
fsync_dir(f'{mnt}/newdir')
os.rename(f'{mnt}/newdir/f', f'{mnt}/newdir/renamed'); fsync_dir(f'{mnt}/newdir')
fd = os.open(f'{mnt}/pre', os.O_WRONLY)
os.pwrite(fd, b'Z' * 5000, 100_000); os.fsync(fd); keep.append(fd)
fd = os.open(f'{mnt}/cut', os.O_WRONLY)
os.ftruncate(fd, 1000); os.fsync(fd); keep.append(fd)
print('synced', flush=True)
sys.stdin.readline()   # hold every descriptor open while the daemon is killed
for fd in keep:
    try:
        os.close(fd)
    except OSError:
        pass`,
        mnt,
        expectedBig,
      ]);
      await writer.waitFor(/^synced$/, 60_000);
      const ex = await m.kill9();
      t.equal(ex.signal, 'SIGKILL', 'daemon killed with SIGKILL while the files are still open');
      writer.end();
      await writer.result;
      await cleanUpDeadMount(t, mnt, dataDir);

      await m.remount();
      const cmp = await run('cmp', [expectedBig, `${mnt}/big.bin`]);
      t.equal(cmp.code, 0, 'big.bin: all 3,000,000 fsynced bytes', { command: describe(cmp) });
      t.equal((await run('cat', [`${mnt}/newdir/renamed`])).stdout, 'fsynced in a new directory\n', 'file in a new directory, renamed');
      const gone = await pyOps([['stat', `${mnt}/newdir/f`], ['stat', `${mnt}/newdir/renamed`]]);
      t.equal(code(gone[0]), 'ENOENT', 'the old name of the renamed file is gone');
      t.equal(gone[1]?.ok && (gone[1].value as { mode: number }).mode & 0o7777, 0o600, 'its mode survived');
      const prePatched = Buffer.from(pre);
      prePatched.fill('Z', 100_000, 105_000);
      writeFileSync(join(local, 'pre-patched'), prePatched);
      const cmpPre = await run('cmp', [join(local, 'pre-patched'), `${mnt}/pre`]);
      t.equal(cmpPre.code, 0, 'overwrite in the middle of an existing file', { command: describe(cmpPre) });
      writeFileSync(join(local, 'cut-1000'), cut.subarray(0, 1000));
      const cmpCut = await run('cmp', [join(local, 'cut-1000'), `${mnt}/cut`]);
      t.equal(cmpCut.code, 0, 'ftruncate to 1000 bytes', { command: describe(cmpCut) });
      t.equal((await m.unmount()).code, 0, 'clean unmount afterwards');
    });

    t.test('closed files survive kill -9 of the daemon (DESIGN: close returns once data is durable)', async (t) => {
      const { store, dataDir } = await formatLocal(t);
      const m = await mountKvfs(t, { store, dataDir, driver });
      const data = bytes(2 * 1024 * 1024 + 3, 23);
      writeFileSync(join(local, 'closed'), data);
      expectExit(t, await run('mkdir', [`${m.mnt}/dir`]), 'mkdir');
      expectExit(t, await run('cp', [join(local, 'closed'), `${m.mnt}/dir/closed`]), 'cp (closes, no fsync)');
      expectExit(t, await bash('printf small > "$1"', [`${m.mnt}/dir/small`]), 'a small file');
      await m.kill9();
      await cleanUpDeadMount(t, m.mnt, dataDir);
      await m.remount();
      const cmp = await run('cmp', [join(local, 'closed'), `${m.mnt}/dir/closed`]);
      t.equal(cmp.code, 0, 'the closed 2 MiB file is complete', { command: describe(cmp) });
      t.equal((await run('cat', [`${m.mnt}/dir/small`])).stdout, 'small', 'the small file too');
      t.equal((await m.unmount()).code, 0, 'clean unmount afterwards');
    });

    t.test('after kill -9: ENOTCONN, kvfs umount cleans up, a new mount on the same mountpoint works', async (t) => {
      const m = await mountKvfs(t, { driver });
      expectExit(t, await bash('printf hello > "$1"/f', [m.mnt]), 'write a file');
      const oldPid = m.pid;
      await m.kill9();
      t.ok(isMounted(m.mnt), 'the dead mount is still listed until cleaned up');
      await cleanUpDeadMount(t, m.mnt, m.dataDir);
      await m.remount();
      t.not(m.pid, oldPid, 'a new daemon');
      t.equal((await run('ls', ['-A', m.mnt])).stdout, '', 'a fresh memory: volume is empty');
      expectExit(t, await bash('printf again > "$1"/g && cat "$1"/g', [m.mnt]), 'write and read on the new mount');
      t.equal((await run('cat', [`${m.mnt}/g`])).stdout, 'again', 'content');
      t.equal((await m.unmount()).code, 0, 'clean unmount afterwards');
    });
  });
}
