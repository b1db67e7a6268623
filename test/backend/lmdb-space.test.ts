/**
 * The LMDB space gate's arithmetic and rules (src/backend/lmdb-space.ts), and the episodes of a full store
 * (FullEpisodes in src/backend/errors.ts): pure, with fake LMDB statistics and a fake disk.
 */
import t from 'tap';
import { FullEpisodes } from '../../src/backend/errors.js';
import {
  available,
  capacity,
  fits,
  FAST_MARGIN,
  growRoom,
  KEEP_FOR_FREES,
  kindOf,
  LmdbSpace,
  MIN_KEEP,
  mountPointOf,
  needOf,
  OVERHEAD_PAGES,
  reusable,
  type LmdbFigures,
  type LmdbStats,
} from '../../src/backend/lmdb-space.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const PS = 4096;
const val = (n: number) => new Uint8Array(n);

const figures = (o: Partial<LmdbFigures>): LmdbFigures => ({
  pageSize: PS, fileEnd: 0, allocated: 0, live: 0, diskFree: 0, diskTotal: 100 * MiB, mapSize: 2 ** 30, ...o,
});

t.test('needOf: overflow pages for large values, half-full leaves for small ones, overhead per transaction', async (t) => {
  t.equal(needOf(PS, []), OVERHEAD_PAGES * PS, 'a transaction with no writes: the overhead');
  t.equal(needOf(PS, [{ key: 'k', value: null }]), (OVERHEAD_PAGES + 1) * PS, 'a delete: its leaf');
  // 256 KiB + 16 header bytes: 65 pages
  t.equal(needOf(PS, [{ key: 'b/x', value: val(256 * KiB) }]), (OVERHEAD_PAGES + 65) * PS, 'a 256 KiB blob: 65 overflow pages');
  t.equal(needOf(PS, [{ key: 'b/x', value: val(PS - 16) }]), (OVERHEAD_PAGES + 1) * PS, 'a value of a page less its header: one page');
  t.equal(needOf(PS, [{ key: 'b/x', value: val(256 * KiB) }], true), (2 * OVERHEAD_PAGES + 65) * PS,
    'a blob a commit will name: room for that commit too');
  // 100 small entries of 50 + 8 bytes: 5800 bytes, counted twice: 3 pages
  const small = Array.from({ length: 100 }, (_, i) => ({ key: `m/${String(i).padStart(2, '0')}`, value: val(46) }));
  t.equal(needOf(PS, small), (OVERHEAD_PAGES + 3) * PS, 'small entries share half-full leaves');
});

t.test('kindOf: a commit that deletes and writes little frees; anything else grows', async (t) => {
  t.equal(kindOf([{ value: null }]), 'free', 'a delete');
  t.equal(kindOf([{ value: null }, { value: val(100) }, { value: val(10) }]), 'free', 'unlink: entry gone, queue entry and inode written');
  t.equal(kindOf([{ value: val(100) }]), 'grow', 'a write with no delete');
  t.equal(kindOf([{ value: null }, { value: val(256 * KiB) }]), 'grow', 'a delete with a large value');
  t.equal(kindOf([]), 'grow', 'nothing at all');
});

t.test('the space model: growRoom, reusable, capacity, available', async (t) => {
  const f = figures({ fileEnd: 10 * MiB, allocated: 11 * MiB, live: 4 * MiB, diskFree: 5 * MiB, diskTotal: 32 * MiB });
  t.equal(growRoom(f), 6 * MiB, 'disk free plus blocks the file holds beyond its last page');
  t.equal(reusable(f), 6 * MiB, 'pages of the file no tree uses');
  t.equal(capacity(f), 16 * MiB, 'disk free plus the whole file');
  t.equal(available(f, MiB), 11 * MiB, 'capacity less live pages less what is kept');
  t.equal(available(figures({ fileEnd: MiB, live: MiB }), MiB), 0, 'never negative');
  t.equal(reusable(figures({ fileEnd: MiB, live: 2 * MiB })), 0, 'never negative');
});

