/**
 * POSIX behaviour that only the native driver can carry through FUSE (the libfuse 2 driver cannot pass rename
 * flags or the caller's credentials): negative entries, renameat2 flags, setgid directories and owners of new files, locks
 * between processes, fallocate, SEEK_DATA/SEEK_HOLE, O_DIRECT, copy_file_range. Every call runs in a separate python3 process.
 */
import t from 'tap';
import type { Test } from 'tap';
import { mountKvfs, TEST_USER, ensureUser } from '../helpers/mount.js';
import { py } from '../helpers/pyops.js';
import { daemonStats } from '../../bin/diag.js';

t.setTimeout(120_000);

/** runs a python3 script that prints one JSON value; returns it */
async function pyJson(t: Test, script: string, args: string[], user?: string): Promise<unknown> {
  const r = await py(`import json, os, sys, ctypes, fcntl, errno, time\n${script}`, args, { user, timeout: 30_000 });
  if (r.code !== 0) t.fail('python helper failed', { stderr: r.stderr, stdout: r.stdout });
  return JSON.parse(r.stdout || 'null');
}

const RENAMEAT2 = `
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
def renameat2(a, b, flags):
    r = libc.syscall(316, AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags)
    return 'OK' if r == 0 else errno.errorcode[ctypes.get_errno()]
`;

