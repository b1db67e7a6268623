import t from 'tap';
import { MemoryStore } from '../../src/backend/memory.js';
import { describeStore, openStore } from '../../src/backend/open-store.js';
import { conformance } from './conformance.js';

await conformance(t, 'memory', async () => new MemoryStore());
await conformance(t, 'memory: URL', () => openStore('memory:'));

t.test('memory:NAME handles share data; closing one leaves the others open', async (t) => {
  const a = await openStore('memory:shared-test');
  const b = await openStore('memory:shared-test');
  const other = await openStore('memory:other-test');
  await a.put('k/x', new Uint8Array([1, 2]));
  t.same(await b.get('k/x'), new Uint8Array([1, 2]));
  t.equal(await other.get('k/x'), undefined, 'another name is another store');
  await a.close();
  t.same(await b.get('k/x'), new Uint8Array([1, 2]), 'b still works after a closed');
  const c = await openStore('memory:shared-test');
  t.same(await c.get('k/x'), new Uint8Array([1, 2]), 'data outlives its handles');
  await Promise.all([b.close(), c.close(), other.close()]);
});

t.test('store URLs: bad ones are INVALID with a clear message; labels', async (t) => {
  await t.rejects(openStore('xyz:foo'), {
    name: 'StoreError',
    code: 'INVALID',
    message: "unknown store URL scheme 'xyz:' (expected local:PATH, memory:, redis://HOST:PORT/VOLUME or redis-cluster://HOST:PORT,.../VOLUME)",
  });
  await t.rejects(openStore('redis://localhost:6379'), { code: 'INVALID', message: "'redis://localhost:6379' names no volume (expected e.g. redis://127.0.0.1:6379/myvol)" });
  await t.rejects(openStore('local:'), { code: 'INVALID', message: /local:' has no path/ });
  await t.rejects(openStore('./data'), { code: 'INVALID', message: /no scheme.*local:\.\/data/ });
  t.equal(describeStore('memory:'), 'in-memory store (not durable)');
  t.equal(describeStore('memory:x'), "in-memory store 'x' (not durable)");
  t.equal(describeStore('local:/var/lib/kvfs'), 'LMDB store in /var/lib/kvfs');
  t.equal(describeStore('xyz:foo'), 'xyz:foo', 'an unknown URL labels itself');
  t.equal(describeStore('redis-cluster://10.0.0.1:7000,10.0.0.2:7000/v1'), "volume 'v1' on Redis Cluster 10.0.0.1:7000,10.0.0.2:7000");
});
