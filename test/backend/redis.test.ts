/**
 * The Redis engine (src/backend/redis.ts) against real servers started by test/helpers/redis-cluster.ts:
 * the backend conformance suite on a 3-master cluster and on a plain server, the key layout (metadata in the
 * volume's slot, blobs on every master), idempotent retries, a full store, write stalls and a busy server,
 * and every startup check. The retry layer's rules are also checked alone with injected failures (errors a
 * real server cannot be made to give on demand, such as a reply lost after the server applied a command).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { isStoreError, StoreError } from '../../src/backend/errors.js';
import type { KvStore } from '../../src/backend/kv.js';
import { openStore } from '../../src/backend/open-store.js';
import { classify, withRetry, type RetryHooks } from '../../src/backend/redis-retry.js';
import { mask, parseRedisUrl, redisPassword, redisTls } from '../../src/backend/redis-url.js';
import { RedisStore, uncoveredSlots } from '../../src/backend/redis.js';
import { RedisCluster, RedisServer, pickPorts, redisAvailable } from '../helpers/redis-cluster.js';
import { conformance } from './conformance.js';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (u: Uint8Array | undefined): string | undefined => (u === undefined ? undefined : new TextDecoder().decode(u));
let volumes = 0;
const vol = (what: string) => `${what}${process.pid}_${volumes++}`;

/** expects p to reject with a StoreError of code whose message matches re; returns the message */
async function rejectsStore(t: Test, p: Promise<unknown>, code: string, re: RegExp): Promise<string> {
  try {
    await p;
    t.fail(`expected StoreError ${code}, it resolved`);
    return '';
  } catch (e) {
    t.ok(isStoreError(e), `a StoreError (${(e as Error).message})`);
    t.equal((e as StoreError).code, code, `code ${code}`);
    t.match((e as Error).message, re);
    t.notOk((e as Error).message.includes('\n'), 'one line');
    return (e as Error).message;
  }
}

// ------------------------------------------------------------------------------------------ pure logic

t.test('redis URLs', async (t) => {
  const c = parseRedisUrl('redis-cluster://127.0.0.1:7000,localhost:7001,[::1]:7002/vol_1-a');
  t.same(c.nodes, [{ host: '127.0.0.1', port: 7000 }, { host: 'localhost', port: 7001 }, { host: '::1', port: 7002 }]);
  t.equal(c.cluster, true);
  t.equal(c.tls, false);
  t.equal(c.volume, 'vol_1-a');
  const s = parseRedisUrl('rediss://alice@db.example:6380/v');
  t.same([s.cluster, s.tls, s.username, s.nodes[0]!.port, s.volume], [false, true, 'alice', 6380, 'v']);
  t.equal(parseRedisUrl('redis://h/v').nodes[0]!.port, 6379, 'default port');
  const bad: [string, RegExp][] = [
    ['redis://u:secret@h:1/v', /carries a password: put it in KVFS_REDIS_PASSWORD/],
    ['redis://h:1/bad.name', /volume name 'bad\.name'.*A-Z a-z 0-9 _ -/],
    ['redis://h:1/{x}', /volume name '\{x\}'/],
    ['redis://h:1/' + 'x'.repeat(65), /1-64 characters/],
    ['redis://h:1', /names no volume/],
    ['redis://h:1/', /names no volume/],
    ['redis://h:99999/v', /port 99999/],
    ['redis://a:1,b:2/v', /several nodes make a cluster URL/],
    ['redis-cluster:///v', /names no host/],
    ['redis://h:x/v', /is not HOST or HOST:PORT/],
  ];
  for (const [url, re] of bad) {
    try {
      parseRedisUrl(url);
      t.fail(`${url} accepted`);
    } catch (e) {
      t.equal((e as StoreError).code, 'INVALID', url);
      t.match((e as Error).message, re, url);
      t.notOk((e as Error).message.includes('secret'), 'never echoes a password');
    }
  }
  t.equal(mask('redis://u:secret@h:1/v'), 'redis://u:***@h:1/v');
  await t.rejects(openStore('redis://u:secret@h:1/v'), { code: 'INVALID', message: /^(?!.*secret)/ });
});

