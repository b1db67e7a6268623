/**
 * Churn on the default store (issue 12): a file rewritten in place, random 4 KiB writes to it with an fsync every
 * 64 (slices and their compaction), and a second file written and deleted, round after round through one mount
 * of a local: volume. After each round, once the daemon has collected what the round freed, the store's size
 * on disk is taken: it must not grow round after round (blobs replaced by rewrites, slices and compaction, and
 * deleted files are all collected), and the file must read back as written at the end. The write rates are
 * printed for each round, not asserted (timing is the bench's: `npm run bench:churn` runs the same for
 * minutes on bigger files).
 */
import t from 'tap';
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expectExit } from '../helpers/assert.js';
import { kvfs, mountKvfs, PYTHON, run, tempDir } from '../helpers/mount.js';

t.setTimeout(300_000);

const MIB = 1 << 20;
const FILE_MIB = 64;
const ROUNDS = 8;

/** rewrites the file in place from src (1 MiB writes, fsync), then random 4 KiB writes (fsync every 64), keeping src the same */
const ROUND = String.raw`
import os, random, sys, time
path, src, seed, writes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = bytearray(open(src, "rb").read())
rng = random.Random(seed)
t0 = time.time()
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
for off in range(0, len(data), 1 << 20): os.pwrite(fd, data[off:off + (1 << 20)], off)
os.fsync(fd)
t1 = time.time()
for i in range(writes):
    off = rng.randrange(0, len(data) // 4096) * 4096
    page = rng.randbytes(4096)
    os.pwrite(fd, page, off)
    data[off:off + 4096] = page
    if i % 64 == 63: os.fsync(fd)
os.fsync(fd)
t2 = time.time()
os.close(fd)
open(src, "wb").write(data)
print(f"{len(data) / (t1 - t0) / 1e6:.1f} {writes / (t2 - t1):.0f}")
`;

function duBytes(dir: string): Promise<number> {
  return run('du', ['-sk', dir]).then((r) => Number(r.stdout.split(/\s/)[0]) * 1024);
}

/** the store's size once it stops changing (the janitor collected what was freed): stable for 1.5 s, or after 30 s */
async function settledSize(dir: string): Promise<number> {
  let last = await duBytes(dir);
  let since = Date.now();
  const end = Date.now() + 30_000;
  while (Date.now() < end) {
    await new Promise((r) => setTimeout(r, 300));
    const now = await duBytes(dir);
    if (now !== last) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since >= 1500) {
      break;
    }
  }
  return last;
}

t.test(`churn on a local store: ${ROUNDS} rounds of rewrites, random writes and deletes; the store does not grow`, async (t) => {
  const dir = tempDir(t, 'kvfs-test-churn-');
  const storeDir = join(dir, 'volume');
  const url = `local:${storeDir}`;
  expectExit(t, await kvfs(['format', url], { dataDir: dir }), 'format');
  const m = await mountKvfs(t, { driver: 'default', store: url });
  const src = join(dir, 'src');
  writeFileSync(src, Buffer.alloc(FILE_MIB * MIB, 0x5a));
  const file = join(m.mnt, 'churned');
  const sizes: number[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const r = await run(PYTHON, ['-c', ROUND, file, src, String(round), '3000'], { timeout: 120_000 });
    expectExit(t, r, `round ${round}: rewrite, 3,000 random 4 KiB writes`);
    const [seq, rand] = r.stdout.trim().split(' ');
    const other = join(m.mnt, 'other');
    expectExit(t, await run('dd', ['if=/dev/zero', `of=${other}`, 'bs=1M', 'count=32', 'conv=fsync', 'status=none']), `round ${round}: a 32 MiB file written`);
    expectExit(t, await run('rm', [other]), `round ${round}: and deleted`);
    sizes.push(await settledSize(storeDir));
    t.comment(`round ${round}: rewrite ${seq} MB/s, random 4 KiB writes ${rand}/s, store ${(sizes.at(-1)! / MIB).toFixed(1)} MiB`);
  }
  // From round 2 on, chunks carry slices and compaction runs: that is the steady state.
  const steady = sizes[1]!;
  const most = Math.max(...sizes.slice(2));
  t.ok(most <= steady * 1.15 + 8 * MIB, `the store stays within 15% of its size after round 2 (${(steady / MIB).toFixed(1)} MiB): at most ${(most / MIB).toFixed(1)} MiB`);
  t.ok(sizes.at(-1)! <= 3 * FILE_MIB * MIB, `the store holds at most 3x the live data at the end: ${(sizes.at(-1)! / MIB).toFixed(1)} MiB for ${FILE_MIB} MiB`);
  const back = await run('cmp', [src, file]);
  expectExit(t, back, 'the file reads back as written (cmp)');
  t.equal(statSync(file).size, FILE_MIB * MIB, 'its size');
  t.equal((await m.unmount()).code, 0, 'unmount');
});
