/**
 * countStoreCalls (src/diag/store-calls.ts): calls per method and failures per StoreError code, through a
 * wrapper that leaves the store working as before, LMDB's private fields included.
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
