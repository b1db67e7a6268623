/**
 * The buffer pool's rules (src/bufferpool/buffer-pool.ts, header): fixed capacity cut from one arena, the
 * smallest fitting class (a larger one when it is empty), FIFO waiters with abort, exactly-once release of the
 * very object handed out, CLOSED after close(), stats per class and per pool, leak reports with the acquiring
 * stack in debug mode, and defaultClasses().
 *
 * The random workload runs the pool against a reference model of those rules, one step at a time, and checks
 * after every step that the pool did what the model says (which waiter got which class) and that in-use bytes
 * and their high-water never exceed the capacity.
 *
 *   KVFS_POOL_SEED=1234   replay one seed of the random workload (printed by every run)
 *   KVFS_POOL_STEPS=N     steps per workload (default 4000)
 */
import t, { type Test } from 'tap';
import { getEventListeners } from 'node:events';
import { BufferPool, PoolError, defaultClasses, type PoolStats, type SizeClass } from '../../src/bufferpool/buffer-pool.js';
import { prng } from '../helpers/prng.js';

const KIB = 1024;
const MIB = 1 << 20;
const seed = Number(process.env.KVFS_POOL_SEED ?? Math.floor(Math.random() * 2 ** 31));
const STEPS = Number(process.env.KVFS_POOL_STEPS ?? 4000);


/** lets every settled promise run its callbacks */
const flush = () => new Promise<void>((r) => setImmediate(r));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** asserts that fn throws synchronously (or its promise rejects) with a PoolError of this code */
async function poolError(t: Test, what: string, code: string, fn: () => unknown): Promise<void> {
  try {
    await fn();
    t.fail(`${what}: expected PoolError ${code}, but it succeeded`);
  } catch (e) {
    t.ok(e instanceof PoolError, `${what}: a PoolError`, { got: e });
    t.equal((e as { code?: unknown }).code, code, `${what}: code ${code}`);
  }
}

/** a promise's state, observed after a flush */
function track<T>(p: Promise<T>): { p: Promise<T>; state: 'pending' | 'resolved' | 'rejected'; value?: T; error?: unknown } {
  const s: { p: Promise<T>; state: 'pending' | 'resolved' | 'rejected'; value?: T; error?: unknown } = { p, state: 'pending' };
  p.then(
    (v) => {
      s.state = 'resolved';
      s.value = v;
    },
    (e) => {
      s.state = 'rejected';
      s.error = e;
    },
  );
  return s;
}

/** a small pool: 4 KiB x4, 64 KiB x2, 256 KiB x1 (capacity 4*4K + 2*64K + 256K) */
const SMALL: SizeClass[] = [{ size: 64 * KIB, count: 2 }, { size: 4 * KIB, count: 4 }, { size: 256 * KIB, count: 1 }];
const small = (debug = false) => new BufferPool({ classes: SMALL, debug });

t.test('construction: classes, capacity, one arena', async (t) => {
  const p = small();
  t.equal(p.capacityBytes, 4 * 4 * KIB + 2 * 64 * KIB + 256 * KIB, 'capacity is the sum of size x count');
  t.equal(p.maxSize, 256 * KIB, 'maxSize is the largest class');
  const s = p.stats();
  t.same(s.classes.map((c) => [c.size, c.count, c.inUse, c.free, c.highWater]),
    [[4 * KIB, 4, 0, 4, 0], [64 * KIB, 2, 0, 2, 0], [256 * KIB, 1, 0, 1, 0]], 'classes sorted by size, all free');
  t.match(s, { capacityBytes: p.capacityBytes, inUseBytes: 0, highWaterBytes: 0, waiters: 0, totalWaits: 0, totalWaitMs: 0 });
  t.ok(p.arena.byteLength >= p.capacityBytes, 'the arena holds every buffer');

  // every buffer is a view of the arena; no two overlap
  const held: Buffer[] = [];
  for (const size of [4 * KIB, 4 * KIB, 4 * KIB, 4 * KIB, 64 * KIB, 64 * KIB, 256 * KIB]) {
    const b = p.tryAcquire(size);
    t.ok(b, `a ${size}-byte buffer is free`);
    held.push(b!);
  }
  t.ok(held.every((b) => b.buffer === p.arena), 'every buffer is cut from the arena');
  const ranges = held.map((b) => [b.byteOffset, b.byteOffset + b.length]).sort((a, b) => a[0]! - b[0]!);
  t.ok(ranges.every((r, i) => i === 0 || r[0]! >= ranges[i - 1]![1]!), 'no two buffers overlap', { ranges });
  t.ok(ranges.every((r) => r[1]! <= p.arena.byteLength), 'all inside the arena');
  t.equal(p.tryAcquire(1), undefined, 'then nothing is free');
  t.equal(p.stats().inUseBytes, p.capacityBytes, 'in use = capacity, never more');

  // a given arena is used as is
  const arena = new ArrayBuffer(p.capacityBytes + 100);
  const q = new BufferPool({ classes: SMALL, arena });
  t.equal(q.arena, arena, 'a given arena is the pool\'s arena');
  t.equal(q.tryAcquire(10)!.buffer, arena, 'buffers are cut from the given arena');
  t.throws(() => new BufferPool({ classes: SMALL, arena: new ArrayBuffer(p.capacityBytes - 1) }), RangeError,
    'an arena smaller than the classes is refused');

  for (const [what, classes] of [
    ['no classes', []],
    ['a zero size', [{ size: 0, count: 1 }]],
    ['a zero count', [{ size: 4096, count: 0 }]],
    ['a fractional count', [{ size: 4096, count: 1.5 }]],
    ['a negative size', [{ size: -4096, count: 1 }]],
    ['NaN size', [{ size: NaN, count: 1 }]],
  ] as [string, SizeClass[]][]) {
    t.throws(() => new BufferPool({ classes }), RangeError, `refused: ${what}`);
  }
});

