/**
 * Real mounts with the default driver, kvfs's own channel to /dev/fuse (native/, src/fs/fuse/native-*.ts):
 *  (a) the default driver is the native channel, and its daemon does not load libfuse (/proc/PID/maps), while a
 *      `--driver libfuse` daemon does (so the check is known to see libfuse when it is there);
 *  (b) after kill -9 of the daemon nothing hangs: tools on the mount fail with ENOTCONN in bounded time, also
 *      processes that were inside a request; `kvfs umount` cleans up; a new mount on the same mountpoint works;
 *  (c) requests larger than the channel's inline record (200 bytes of body): names of 255 bytes, xattrs of
 *      64 KiB, 1 MiB and 512 KiB writes, O_DIRECT reads of 1 MiB, round-trip byte for byte;
 *  (d) 16 writers and 8 readers at once through a 4 MiB buffer pool (`--buffer-pool-mb 4`), so requests wait for
 *      buffers: nothing fails, everything completes, checksums match (the pool's stats come from the daemon's
 *      control socket); with that pool, O_DIRECT reads of 512 KiB and 1 MiB (whose replies need the largest
 *      class) complete, on a fresh mount and after rounds of mixed O_DIRECT load (KVFS_TEST_LOAD_ROUNDS, default 6);
 *  (e) the kernel's INTERRUPT: processes SIGKILLed while inside requests do not break the mount.
 *
 * Every tool runs in a child process under a deadline; a tool stuck in the kernel (state D, which no signal
 * ends) is reported with its kernel wait channel, and the daemon is then killed so that the tool is freed and
 * the test ends.
 */
import t from 'tap';
import type { Test } from 'tap';
import { readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { expectExit } from '../helpers/assert.js';
import {
  bash, describe, isMounted, kvfs, mountKvfs, mountsAt, PYTHON, run, start, tempDir,
  type Mounted, type RunResult, type Started,
} from '../helpers/mount.js';
import { daemonStats } from '../../bin/diag.js';

t.setTimeout(110_000);

const MIB = 1 << 20;
const KIB = 1024;
const local = tempDir(t, 'kvfs-test-native-');
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

// ---------------------------------------------------------------------------------------------------------------
// helpers

/** the mapped files of a process (/proc/PID/maps, path column, deduplicated) */
function mappedFiles(pid: number): string[] {
  const out = new Set<string>();
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    const path = line.trim().split(/\s+/).slice(5).join(' ');
    if (path.startsWith('/')) out.add(path);
  }
  return [...out].sort();
}

/** how many fds of a process are open on /dev/fuse */
function fuseDeviceFds(pid: number): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`) === '/dev/fuse') n++;
    } catch {
      /* closed meanwhile */
    }
  }
  return n;
}

/** state, kernel wait channel and kernel stack of every process in a process group (for hang reports) */
function groupState(pgid: number | undefined): string[] {
  if (pgid === undefined) return [];
  const out: string[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(rest[2]) !== pgid) continue;
      const cmd = readFileSync(`/proc/${name}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
      const wchan = readFileSync(`/proc/${name}/wchan`, 'utf8');
      let stack = '';
      try {
        stack = readFileSync(`/proc/${name}/stack`, 'utf8').split('\n').slice(0, 4).join(' < ');
      } catch {
        /* not readable */
      }
      out.push(`pid ${name} state ${rest[0]} wchan ${wchan} cmd ${cmd.slice(0, 120)}${stack ? ` stack ${stack}` : ''}`);
    } catch {
      /* gone */
    }
  }
  return out;
}

interface Bounded {
  results: RunResult[];
  /** tools that were still running at the deadline (each stuck one is reported as a failure) */
  stuck: string[];
}

/**
 * Waits for started tools until a deadline. Tools still running then are reported (state, wait channel) as a
 * failure (with what `diag` resolves to); the daemon is then killed (a process in state D ends only when its FUSE
 * connection does), and the tools are awaited once more.
 */
async function bounded(t: Test, m: Mounted, tools: Started[], ms: number, what: string, diag?: () => Promise<unknown>): Promise<Bounded> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<'deadline'>((r) => (timer = setTimeout(() => r('deadline'), ms)));
  const all = Promise.all(tools.map((s) => s.result));
  const first = await Promise.race([all, deadline]);
  clearTimeout(timer);
  if (first !== 'deadline') return { results: first, stuck: [] };
  const done = new Set<Started>();
  for (const s of tools) void s.result.then(() => done.add(s));
  await sleep(10);
  const stuck = tools.filter((s) => !done.has(s));
  const report = stuck.map((s) => ({ cmd: s.cmd, processes: groupState(s.child.pid) }));
  t.fail(`${what}: ${stuck.length} of ${tools.length} tools still running after ${ms} ms (a hang)`, {
    stuck: report, ...(diag ? { daemon: await diag() } : {}),
  });
  if (m.alive()) {
    t.comment(`${what}: killing the daemon (pid ${m.pid}) to free the stuck tools`);
    await m.kill9().catch(() => undefined);
  }
  for (const s of stuck) s.kill('SIGKILL');
  const late = await Promise.race([all, sleep(15_000).then(() => undefined)]);
  if (!late) t.fail(`${what}: tools still stuck 15 s after the daemon was killed`, { stuck: stuck.map((s) => groupState(s.child.pid)) });
  return { results: late ?? [], stuck: report.map((r) => r.cmd) };
}