t.test('redis password and TLS files', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kvfs-redis-pw-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'pw'), 'hunter2\nignored\n');
  writeFileSync(join(dir, 'empty'), '');
  t.equal(redisPassword({ env: {} }), undefined);
  t.equal(redisPassword({ env: { KVFS_REDIS_PASSWORD: 'p1' } }), 'p1');
  t.equal(redisPassword({ env: { KVFS_REDIS_PASSWORD: 'p1' }, passwordFile: join(dir, 'pw') }), 'hunter2', 'a file wins, first line');
  t.equal(redisPassword({ env: { KVFS_REDIS_PASSWORD_FILE: join(dir, 'pw') } }), 'hunter2');
  t.throws(() => redisPassword({ env: {}, passwordFile: join(dir, 'missing') }), { code: 'INVALID', message: /cannot read the Redis password file .*missing: ENOENT/ });
  t.throws(() => redisPassword({ env: {}, passwordFile: join(dir, 'empty') }), { code: 'INVALID', message: /is empty/ });
  const plain = parseRedisUrl('redis://h:1/v');
  t.equal(redisTls(plain, { env: {} }), undefined);
  t.throws(() => redisTls(plain, { env: {}, tlsCa: join(dir, 'pw') }), { code: 'INVALID', message: /not a TLS URL/ });
  const tls = parseRedisUrl('rediss://h:1/v');
  t.same(redisTls(tls, { env: {}, tlsCa: join(dir, 'pw') })!.ca, Buffer.from('hunter2\nignored\n'));
  t.throws(() => redisTls(tls, { env: {}, tlsCert: join(dir, 'pw') }), { message: /needs both --tls-cert and --tls-key/ });
  t.throws(() => redisTls(tls, { env: {}, tlsCa: join(dir, 'nope') }), { message: /cannot read the TLS CA file/ });
});

t.test('slot coverage', async (t) => {
  t.same(uncoveredSlots([[0, 16383]]), []);
  t.same(uncoveredSlots([[5461, 10922], [0, 5460], [10923, 16383]]), []);
  t.same(uncoveredSlots([[0, 99], [200, 16383]]), [[100, 199]]);
  t.same(uncoveredSlots([[1, 16382]]), [[0, 0], [16383, 16383]]);
  t.same(uncoveredSlots([]), [[0, 16383]]);
});

t.test('retry layer: how errors are classified', async (t) => {
  const err = (message: string, extra: object = {}) => Object.assign(new Error(message), extra);
  const cases: [unknown, string][] = [
    [err("OOM command not allowed when used memory > 'maxmemory'."), 'nospace'],
    [err('ERR write is not allowed, reached max-db-size'), 'nospace'],
    [err('WRONGPASS invalid username-password pair or user is disabled.'), 'auth'],
    [err('NOAUTH Authentication required.'), 'auth'],
    [err('TRYAGAIN Multiple keys request during rehashing of slot'), 'throttled'],
    [err('CLUSTERDOWN The cluster is down'), 'throttled'],
    [err('LOADING Redis is loading the dataset in memory'), 'throttled'],
    [err('BUSY Redis is busy running a script.'), 'throttled'],
    [err('READONLY You can\'t write against a read only replica.'), 'throttled'],
    [err('MASTERDOWN Link with MASTER is down'), 'throttled'],
    [err('MOVED 3999 127.0.0.1:6381'), 'throttled'],
    [err('connect ECONNREFUSED 127.0.0.1:1', { code: 'ECONNREFUSED' }), 'transient'],
    [err('Connection is closed.'), 'transient'],
    [err('Command timed out'), 'transient'],
    [err("Stream isn't writeable and enableOfflineQueue options is false"), 'transient'],
    [err('ERR unknown command'), 'fatal'],
    [new StoreError('CORRUPT', 'x'), 'fatal'],
  ];
  for (const [e, cls] of cases) t.equal(classify(e), cls, (e as Error).message);
});