t.test('acquire: the smallest free class that fits; a larger one when it is empty', async (t) => {
  const p = small();
  t.equal((await p.acquire(0)).length, 4 * KIB, '0 bytes: smallest class');
  t.equal((await p.acquire(1)).length, 4 * KIB, '1 byte: 4 KiB');
  t.equal((await p.acquire(4 * KIB)).length, 4 * KIB, 'exactly 4 KiB: 4 KiB');
  t.equal((await p.acquire(4 * KIB + 1)).length, 64 * KIB, '4 KiB + 1: 64 KiB');
  t.equal((await p.acquire(100)).length, 4 * KIB, 'one 4 KiB left');
  t.equal((await p.acquire(100)).length, 64 * KIB, '4 KiB class empty: the 64 KiB class serves');
  t.equal((await p.acquire(100)).length, 256 * KIB, '64 KiB class empty too: the 256 KiB class serves');
  t.equal(p.tryAcquire(1), undefined, 'all taken: tryAcquire gives nothing');
  t.equal(p.stats().waiters, 0, 'and does not queue');
  const s = p.stats();
  t.same(s.classes.map((c) => c.inUse), [4, 2, 1]);
  t.same(s.classes.map((c) => c.free), [0, 0, 0]);
  t.equal(s.totalWaits, 0, 'nothing waited');
});

t.test('TOO_LARGE: a request above the largest class', async (t) => {
  const p = small();
  let p1: Promise<Buffer> | undefined;
  t.doesNotThrow(() => (p1 = p.acquire(256 * KIB + 1)), 'acquire does not throw synchronously');
  await poolError(t, 'acquire(max + 1)', 'TOO_LARGE', () => p1);
  await poolError(t, 'tryAcquire(max + 1)', 'TOO_LARGE', () => p.tryAcquire(256 * KIB + 1));
  await poolError(t, 'acquire(-1)', 'TOO_LARGE', () => p.acquire(-1));
  await poolError(t, 'acquire(NaN)', 'TOO_LARGE', () => p.acquire(NaN));
  t.equal((await p.acquire(256 * KIB)).length, 256 * KIB, 'exactly the largest class is fine');
  const s = p.stats();
  t.equal(s.waiters, 0, 'refused requests never queue');
  t.equal(s.totalWaits, 0);
  t.equal(s.inUseBytes, 256 * KIB);
});

