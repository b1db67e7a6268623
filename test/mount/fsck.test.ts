/**
 * `kvfs fsck` (src/volume/fsck.ts) on the local (LMDB) store: a volume made through a real mount is clean; then
 * each kind of damage is planted in the raw store (test/helpers/store.ts onStore: what no mount can make), and
 * fsck must name every kind, exit 4 (problems left) without --repair and change nothing, exit 1 with --repair
 * (all repaired, each saying what it did), and be clean (exit 0) afterwards; through a mount again the files
 * read as the repair says (a chunk whose blob was lost reads as zeros; the unreachable inode is in /lost+found).
 */
import t from 'tap';
import { join } from 'node:path';
import { expectCliError, expectExit } from '../helpers/assert.js';
import { kvfs, mountKvfs, PYTHON, run, tempDir } from '../helpers/mount.js';
import { onStore } from '../helpers/store.js';

t.setTimeout(180_000);

const KINDS = ['dangling-entry', 'nlink', 'children', 'parent', 'unreachable', 'stray-chunk', 'chunk-past-end',
  'missing-blob', 'stored', 'counter'];

interface Report { problems: { kind: string; what: string; repaired?: string }[] }

function reportOf(stdout: string): Report | undefined {
  const line = stdout.split('\n').find((l) => l.startsWith('{'));
  return line ? JSON.parse(line) as Report : undefined;
}

