/**
 * Every bad input of the CLI contract: one line on stderr starting with "kvfs: ", a non-zero exit, and nothing
 * created or damaged (no store directory, no default volume in KVFS_DATA_DIR, no mount, no daemon left behind,
 * the mountpoint and the store exactly as they were).
 */
import t from 'tap';
import type { Test } from 'tap';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expectCliError, expectExit } from '../helpers/assert.js';
import {
  cliScene,
  isMounted,
  kvfs,
  mountKvfs,
  mountsAt,
  processesMentioning,
  REPO,
  run,
  driverArgs as driverArgsFor,
  testDriver,
} from '../helpers/mount.js';
import { bumpFormatVersion, createEmptyStore, readVolumeRecord } from '../helpers/store.js';
import { snapshotDir } from '../helpers/tree.js';

t.setTimeout(170_000);

const driver = testDriver();
const driverArgs = driverArgsFor(driver);

/** runs a mount that must fail; a short timeout, since a wrongly successful foreground mount never returns */
function badMount(args: string[], dataDir: string) {
  return kvfs(['mount', ...args, ...driverArgs], { dataDir, timeout: 15_000 });
}

/** the mountpoint is not mounted, still as it was, and no daemon mentions it */
function expectUntouchedMountpoint(t: Test, mnt: string, before: string, what: string): void {
  t.notOk(isMounted(mnt), `${what}: nothing mounted on ${mnt}`, { mounts: mountsAt(mnt) });
  t.equal(snapshotDir(mnt), before, `${what}: the mountpoint is unchanged`);
  t.same(processesMentioning(mnt), [], `${what}: no process left for the mountpoint`);
}

t.test('format: a bad chunk size is refused and nothing is created', async (t) => {
  const { dataDir, base } = cliScene(t);
  const dataBefore = snapshotDir(dataDir);
  const bad = ['1000', '2048', '4097', '8191', '0', '3M', '128M', '134217728', 'abc', '1.5M', '256X', ''];
  for (const [i, cs] of bad.entries()) {
    const dir = join(base, `vol-${i}`);
    const r = await kvfs(['format', `local:${dir}`, '--chunk-size', cs], { dataDir });
    expectCliError(t, r, `format --chunk-size '${cs}'`, /chunk/i);
    t.notOk(existsSync(dir), `--chunk-size '${cs}': no store directory ${dir}`);
  }
  const r = await kvfs(['format', '--chunk-size', '1000'], { dataDir });
  expectCliError(t, r, 'format (default store) --chunk-size 1000', /chunk/i);
  t.equal(snapshotDir(dataDir), dataBefore, 'KVFS_DATA_DIR unchanged: no default store was created');
});

t.test('format: a store that already holds a volume is refused and left intact', async (t) => {
  const { dataDir, base } = cliScene(t);
  const url = `local:${join(base, 'vol')}`;
  expectExit(t, await kvfs(['format', url, '--name', 'first'], { dataDir }), 'first format');
  const before = await readVolumeRecord(url);
  expectExit(t, before, 'read the volume record');
  const r = await kvfs(['format', url, '--name', 'second'], { dataDir });
  expectCliError(t, r, 'format over an existing volume');
  const after = await readVolumeRecord(url);
  t.equal(after.stdout, before.stdout, 'the volume record is unchanged');
  t.match(after.stdout, /"name":"first"/, 'still the first volume');
});

t.test('unknown store URL scheme: format, mount and status refuse it', async (t) => {
  const { dataDir, mnt } = cliScene(t);
  for (const url of ['bogus://somewhere', 'nosuch:abc']) {
    const dataBefore = snapshotDir(dataDir);
    const mntBefore = snapshotDir(mnt);
    expectCliError(t, await kvfs(['format', url], { dataDir }), `format ${url}`, /scheme|store/i);
    expectCliError(t, await badMount([url, mnt], dataDir), `mount ${url}`, /scheme|store/i);
    expectCliError(t, await kvfs(['status', url], { dataDir }), `status ${url}`, /scheme|store/i);
    t.equal(snapshotDir(dataDir), dataBefore, `${url}: KVFS_DATA_DIR unchanged`);
    expectUntouchedMountpoint(t, mnt, mntBefore, url);
    for (const p of [join(REPO, url), join(REPO, url.split(':')[0]!), join(REPO, 'bogus:'), join(REPO, 'nosuch:abc')]) {
      t.notOk(existsSync(p), `nothing created at ${p}`);
    }
  }
});

