import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statfsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { open as lmdbOpen } from 'lmdb';
import t from 'tap';
import { isStoreError } from '../../src/backend/errors.js';
import { BlobFiles } from '../../src/backend/blob-files.js';
import { LmdbStore } from '../../src/backend/lmdb.js';
import { atProcessEnd } from '../helpers/run.js';
import { describeStore, openStore } from '../../src/backend/open-store.js';
import { conformance } from './conformance.js';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (u: Uint8Array | undefined): string | undefined => (u === undefined ? undefined : new TextDecoder().decode(u));

/** what the child process of the kill -9 test writes before it kills itself */
const KILL9_COMMITS = 200;
const KILL9_BLOB = 256 * 1024;

// Child mode: this same file, re-run by the kill -9 test. It writes, waits for the writes to resolve, and dies.
const kill9Dir = process.env.KVFS_TEST_KILL9_DIR;
if (kill9Dir) {
  const s = await LmdbStore.open(kill9Dir);
  for (let i = 0; i < KILL9_COMMITS; i++) {
    await s.commit([{ key: `k/${i}`, value: undefined }], [{ key: `k/${i}`, value: enc(`v${i}`) }]);
  }
  await s.put('b/blob', new Uint8Array(KILL9_BLOB).fill(0xab));
  process.stdout.write('written\n');
  process.kill(process.pid, 'SIGKILL');
}

