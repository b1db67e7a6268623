/**
 * Times the libfuse driver cannot carry (doc/SEMANTICS.md, "The libfuse driver"): fuse-native carries unsigned
 * milliseconds, so a time set before 1970 or past 2^53-1 ms is clamped to the nearest end (stat shows
 * 1970-01-01 00:00:00, never a year like 584556009), and a stored time outside the range reads clamped and
 * stays in the store as it was. The native driver carries signed seconds and keeps 1960 exactly. One local:
 * store, mounted by the native driver, then libfuse, then native again.
 */
import t from 'tap';
import type { Test } from 'tap';
import { expectExit } from '../helpers/assert.js';
import { kvfs, mountKvfs, run, tempDir, type Mounted } from '../helpers/mount.js';

t.setTimeout(120_000);

const Y1960 = '1960-01-01 00:00:00 UTC';
/** 2^53-1 ms in whole seconds: the largest time the libfuse driver shows */
const MAX_SEC = '9007199254740';

async function stat(t: Test, fmt: string, path: string): Promise<string> {
  const r = await run('stat', ['-c', fmt, path], { env: { TZ: 'UTC' } });
  expectExit(t, r, `stat -c ${fmt} ${path}`);
  return r.stdout.trim();
}

const touch = (t: Test, when: string, path: string) => run('touch', ['-d', when, path]).then((r) => expectExit(t, r, `touch -d '${when}' ${path}`));

t.test('times outside what fuse-native carries: clamped on the libfuse driver, exact on the native one', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const store = `local:${dataDir}/vol`;
  expectExit(t, await kvfs(['format', store], { dataDir }), 'format');
  const mount = (driver: string): Promise<Mounted> => mountKvfs(t, { driver, store, dataDir });

  let m = await mount('default');
  expectExit(t, await run('sh', ['-c', 'echo a > "$1"/native-1960 && echo b > "$1"/libfuse-1960 && echo c > "$1"/libfuse-future', 'sh', m.mnt]), 'files');
  await touch(t, Y1960, `${m.mnt}/native-1960`);
  t.equal(await stat(t, '%Y|%X', `${m.mnt}/native-1960`), '-315619200|-315619200', 'native driver: 1960 exactly');
  t.equal((await m.unmount()).code, 0, 'unmount');

  m = await mount('libfuse');
  t.equal(await stat(t, '%Y|%y', `${m.mnt}/native-1960`), '0|1970-01-01 00:00:00.000000000 +0000',
    'libfuse driver: a stored 1960 reads as 1970-01-01 00:00:00');
  await touch(t, Y1960, `${m.mnt}/libfuse-1960`);
  t.equal(await stat(t, '%Y|%X|%y', `${m.mnt}/libfuse-1960`), '0|0|1970-01-01 00:00:00.000000000 +0000',
    'libfuse driver: touch -d 1960 succeeds and sets 1970-01-01 00:00:00');
  await touch(t, '@99999999999999', `${m.mnt}/libfuse-future`);
  t.equal(await stat(t, '%Y', `${m.mnt}/libfuse-future`), MAX_SEC, 'libfuse driver: a time past 2^53-1 ms is clamped to it');
  await touch(t, '2001-02-03 04:05:06.123 UTC', `${m.mnt}/libfuse-future`);
  t.equal(await stat(t, '%.3Y', `${m.mnt}/libfuse-future`), '981173106.123', 'a time in range is kept to the millisecond');
  const utime = await run('python3', ['-c', 'import os, sys; os.utime(sys.argv[1], (1000, 2000))', `${m.mnt}/libfuse-future`]);
  expectExit(t, utime, 'utime: atime 1000, mtime 2000');
  t.equal(await stat(t, '%X|%Y', `${m.mnt}/libfuse-future`), '1000|2000', 'atime and mtime set to different times',
    { todo: 'libfuse 2 driver: fuse-native hands over the atime in the mtime\'s place' });
  t.equal((await m.unmount()).code, 0, 'unmount');

  m = await mount('default');
  t.equal(await stat(t, '%Y', `${m.mnt}/native-1960`), '-315619200', 'the stored 1960 was kept (reading through libfuse changed nothing)');
  t.equal(await stat(t, '%Y', `${m.mnt}/libfuse-1960`), '0', 'what the libfuse driver set is the clamped time');
  t.equal((await m.unmount()).code, 0, 'unmount');
});
