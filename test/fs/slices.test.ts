/**
 * Slices (file-data.ts, schema.ts ChunkEntry): page-aligned writes smaller than a chunk are committed as small
 * blobs laid over the chunk's blob, not as a rewritten chunk, and chunks are compacted when their slices add up.
 * Driven through the core (Filesystem) on a memory store and on LMDB, checked against a copy of the file held
 * here: every read, after every fsync, after the file is reopened, and after the store is opened again.
 */
import t, { type Test } from 'tap';
import { constants } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KvStore } from '../../src/backend/kv.js';
import { MemoryStore } from '../../src/backend/memory.js';
import { StoreError } from '../../src/backend/errors.js';
import { openStore } from '../../src/backend/open-store.js';
import { Filesystem } from '../../src/fs/filesystem.js';
import { FORMAT_VERSION, K, decodeChunk, decodeVolume, encodeVolume, entryBlobs, makeSlice } from '../../src/volume/schema.js';
import { laterSlices } from '../../src/fs/file-data.js';
import { ROOT_INO, type Ctx } from '../../src/fs/types.js';
import { formatVolume, readVolume } from '../../src/volume/format.js';
import { prng } from '../helpers/prng.js';

const CTX: Ctx = { uid: 0, gid: 0, pid: 1 };
const CHUNK = 256 << 10;
const FILE = 8 << 20;
const { O_RDWR } = constants;

async function chunkEntries(store: KvStore, ino: number) {
  return (await store.scan(K.chunkPrefix(ino))).map(([, v]) => decodeChunk(v));
}

async function randomWrites(t: Test, store: KvStore, reopen: () => Promise<KvStore>) {
  await formatVolume(store, { chunkSize: CHUNK, uid: 0, gid: 0 });
  let fs = await Filesystem.open(store);
  const rnd = prng(7);
  const model = Buffer.alloc(FILE);
  for (let i = 0; i < FILE; i += 4) model.writeUInt32LE(Math.floor(rnd() * 2 ** 32), i);
  const { attr, fh } = await fs.create(ROOT_INO, 'f', 0o644, O_RDWR, CTX);
  await fs.write(fh, 0, model);
  await fs.fsync(fh);
  const before = fs.stats();
  // 4 KiB random writes, fsync every 64 (fio's rand-write-4k), with a read of a random page every 16
  const WRITES = 3000;
  for (let i = 1; i <= WRITES; i++) {
    const off = Math.floor(rnd() * (FILE / 4096)) * 4096;
    const page = Buffer.alloc(4096, i & 0xff);
    page.writeUInt32LE(i, 0);
    await fs.write(fh, off, page);
    page.copy(model, off);
    if (i % 64 === 0) await fs.fsync(fh);
    if (i % 16 === 0) {
      const at = Math.floor(rnd() * (FILE / 4096)) * 4096;
      const got = await fs.read(fh, at, 8192);
      if (!got.equals(model.subarray(at, at + 8192))) return t.fail(`write ${i}: read at ${at} differs`);
    }
  }
  await fs.fsync(fh);
  const after = fs.stats();
  const ratio = (after.bytesSent - before.bytesSent) / (after.bytesWritten - before.bytesWritten);
  t.ok(ratio <= 4, `bytes sent to the store per byte written by 4 KiB random writes: ${ratio.toFixed(2)} (at most 4)`);
  const entries = await chunkEntries(store, attr.ino);
  const sliced = entries.filter((e) => e.slices?.length).length;
  t.ok(sliced > 0, `${sliced} of ${entries.length} chunks hold slices`);
  // a commit that would pass 64 slices writes them and leaves the chunk to a compaction behind it (file-data.ts)
  t.ok(entries.every((e) => (e.slices?.length ?? 0) <= 128), 'no chunk holds more than 128 slices');
  t.ok((await fs.read(fh, 0, FILE)).equals(model), 'the whole file reads as written, through the handle');
  await fs.release(fh);
  const fh2 = await fs.open(attr.ino, O_RDWR);
  t.ok((await fs.read(fh2, 0, FILE)).equals(model), 'and after it was closed and opened again');
  await fs.release(fh2);
  await fs.close();
  const again = await reopen();
  fs = await Filesystem.open(again);
  const fh3 = await fs.open(attr.ino, O_RDWR);
  t.ok((await fs.read(fh3, 0, FILE)).equals(model), 'and after the store was opened again');
  // the blobs the chunk map names are all there, and hold what it says
  for (const e of await chunkEntries(again, attr.ino)) {
    for (const b of entryBlobs(e)) {
      const v = await again.get(K.blob(b.blobId));
      if (v?.length !== b.length) t.fail(`blob ${b.blobId}: ${v?.length} bytes, the entry says ${b.length}`);
    }
  }
  // a truncate into a sliced chunk, then growing again: nothing of the cut bytes comes back
  await fs.setattr(attr.ino, { size: FILE / 2 + 5000 }, CTX);
  await fs.setattr(attr.ino, { size: FILE }, CTX);
  model.fill(0, FILE / 2 + 5000);
  t.ok((await fs.read(fh3, 0, FILE)).equals(model), 'a truncate into sliced chunks, then growing: zeros past the cut');
  await fs.release(fh3);
  await fs.close();
}

