/**
 * SlabStore (src/backend/slab-store.ts): slots handed out by take() are bounded by maxSlabs, and come back only
 * once V8 has collected their views; store()/release() slots after the quarantine.
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import t from 'tap';
import { SLAB_BYTES, SLOT_MIN, SlabStore } from '../../src/backend/slab-store.js';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;
/** a full collection, then a turn of the event loop for the FinalizationRegistry's callbacks */
async function collect(): Promise<void> {
  gc();
  await new Promise((r) => setTimeout(r, 20));
  gc();
  await new Promise((r) => setTimeout(r, 20));
}

t.test('take: bounded by maxSlabs, slots back once their views are collected', async (t) => {
  const s = new SlabStore(1);
  t.equal(s.take(SLOT_MIN - 1), undefined, 'values below a slot are not served');
  t.equal(s.take(SLAB_BYTES + 1), undefined, 'nor values above a slab');
  const per = SLAB_BYTES / (256 << 10);
  let held: (Buffer | undefined)[] = [];
  for (let i = 0; i < per; i++) held.push(s.take((256 << 10) - i));
  t.ok(held.every((b) => b !== undefined), `${per} views of up to 256 KiB fill one slab`);
  t.equal(held[3]!.length, (256 << 10) - 3, 'each view is as long as asked');
  held.forEach((b, i) => b!.fill(i & 255));
  t.ok(held.every((b, i) => b!.every((x) => x === (i & 255))), 'views do not overlap');
  t.equal(s.take(256 << 10), undefined, 'every slot is held: none more');
  t.equal(s.dry, 1, 'counted as dry');
  t.equal(s.slabs, 1, 'no slab past maxSlabs');
  t.equal(s.held, SLAB_BYTES, 'held bytes');

  const keep = held[0]!;
  held = [];
  await collect();
  t.equal(s.held, 256 << 10, 'the collected views gave their slots back; the one still referenced did not');
  const again = s.take(256 << 10);
  t.ok(again, 'a slot is taken again');
  again!.fill(0xee);
  t.ok(keep.every((x) => x === 0), 'the view still referenced keeps its bytes');
  t.equal(s.slabs, 1, 'still one slab');
});

t.test('store and release: the memory engine\'s slots', async (t) => {
  const s = new SlabStore();
  const v = s.store(Buffer.alloc(100 << 10, 5))!;
  t.equal(v.length, 100 << 10);
  t.ok(v.every((x) => x === 5), 'a copy');
  t.equal(s.store(Buffer.alloc(10)), undefined, 'small values are not slotted');
  s.release(v);
  t.ok(v.every((x) => x === 5), 'released bytes stay until the quarantine ends and the slot is reused');
});