/** a python script saved under the test's temp dir (so command lines in messages stay short) */
const scripts = new Map<string, string>();
function script(name: string, text: string): string {
  let path = scripts.get(name);
  if (!path) {
    path = join(local, `${name}.py`);
    writeFileSync(path, text);
    scripts.set(name, path);
  }
  return path;
}

/** runs a python script (argv[1..] = args) and returns the JSON object its last stdout line holds */
async function py(t: Test, m: Mounted, name: string, text: string, args: string[], what: string, ms = 30_000): Promise<Record<string, unknown> | undefined> {
  const s = start(PYTHON, [script(name, text), ...args], { timeout: ms + 10_000 });
  s.end();
  const { results } = await bounded(t, m, [s], ms, what);
  const r = results[0];
  if (!r) return undefined;
  if (!expectExit(t, r, what)) return undefined;
  try {
    return JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as Record<string, unknown>;
  } catch {
    t.fail(`${what}: no JSON result`, { command: describe(r) });
    return undefined;
  }
}

/** the mount answers: a file written through it reads back, and its root lists */
async function stillServes(t: Test, m: Mounted, what: string): Promise<void> {
  t.ok(m.alive(), `${what}: the daemon is alive`, { stderr: m.output().stderr.slice(-4000) });
  const data = randomBytes(300 * KIB + 7);
  const ref = join(local, `serve-${Date.now()}-${Math.random().toString(36).slice(2)}`);
  writeFileSync(ref, data);
  const name = `${m.mnt}/alive-${Date.now()}`;
  const s1 = start('cp', [ref, name], { timeout: 30_000 });
  s1.end();
  const s2 = start('ls', ['-la', m.mnt], { timeout: 30_000 });
  s2.end();
  const { results } = await bounded(t, m, [s1, s2], 15_000, `${what}: cp and ls`);
  if (results.length) {
    expectExit(t, results[0]!, `${what}: cp a file in`);
    expectExit(t, results[1]!, `${what}: ls the root`);
  }
  const c = start('cmp', [ref, name], { timeout: 30_000 });
  c.end();
  const back = await bounded(t, m, [c], 15_000, `${what}: cmp`);
  if (back.results[0]) expectExit(t, back.results[0], `${what}: the file reads back byte for byte`);
}

/** the parts of the native daemon's stats these tests read */
interface DaemonStats {
  channel: { requests: number; inlineRequests: number; poolWaits: number; stocked: number };
  session: { requests: number; inFlight: number; replyFailures: number; parseErrors: number };
  pool: { capacityBytes: number; inUseBytes: number; highWaterBytes: number; waiters: number; totalWaits: number;
    classes: { size: number; count: number; inUse: number; free: number; highWater: number }[] };
}
/** the daemon's stats (over its control socket), or undefined when it does not answer within 2 s */
async function statsOf(m: Mounted): Promise<DaemonStats | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), 2000)));
  const st = daemonStats(m.mnt).then((s) => s as unknown as DaemonStats, () => undefined);
  try {
    return await Promise.race([st, late]);
  } finally {
    clearTimeout(timer);
  }
}

function statusOf(r: RunResult): string {
  return r.timedOut ? 'timed out' : r.code === null ? `signal ${r.signal}` : `exit ${r.code}`;
}

// ---------------------------------------------------------------------------------------------------------------
// (a) which driver, which libraries

t.test('(a) the default driver is the native channel; its daemon does not load libfuse', async (t) => {
  const libfuseRe = /(^|\/)libfuse[^/]*\.so|fuse-native|fuse-shared-library|\/fuse\.node$/;
  const m = await mountKvfs(t, { driver: 'default' });
  const maps = mappedFiles(m.pid);
  t.ok(maps.some((p) => p.endsWith('/kvfs_native.node')), 'the daemon maps kvfs\'s own addon', { maps });
  t.same(maps.filter((p) => libfuseRe.test(p)), [], 'no libfuse.so and no fuse-native .node mapped', { maps });
  const [e] = mountsAt(m.mnt);
  t.equal(e?.fstype, 'fuse.kvfs', 'mounted as fuse.kvfs');
  t.match(e?.superOptions ?? '', /max_read=1048576/, 'with the native driver\'s max_read of 1 MiB', { entry: e });
  t.equal(fuseDeviceFds(m.pid), 2, 'two /dev/fuse fds: the session fd and one clone (2 reader threads by default)');

  const four = await mountKvfs(t, { driver: 'default', args: ['--readers', '4'] });
  t.equal(fuseDeviceFds(four.pid), 4, '--readers 4: four /dev/fuse fds');

  const lf = await mountKvfs(t, { driver: 'libfuse' });
  const lmaps = mappedFiles(lf.pid);
  t.ok(lmaps.some((p) => /(^|\/)libfuse\.so\.2/.test(p)), 'the check works: a --driver libfuse daemon maps libfuse.so.2',
    { maps: lmaps });
  t.ok(lmaps.some((p) => /fuse-native/.test(p)), 'and fuse-native\'s addon', { maps: lmaps });
  t.notMatch(mountsAt(lf.mnt)[0]?.superOptions ?? '', /max_read=1048576/, 'libfuse mounts without the native max_read');
  t.equal(fuseDeviceFds(lf.pid), 1, 'libfuse: one /dev/fuse fd');
});

