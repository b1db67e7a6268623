/**
 * Reads from blob files by the reader threads (native/read-index.h PublishFile, file-data.ts publishFile): on an
 * LMDB volume, a small random read of a chunk not cached publishes the chunk's blob file, and the reader threads
 * answer the next small reads of that chunk by reading the file themselves. Checked against the bytes written,
 * with the daemon's counters showing reads answered from files. When a blob file cannot be read (here: all of
 * them moved away, as a damaged store would have it), the readers send the READ to the core, which answers a
 * clear EIO in bounded time, never other bytes; with the files back, reads are right again.
 */
import t from 'tap';
import type { Test } from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expectExit } from '../helpers/assert.js';
import { kvfs, mountKvfs, PYTHON, run, tempDir } from '../helpers/mount.js';
import { daemonStats } from '../../bin/diag.js';

t.setTimeout(180_000);

interface Stats { channel: { fileReads: number; fileReadMisses: number; readAheadMarks: number; splicedReads: number } }

/**
 * A fresh LMDB volume mounted with a 1 MiB blob cache (four chunks: reads cannot live off it), and a file `f` on
 * it of `mib` MiB of `byte(i)`, written through dd with an fsync; `src` holds the same bytes for comparisons.
 */
async function scene(t: Test, prefix: string, mib: number, byte: (i: number) => number) {
  const dir = tempDir(t, prefix);
  const storeDir = join(dir, 'volume');
  const url = `local:${storeDir}`;
  expectExit(t, await kvfs(['format', url], { dataDir: dir }), 'format');
  const m = await mountKvfs(t, { driver: 'default', store: url, args: ['--cache-mb', '1'] });
  const src = join(dir, 'src');
  writeFileSync(src, Buffer.from(Array.from({ length: mib << 20 }, (_, i) => byte(i) & 0xff)));
  const file = join(m.mnt, 'f');
  expectExit(t, await run('dd', [`if=${src}`, `of=${file}`, 'bs=1M', 'conv=fsync', 'status=none']), `write ${mib} MiB`);
  const stats = async () => ((await daemonStats(m.mnt)) as unknown as Stats).channel;
  return { dir, storeDir, m, src, file, stats };
}

// One process, one descriptor (a close of the last one takes the file's published chunks back): reads, then
// moves every blob file aside and reads, then moves them back and reads. Prints the EIO count of each phase.
const READS = String.raw`
import mmap, os, random, sys
path, src, blobs, aside = sys.argv[1:5]
want = open(src, "rb").read()
buf = mmap.mmap(-1, 4096)
fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
rng = random.Random(5)
def reads(n):
    errors = 0
    for i in range(n):
        off = rng.randrange(0, len(want) // 4096) * 4096
        try:
            got = os.preadv(fd, [buf], off)
        except OSError as e:
            errors += 1
            if e.errno != 5: sys.exit(f"read at {off}: {e} (want EIO or the bytes)")
            continue
        if got != 4096 or bytes(buf[:got]) != want[off:off + 4096]:
            sys.exit(f"read at {off}: {got} bytes, not the ones written")
    return errors
moved = []
def move(a, b):
    for ff in os.listdir(a):
        for name in os.listdir(os.path.join(a, ff)):
            os.makedirs(os.path.join(b, ff), exist_ok=True)
            os.rename(os.path.join(a, ff, name), os.path.join(b, ff, name))
            moved.append(name)
out = [reads(3000)]
move(blobs, aside)
out.append(reads(200))
move(aside, blobs)
out.append(reads(1000))
os.close(fd)
print(len(moved) // 2, *out)
`;

t.test('small random reads are answered from blob files, and a missing file gives EIO, never other bytes', async (t) => {
  const { dir, storeDir, m, src, file, stats } = await scene(t, 'kvfs-test-blobfiles-', 8, (i) => i * 7 + (i >> 12));

  const r = await run(PYTHON, ['-c', READS, file, src, join(storeDir, 'blobs'), join(dir, 'aside')], { timeout: 120_000 });
  expectExit(t, r, 'random 4 KiB O_DIRECT reads: 3,000; 200 with the blob files moved away; 1,000 with them back; each EIO or the bytes written');
  const [files, before, gone, back] = r.stdout.trim().split(' ').map(Number);
  t.ok(files! >= 32, `blob files moved away and back: ${files}`);
  t.equal(before, 0, 'before: no read failed');
  t.ok(gone! > 0, `with the files away: ${gone} of 200 reads failed with EIO`);
  t.equal(back, 0, 'with the files back: no read failed');
  const s = await stats();
  t.ok(s.fileReads > 1000, `reads answered from blob files by the readers: ${s.fileReads}`);
  t.ok(s.fileReadMisses > 0, `READs the readers passed on because a file could not be read: ${s.fileReadMisses}`);
  t.equal((await m.unmount()).code, 0, 'unmount');
});

