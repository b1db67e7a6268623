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

t.test('an unaligned small write into a chunk not in memory keeps the bytes around it', async (t) => {
  const store = new MemoryStore();
  await formatVolume(store, { chunkSize: CHUNK, uid: 0, gid: 0 });
  const fs = await Filesystem.open(store);
  t.teardown(() => fs.close());
  const { attr, fh } = await fs.create(ROOT_INO, 'f', 0o644, O_RDWR, CTX);
  const model = Buffer.alloc(CHUNK, 0x61);
  await fs.write(fh, 0, model);
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
  t.same(laterSlices(old, old), [], 'the entry composed: nothing over the new blob');
  t.same(laterSlices(old, { ...old, slices: [...old.slices, s(8192, 'c'), s(0, 'd')] }), [s(8192, 'c'), s(0, 'd')],
    'slices added after it stay, in order, over the new blob');
  t.equal(laterSlices(old, { ...old, blobId: 'other' }), undefined, 'another base: the compaction is dropped');
  t.equal(laterSlices(old, { ...old, slices: [old.slices[1]!, s(0, 'e')] }), undefined, 'a slice of it covered and gone: dropped');
  t.equal(laterSlices(old, { length: CHUNK, blobId: 'base' }), undefined, 'its slices gone: dropped');
});