// ---------------------------------------------------------------------------------------------------------------
// (b) kill -9

/** a process that keeps writing 1 MiB blocks and reading them back; prints "running" once it has started */
const BUSY = String.raw`
import os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
block = os.urandom(1 << 20)
i = 0
while True:
    try:
        os.pwrite(fd, block, (i % 8) << 20)
        os.pread(fd, 1 << 20, ((i + 3) % 8) << 20)
        os.fstat(fd)
    except OSError as e:
        print('error', os.strerror(e.errno), flush=True)
        sys.exit(3)
    i += 1
    if i == 4:
        print('running', flush=True)
`;

t.test('(b) after kill -9 of the daemon nothing hangs; kvfs umount cleans up; the mountpoint mounts again', async (t) => {
  const m = await mountKvfs(t, { driver: 'default' });
  const mnt = m.mnt;
  expectExit(t, await bash('mkdir -p "$1/d" && echo hello > "$1/d/f"', [mnt]), 'a file on the mount');

  // two processes busy inside the mount when the daemon dies
  const busy = [start(PYTHON, [script('busy', BUSY), `${mnt}/busy1`], { timeout: 60_000 }), start(PYTHON, [script('busy', BUSY), `${mnt}/d/busy2`], { timeout: 60_000 })];
  busy.forEach((b) => b.end());
  await Promise.all(busy.map((b) => b.waitFor(/^running$/, 15_000)));
  const ex = await m.kill9();
  t.equal(ex.signal, 'SIGKILL', 'the daemon died of SIGKILL');
  const t0 = Date.now();
  const { results: busyResults } = await bounded(t, m, busy, 10_000, 'processes busy in the mount when the daemon died');
  t.ok(Date.now() - t0 < 10_000, `they ended within 10 s (${Date.now() - t0} ms)`);
  for (const r of busyResults) {
    t.equal(r.code, 3, `busy process failed with an error, not a hang: ${statusOf(r)}`, { command: describe(r) });
    t.match(r.stdout, /error (Transport endpoint is not connected|Software caused connection abort)/, 'ENOTCONN or ECONNABORTED',
      { command: describe(r) });
  }
  t.ok(isMounted(mnt), 'the dead mount is still in the mount table');

  await sleep(1100); // let cached attributes (1 s) expire, so stat must ask the (dead) daemon
  for (const [cmd, args] of [['stat', [mnt]], ['stat', [`${mnt}/d/f`]], ['ls', ['-la', mnt]], ['cat', [`${mnt}/d/f`]], ['touch', [`${mnt}/new`]]] as const) {
    const s = start(cmd, args, { timeout: 20_000 });
    s.end();
    const began = Date.now();
    const { results } = await bounded(t, m, [s], 5_000, `${cmd} on the dead mount`);
    const r = results[0];
    if (!r) continue;
    const took = Date.now() - began;
    t.ok(r.code !== 0 && !r.timedOut, `${cmd} ${args.join(' ')} fails (${statusOf(r)}) in ${took} ms`, { command: describe(r) });
    t.match(r.stderr, /Transport endpoint is not connected/, `${cmd}: ENOTCONN`, { command: describe(r) });
    t.ok(took < 3_000, `${cmd}: promptly (${took} ms < 3000)`);
  }

  const um = await kvfs(['umount', mnt], { dataDir: m.dataDir, timeout: 20_000 });
  expectExit(t, um, 'kvfs umount of the dead mount');
  t.notOk(isMounted(mnt), 'the dead mount is gone');
  const empty = await run('ls', ['-A', mnt]);
  expectExit(t, empty, 'the mountpoint is a plain directory again');
  t.equal(empty.stdout, '', 'and empty');

  await m.remount();
  t.ok(isMounted(mnt), 'a new mount on the same mountpoint');
  t.equal(mountsAt(mnt).length, 1, 'exactly one mount there');
  await stillServes(t, m, 'the new mount');
});

// ---------------------------------------------------------------------------------------------------------------
// (c) requests larger than the inline record