t.test('FIFO: the earliest waiter a released buffer fits gets it', async (t) => {
  t.test('same size: in order of arrival', async (t) => {
    const p = new BufferPool({ classes: [{ size: 4096, count: 1 }] });
    const first = await p.acquire(10);
    const w = [1, 2, 3, 4, 5].map(() => track(p.acquire(10)));
    await flush();
    t.equal(p.stats().waiters, 5, 'five waiters');
    let cur = first;
    for (let i = 0; i < 5; i++) {
      p.release(cur);
      await flush();
      t.same(w.map((x) => x.state), w.map((_, j) => (j <= i ? 'resolved' : 'pending')), `release ${i + 1}: waiter ${i + 1} served`);
      cur = w[i]!.value!;
    }
    t.equal(cur, first, 'the one buffer went round');
    p.release(cur);
    t.equal(p.stats().waiters, 0);
  });

  t.test('a new acquire does not jump the queue', async (t) => {
    const p = new BufferPool({ classes: [{ size: 4096, count: 1 }] });
    const b = await p.acquire(10);
    const w = track(p.acquire(10));
    p.release(b);
    t.equal(p.tryAcquire(10), undefined, 'right after the release, the buffer is already the waiter\'s');
    const late = track(p.acquire(10));
    await flush();
    t.equal(w.state, 'resolved', 'the waiter got it');
    t.equal(late.state, 'pending', 'the later acquire waits');
    p.release(w.value!);
    await flush();
    t.equal(late.state, 'resolved', 'and is served next');
    p.release(late.value!);
  });

  t.test('mixed sizes: a buffer goes to the earliest waiter it fits, skipping ones it does not', async (t) => {
    const p = new BufferPool({ classes: [{ size: 4096, count: 1 }, { size: 65536, count: 1 }] });
    const a = await p.acquire(4096);
    const b = await p.acquire(65536);
    const big = track(p.acquire(65536)); // only the 64 KiB class fits
    const small1 = track(p.acquire(100));
    const small2 = track(p.acquire(100));
    await flush();
    t.equal(p.stats().waiters, 3);
    p.release(a); // 4 KiB: does not fit `big`; goes to small1
    await flush();
    t.same([big.state, small1.state, small2.state], ['pending', 'resolved', 'pending'], '4 KiB buffer: to the first small waiter');
    t.equal(small1.value, a);
    p.release(b); // 64 KiB: fits big, which came first
    await flush();
    t.same([big.state, small2.state], ['resolved', 'pending'], '64 KiB buffer: to the big waiter, who came first');
    t.equal(big.value, b);
    p.release(big.value!); // 64 KiB again: small2 is next and fits (a larger class serves)
    await flush();
    t.equal(small2.state, 'resolved', 'a released 64 KiB buffer serves a waiting 100-byte request');
    t.equal(small2.value!.length, 65536);
    p.release(small1.value!);
    p.release(small2.value!);
    t.same(p.stats().classes.map((c) => c.free), [1, 1]);
  });

  t.test('a larger class serves a waiter when the right one stays empty', async (t) => {
    const p = new BufferPool({ classes: [{ size: 4096, count: 1 }, { size: 65536, count: 1 }] });
    const a = await p.acquire(1);
    const b = await p.acquire(1); // the 64 KiB one
    t.equal(b.length, 65536);
    const w = track(p.acquire(1));
    p.release(b);
    await flush();
    t.equal(w.state, 'resolved', 'served with the larger buffer');
    t.equal(w.value, b);
    p.release(a);
    p.release(w.value!);
  });
});

t.test('abort: an aborted waiter leaves the queue at once', async (t) => {
  t.test('the promise rejects ABORTED; a later release goes to the next waiter', async (t) => {
    const p = new BufferPool({ classes: [{ size: 4096, count: 1 }] });
    const b = await p.acquire(1);
    const ac = new AbortController();
    const aborted = track(p.acquire(1, ac.signal));
    const next = track(p.acquire(1));
    await flush();
    t.equal(p.stats().waiters, 2);
    ac.abort();
    t.equal(p.stats().waiters, 1, 'the aborted waiter left the queue synchronously');
    await flush();
    t.equal(aborted.state, 'rejected');
    t.ok(aborted.error instanceof PoolError && aborted.error.code === 'ABORTED', 'with PoolError ABORTED', { got: aborted.error });
    t.same(getEventListeners(ac.signal, 'abort'), [], 'no listener left on the signal');
    p.release(b);
    await flush();
    t.equal(next.state, 'resolved', 'the released buffer went to the next waiter');
    t.equal(next.value, b);
    t.equal(p.stats().classes[0]!.free, 0, 'not to the aborted one (nothing free, nothing lost)');
    p.release(next.value!);
    t.equal(p.stats().classes[0]!.free, 1);
  });

  t.test('aborting the middle waiter keeps the order of the others', async (t) => {
    const p = new BufferPool({ classes: [{ size: 4096, count: 1 }] });
    let b = await p.acquire(1);
    const acs = [0, 1, 2].map(() => new AbortController());
    const w = acs.map((ac) => track(p.acquire(1, ac.signal)));
    acs[1]!.abort();
    p.release(b);
    await flush();
    t.same(w.map((x) => x.state), ['resolved', 'rejected', 'pending']);
    b = w[0]!.value!;
    p.release(b);
    await flush();
    t.same(w.map((x) => x.state), ['resolved', 'rejected', 'resolved']);
    p.release(w[2]!.value!);
    t.same(acs.map((ac) => getEventListeners(ac.signal, 'abort').length), [0, 0, 0], 'served waiters remove their listeners');
  });

  t.test('an already-aborted signal rejects at once and never queues', async (t) => {
    const p = new BufferPool({ classes: [{ size: 4096, count: 1 }] });
    const b = await p.acquire(1);
    const ac = new AbortController();
    ac.abort();
    const w = track(p.acquire(1, ac.signal));
    t.equal(p.stats().waiters, 0, 'not queued');
    await flush();
    t.equal(w.state, 'rejected');
    t.equal((w.error as PoolError).code, 'ABORTED');
    t.equal(p.stats().totalWaits, 0, 'not counted as a wait');
    p.release(b);
    t.equal(p.stats().classes[0]!.free, 1, 'the buffer comes back free');
  });

  t.test('aborting after the buffer was handed over changes nothing', async (t) => {
    const p = new BufferPool({ classes: [{ size: 4096, count: 1 }] });
    const b = await p.acquire(1);
    const ac = new AbortController();
    const w = track(p.acquire(1, ac.signal));
    p.release(b);
    await flush();
    t.equal(w.state, 'resolved');
    ac.abort();
    await flush();
    t.equal(w.state, 'resolved', 'still resolved');
    t.equal(p.stats().classes[0]!.inUse, 1, 'the buffer is still held by its owner');
    p.release(w.value!);
    t.equal(p.stats().classes[0]!.free, 1);
  });
});

