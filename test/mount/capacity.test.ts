/**
 * A volume's quota (src/volume/limits.ts): `kvfs format --capacity SIZE --inodes N`, `kvfs config STORE ...`.
 * Through a real mount, on LMDB and on a real 3-master Redis Cluster:
 *  - df shows the capacity as the size, the volume's bytes as used;
 *  - files written (and fsynced) until a call fails: the failure is ENOSPC, never EIO; the daemon logs one line
 *    naming the quota and the command that raises it; every file written before reads back intact;
 *  - after rm, once the blobs are collected, writes succeed again;
 *  - `kvfs config` raises the quota under the live mount: df and writes follow within seconds;
 *  - the inode limit: creating past it is ENOSPC, and `--inodes none` lifts it;
 *  - bad input to format and config: a one-line error, nothing written.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { expectCliError, expectExit } from '../helpers/assert.js';
import { df, fillFiles, sha256sums } from '../helpers/fill.js';
import { kvfs, mountKvfs, PYTHON, run, tempDir, type Mounted } from '../helpers/mount.js';
import { RedisCluster, redisAvailable } from '../helpers/redis-cluster.js';

t.setTimeout(240_000);

const MiB = 1 << 20;
const ENOSPC = 28;
const NO_PW = { KVFS_REDIS_PASSWORD: undefined, KVFS_REDIS_PASSWORD_FILE: undefined };

/** polls cond (a check in child processes) every 250 ms until it holds; false after ms */
async function until(cond: () => Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** the quota claims on one mount of a volume formatted with --capacity 8M --inodes 64 */
async function quotaClaims(t: Test, m: Mounted, url: string, dataDir: string, env: Record<string, string | undefined> = {}): Promise<void> {
  const d0 = await df(t, m.mnt);
  t.equal(d0.size, 8 * MiB, 'df: the size is the capacity, 8 MiB');
  t.ok(d0.used < 64 * 1024, `df: next to nothing used yet (${d0.used})`);

  // 1.5 MiB files, fsynced, until a call fails: 8 MiB holds five of them, not six
  const filled = await fillFiles(t, m.mnt, 'f', 1.5 * MiB, 12);
  const ok = filled.filter((f) => !Object.keys(f.errs).length);
  const bad = filled.find((f) => Object.keys(f.errs).length);
  t.equal(ok.length, 5, 'five 1.5 MiB files fit in 8 MiB', { files: filled.map((f) => ({ path: f.path, errs: f.errs })) });
  t.ok(bad && Object.values(bad.errs).every((e) => e === ENOSPC), 'the call that failed failed with ENOSPC', { errs: bad?.errs });
  t.ok(bad && (bad.errs.write === ENOSPC || bad.errs.fsync === ENOSPC), 'write or fsync says ENOSPC: fsync never claims the data stored', { errs: bad?.errs });
  const lines = () => m.output().stderr.split('\n').filter((l) => /capacity of 8\.0 MiB is reached/.test(l));
  t.equal(lines().length, 1, 'the daemon logged one line for it', { lines: lines() });
  t.match(lines()[0] ?? '', new RegExp(`kvfs config ${url.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} --capacity SIZE`), 'it names the command that raises the quota');
  const d1 = await df(t, m.mnt);
  t.ok(d1.used >= 7.5 * MiB && d1.used <= 8 * MiB, `df: used ${d1.used} is what the files hold (7.5 MiB) and within the capacity`);
  const sums = await sha256sums(t, ok.map((f) => f.path));
  t.same(ok.filter((f) => sums.get(f.path) !== f.sha).map((f) => f.path), [], 'every file written before reads back intact');

  // rm: once its blobs are collected, the room is there again
  expectExit(t, await run('rm', [ok[0]!.path, ok[1]!.path]), 'rm two files');
  const freed = await until(async () => (await df(t, m.mnt)).used <= 4.5 * MiB + 4096, 10_000);
  t.ok(freed, 'df: the space of the deleted files is free again within 10 s');
  const again = await fillFiles(t, m.mnt, 'g', 1.5 * MiB, 2);
  t.same(again.map((f) => f.errs), [{}, {}], 'two 1.5 MiB files fit again after rm');

  // kvfs config raises the quota under the live mount
  const cfg = await kvfs(['config', url, '--capacity', '16M'], { dataDir, env, timeout: 30_000 });
  expectExit(t, cfg, 'kvfs config --capacity 16M while mounted');
  t.match(cfg.stdout, /capacity 16\.0 MiB/, 'config prints the new capacity');
  const raised = await until(async () => (await df(t, m.mnt)).size === 16 * MiB, 10_000);
  t.ok(raised, 'df shows 16 MiB within 10 s');
  const more = await fillFiles(t, m.mnt, 'h', 1.5 * MiB, 3);
  t.same(more.map((f) => f.errs), [{}, {}, {}], 'writes past the old quota succeed');

  // the inode limit: 64 (the root, the files so far, and these)
  const touch = await run(PYTHON, ['-c', String.raw`
import json, os, sys
made, err = 0, None
for i in range(200):
    try:
        os.close(os.open(os.path.join(sys.argv[1], "e%03d" % i), os.O_CREAT | os.O_WRONLY, 0o644)); made += 1
    except OSError as e:
        err = e.errno; break
print(json.dumps({"made": made, "err": err}))`, m.mnt], { timeout: 60_000 });
  expectExit(t, touch, 'create empty files until one fails');
  const r = JSON.parse(touch.stdout || '{}') as { made: number; err: number | null };
  t.equal(r.err, ENOSPC, `creating past the inode limit is ENOSPC (after ${r.made} files)`);
  const d2 = await run('df', ['--output=itotal', m.mnt]);
  t.match(d2.stdout, /\b64\b/, 'df: the inode limit is the inode total', { out: d2.stdout });
  expectExit(t, await kvfs(['config', url, '--inodes', 'none'], { dataDir, env, timeout: 30_000 }), 'kvfs config --inodes none');
  const lifted = await until(async () => (await run('touch', [join(m.mnt, 'after-limit')])).code === 0, 10_000);
  t.ok(lifted, 'a new file can be made within 10 s of lifting the limit');
}

t.test('a quota on the local (LMDB) store', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-cap-');
  const url = `local:${join(dataDir, 'vol')}`;
  const f = await kvfs(['format', url, '--capacity', '8M', '--inodes', '64'], { dataDir });
  expectExit(t, f, 'kvfs format --capacity 8M --inodes 64');
  t.match(f.stdout, /capacity 8\.0 MiB, at most 64 inodes/, 'format says the quota');
  const m = await mountKvfs(t, { store: url, dataDir });
  await quotaClaims(t, m, url, dataDir);
  await m.unmount();
  const st = await kvfs(['status', url], { dataDir });
  expectExit(t, st, 'kvfs status');
  t.match(st.stdout, /capacity:\s+16777216/, 'status shows the capacity');
});