t.test('4 KiB random writes become slices (memory store)', async (t) => {
  const store = new MemoryStore();
  await randomWrites(t, store, async () => store);
});

t.test('4 KiB random writes become slices (LMDB)', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'kvfs-slices-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  let store = await openStore(`local:${dir}`);
  t.teardown(() => store.close().catch(() => undefined));
  await randomWrites(t, store, async () => {
    await store.close();
    store = await openStore(`local:${dir}`);
    return store;
  });
});

/** a fresh volume on `store` with an empty file 'f', open */
async function freshFile(store: MemoryStore) {
  await formatVolume(store, { chunkSize: CHUNK, uid: 0, gid: 0 });
  const fs = await Filesystem.open(store);
  const { attr, fh } = await fs.create(ROOT_INO, 'f', 0o644, O_RDWR, CTX);
  return { fs, attr, fh };
}

/** freshFile with one chunk of 0x61 bytes written (not yet committed) */
async function oneChunkFile(store: MemoryStore) {
  const { fs, attr, fh } = await freshFile(store);
  const model = Buffer.alloc(CHUNK, 0x61);
  await fs.write(fh, 0, model);
  return { fs, attr, fh, model };
}

t.test('an unaligned small write into a chunk not in memory keeps the bytes around it', async (t) => {
  const store = new MemoryStore();
  const { fs, attr, fh, model } = await oneChunkFile(store);
  t.teardown(() => fs.close());
  await fs.release(fh);
  const fh2 = await fs.open(attr.ino, O_RDWR);
  await fs.write(fh2, 4096, Buffer.alloc(4096, 0x62)); // aligned: a slice
  await fs.write(fh2, 10000, Buffer.alloc(100, 0x63)); // inside a page it lacks: completes the chunk
  model.fill(0x62, 4096, 8192);
  model.fill(0x63, 10000, 10100);
  t.ok((await fs.read(fh2, 0, CHUNK)).equals(model), 'read before the commit');
  await fs.fsync(fh2);
  t.ok((await fs.read(fh2, 0, CHUNK)).equals(model), 'read after the commit');
  t.notOk((await chunkEntries(store, attr.ino))[0]!.slices, 'the completed chunk was written whole');
  await fs.release(fh2);
});