t.test('native driver: POSIX details the libfuse driver cannot carry', async (t) => {
  const m = await mountKvfs(t, { store: 'memory:', args: ['--allow-other'] });
  const lookups = async () => ((await daemonStats(m.mnt)) as unknown as { session: { byOp: Record<string, number> } }).session.byOp.LOOKUP ?? 0;
  const M = m.mnt;

  t.test('renameat2: RENAME_NOREPLACE and RENAME_EXCHANGE', async (t) => {
    const out = await pyJson(t, `${RENAMEAT2}
M = sys.argv[1]
open(M + '/a', 'w').write('A'); open(M + '/b', 'w').write('B')
res = {}
res['noreplace onto an existing name'] = renameat2(M + '/a', M + '/b', 1)
res['noreplace onto a new name'] = renameat2(M + '/a', M + '/c', 1)
res['exchange'] = renameat2(M + '/c', M + '/b', 2)
res['after exchange c'] = open(M + '/c').read(); res['after exchange b'] = open(M + '/b').read()
res['exchange with a missing name'] = renameat2(M + '/c', M + '/nope', 2)
res['both flags'] = renameat2(M + '/c', M + '/b', 3)
os.mkdir(M + '/d1'); os.mkdir(M + '/d1/in')
res['exchange a file and a directory'] = renameat2(M + '/c', M + '/d1', 2)
res['file where the dir was'] = os.path.isfile(M + '/d1'); res['dir where the file was'] = os.path.isdir(M + '/c/in')
print(json.dumps(res))`, [M]);
    t.same(out, {
      'noreplace onto an existing name': 'EEXIST',
      'noreplace onto a new name': 'OK',
      'exchange': 'OK',
      'after exchange c': 'B',
      'after exchange b': 'A',
      'exchange with a missing name': 'ENOENT',
      'both flags': 'EINVAL',
      'exchange a file and a directory': 'OK',
      'file where the dir was': true,
      'dir where the file was': true,
    });
  });

  t.test('setgid directories and the owners of new files', async (t) => {
    const { uid } = ensureUser();
    const out = await pyJson(t, `
M = sys.argv[1]
os.mkdir(M + '/sg'); os.chown(M + '/sg', 0, 4242); os.chmod(M + '/sg', 0o2777)
open(M + '/sg/f', 'w').close(); os.mkdir(M + '/sg/sub')
st_f = os.stat(M + '/sg/f'); st_d = os.stat(M + '/sg/sub')
print(json.dumps({'file gid': st_f.st_gid, 'subdir gid': st_d.st_gid, 'subdir setgid': bool(st_d.st_mode & 0o2000), 'file setgid': bool(st_f.st_mode & 0o2000)}))`, [M]);
    t.same(out, { 'file gid': 4242, 'subdir gid': 4242, 'subdir setgid': true, 'file setgid': false });
    const mine = await pyJson(t, `
M = sys.argv[1]
open(M + '/sg/users-file', 'w').write('x')
st = os.stat(M + '/sg/users-file')
print(json.dumps({'uid': st.st_uid, 'gid': st.st_gid}))`, [M], TEST_USER);
    t.same(mine, { uid, gid: 4242 }, 'a file another user creates belongs to that user, with the directory\'s group');
  });

  t.test('a write by an unprivileged user clears setuid and setgid (setgid only with group execute)', async (t) => {
    const { uid } = ensureUser();
    await pyJson(t, `
M = sys.argv[1]; uid = int(sys.argv[2])
for name, mode in (('suid', 0o6775), ('sgid-nox', 0o2745), ('rootw', 0o6775)):
    open(M + '/' + name, 'w').write('x'); os.chown(M + '/' + name, uid, -1); os.chmod(M + '/' + name, mode)
os.chmod(M + '/rootw', 0o6777)
print('null')`, [M, String(uid)]);
    const byUser = await pyJson(t, `
M = sys.argv[1]
for name in ('suid', 'sgid-nox'):
    fd = os.open(M + '/' + name, os.O_WRONLY); os.write(fd, b'more'); os.close(fd)
print(json.dumps({n: oct(os.stat(M + '/' + n).st_mode & 0o7777) for n in ('suid', 'sgid-nox')}))`, [M], TEST_USER);
    t.same(byUser, { suid: '0o775', 'sgid-nox': '0o2745' });
    const byRoot = await pyJson(t, `
M = sys.argv[1]
fd = os.open(M + '/rootw', os.O_WRONLY); os.write(fd, b'more'); os.close(fd)
print(json.dumps(oct(os.stat(M + '/rootw').st_mode & 0o7777)))`, [M]);
    t.equal(byRoot, '0o6777', 'root (CAP_FSETID) keeps them');
  });

  t.test('POSIX locks and flock between processes', async (t) => {
    const out = await pyJson(t, `
import subprocess
M = sys.argv[1]
p = M + '/lockfile'
open(p, 'w').write('x' * 100)
fd = os.open(p, os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
other = '''
import fcntl, os, sys, json
fd = os.open(sys.argv[1], os.O_RDWR)
r = {}
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0); r['same range'] = 'OK'
except OSError as e: r['same range'] = 'EAGAIN' if e.errno in (11, 13) else str(e.errno)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50); r['other range'] = 'OK'
except OSError as e: r['other range'] = str(e.errno)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); r['flock'] = 'OK'
except OSError as e: r['flock'] = str(e.errno)
print(json.dumps(r))
'''
r = subprocess.run([sys.executable, '-c', other, p], capture_output=True, text=True, timeout=20)
print(r.stdout.strip() or json.dumps({'err': r.stderr}))`, [M]);
    t.same(out, { 'same range': 'EAGAIN', 'other range': 'OK', flock: 'OK' }, 'a held range lock excludes others; other ranges and flock are free');
  });

  t.test('fallocate, SEEK_DATA and SEEK_HOLE, O_DIRECT', async (t) => {
    const out = await pyJson(t, `
import mmap
M = sys.argv[1]
fd = os.open(M + '/alloc', os.O_RDWR | os.O_CREAT, 0o644)
os.posix_fallocate(fd, 0, 100000)
size = os.fstat(fd).st_size
zeros = os.pread(fd, 100000, 0) == bytes(100000)
os.write(fd, b'data')
res = {'size after fallocate': size, 'reads zeros': zeros,
       'seek data at 10': os.lseek(fd, 10, os.SEEK_DATA), 'seek hole at 10': os.lseek(fd, 10, os.SEEK_HOLE)}
try: os.lseek(fd, 200000, os.SEEK_DATA); res['seek data past the end'] = 'OK'
except OSError as e: res['seek data past the end'] = errno.errorcode[e.errno]
os.close(fd)
buf = mmap.mmap(-1, 1 << 20); buf.write(os.urandom(1 << 20))
fd = os.open(M + '/direct', os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
os.pwritev(fd, [buf], 0)
back = mmap.mmap(-1, 1 << 20)
n = os.preadv(fd, [back], 0)
res['direct round trip'] = n == (1 << 20) and back[:] == buf[:]
print(json.dumps(res))`, [M]);
    t.same(out, {
      'size after fallocate': 100000, 'reads zeros': true, 'seek data at 10': 10, 'seek hole at 10': 100000,
      'seek data past the end': 'ENXIO', 'direct round trip': true,
    });
  });

  t.test('a missing name is remembered by the kernel, and every way of making it shows at once', async (t) => {
    const out = await pyJson(t, `
M = sys.argv[1]
def exists(p):
    try: os.lstat(p); return True
    except FileNotFoundError: return False
res = {}
os.mkdir(M + '/neg')
for name, make in [
    ('open O_CREAT', lambda p: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))),
    ('mkdir', lambda p: os.mkdir(p)),
    ('rename onto it', lambda p: (open(M + '/neg/src', 'w').close(), os.rename(M + '/neg/src', p))),
    ('link', lambda p: (open(M + '/neg/orig', 'w').close(), os.link(M + '/neg/orig', p))),
    ('symlink', lambda p: os.symlink('target', p)),
]:
    p = M + '/neg/' + name.replace(' ', '_')
    before = [exists(p) for _ in range(3)]
    make(p)
    res[name] = [before, exists(p)]
print(json.dumps(res))`, [M]);
    const all = { 'open O_CREAT': 0, mkdir: 0, 'rename onto it': 0, link: 0, symlink: 0 };
    t.same(out, Object.fromEntries(Object.keys(all).map((k) => [k, [[false, false, false], true]])),
      'missing three times, then there at once');
    const before = await lookups();
    await pyJson(t, `
for _ in range(3):
    try: os.lstat(sys.argv[1] + '/neg/never')
    except FileNotFoundError: pass
print(1)`, [M]);
    t.equal(await lookups() - before, 1, 'three stats of a missing name: one LOOKUP reached the daemon');
  });

  t.test('copy_file_range is done inside the daemon, 16 MiB per call', async (t) => {
    const out = await pyJson(t, `
import hashlib, tempfile
M = sys.argv[1]
def err(f):
    try: return f()
    except OSError as e: return errno.errorcode[e.errno]
data = os.urandom((20 << 20) + 12345)
open(M + '/cfr-src', 'wb').write(data)
fi = os.open(M + '/cfr-src', os.O_RDONLY)
fo = os.open(M + '/cfr-dst', os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
res = {'calls': []}
n = 0
while True:
    c = os.copy_file_range(fi, fo, 1 << 30, n, n)
    res['calls'].append(c)
    if c == 0: break
    n += c
res['copy equals the source'] = open(M + '/cfr-dst', 'rb').read() == data
# into the middle of the destination, and past its end (a hole before it)
os.copy_file_range(fi, fo, 1000, 5, 100)
end = len(data) + 4096
os.copy_file_range(fi, fo, 10, 0, end)
back = open(M + '/cfr-dst', 'rb').read()
want = bytearray(data); want[100:1100] = data[5:1005]; want.extend(bytes(4096)); want.extend(data[:10])
res['middle and past the end'] = back == bytes(want)
res['from the end of the source'] = os.copy_file_range(fi, fo, 100, len(data), 0)
res['overlapping ranges of one file'] = err(lambda: os.copy_file_range(fo, fo, 1000, 0, 500))
ro = os.open(M + '/cfr-src', os.O_RDONLY)
res['into a read-only descriptor'] = err(lambda: os.copy_file_range(fi, ro, 10, 0, 0))
# between filesystems of different types the kernel answers EXDEV itself (tools such as cp then copy by hand)
with tempfile.TemporaryFile() as tf:
    res['to another filesystem'] = err(lambda: os.copy_file_range(fi, tf.fileno(), 1 << 20, 0, 0))
print(json.dumps(res))`, [M]);
    const o = out as { calls: number[] };
    t.same(o.calls, [16 << 20, (4 << 20) + 12345, 0], 'the daemon copies 16 MiB per call (the kernel fallback would copy all at once)');
    t.same({ ...(out as object), calls: undefined }, {
      calls: undefined, 'copy equals the source': true, 'middle and past the end': true, 'from the end of the source': 0,
      'overlapping ranges of one file': 'EINVAL', 'into a read-only descriptor': 'EBADF', 'to another filesystem': 'EXDEV',
    });
  });
});

