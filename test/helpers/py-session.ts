/**
 * A long-lived python3 process that runs file operations one at a time, on request: for steps that must
 * hold descriptors open between other steps (a file open on one mount while another mount changes it), or
 * that poll a path from one process instead of spawning one per try.
 *
 * `pySession(t, opts)` starts the process (killed at teardown); `call(op)` sends one operation as a JSON line
 * and resolves with its result, { ok: true, value } or { ok: false, errno, message } (the errno of an
 * OSError, as pyops.ts). Every result also carries `at`: the wall clock (ms since the epoch) when the
 * operation finished, comparable with Date.now() in the test and `at` of other sessions.
 * Operations are arrays:
 *   ['open', path, ['O_RDONLY', ...], mode?]       -> fd (the descriptor stays open)
 *   ['close', fd]
 *   ['fstat', fd] | ['stat', path]                 -> { ino, size, mtime_ns }
 *   ['pread_all', fd]                              -> { size, sha256 } of the bytes from offset 0 to EOF
 *   ['cat', path]                                  -> { size, sha256 }: open, read to EOF, close
 *   ['write_file', path, size, seed, fsync?, ['O_TRUNC'...]?]
 *                                                  -> { size, sha256 }: open (O_WRONLY|O_CREAT + the extra
 *                                                     flags, mode 0644), write size bytes of random.Random(seed),
 *                                                     fsync when asked, close
 *   ['write_fd', fd, size, seed]                   -> { size, sha256 }: write size bytes of random.Random(seed) at the
 *                                                     descriptor's position (it stays open)
 *   ['poll', path, 'OK' | errno name, timeout_ms]  -> { ms, tries }: stat(path) every 20 ms until its outcome
 *                                                     is the one wanted; fails with errno ETIMEDOUT otherwise
 *   ['listdir', path]                              -> sorted names
 *   ['unlink' | 'rename' | 'mkdir' | 'rmdir' | 'truncate', ...args]
 */
import { PY_HELPERS } from './pyops.js';
import { PYTHON, start, type RunOptions, type Started } from './run.js';
import type { TestLike } from './mount.js';

export type SessionOp = [string, ...unknown[]];
export type SessionResult = ({ ok: true; value: unknown } | { ok: false; errno: string; message: string }) & { at: number };

const SCRIPT = String.raw`
import errno, hashlib, json, os, random, sys, time

${PY_HELPERS}

def read_all(fd):
    h, n, off = hashlib.sha256(), 0, 0
    while True:
        b = os.pread(fd, 1 << 20, off)
        if not b:
            return {'size': n, 'sha256': h.hexdigest()}
        h.update(b); n += len(b); off += len(b)

def do(op):
    k, a = op[0], op[1:]
    if k == 'open':
        return os.open(a[0], fl(a[1]), a[2] if len(a) > 2 else 0o644)
    if k == 'close':
        os.close(a[0]); return None
    if k == 'fstat':
        return st(os.fstat(a[0]))
    if k == 'stat':
        return st(os.stat(a[0]))
    if k == 'pread_all':
        return read_all(a[0])
    if k == 'cat':
        fd = os.open(a[0], os.O_RDONLY)
        try:
            return read_all(fd)
        finally:
            os.close(fd)
    if k == 'write_file':
        data = random.Random(a[2]).randbytes(a[1])
        fd = os.open(a[0], os.O_WRONLY | os.O_CREAT | fl(a[4] if len(a) > 4 else []), 0o644)
        try:
            v = memoryview(data)
            while v:
                v = v[os.write(fd, v):]
            if len(a) > 3 and a[3]:
                os.fsync(fd)
        finally:
            os.close(fd)
        return {'size': len(data), 'sha256': hashlib.sha256(data).hexdigest()}
    if k == 'write_fd':
        data = random.Random(a[2]).randbytes(a[1])
        v = memoryview(data)
        while v:
            v = v[os.write(a[0], v):]
        return {'size': len(data), 'sha256': hashlib.sha256(data).hexdigest()}
    if k == 'poll':
        t0, tries = time.monotonic(), 0
        while True:
            tries += 1
            try:
                os.stat(a[0]); got = 'OK'
            except OSError as e:
                got = errno.errorcode.get(e.errno, str(e.errno))
            ms = (time.monotonic() - t0) * 1000
            if got == a[1]:
                return {'ms': round(ms), 'tries': tries}
            if ms > a[2]:
                raise OSError(errno.ETIMEDOUT, 'stat(%s) still gives %s after %d ms' % (a[0], got, ms))
            time.sleep(0.02)
    if k == 'listdir':
        return sorted(os.listdir(a[0]))
    if k in ('unlink', 'rename', 'mkdir', 'rmdir', 'truncate'):
        getattr(os, k)(*a); return None
    raise ValueError('unknown op ' + k)

for line in sys.stdin:
    try:
        r = {'ok': True, 'value': do(json.loads(line))}
    except OSError as e:
        r = {'ok': False, 'errno': errno.errorcode.get(e.errno, str(e.errno)), 'message': str(e)}
    r['at'] = time.time() * 1000
    print(json.dumps(r), flush=True)
`;

export interface PySession {
  /** runs one operation (one at a time: calls queue) */
  call(op: SessionOp): Promise<SessionResult>;
  /** runs one operation; throws unless it succeeded; returns its value */
  ok<T = unknown>(op: SessionOp): Promise<T>;
  /** ends the process (closing every descriptor it holds) and waits for it */
  close(): Promise<void>;
  readonly started: Started;
}

export function pySession(t: TestLike, opts: RunOptions = {}): PySession {
  const s = start(PYTHON, ['-u', '-c', SCRIPT], { timeout: 600_000, ...opts });
  t.teardown(() => s.kill());
  const waiting: ((line: string) => void)[] = [];
  let buf = '';
  s.child.stdout!.on('data', (b: Buffer) => {
    buf += b.toString('utf8');
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      waiting.shift()?.(line);
    }
  });
  let tail: Promise<unknown> = Promise.resolve();
  const call = (op: SessionOp): Promise<SessionResult> => {
    const run = tail.then(() => new Promise<SessionResult>((resolve, reject) => {
      const gone = (r: { code: number | null; signal: string | null }) =>
        reject(new Error(`python session ended (exit ${r.code ?? r.signal}) before answering ${JSON.stringify(op)}: ${s.output().stderr}`));
      void s.result.then(gone);
      waiting.push((line) => {
        try {
          resolve(JSON.parse(line) as SessionResult);
        } catch {
          reject(new Error(`python session answered ${JSON.stringify(op)} with: ${line}\n${s.output().stderr}`));
        }
      });
      s.write(`${JSON.stringify(op)}\n`);
    }));
    tail = run.catch(() => undefined);
    return run;
  };
  return {
    started: s,
    call,
    async ok<T>(op: SessionOp): Promise<T> {
      const r = await call(op);
      if (!r.ok) throw new Error(`${JSON.stringify(op)} failed: ${r.errno} ${r.message}`);
      return r.value as T;
    },
    async close() {
      s.end();
      let timer: NodeJS.Timeout | undefined;
      const r = await Promise.race([s.result, new Promise<undefined>((res) => { timer = setTimeout(() => res(undefined), 5000); })]);
      clearTimeout(timer);
      if (!r) s.kill();
      await s.result;
    },
  };
}