t.test('release: exactly once, the very object handed out', async (t) => {
  t.test('DOUBLE_RELEASE throws and changes nothing', async (t) => {
    const p = small();
    const a = await p.acquire(1);
    const b = await p.acquire(1);
    p.release(a);
    const before = p.stats();
    await poolError(t, 'second release', 'DOUBLE_RELEASE', () => p.release(a));
    t.same(p.stats(), before, 'stats unchanged');
    // the freed buffer is given out again once; a double release must not make it free twice
    const again = [await p.acquire(1), await p.acquire(1), await p.acquire(1), await p.acquire(1)];
    t.equal(new Set(again).size, 4, 'four distinct 4 KiB buffers (no buffer handed out twice)');
    t.equal(again.filter((x) => x === a).length, 1, 'the released one once');
    t.equal((await p.acquire(1)).length, 64 * KIB, 'then the 4 KiB class is empty');
    p.release(b);
  });

  t.test('DOUBLE_RELEASE while others wait: no waiter is served by it', async (t) => {
    const p = new BufferPool({ classes: [{ size: 4096, count: 1 }, { size: 65536, count: 1 }] });
    const a = await p.acquire(1);
    const b = await p.acquire(65536);
    const w = track(p.acquire(65536)); // waits for the 64 KiB buffer; a 4 KiB one does not fit it
    p.release(a);
    await flush();
    t.equal(w.state, 'pending', 'the 4 KiB buffer does not fit the waiter');
    const before = p.stats();
    await poolError(t, 'releasing the 4 KiB buffer again', 'DOUBLE_RELEASE', () => p.release(a));
    t.same(p.stats(), before, 'stats unchanged');
    t.equal(p.stats().classes[0]!.free, 1, 'the 4 KiB buffer is free once, not twice');
    p.release(b);
    await flush();
    t.equal(w.value, b, 'the waiter gets the 64 KiB buffer when it comes back');
    await poolError(t, 'the original owner releasing it again (the waiter holds it now)', 'DOUBLE_RELEASE', () => {
      p.release(w.value!);
      p.release(w.value!);
    });
    t.equal(p.stats().inUseBytes, 0);
  });

  t.test('FOREIGN: buffers the pool did not hand out are refused', async (t) => {
    const p = small();
    const other = small();
    const mine = await p.acquire(1);
    const theirs = await other.acquire(1);
    const cases: [string, Buffer | Uint8Array][] = [
      ['a Buffer not from the pool', Buffer.alloc(4096)],
      ['a subarray view of a pool buffer', mine.subarray(0, 100)],
      ['a whole-length subarray of a pool buffer', mine.subarray(0)],
      ['a new Buffer over the same memory', Buffer.from(mine.buffer, mine.byteOffset, mine.length)],
      ['a Uint8Array over the same memory', new Uint8Array(mine.buffer, mine.byteOffset, mine.length)],
      ['a copy of a pool buffer', Buffer.from(mine)],
      ['a buffer from another pool', theirs],
    ];
    for (const [what, buf] of cases) {
      const before = p.stats();
      await poolError(t, what, 'FOREIGN', () => p.release(buf as Buffer));
      t.same(p.stats(), before, `${what}: stats unchanged`);
    }
    t.equal(other.stats().classes[0]!.inUse, 1, 'the other pool still counts its buffer held');
    p.release(mine);
    other.release(theirs);
    t.equal(p.stats().inUseBytes, 0);
  });
});

t.test('close(): waiters rejected CLOSED, later acquires refused', async (t) => {
  const p = new BufferPool({ classes: [{ size: 4096, count: 1 }] });
  const b = await p.acquire(1);
  const ac = new AbortController();
  const w1 = track(p.acquire(1, ac.signal));
  const w2 = track(p.acquire(1));
  p.close();
  t.equal(p.stats().waiters, 0, 'no waiters left');
  await flush();
  for (const [i, w] of [w1, w2].entries()) {
    t.equal(w.state, 'rejected', `waiter ${i + 1} rejected`);
    t.equal((w.error as PoolError | undefined)?.code, 'CLOSED', `waiter ${i + 1}: CLOSED`);
  }
  t.same(getEventListeners(ac.signal, 'abort'), [], 'listeners removed');
  ac.abort(); // after close: nothing happens
  await poolError(t, 'acquire after close', 'CLOSED', () => p.acquire(1));
  await poolError(t, 'tryAcquire after close', 'CLOSED', () => p.tryAcquire(1));
  t.doesNotThrow(() => p.release(b), 'a buffer held at close can still be released');
  t.equal(p.stats().inUseBytes, 0);
  t.equal(p.stats().classes[0]!.free, 1);
  await poolError(t, 'and it is not handed out again', 'CLOSED', () => p.acquire(1));
});

