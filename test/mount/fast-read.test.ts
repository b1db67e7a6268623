/**
 * The native channel's fast reads (native/read-index.h, src/fs/published.ts): reader threads answer READs of
 * chunks the core published, without JavaScript. They must never serve bytes or a size older than a change
 * that was already acknowledged. A python process (a separate process: the daemon's event loop is never
 * blocked by the test) runs seeded random operations on files of a real mount and checks every read against
 * a model of the file held in its own memory:
 *  - writes (buffered, across chunk boundaries, growing the file), truncates that shrink and grow, fsync,
 *    close and reopen (the core drops the file's data and its published chunks), unlink and create again;
 *  - reads through an O_DIRECT descriptor (every one reaches the daemon, so published chunks are used) and
 *    through a buffered one after the page cache was dropped (POSIX_FADV_DONTNEED), at random offsets and
 *    sizes, beyond the end of the file too, and sequentially (the core's read-ahead publishes ahead).
 * A second, concurrent reader process reads the same files through O_DIRECT while the first one changes them,
 * checking only what can be checked without ordering: every read returns whole bytes that one of the model's
 * versions could hold (length within bounds; no error).
 * Closes: a FLUSH of a file with nothing uncommitted is answered by the readers too; a close after a write must
 * still commit before it returns (checked by kill -9 of the daemon after the closes, on an LMDB volume).
 * Cases: memory volumes of 64 KiB and 256 KiB chunks (and 256 KiB with the kernel's writeback cache), and an LMDB volume whose blob cache holds four chunks (so
 * published chunks are taken back on eviction all the time, and small random reads publish blob files). The daemon's stats must show reads
 * answered by the readers (fastReads) and reads passed to the core (misses), so both paths were exercised.
 */
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expectExit } from '../helpers/assert.js';
import { kvfs, mountKvfs, PYTHON, run, tempDir } from '../helpers/mount.js';
import { daemonStats } from '../../bin/diag.js';

t.setTimeout(240_000);

const FUZZ = String.raw`
import mmap, os, random, sys

path, seed, steps, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
model = bytearray()
ALIGN = 4096
dbuf = mmap.mmap(-1, 4 << 20)  # page-aligned buffer for O_DIRECT

def opened():
    w = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    d = os.open(path, os.O_RDONLY | os.O_DIRECT)
    b = os.open(path, os.O_RDONLY)
    return w, d, b

def close_all(fds):
    for fd in fds: os.close(fd)

def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)

def check(got, off, size, how):
    want = bytes(model[off:off + size])
    if got != want:
        first = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
        fail(f"step {step}: {how} read of {size} at {off} (file {len(model)}): got {len(got)} bytes, want {len(want)}; first difference at {first}")

def direct_read(d, off, size):
    off -= off % ALIGN
    size = max(ALIGN, (size + ALIGN - 1) // ALIGN * ALIGN)
    size = min(size, len(dbuf))
    n = os.preadv(d, [memoryview(dbuf)[:size]], off)
    check(bytes(dbuf[:n]), off, size, "O_DIRECT")

def buffered_read(b, off, size):
    os.posix_fadvise(b, 0, 0, os.POSIX_FADV_DONTNEED)
    got = os.pread(b, size, off)
    check(got, off, size, "buffered")

w, d, b = opened()
step = 0
for step in range(steps):
    op = rng.random()
    size_now = len(model)
    if op < 0.25:
        off = rng.randrange(0, size_now + chunk) if rng.random() < 0.8 else rng.randrange(0, 4 * chunk)
        n = rng.choice([1, 100, 4096, chunk // 2, chunk, chunk + 1000, 3 * chunk])
        data = rng.randbytes(n)
        os.pwrite(w, data, off)
        if off > len(model): model.extend(bytes(off - len(model)))
        model[off:off + n] = data
    elif op < 0.30:
        n = rng.choice([0, rng.randrange(0, max(1, size_now)), size_now + rng.randrange(0, 2 * chunk)])
        os.ftruncate(w, n)
        if n < len(model): del model[n:]
        else: model.extend(bytes(n - len(model)))
    elif op < 0.38:
        os.fsync(w)
    elif op < 0.42:
        close_all([w, d, b])
        w, d, b = opened()
    elif op < 0.43:
        close_all([w, d, b])
        os.unlink(path)
        model = bytearray()
        w, d, b = opened()
    elif op < 0.50:
        # a sequential pass: the read-ahead publishes what comes next
        for off in range(0, len(model) + chunk, 1 << 20):
            direct_read(d, off, 1 << 20)
    elif op < 0.80:
        off = rng.randrange(0, max(1, size_now + chunk))
        direct_read(d, off, rng.choice([4096, 8192, chunk, 1 << 20]))
    else:
        off = rng.randrange(0, max(1, size_now + chunk))
        buffered_read(b, off, rng.choice([1, 4095, chunk, 300000]))
os.fsync(w)
close_all([w, d, b])
# after a remount-free close: the whole file once more, both ways
w, d, b = opened()
for off in range(0, len(model) + chunk, 1 << 20):
    direct_read(d, off, 1 << 20)
buffered_read(b, 0, len(model) + 10)
close_all([w, d, b])
print(len(model))
`;

