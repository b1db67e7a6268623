/**
 * The backend conformance suite: what every KvStore engine promises (src/backend/kv.ts), checked one way for all.
 * An engine's test file calls `conformance(t, name, factory)`; `factory` returns a new, empty, open store each
 * time it is called. Every store the suite opens is closed in teardown.
 */
import type { Test } from 'tap';
import { isStoreError, type StoreErrorCode } from '../../src/backend/errors.js';
import type { KvStore } from '../../src/backend/kv.js';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (u: Uint8Array | undefined): string | undefined => (u === undefined ? undefined : new TextDecoder().decode(u));
const bytes = (u: Uint8Array | undefined): number[] | undefined => (u === undefined ? undefined : [...u]);

/** asserts that p rejects with a StoreError of this code */
async function rejectsWith(t: Test, p: Promise<unknown>, code: StoreErrorCode, what: string): Promise<void> {
  try {
    await p;
    t.fail(`${what}: expected StoreError ${code}, but it resolved`);
  } catch (e) {
    t.ok(isStoreError(e), `${what}: throws a StoreError`);
    t.equal((e as { code?: unknown }).code, code, `${what}: code ${code}`);
  }
}

export function conformance(t: Test, name: string, factory: () => Promise<KvStore>): Promise<unknown> {
  return t.test(`conformance: ${name}`, async (t) => {
    const open = async (t: Test): Promise<KvStore> => {
      const s = await factory();
      t.teardown(() => s.close());
      return s;
    };

    t.test('get, put, del round trip', async (t) => {
      const s = await open(t);
      t.equal(await s.get('k/a'), undefined, 'missing key is undefined');
      await s.put('k/a', enc('one'));
      t.equal(dec(await s.get('k/a')), 'one');
      await s.put('k/a', enc('two'));
      t.equal(dec(await s.get('k/a')), 'two', 'put overwrites');
      await s.put('k/b', enc('bee'));
      await s.del(['k/a', 'k/missing']);
      t.equal(await s.get('k/a'), undefined, 'deleted');
      t.equal(dec(await s.get('k/b')), 'bee', 'other keys untouched');
      await s.del([]);
      await s.del(['k/a']);
      t.equal(dec(await s.get('k/b')), 'bee', 'deleting nothing or a missing key is fine');
    });

    t.test('blob keys: put, get, getMany beside metadata, keys, del; values are copies', async (t) => {
      const s = await open(t);
      const big = Uint8Array.from({ length: 300_000 }, (_, i) => (i * 31 + 7) % 256);
      const given = Uint8Array.from(big);
      await s.put('b/sess.1', given);
      given.fill(0); // the caller reuses its buffer once the put settled
      await s.put('b/sess.2', enc('small'));
      await s.put('b/sess.3', new Uint8Array(0));
      await s.put('i/1', enc('meta'));
      t.same(bytes(await s.get('b/sess.1')), [...big], 'a large blob reads back as it was put');
      t.equal((await s.get('b/sess.3'))?.length, 0, 'an empty blob is there, empty');
      t.equal(await s.get('b/none'), undefined, 'a missing blob is undefined');
      const many = await s.getMany(['b/sess.2', 'i/1', 'b/none', 'b/sess.3']);
      t.same([dec(many[0]), dec(many[1]), many[2], many[3]?.length], ['small', 'meta', undefined, 0], 'getMany mixes blobs and metadata, in order');
      t.same(await s.keys('b/'), ['b/sess.1', 'b/sess.2', 'b/sess.3'], 'keys lists the blobs in byte order');
      t.same(await s.keys('b/sess.2'), ['b/sess.2'], 'keys by a longer prefix');
      await s.del(['b/sess.1', 'b/none', 'i/1']);
      t.equal(await s.get('b/sess.1'), undefined, 'a deleted blob is gone');
      t.equal(await s.get('i/1'), undefined, 'and the metadata deleted with it');
      t.same(await s.keys('b/'), ['b/sess.2', 'b/sess.3'], 'keys no longer lists it');
      await s.sync();
      t.equal(dec(await s.get('b/sess.2')), 'small', 'sync keeps it');
    });

    t.test('getRange (where an engine offers it): part of a blob, fewer bytes at its end, undefined when absent', async (t) => {
      const s = await open(t);
      if (!s.getRange) {
        t.pass(`${name} reads whole values only (getRange is optional)`);
        return;
      }
      const blob = Uint8Array.from({ length: 70_000 }, (_, i) => (i * 13) % 251);
      await s.put('b/r.1', blob);
      t.same(bytes(await s.getRange('b/r.1', 0, 10)), [...blob.subarray(0, 10)], 'the first bytes');
      t.same(bytes(await s.getRange('b/r.1', 65_536, 4096)), [...blob.subarray(65_536, 69_632)], 'bytes in the middle');
      t.same(bytes(await s.getRange('b/r.1', 69_000, 4096)), [...blob.subarray(69_000)], 'fewer at the end');
      t.equal((await s.getRange('b/r.1', 80_000, 10))?.length, 0, 'none past the end');
      t.equal(await s.getRange('b/none', 0, 10), undefined, 'an absent blob is undefined');
    });

    t.test('getMany keeps order and gives undefined for missing keys', async (t) => {
      const s = await open(t);
      await s.put('m/a', enc('A'));
      await s.put('m/c', enc('C'));
      const got = await s.getMany(['m/c', 'm/x', 'm/a', 'm/c']);
      t.same(got.map(dec), ['C', undefined, 'A', 'C']);
      t.same(await s.getMany([]), []);
    });

    t.test('binary values: every byte value, empty, large', async (t) => {
      const s = await open(t);
      const all = Uint8Array.from({ length: 512 }, (_, i) => (i * 7) % 256); // each byte value twice, shuffled
      const empty = new Uint8Array(0);
      const large = Uint8Array.from({ length: (1 << 20) + 1 }, (_, i) => (i * 31 + (i >> 8)) & 0xff);
      await s.put('v/all', all);
      await s.put('v/empty', empty);
      await s.put('v/large', large);
      t.same(bytes(await s.get('v/all')), [...all], 'all 256 byte values');
      const e = await s.get('v/empty');
      t.ok(e !== undefined && e.length === 0, 'empty value is stored, and differs from a missing key');
      t.ok(Buffer.from((await s.get('v/large'))!).equals(large), '1 MiB + 1 value');
      const [a, em] = await s.getMany(['v/all', 'v/empty']);
      t.same(bytes(a), [...all], 'getMany returns exact bytes');
      t.same(bytes(em), [], 'getMany returns the empty value');
      const scanned = await s.scan('v/');
      t.same(scanned.map(([k]) => k), ['v/all', 'v/empty', 'v/large']);
      t.same(bytes(scanned[1]![1]), [], 'scan returns the empty value');
    });

    t.test('stored values are copies of what the caller gave', async (t) => {
      // (returned values may be shared with the engine: callers never modify them, kv.ts)
      const s = await open(t);
      const src = enc('abc');
      await s.put('c/x', src);
      src[0] = 0x7a;
      t.equal(dec(await s.get('c/x')), 'abc', 'changing the put buffer afterwards changes nothing');
      const w = enc('def');
      t.equal(await s.commit([], [{ key: 'c/y', value: w }]), true);
      w[0] = 0x7a;
      t.equal(dec(await s.get('c/y')), 'def', 'changing a committed buffer afterwards changes nothing');
    });

    t.test('scan returns one collection in key byte order, paged by after and limit', async (t) => {
      const s = await open(t);
      const keys = ['s/b0', 's/~', 's/a', 's/B', 's/b', 's/0', 's/a-', 's/a.b', 's/_'];
      for (const k of keys) await s.put(k, enc(`val ${k}`));
      const sorted = [...keys].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
      const all = await s.scan('s/');
      t.same(all.map(([k]) => k), sorted, 'byte order');
      t.same(all.map(([, v]) => dec(v)), sorted.map((k) => `val ${k}`), 'values match their keys');

      const paged: string[] = [];
      let after: string | undefined;
      for (let pages = 0; pages < 20; pages++) {
        const page = await s.scan('s/', { after, limit: 2 });
        t.ok(page.length <= 2, 'a page holds at most limit entries');
        if (page.length === 0) break;
        paged.push(...page.map(([k]) => k));
        after = page[page.length - 1]![0];
      }
      t.same(paged, sorted, 'paging visits every key once, in order');

      t.same((await s.scan('s/', { after: 's/a' })).map(([k]) => k), sorted.slice(sorted.indexOf('s/a') + 1), 'after is exclusive');
      t.same((await s.scan('s/', { after: 's/aa', limit: 1 })).map(([k]) => k), ['s/b'], 'after need not exist');
      t.same(await s.scan('s/', { after: 's/~' }), [], 'after the last key: empty');
      t.same(await s.scan('t/'), [], 'an empty collection');
    });

    t.test('scan never returns members of another collection', async (t) => {
      const s = await open(t);
      const keys = ['d/0/z', 'd/1', 'd/1/x', 'd/1/y', 'd/10/a', 'd/12/x', 'd/1x', 'd/1-/q', 'd/2/q', 'd/', 'e/1/x'];
      for (const k of keys) await s.put(k, enc(k));
      t.same((await s.scan('d/1/')).map(([k]) => k), ['d/1/x', 'd/1/y'], 'd/1/ holds only its own members');
      t.same((await s.scan('d/12/')).map(([k]) => k), ['d/12/x']);
      t.same((await s.scan('d/1/', { after: 'd/1/y' })), [], 'paging past the end does not spill over');
      t.same((await s.scan('d/1/', { after: 'd/1/x', limit: 5 })).map(([k]) => k), ['d/1/y']);
    });

    t.test('a key belongs to the collection named by its last slash', async (t) => {
      const s = await open(t);
      for (const k of ['n/a', 'n/b/c', 'n/b/d', 'n/z']) await s.put(k, enc(k));
      t.same((await s.scan('n/')).map(([k]) => k), ['n/a', 'n/z'], 'n/ holds n/a and n/z, not the deeper n/b/*');
      t.same((await s.scan('n/b/')).map(([k]) => k), ['n/b/c', 'n/b/d']);
      t.same((await s.scan('n/', { after: 'n/a', limit: 1 })).map(([k]) => k), ['n/z'], 'paging skips deeper keys');
    });

    t.test('keys lists every key under a prefix, of every collection, in byte order', async (t) => {
      const s = await open(t);
      for (const k of ['k/b', 'k/a/x', 'k/a/y', 'k/c/d/e', 'kz/1', 'j/1']) await s.put(k, enc(k));
      t.same(await s.keys('k/'), ['k/a/x', 'k/a/y', 'k/b', 'k/c/d/e']);
      t.same(await s.keys('k/a'), ['k/a/x', 'k/a/y']);
      t.same(await s.keys('q/'), []);
    });

    t.test('keyPages walks every key under a prefix, of every collection, in pages of at most limit', async (t) => {
      const s = await open(t);
      const meta = Array.from({ length: 53 }, (_, i) => `w/${i % 3}/${String(i).padStart(3, '0')}`);
      // blobs: small ones (which the embedded engine keeps in LMDB) and chunk-sized ones (in files)
      const blobs = Array.from({ length: 21 }, (_, i) => `b/walk.${i}`);
      for (const k of meta) await s.put(k, enc(k));
      for (const [i, k] of blobs.entries()) await s.put(k, i % 2 ? new Uint8Array(256 << 10).fill(i) : enc(k));
      for (const k of ['wz/1', 'v/1']) await s.put(k, enc(k));
      const walk = async (prefix: string, limit?: number) => {
        const pages: string[][] = [];
        for await (const p of s.keyPages(prefix, limit)) pages.push(p);
        return pages;
      };
      const pages = await walk('w/', 10);
      t.ok(pages.every((p) => p.length >= 1 && p.length <= 10), `pages of 1 to 10 keys (${pages.map((p) => p.length).join(' ')})`);
      t.same([...new Set(pages.flat())].sort(), [...meta].sort(), 'every key under w/ (not wz/), of every collection');
      t.equal(pages.flat().length, new Set(pages.flat()).size, 'each once');
      t.same([...new Set((await walk('b/walk.', 4)).flat())].sort(), [...blobs].sort(), 'blobs, in the database and in files');
      t.same((await walk('w/1/')).flat().sort(), meta.filter((k) => k.startsWith('w/1/')).sort(), 'a collection, default page size');
      t.same(await walk('q/'), [], 'nothing under an unused prefix: no page at all');
      // a walk that deletes what it met goes on to the keys it has not met
      const seen: string[] = [];
      for await (const p of s.keyPages('w/', 7)) {
        seen.push(...p);
        await s.del(p);
      }
      t.same([...new Set(seen)].sort(), [...meta].sort(), 'deleting each page as it comes does not hide later keys');
      t.same(await s.keys('w/'), [], 'and they are gone');
      await rejectsWith(t, (async () => { for await (const p of s.keyPages('w/', 0)) void p; })(), 'INVALID', 'keyPages limit 0');
    });

    t.test('scan rejects a prefix that is not a collection', async (t) => {
      const s = await open(t);
      await rejectsWith(t, s.scan('d/1'), 'INVALID', "scan('d/1')");
    });

    t.test('incr: absent is 0, negative deltas, returns the new value', async (t) => {
      const s = await open(t);
      t.equal(await s.incr('n/a', 5), 5);
      t.equal(await s.incr('n/a', -7), -2);
      t.equal(await s.incr('n/a', 0), -2);
      t.equal(await s.incr('n/b', -1), -1, 'absent counter with a negative delta');
      t.equal(dec(await s.get('n/a')), '-2', 'a counter reads as decimal ASCII, as Redis keeps it');
      t.equal(await s.incr('n/a', 2 ** 40), 2 ** 40 - 2, 'beyond 32 bits');
      await s.put('n/c', enc('41'));
      t.equal(await s.incr('n/c', 1), 42, 'a counter written with put');
      await s.put('n/bad', enc('forty'));
      await rejectsWith(t, s.incr('n/bad', 1), 'CORRUPT', 'incr of a non-integer value');
      t.equal(dec(await s.get('n/bad')), 'forty', 'a failed incr changes nothing');
      await rejectsWith(t, s.incr('n/a', 1.5), 'INVALID', 'a fractional delta');
    });

    t.test('incr is atomic under concurrency', async (t) => {
      const s = await open(t);
      const n = 50;
      const results = await Promise.all(Array.from({ length: n }, () => s.incr('n/race', 1)));
      t.same([...results].sort((a, b) => a - b), Array.from({ length: n }, (_, i) => i + 1), 'each caller sees its own value');
      t.equal(dec(await s.get('n/race')), String(n));
    });

    t.test('commit applies every write when every check holds', async (t) => {
      const s = await open(t);
      await s.put('x/a', enc('A1'));
      await s.put('x/b', enc('B1'));
      await s.put('x/gone', enc('G'));
      const ok = await s.commit(
        [{ key: 'x/a', value: enc('A1') }, { key: 'x/b', value: enc('B1') }, { key: 'x/new', value: undefined }],
        [
          { key: 'x/a', value: enc('A2') },
          { key: 'x/new', value: enc('N') },
          { key: 'x/gone', value: null },
          { key: 'x/never', value: null },
        ],
      );
      t.equal(ok, true);
      t.same((await s.getMany(['x/a', 'x/b', 'x/new', 'x/gone', 'x/never'])).map(dec), ['A2', 'B1', 'N', undefined, undefined]);
      t.equal(await s.commit([], [{ key: 'x/b', value: enc('B2') }], 'tx-1'), true, 'no checks: unconditional; txid accepted');
      t.equal(dec(await s.get('x/b')), 'B2');
      t.equal(await s.commit([{ key: 'x/b', value: enc('B2') }], []), true, 'checks only');
      t.equal(await s.commit([], []), true, 'empty commit');
    });

    t.test('commit changes nothing when one check fails', async (t) => {
      const s = await open(t);
      await s.put('y/a', enc('A1'));
      await s.put('y/b', enc('B1'));
      await s.put('y/del', enc('D'));
      const writes = [
        { key: 'y/a', value: enc('A2') },
        { key: 'y/new', value: enc('N') },
        { key: 'y/del', value: null },
      ];
      const expectUnchanged = async (what: string): Promise<void> => {
        t.same((await s.getMany(['y/a', 'y/b', 'y/new', 'y/del'])).map(dec), ['A1', 'B1', undefined, 'D'], what);
      };
      t.equal(await s.commit([{ key: 'y/a', value: enc('A1') }, { key: 'y/b', value: enc('B0') }], writes), false, 'wrong value');
      await expectUnchanged('after a wrong-value check');
      t.equal(await s.commit([{ key: 'y/b', value: enc('B1x') }], writes), false, 'longer value');
      t.equal(await s.commit([{ key: 'y/b', value: enc('B') }], writes), false, 'prefix of the value');
      await expectUnchanged('after whole-value comparisons');
      t.equal(await s.commit([{ key: 'y/b', value: undefined }], writes), false, 'must-not-exist on an existing key');
      await expectUnchanged('after a failed must-not-exist check');
      t.equal(await s.commit([{ key: 'y/none', value: enc('') }], writes), false, 'a value check on a missing key');
      await expectUnchanged('after a value check on a missing key');
    });

    t.test('commit tells an empty value from a missing key', async (t) => {
      const s = await open(t);
      await s.put('z/empty', new Uint8Array(0));
      t.equal(await s.commit([{ key: 'z/empty', value: undefined }], [{ key: 'z/w', value: enc('1') }]), false);
      t.equal(await s.commit([{ key: 'z/empty', value: new Uint8Array(0) }], [{ key: 'z/w', value: enc('2') }]), true);
      t.equal(dec(await s.get('z/w')), '2');
      t.equal(await s.commit([{ key: 'z/w', value: enc('2') }], [{ key: 'z/w', value: null }]), true, 'delete via a null write');
      t.equal(await s.get('z/w'), undefined);
      t.equal(await s.commit([{ key: 'z/w', value: undefined }], [{ key: 'z/w', value: enc('3') }]), true, 'create if absent');
      t.equal(dec(await s.get('z/w')), '3');
    });

    t.test('racing commits on one key: exactly one wins', async (t) => {
      const s = await open(t);
      const n = 20;
      const created = await Promise.all(
        Array.from({ length: n }, (_, i) => s.commit([{ key: 'r/k', value: undefined }], [{ key: 'r/k', value: enc(`w${i}`) }, { key: `r/by/${i}`, value: enc('x') }])),
      );
      t.equal(created.filter(Boolean).length, 1, 'one create-if-absent wins');
      const winner = created.indexOf(true);
      t.equal(dec(await s.get('r/k')), `w${winner}`, 'the stored value is the winner');
      t.same((await s.scan('r/by/')).map(([k]) => k), [`r/by/${winner}`], "no loser's writes were applied");

      const swapped = await Promise.all(
        Array.from({ length: n }, (_, i) => s.commit([{ key: 'r/k', value: enc(`w${winner}`) }], [{ key: 'r/k', value: enc(`s${i}`) }])),
      );
      t.equal(swapped.filter(Boolean).length, 1, 'one compare-and-swap wins');
      t.equal(dec(await s.get('r/k')), `s${swapped.indexOf(true)}`);
    });

    t.test('writes called without awaiting apply in call order', async (t) => {
      const s = await open(t);
      const done = [
        s.put('o/k', enc('1')),
        s.commit([], [{ key: 'o/k', value: enc('2') }]),
        s.put('o/k', enc('3')),
        s.del(['o/k']),
        s.commit([{ key: 'o/k', value: undefined }], [{ key: 'o/k', value: enc('5') }]),
        s.put('o/k', enc('6')),
        s.incr('o/n', 1),
        s.put('o/n', enc('10')),
        s.incr('o/n', 1),
      ];
      await Promise.all(done);
      t.equal(dec(await s.get('o/k')), '6');
      t.equal(dec(await s.get('o/n')), '11');
    });

    t.test('sync and info', async (t) => {
      const s = await open(t);
      await s.put('i/a', enc('x'));
      await s.sync();
      const info = await s.info();
      t.type(info.engine, 'string');
      t.ok(info.engine.length > 0, 'names its engine');
      if (info.freeBytes !== undefined) t.ok(info.freeBytes >= 0, 'free bytes is a number');
      if (info.capacityBytes !== undefined && info.freeBytes !== undefined) t.ok(info.freeBytes <= info.capacityBytes);
    });

    t.test('after close every call fails with CLOSED', async (t) => {
      const s = await factory();
      await s.put('q/a', enc('x'));
      await s.close();
      await rejectsWith(t, s.get('q/a'), 'CLOSED', 'get');
      await rejectsWith(t, s.getMany(['q/a']), 'CLOSED', 'getMany');
      await rejectsWith(t, s.put('q/a', enc('y')), 'CLOSED', 'put');
      await rejectsWith(t, s.del(['q/a']), 'CLOSED', 'del');
      await rejectsWith(t, s.scan('q/'), 'CLOSED', 'scan');
      await rejectsWith(t, s.incr('q/n', 1), 'CLOSED', 'incr');
      await rejectsWith(t, s.commit([], [{ key: 'q/a', value: null }]), 'CLOSED', 'commit');
      await rejectsWith(t, s.sync(), 'CLOSED', 'sync');
      await rejectsWith(t, s.info(), 'CLOSED', 'info');
      await s.close();
      t.pass('a second close resolves');
    });
  });
}