t.test('fits: rules 1 and 2', async (t) => {
  const keep = KEEP_FOR_FREES + MIN_KEEP;
  const need = 300 * KiB;
  // rule 1: a write that frees may use everything, the kept room included
  const tight = figures({ fileEnd: 8 * MiB, allocated: 8 * MiB, live: 8 * MiB - 64 * KiB, diskFree: 64 * KiB });
  t.ok(fits(tight, 100 * KiB, 'free', keep), 'a delete fits in the last 128 KiB');
  t.notOk(fits(tight, 200 * KiB, 'free', keep), 'but not in less than it needs');
  t.notOk(fits(tight, 4 * KiB, 'grow', keep), 'a growing write does not fit there');
  // rule 2, on the disk: it must leave `keep` there
  t.ok(fits(figures({ diskFree: need + keep }), need, 'grow', keep), 'fits on the disk, leaving keep');
  t.notOk(fits(figures({ diskFree: need + keep - 1 }), need, 'grow', keep), 'one byte short of leaving keep');
  // rule 2, in reusable pages: less KEEP_FOR_FREES, and the disk could take it should reuse miss
  const reuse = (r: number, disk: number) => figures({ fileEnd: 8 * MiB, allocated: 8 * MiB, live: 8 * MiB - r, diskFree: disk });
  t.ok(fits(reuse(need + KEEP_FOR_FREES, need + KEEP_FOR_FREES), need, 'grow', keep), 'fits in freed pages, and the disk could take a miss');
  t.notOk(fits(reuse(need + KEEP_FOR_FREES - 1, need + KEEP_FOR_FREES), need, 'grow', keep), 'freed pages one byte short');
  t.notOk(fits(reuse(10 * MiB, need + KEEP_FOR_FREES - 1), need, 'grow', keep), 'plenty of freed pages, but a miss would fill the disk');
});

/** a fake store: LMDB statistics and a disk the test sets */
function fakeStore(): { space: LmdbSpace; set(o: { lastPage?: number; livePages?: number; diskFree?: number }): void; measured(): number } {
  let lastPage = 1;
  let livePages = 2;
  let diskFree = 0;
  let measured = 0;
  const stats = (): LmdbStats => {
    measured++;
    return {
      pageSize: PS, lastPageNumber: lastPage, mapSize: 2 ** 30,
      treeBranchPageCount: 0, treeLeafPageCount: livePages - 2, overflowPages: 0,
      free: { treeBranchPageCount: 0, treeLeafPageCount: 0, overflowPages: 0 },
    };
  };
  const space = new LmdbSpace('/nonexistent', stats, () => ({ allocated: (lastPage + 1) * PS, diskFree, diskTotal: 2 ** 40 }));
  return {
    space,
    set(o) {
      lastPage = o.lastPage ?? lastPage;
      livePages = o.livePages ?? livePages;
      diskFree = o.diskFree ?? diskFree;
    },
    measured: () => measured,
  };
}

t.test('LmdbSpace.admit: no measurement while far from full; every write measured near full', async (t) => {
  const s = fakeStore();
  s.set({ diskFree: 10 * FAST_MARGIN });
  t.equal(s.space.admit(MiB, 'grow'), undefined, 'admitted');
  const after = s.measured();
  for (let i = 0; i < 100; i++) t.equal(s.space.admit(MiB, 'grow'), undefined);
  t.equal(s.measured(), after, 'no measurement for 100 writes far from full');
  s.set({ diskFree: 0 });
  // what was admitted since the last measurement counts against the room: 100 MiB of 640 MiB leaves no fast path
  for (let i = 0; i < 500; i++) s.space.admit(MiB, 'grow');
  t.ok(s.measured() > after, 'measured again once the admitted writes ate the margin');
  t.ok(s.space.admit(MiB, 'grow'), 'and then refused: the disk is full');
});