t.test('a quota on a 3-master Redis Cluster', { skip: redisAvailable() ?? false }, async (t) => {
  const cluster = await RedisCluster.start(t, { masters: 3 });
  const url = cluster.url('quota');
  const dataDir = tempDir(t, 'kvfs-test-cap-');
  expectExit(t, await kvfs(['format', url, '--capacity', '8M', '--inodes', '64'], { dataDir, env: NO_PW }), 'kvfs format --capacity 8M --inodes 64');
  const m = await mountKvfs(t, { store: url, dataDir, env: NO_PW });
  await quotaClaims(t, m, url, dataDir, NO_PW);
  await m.unmount();
});

t.test('bad quotas: a one-line error, and nothing written', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-cap-');
  const url = `local:${join(dataDir, 'vol')}`;
  expectCliError(t, await kvfs(['format', url, '--capacity', 'lots'], { dataDir }), 'format --capacity lots', /bad capacity 'lots'/);
  expectCliError(t, await kvfs(['format', url, '--capacity', '64K'], { dataDir }), 'format --capacity 64K', /at least 1M/);
  expectCliError(t, await kvfs(['format', url, '--inodes', 'many'], { dataDir }), 'format --inodes many', /bad inode limit 'many'/);
  expectCliError(t, await kvfs(['config', url, '--capacity', '1G'], { dataDir }), 'config of a store with no volume', /holds no kvfs volume/);
  expectExit(t, await kvfs(['format', url], { dataDir }), 'format without a quota');
  expectCliError(t, await kvfs(['config', url, '--capacity', '1.5G'], { dataDir }), 'config --capacity 1.5G', /bad capacity '1\.5G'/);
  expectCliError(t, await kvfs(['config', url, '--inodes', '5'], { dataDir }), 'config --inodes 5', /at least 16 inodes/);
  const shown = await kvfs(['config', url], { dataDir });
  expectExit(t, shown, 'config without changes shows the quota');
  t.match(shown.stdout, /capacity none .*inodes no limit/, 'no quota: none, no limit');
});