t.test('a commit drops the recent slices the new ones cover; older covered ones stay until the chunk is compacted', async (t) => {
  const store = new MemoryStore();
  const { fs, attr, fh, model } = await oneChunkFile(store);
  await fs.fsync(fh);
  const page = async (p: number, fill: number) => {
    const b = Buffer.alloc(4096, fill);
    await fs.write(fh, p * 4096, b);
    b.copy(model, p * 4096);
    await fs.fsync(fh);
  };
  const slices = async () => (await chunkEntries(store, attr.ino))[0]!.slices ?? [];
  for (let i = 0; i < 20; i++) await page(0, i);
  t.equal((await slices()).length, 1, 'a page written 20 times, an fsync after each: one slice');
  for (let i = 0; i < 20; i++) await page(1 + (i % 2), 0x40 + i);
  t.equal((await slices()).length, 3, 'two more pages written in turn 20 times: one slice each');
  await page(5, 0x70);
  for (let p = 10; p < 20; p++) await page(p, 0x71);
  await page(5, 0x72);
  const now = await slices();
  t.equal(now.filter((x) => x.off === 5 * 4096).length, 2, 'a page written again after 10 others: its older slice stays (covered)');
  t.equal(now.length, 3 + 1 + 10 + 1, 'and every other slice is there once');
  t.ok((await fs.read(fh, 0, CHUNK)).equals(model), 'the chunk reads as written: the newer slice over the older');
  // the covered slice is still named, so it is still stored; the dropped ones were collected
  await fs.release(fh);
  await fs.close();
  const before = (await chunkEntries(store, attr.ino))[0]!;
  const base = before.blobId;
  const named = new Set(entryBlobs(before).map((b) => b.blobId));
  const stored = (await store.keys(K.blob(''))).map((k) => k.slice(K.blob('').length));
  t.same(stored.filter((id) => !named.has(id)), [], 'no blob is stored that the entry does not name');
  for (const id of named) t.ok(stored.includes(id), `blob ${id} the entry names is stored`);
  const fs2 = await Filesystem.open(store);
  const fh2 = await fs2.open(attr.ino, O_RDWR);
  t.ok((await fs2.read(fh2, 0, CHUNK)).equals(model), 'and after the volume is opened again');
  // enough writes of one page to pass MAX_SLICES slices in the entry: compacted, every slice gone
  for (let i = 0; i < 70; i++) {
    const b = Buffer.alloc(4096, 0x20 + i);
    await fs2.write(fh2, (i % 40) * 4096, b);
    b.copy(model, (i % 40) * 4096);
    if (i % 2) await fs2.fsync(fh2);
  }
  await fs2.fsync(fh2);
  // (the compaction runs behind the commit that asked for it, while the file is open)
  for (let i = 0; i < 200 && (await chunkEntries(store, attr.ino))[0]!.blobId === base; i++) await new Promise((r) => setTimeout(r, 10));
  await fs2.release(fh2);
  await fs2.close();
  const after = (await chunkEntries(store, attr.ino))[0]!;
  t.not(after.blobId, base, 'compacted: the chunk has a new base blob');
  t.ok((after.slices?.length ?? 0) < now.length + 70, `and ${after.slices?.length ?? 0} slices over it, those committed after`);
  const fs3 = await Filesystem.open(store);
  t.teardown(() => fs3.close());
  const fh3 = await fs3.open(attr.ino, O_RDWR);
  t.ok((await fs3.read(fh3, 0, CHUNK)).equals(model), 'the compacted chunk reads as written');
  await fs3.release(fh3);
});

t.test('a format 1 volume is upgraded when mounted; a newer one than this kvfs is refused', async (t) => {
  const store = new MemoryStore();
  await formatVolume(store, { chunkSize: CHUNK, uid: 0, gid: 0 });
  const v1 = { ...decodeVolume((await store.get(K.volume))!), formatVersion: 1 };
  await store.commit([], [{ key: K.volume, value: encodeVolume(v1) }]);
  const fs = await Filesystem.open(store);
  await fs.close();
  t.equal((await readVolume(store)).formatVersion, FORMAT_VERSION, `format ${FORMAT_VERSION} after the mount`);
  const newer = { ...v1, formatVersion: FORMAT_VERSION + 1 };
  await store.commit([], [{ key: K.volume, value: encodeVolume(newer) }]);
  await t.rejects(Filesystem.open(store), { code: 'VERSION' }, 'a newer volume: VERSION');
});

t.test('a compaction keeps the slices committed while it ran (laterSlices)', async (t) => {
  const s = (off: number, id: string) => makeSlice(off, 4096, id);
  const old = { length: CHUNK, blobId: 'base', slices: [s(0, 'a'), s(4096, 'b')] };
  t.same(laterSlices(old, old), { later: [], kept: old.slices }, 'the entry composed: nothing over the new blob, its slices go');
  t.same(laterSlices(old, { ...old, slices: [...old.slices, s(8192, 'c'), s(0, 'd')] }), { later: [s(8192, 'c'), s(0, 'd')], kept: old.slices },
    'slices added after it stay, in order, over the new blob');
  t.same(laterSlices(old, { ...old, slices: [old.slices[1]!, s(0, 'e')] }), { later: [s(0, 'e')], kept: [old.slices[1]] },
    'one of its slices covered by a later one (and queued for GC then): only the one still named goes now');
  t.equal(laterSlices(old, { ...old, blobId: 'other' }), undefined, 'another base: the compaction is dropped');
  t.equal(laterSlices(old, { ...old, slices: [s(0, 'e'), old.slices[1]!] }), undefined, 'one of its slices after a later one: dropped');
  t.equal(laterSlices(old, { length: CHUNK, blobId: 'base' }), undefined, 'its slices gone with nothing covering them: dropped');
  t.same(laterSlices(old, { ...old, slices: [s(0, 'f'), s(4096, 'g')] }), { later: [s(0, 'f'), s(4096, 'g')], kept: [] },
    'all of its slices covered by later ones: only the base goes');
});