t.test('stats: per class and per pool', async (t) => {
  const p = small();
  const a = await p.acquire(1);
  const b = await p.acquire(1);
  const c = await p.acquire(5000); // 64 KiB
  let s = p.stats();
  t.same(s.classes.map((x) => ({ inUse: x.inUse, free: x.free, highWater: x.highWater })),
    [{ inUse: 2, free: 2, highWater: 2 }, { inUse: 1, free: 1, highWater: 1 }, { inUse: 0, free: 1, highWater: 0 }]);
  t.equal(s.inUseBytes, 2 * 4 * KIB + 64 * KIB);
  p.release(a);
  p.release(b);
  s = p.stats();
  t.same(s.classes.map((x) => [x.inUse, x.free, x.highWater]), [[0, 4, 2], [1, 1, 1], [0, 1, 0]], 'high-water stays');
  t.equal(s.inUseBytes, 64 * KIB);
  t.equal(s.highWaterBytes, 2 * 4 * KIB + 64 * KIB, 'pool high-water stays');

  // waits: count and time (64 KiB and 256 KiB all held, so 5000-byte requests wait)
  const d = await p.acquire(5000);
  const e = await p.acquire(256 * KIB);
  t.equal(d.length, 64 * KIB);
  t.equal(p.stats().totalWaits, 0, 'no wait yet');
  const w1 = track(p.acquire(5000));
  const w2 = track(p.acquire(5000));
  const ac = new AbortController();
  const w3 = track(p.acquire(5000, ac.signal));
  s = p.stats();
  t.equal(s.waiters, 3, 'three waiting now');
  t.equal(s.totalWaits, 3, 'three waits counted');
  ac.abort();
  t.equal(p.stats().waiters, 2, 'the aborted one is not waiting');
  t.equal(p.stats().totalWaits, 3, 'but its wait stays counted');
  const t0 = performance.now();
  await sleep(60);
  p.release(c);
  await flush();
  const waited = performance.now() - t0;
  t.equal(w1.state, 'resolved');
  t.equal(w1.value, c);
  s = p.stats();
  t.ok(s.totalWaitMs >= 50, `total wait time counts the wait (${s.totalWaitMs.toFixed(1)} ms >= 50)`);
  t.ok(s.totalWaitMs <= waited + 5, `and not more than it (${s.totalWaitMs.toFixed(1)} <= ${waited.toFixed(1)})`);
  t.equal(s.waiters, 1);
  t.equal(w3.state, 'rejected');
  p.release(e); // 256 KiB: fits the 5000-byte waiter
  await flush();
  t.equal(w2.state, 'resolved');
  t.equal(w2.value, e, 'served by the larger class');
  t.same(p.stats().classes.map((x) => x.highWater), [2, 2, 1], 'per-class high-water');
  p.release(w1.value!);
  p.release(w2.value!);
  p.release(d);
  s = p.stats();
  t.equal(s.inUseBytes, 0, 'all back');
  t.equal(s.waiters, 0);
  t.same(s.classes.map((x) => x.inUse), [0, 0, 0]);
  t.same(s.classes.map((x) => x.free), [4, 2, 1]);
  t.same(s.classes.map((x) => x.count), [4, 2, 1], 'count = in use + free, always');
  t.equal(s.highWaterBytes, 2 * 64 * KIB + 256 * KIB, 'pool high-water: the most held at once');
});

t.test('debug: leaks() lists held buffers with the stack that acquired them', async (t) => {
  t.test('an immediate acquire', async (t) => {
    const p = small(true);
    async function takeAndKeepABuffer() {
      return p.acquire(100);
    }
    function tryTakeABuffer() {
      return p.tryAcquire(70_000)!;
    }
    const kept = await takeAndKeepABuffer();
    const kept2 = tryTakeABuffer();
    const released = await p.acquire(5000);
    p.release(released);
    const leaks = p.leaks();
    t.equal(leaks.length, 2, 'two buffers held');
    t.same(leaks.map((l) => l.size).sort((a, b) => a - b), [4 * KIB, 256 * KIB]);
    const bySize = new Map(leaks.map((l) => [l.size, l.stack ?? '']));
    t.match(bySize.get(4 * KIB), /takeAndKeepABuffer/, 'the stack names the acquiring function');
    t.match(bySize.get(256 * KIB), /tryTakeABuffer/, 'tryAcquire too');
    p.release(kept);
    p.release(kept2);
    t.same(p.leaks(), [], 'nothing held, nothing listed');
  });

  t.test('a waiter served later: the stack is the waiter\'s acquire, not the releaser\'s', async (t) => {
    const p = new BufferPool({ classes: [{ size: 4096, count: 1 }], debug: true });
    const first = p.tryAcquire(1)!;
    function waitForABufferHere() {
      return p.acquire(1);
    }
    function releaseFromSomewhereElse(b: Buffer) {
      p.release(b);
    }
    const w = waitForABufferHere();
    releaseFromSomewhereElse(first);
    await w;
    const [leak] = p.leaks();
    t.ok(leak, 'the waiter\'s buffer is listed');
    t.match(leak?.stack ?? '', /waitForABufferHere/, 'the stack names the function that called acquire', {
      stack: leak?.stack,
    });
    t.notMatch(leak?.stack ?? '', /releaseFromSomewhereElse/, 'not the one that released the buffer it got');
  });

  t.test('without debug: buffers listed, no stacks', async (t) => {
    const p = small(false);
    await p.acquire(1);
    const leaks = p.leaks();
    t.equal(leaks.length, 1);
    t.equal(leaks[0]!.stack, undefined);
  });
});