// a directory name with a '.' in it: lmdb-js would take such a path for a file unless told otherwise
const root = mkdtempSync(join(tmpdir(), 'kvfs-lmdb.'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const freshDir = (): string => join(root, `store.${n++}`);

await conformance(t, 'lmdb', () => LmdbStore.open(freshDir()));

t.test('data persists across close and reopen', async (t) => {
  const dir = freshDir();
  const a = await LmdbStore.open(dir);
  await a.put('p/a', enc('A'));
  t.equal(await a.commit([{ key: 'p/b', value: undefined }], [{ key: 'p/b', value: enc('B') }]), true);
  t.equal(await a.incr('p/n', 7), 7);
  await a.close();
  const b = await LmdbStore.open(dir);
  t.teardown(() => b.close());
  t.same((await b.scan('p/')).map(([k, v]) => [k, dec(v)]), [['p/a', 'A'], ['p/b', 'B'], ['p/n', '7']]);
});

t.test('close waits for writes already called', async (t) => {
  const dir = freshDir();
  const a = await LmdbStore.open(dir);
  const pending = Array.from({ length: 100 }, (_, i) =>
    i % 2 ? a.put(`w/${i}`, enc(`${i}`)) : a.commit([], [{ key: `w/${i}`, value: enc(`${i}`) }]),
  );
  await a.close();
  await Promise.all(pending);
  const b = await LmdbStore.open(dir);
  t.teardown(() => b.close());
  t.equal((await b.scan('w/')).length, 100, 'every write called before close is there');
});

t.test('local: URLs open LMDB, relative paths against the cwd', async (t) => {
  const dir = freshDir();
  const rel = relative(process.cwd(), dir);
  t.equal(describeStore(`local:${rel}`), `LMDB store in ${dir}`);
  const s = await openStore(`local:${rel}`);
  await s.put('u/a', enc('x'));
  t.equal((await s.info()).engine, 'lmdb');
  await s.close();
  const again = await LmdbStore.open(dir);
  t.equal(dec(await again.get('u/a')), 'x', 'the URL and the resolved directory are one store');
  await again.close();
});

t.test('info reports the filesystem holding the store', async (t) => {
  const s = await LmdbStore.open(freshDir());
  t.teardown(() => s.close());
  const info = await s.info();
  t.equal(info.engine, 'lmdb');
  t.ok(info.capacityBytes! > 0 && info.freeBytes! >= 0 && info.freeBytes! <= info.capacityBytes!);
});

t.test('a commit or put that resolved survives kill -9', async (t) => {
  const dir = freshDir();
  const child = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url)], {
    env: { ...process.env, KVFS_TEST_KILL9_DIR: dir },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const signal = await new Promise<NodeJS.Signals | null>((res) => child.on('exit', (_code, sig) => res(sig)));
  t.equal(signal, 'SIGKILL', 'the child was killed');
  t.match(out, /written/, 'the child saw its writes resolve');
  const s = await LmdbStore.open(dir);
  t.teardown(() => s.close());
  const got = new Map((await s.scan('k/')).map(([k, v]) => [k, dec(v)]));
  t.equal(got.size, KILL9_COMMITS, 'every resolved commit is there');
  t.ok([...got].every(([k, v]) => k === `k/${v!.slice(1)}`), 'with its value');
  const blob = await s.get('b/blob');
  t.ok(blob !== undefined && blob.length === KILL9_BLOB && blob.every((x) => x === 0xab), 'the resolved put is there');
});

t.test('blobs are files beside LMDB: the data file holds only metadata', async (t) => {
  const dir = freshDir();
  const s = await LmdbStore.open(dir);
  t.teardown(() => s.close());
  const blob = new Uint8Array(1 << 20).fill(0x5a);
  await s.put('b/one', blob);
  await s.commit([], [{ key: 'c/1/00000000', value: enc('1048576:one') }]);
  await s.sync();
  const files = readdirSync(join(dir, 'blobs'), { recursive: true, withFileTypes: true }).filter((d) => d.isFile());
  t.same(files.map((f) => f.name), ['one'], 'one file under blobs/, named by the id');
  const path = join(files[0]!.parentPath ?? (files[0] as unknown as { path: string }).path, 'one');
  t.ok(readFileSync(path).equals(Buffer.from(blob)), 'holding the blob\'s bytes');
  t.ok(statSync(join(dir, 'data.mdb')).size < 1 << 20, `data.mdb (${statSync(join(dir, 'data.mdb')).size} bytes) does not hold the 1 MiB blob`);
  await t.rejects(s.commit([], [{ key: 'b/two', value: enc('x') }]), { code: 'INVALID' }, 'a commit naming a blob key is INVALID');
  await t.rejects(s.commit([{ key: 'b/one', value: blob }], []), { code: 'INVALID' }, 'so is a check of one');
  await t.rejects(s.put('b/..', enc('x')), { code: 'INVALID' }, 'a blob id that cannot be a file name is INVALID');
});

t.test('a deleted blob file kept for reuse (a spare) is in info: counted free, and shown apart', async (t) => {
  const dir = freshDir();
  const s = await LmdbStore.open(dir);
  t.teardown(() => s.close());
  t.equal((await s.info()).reusableBytes, 0, 'none at first');
  const blob = new Uint8Array(256 << 10).fill(1);
  await s.put('b/one', blob);
  const before = await s.info();
  await s.del(['b/one']);
  const after = await s.info();
  // spares are kept only while the disk has room to spare (4 GiB beyond the gate's keep): test machines do
  const st = statfsSync(dir);
  if (st.bavail * st.bsize < 8 * 2 ** 30) {
    t.equal(after.reusableBytes, 0, 'a small disk keeps no spares');
    return;
  }
  t.equal(after.reusableBytes, blob.length, 'the deleted file is a spare of its length');
  t.ok(after.freeBytes! - before.freeBytes! > blob.length / 2, `and counted as free (${after.freeBytes! - before.freeBytes!} more bytes)`);
  await s.close();
  const again = await LmdbStore.open(dir);
  t.teardown(() => again.close());
  t.equal((await again.info()).reusableBytes, blob.length, 'a new open counts it at once (info waits for the spares to be found)');
  await again.put('b/two', blob);
  t.equal((await again.info()).reusableBytes, 0, 'the next put took it');
});

t.test('a sync of many blob files (one syncfs of their filesystem) makes them all durable; a failed sync keeps them to sync', async (t) => {
  const dir = freshDir();
  const blobs = new BlobFiles(dir);
  const bytes = (i: number) => new Uint8Array(64 << 10).fill(i);
  await Promise.all(Array.from({ length: 100 }, (_, i) => blobs.put(`b/many.${i}`, bytes(i))));
  await blobs.sync();
  const back = await Promise.all(Array.from({ length: 100 }, (_, i) => blobs.get(`b/many.${i}`)));
  t.ok(back.every((b, i) => b?.equals(Buffer.from(bytes(i)))), '100 blob files synced at once, each holding its bytes');
  // a sync called while another runs (the store's background syncs) returns only after it: the files the
  // first took are durable too when the second returns
  await Promise.all(Array.from({ length: 100 }, (_, i) => blobs.put(`b/again.${i}`, bytes(i))));
  const order: number[] = [];
  await Promise.all([blobs.sync().then(() => order.push(1)), blobs.sync().then(() => order.push(2))]);
  t.same(order, [1, 2], 'a second sync, with nothing of its own to sync, returned after the first');
  // the next batch's directories vanish before the sync: syncfs cannot open them, and the sync says so
  await Promise.all(Array.from({ length: 70 }, (_, i) => blobs.put(`b/more.${i}`, bytes(i))));
  const aside = `${dir}-aside`;
  execFileSync('mv', [join(dir, 'blobs'), aside]);
  await t.rejects(blobs.sync(), { code: 'ENOENT', message: /syncfs of the filesystem holding .*blobs: ENOENT/ }, 'a sync that cannot reach the blob files fails, naming them');
  execFileSync('mv', [aside, join(dir, 'blobs')]);
  await blobs.sync();
  t.ok((await blobs.get('b/more.69'))?.equals(Buffer.from(bytes(69))), 'with the files back, the next sync takes what the failed one left');
});

t.test('a blob file put apart (compaction) is left to syncOnly: a sync neither waits for it nor takes it', async (t) => {
  const blobs = new BlobFiles(freshDir());
  const big = new Uint8Array(1 << 20).fill(7);
  const apart = blobs.put('b/apart', big, true);
  await blobs.put('b/plain', new Uint8Array(64 << 10).fill(1));
  await apart;
  t.equal(blobs.pending, 1, 'the next sync takes the plain put only');
  await blobs.sync();
  t.equal(blobs.pending, 0, 'and then nothing is left to it');
  await blobs.syncOnly(['b/apart']);
  t.ok((await blobs.get('b/apart'))?.equals(Buffer.from(big)), 'the blob put apart holds its bytes, made durable by syncOnly');
  // through the store: a put with syncApart, then syncBlobs, as compaction does
  const s = await LmdbStore.open(freshDir());
  t.teardown(() => s.close());
  await s.put('b/c1', big, { syncApart: true });
  await s.sync();
  await s.syncBlobs(['b/c1']);
  t.ok(Buffer.from((await s.get('b/c1'))!).equals(Buffer.from(big)), 'the store reads it back');
});

t.test('small blobs live in LMDB, batched: a get sees a put not yet awaited, and they survive reopen', async (t) => {
  const dir = freshDir();
  let s = await LmdbStore.open(dir);
  // slices: 4 KiB blobs put in one run of JavaScript (one LMDB transaction), not awaited before the get
  const puts = [1, 2, 3].map((i) => s.put(`b/small${i}`, new Uint8Array(4096).fill(i)));
  const got = await s.get('b/small2');
  t.ok(got && got.length === 4096 && got.every((x) => x === 2), 'a get right after the puts sees the blob');
  await Promise.all(puts);
  t.same(readdirSync(join(dir, 'blobs'), { recursive: true, withFileTypes: true }).filter((d) => d.isFile()).map((d) => d.name), [],
    'no blob file for them');
  t.equal(s.blobFile('b/small1', 4096), undefined, 'and no file is named for a small blob');
  await s.put('b/big', new Uint8Array(64 << 10).fill(9));
  t.match(s.blobFile('b/big', 64 << 10), /blobs\/[0-9a-f]{2}\/big$/, 'a large blob is a file, named by blobFile');
  t.same(await s.keys('b/'), ['b/big', 'b/small1', 'b/small2', 'b/small3'], 'all listed');
  await s.del(['b/small1']);
  await s.close();
  s = await LmdbStore.open(dir);
  t.teardown(() => s.close());
  t.same(await s.keys('b/'), ['b/big', 'b/small2', 'b/small3'], 'after a reopen: the deleted one gone, the others there');
  t.ok((await s.get('b/small3'))?.every((x) => x === 3), 'with their bytes');
});

t.test('a store written before blob files: its blobs in LMDB are read, listed and deleted', async (t) => {
  const dir = freshDir();
  mkdirSync(dir);
  const old = lmdbOpen<Buffer, string>({ path: dir, noSubdir: false, encoding: 'binary' });
  await old.put('b/legacy', Buffer.from('old bytes'));
  await old.put('i/1', Buffer.from('meta'));
  await old.close();
  const s = await LmdbStore.open(dir);
  t.teardown(() => s.close());
  t.equal(dec(await s.get('b/legacy')), 'old bytes', 'an old blob reads from LMDB');
  await s.put('b/new', enc('new bytes'));
  t.same((await s.getMany(['b/new', 'b/legacy'])).map(dec), ['new bytes', 'old bytes'], 'beside a new one');
  t.same(await s.keys('b/'), ['b/legacy', 'b/new'], 'both listed');
  await s.del(['b/legacy', 'b/new']);
  t.same(await s.keys('b/'), [], 'both deleted');
  t.equal(dec(await s.get('i/1')), 'meta', 'metadata untouched');
});

t.test('churn: blobs rewritten and deleted over and over leave neither the data file nor the blob files growing', async (t) => {
  const dir = freshDir();
  const s = await LmdbStore.open(dir);
  t.teardown(() => s.close());
  const blob = new Uint8Array(256 * 1024).fill(3);
  const round = async (r: number) => {
    for (let i = 0; i < 64; i++) {
      await s.put(`b/r${r}.${i}`, blob);
      await s.commit([], [{ key: `c/9/${i.toString(16).padStart(8, '0')}`, value: enc(`262144:r${r}.${i}`) }]);
      if (r > 0) await s.del([`b/r${r - 1}.${i}`]);
    }
    await s.sync();
  };
  await round(0);
  const mdb0 = statSync(join(dir, 'data.mdb')).size;
  for (let r = 1; r <= 16; r++) await round(r);
  const mdb1 = statSync(join(dir, 'data.mdb')).size;
  const blobs = (await s.keys('b/')).length;
  t.comment(`data.mdb ${mdb0} -> ${mdb1} bytes after 16 rewrites of 16 MiB; ${blobs} blob files`);
  t.equal(blobs, 64, 'only the live blobs have files');
  t.ok(mdb1 <= mdb0 + (1 << 20), 'the data file stays flat');
  const info = await s.info();
  t.ok(info.capacityBytes! >= info.freeBytes! + 64 * blob.length, 'capacity counts the blob files the store holds');
});

/** mounts a small tmpfs and returns its directory, or undefined where this process may not mount */
function smallTmpfs(): string | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const dir = mkdtempSync(join(tmpdir(), 'kvfs-full-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', dir], { stdio: 'ignore' });
    // mounted as the file loads: unmounted at the process's end too, when the test that uses it was filtered out
    // (--grep) or never ran its teardown (a tmpfs of a run with --grep was found still mounted)
    atProcessEnd(() => {
      try {
        execFileSync('umount', [dir], { stdio: 'ignore' });
        rmSync(dir, { recursive: true, force: true });
      } catch { /* unmounted by the test's own teardown */ }
    });
    return dir;
  } catch {
    rmSync(dir, { recursive: true, force: true });
    return undefined;
  }
}