t.test('a write into a chunk whose commit is under way: the next commit sends its own pages, not the committed ones again', async (t) => {
  // puts held 30 ms: the first commit is still under way when the second write comes
  class SlowPuts extends MemoryStore {
    override async put(...args: Parameters<MemoryStore['put']>): ReturnType<MemoryStore['put']> {
      await new Promise((r) => setTimeout(r, 30));
      return super.put(...args);
    }
  }
  const store = new SlowPuts();
  const { fs, attr, fh, model } = await oneChunkFile(store);
  t.teardown(() => fs.close());
  await fs.fsync(fh);
  const before = fs.stats().bytesSent;
  await fs.write(fh, 0, Buffer.alloc(4096, 0x62));
  const first = fs.flush(fh);
  await new Promise((r) => setTimeout(r, 10)); // the commit took page 0 and waits for its put
  await fs.write(fh, 8192, Buffer.alloc(4096, 0x63));
  model.fill(0x62, 0, 4096);
  model.fill(0x63, 8192, 12288);
  t.ok((await fs.read(fh, 0, CHUNK)).equals(model), 'a read during the commit sees both writes');
  await first;
  await fs.fsync(fh);
  t.equal(fs.stats().bytesSent - before, 8192, 'two pages written, two pages sent (page 0 once)');
  const slices = (await chunkEntries(store, attr.ino))[0]!.slices ?? [];
  t.same(slices.map((x) => x.off), [0, 8192], 'one slice each');
  t.ok((await fs.read(fh, 0, CHUNK)).equals(model), 'and the chunk reads as written');
  await fs.release(fh);
});

t.test('a failed commit with a newer write of the chunk: the newer buffer\'s commit sends the failed pages too', async (t) => {
  class FailingPut extends MemoryStore {
    fail = false;
    override async put(...args: Parameters<MemoryStore['put']>): ReturnType<MemoryStore['put']> {
      await new Promise((r) => setTimeout(r, 30));
      if (this.fail && args[0].startsWith('b/')) {
        this.fail = false;
        throw new StoreError('UNAVAILABLE', 'the store went away for a moment');
      }
      return super.put(...args);
    }
  }
  const store = new FailingPut();
  const { fs, attr, fh, model } = await oneChunkFile(store);
  await fs.fsync(fh);
  await fs.write(fh, 0, Buffer.alloc(4096, 0x62));
  store.fail = true;
  const first = fs.flush(fh);
  await new Promise((r) => setTimeout(r, 10));
  await fs.write(fh, 8192, Buffer.alloc(4096, 0x63));
  await t.rejects(first, { code: 'UNAVAILABLE' }, 'the first commit fails');
  await fs.fsync(fh);
  model.fill(0x62, 0, 4096);
  model.fill(0x63, 8192, 12288);
  await fs.release(fh);
  await fs.close();
  const again = await Filesystem.open(store);
  t.teardown(() => again.close());
  const fh2 = await again.open(attr.ino, O_RDWR);
  t.ok((await again.read(fh2, 0, CHUNK)).equals(model), 'the store holds both pages: the failed one went with the next commit');
  await again.release(fh2);
});

t.test('a sequential writer that met a commit of its chunk part-way: the chunk is compacted to one blob behind it', async (t) => {
  const store = new MemoryStore();
  const { fs, attr, fh } = await freshFile(store);
  t.teardown(() => fs.close());
  const model = Buffer.alloc(2 * CHUNK);
  for (let i = 0; i < model.length; i++) model[i] = (i * 7) & 0xff;
  await fs.write(fh, 0, model.subarray(0, 100 << 10));
  await fs.fsync(fh); // chunk 0 committed with 100 KiB
  for (let off = 100 << 10; off < model.length; off += 4096) await fs.write(fh, off, model.subarray(off, off + 4096));
  await fs.fsync(fh);
  await new Promise((r) => setTimeout(r, 50)); // the compaction behind the commit
  await fs.fsync(fh);
  const entries = await chunkEntries(store, attr.ino);
  t.equal(entries.length, 2, 'two chunks');
  t.same(entries.map((e) => e.slices?.length ?? 0), [0, 0], 'neither keeps a slice: each is one blob');
  t.ok((await fs.read(fh, 0, model.length)).equals(model), 'and the file reads as written');
  await fs.release(fh);
});