t.test('mount: the mountpoint does not exist', async (t) => {
  const { dataDir, base } = cliScene(t);
  const missing = join(base, 'no', 'such', 'dir');
  expectCliError(t, await badMount(['memory:', missing], dataDir), 'mount memory: on a missing directory', /exist|no such/i);
  t.notOk(existsSync(join(base, 'no')), 'the missing mountpoint was not created');

  const url = `local:${join(base, 'vol')}`;
  expectExit(t, await kvfs(['format', url], { dataDir }), 'format a local store');
  const storeBefore = snapshotDir(join(base, 'vol'));
  expectCliError(t, await badMount([url, missing], dataDir), 'mount local: on a missing directory', /exist|no such/i);
  t.equal(snapshotDir(join(base, 'vol')), storeBefore, 'the store is unchanged');
  t.notOk(existsSync(join(base, 'no')), 'the missing mountpoint was not created');

  const dataBefore = snapshotDir(dataDir);
  expectCliError(t, await badMount([missing], dataDir), 'bare mount on a missing directory', /exist|no such/i);
  t.equal(snapshotDir(dataDir), dataBefore, 'no default volume was created in KVFS_DATA_DIR');
});

t.test('mount: no mountpoint given', async (t) => {
  const { dataDir } = cliScene(t);
  const dataBefore = snapshotDir(dataDir);
  expectCliError(t, await kvfs(['mount'], { dataDir, timeout: 15_000 }), 'mount without arguments');
  expectCliError(t, await badMount(['memory:'], dataDir), 'mount memory: without a mountpoint');
  t.notOk(existsSync(join(REPO, 'memory:')), 'no directory "memory:" created');
  t.equal(snapshotDir(dataDir), dataBefore, 'KVFS_DATA_DIR unchanged');
});

t.test('mount: the mountpoint is already mounted', async (t) => {
  const { dataDir } = cliScene(t);
  const m = await mountKvfs(t);
  expectExit(t, await run('sh', ['-c', 'printf first > "$1"/f', 'sh', m.mnt]), 'write into the first mount');
  const r = await badMount(['memory:', m.mnt], dataDir);
  expectCliError(t, r, 'a second mount on the same mountpoint', /mounted/i);
  t.equal(mountsAt(m.mnt).length, 1, 'still exactly one mount');
  t.ok(m.alive(), 'the first daemon is still running');
  t.equal((await run('cat', [`${m.mnt}/f`])).stdout, 'first', 'the first mount still serves its data');
  t.equal((await m.unmount()).code, 0, 'the first mount unmounts cleanly');
});

t.test('mount: a non-empty mountpoint is refused unless --nonempty', async (t) => {
  const { dataDir, mnt } = cliScene(t);
  writeFileSync(join(mnt, 'keep.txt'), 'underneath');
  const before = snapshotDir(mnt);
  expectCliError(t, await badMount(['memory:', mnt], dataDir), 'mount on a non-empty directory', /empty/i);
  expectUntouchedMountpoint(t, mnt, before, 'non-empty');

  const m = await mountKvfs(t, { mnt, dataDir, args: ['--nonempty'] });
  t.equal((await run('ls', ['-A', m.mnt])).stdout, '', 'with --nonempty: mounted over the contents');
  t.equal((await m.unmount()).code, 0, 'unmounts cleanly');
  t.equal(snapshotDir(mnt), before, 'the contents underneath are untouched');
});

t.test('mount and status: a local: store that was never formatted', async (t) => {
  const { dataDir, base, mnt } = cliScene(t);
  const mntBefore = snapshotDir(mnt);

  const never = join(base, 'never');
  expectCliError(t, await badMount([`local:${never}`, mnt], dataDir), 'mount a local: path that does not exist', /volume|format/i);
  expectCliError(t, await kvfs(['status', `local:${never}`], { dataDir }), 'status of a local: path that does not exist', /volume|format/i);
  t.notOk(existsSync(never), 'the store directory was not created');

  const empty = join(base, 'empty');
  mkdirSync(empty);
  writeFileSync(join(empty, 'unrelated.txt'), 'not a store');
  const emptyBefore = snapshotDir(empty);
  expectCliError(t, await badMount([`local:${empty}`, mnt], dataDir), 'mount a directory with no store in it', /volume|format/i);
  expectCliError(t, await kvfs(['status', `local:${empty}`], { dataDir }), 'status of a directory with no store in it', /volume|format/i);
  t.equal(snapshotDir(empty), emptyBefore, 'the directory is exactly as it was');

  const bare = join(base, 'bare');
  const mk = await createEmptyStore(`local:${bare}`);
  expectExit(t, mk, 'create an LMDB store without a volume');
  const bareBefore = snapshotDir(bare);
  expectCliError(t, await badMount([`local:${bare}`, mnt], dataDir), 'mount an LMDB store without a volume', /volume|format/i);
  t.equal((await readVolumeRecord(`local:${bare}`)).stdout.trim(), 'none', 'no volume was written into it');
  t.equal(
    snapshotDir(bare).split('\n').filter((l) => l.startsWith('data.mdb')).join(),
    bareBefore.split('\n').filter((l) => l.startsWith('data.mdb')).join(),
    'its data file is unchanged',
  );
  expectUntouchedMountpoint(t, mnt, mntBefore, 'unformatted stores');
});