const LONG_NAMES = String.raw`
import errno, json, os, sys
m = sys.argv[1]
res = {}
def attempt(key, fn):
    try:
        v = fn()
        res[key] = 'OK' if v is None else v
    except OSError as e:
        res[key] = errno.errorcode.get(e.errno, str(e.errno))

names = {
    'ascii255': 'a' * 251 + '.txt',
    'utf8_255': '\u20ac' * 85,                 # 85 x 3 bytes
    'mixed255': 'z' * 252 + '\u00e9' + 'q',    # 252 + 2 + 1 bytes
    'ascii254': 'b' * 254,
}
for k, n in names.items():
    assert len(n.encode()) in (254, 255), (k, len(n.encode()))
res['namemax'] = os.statvfs(m).f_namemax
d = os.path.join(m, 'L' * 255)
attempt('mkdir_long_dir', lambda: os.mkdir(d))
for k, n in names.items():
    p = os.path.join(d, n)
    body = (n * 3).encode()
    def create(p=p, body=body):
        with open(p, 'wb') as f:
            f.write(body)
    attempt(k + ':create', create)
    attempt(k + ':stat_size', lambda p=p: os.stat(p).st_size == len(body) or 'wrong size')
    attempt(k + ':read', lambda p=p, body=body: open(p, 'rb').read() == body or 'wrong content')
    attempt(k + ':listed', lambda n=n: n in os.listdir(d) or 'not listed')
    other = n[:-1] + 'R' if len(n.encode()) == 255 and n[-1].isascii() else 'r' * 255
    attempt(k + ':rename_long_to_long', lambda p=p, other=other: os.rename(p, os.path.join(d, other)))
    attempt(k + ':rename_back', lambda p=p, other=other: os.rename(os.path.join(d, other), p))
    attempt(k + ':link', lambda p=p: os.link(p, os.path.join(d, 'h' * 255)))
    attempt(k + ':link_nlink', lambda p=p: os.stat(p).st_nlink)
    attempt(k + ':unlink_link', lambda: os.unlink(os.path.join(d, 'h' * 255)))
    attempt(k + ':setxattr_on_it', lambda p=p: os.setxattr(p, 'user.' + 'x' * 250, b'v' * 3000))
    attempt(k + ':getxattr_on_it', lambda p=p: os.getxattr(p, 'user.' + 'x' * 250) == b'v' * 3000 or 'wrong value')
target = '/'.join(['t' * 250] * 16)  # 4015 bytes
attempt('symlink_long_name_long_target', lambda: os.symlink(target, os.path.join(d, 's' * 255)))
attempt('readlink_long_target', lambda: os.readlink(os.path.join(d, 's' * 255)) == target or 'wrong target')
attempt('subdir_long', lambda: os.mkdir(os.path.join(d, 'S' * 255)))
attempt('file_in_subdir_long', lambda: open(os.path.join(d, 'S' * 255, 'F' * 255), 'wb').close())
attempt('stat_deep', lambda: os.stat(os.path.join(d, 'S' * 255, 'F' * 255)).st_size)
# many long names: directory listings of many pages
many = [('%03d' % i) + 'n' * 252 for i in range(300)]
os.mkdir(os.path.join(m, 'many'))
for n in many:
    open(os.path.join(m, 'many', n), 'wb').close()
attempt('listdir_300_long', lambda: sorted(os.listdir(os.path.join(m, 'many'))) == many or 'listing differs')
attempt('name256_create', lambda: open(os.path.join(d, 'c' * 256), 'wb').close())
attempt('name256_mkdir', lambda: os.mkdir(os.path.join(d, 'c' * 256)))
print(json.dumps(res))
`;

const XATTRS = String.raw`
import errno, json, os, sys, hashlib
p = sys.argv[1]
res = {}
open(p, 'wb').close()
big = os.urandom(65536)
os.setxattr(p, 'user.big', big)
got = os.getxattr(p, 'user.big')
res['size_64k'] = len(got)
res['same_64k'] = got == big
mid = os.urandom(5000)
os.setxattr(p, 'user.mid', mid)
res['same_5000'] = os.getxattr(p, 'user.mid') == mid
big2 = os.urandom(65536)
os.setxattr(p, 'user.big', big2, os.XATTR_REPLACE)
res['replaced_64k'] = os.getxattr(p, 'user.big') == big2
names = ['user.%03d.' % i + 'k' * 240 for i in range(40)]  # 40 names of 249 bytes: a list of about 10 KiB
for n in names:
    os.setxattr(p, n, n.encode())
listed = os.listxattr(p)
res['listed_all'] = sorted(n for n in listed if n.startswith('user.0')) == sorted(names)
res['values_ok'] = all(os.getxattr(p, n) == n.encode() for n in names)
try:
    os.setxattr(p, 'user.toolong', b'x' * 65537)
    res['over_64k'] = 'OK'
except OSError as e:
    res['over_64k'] = errno.errorcode[e.errno]
print(json.dumps(res))
`;