t.test('defaultClasses(capacity): sizes and counts', async (t) => {
  const sizes = [4 * KIB, 64 * KIB, 256 * KIB, MIB + 4 * KIB];
  const shares = [0.1, 0.15, 0.25, 0.5];
  for (const mib of [4, 16, 64, 256, 1024]) {
    const cap = mib * MIB;
    const cls = defaultClasses(cap);
    t.same(cls.map((c) => c.size), sizes, `${mib} MiB: 4 KiB, 64 KiB, 256 KiB, 1 MiB + one page`);
    t.same(cls.map((c) => c.count), sizes.map((s, i) => Math.max(2, Math.floor((cap * shares[i]!) / s))),
      `${mib} MiB: counts are each class's share of the capacity`);
    const total = cls.reduce((n, c) => n + c.size * c.count, 0);
    t.ok(total <= cap, `${mib} MiB: the classes fit the capacity (${total} <= ${cap})`);
    t.ok(total >= cap * 0.9, `${mib} MiB: and use most of it (${total})`);
    const pool = new BufferPool({ classes: cls });
    t.equal(pool.capacityBytes, total);
    t.ok(pool.maxSize >= MIB + 40, `${mib} MiB: a 1 MiB write with its header fits one buffer`);
  }
  t.same(defaultClasses(64 * MIB).map((c) => c.count), [1638, 153, 64, 31], '64 MiB (the default): exact counts');
  t.same(defaultClasses(4 * MIB).map((c) => c.count), [102, 9, 4, 2], '4 MiB: exact counts');
  t.same(defaultClasses(0).map((c) => c.count), [2, 2, 2, 2], 'at least two of each, however small the capacity');
});

// ---------------------------------------------------------------------------------------------------------------
// the random workload against a reference model

interface ModelWaiter {
  id: number;
  size: number;
  ac?: AbortController;
}

