/**
 * countStoreCalls (src/diag/store-calls.ts): calls per method and failures per StoreError code, through a
 * wrapper that leaves the store working as before, LMDB's private fields included; and the calls under way
 * (inFlight: the native channel's wait on the CPU happens only at 0), rejected ones included.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LmdbStore } from '../../src/backend/lmdb.js';
import { MemoryStore } from '../../src/backend/memory.js';
import { countStoreCalls } from '../../src/diag/store-calls.js';

t.test('memory store: calls and errors counted, results unchanged', async (t) => {
  const { store, stats } = countStoreCalls(new MemoryStore());
  await store.put('i/1', Buffer.from('a'));
  t.same(Buffer.from((await store.get('i/1'))!).toString(), 'a', 'a put is read back through the wrapper');
  t.equal(await store.get('i/2'), undefined, 'a missing key is undefined');
  await t.rejects(store.scan('no-slash'), { code: 'INVALID' }, 'a bad scan still fails as it did');
  t.same(stats(), { calls: { put: 1, get: 2, scan: 1 }, errors: { INVALID: 1 } }, 'three kinds of call, one INVALID error');
});

t.test('LMDB store (private fields): works through the wrapper', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kvfs-test-calls-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { store, stats } = countStoreCalls(await LmdbStore.open(dir));
  t.ok(await store.commit([], [{ key: 'i/1', value: Buffer.from('v') }]), 'a commit');
  t.same(Buffer.from((await store.get('i/1'))!).toString(), 'v', 'read back');
  t.same((await store.scan('i/')).map(([k]) => k), ['i/1'], 'a scan');
  await store.close();
  await t.rejects(store.get('i/1'), { code: 'CLOSED' }, 'closed');
  t.same(stats().calls, { commit: 1, get: 2, scan: 1, close: 1 }, 'every call counted');
  t.same(stats().errors, { CLOSED: 1 }, 'the CLOSED error counted');
});

t.test('calls under way are counted until they settle, fulfilled or rejected', async (t) => {
  const { store, inFlight } = countStoreCalls(new MemoryStore());
  t.equal(inFlight(), 0, 'none at first');
  const put = store.put('i/1', Buffer.from('a'));
  const bad = store.scan('no-slash');
  t.equal(inFlight(), 2, 'two calls under way');
  await put;
  await t.rejects(bad, { code: 'INVALID' }, 'the bad scan fails as it did');
  t.equal(inFlight(), 0, 'none once both settled');
  t.equal((await store.get('i/1'))?.length, 1, 'a value comes through');
  t.equal(inFlight(), 0, 'and the get is not counted once it settled');
});