/** writes through a mix of paths into one 8 MiB file, keeping a model; then reads back several ways */
const BIG_IO = String.raw`
import json, mmap, os, random, sys, hashlib
p = sys.argv[1]
rnd = random.Random(int(sys.argv[2]))
SIZE = 8 << 20
model = bytearray(SIZE)
res = {}
# 1. buffered: 1 MiB writes (the kernel cuts them to max_write)
fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(8):
    b = rnd.randbytes(1 << 20)
    assert os.write(fd, b) == len(b)
    model[i << 20:(i + 1) << 20] = b
# 2. buffered: 512 KiB pwrites at unaligned offsets
for off in (3 * (1 << 20) + 17, 4093, 6 * (1 << 20) + 100000):
    b = rnd.randbytes(512 << 10)
    assert os.pwrite(fd, b, off) == len(b)
    model[off:off + len(b)] = b
os.fsync(fd)
os.close(fd)
# 3. O_DIRECT: 1 MiB and 512 KiB aligned writes from page-aligned memory
fd = os.open(p, os.O_RDWR | os.O_DIRECT)
for off, n in ((2 << 20, 1 << 20), (5 << 20, 1 << 20), (7 << 20, 512 << 10), ((7 << 20) + (512 << 10), 512 << 10)):
    buf = mmap.mmap(-1, n)
    b = rnd.randbytes(n)
    buf[:] = b
    assert os.pwritev(fd, [buf], off) == n
    model[off:off + n] = b
os.fsync(fd)
os.close(fd)
want = hashlib.sha256(model).hexdigest()
res['want'] = want
# read back: buffered whole file
with open(p, 'rb') as f:
    got = f.read()
res['buffered_same'] = got == model
res['size'] = len(got)
# read back: O_DIRECT, 1 MiB requests
def odirect(bs):
    fd = os.open(p, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, bs)
    out = bytearray()
    while True:
        n = os.preadv(fd, [buf], len(out))
        if n <= 0:
            break
        out += buf[:n]
    os.close(fd)
    return out
res['odirect_1m_same'] = odirect(1 << 20) == model
res['odirect_512k_same'] = odirect(512 << 10) == model
# O_DIRECT 1 MiB reads at offsets that are not multiples of 1 MiB, and a read across EOF
fd = os.open(p, os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 20)
ok = True
for off in (4096, (3 << 20) + 8192, SIZE - (1 << 20)):
    n = os.preadv(fd, [buf], off)
    ok = ok and n == (1 << 20) and buf[:n] == model[off:off + n]
n = os.preadv(fd, [buf], SIZE - 4096)
res['odirect_offsets_same'] = ok
res['odirect_short_at_eof'] = n == 4096 and buf[:n] == model[SIZE - 4096:]
os.close(fd)
first = next((i for i in range(min(len(got), SIZE)) if got[i] != model[i]), None) if got != model else None
res['first_difference'] = first
print(json.dumps(res))
`;

t.test('(c) requests larger than the inline record round-trip', async (t) => {
  const m = await mountKvfs(t, { driver: 'default' });

  t.test('names of 255 bytes in every request that carries names', async (t) => {
    const r = await py(t, m, 'long-names', LONG_NAMES, [m.mnt], 'long names');
    if (!r) return;
    t.equal(r.namemax, 255, 'statvfs: f_namemax 255');
    for (const [k, v] of Object.entries(r)) {
      if (k === 'namemax' || k.startsWith('name256')) continue;
      if (k.endsWith(':link_nlink')) t.equal(v, 2, `${k}: 2 links`);
      else if (k === 'stat_deep') t.equal(v, 0, k);
      else t.ok(v === true || v === 'OK', k, { got: v });
    }
    t.equal(r.name256_create, 'ENAMETOOLONG', 'a 256-byte name: ENAMETOOLONG (create)');
    t.equal(r.name256_mkdir, 'ENAMETOOLONG', 'a 256-byte name: ENAMETOOLONG (mkdir)');
  });

  t.test('xattr values of 64 KiB, a listxattr of 10 KiB', async (t) => {
    const r = await py(t, m, 'xattrs', XATTRS, [`${m.mnt}/xattrs`], 'xattrs');
    if (!r) return;
    t.equal(r.size_64k, 65536, '64 KiB value: size');
    t.equal(r.same_64k, true, '64 KiB value: same bytes');
    t.equal(r.same_5000, true, '5000-byte value');
    t.equal(r.replaced_64k, true, 'XATTR_REPLACE with another 64 KiB value');
    t.equal(r.listed_all, true, 'listxattr lists 40 names of 249 bytes');
    t.equal(r.values_ok, true, 'and each reads back');
    t.equal(r.over_64k, 'E2BIG', 'a value above 64 KiB: E2BIG');
  });

  t.test('1 MiB and 512 KiB writes (buffered and O_DIRECT); O_DIRECT reads of 1 MiB', async (t) => {
    const r = await py(t, m, 'big-io', BIG_IO, [`${m.mnt}/big`, '7'], 'big writes and reads', 45_000);
    if (!r) return;
    t.equal(r.size, 8 * MIB, 'size');
    t.equal(r.buffered_same, true, 'buffered read: same bytes', { first_difference: r.first_difference });
    t.equal(r.odirect_1m_same, true, 'O_DIRECT 1 MiB reads: same bytes');
    t.equal(r.odirect_512k_same, true, 'O_DIRECT 512 KiB reads: same bytes');
    t.equal(r.odirect_offsets_same, true, 'O_DIRECT 1 MiB reads at unaligned-to-1-MiB offsets');
    t.equal(r.odirect_short_at_eof, true, 'an O_DIRECT read across EOF returns what is there');
    const sum = await run('sha256sum', [`${m.mnt}/big`], { timeout: 20_000 });
    expectExit(t, sum, 'sha256sum');
    t.equal(sum.stdout.split(' ')[0], r.want, 'sha256sum (another process, through the page cache) agrees');
    const dd = await bash('dd if="$1" bs=1M iflag=direct status=none | sha256sum', [`${m.mnt}/big`], { timeout: 20_000 });
    expectExit(t, dd, 'dd iflag=direct bs=1M');
    t.equal(dd.stdout.split(' ')[0], r.want, 'dd bs=1M iflag=direct agrees');
  });

  t.test('the mount still serves', async (t) => stillServes(t, m, 'after large requests'));
});

