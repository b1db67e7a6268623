/**
 * Space on the default LMDB store, through a real mount (src/backend/lmdb-space.ts, src/volume/space.ts).
 *
 *  A. statfs: `df` of an LMDB volume shows the volume's own bytes as used (not the host disk's), a total no
 *     larger than what the disk under the store can still give plus the store's file, and used drops after rm.
 *  B. A full store (the store on a 16 MiB tmpfs): files written with fsync until one fails. Each failing call is
 *     ENOSPC; the daemon logs exactly one line for the episode, naming the filesystem, its free bytes and what
 *     frees space, and nothing of LMDB's own (`mdb_page_spill error`, `Write error`); files written before are
 *     intact; after rm, writes succeed again; filling up again is a second episode: a second line.
 *
 * Needs root (to mount the tmpfs); the default driver only (the space rules are the store's).
 */
import { statfsSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { expectExit } from '../helpers/assert.js';
import { df, fillFiles, sha256sums, type Filled } from '../helpers/fill.js';
import { describe, kvfs, mountKvfs, run, tempDir, type Mounted } from '../helpers/mount.js';

t.setTimeout(170_000);

const MiB = 1 << 20;
const ENOSPC = 28;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** asserts each file reads back with its sha256 (sha256sum in a child process) */
async function intact(t: Test, files: { path: string; sha: string }[], what: string): Promise<void> {
  const got = await sha256sums(t, files.map((f) => f.path));
  for (const f of files) t.equal(got.get(f.path), f.sha, `${f.path} intact ${what}`);
}

t.test('A. statfs on LMDB: used is the volume\'s bytes, total what the store can hold, used drops after rm', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const url = `local:${dataDir}/vol`;
  expectExit(t, await kvfs(['format', url], { dataDir }), 'kvfs format');
  const m = await mountKvfs(t, { store: url, dataDir, driver: 'default' });
  const host = statfsSync(dataDir);
  const hostFree = host.bavail * host.bsize;
  const hostTotal = host.blocks * host.bsize;

  const df0 = await df(t, m.mnt);
  t.comment(`host filesystem: ${hostTotal} bytes, ${hostFree} free; df of the empty volume: ${JSON.stringify(df0)}`);
  t.equal(df0.used, 0, 'an empty volume uses 0 bytes');
  // total = the disk's free space + the store's file (a few pages): not the host disk's size
  t.ok(df0.size <= hostFree + 64 * MiB && df0.size > 0, `total ${df0.size} is what the disk under the store can give (${hostFree} free)`);
  t.ok(df0.avail <= df0.size - df0.used, `available ${df0.avail} <= total - used`);

  const N = 3 * MiB + 5;
  const [file] = await fillFiles(t, m.mnt, 'n', N, 1);
  t.same(file?.errs, {}, `a file of ${N} bytes written with fsync`);
  const df1 = await df(t, m.mnt);
  t.equal(df1.used, Math.ceil(N / 4096) * 4096, `df used is the file's ${N} bytes, in 4 KiB blocks (${df1.used})`);
  t.ok(df1.avail <= df1.size - df1.used, `available ${df1.avail} <= total - used`);

  expectExit(t, await run('rm', [file!.path]), 'rm the file');
  let df2 = await df(t, m.mnt);
  // the janitor collects the file's blobs in the background, within seconds
  for (let i = 0; i < 100 && df2.used > 0; i++) {
    await sleep(200);
    df2 = await df(t, m.mnt);
  }
  t.equal(df2.used, 0, `used drops to 0 after rm (${df2.used})`);
  t.equal((await m.unmount()).code, 0, 'the daemon exits cleanly');
});