// A sequential reader's window (file-data.ts fetchAhead): on LMDB the chunks ahead of it are published as their
// blob files, each window's first with a mark, so that the readers answer nearly every READ of a long
// sequential read by reading the files themselves, window after window, with the blob cache far too small to
// hold a window (1 MiB). The bytes are checked against the source, through the page cache and with O_DIRECT.
t.test('a sequential read is answered from blob files, window after window', async (t) => {
  const { m, src, file, stats } = await scene(t, 'kvfs-test-blobfiles-seq-', 48, (i) => i * 13 + (i >> 16));
  for (const flag of ['', 'iflag=direct']) {
    const before = await stats();
    const r = await run('sh', ['-c', `echo 3 > /proc/sys/vm/drop_caches; dd if=${file} bs=1M ${flag} status=none | cmp - ${src}`]);
    expectExit(t, r, `read back ${flag || 'through the page cache'}: the bytes written`);
    const after = await stats();
    const files = after.fileReads - before.fileReads;
    const spliced = after.splicedReads - before.splicedReads;
    const marks = after.readAheadMarks - before.readAheadMarks;
    // 48 MiB in READs of at most 1 MiB (128 KiB through the page cache): well over 48 of them from files
    t.ok(files >= 40, `${flag || 'page cache'}: READs the readers answered from blob files: ${files}`);
    // Through the page cache a READ (128-256 KiB) lies within one chunk: its reply is spliced (the blob file's
    // pages into the device, one copy). An O_DIRECT READ of 1 MiB spans four chunks (four files): read and written.
    if (flag) t.ok(spliced <= files, `${flag}: of them spliced: ${spliced}`);
    else t.ok(spliced >= 40 && spliced <= files, `page cache: of them spliced: ${spliced}`);
    t.ok(marks >= 8, `${flag || 'page cache'}: windows that moved on from a mark the readers met: ${marks}`);
  }
  t.equal((await m.unmount()).code, 0, 'unmount');
});

// A blob file cut short (a damaged store) under a sequential reader: the readers find fewer bytes than the chunk
// map promises (the splice of the file ends early, and so does the read tried after it), send the READ on, and
// the core fails it with EIO (file-data.ts whole()). A read returns the bytes written up to the first page it
// cannot have (a short read), then EIO; never other bytes (the cut halves read as zeros before whole()).
const CUT_READS = String.raw`
import json, os, sys
path, src = sys.argv[1:3]
want = open(src, "rb").read()
fd = os.open(path, os.O_RDONLY)
out = {"eio": 0, "ok": 0, "bad": 0}
off = 0
while off < len(want):
    try:
        got = os.pread(fd, 1 << 20, off)
    except OSError as e:
        if e.errno != 5: sys.exit(f"read at {off}: {e} (want EIO or the bytes)")
        out["eio"] += 1
        off = (off // (1 << 20) + 1) << 20
        continue
    if not got:
        sys.exit(f"end of file at {off} of {len(want)}")
    if got == want[off:off + len(got)]:
        out["ok"] += 1
    else:
        out["bad"] += 1
        if "first" not in out:
            n = next((i for i in range(len(got)) if got[i] != want[off + i]), len(got))
            out["first"] = {"off": off, "len": len(got), "same_for": n}
    # a read that ends early (the next page failed) is followed by one at its end
    off += len(got)
os.close(fd)
print(json.dumps(out))
`;

t.test('a blob file cut short under a sequential reader gives EIO, never other bytes', async (t) => {
  const { storeDir, m, src, file, stats } = await scene(t, 'kvfs-test-blobfiles-cut-', 16, (i) => i * 11 + (i >> 14));
  expectExit(t, await run('sh', ['-c', `echo 3 > /proc/sys/vm/drop_caches; dd if=${file} bs=1M status=none | cmp - ${src}`]),
    'read back whole before the damage');
  const cut = await run(PYTHON, ['-c', String.raw`
import os, sys
n = 0
for d, _, names in os.walk(sys.argv[1]):
    for name in names:
        p = os.path.join(d, name)
        size = os.path.getsize(p)
        if size > 4096:
            os.truncate(p, size // 2)
            n += 1
print(n)`, join(storeDir, 'blobs')]);
  expectExit(t, cut, 'cut every blob file to half its length');
  t.ok(Number(cut.stdout.trim()) >= 16, `blob files cut: ${cut.stdout.trim()}`);
  const before = await stats();
  const r = await run('sh', ['-c', `echo 3 > /proc/sys/vm/drop_caches; ${PYTHON} -c '${CUT_READS.replace(/'/g, `'\\''`)}' ${file} ${src}`],
    { timeout: 120_000 });
  expectExit(t, r, '1 MiB reads through the page cache, each EIO or the bytes written');
  const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { eio?: number; ok?: number; bad?: number };
  t.equal(out.bad, 0, 'no read returned other bytes', { out });
  t.ok((out.eio ?? 0) > 0, `reads that failed with EIO: ${out.eio}; reads that returned the bytes written: ${out.ok}`);
  const after = await stats();
  t.ok(after.fileReadMisses > before.fileReadMisses, `READs the readers passed on to the core: ${after.fileReadMisses - before.fileReadMisses}`);
  t.equal((await m.unmount()).code, 0, 'unmount');
});