t.test('LmdbSpace.roomy: the last figures leave the bytes beyond what the gate keeps; no figures, no room', async (t) => {
  const s = fakeStore();
  s.set({ diskFree: 8 * GiB });
  t.notOk(s.space.roomy(GiB), 'before any measurement: no');
  const before = s.measured();
  s.space.admit(MiB, 'grow');
  t.ok(s.space.roomy(4 * GiB), 'with 8 GiB free: room for 4 GiB');
  t.notOk(s.space.roomy(8 * GiB), 'not for 8 GiB (the gate keeps some)');
  t.equal(s.measured(), before + 1, 'roomy itself measures nothing');
  s.set({ diskFree: GiB });
  s.space.measure();
  t.notOk(s.space.roomy(4 * GiB), 'with 1 GiB free: no room for 4 GiB');
});

t.test('LmdbSpace: keep grows with the largest write that succeeded', async (t) => {
  const s = fakeStore();
  t.equal(s.space.keep, KEEP_FOR_FREES + MIN_KEEP);
  s.space.succeeded(4 * MiB, 'grow');
  t.equal(s.space.keep, KEEP_FOR_FREES + 4 * MiB);
  s.space.succeeded(64 * MiB, 'free');
  t.equal(s.space.keep, KEEP_FOR_FREES + 4 * MiB, 'writes that free do not count');
});

t.test('LmdbSpace: a write LMDB refused blocks as large ones until the room grows by that much (rule 3)', async (t) => {
  const s = fakeStore();
  const need = 300 * KiB;
  s.set({ diskFree: 10 * MiB });
  t.equal(s.space.admit(need, 'grow'), undefined, 'admitted by the figures');
  s.space.refused(need, s.space.measure());
  t.ok(s.space.admit(need, 'grow'), 'refused after LMDB refused one as large');
  t.ok(s.space.admit(2 * need, 'grow'), 'and a larger one');
  t.equal(s.space.admit(need - PS, 'grow'), undefined, 'a smaller one is tried');
  t.equal(s.space.admit(need, 'free'), undefined, 'writes that free are tried');
  s.set({ diskFree: 10 * MiB + need - 1 });
  t.ok(s.space.admit(need, 'grow'), 'the disk grew by less than the write');
  s.set({ diskFree: 10 * MiB + need });
  t.equal(s.space.admit(need, 'grow'), undefined, 'the disk grew by the write: tried again');
});

t.test('mountPointOf: the longest mount point holding the directory, octal escapes decoded', async (t) => {
  const info = [
    '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw',
    '30 22 0:25 / /tmp rw shared:2 - tmpfs tmpfs rw',
    '31 30 0:26 / /tmp/a\\040b rw shared:3 - tmpfs tmpfs rw',
    '32 30 0:27 / /tmp/ab rw shared:4 - tmpfs tmpfs rw',
  ].join('\n');
  t.equal(mountPointOf('/tmp/a b/store', info), '/tmp/a b');
  t.equal(mountPointOf('/tmp/abc/store', info), '/tmp', '/tmp/ab does not hold /tmp/abc');
  t.equal(mountPointOf('/tmp/ab', info), '/tmp/ab');
  t.equal(mountPointOf('/srv/kvfs', info), '/');
  t.equal(mountPointOf('/srv', ''), undefined, 'no mount table');
});

t.test('FullEpisodes: one number per run of refusals; a write as large as the largest refused ends it', async (t) => {
  const e = new FullEpisodes();
  t.notOk(e.full);
  const one = e.refused(300);
  t.equal(e.refused(100), one, 'a smaller refusal: the same episode');
  t.equal(e.refused(300), one, 'again: the same episode');
  t.ok(e.full);
  e.succeeded(200);
  t.ok(e.full, 'a smaller write that fits (a heartbeat) does not end it');
  t.equal(e.refused(300), one);
  e.succeeded(300);
  t.notOk(e.full, 'a write as large as the largest refused ends it');
  const two = e.refused(50);
  t.ok(two > one, 'the next refusal opens a new episode, numbered after');
  t.ok(new FullEpisodes().refused(1) > two, 'numbers are unique in the process');
});