t.test('mount: a volume of a newer format version', async (t) => {
  const { dataDir, base, mnt } = cliScene(t);
  const url = `local:${join(base, 'vol')}`;
  expectExit(t, await kvfs(['format', url, '--name', 'future'], { dataDir }), 'format');
  const bump = await bumpFormatVersion(url);
  expectExit(t, bump, 'rewrite the volume record with a newer format version');
  const record = (await readVolumeRecord(url)).stdout;
  const dataMdb = () => snapshotDir(join(base, 'vol')).split('\n').filter((l) => l.startsWith('data.mdb')).join();
  const before = dataMdb();
  const mntBefore = snapshotDir(mnt);
  expectCliError(t, await badMount([url, mnt], dataDir), 'mount a newer volume', /version|newer|upgrade/i);
  expectUntouchedMountpoint(t, mnt, mntBefore, 'newer volume');
  t.equal(dataMdb(), before, 'the store data file is unchanged');
  t.equal((await readVolumeRecord(url)).stdout, record, 'the volume record is unchanged');
});

t.test('umount: a path that is not mounted', async (t) => {
  const { dataDir, mnt } = cliScene(t);
  const before = snapshotDir(mnt);
  expectCliError(t, await kvfs(['umount', mnt], { dataDir }), 'umount of a plain directory', /not mounted/i);
  expectCliError(t, await kvfs(['umount', join(mnt, 'missing')], { dataDir }), 'umount of a missing path');
  t.equal(snapshotDir(mnt), before, 'the directory is unchanged');
});

t.test('unknown commands and options', async (t) => {
  const { dataDir, mnt } = cliScene(t);
  const before = snapshotDir(mnt);
  expectCliError(t, await kvfs(['frobnicate'], { dataDir }), 'an unknown command');
  expectCliError(t, await kvfs([], { dataDir }), 'no command at all');
  expectCliError(t, await badMount(['memory:', mnt, '--no-such-flag'], dataDir), 'mount with an unknown option');
  expectCliError(t, await badMount(['memory:', mnt, '--driver', 'no-such-driver'], dataDir), 'mount with an unknown driver', /driver/i);
  expectUntouchedMountpoint(t, mnt, before, 'unknown options');
});

t.test('mount: option values out of range are refused before anything is mounted', async (t) => {
  const { dataDir, mnt } = cliScene(t);
  const before = snapshotDir(mnt);
  const dataBefore = snapshotDir(dataDir);
  const cases: [string[], RegExp][] = [
    [['--buffer-pool-mb', '1'], /buffer-pool-mb/],
    [['--buffer-pool-mb', 'lots'], /buffer-pool-mb/],
    [['--readers', '0'], /readers/],
    [['--readers', '1.5'], /readers/],
    [['--spin-us', '-1'], /bad --spin-us -1: give a number from 0 to 10000/],
    [['--spin-us', '20000'], /bad --spin-us 20000/],
    [['--spin-us', 'often'], /bad --spin-us: not a number/],
    [['--cache-mb', '-5'], /cache-mb/],
    [['--write-buffer-mb', '0'], /write-buffer-mb/],
    [['--attr-timeout', '-1'], /attr-timeout/],
    [['--request-timeout', 'soon'], /request-timeout/],
    [['--session-ttl', '1'], /bad --session-ttl 1: give a number from 3 to 86400/],
    [['--session-ttl', 'forever'], /bad --session-ttl: not a number/],
    [['--chunk-size', '3000'], /chunk size/],
  ];
  for (const [args, msg] of cases) {
    expectCliError(t, await badMount([mnt, ...args], dataDir), `mount ${args.join(' ')}`, msg);
  }
  expectUntouchedMountpoint(t, mnt, before, 'bad option values');
  t.equal(snapshotDir(dataDir), dataBefore, 'no default volume was created in KVFS_DATA_DIR');
});