const READER = String.raw`
import mmap, os, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
buf = mmap.mmap(-1, 1 << 20)
end = time.time() + seconds
reads = 0
while time.time() < end:
    try:
        d = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except FileNotFoundError:
        continue
    try:
        size = os.fstat(d).st_size
        off = 0
        while off < size + 4096:
            n = os.preadv(d, [buf], off)
            if n < 0 or n > len(buf): sys.exit(f"bad read length {n}")
            reads += 1
            if n == 0: break
            off += n
    finally:
        os.close(d)
print(reads)
`;

interface Stats { channel: { fastReads: number; fastReadMisses: number; fileReads: number } }

const scripts = tempDir(t, 'kvfs-test-fastread-py-');
const fuzzPy = join(scripts, 'fuzz.py');
const readerPy = join(scripts, 'reader.py');
writeFileSync(fuzzPy, FUZZ);
writeFileSync(readerPy, READER);

const cases = [
  { store: 'memory:', chunk: 64 << 10, args: [] as string[] },
  { store: 'memory:', chunk: 256 << 10, args: [] },
  // the kernel's writeback cache: writes reach the daemon late, reads only for pages the kernel does not hold
  { store: 'memory:', chunk: 256 << 10, args: ['--writeback-cache'] },
  // LMDB through the blob cache, kept so small (1 MiB: four chunks) that published chunks are evicted all the time
  { store: 'local', chunk: 256 << 10, args: ['--cache-mb', '1'] },
];

for (const { store, chunk, args } of cases) {
  t.test(`fast reads never serve old bytes or sizes (${store}, chunk ${chunk >> 10} KiB${args.length ? ', ' + args.join(' ') : ''})`, async (t) => {
    const dir = tempDir(t, 'kvfs-test-fastread-');
    const url = store === 'local' ? `local:${join(dir, 'volume')}` : store;
    if (store === 'local') expectExit(t, await kvfs(['format', url, '--chunk-size', String(chunk)], { dataDir: dir }), 'format');
    const m = await mountKvfs(t, { driver: 'default', store: url, args: ['--chunk-size', String(chunk), ...args] });
    const files = [0, 1, 2].map((i) => join(m.mnt, `f${i}`));
    // three fuzzers on three files, each with a concurrent O_DIRECT reader on its file
    const runs = files.flatMap((f, i) => [
      run(PYTHON, [fuzzPy, f, String(1000 + i + chunk), '600', String(chunk)], { timeout: 180_000 }),
      run(PYTHON, [readerPy, f, '8'], { timeout: 180_000 }),
    ]);
    const results = await Promise.all(runs);
    results.forEach((r, i) => expectExit(t, r, i % 2 === 0 ? `fuzzer on ${files[i >> 1]}: every read matched the model` : `concurrent reader on ${files[i >> 1]}: no error`));
    const st = (await daemonStats(m.mnt)) as unknown as Stats;
    t.ok(st.channel.fastReads > 0, `reads answered by the reader threads: ${st.channel.fastReads}`);
    t.ok(st.channel.fastReadMisses > 0, `reads passed to the core: ${st.channel.fastReadMisses}`);
    // LMDB: small random reads of chunks not cached publish the chunk's blob file, which the readers read
    if (store === 'local') t.ok(st.channel.fileReads > 0, `reads answered from blob files by the readers: ${st.channel.fileReads}`);
    await m.unmount();
  });
}