t.test(`random workload against the model (seed ${seed}, ${STEPS} steps)`, async (t) => {
  t.comment(`replay with KVFS_POOL_SEED=${seed}`);
  const rand = prng(seed);
  const int = (n: number) => Math.floor(rand() * n);
  const classes: SizeClass[] = [{ size: 512, count: 6 }, { size: 4096, count: 4 }, { size: 16384, count: 3 }, { size: 65536, count: 2 }];
  const sizes = classes.map((c) => c.size);
  const pool = new BufferPool({ classes, debug: rand() < 0.5 });
  const cap = pool.capacityBytes;

  // the model
  const free = classes.map((c) => c.count);
  const queue: ModelWaiter[] = [];
  const held = new Map<Buffer, { id: number; cls: number; size: number }>();
  const pending = new Map<number, { w: ModelWaiter; tr: ReturnType<typeof track<Buffer>> }>();
  let expectWaits = 0;
  let nextId = 1;
  const smallestFree = (n: number) => {
    for (let c = 0; c < sizes.length; c++) if (sizes[c]! >= n && free[c]! > 0) return c;
    return -1;
  };
  /** what the rules say happens on release of a class-c buffer: the earliest waiter it fits, else free */
  const modelRelease = (c: number): ModelWaiter | undefined => {
    const i = queue.findIndex((w) => w.size <= sizes[c]!);
    if (i < 0) {
      free[c]!++;
      return undefined;
    }
    return queue.splice(i, 1)[0];
  };
  const randomSize = () => {
    switch (int(5)) {
      case 0: return sizes[int(sizes.length)]!; // exactly a class
      case 1: return Math.min(65536, sizes[int(sizes.length)]! + 1 - int(2) * 2); // one above or below
      case 2: return 1 + int(512);
      default: return 1 + int(65536);
    }
  };

  let failures = 0;
  const check = (step: number, what: string, ok: boolean, extra?: object) => {
    if (!ok) {
      failures++;
      if (failures <= 10) t.fail(`step ${step} (${what})`, { seed, ...extra });
    }
  };
  /** after every step: the pool matches the model, and the capacity holds */
  const verify = async (step: number, op: string, expected: Map<number, number | 'ABORTED'>) => {
    await flush();
    for (const [id, { w, tr }] of pending) {
      const exp = expected.get(id);
      if (exp === undefined) {
        check(step, `${op}: waiter ${id} (${w.size} B) still waits`, tr.state === 'pending', { state: tr.state });
        continue;
      }
      if (exp === 'ABORTED') {
        check(step, `${op}: waiter ${id} rejected ABORTED`, tr.state === 'rejected' && (tr.error as PoolError).code === 'ABORTED',
          { state: tr.state, error: String(tr.error) });
      } else {
        check(step, `${op}: waiter ${id} (${w.size} B) gets a ${sizes[exp]} B buffer`,
          tr.state === 'resolved' && tr.value!.length === sizes[exp], { state: tr.state, got: tr.value?.length });
        if (tr.state === 'resolved') {
          check(step, `${op}: waiter ${id} got a buffer nobody holds`, !held.has(tr.value!));
          held.set(tr.value!, { id, cls: exp, size: w.size });
        }
      }
      pending.delete(id);
    }
    for (const id of expected.keys()) check(step, `${op}: expected waiter ${id} exists`, !expected.has(id) || !pending.has(id));
    const s: PoolStats = pool.stats();
    check(step, 'in-use bytes <= capacity', s.inUseBytes <= cap, { inUse: s.inUseBytes, cap });
    check(step, 'high-water bytes <= capacity', s.highWaterBytes <= cap, { hw: s.highWaterBytes, cap });
    check(step, 'high-water >= in use', s.highWaterBytes >= s.inUseBytes);
    check(step, 'waiters = model queue', s.waiters === queue.length, { pool: s.waiters, model: queue.length });
    check(step, 'total waits = model', s.totalWaits === expectWaits, { pool: s.totalWaits, model: expectWaits });
    let bytes = 0;
    s.classes.forEach((c, i) => {
      check(step, `class ${c.size}: free = model`, c.free === free[i], { pool: c.free, model: free[i] });
      check(step, `class ${c.size}: in use + free = count`, c.inUse + c.free === classes[i]!.count, { c });
      check(step, `class ${c.size}: high-water <= count`, c.highWater <= classes[i]!.count && c.highWater >= c.inUse, { c });
      bytes += c.inUse * c.size;
    });
    check(step, 'in-use bytes = sum over classes', bytes === s.inUseBytes, { bytes, inUse: s.inUseBytes });
    check(step, 'in-use bytes = held by the model', [...held.values()].reduce((n, h) => n + sizes[h.cls]!, 0) === s.inUseBytes);
    // FIFO invariant: no waiter fits a free buffer
    for (const w of queue) check(step, `waiter ${w.id} (${w.size} B) fits no free buffer`, smallestFree(w.size) < 0, { free: [...free] });
    // held buffers are distinct, non-overlapping, and big enough
    const ranges = [...held.entries()].map(([b, h]) => {
      check(step, `buffer of ${h.id} holds its request`, b.length >= h.size);
      return [b.byteOffset, b.byteOffset + b.length] as const;
    }).sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < ranges.length; i++) check(step, 'held buffers do not overlap', ranges[i]![0] >= ranges[i - 1]![1]);
    check(step, 'leaks() = held buffers', pool.leaks().length === held.size, { leaks: pool.leaks().length, held: held.size });
  };

  for (let step = 0; step < STEPS && failures === 0; step++) {
    const expected = new Map<number, number | 'ABORTED'>();
    const r = rand();
    let op: string;
    if (r < 0.45 || held.size === 0) {
      // acquire (a third with an AbortSignal), sometimes a refused TOO_LARGE
      const size = rand() < 0.02 ? 65537 + int(1000) : randomSize();
      op = `acquire(${size})`;
      const w: ModelWaiter = { id: nextId++, size, ...(rand() < 0.33 ? { ac: new AbortController() } : {}) };
      const tr = track(pool.acquire(size, w.ac?.signal));
      if (size > 65536) {
        await flush();
        check(step, `${op}: TOO_LARGE`, tr.state === 'rejected' && (tr.error as PoolError).code === 'TOO_LARGE', { state: tr.state });
      } else {
        pending.set(w.id, { w, tr });
        const c = smallestFree(size);
        if (c >= 0) {
          free[c]!--;
          expected.set(w.id, c);
        } else {
          queue.push(w);
          expectWaits++;
        }
      }
    } else if (r < 0.55) {
      // tryAcquire
      const size = randomSize();
      op = `tryAcquire(${size})`;
      const b = pool.tryAcquire(size);
      const c = smallestFree(size);
      check(step, `${op}: ${c < 0 ? 'nothing' : `a ${sizes[c]} B buffer`}`, c < 0 ? b === undefined : b?.length === sizes[c], { got: b?.length });
      if (c >= 0 && b) {
        free[c]!--;
        check(step, `${op} gives a buffer nobody holds`, !held.has(b));
        held.set(b, { id: nextId++, cls: c, size });
      }
    } else if (r < 0.65 && queue.some((w) => w.ac)) {
      // abort a random waiter that has a signal
      const withSignal = queue.filter((w) => w.ac);
      const w = withSignal[int(withSignal.length)]!;
      op = `abort(waiter ${w.id})`;
      queue.splice(queue.indexOf(w), 1);
      w.ac!.abort();
      expected.set(w.id, 'ABORTED');
    } else if (r < 0.67) {
      // misuse: a double release or a foreign buffer; nothing may change
      const before = pool.stats();
      let code: string | undefined;
      const victim = rand() < 0.5 ? Buffer.alloc(512) : [...held.keys()][int(held.size)]!.subarray(0, 1);
      op = 'release(foreign)';
      try {
        pool.release(victim);
      } catch (e) {
        code = (e as PoolError).code;
      }
      check(step, `${op}: FOREIGN`, code === 'FOREIGN', { code });
      check(step, `${op}: nothing changed`, JSON.stringify(pool.stats()) === JSON.stringify(before));
    } else {
      // release a random held buffer (and, sometimes, try it a second time)
      const bufs = [...held.keys()];
      const b = bufs[int(bufs.length)]!;
      const h = held.get(b)!;
      op = `release(${sizes[h.cls]} B of ${h.id})`;
      held.delete(b);
      pool.release(b);
      const to = modelRelease(h.cls);
      if (to) expected.set(to.id, h.cls);
      if (!to && rand() < 0.2) {
        const before = pool.stats();
        let code: string | undefined;
        try {
          pool.release(b);
        } catch (e) {
          code = (e as PoolError).code;
        }
        check(step, `${op} twice: DOUBLE_RELEASE`, code === 'DOUBLE_RELEASE', { code });
        check(step, `${op} twice: nothing changed`, JSON.stringify(pool.stats()) === JSON.stringify(before));
      }
    }
    await verify(step, op, expected);
  }
  t.equal(failures, 0, `the pool followed the model for ${STEPS} steps`);

  // drain: release everything; every waiter is served in the end
  let guard = 0;
  while ((held.size || queue.length) && guard++ < 10_000 && failures === 0) {
    const [b, h] = [...held.entries()][0]!;
    held.delete(b);
    pool.release(b);
    const expected = new Map<number, number | 'ABORTED'>();
    const to = modelRelease(h.cls);
    if (to) expected.set(to.id, h.cls);
    await verify(-1, 'drain', expected);
  }
  t.equal(pending.size, 0, 'every acquire completed');
  const s = pool.stats();
  t.equal(s.inUseBytes, 0, 'nothing held at the end');
  t.equal(s.waiters, 0);
  t.ok(s.highWaterBytes <= cap, `high-water ${s.highWaterBytes} <= capacity ${cap}`);
  t.same(pool.leaks(), []);
});

