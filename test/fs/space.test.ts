/**
 * statfs arithmetic for a volume (src/volume/space.ts): pure.
 */
import t from 'tap';
import { STATFS_BLOCK, UNKNOWN_FREE, volumeSpace } from '../../src/volume/space.js';

const MiB = 1 << 20;
const B = STATFS_BLOCK;

t.test('LMDB: total is the store capacity, used the volume\'s bytes in blocks, available what the store can take', async (t) => {
  const used = 3 * MiB + 5;
  const s = volumeSpace(used, { capacityBytes: 10 * MiB, freeBytes: 6 * MiB });
  t.equal(s.blocks, (10 * MiB) / B, 'total: the capacity');
  t.equal(s.blocks - s.bfree, Math.ceil(used / B), 'used: the volume\'s bytes, rounded up to a block');
  t.equal(s.bavail, (6 * MiB) / B, 'available: what the store can still take (less than total - used)');
});

t.test('available is never more than total - used, even when the store says more', async (t) => {
  const s = volumeSpace(9 * MiB, { capacityBytes: 10 * MiB, freeBytes: 8 * MiB });
  t.equal(s.bfree, MiB / B);
  t.equal(s.bavail, MiB / B);
});

t.test('Redis: a store shared by volumes: available is the store\'s free, total its capacity', async (t) => {
  const s = volumeSpace(5 * MiB, { capacityBytes: 96 * MiB, freeBytes: 10 * MiB });
  t.equal(s.blocks, (96 * MiB) / B);
  t.equal(s.blocks - s.bfree, (5 * MiB) / B, 'used: this volume only');
  t.equal(s.bavail, (10 * MiB) / B);
});

t.test('a store with no capacity it can tell (memory:): total = used + what it says is free', async (t) => {
  const s = volumeSpace(MiB, { freeBytes: 100 * MiB });
  t.equal(s.blocks, (101 * MiB) / B);
  t.equal(s.bfree, (100 * MiB) / B);
  t.equal(s.bavail, (100 * MiB) / B);
  const u = volumeSpace(MiB, {});
  t.equal(u.bavail, UNKNOWN_FREE / B, 'neither known: UNKNOWN_FREE');
  t.equal(u.blocks, (MiB + UNKNOWN_FREE) / B);
});

t.test('used beyond the capacity: total is used, nothing free', async (t) => {
  const s = volumeSpace(12 * MiB, { capacityBytes: 10 * MiB, freeBytes: 0 });
  t.equal(s.blocks, (12 * MiB) / B);
  t.equal(s.bfree, 0);
  t.equal(s.bavail, 0);
});

t.test('a limit of the volume\'s own caps the total', async (t) => {
  const s = volumeSpace(MiB, { capacityBytes: 10 * MiB, freeBytes: 9 * MiB }, 4 * MiB);
  t.equal(s.blocks, (4 * MiB) / B);
  t.equal(s.bfree, (3 * MiB) / B);
  t.equal(s.bavail, (3 * MiB) / B);
  t.equal(volumeSpace(MiB, {}, 4 * MiB).blocks, (4 * MiB) / B, 'also when the store cannot tell its own');
});

t.test('a negative counter (a crash lost a decrement) counts as 0', async (t) => {
  const s = volumeSpace(-4096, { capacityBytes: 10 * MiB, freeBytes: 10 * MiB });
  t.equal(s.bfree, s.blocks);
});

t.test('invariants over many cases: bavail <= bfree <= blocks, all whole and not negative', async (t) => {
  let seed = 7;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return Math.floor((seed / 2 ** 31) * n);
  };
  let bad = 0;
  for (let i = 0; i < 2000; i++) {
    const pick = (n: number) => (rnd(4) === 0 ? undefined : rnd(n));
    const s = volumeSpace(rnd(64 * MiB), { capacityBytes: pick(64 * MiB), freeBytes: pick(64 * MiB) }, pick(64 * MiB));
    const ok = [s.blocks, s.bfree, s.bavail].every((x) => Number.isInteger(x) && x >= 0) && s.bavail <= s.bfree && s.bfree <= s.blocks;
    if (!ok) bad++;
  }
  t.equal(bad, 0, 'no case breaks them');
});