// ---------------------------------------------------------------------------------------------------------------
// (d) concurrency through a small pool

/** writes argv[3] MiB of seeded data into argv[1] with mixed request sizes; O_DIRECT when argv[4] == "direct" */
const WRITER = String.raw`
import hashlib, mmap, os, random, sys
p, seed, mib, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rnd = random.Random(seed)
data = rnd.randbytes(mib << 20)
if mode == 'direct':
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    off = 0
    while off < len(data):
        n = min(rnd.choice([1 << 20, 512 << 10, 256 << 10, 4096]), len(data) - off)
        buf = mmap.mmap(-1, n)
        buf[:] = data[off:off + n]
        assert os.pwritev(fd, [buf], off) == n
        off += n
else:
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    off = 0
    while off < len(data):
        n = min(rnd.choice([1 << 20, 512 << 10, 200 << 10, 4096, 100]), len(data) - off)
        assert os.write(fd, data[off:off + n]) == n
        off += n
os.fsync(fd)
os.close(fd)
print(hashlib.sha256(data).hexdigest())
`;

/** reads argv[1] whole in argv[2]-byte reads (O_DIRECT when argv[3] == "direct") and prints its sha256 */
const READER = String.raw`
import hashlib, mmap, os, sys
p, bs, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
h = hashlib.sha256()
fd = os.open(p, os.O_RDONLY | (os.O_DIRECT if mode == 'direct' else 0))
buf = mmap.mmap(-1, bs)
off = 0
while True:
    n = os.preadv(fd, [buf], off)
    if n <= 0:
        break
    h.update(buf[:n])
    off += n
os.close(fd)
print(h.hexdigest())
`;

t.test('(d) 16 writers and 8 readers through a 4 MiB buffer pool: nothing fails, everything completes', async (t) => {
  const m = await mountKvfs(t, { driver: 'default', args: ['--buffer-pool-mb', '4'] });
  const shared = randomBytes(24 * MIB);
  const src = join(local, 'shared');
  writeFileSync(src, shared);
  const want = sha256(shared);
  expectExit(t, await run('cp', [src, `${m.mnt}/shared`], { timeout: 30_000 }), 'the shared file, 24 MiB');

  const writers = Array.from({ length: 16 }, (_, i) =>
    start(PYTHON, [script('writer', WRITER), `${m.mnt}/w${i}`, String(1000 + i), '6', i % 2 ? 'direct' : 'buffered'], { timeout: 90_000 }));
  // O_DIRECT reads of up to 256 KiB (reads of more take the largest class; see the next test), and buffered ones
  const readerArgs: [number, string][] = [[256 * KIB, 'direct'], [256 * KIB, 'direct'], [128 * KIB, 'direct'],
    [64 * KIB, 'direct'], [4 * KIB, 'direct'], [MIB, 'buffered'], [128 * KIB, 'buffered'], [4 * KIB, 'buffered']];
  const readers = readerArgs.map(([bs, mode]) =>
    start(PYTHON, [script('reader', READER), `${m.mnt}/shared`, String(bs), mode], { timeout: 90_000 }));
  for (const s of [...writers, ...readers]) s.end();
  const began = Date.now();
  // sample the pool while the load runs: in-use bytes never above the capacity
  const samples: DaemonStats[] = [];
  let sampling = true;
  const sampler = (async () => {
    for (; sampling; await sleep(50)) {
      const st = await statsOf(m);
      if (st) samples.push(st);
    }
  })();
  const { results } = await bounded(t, m, [...writers, ...readers], 60_000, '16 writers and 8 readers', () => statsOf(m));
  sampling = false;
  await sampler;
  t.comment(`24 tools finished in ${Date.now() - began} ms`);
  // the kernel sends a RELEASE after the tools' last closes in the background: let those be answered before
  // looking at what is left in flight
  await sleep(300);
  const st = await statsOf(m);
  t.ok(st, `the daemon's stats are readable`);
  if (st) {
    t.ok(st.pool.capacityBytes <= 4 * MIB, `the pool holds at most 4 MiB (${st.pool.capacityBytes})`);
    t.ok(st.pool.highWaterBytes <= st.pool.capacityBytes, `pool high-water ${st.pool.highWaterBytes} <= capacity`);
    t.ok(samples.length > 0 && samples.every((x) => x.pool.inUseBytes <= x.pool.capacityBytes),
      `in-use bytes <= capacity in all ${samples.length} samples`);
    t.ok(st.channel.poolWaits + st.pool.totalWaits > 0,
      `requests waited for buffers (readers waited ${st.channel.poolWaits} times, pool waits ${st.pool.totalWaits})`, { stats: st });
    t.ok(st.channel.requests > st.channel.inlineRequests, 'requests with bodies in pool buffers were served');
    t.equal(st.session.replyFailures, 0, 'no reply failed or timed out');
    t.equal(st.session.parseErrors, 0, 'no request failed to parse');
    t.equal(st.session.inFlight, 0, 'nothing left in flight');
    t.equal(st.pool.waiters, 0, 'no one waits for a buffer at the end');
  }
  if (results.length !== 24) return;
  const ws = results.slice(0, 16);
  const rs = results.slice(16);
  ws.forEach((r, i) => expectExit(t, r, `writer ${i} (${i % 2 ? 'O_DIRECT' : 'buffered'})`));
  rs.forEach((r, i) => {
    if (expectExit(t, r, `reader ${i} (${readerArgs[i]![1]}, ${readerArgs[i]![0]} B)`)) {
      t.equal(r.stdout.trim(), want, `reader ${i}: checksum of the shared file`);
    }
  });
  const sums = await run('sha256sum', writers.map((_, i) => `${m.mnt}/w${i}`), { timeout: 30_000 });
  expectExit(t, sums, 'sha256sum of the 16 written files');
  const got = sums.stdout.trim().split('\n').map((l) => l.split(' ')[0]);
  ws.forEach((r, i) => t.equal(got[i], r.stdout.trim(), `file w${i}: what the writer wrote`));
  t.notMatch(m.output().stderr, /failed|could not|error/i, 'the daemon logged no errors', { stderr: m.output().stderr });
  await stillServes(t, m, 'after the concurrent load');
});