t.test('with KVFS_FAST_READS=0 every read goes to the core', async (t) => {
  const m = await mountKvfs(t, { driver: 'default', env: { KVFS_FAST_READS: '0' } });
  const f = join(m.mnt, 'f');
  const r = await run(PYTHON, [fuzzPy, f, '7', '200', String(256 << 10)], { timeout: 120_000 });
  expectExit(t, r, 'every read matched the model');
  const st = (await daemonStats(m.mnt)) as unknown as Stats;
  t.equal(st.channel.fastReads, 0, 'no read was answered by the reader threads');
  await m.unmount();
});

// A close (FLUSH) of a file with nothing uncommitted is answered by the reader threads; one after a write must
// still commit first. Each file: written and closed, read and closed (a clean close), written again and
// closed; then kill -9 of the daemon: every file must hold its second version.
const CLOSES = String.raw`
import os, random, sys
mnt, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(5)
want = {}
for i in range(n):
    p = f"{mnt}/c{i}"
    v1 = rng.randbytes(rng.choice([10, 5000, 300000]))
    with open(p, "wb") as f: f.write(v1)
    with open(p, "rb") as f:
        if f.read() != v1: sys.exit(f"{p}: first version reads back wrong")
    with open(p, "r+b") as f:
        off = rng.randrange(0, len(v1) + 100)
        patch = rng.randbytes(rng.choice([1, 4096, 70000]))
        f.seek(off); f.write(patch)
    v2 = bytearray(v1)
    if off > len(v2): v2.extend(bytes(off - len(v2)))
    v2[off:off + len(patch)] = patch
    want[p] = bytes(v2)
import hashlib, json
print(json.dumps({p: hashlib.sha256(v).hexdigest() for p, v in want.items()}))
`;

t.test('a close after a write commits before it returns, also when earlier closes were answered by the readers', async (t) => {
  const dir = tempDir(t, 'kvfs-test-fastread-');
  const url = `local:${join(dir, 'volume')}`;
  expectExit(t, await kvfs(['format', url], { dataDir: dir }), 'format');
  const m = await mountKvfs(t, { driver: 'default', store: url, dataDir: dir });
  const closesPy = join(scripts, 'closes.py');
  writeFileSync(closesPy, CLOSES);
  const r = await run(PYTHON, [closesPy, m.mnt, '60'], { timeout: 60_000 });
  expectExit(t, r, 'write, read, write again, closing each time');
  const want = JSON.parse(r.stdout) as Record<string, string>;
  const st = (await daemonStats(m.mnt)) as unknown as { channel: { fastFlushes: number } };
  // exactly the 60 closes after reading: the 120 after writing had something to commit
  t.equal(st.channel.fastFlushes, 60, 'the reader threads answered the closes after reading, none after writing');
  await m.kill9();
  expectExit(t, await kvfs(['umount', m.mnt], { dataDir: dir }), 'kvfs umount of the dead mount');
  await m.remount();
  const check = await run(PYTHON, ['-c', `
import hashlib, json, sys
want = json.loads(sys.argv[1])
bad = [p for p, h in want.items() if hashlib.sha256(open(p, "rb").read()).hexdigest() != h]
print(json.dumps(bad))`, JSON.stringify(want)], { timeout: 30_000 });
  expectExit(t, check, 'read back after kill -9 and remount');
  t.same(JSON.parse(check.stdout || '["?"]'), [], 'every file holds its second version');
  await m.unmount();
});