t.test('fsck finds each kind of damage, --repair fixes it, then it is clean', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-fsck-');
  const url = `local:${join(dataDir, 'vol')}`;
  expectExit(t, await kvfs(['format', url], { dataDir }), 'format');
  const m = await mountKvfs(t, { store: url, dataDir });
  const made = await run(PYTHON, ['-c', String.raw`
import json, os, sys
d = sys.argv[1]
open(os.path.join(d, "a"), "wb").write(bytes([7]) * 600000)
os.mkdir(os.path.join(d, "d")); os.mkdir(os.path.join(d, "e"))
open(os.path.join(d, "d", "f"), "wb").write(b"f" * 10000)
open(os.path.join(d, "h1"), "wb").write(b"h" * 3000); os.link(os.path.join(d, "h1"), os.path.join(d, "h2"))
print(json.dumps({n: os.stat(os.path.join(d, n)).st_ino for n in ["a", "d", "e", "d/f", "h1"]}))`, m.mnt]);
  expectExit(t, made, 'make a file of three chunks, two directories, a file in one, two hard links');
  const ino = JSON.parse(made.stdout) as Record<string, number>;
  await m.unmount();

  const clean = await kvfs(['fsck', url], { dataDir, timeout: 60_000 });
  expectExit(t, clean, 'fsck of the volume as the mount left it');
  t.match(clean.stdout, /: clean/, 'it is clean');

  const plant = await onStore(url, `
  const ino = ${JSON.stringify(ino)};
  const inode = async (i) => decodeInode(i, await store.get(K.inode(i)));
  const put = async (n) => store.put(K.inode(n.ino), encodeInode(n));
  // dangling-entry: a name for an inode that does not exist
  await store.put(K.dirent(1, 'ghost'), encodeDirent(999999, 0o100644));
  // nlink
  const a = await inode(ino.a); a.nlink = 5; await put(a);
  // children
  const d = await inode(ino.d); d.children = 7; await put(d);
  // parent
  const e = await inode(ino.e); e.parent = ino.d; await put(e);
  // unreachable: an inode no entry names
  const lost = { ...(await inode(ino['d/f'])), ino: 888888 }; await put(lost);
  await store.incr(K.inodeCount, 1);
  // stray-chunk: a chunk entry of an inode that does not exist (its blob exists)
  await store.put(K.blob('stray.1'), new Uint8Array(10));
  await store.put(K.chunk(777777, 0), encodeChunk(10, 'stray.1'));
  // chunk-past-end: chunk 5 of a 10,000-byte file
  await store.put(K.blob('past.1'), new Uint8Array(100));
  await store.put(K.chunk(ino['d/f'], 5), encodeChunk(100, 'past.1'));
  // missing-blob: the blob of the second chunk of a is gone
  const c1 = decodeChunk(await store.get(K.chunk(ino.a, 1)));
  await store.del([K.blob(c1.blobId)]);
  // stored
  const h = await inode(ino.h1); h.stored = 123456; await put(h);
  // counter
  await store.incr(K.byteCount, 4096);
  await store.sync();
  console.log('planted');`);
  expectExit(t, plant, 'plant one damage of each kind in the raw store');

  const found = await kvfs(['fsck', url, '--json'], { dataDir, timeout: 60_000 });
  t.equal(found.code, 4, 'fsck exits 4: problems left', { stdout: found.stdout });
  const r1 = reportOf(found.stdout);
  const kinds1 = [...new Set(r1?.problems.map((p) => p.kind))].sort();
  t.same(kinds1, [...KINDS].sort(), 'it names every kind planted', { problems: r1?.problems });
  for (const k of KINDS) t.match(found.stdout, new RegExp(`kvfs fsck: ${k}: `), `a line says ${k}`);
  t.notOk(r1?.problems.some((p) => p.repaired), 'without --repair nothing is repaired');
  const again = reportOf((await kvfs(['fsck', url, '--json'], { dataDir, timeout: 60_000 })).stdout);
  t.equal(again?.problems.length, r1?.problems.length, 'and nothing changed: a second check finds the same');

  const fixed = await kvfs(['fsck', url, '--repair', '--json'], { dataDir, timeout: 60_000 });
  t.equal(fixed.code, 1, 'fsck --repair exits 1: problems found, all repaired', { stdout: fixed.stdout });
  const r2 = reportOf(fixed.stdout);
  t.same(r2?.problems.filter((p) => !p.repaired), [], 'each problem says what was done');
  t.match(fixed.stdout, /unreachable: .*\[repaired: linked as \/lost\+found\/#888888\]/, 'the unreachable inode went to /lost+found');
  t.match(fixed.stdout, /missing-blob: .*bytes are lost \[repaired: entry removed \(that part of the file reads as zeros\)\]/, 'the lost chunk says so');

  const after = await kvfs(['fsck', url], { dataDir, timeout: 60_000 });
  expectExit(t, after, 'fsck after the repair');
  t.match(after.stdout, /: clean/, 'clean');

  await m.remount();
  const look = await run(PYTHON, ['-c', String.raw`
import json, os, sys
d = sys.argv[1]
a = open(os.path.join(d, "a"), "rb").read()
print(json.dumps({
  "a": [len(a), a[:262144] == bytes([7]) * 262144, a[262144:524288] == bytes(262144), a[524288:] == bytes([7]) * (600000 - 524288)],
  "lost": sorted(os.listdir(os.path.join(d, "lost+found"))),
  "root": sorted(os.listdir(d)),
  "nlink_a": os.stat(os.path.join(d, "a")).st_nlink,
  "f": len(open(os.path.join(d, "d", "f"), "rb").read()),
}))`, m.mnt]);
  expectExit(t, look, 'look through a mount after the repair');
  const l = JSON.parse(look.stdout || '{}') as Record<string, unknown>;
  t.same(l.a, [600000, true, true, true], 'a: its size kept, the lost chunk reads as zeros, the others as written');
  t.same(l.lost, ['#888888'], '/lost+found holds the unreachable inode');
  t.same(l.root, ['a', 'd', 'e', 'h1', 'h2', 'lost+found'], 'the dangling name is gone');
  t.equal(l.nlink_a, 1, 'a\'s link count is right again');
  t.equal(l.f, 10000, 'd/f reads whole');
  await m.unmount();
});

t.test('fsck: bad input and a mounted volume', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-fsck-');
  expectCliError(t, await kvfs(['fsck', `local:${join(dataDir, 'none')}`], { dataDir }), 'fsck of a store that does not exist', /holds no kvfs volume/);
  expectCliError(t, await kvfs(['fsck', 'memory:'], { dataDir }), 'fsck of memory:', /nothing to check/);
  const url = `local:${join(dataDir, 'vol')}`;
  expectExit(t, await kvfs(['format', url], { dataDir }), 'format');
  const m = await mountKvfs(t, { store: url, dataDir });
  expectCliError(t, await kvfs(['fsck', url, '--repair'], { dataDir }), 'fsck --repair of a mounted volume', /needs the volume unmounted/);
  await m.unmount();
});
