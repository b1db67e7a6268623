/**
 * The kernel's name and attribute cache on single-mount stores (native-driver.ts, SINGLE_MOUNT_CACHE_SECONDS):
 * on a local or memory store every change passes through this kernel, so names and attributes are kept an
 * hour by default and a stat of a known name never reaches the daemon, even long after the 1 s of a shared
 * store. What the kernel cannot see is pushed to it: a commit that changes a file's stored bytes drops the
 * kernel's copy of its attributes, so st_blocks (du) is right after a close. `--entry-timeout 0
 * --attr-timeout 0` still sends every stat to the daemon. Requests are counted from the daemon's stats.
 */
import t from 'tap';
import type { Test } from 'tap';
import { join } from 'node:path';
import { expectExit } from '../helpers/assert.js';
import { kvfs, mountKvfs, PYTHON, run, tempDir } from '../helpers/mount.js';
import { daemonStats } from '../../bin/diag.js';

t.setTimeout(120_000);

interface Stats { session: { byOp: Record<string, number> } }

/** LOOKUP and GETATTR requests the daemon has answered so far */
async function metaRequests(mnt: string): Promise<number> {
  const s = (await daemonStats(mnt)) as unknown as Stats;
  return (s.session.byOp.LOOKUP ?? 0) + (s.session.byOp.GETATTR ?? 0);
}

const STAT_ALL = String.raw`
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n): os.stat(os.path.join(d, f"f{i}"))
`;
const CREATE_ALL = String.raw`
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n): open(os.path.join(d, f"f{i}"), "w").close()
`;

async function scene(t: Test, args: string[]) {
  const dir = tempDir(t, 'kvfs-test-attrcache-');
  const url = `local:${join(dir, 'volume')}`;
  expectExit(t, await kvfs(['format', url], { dataDir: dir }), 'format');
  const m = await mountKvfs(t, { driver: 'default', store: url, args });
  return { m };
}

t.test('local store, default timeouts: stats of known names stay in the kernel past 1 s', async (t) => {
  const { m } = await scene(t, []);
  const N = 300;
  expectExit(t, await run(PYTHON, ['-c', CREATE_ALL, m.mnt, String(N)]), `create ${N} files`);
  expectExit(t, await run(PYTHON, ['-c', STAT_ALL, m.mnt, String(N)]), 'stat them once');
  await new Promise((r) => setTimeout(r, 2500));
  const before = await metaRequests(m.mnt);
  expectExit(t, await run(PYTHON, ['-c', STAT_ALL, m.mnt, String(N)]), 'stat them again 2.5 s later');
  const after = await metaRequests(m.mnt);
  t.ok(after - before < 10, `LOOKUP + GETATTR requests for ${N} stats 2.5 s later: ${after - before} (the kernel answered)`);
  t.equal((await m.unmount()).code, 0, 'unmount');
});

t.test('local store: st_blocks is right after a commit that changed it, within the cache time', async (t) => {
  const { m } = await scene(t, []);
  // 4 KiB at 1 MiB of a new file: while dirty, st_blocks counts the whole write-back chunk; once committed,
  // only the 4 KiB stored. The kernel cached the first answer; the commit at close must drop it.
  const py = String.raw`
import os, sys
p = sys.argv[1]
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(fd, b"x" * 4096, 1 << 20)
print(os.fstat(fd).st_blocks)
os.close(fd)
print(os.stat(p).st_blocks)
`;
  const r = await run(PYTHON, ['-c', py, join(m.mnt, 'sparse')]);
  expectExit(t, r, 'write, stat, close, stat');
  const [open, closed] = r.stdout.trim().split('\n').map(Number);
  t.ok(open! >= 8, `st_blocks while open: ${open}`);
  t.equal(closed, 8, 'st_blocks after the close: 4 KiB stored (8 blocks of 512)');
  const du = await run('du', ['-B1', join(m.mnt, 'sparse')]);
  expectExit(t, du, 'du');
  t.match(du.stdout, /^4096\s/, `du after the close: ${du.stdout.trim()}`);
  t.equal((await m.unmount()).code, 0, 'unmount');
});

t.test('local store, --entry-timeout 0 --attr-timeout 0: every stat reaches the daemon', async (t) => {
  const { m } = await scene(t, ['--entry-timeout', '0', '--attr-timeout', '0']);
  const N = 100;
  expectExit(t, await run(PYTHON, ['-c', CREATE_ALL, m.mnt, String(N)]), `create ${N} files`);
  const before = await metaRequests(m.mnt);
  expectExit(t, await run(PYTHON, ['-c', STAT_ALL, m.mnt, String(N)]), 'stat them');
  const after = await metaRequests(m.mnt);
  t.ok(after - before >= N, `LOOKUP + GETATTR requests for ${N} stats: ${after - before}`);
  t.equal((await m.unmount()).code, 0, 'unmount');
});