t.test('retry layer: backoff, deadlines, immediate failures', async (t) => {
  const hooks = (over: Partial<RetryHooks> = {}): RetryHooks => ({
    closed: () => false, nospace: () => 'full: raise maxmemory', auth: () => 'bad credentials', ...over,
  });
  const policy = { deadlineMs: 600, baseMs: 5, capMs: 50 };
  let n = 0;
  t.equal(await withRetry('op', policy, hooks(), async () => {
    if (++n < 4) throw Object.assign(new Error('Connection is closed.'), {});
    return 'done';
  }), 'done', 'transient errors are retried until success');
  t.equal(n, 4);

  let started = Date.now();
  await rejectsStore(t, withRetry('get of i/1', policy, hooks(), () => new Promise(() => undefined)), 'UNAVAILABLE',
    /^get of i\/1: the Redis store did not answer within 0\.6 s/);
  let took = Date.now() - started;
  t.ok(took >= 590 && took < 900, `a hung attempt ends at the deadline (${took} ms)`);

  // refused connections, then an attempt the deadline cuts short: the message names what the attempts met
  n = 0;
  await rejectsStore(t, withRetry('connecting to 127.0.0.1:1', policy, hooks(), () => {
    if (++n < 3) return Promise.reject(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' }));
    return new Promise(() => undefined);
  }), 'UNAVAILABLE', /did not answer within 0\.6 s \(.*ECONNREFUSED/);

  started = Date.now();
  n = 0;
  await rejectsStore(t, withRetry('op', policy, hooks(), async () => { n++; throw new Error('TRYAGAIN slot moving'); }), 'THROTTLED',
    /kept pushing back for 0\.6 s \(TRYAGAIN slot moving\)/);
  took = Date.now() - started;
  t.ok(n > 3 && took < 900, `throttling is retried with backoff until the deadline (${n} attempts, ${took} ms)`);

  n = 0;
  await rejectsStore(t, withRetry('op', policy, hooks(), async () => { n++; throw new Error("OOM command not allowed when used memory > 'maxmemory'."); }),
    'NOSPACE', /full: raise maxmemory/);
  t.equal(n, 1, 'a full store is not retried');
  n = 0;
  await rejectsStore(t, withRetry('op', policy, hooks(), async () => { n++; throw new Error('WRONGPASS invalid username-password pair'); }),
    'CONFIG', /bad credentials/);
  t.equal(n, 1, 'refused credentials are not retried');
  const odd = new Error('ERR something new');
  await t.rejects(withRetry('op', policy, hooks(), async () => { throw odd; }), odd, 'unknown errors pass through as they are');
  await rejectsStore(t, withRetry('op', policy, hooks({ closed: () => true }), async () => 1), 'CLOSED', /closed/);
});

// ------------------------------------------------------------------------------------------ real servers

t.test('real Redis servers', { skip: redisAvailable() }, async (t) => {
  const cluster = await RedisCluster.start(t);
  const open = (volume: string, opts = {}) => RedisStore.open(cluster.url(volume), { timeoutMs: 10_000, ...opts });

  await conformance(t, 'redis-cluster', () => open(vol('conf')));

  t.test('key layout: metadata in the volume\'s slot, blobs spread over every master', async (t) => {
    const name = vol('layout');
    const s = await open(name);
    t.teardown(() => s.close());
    await s.commit([], [{ key: 'i/1', value: enc('inode') }, { key: 'd/1/a', value: enc('e') }]);
    for (let i = 0; i < 64; i++) await s.put(`b/blob${i}`, enc(`data${i}`));
    const masters = await cluster.masters();
    const slotOf = async (key: string) => Number(await cluster.cli(masters[0]!.port, 'CLUSTER', 'KEYSLOT', key));
    const tag = await slotOf(`{${name}}`);
    t.equal(await slotOf(`kvfs:{${name}}:i/1`), tag, 'an inode key is in the volume slot');
    t.equal(await slotOf(`kvfs:{${name}}#d/1/`), tag, 'an index key is in the volume slot');
    for (const m of masters) {
      const keys = (await cluster.cli(m.port, '--scan', '--pattern', `kvfs:${name}:b/*`)).split('\n').filter(Boolean);
      t.ok(keys.length > 0, `master ${m.port} holds ${keys.length} of the 64 blobs`);
    }
    t.same((await s.getMany(['b/blob7', 'i/1', 'b/blob63', 'b/none'])).map(dec), ['data7', 'inode', 'data63', undefined]);
    t.same(await s.keys('b/blob1'), ['b/blob1', 'b/blob10', 'b/blob11', 'b/blob12', 'b/blob13', 'b/blob14', 'b/blob15', 'b/blob16', 'b/blob17', 'b/blob18', 'b/blob19'], 'keys() walks every master');
    const clients = await cluster.cli(masters[0]!.port, 'CLIENT', 'LIST');
    t.match(clients, /name=kvfs .*resp=2/, 'connections speak RESP2');
  });

  t.test('a walk of the keys refuses a cluster whose slots are moving, and works again once they stopped', async (t) => {
    const s = await open(vol('walk'));
    t.teardown(() => s.close());
    for (let i = 0; i < 32; i++) await s.put(`b/w${i}`, enc('x'));
    const [from, to] = await cluster.masters();
    const slot = from!.slots[0]![0];
    // a real migration's first step: the source says the slot is migrating, the target that it is importing
    await cluster.cli(to!.port, 'CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', from!.id);
    await cluster.cli(from!.port, 'CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', to!.id);
    try {
      await rejectsStore(t, s.keys('b/'), 'UNAVAILABLE', /moving slots between its masters \(resharding\).*run the command again/);
    } finally {
      await cluster.cli(from!.port, 'CLUSTER', 'SETSLOT', String(slot), 'STABLE');
      await cluster.cli(to!.port, 'CLUSTER', 'SETSLOT', String(slot), 'STABLE');
    }
    t.equal((await s.keys('b/w')).length, 32, 'every key once the slot is stable again');
  });

  t.test('blob reads on connections of their own: values of every size, absent keys, a killed connection, a moved slot', async (t) => {
    const name = vol('direct');
    const s = await open(name);
    t.teardown(() => s.close());
    const sizes = [0, 1, 100, 64 << 10, (256 << 10) + 3, 3 << 20];
    const blobs = sizes.map((n, i) => Buffer.from(Array.from({ length: n }, (_, j) => (j * 31 + i) & 255)));
    for (let i = 0; i < blobs.length; i++) await s.put(`b/d${i}`, blobs[i]!);
    const before = s.blobReads!;
    // all at once: the GETs of one turn of the event loop leave together, and replies span many socket reads
    const got = await Promise.all([...blobs.keys(), ...blobs.keys()].map((i) => s.get(`b/d${i}`)));
    got.forEach((v, k) => t.ok(v && Buffer.compare(v, blobs[k % blobs.length]!) === 0, `blob of ${sizes[k % blobs.length]} bytes read back whole`));
    t.equal(await s.get('b/none'), undefined, 'an absent blob is undefined');
    t.equal(s.blobReads!.served - before.served, 13, 'every one answered on the reader\'s connections');
    t.equal(s.blobReads!.handedBack, before.handedBack, 'none handed to ioredis');
    t.equal(s.blobReads!.connections, 3, 'one connection per master');

    // the server closes the reader's connections: reads go on (the owed GETs through ioredis), then on new ones
    const masters = await cluster.masters();
    for (const m of masters) await cluster.cli(m.port, 'CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
    for (let i = 0; i < blobs.length; i++) t.ok(Buffer.compare((await s.get(`b/d${i}`))!, blobs[i]!) === 0, `blob ${i} after the connections were killed`);
    await new Promise((r) => setTimeout(r, 1_100));
    const served = s.blobReads!.served;
    t.ok(Buffer.compare((await s.get('b/d4'))!, blobs[4]!) === 0);
    t.equal(s.blobReads!.served, served + 1, 'the reader answers again on a new connection');

    // the slot of a blob moves to another master behind ioredis's back: the old master answers MOVED, the read is
    // handed to ioredis, which follows it
    const slot = Number(await cluster.cli(masters[0]!.port, 'CLUSTER', 'KEYSLOT', `kvfs:${name}:b/d5`));
    const from = await cluster.slotOwner(slot);
    const to = masters.find((m) => m.port !== from)!.port;
    await cluster.migrateSlots(from, to, [slot]);
    const handed = s.blobReads!.handedBack;
    t.ok(Buffer.compare((await s.get('b/d5'))!, blobs[5]!) === 0, 'the moved blob is read whole');
    t.equal(s.blobReads!.handedBack, handed + 1, 'its first read was handed to ioredis (MOVED)');
    await cluster.migrateSlots(to, from, [slot]);
  });

  t.test('a retried commit applies once: its transaction id is found', async (t) => {
    const s = await open(vol('txid'));
    t.teardown(() => s.close());
    // A retry after an unknown outcome sends the same script with the same id: this is that second send.
    t.equal(await s.commit([{ key: 'k/a', value: undefined }], [{ key: 'k/a', value: enc('1') }], 'tx-A'), true);
    await s.put('k/a', enc('2'));
    t.equal(await s.commit([{ key: 'k/a', value: undefined }], [{ key: 'k/a', value: enc('1') }], 'tx-A'), true,
      'the second send answers as the first did, although its check would now fail');
    t.equal(dec(await s.get('k/a')), '2', 'and changes nothing');
    t.equal(await s.commit([{ key: 'k/a', value: undefined }], [{ key: 'k/a', value: enc('1') }], 'tx-B'), false, 'a new id is checked');
  });

  t.test('durable (the GC\'s wait): on a replica of every master; a lost connection is reported to it and to sync apart', async (t) => {
    const withReplicas = await RedisCluster.start(t, { masters: 3, replicas: 1 });
    const s = await RedisStore.open(withReplicas.url(vol('durable')), { timeoutMs: 3000 });
    t.teardown(() => s.close());
    await s.commit([], [{ key: 'i/1', value: enc('inode') }]);
    await s.put('b/one', enc('blob'));
    await s.durable();
    t.pass('resolves once the replicas hold the writes');

    const nodes = await withReplicas.cli((await withReplicas.masters())[0]!.port, 'CLUSTER', 'NODES');
    const replicas = nodes.split('\n').filter((l) => / slave /.test(l)).map((l) => Number(/:(\d+)@/.exec(l)![1]));
    t.equal(replicas.length, 3, 'three replicas');
    for (const p of replicas) withReplicas.kill(p, 'SIGSTOP');
    try {
      await s.commit([], [{ key: 'i/1', value: enc('inode 2') }]);
      const t0 = Date.now();
      const err = await s.durable().then(() => undefined, (e: unknown) => e);
      t.ok(isStoreError(err), `with the replicas stopped it rejects: ${(err as Error | undefined)?.message}`);
      t.match((err as Error).message, /replica/, 'saying no replica holds the writes');
      t.ok(Date.now() - t0 < 6000, `within the deadline (${Date.now() - t0} ms)`);
    } finally {
      for (const p of replicas) withReplicas.kill(p, 'SIGCONT');
    }
    await s.durable();
    t.pass('and resolves again once they answer');

    // every master drops this client's connections: ioredis reconnects, and the writes before may be on no replica
    for (const m of await withReplicas.masters()) await withReplicas.cli(m.port, 'CLIENT', 'KILL', 'TYPE', 'normal');
    await s.put('b/two', enc('blob 2')).catch(() => s.put('b/two', enc('blob 2')));
    await rejectsStore(t, s.durable(), 'UNAVAILABLE', /connection was lost/);
    await s.durable();
    t.pass('durable: once rejected, then fine');
    await rejectsStore(t, s.sync(), 'UNAVAILABLE', /connection was lost/);
    await s.sync();
    t.pass('sync still reports the loss itself (durable did not take it), then is fine');

    // without replicas no failover can lose a write: a lost connection does not make the GC's wait fail
    const plain = await open(vol('durable-plain'));
    t.teardown(() => plain.close());
    await plain.put('b/one', enc('blob'));
    await plain.durable();
    for (const m of await cluster.masters()) await cluster.cli(m.port, 'CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
    await plain.put('b/two', enc('blob 2')).catch(() => plain.put('b/two', enc('blob 2')));
    await plain.durable();
    t.pass('no replicas: durable resolves after the connections were lost');
  });

  t.test('startup checks on a cluster', async (t) => {
    const lru = await RedisCluster.start(t, { masters: 3, maxmemoryPolicy: 'allkeys-lru' });
    await rejectsStore(t, RedisStore.open(lru.url('v')), 'CONFIG', /maxmemory-policy allkeys-lru: it would evict keys, silently deleting file data.*noeviction/);
    const hole = await RedisCluster.start(t, { masters: 3 });
    await hole.delSlots([100, 101, 102, 9000]);
    await rejectsStore(t, RedisStore.open(hole.url('v'), { timeoutMs: 3000 }), 'CONFIG', /serves no node for 4 of 16384 slots \(100-102, 9000\)/);
    const m = await cluster.masters();
    await rejectsStore(t, RedisStore.open(`redis://127.0.0.1:${m[0]!.port}/v`), 'CONFIG', /is a Redis Cluster node: use redis-cluster:\/\//);
  });

  t.test('a plain server', async (t) => {
    const server = await RedisServer.start(t);
    await conformance(t, 'redis (one server)', () => RedisStore.open(server.url(vol('plain'))));
    await rejectsStore(t, RedisStore.open(`redis-cluster://127.0.0.1:${server.port}/v`), 'CONFIG', /is a plain Redis server, not a cluster node.*use redis:\/\//);

    t.test('a write stall shorter than the deadline is waited out; a longer one fails at the deadline', async (t) => {
      const s = await RedisStore.open(server.url(vol('stall')), { timeoutMs: 4000 });
      t.teardown(() => s.close());
      await s.put('k/x', enc('before'));
      await s.put('b/x', enc('blob'));
      server.kill('SIGSTOP');
      setTimeout(() => server.kill('SIGCONT'), 1500);
      const t0 = Date.now();
      t.equal(dec(await s.get('k/x')), 'before', 'answered after the stall');
      t.ok(Date.now() - t0 >= 1400, 'it waited');
      const short = await RedisStore.open(server.url(vol('stall2')), { timeoutMs: 1000 });
      t.teardown(() => short.close());
      server.kill('SIGSTOP');
      const t1 = Date.now();
      try {
        await rejectsStore(t, short.get('k/x'), 'UNAVAILABLE', /did not answer within 1 s/);
        const took = Date.now() - t1;
        t.ok(took < 1500, `failed within the deadline (${took} ms)`);
        const t2 = Date.now();
        await rejectsStore(t, short.get('b/x'), 'UNAVAILABLE', /did not answer within 1 s/);
        t.ok(Date.now() - t2 < 1500, `a blob read (the blob reader's connection) fails within the deadline too (${Date.now() - t2} ms)`);
      } finally {
        server.kill('SIGCONT');
      }
      t.equal(dec(await s.get('k/x')), 'before', 'fine again afterwards');
      t.equal(dec(await s.get('b/x')), 'blob', 'blobs too');
    });

    t.test('a busy server (a long script) is retried, not failed', async (t) => {
      await server.cli('CONFIG', 'SET', 'busy-reply-threshold', '100');
      const s = await RedisStore.open(server.url(vol('busy')), { timeoutMs: 8000 });
      t.teardown(() => s.close());
      await s.put('k/x', enc('v'));
      // another client runs a script for 1.5 s: the server answers BUSY to everyone else meanwhile
      const busy = server.cli('EVAL', "local t0 = redis.call('TIME'); while true do local t = redis.call('TIME'); if (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 1500000 then break end end return 1", '0');
      await new Promise((r) => setTimeout(r, 300));
      const before = s.retries.throttled;
      t.equal(dec(await s.get('k/x')), 'v');
      t.ok(s.retries.throttled > before, `BUSY answers were retried (${s.retries.throttled - before})`);
      await busy;
    });

    t.test('a full store: ENOSPC at once, earlier data intact, deletes free space', async (t) => {
      const full = await RedisServer.start(t, { maxmemory: '24mb' });
      const s = await RedisStore.open(full.url(vol('full')), { timeoutMs: 5000 });
      t.teardown(() => s.close());
      const blob = Buffer.alloc(256 * 1024, 7);
      let written = 0;
      let err: unknown;
      const t0 = Date.now();
      for (; written < 400; written++) {
        try {
          await s.put(`b/f${written}`, blob);
          await s.commit([], [{ key: `c/1/${written}`, value: enc(`f${written}`) }]);
        } catch (e) {
          err = e;
          break;
        }
      }
      t.ok(written > 10 && written < 400, `${written} blobs fit`);
      t.equal((err as StoreError)?.code, 'NOSPACE', 'the store-full error is NOSPACE');
      t.match((err as Error).message, /is full: used memory reached maxmemory 24 MiB per node with maxmemory-policy noeviction; raise maxmemory/);
      t.ok(Date.now() - t0 < 30_000);
      await rejectsStore(t, s.put('b/more', blob), 'NOSPACE', /raise maxmemory/);
      const first = await s.get('b/f0');
      t.ok(first && Buffer.from(first).equals(blob), 'data written before is intact');
      // Deep over the limit (small writes still fit while only a big one does not, since the big one's own
      // request buffer counts): growing metadata is refused too, and freeing space still works.
      await full.cli('CONFIG', 'SET', 'maxmemory', '1mb');
      await rejectsStore(t, s.commit([], [{ key: 'd/1/big', value: Buffer.alloc(4096) }]), 'NOSPACE', /full/);
      await rejectsStore(t, s.put('b/more', enc('x')), 'NOSPACE', /full/);
      const doomed = Array.from({ length: written }, (_, i) => `c/1/${i}`);
      await s.del(doomed);
      t.equal(await s.get('c/1/0'), undefined, 'metadata deletes run on a full store');
      await s.del(Array.from({ length: written }, (_, i) => `b/f${i}`));
      t.equal(await s.get('b/f0'), undefined, 'blob deletes run on a full store');
      await full.cli('CONFIG', 'SET', 'maxmemory', '24mb');
      await s.put('b/again', blob);
      await s.commit([], [{ key: 'd/1/big', value: Buffer.alloc(4096) }]);
      t.ok((await s.get('b/again'))?.length === blob.length, 'writes succeed again after deleting');
      const info = await s.info();
      t.equal(info.capacityBytes, 24 * 1024 * 1024, 'info reports maxmemory as the capacity');
    });

    t.test('credentials: wrong or missing password, never printed', async (t) => {
      const secret = 'S3cr3t-pw-kvfs';
      const locked = await RedisServer.start(t, { password: secret });
      const url = locked.url(vol('auth'));
      const msg1 = await rejectsStore(t, RedisStore.open(url, { env: {} }), 'CONFIG', /needs a password: set KVFS_REDIS_PASSWORD or --password-file/);
      const msg2 = await rejectsStore(t, RedisStore.open(url, { env: { KVFS_REDIS_PASSWORD: 'wrong-one' } }), 'CONFIG', /refused our credentials/);
      t.notOk(msg2.includes('wrong-one') || msg1.includes(secret), 'no password in the messages');
      const ok = await RedisStore.open(url, { env: { KVFS_REDIS_PASSWORD: secret } });
      await ok.put('k/a', enc('1'));
      t.equal(dec(await ok.get('k/a')), '1', 'the right password works');
      await ok.put('b/a', enc('blob'));
      t.equal(dec(await ok.get('b/a')), 'blob');
      t.same(ok.blobReads && [ok.blobReads.served, ok.blobReads.handedBack], [1, 0], 'the blob reader authenticated itself and read it');
      await ok.close();
    });
  });

  t.test('TLS: rediss:// with the server\'s CA; a clear error without it', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'kvfs-tls-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const ssl = (...args: string[]) => {
      const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
    };
    ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=kvfs-test-ca');
    ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'srv.key', '-out', 'srv.csr', '-subj', '/CN=127.0.0.1');
    writeFileSync(join(dir, 'ext'), 'subjectAltName=IP:127.0.0.1\n');
    ssl('x509', '-req', '-in', 'srv.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'srv.crt', '-days', '2', '-extfile', 'ext');
    const [tlsPort] = await pickPorts(1, false);
    const server = await RedisServer.start(t, {
      extra: ['--tls-port', String(tlsPort), '--tls-cert-file', join(dir, 'srv.crt'), '--tls-key-file', join(dir, 'srv.key'),
        '--tls-ca-cert-file', join(dir, 'ca.crt'), '--tls-auth-clients', 'no'],
    });
    t.ok(server.port > 0);
    const url = `rediss://127.0.0.1:${tlsPort}/${vol('tls')}`;
    const s = await RedisStore.open(url, { tlsCa: join(dir, 'ca.crt') });
    await s.put('k/a', enc('over tls'));
    t.equal(dec(await s.get('k/a')), 'over tls');
    await s.close();
    await rejectsStore(t, RedisStore.open(url, { timeoutMs: 3000, env: {} }), 'CONFIG', /TLS handshake failed \(SELF_SIGNED_CERT_IN_CHAIN.*--tls-ca/);
  });

  t.test('an unreachable store fails within the deadline', async (t) => {
    const t0 = Date.now();
    await rejectsStore(t, RedisStore.open('redis-cluster://127.0.0.1:1/v', { timeoutMs: 1500 }), 'UNAVAILABLE',
      /connecting to 127\.0\.0\.1:1: the Redis store did not answer within 1\.5 s \(.*ECONNREFUSED/);
    const took = Date.now() - t0;
    t.ok(took < 2500, `${took} ms`);
  });

  t.test('several handles of one volume see each other at once (one store, several mounts)', async (t) => {
    const name = vol('shared');
    const a: KvStore = await open(name);
    const b: KvStore = await open(name);
    t.teardown(async () => { await a.close(); await b.close(); });
    await a.commit([], [{ key: 'd/1/x', value: enc('1') }]);
    t.same((await b.scan('d/1/')).map(([k]) => k), ['d/1/x']);
    t.equal(await b.commit([{ key: 'd/1/x', value: enc('1') }], [{ key: 'd/1/x', value: null }]), true);
    t.equal(await a.get('d/1/x'), undefined);
    t.equal((await a.info()).shared, true, 'the engine says it is shared');
  });
});

// Apache Kvrocks in cluster mode, when a `kvrocks` binary is on PATH (it is not in Debian, so usually skipped).
// One node that serves every slot, set up as Kvrocks's docs say (CLUSTERX SETNODEID / SETNODES).
const kvrocks = spawnSync('sh', ['-c', 'command -v kvrocks'], { encoding: 'utf8' }).stdout.trim();
t.test('Kvrocks in cluster mode: the conformance suite', { skip: kvrocks ? redisAvailable() : 'kvrocks is not on PATH (it is not a Debian package); install it to run this part' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kvfs-kvrocks-'));
  const port = 20000 + Math.floor(Math.random() * 9000);
  writeFileSync(join(dir, 'kvrocks.conf'), `bind 127.0.0.1\nport ${port}\ndir ${dir}\ncluster-enabled yes\ndaemonize no\n`);
  const proc = spawn(kvrocks, ['-c', join(dir, 'kvrocks.conf')], { stdio: 'ignore' });
  t.teardown(() => { proc.kill('SIGKILL'); rmSync(dir, { recursive: true, force: true }); });
  const cli = (...args: string[]) => spawnSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { encoding: 'utf8' });
  for (let i = 0; i < 100 && cli('PING').stdout.trim() !== 'PONG'; i++) await new Promise((r) => setTimeout(r, 100));
  const id = 'kvfs'.padEnd(40, '0');
  t.equal(cli('CLUSTERX', 'SETNODEID', id).stdout.trim(), 'OK');
  t.equal(cli('CLUSTERX', 'SETNODES', `${id} 127.0.0.1 ${port} master - 0-16383`, '1').stdout.trim(), 'OK');
  await conformance(t, 'kvrocks', () => RedisStore.open(`redis-cluster://127.0.0.1:${port}/${vol('kvrocks')}`));
});