t.test('B. a full LMDB store: ENOSPC, one clear log line per episode, nothing of LMDB\'s own, space back after rm', {
  skip: process.getuid?.() === 0 ? false : 'needs root (mounts a tmpfs)',
}, async (t) => {
  const small = tempDir(t, 'kvfs-test-small-');
  expectExit(t, await run('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', small]), 'mount a 16 MiB tmpfs');
  t.teardown(() => run('umount', ['-l', small]));
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const url = `local:${small}/store`;
  expectExit(t, await kvfs(['format', url], { dataDir }), 'kvfs format');
  const m: Mounted = await mountKvfs(t, { store: url, dataDir, driver: 'default' });
  const log = () => m.output().stderr;
  const fullLines = () => log().split('\n').filter((l) => /store full/.test(l));
  const lmdbLines = () => log().split('\n').filter((l) => /mdb_|Write error|double free|corruption/.test(l));
  const started = Date.now();

  // files written before the store fills up
  const before = await fillFiles(t, m.mnt, 'keep', 512 * 1024, 3);
  t.equal(before.filter((f) => !Object.keys(f.errs).length).length, 3, 'three files written before');

  // 1. fill until a call fails: ENOSPC, and one line naming the limit and what frees space
  const SIZE = MiB;
  const first = await fillFiles(t, m.mnt, 'f', SIZE, 40);
  const ok1 = first.filter((f) => !Object.keys(f.errs).length);
  const bad1 = first.find((f) => Object.keys(f.errs).length);
  t.ok(bad1, `a write failed after ${ok1.length} files of 1 MiB`);
  t.ok(ok1.length >= 4, `at least 4 MiB fit first (${ok1.length} files)`);
  t.ok(bad1 && Object.values(bad1.errs).every((e) => e === ENOSPC), 'every failed call failed with ENOSPC', { errs: bad1?.errs });
  const dd = await run('dd', ['if=/dev/zero', `of=${m.mnt}/dd-full`, 'bs=1M', 'count=4', 'conv=fsync'], { timeout: 60_000 });
  t.match(dd.stderr, /No space left on device/, 'dd on the full store: ENOSPC', { command: describe(dd) });
  let lines = fullLines();
  t.equal(lines.length, 1, 'one store-full line for the episode, however many calls failed', { stderr: log() });
  const line = lines[0] ?? '';
  t.comment(line);
  t.match(line, new RegExp(`the limit is the filesystem mounted at ${small} \\(\\d+ bytes\\)`), 'it names the filesystem holding the store');
  t.match(line, /it has \d+ bytes free/, 'with its free bytes');
  t.match(line, /deleting files on this volume/, 'and says that deleting files frees space');
  t.notMatch(line, /kvfs gc|short write|Input\/output/, 'no command that does not exist, no EIO wording');
  t.same(lmdbLines(), [], 'no mdb_page_spill (or other LMDB) lines in the log', { stderr: log() });
  const full = await df(t, m.mnt);
  t.ok(full.size <= 16 * MiB && full.avail < 2 * MiB, `df: total within the 16 MiB tmpfs, nearly nothing available (${JSON.stringify(full)})`);
  await intact(t, [...before, ...ok1], 'on the full store');

  // 2. rm frees space: a write succeeds again, and the files kept are intact
  const gone = ok1.slice(0, Math.ceil(ok1.length / 2));
  const kept = ok1.slice(gone.length);
  expectExit(t, await run('rm', ['-f', ...gone.map((f) => f.path), bad1?.path ?? '', `${m.mnt}/dd-full`]), 'rm on the full store');
  let back: Filled | undefined;
  for (let i = 0; i < 100 && !back; i++) {
    const p = (await fillFiles(t, m.mnt, `probe${i}-`, SIZE, 1))[0];
    if (p && !Object.keys(p.errs).length) back = p;
    else await sleep(300);
  }
  t.ok(back, 'a 1 MiB write with fsync succeeds again after the rm');
  t.equal(fullLines().length, 1, 'still one store-full line', { stderr: log() });

  // 3. fill again: a second episode, a second line
  const second = await fillFiles(t, m.mnt, 'g', SIZE, 40);
  const ok2 = second.filter((f) => !Object.keys(f.errs).length);
  const bad2 = second.find((f) => Object.keys(f.errs).length);
  t.ok(bad2 && Object.values(bad2.errs).every((e) => e === ENOSPC), `full again after ${ok2.length} files: ENOSPC`, { errs: bad2?.errs });
  lines = fullLines();
  // an episode that lasts repeats its line once a minute; this test takes seconds
  const minutes = Math.floor((Date.now() - started) / 60_000);
  t.ok(lines.length >= 2 && lines.length <= 2 + minutes, `a second line for the second episode (${lines.length} lines in ${minutes} min)`, { stderr: log() });
  t.same(lmdbLines(), [], 'still no LMDB lines in the log', { stderr: log() });

  const survivors = [...before, ...kept, ...(back ? [back] : []), ...ok2];
  await intact(t, survivors, 'after the second episode');
  await m.remount();
  await intact(t, survivors, 'after a remount');
  t.same(lmdbLines(), [], 'no LMDB lines after the remount');
  t.equal((await m.unmount()).code, 0, 'the daemon exits cleanly');
});
