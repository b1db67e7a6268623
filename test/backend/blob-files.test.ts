/**
 * Blob files' spares (src/backend/blob-files.ts rule 5): a deleted blob file is kept and a later put overwrites it.
 *  - a put over a spare holds exactly its bytes, whether the spare was longer (cut) or shorter (grown);
 *  - a file being read (get, getRange) is never made a spare: the read returns the old bytes, whole;
 *  - no spares while spareWhen says no, nor past the cap; releaseSpares unlinks them all;
 *  - spares are found again at open, and a maintenance walk (keyPages) never lists them;
 *  - a spare gone behind the store's back costs nothing: the put makes a new file.
 * Real files in a temporary directory, through the native addon (the node:fs fallback keeps no spares).
 */
import { mkdtempSync, readdirSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { BlobFiles } from '../../src/backend/blob-files.js';

const root = mkdtempSync(join(tmpdir(), 'kvfs-blob-files.'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const freshDir = (): string => join(root, `store.${n++}`);
const bytes = (len: number, fill: number): Uint8Array => new Uint8Array(len).fill(fill);
const spareFiles = (dir: string): string[] => readdirSync(join(dir, 'blobs', 'spare'));

/** resolves once cond() holds (the count of files found at open runs in the background), or fails after 5 s */
async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
}

t.test('a deleted blob file becomes a spare, and the next put overwrites it with exactly its bytes', async (t) => {
  const dir = freshDir();
  const blobs = new BlobFiles(dir);
  await blobs.put('b/one', bytes(256 << 10, 1));
  await blobs.del(['b/one']);
  t.equal(blobs.spareBytes, 256 << 10, 'the deleted file is kept as a spare');
  t.equal(spareFiles(dir).length, 1, 'in the spare directory');
  t.equal(blobs.bytes, 0, 'and no longer counted as a blob');
  t.equal(await blobs.get('b/one'), undefined, 'the blob is gone');

  // shorter than the spare: the file is cut to the new length
  await blobs.put('b/two', bytes(100_000, 2));
  t.equal(blobs.spareBytes, 0, 'the put took the spare');
  t.same(spareFiles(dir), [], 'which left the spare directory');
  const two = await blobs.get('b/two');
  t.equal(two?.length, 100_000, 'the blob is its own length, not the spare\'s');
  t.ok(two?.every((b) => b === 2), 'and holds only its own bytes');
  t.equal(statSync(blobs.path('b/two')).size, 100_000, 'the file on disk is cut');

  // longer than the spare: the file grows
  await blobs.del(['b/two']);
  await blobs.put('b/three', bytes(300_000, 3));
  const three = await blobs.get('b/three');
  t.ok(three?.length === 300_000 && three.every((b) => b === 3), 'a put longer than the spare holds all its bytes');
  t.equal(blobs.bytes, 300_000, 'the blob bytes count the new file');
});

t.test('a file being read is not made a spare: the read returns the old bytes', async (t) => {
  const blobs = new BlobFiles(freshDir());
  const old = bytes(1 << 20, 7);
  await blobs.put('b/read', old);
  await blobs.put('b/range', old);
  const reading = blobs.get('b/read');
  const ranging = blobs.getRange('b/range', 4096, 8192);
  await blobs.del(['b/read', 'b/range']);
  t.equal(blobs.spareBytes, 0, 'neither file was kept (both were being read)');
  // a put now cannot take either file's inode: there is no spare
  await blobs.put('b/next', bytes(1 << 20, 9));
  const got = await reading;
  t.ok(got?.length === old.length && got.every((b) => b === 7), 'the read that began before the delete returned the old bytes');
  const part = await ranging;
  t.ok(part?.length === 8192 && part.every((b) => b === 7), 'and so did the range read');
  await blobs.del(['b/next']);
  t.equal(blobs.spareBytes, 1 << 20, 'a file nobody reads is kept');
});

t.test('no spares while spareWhen says no; releaseSpares unlinks them all', async (t) => {
  let room = false;
  const dir = freshDir();
  const blobs = new BlobFiles(dir, { spareWhen: () => room });
  await blobs.put('b/a', bytes(64 << 10, 1));
  await blobs.del(['b/a']);
  t.equal(blobs.spareBytes, 0, 'no room: the file was unlinked');
  t.same(spareFiles(dir), [], 'and is not in the spare directory');
  room = true;
  await blobs.put('b/b', bytes(64 << 10, 1));
  await blobs.put('b/c', bytes(64 << 10, 1));
  await blobs.del(['b/b', 'b/c']);
  t.equal(blobs.spareBytes, 128 << 10, 'with room, both were kept');
  t.equal(await blobs.releaseSpares(), 128 << 10, 'releaseSpares gives back their bytes');
  t.equal(blobs.spareBytes, 0, 'and keeps none');
  t.same(spareFiles(dir), [], 'the files are unlinked');
  await blobs.put('b/d', bytes(1000, 4));
  t.ok((await blobs.get('b/d'))?.every((b) => b === 4), 'a put after the release makes a new file');
});

t.test('spares are kept up to a cap', async (t) => {
  const blobs = new BlobFiles(freshDir());
  const big = bytes(32 << 20, 5);
  const keys = Array.from({ length: 10 }, (_, i) => `b/big.${i}`);
  for (const k of keys) await blobs.put(k, big);
  await blobs.del(keys);
  t.equal(blobs.spareBytes, 256 << 20, 'of 320 MiB of deleted files, 256 MiB are kept as spares');
  t.equal(await blobs.releaseSpares(), 256 << 20, 'and released');
});

t.test('spares are found again at open; a walk of the blob keys never lists them', async (t) => {
  const dir = freshDir();
  const first = new BlobFiles(dir);
  await first.put('b/kept', bytes(4096 * 5, 1));
  await first.put('b/gone', bytes(4096 * 7, 2));
  await first.del(['b/gone']);
  const again = new BlobFiles(dir);
  await until(() => again.spareBytes > 0);
  t.equal(again.spareBytes, 4096 * 7, 'the spare left by the last open is found');
  const keys: string[] = [];
  for await (const page of again.keyPages('b/', 100)) keys.push(...page);
  t.same(keys, ['b/kept'], 'a walk of the blob keys lists the blob, not the spare');
  await again.put('b/new', bytes(4096 * 3, 3));
  t.equal(again.spareBytes, 0, 'the spare found at open is taken by a put');
  t.ok((await again.get('b/new'))?.length === 4096 * 3, 'which holds its own bytes');
});

t.test('a spare gone behind the store\'s back: the put makes a new file', async (t) => {
  const dir = freshDir();
  const blobs = new BlobFiles(dir);
  await blobs.put('b/x', bytes(8192, 1));
  await blobs.del(['b/x']);
  for (const f of spareFiles(dir)) unlinkSync(join(dir, 'blobs', 'spare', f));
  await blobs.put('b/y', bytes(8192, 2));
  t.ok((await blobs.get('b/y'))?.every((b) => b === 2), 'the put succeeded with a new file');
  await blobs.del(['b/missing']);
  t.pass('deleting a blob with no file is not an error');
});
