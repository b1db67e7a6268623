/**
 * The GC queue's drain (src/volume/queues.ts collectSome) deletes a blob only once the commits that queued it are
 * durable (KvStore.durable): before, the blobs and their queue entries stay; a failed wait deletes nothing; one
 * wait covers up to eight pages of the queue. A memory store with a durable() the test holds and releases stands
 * in for an engine's sync (a real engine's sync cannot be held open from a test; lmdb.test.ts tests LMDB's).
 */
import t from 'tap';
import { MemoryStore } from '../../src/backend/memory.js';
import { DELETE_BATCH, Queues } from '../../src/volume/queues.js';
import { K } from '../../src/volume/schema.js';

/** a memory store whose durable() waits until the test calls release (or fail) */
function heldStore() {
  const store = new MemoryStore() as MemoryStore & { durable(): Promise<void> };
  let waits = 0;
  let release: () => void = () => undefined;
  let fail: (e: Error) => void = () => undefined;
  let held = new Promise<void>((res, rej) => { release = res; fail = rej; });
  store.durable = () => {
    waits++;
    return held;
  };
  return {
    store,
    waits: () => waits,
    release: () => release(),
    fail: (e: Error) => fail(e),
    /** later waits resolve at once */
    open: () => { held = Promise.resolve(); release(); },
  };
}

async function queueBlobs(store: MemoryStore, n: number, from = 0): Promise<string[]> {
  const ids = Array.from({ length: n }, (_, i) => `blob${String(from + i).padStart(6, '0')}`);
  for (const id of ids) await store.put(K.blob(id), new Uint8Array(10).fill(1));
  await store.commit([], ids.map((id) => ({ key: K.gc(id), value: Buffer.from('10') })));
  return ids;
}

const blobsLeft = async (store: MemoryStore): Promise<number> => (await store.keys('b/')).length;
const queued = async (store: MemoryStore): Promise<number> => (await store.keys(K.gcPrefix)).length;

t.test('blobs are deleted only after the commits that queued them are durable', async (t) => {
  const h = heldStore();
  await queueBlobs(h.store, 5);
  let collected = 0;
  const q = new Queues(h.store, { collected: (n) => { collected += n; } });
  const run = q.collectSome();
  await new Promise((r) => setTimeout(r, 50));
  t.equal(h.waits(), 1, 'the drain waits for durability');
  t.equal(await blobsLeft(h.store), 5, 'meanwhile every blob is still there');
  t.equal(await queued(h.store), 5, 'and every queue entry');
  h.release();
  t.equal(await run, false, 'the drain finished: nothing more queued');
  t.equal(await blobsLeft(h.store), 0, 'then the blobs are deleted');
  t.equal(await queued(h.store), 0, 'and their queue entries');
  t.equal(collected, 5, 'and counted');
});

t.test('a failed wait for durability deletes nothing', async (t) => {
  const h = heldStore();
  await queueBlobs(h.store, 3);
  const run = new Queues(h.store).collectSome();
  h.fail(new Error('sync failed: EIO'));
  await t.rejects(run, /sync failed: EIO/, 'the drain fails with the sync\'s error');
  t.equal(await blobsLeft(h.store), 3, 'no blob deleted');
  t.equal(await queued(h.store), 3, 'no queue entry removed: the next drain does the work');
});

t.test('one wait covers up to eight pages; more is left to the next round', async (t) => {
  const h = heldStore();
  h.open();
  const total = DELETE_BATCH * 8 + 10;
  await queueBlobs(h.store, total);
  const q = new Queues(h.store);
  t.equal(await q.collectSome(), true, 'a first round of eight full pages says more may be left');
  t.equal(h.waits(), 1, 'with one wait for durability');
  t.equal(await blobsLeft(h.store), 10, 'eight pages of blobs deleted');
  t.equal(await q.collectSome(), false, 'the second round takes the rest');
  t.equal(h.waits(), 2, 'with a wait of its own');
  t.equal(await blobsLeft(h.store) + await queued(h.store), 0, 'nothing left');
});
