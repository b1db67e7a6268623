/**
 * Scripted syscalls from a separate python3 process, with the errno of each outcome.
 *
 * `pyOps(ops)` runs a list of operations in one python process (optionally as another user) and returns, per
 * operation, either { ok: true, value } or { ok: false, errno: 'ENOENT', message }. Operations are arrays:
 *   ['open', path, ['O_RDONLY', ...], mode?]     open and close
 *   ['read', path]                               whole file, as latin-1 text
 *   ['write', path, ['O_WRONLY', ...], text]     open (mode 0644), write, close
 *   ['stat' | 'lstat', path]                     { ino, mode, nlink, uid, gid, size, mtime_ns, atime_ns }
 *   ['listdir', path]                            sorted names
 *   ['readlink', path]
 *   ['mkdir' | 'rmdir' | 'unlink' | 'rename' | 'link' | 'symlink' | 'chmod' | 'chown' | 'truncate', ...args]
 *   ['setxattr', path, name, text, flags?]       flags: 'XATTR_CREATE' | 'XATTR_REPLACE'
 *   ['getxattr', path, name] | ['listxattr', path] | ['removexattr', path, name]
 *   ['opendir_fd_read', path]                    open a directory O_RDONLY and read(2) it (EISDIR expected)
 * `code(result)` is 'OK' or the errno name, handy for t.equal.
 */
import { PYTHON, run, describe, type RunOptions } from './run.js';

export type PyOp = [string, ...unknown[]];
export type PyResult = { ok: true; value: unknown } | { ok: false; errno: string; message: string };

/** python helpers shared by the scripts of test/helpers (fl: open flags by name; st: a stat as a dict) */
export const PY_HELPERS = String.raw`
def fl(names):
    f = 0
    for n in names:
        f |= getattr(os, n)
    return f

def st(s):
    return {'ino': s.st_ino, 'mode': s.st_mode, 'nlink': s.st_nlink, 'uid': s.st_uid, 'gid': s.st_gid,
            'size': s.st_size, 'mtime_ns': s.st_mtime_ns, 'atime_ns': s.st_atime_ns}
`;

const SCRIPT = String.raw`
import errno, json, os, sys

${PY_HELPERS}
def do(op):
    k, a = op[0], op[1:]
    if k == 'open':
        fd = os.open(a[0], fl(a[1]), a[2] if len(a) > 2 else 0o644)
        os.close(fd)
        return None
    if k == 'read':
        with open(a[0], 'rb') as f:
            return f.read().decode('latin-1')
    if k == 'write':
        fd = os.open(a[0], fl(a[1]), 0o644)
        try:
            os.write(fd, a[2].encode('latin-1'))
        finally:
            os.close(fd)
        return None
    if k in ('stat', 'lstat'):
        return st(getattr(os, k)(a[0]))
    if k == 'listdir':
        return sorted(os.listdir(a[0]))
    if k == 'readlink':
        return os.readlink(a[0])
    if k in ('mkdir', 'rmdir', 'unlink', 'rename', 'link', 'symlink', 'chmod', 'chown', 'truncate'):
        getattr(os, k)(*a)
        return None
    if k == 'setxattr':
        os.setxattr(a[0], a[1], a[2].encode('latin-1'), getattr(os, a[3]) if len(a) > 3 else 0)
        return None
    if k == 'getxattr':
        return os.getxattr(a[0], a[1]).decode('latin-1')
    if k == 'listxattr':
        return sorted(os.listxattr(a[0]))
    if k == 'removexattr':
        os.removexattr(a[0], a[1])
        return None
    if k == 'opendir_fd_read':
        fd = os.open(a[0], os.O_RDONLY)
        try:
            os.read(fd, 10)
        finally:
            os.close(fd)
        return None
    raise ValueError('unknown op ' + k)

out = []
for op in json.loads(sys.stdin.read()):
    try:
        out.append({'ok': True, 'value': do(op)})
    except OSError as e:
        out.append({'ok': False, 'errno': errno.errorcode.get(e.errno, str(e.errno)), 'message': str(e)})
print(json.dumps(out))
`;

/** Runs ops in one python3 process; throws (with the tool's output) if python itself fails. */
export async function pyOps(ops: PyOp[], opts: RunOptions = {}): Promise<PyResult[]> {
  const r = await run(PYTHON, ['-c', SCRIPT], { timeout: 30_000, ...opts, input: JSON.stringify(ops) });
  if (r.code !== 0) throw new Error(`python ops failed:\n${describe(r)}\nops: ${JSON.stringify(ops)}`);
  const res = JSON.parse(r.stdout) as PyResult[];
  if (res.length !== ops.length) throw new Error(`python ops returned ${res.length} results for ${ops.length} ops`);
  return res;
}

/** one op; throws unless it succeeded, returns its value */
export async function pyOk(op: PyOp, opts: RunOptions = {}): Promise<unknown> {
  const [r] = await pyOps([op], opts);
  if (!r!.ok) throw new Error(`${JSON.stringify(op)} failed: ${r!.errno} ${r!.message}`);
  return r!.value;
}

/** 'OK' or the errno name */
export function code(r: PyResult | undefined): string {
  if (!r) return 'MISSING';
  return r.ok ? 'OK' : r.errno;
}

/** Runs a python3 script (argv: args) in a separate process. */
export function py(script: string, args: readonly string[] = [], opts: RunOptions = {}) {
  return run(PYTHON, ['-c', script, ...args], opts);
}
