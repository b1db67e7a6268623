/**
 * The janitor (src/fs/janitor.ts) tries a failed run again on its own: garbage queued before a failure is collected
 * without any further change to the volume. The failure is injected (a wait for durability that rejects once, as the
 * Redis engine's does after a lost connection on a cluster with replicas: a real server gives it only in a failover).
 */
import t from 'tap';
import type { KvStore } from '../../src/backend/kv.js';
import { MemoryStore } from '../../src/backend/memory.js';
import { BlobCache } from '../../src/fs/blob-cache.js';
import { Counters } from '../../src/fs/counters.js';
import { Janitor } from '../../src/fs/janitor.js';
import { K } from '../../src/volume/schema.js';

t.test('a run that failed is tried again without a new change', async (t) => {
  const mem = new MemoryStore();
  let failures = 1;
  const durable = async () => {
    if (failures > 0) {
      failures--;
      throw new Error('a connection was lost since the last wait for replicas');
    }
  };
  const store = new Proxy(mem, {
    get: (target, name) => {
      if (name === 'durable') return durable;
      const v = Reflect.get(target, name, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  }) as KvStore;
  for (let i = 0; i < 3; i++) {
    await mem.put(K.blob(`x${i}`), Buffer.alloc(10, i));
    await mem.commit([], [{ key: K.gc(`x${i}`), value: Buffer.from('10') }]);
  }
  const janitor = new Janitor(store, new BlobCache(store, 0), new Counters(store));
  t.teardown(() => janitor.close());
  await janitor.run();
  t.match((janitor.lastError as Error | undefined)?.message, /connection was lost/, 'the first run failed');
  t.equal((await mem.keys('b/')).length, 3, 'and deleted nothing');
  const t0 = Date.now();
  while ((await mem.keys('b/')).length && Date.now() - t0 < 5_000) await new Promise((r) => setTimeout(r, 50));
  t.same(await mem.keys('b/'), [], `collected by a run of its own (${Date.now() - t0} ms later)`);
  t.same(await mem.keys('g/'), [], 'the queue is empty');
  t.equal(janitor.collected, 3);
});