/** for argv[4] seconds: O_DIRECT reads of argv[3] bytes of argv[1] ("r"), or O_DIRECT writes of argv[3] bytes ("w") */
const DIRECT_LOOP = String.raw`
import mmap, os, sys, time
p, role, n, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
end = time.time() + secs
buf = mmap.mmap(-1, n)
k = 0
if role == 'r':
    fd = os.open(p, os.O_RDONLY | os.O_DIRECT)
    off = 0
    while time.time() < end:
        got = os.preadv(fd, [buf], off)
        off = 0 if got <= 0 else off + got
        k += 1
else:
    buf[:] = os.urandom(n)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    while time.time() < end:
        os.pwritev(fd, [buf], (k % 16) * n)
        k += 1
print(k)
`;

/**
 * With --buffer-pool-mb 4 the largest class (1 MiB + 4 KiB) has 2 buffers; a READ of more than 256 KiB needs
 * one of them for its reply, so the readers' stock must leave one free. Mounts with a 4 MiB pool and a 4 MiB
 * file `f`; readAll() reads it with O_DIRECT in 256 KiB, 512 KiB and 1 MiB requests, each under a deadline.
 */
async function smallPoolMount(t: Test, name: string) {
  const m = await mountKvfs(t, { driver: 'default', args: ['--buffer-pool-mb', '4'] });
  const data = randomBytes(4 * MIB);
  const src = join(local, `small-pool-${name}.src`);
  writeFileSync(src, data);
  expectExit(t, await run('cp', [src, `${m.mnt}/f`], { timeout: 30_000 }), 'a 4 MiB file');
  const want = sha256(data);
  const readAll = async (what: string) => {
    for (const bs of [256 * KIB, 512 * KIB, MIB]) {
      if (!m.alive()) return;
      const s = start(PYTHON, [script('reader', READER), `${m.mnt}/f`, String(bs), 'direct'], { timeout: 60_000 });
      s.end();
      const { results, stuck } = await bounded(t, m, [s], 10_000, `${what}: one O_DIRECT reader, ${bs >> 10} KiB reads, 4 MiB pool`,
        () => statsOf(m));
      const r = results[0];
      if (r && !stuck.length && expectExit(t, r, `${what}: O_DIRECT ${bs >> 10} KiB reads`)) {
        t.equal(r.stdout.trim(), want, `${what}: O_DIRECT ${bs >> 10} KiB reads: checksum`);
      }
    }
  };
  return { m, readAll };
}

t.test('(d) with a 4 MiB pool, O_DIRECT reads of 512 KiB and 1 MiB complete', async (t) => {
  const { readAll } = await smallPoolMount(t, 'fresh');
  await readAll('on a fresh mount');
});

t.test('(d) with a 4 MiB pool, O_DIRECT reads of 512 KiB and 1 MiB complete after a mixed O_DIRECT load', async (t) => {
  const { m, readAll } = await smallPoolMount(t, 'mixed');

  // A mixed load: 256 KiB O_DIRECT reads hold the 256 KiB class, while 200 KiB O_DIRECT writes make the readers'
  // stock ask the pool for 256 KiB buffers, which it serves from the larger class when the 256 KiB one is empty.
  // Whether the stock ends up holding every largest-class buffer depends on timing: up to `rounds` rounds of load,
  // until the stats show it (then the reads below must still complete).
  const rounds = Number(process.env.KVFS_TEST_LOAD_ROUNDS ?? 6);
  for (let round = 1; round <= rounds && m.alive(); round++) {
    const load = [
      ...Array.from({ length: 8 }, () => start(PYTHON, [script('direct-loop', DIRECT_LOOP), `${m.mnt}/f`, 'r', String(256 * KIB), '3'], { timeout: 60_000 })),
      ...Array.from({ length: 4 }, (_, i) => start(PYTHON, [script('direct-loop', DIRECT_LOOP), `${m.mnt}/w${i}`, 'w', String(200 * KIB), '3'], { timeout: 60_000 })),
    ];
    load.forEach((s) => s.end());
    const { results } = await bounded(t, m, load, 20_000, `round ${round} of the mixed O_DIRECT load`, () => statsOf(m));
    if (!results.every((r, i) => expectExit(t, r, `round ${round}: load ${i < 8 ? 'reader' : 'writer'} ${i}`))) break;
    // as above: RELEASEs of the last closes may still be on their way
    await sleep(300);
    const st = await statsOf(m);
    const big = st?.pool.classes[st.pool.classes.length - 1];
    t.comment(`after round ${round}: largest class ${big ? `free ${big.free} of ${big.count}` : '?'}, stocked ${st?.channel.stocked}, in flight ${st?.session.inFlight}`);
    if (st && big && st.session.inFlight === 0 && big.free === 0) {
      t.fail(`after round ${round}, with nothing in flight, no largest-class buffer is free for READ replies: the readers' stock holds all ${big.count}`,
        { stats: st });
      break;
    }
  }
  await readAll('after a mixed load');
});