t.test('many concurrent async users: capacity holds, everything completes', async (t) => {
  const rand = prng(seed ^ 0x5a5a5a5a);
  const pool = new BufferPool({ classes: [{ size: 4096, count: 8 }, { size: 65536, count: 4 }, { size: MIB, count: 2 }] });
  const cap = pool.capacityBytes;
  let maxSeen = 0;
  let bad = 0;
  let aborted = 0;
  let done = 0;
  const watch = () => {
    const s = pool.stats();
    maxSeen = Math.max(maxSeen, s.inUseBytes);
    if (s.inUseBytes > cap || s.highWaterBytes > cap) bad++;
  };
  const users = Array.from({ length: 64 }, async (_, u) => {
    for (let i = 0; i < 40; i++) {
      const size = [100, 4096, 5000, 65536, 300_000, MIB][Math.floor(rand() * 6)]!;
      const ac = rand() < 0.1 ? new AbortController() : undefined;
      if (ac) setTimeout(() => ac.abort(), Math.floor(rand() * 3));
      let b: Buffer;
      try {
        b = await pool.acquire(size, ac?.signal);
      } catch (e) {
        if ((e as PoolError).code === 'ABORTED') {
          aborted++;
          watch();
          continue;
        }
        throw e;
      }
      watch();
      b[0] = u;
      b[size - 1] = u;
      await sleep(Math.floor(rand() * 2));
      if (b[0] !== u || b[size - 1] !== u) bad++; // someone else wrote into a buffer held by this user
      pool.release(b);
      watch();
      done++;
    }
  });
  const all = Promise.all(users);
  const timeout = new Promise<string>((r) => setTimeout(() => r('timeout'), 60_000).unref());
  t.not(await Promise.race([all.then(() => 'done'), timeout]), 'timeout', 'all users finished (no waiter left behind)');
  t.equal(bad, 0, 'capacity never exceeded and no buffer shared between holders');
  t.equal(done + aborted, 64 * 40, `every acquire completed or was aborted (${done} done, ${aborted} aborted)`);
  const s = pool.stats();
  t.ok(s.totalWaits > 0, `users had to wait (${s.totalWaits} waits, ${s.totalWaitMs.toFixed(0)} ms)`);
  t.equal(s.inUseBytes, 0);
  t.equal(s.waiters, 0);
  t.ok(s.highWaterBytes <= cap && maxSeen <= cap, `high-water ${s.highWaterBytes} <= capacity ${cap}`);
});