const full = smallTmpfs();
t.test('a full disk is NOSPACE, harms nothing written, and frees up again', { skip: full ? false : 'needs root and mount' }, async (t) => {
  const dir = join(full!, 'db');
  let s = await LmdbStore.open(dir);
  t.teardown(async () => {
    await s.close();
    execFileSync('umount', [full!]);
    rmSync(full!, { recursive: true, force: true });
  });
  await s.put('keep/a', enc('precious'));
  await s.sync();
  const blob = new Uint8Array(256 * 1024).fill(7);
  const fill = async (tag: string): Promise<[number, unknown]> => {
    for (let i = 0; i < 64; i++) {
      try {
        await s.put(`${tag}${i}`, blob);
      } catch (e) {
        return [i, e];
      }
    }
    return [64, undefined];
  };
  const [written, err] = await fill('b/');
  t.ok(written > 0 && written < 16, `the 4 MiB filesystem filled after ${written} blobs`);
  t.ok(isStoreError(err), 'a StoreError');
  t.equal((err as { code?: string }).code, 'NOSPACE');
  t.match((err as Error).message, new RegExp(`the limit is the filesystem mounted at ${full} \\(4194304 bytes\\); it has \\d+ bytes free`),
    'names the limit: the filesystem, its size and free bytes');
  t.match((err as Error).message, /deleting files on this volume/, 'and what frees space');
  const info = await s.info();
  t.ok(info.capacityBytes! <= 4 * 2 ** 20, `capacity ${info.capacityBytes} is within the 4 MiB filesystem`);
  t.ok(info.freeBytes! < 512 * 1024, `and little of it free (${info.freeBytes})`);
  await t.rejects(s.put('b/again', blob), { code: 'NOSPACE' }, 'the next write is refused too');
  t.equal(dec(await s.get('keep/a')), 'precious', 'earlier data is intact');
  t.equal((await s.get('b/0'))?.length, blob.length, 'earlier blobs are intact');

  await s.del(Array.from({ length: written }, (_, i) => `b/${i}`));
  for (let i = 0; i < 3; i++) await s.incr('tick', 1); // LMDB reuses freed pages a few transactions later
  t.ok((await s.info()).freeBytes! >= (written - 1) * blob.length, 'the deleted blobs\' space is free again');
  const [again] = await fill('c/');
  // the gate keeps 256 KiB for deletes and counts each write's copied pages (lmdb-space.ts): a blob or two less
  t.ok(again >= written - 3, `space freed by delete is usable again (${again} blobs)`);
  await s.close();
  s = await LmdbStore.open(dir);
  t.equal(dec(await s.get('keep/a')), 'precious', 'the store reopens with its data');
});

