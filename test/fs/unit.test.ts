/**
 * Unit tests for the pure logic under src/fs: the key schema and its encodings (schema.ts), per-key locks
 * (keyed-mutex.ts), volume records (volume.ts), optimistic transactions (txn.ts) and the published-chunk
 * bookkeeping (published.ts).
 */
import t, { type Test } from 'tap';
import { StoreError } from '../../src/backend/errors.js';
import type { KvCheck, KvWrite } from '../../src/backend/kv.js';
import { MemoryStore } from '../../src/backend/memory.js';
import { Filesystem } from '../../src/fs/filesystem.js';
import { KeyedMutex } from '../../src/fs/keyed-mutex.js';
import { Published } from '../../src/fs/published.js';
import {
  FORMAT_VERSION, K, appendSlices, chunkIndexOf, decodeChunk, decodeDirent, decodeInode, decodeVolume, encodeChunk, encodeDirent,
  encodeEntry, encodeInode, encodeVolume, makeSlice, memberOf, nowTs, toAttr, type Inode,
} from '../../src/volume/schema.js';
import { transact } from '../../src/volume/txn.js';
import { ROOT_INO } from '../../src/fs/types.js';
import {
  DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, chunkSizeProblem, formatVolume, readVolume,
} from '../../src/volume/format.js';

