/**
 * Early writes (native/channel.h, src/fs/fuse/session.ts): a reader thread answers a WRITE as soon as it has
 * queued it, and JavaScript applies it afterwards, in order. What a caller must still get:
 *  1. Every later call about the file sees the write: reads (the fast-read fuzzer, fast-read.test.ts, checks
 *     this for reads answered by the readers and by the core), and fsync: small unaligned writes into chunks
 *     of a committed file, which the core must load before it can apply them (a 1 MiB blob cache, so the loads
 *     reach the store), then fsync, then kill -9 of the daemon: after a remount every byte is the model's.
 *  2. A write that fails after it was acknowledged is not lost silently: a real fault (the file's blob files
 *     deleted from the store underneath, so the load the write needs fails) makes the file's next fsync fail
 *     with EIO, and, after another such write, its close; the daemon logs one line per failure naming the
 *     inode; another file is intact. With KVFS_EARLY_WRITES=0 the same write fails by itself (EIO).
 */
import t from 'tap';
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { expectExit } from '../helpers/assert.js';
import { kvfs, mountKvfs, PYTHON, run, tempDir } from '../helpers/mount.js';
import { daemonStats } from '../../bin/diag.js';

t.setTimeout(180_000);

interface Stats { channel: { earlyWrites: number } }

const SMALL_WRITES = String.raw`
import hashlib, json, os, random, sys
path, seed, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
size = 4 << 20
model = bytearray(rng.randbytes(size))
with open(path, "wb") as f:
    f.write(model)
    f.flush()
    os.fsync(f.fileno())
fd = os.open(path, os.O_RDWR)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
for i in range(n):
    off = rng.randrange(0, size - 300)
    data = rng.randbytes(rng.choice([1, 7, 100, 300]))
    os.pwrite(fd, data, off)
    model[off:off + len(data)] = data
    if i % 50 == 49: os.fsync(fd)
os.fsync(fd)
print(json.dumps({"sha256": hashlib.sha256(model).hexdigest()}))
`;

const SHA = `import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())`;

t.test('an fsync after early writes that needed loads makes them durable (kill -9 after it)', async (t) => {
  const dir = tempDir(t, 'kvfs-test-early-');
  const url = `local:${join(dir, 'volume')}`;
  expectExit(t, await kvfs(['format', url], { dataDir: dir }), 'format');
  const m = await mountKvfs(t, { driver: 'default', store: url, dataDir: dir, args: ['--cache-mb', '1'] });
  const f = join(m.mnt, 'f');
  const r = await run(PYTHON, ['-c', SMALL_WRITES, f, '77', '600'], { timeout: 120_000 });
  expectExit(t, r, '600 unaligned writes of 1 to 300 bytes into a committed 4 MiB file, fsync every 50');
  const want = (JSON.parse(r.stdout || '{}') as { sha256?: string }).sha256;
  const st = (await daemonStats(m.mnt)) as unknown as Stats;
  t.ok(st.channel.earlyWrites >= 600, `the reader threads answered the writes early: ${st.channel.earlyWrites}`);
  await m.kill9();
  expectExit(t, await kvfs(['umount', m.mnt], { dataDir: dir }), 'kvfs umount of the dead mount');
  await m.remount();
  const got = await run(PYTHON, ['-c', SHA, f], { timeout: 30_000 });
  expectExit(t, got, 'read back after kill -9 and remount');
  t.equal(got.stdout.trim(), want, 'the file holds every write fsync covered');
  await m.unmount();
});

const FAULT = String.raw`
import json, os, sys
path = sys.argv[1]
out = {}
fd = os.open(path, os.O_RDWR)
def step(name, fn):
    try:
        fn(); out[name] = "ok"
    except OSError as e:
        out[name] = e.errno
step("write", lambda: os.pwrite(fd, b"x" * 100, 10))
step("fsync", lambda: os.fsync(fd))
step("fsync again", lambda: os.fsync(fd))
step("write again", lambda: os.pwrite(fd, b"y" * 100, 10))
step("close", lambda: os.close(fd))
print(json.dumps(out))
`;

t.test('a write that fails after it was acknowledged is reported by fsync and close, and logged', async (t) => {
  const dir = tempDir(t, 'kvfs-test-early-');
  const store = join(dir, 'volume');
  const url = `local:${store}`;
  expectExit(t, await kvfs(['format', url], { dataDir: dir }), 'format');
  const args = ['--cache-mb', '1'];
  const m = await mountKvfs(t, { driver: 'default', store: url, dataDir: dir, args });
  // f: 1 MiB in blob files; g: 5,000 bytes, a small blob LMDB keeps (lmdb.ts SMALL_BLOB)
  const made = await run(PYTHON, ['-c', `
import hashlib, os, sys
for name, n in (("f", 1 << 20), ("g", 5000)):
    with open(os.path.join(sys.argv[1], name), "wb") as f:
        f.write(os.urandom(n)); f.flush(); os.fsync(f.fileno())
print(hashlib.sha256(open(os.path.join(sys.argv[1], "g"), "rb").read()).hexdigest())`, m.mnt], { timeout: 30_000 });
  expectExit(t, made, 'write f (1 MiB) and g (5,000 bytes)');
  await m.unmount();
  // the fault: every blob file gone (f's chunks), as a disk that lost them would leave the store
  const blobs = join(store, 'blobs');
  let removed = 0;
  for (const sub of readdirSync(blobs)) for (const b of readdirSync(join(blobs, sub))) { rmSync(join(blobs, sub, b)); removed++; }
  t.equal(removed, 4, 'f\'s four blob files deleted from the store');

  await m.remount();
  const r = await run(PYTHON, ['-c', FAULT, join(m.mnt, 'f')], { timeout: 30_000 });
  expectExit(t, r, 'write, fsync, write, close');
  t.same(JSON.parse(r.stdout || '{}'), { write: 'ok', fsync: 5, 'fsync again': 'ok', 'write again': 'ok', close: 5 },
    'the write is answered at once; the fsync after it fails with EIO, once; the close after the next write fails with EIO');
  const lines = m.output().stderr.split('\n').filter((l) => /failed after it was acknowledged/.test(l));
  t.equal(lines.length, 2, 'one log line per failed write', { lines });
  t.match(lines[0] ?? '', /inode \d+ .*errno 5.*next fsync or close reports it.*blob is missing/, 'it names the inode, the errno and the cause');
  const g = await run(PYTHON, ['-c', SHA, join(m.mnt, 'g')], { timeout: 30_000 });
  expectExit(t, g, 'read g');
  t.equal(g.stdout.trim(), made.stdout.trim(), 'g is intact');
  await m.unmount();

  const sync = await mountKvfs(t, { driver: 'default', store: url, dataDir: dir, args, env: { KVFS_EARLY_WRITES: '0' } });
  const r2 = await run(PYTHON, ['-c', FAULT, join(sync.mnt, 'f')], { timeout: 30_000 });
  expectExit(t, r2, 'the same with KVFS_EARLY_WRITES=0');
  t.same(JSON.parse(r2.stdout || '{}'), { write: 5, fsync: 'ok', 'fsync again': 'ok', 'write again': 5, close: 'ok' },
    'with KVFS_EARLY_WRITES=0 each write fails by itself (EIO)');
  const st = (await daemonStats(sync.mnt)) as unknown as Stats;
  t.equal(st.channel.earlyWrites, 0, 'no write was answered early');
  await sync.unmount();
});