t.test('durable: resolves once a sync of the store\'s own covered every write before it; a failed sync rejects it', async (t) => {
  const dir = freshDir();
  const s = await LmdbStore.open(dir);
  t.teardown(() => s.close().catch(() => undefined));
  await s.commit([], [{ key: 'k/1', value: enc('one') }]);
  const t0 = Date.now();
  await s.durable();
  t.ok(Date.now() - t0 < 900, `the store synced soon for the waiter (${Date.now() - t0} ms), not at its 1 s interval`);
  const t1 = Date.now();
  await s.durable();
  t.ok(Date.now() - t1 < 20, 'with no write since, the next durable() resolves at once');

  // blob files the sync cannot reach (their directory moved away): the sync fails, and so does the wait
  await Promise.all(Array.from({ length: 70 }, (_, i) => s.put(`b/d.${i}`, new Uint8Array(64 << 10).fill(i))));
  const aside = `${dir}-aside`;
  execFileSync('mv', [join(dir, 'blobs'), aside]);
  await t.rejects(s.durable(), { code: 'ENOENT' }, 'a wait whose sync failed rejects with its error');
  execFileSync('mv', [aside, join(dir, 'blobs')]);
  await s.commit([], [{ key: 'k/2', value: enc('two') }]);
  await s.durable();
  t.pass('with the files back, the next wait resolves');

  // a wait pending when the store closes: close makes every write durable, and the wait resolves
  await s.commit([], [{ key: 'k/3', value: enc('three') }]);
  const pending = s.durable();
  await s.close();
  await pending;
  t.pass('a wait pending at close resolved with it');
});