/** asserts that fn throws (or p rejects) with an error carrying this code */
async function throwsCode(t: Test, what: string, code: string, fn: () => unknown): Promise<void> {
  try {
    await fn();
    t.fail(`${what}: expected ${code}, but it succeeded`);
  } catch (e) {
    t.equal((e as { code?: unknown }).code, code, `${what}: ${code}`);
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const ticks = async (n: number) => { for (let i = 0; i < n; i++) await Promise.resolve(); };

function inode(over: Partial<Inode> = {}): Inode {
  return {
    ino: 42, version: 7, mode: 0o100644, nlink: 3, uid: 1000, gid: 100, rdev: 0, size: 2 ** 50 + 3,
    atime: { sec: 1_700_000_000, nsec: 1 }, mtime: { sec: 1_700_000_001, nsec: 999_999_999 },
    ctime: { sec: 0, nsec: 0 }, parent: 0, children: 0, stored: 12345, truncFrom: 9, ...over,
  };
}

// ---------------------------------------------------------------------------------------------- schema.ts

t.test('schema: inode encoding', async (t) => {
  t.test('a regular file round-trips, with no target', async (t) => {
    const n = inode();
    const back = decodeInode(42, encodeInode(n));
    t.same(back, n);
    t.notOk('target' in back && back.target !== undefined, 'no target on a regular file');
  });

  t.test('a symlink round-trips with its target (UTF-8)', async (t) => {
    for (const target of ['../a/b', 'é/ü/∂', 'x'.repeat(4095), '']) {
      const n = inode({ mode: 0o120777, target, size: Buffer.byteLength(target) });
      t.same(decodeInode(42, encodeInode(n)), n, `target of ${Buffer.byteLength(target)} bytes`);
    }
  });

  t.test('a directory round-trips its parent and child count', async (t) => {
    const n = inode({ mode: 0o42755, nlink: 5, parent: 9, children: 1234, size: 4096 });
    t.same(decodeInode(42, encodeInode(n)), n);
  });

  t.test('the inode number comes from the key, not the value', async (t) => {
    t.equal(decodeInode(77, encodeInode(inode())).ino, 77);
  });

  t.test('bytes after the fields of a non-symlink are not a target', async (t) => {
    const raw = Buffer.concat([Buffer.from(encodeInode(inode())), Buffer.from('junk')]);
    t.equal(decodeInode(42, raw).target, undefined);
  });

  t.test('a record written by a newer layout with more fields still decodes (fields appended)', async (t) => {
    const n = inode({ mode: 0o120777, target: 'tgt', size: 3 });
    const raw = Buffer.from(encodeInode(n));
    const count = raw[1]!;
    const head = 2 + count * 8;
    const wider = Buffer.concat([raw.subarray(0, head), Buffer.alloc(16, 0xab), raw.subarray(head)]);
    wider[1] = count + 2;
    t.same(decodeInode(42, wider), n);
  });

  t.test('works on a view into a larger buffer', async (t) => {
    const raw = Buffer.from(encodeInode(inode()));
    const big = Buffer.concat([Buffer.alloc(5, 1), raw, Buffer.alloc(3, 2)]);
    const view = new Uint8Array(big.buffer, big.byteOffset + 5, raw.length);
    t.same(decodeInode(42, view), inode());
  });

  t.test('garbage is CORRUPT', async (t) => {
    const good = Buffer.from(encodeInode(inode()));
    const cases: [string, Uint8Array][] = [
      ['empty', new Uint8Array(0)],
      ['one byte', new Uint8Array([1])],
      ['unknown layout version', Buffer.concat([Buffer.from([99]), good.subarray(1)])],
      ['truncated', good.subarray(0, good.length - 1)],
      ['too few fields', (() => { const b = Buffer.from(good); b[1] = 3; return b; })()],
      ['text', Buffer.from('hello world, not an inode')],
    ];
    for (const [what, raw] of cases) await throwsCode(t, what, 'CORRUPT', () => decodeInode(1, raw));
  });

  t.test('toAttr reports st_blocks as 512-byte units of stored bytes', async (t) => {
    t.equal(toAttr(inode({ stored: 0 })).blocks, 0);
    t.equal(toAttr(inode({ stored: 1 })).blocks, 1);
    t.equal(toAttr(inode({ stored: 512 })).blocks, 1);
    t.equal(toAttr(inode({ stored: 513 })).blocks, 2);
  });
});

t.test('schema: directory entries', async (t) => {
  for (const [mode, ino] of [[0o100644, 2], [0o40755, 2 ** 40 + 1], [0o120777, Number.MAX_SAFE_INTEGER], [0o10644, 3], [0o20600, 4]] as const) {
    t.same(decodeDirent(encodeDirent(ino, mode)), { ino, type: mode & 0o170000 }, `mode ${mode.toString(8)} ino ${ino}`);
  }
  await throwsCode(t, 'empty entry', 'CORRUPT', () => decodeDirent(new Uint8Array(0)));
  await throwsCode(t, 'short entry', 'CORRUPT', () => decodeDirent(new Uint8Array(8)));
  await throwsCode(t, 'long entry', 'CORRUPT', () => decodeDirent(new Uint8Array(10)));
});

t.test('schema: chunk map entries', async (t) => {
  t.same(decodeChunk(encodeChunk(4096, 'sess.1a')), { length: 4096, blobId: 'sess.1a' });
  t.same(decodeChunk(encodeChunk(1, 'a:b:c')), { length: 1, blobId: 'a:b:c' }, 'a colon inside the blob id');
  const big = Buffer.concat([Buffer.alloc(3), Buffer.from(encodeChunk(262144, 'x-_.9'))]);
  t.same(decodeChunk(big.subarray(3)), { length: 262144, blobId: 'x-_.9' }, 'a view into a larger buffer');
  await throwsCode(t, 'no colon', 'CORRUPT', () => decodeChunk(Buffer.from('garbage')));
  await throwsCode(t, 'empty length', 'CORRUPT', () => decodeChunk(Buffer.from(':blob')));
  await throwsCode(t, 'empty', 'CORRUPT', () => decodeChunk(new Uint8Array(0)));
  // a length that is not a number must not decode to NaN (it would poison the inode's `stored` count)
  await throwsCode(t, 'length not a number', 'CORRUPT', () => decodeChunk(Buffer.from('abc:blob')));
  // slices: laid over the base, appended to a stored encoding, and never past the largest chunk (64 MiB)
  const sliced = decodeChunk(appendSlices(encodeChunk(8192, 'base'), [makeSlice(4096, 4096, 's.1'), makeSlice(0, 512, 's.2')]));
  t.same(sliced, { length: 8192, blobId: 'base', slices: [{ off: 4096, len: 4096, blobId: 's.1' }, { off: 0, len: 512, blobId: 's.2' }] },
    'slices appended to an encoded entry decode in order');
  t.same(decodeChunk(encodeEntry(sliced)), sliced, 'and encode back to the same entry');
  await throwsCode(t, 'a slice past the largest chunk', 'CORRUPT', () => decodeChunk(Buffer.from('0:;67108864+4096:s')));
  await throwsCode(t, 'a slice of no bytes', 'CORRUPT', () => decodeChunk(Buffer.from('0:;0+0:s')));
});

t.test('schema: volume record', async (t) => {
  const v = { name: 'vol_1', chunkSize: 65536, created: 1_700_000_000_000, formatVersion: FORMAT_VERSION };
  t.same(decodeVolume(encodeVolume(v)), v);
  await throwsCode(t, 'not JSON', 'CORRUPT', () => decodeVolume(Buffer.from('{nope')));
  await throwsCode(t, 'JSON null', 'CORRUPT', () => decodeVolume(Buffer.from('null')));
  await throwsCode(t, 'fields missing', 'CORRUPT', () => decodeVolume(Buffer.from('{"name":"x"}')));
  await throwsCode(t, 'chunkSize of the wrong type', 'CORRUPT',
    () => decodeVolume(Buffer.from('{"chunkSize":"4096","formatVersion":1}')));
});

t.test('schema: keys', async (t) => {
  t.equal(K.inode(ROOT_INO), 'i/1');
  t.ok(K.dirent(7, 'name').startsWith(K.dirPrefix(7)));
  t.equal(memberOf(K.dirent(7, 'a b'), K.dirPrefix(7)), 'a b');
  t.notOk(K.dirent(17, 'x').startsWith(K.dirPrefix(1)), "directory 1's prefix does not cover directory 17");
  t.equal(memberOf(K.xattr(3, 'user.a/b'), K.xattrPrefix(3)), 'user.a/b');
  for (const i of [0, 1, 15, 16, 255, 4096, 0xffffffff]) t.equal(chunkIndexOf(K.chunk(9, i)), i, `chunk index ${i}`);
  const keys = [0, 1, 9, 10, 15, 16, 255, 256, 100000].map((i) => K.chunk(5, i));
  t.same([...keys].sort(), keys, 'chunk keys sort in index order');
  t.equal(memberOf(K.gc('s.1'), K.gcPrefix), 's.1');
  t.equal(memberOf(K.purge(12), K.purgePrefix), '12');
  t.equal(memberOf(K.orphan(12), K.orphanPrefix), '12');
});

t.test('schema: nowTs', async (t) => {
  const before = Date.now();
  const ts = nowTs();
  const after = Date.now();
  t.ok(Number.isInteger(ts.sec) && Number.isInteger(ts.nsec), 'whole numbers');
  t.ok(ts.nsec >= 0 && ts.nsec < 1e9, 'nsec in [0, 1e9)');
  const ms = ts.sec * 1000 + Math.floor(ts.nsec / 1e6);
  t.ok(ms >= before && ms <= after, 'the wall clock time');

  // Timestamps of successive changes must not go backwards (make(1) and rsync compare them). Any step back
  // within one second of sampling is a failure.
  let prev = nowTs();
  let backwards = 0;
  let worst = 0;
  const until = Date.now() + 300;
  while (Date.now() < until) {
    const n = nowTs();
    const d = (n.sec - prev.sec) * 1e9 + (n.nsec - prev.nsec);
    if (d < 0) {
      backwards++;
      worst = Math.min(worst, d);
    }
    prev = n;
  }
  t.equal(backwards, 0, `nowTs never goes backwards (went back ${backwards} times, by up to ${-worst} ns)`);
});

// ---------------------------------------------------------------------------------------------- keyed-mutex.ts

t.test('keyed-mutex', async (t) => {
  t.test('one holder per key at a time', async (t) => {
    const m = new KeyedMutex();
    let inside = 0;
    let most = 0;
    const order: number[] = [];
    await Promise.all([0, 1, 2, 3, 4].map((i) => m.with([7], async () => {
      inside++;
      most = Math.max(most, inside);
      await sleep(2);
      order.push(i);
      inside--;
    })));
    t.equal(most, 1, 'never two inside');
    t.same(order, [0, 1, 2, 3, 4], 'first come, first served');
  });

  t.test('different keys do not exclude each other', async (t) => {
    const m = new KeyedMutex();
    let inside = 0;
    let most = 0;
    await Promise.all([1, 2, 3].map((k) => m.with([k], async () => {
      inside++;
      most = Math.max(most, inside);
      await sleep(5);
      inside--;
    })));
    t.equal(most, 3);
  });

  t.test('a lock on several keys excludes a holder of any of them', async (t) => {
    const m = new KeyedMutex();
    const log: string[] = [];
    const release = await m.lock([5]);
    const p = m.with([4, 5, 6], async () => { log.push('many'); });
    const q = m.with([6], async () => { log.push('six'); });
    await sleep(5);
    t.same(log, ['six'], 'the multi-key lock waits at 5 (keys are taken in order), so 6 is still free');
    release();
    await Promise.all([p, q]);
    t.same(log, ['six', 'many']);
  });

  t.test('opposite orders do not deadlock (keys are taken sorted)', async (t) => {
    const m = new KeyedMutex();
    let done = 0;
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 50; i++) {
      const keys = i % 2 ? [1, 2, 3] : [3, 2, 1];
      jobs.push(m.with(i % 3 ? keys : [...keys].reverse(), async () => { await ticks(3); done++; }));
      jobs.push(m.with([2, 1], async () => { await ticks(1); done++; }));
    }
    const timeout = sleep(5000).then(() => 'deadlock');
    t.equal(await Promise.race([Promise.all(jobs).then(() => 'ok'), timeout]), 'ok');
    t.equal(done, 100);
  });

  t.test('a key named twice in one call is taken once', async (t) => {
    const m = new KeyedMutex();
    const r = await Promise.race([m.lock([8, 8, 8]), sleep(1000).then(() => undefined)]);
    t.ok(r, 'acquired');
    r?.();
    t.ok(await Promise.race([m.lock([8]).then((x) => { x(); return true; }), sleep(1000).then(() => false)]), 'free again');
  });

  t.test('releasing twice throws', async (t) => {
    const m = new KeyedMutex();
    const release = await m.lock([1, 2]);
    release();
    t.throws(() => release(), /released twice/);
    const again = await m.lock([1, 2]);
    again();
  });

  t.test('`with` releases when the function throws', async (t) => {
    const m = new KeyedMutex();
    await t.rejects(m.with([3], async () => { throw new Error('boom'); }), /boom/);
    const ok = await Promise.race([m.with([3], async () => true), sleep(1000).then(() => false)]);
    t.equal(ok, true);
  });
});

// ---------------------------------------------------------------------------------------------- volume.ts

t.test('volume: chunkSizeProblem', async (t) => {
  for (const n of [MIN_CHUNK_SIZE, 8192, DEFAULT_CHUNK_SIZE, 1 << 20, MAX_CHUNK_SIZE]) {
    t.equal(chunkSizeProblem(n), undefined, `${n} is good`);
  }
  for (const n of [0, -4096, 2048, MIN_CHUNK_SIZE - 1, 3 * 4096, MAX_CHUNK_SIZE * 2, 4096.5, NaN, Infinity]) {
    t.match(chunkSizeProblem(n), /bad chunk size/, `${n} is refused`);
  }
});

t.test('volume: format and read', async (t) => {
  const store = new MemoryStore();
  await throwsCode(t, 'reading an empty store', 'NOVOLUME', () => readVolume(store));
  await throwsCode(t, 'opening a filesystem on an empty store', 'NOVOLUME', () => Filesystem.open(store));
  await throwsCode(t, 'a bad chunk size', 'INVALID', () => formatVolume(store, { chunkSize: 5000 }));
  await throwsCode(t, 'a bad name', 'INVALID', () => formatVolume(store, { name: 'has space' }));
  t.equal(await store.get(K.volume), undefined, 'refused formats wrote nothing');

  const vol = await formatVolume(store, { name: 'v1', chunkSize: 8192, uid: 12, gid: 34 });
  t.match(vol, { name: 'v1', chunkSize: 8192, formatVersion: FORMAT_VERSION });
  t.same(await readVolume(store), vol, 'read back');
  const root = decodeInode(ROOT_INO, (await store.get(K.inode(ROOT_INO)))!);
  t.match(root, { mode: 0o40755, nlink: 2, uid: 12, gid: 34, parent: ROOT_INO, children: 0 }, 'the root directory');
  t.equal(await store.incr(K.inodeCount, 0), 1, 'one inode counted: the root');

  const before = Buffer.from((await store.get(K.volume))!);
  await throwsCode(t, 'formatting twice', 'INVALID', () => formatVolume(store, { name: 'v2', chunkSize: 4096 }));
  t.same(Buffer.from((await store.get(K.volume))!), before, 'the volume record is untouched');
  t.same(await readVolume(store), vol);

  t.test('a store with only a root inode (half-made volume) is not formatted over either', async (t) => {
    const s = new MemoryStore();
    await s.put(K.inode(ROOT_INO), encodeInode(inode({ mode: 0o40755 })));
    await throwsCode(t, 'format', 'INVALID', () => formatVolume(s));
  });

  t.test('a newer format version is VERSION', async (t) => {
    const s = new MemoryStore();
    await s.put(K.volume, encodeVolume({ name: 'x', chunkSize: 4096, created: 0, formatVersion: FORMAT_VERSION + 1 }));
    await throwsCode(t, 'readVolume', 'VERSION', () => readVolume(s));
    await throwsCode(t, 'Filesystem.open', 'VERSION', () => Filesystem.open(s));
  });

  t.test('a garbled volume record is CORRUPT', async (t) => {
    const s = new MemoryStore();
    await s.put(K.volume, Buffer.from('not json'));
    await throwsCode(t, 'readVolume', 'CORRUPT', () => readVolume(s));
  });
});

// ---------------------------------------------------------------------------------------------- txn.ts

/** a store whose commits can be delayed or forced to fail, counting them */
class ProbeStore extends MemoryStore {
  commits = 0;
  refusals = 0;
  refuseAll = false;
  override async commit(checks: readonly KvCheck[], writes: readonly KvWrite[], txid?: string): Promise<boolean> {
    this.commits++;
    if (this.refuseAll) {
      this.refusals++;
      return false;
    }
    const ok = await super.commit(checks, writes, txid);
    if (!ok) this.refusals++;
    return ok;
  }
}

const num = (v: Uint8Array | undefined) => (v === undefined ? 0 : Number(Buffer.from(v).toString()));
const enc = (n: number) => Buffer.from(String(n));

t.test('txn: two transactions incrementing one value both apply (the loser retries)', async (t) => {
  const store = new ProbeStore();
  await store.put('k/n', enc(0));
  let runs = 0;
  // both read the value before either commits, so one commit must fail its check and run again
  let arrived = 0;
  let go!: () => void;
  const bothRead = new Promise<void>((r) => { go = r; });
  const inc = () => transact(store, async (tx) => {
    runs++;
    const v = num(await tx.get('k/n'));
    if (++arrived === 2) go();
    await bothRead;
    tx.set('k/n', enc(v + 1));
    return v + 1;
  });
  const results = await Promise.all([inc(), inc()]);
  t.equal(num(await store.get('k/n')), 2, 'both increments applied');
  t.same([...results].sort(), [1, 2], 'each saw its own result');
  t.equal(runs, 3, 'one transaction ran twice');
  t.equal(store.refusals, 1, 'one commit was refused');
});

t.test('txn: many concurrent increments all apply', async (t) => {
  const store = new ProbeStore();
  await Promise.all(Array.from({ length: 20 }, () => transact(store, async (tx) => {
    const v = num(await tx.get('k/n'));
    await sleep(Math.random() * 3);
    tx.set('k/n', enc(v + 1));
  })));
  t.equal(num(await store.get('k/n')), 20);
});

t.test('txn: reads see the transaction\'s own writes; a read-only transaction commits nothing', async (t) => {
  const store = new ProbeStore();
  await store.put('k/a', enc(1));
  const seen = await transact(store, async (tx) => {
    const a = num(await tx.get('k/a'));
    tx.set('k/b', enc(a + 1));
    tx.del('k/a');
    return { a: await tx.get('k/a'), b: num(await tx.get('k/b')), many: (await tx.getMany(['k/a', 'k/b', 'k/c'])).map(num) };
  });
  t.same(seen, { a: undefined, b: 2, many: [0, 2, 0] });
  t.equal(await store.get('k/a'), undefined);
  t.equal(num(await store.get('k/b')), 2);
  const commits = store.commits;
  t.equal(await transact(store, async (tx) => num(await tx.get('k/b'))), 2);
  t.equal(store.commits, commits, 'no commit for a transaction without writes');
});

t.test('txn: a write to a key read as absent conflicts with a concurrent creation', async (t) => {
  const store = new ProbeStore();
  let first = true;
  const r = await transact(store, async (tx) => {
    const had = await tx.get('k/x');
    if (first) {
      first = false;
      await store.put('k/x', enc(5)); // someone else creates it meanwhile
    }
    tx.set('k/y', enc(num(had)));
    return num(had);
  });
  t.equal(r, 5, 'the retry saw the new value');
  t.equal(num(await store.get('k/y')), 5);
});

t.test('txn: `after` work runs once, only after the commit that succeeded', async (t) => {
  const store = new ProbeStore();
  let after = 0;
  let runs = 0;
  await transact(store, async (tx) => {
    runs++;
    const v = await tx.get('k/a');
    if (runs === 1) await store.put('k/a', enc(1)); // make the first attempt conflict
    tx.set('k/b', enc(num(v)));
    tx.after.push(() => after++);
  });
  t.equal(runs, 2);
  t.equal(after, 1);
});

t.test('txn: an error inside the function commits nothing and propagates', async (t) => {
  const store = new ProbeStore();
  await t.rejects(transact(store, async (tx) => {
    tx.set('k/a', enc(1));
    throw new Error('no');
  }), /no/);
  t.equal(store.commits, 0);
  t.equal(await store.get('k/a'), undefined);
});

t.test('txn: endless conflicts end in THROTTLED, not a hang', async (t) => {
  const store = new ProbeStore();
  store.refuseAll = true;
  const started = Date.now();
  const e = await transact(store, async (tx) => { tx.set('k/a', enc(1)); }).catch((x: unknown) => x);
  t.ok(e instanceof StoreError, 'a StoreError');
  t.equal((e as StoreError).code, 'THROTTLED');
  t.ok(store.commits > 1, `retried (${store.commits} attempts)`);
  t.ok(Date.now() - started < 10_000, 'bounded time');
});

// ---------------------------------------------------------------------------------------------- published.ts

t.test('published: chunks published as files are capped, oldest taken back first; retracts forget them', async (t) => {
  const calls: string[] = [];
  const index = {
    publish: () => undefined,
    publishFile: (ino: number, _size: number, _cs: number, idx: number, path: string) => void calls.push(`file ${ino}/${idx} ${path}`),
    setSize: () => undefined,
    setClean: () => undefined,
    retract: (ino: number, idx?: number) => void calls.push(idx === undefined ? `retract ${ino}` : `retract ${ino}/${idx}`),
  };
  const pub = new Published();
  pub.attach(index);
  t.ok(pub.takesFiles, 'a driver with publishFile takes files');
  const CAP = 65536;
  for (let i = 0; i < CAP; i++) pub.publishFile(7, 1 << 40, 4096, i, `/b/${i}`, 4096);
  t.equal(pub.chunks, CAP, `${CAP} chunks published`);
  calls.length = 0;
  pub.publishFile(8, 1 << 40, 4096, 0, '/b/x', 4096);
  t.same(calls, ['file 8/0 /b/x', 'retract 7/0'], 'one more: the oldest (7/0) is taken back');
  t.equal(pub.chunks, CAP, 'still at the cap');
  pub.retractFile(7);
  t.equal(pub.chunks, 1, 'retracting a file forgets its chunks');
  calls.length = 0;
  for (let i = 1; i < CAP; i++) pub.publishFile(9, 1 << 40, 4096, i, `/c/${i}`, 4096);
  t.notOk(calls.some((c) => c.startsWith('retract')), 'after the retract there is room again: nothing is evicted below the cap');
  t.notOk(new Published().takesFiles, 'without a driver nothing takes files');
});