// ---------------------------------------------------------------------------------------------------------------
// (e) INTERRUPT

/** keeps rewriting 1 MiB blocks of a 16 MiB file, each block one repeated byte (the pass number) */
const REWRITER = String.raw`
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
i = 0
while True:
    os.pwrite(fd, bytes([i % 251 + 1]) * (1 << 20), (i % 16) << 20)
    i += 1
    if i == 2:
        print('running', flush=True)
`;

t.test('(e) processes SIGKILLed inside requests (INTERRUPT) do not break the mount', async (t) => {
  // Every READ goes to the session here (KVFS_FAST_READS=0): READs the reader threads answer themselves take
  // microseconds and have nothing to interrupt, and they would let cat finish before it is killed.
  const m = await mountKvfs(t, { driver: 'default', env: { KVFS_FAST_READS: '0' } });
  const big = randomBytes(48 * MIB);
  const src = join(local, 'big');
  writeFileSync(src, big);
  const want = sha256(big);
  expectExit(t, await run('cp', [src, `${m.mnt}/big`], { timeout: 60_000 }), 'a 48 MiB file');

  t.test('cat of a large file, killed mid-way', async (t) => {
    let killedMidway = 0;
    for (let i = 0; i < 6; i++) {
      // a fresh copy each round, written with O_DIRECT so that none of it is in the page cache: cat's reads
      // reach the daemon
      const name = `${m.mnt}/copy${i}`;
      expectExit(t, await run('dd', [`if=${src}`, `of=${name}`, 'bs=1M', 'oflag=direct', 'status=none'], { timeout: 60_000 }),
        `copy ${i} (dd oflag=direct)`);
      const cat = start('sh', ['-c', 'exec cat "$1" > /dev/null', 'sh', name], { timeout: 60_000 });
      cat.end();
      await sleep(2 + i * 4);
      cat.kill('SIGKILL');
      const { results } = await bounded(t, m, [cat], 10_000, `cat killed after ${2 + i * 4} ms`);
      const r = results[0];
      if (r?.signal === 'SIGKILL') killedMidway++;
      if (!m.alive()) break;
      expectExit(t, await run('rm', [name]), `remove copy ${i}`);
    }
    t.ok(killedMidway > 0, `at least one cat was killed before it finished (${killedMidway} of 6)`);
    t.ok(m.alive(), 'the daemon is alive', { stderr: m.output().stderr });
    const sum = await run('sha256sum', [`${m.mnt}/big`], { timeout: 30_000 });
    expectExit(t, sum, 'sha256sum of the large file');
    t.equal(sum.stdout.split(' ')[0], want, 'the large file reads back whole and right');
    await stillServes(t, m, 'after the killed cats');
  });

  t.test('a writer killed inside a WRITE', async (t) => {
    const name = `${m.mnt}/rewrite`;
    expectExit(t, await bash('head -c 16M /dev/zero > "$1"', [name], { timeout: 30_000 }), 'a 16 MiB file');
    for (let i = 0; i < 4; i++) {
      const w = start(PYTHON, [script('rewriter', REWRITER), name], { timeout: 60_000 });
      w.end();
      await w.waitFor(/^running$/, 15_000).catch((e: Error) => t.fail(e.message));
      await sleep(50 + i * 40);
      w.kill('SIGKILL');
      const { results } = await bounded(t, m, [w], 10_000, `writer killed (round ${i})`);
      t.equal(results[0]?.signal, 'SIGKILL', `round ${i}: the writer died of SIGKILL`);
      if (!m.alive()) break;
    }
    t.ok(m.alive(), 'the daemon is alive', { stderr: m.output().stderr });
    // every 4 KiB page holds one byte value: a WRITE is applied whole or not at all, page by page
    const check = await run(PYTHON, [script('pages', String.raw`
import json, sys
d = open(sys.argv[1], 'rb').read()
bad = [i for i in range(0, len(d), 4096) if d[i:i + 4096] != d[i:i + 1] * 4096]
print(json.dumps({'size': len(d), 'mixed_pages': len(bad), 'first': bad[:5]}))`), name], { timeout: 30_000 });
    expectExit(t, check, 'read the rewritten file');
    if (check.code === 0) {
      const r = JSON.parse(check.stdout) as { size: number; mixed_pages: number };
      t.equal(r.size, 16 * MIB, 'its size is unchanged');
      t.equal(r.mixed_pages, 0, 'no page mixes two writes', { r });
    }
    await stillServes(t, m, 'after the killed writers');
  });
});
