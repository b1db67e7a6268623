/**
 * Checksummed file I/O load from separate python3 processes, for tests that disturb the store underneath a
 * mount (slot migration, failover) and must show that no byte and no call went wrong.
 *
 *  - `startLoad('writer', dir, ...)` writes files of random sizes (log-uniform in [minSize, maxSize], from a
 *    seeded random.Random) until told to stop: each as DIR/NNNNN.tmp, written, fsynced, closed, then renamed to
 *    DIR/NNNNN-SIZE-SHA256.dat. A .dat name exists only for a file whose every call succeeded.
 *  - `startLoad('reader', dir, ...)` reads .dat files back until told to stop and checks size and sha256
 *    against the name: in turn the newest file, a random older one (the kernel may serve it from its page
 *    cache), and a random older one after posix_fadvise(DONTNEED) (so the read reaches the daemon).
 *  - Every syscall is timed (monotonic clock): the longest per kind, and each one longer than 1 s, are in the
 *    summary; so is every error (errno, call, file) and, per file written or read, [start, end, kind, bytes,
 *    ok] on the wall clock (ms since the epoch, comparable with Date.now() in the test).
 *  - `stop()` creates the stop file (on local disk, never on the mount) and resolves with the summary once
 *    the process printed it. A process that does not finish within `stopTimeoutMs` (a call hung) is killed
 *    and `stop()` rejects with its output.
 *  - `verifyDir(dir)` reads every .dat file once, in one process, and returns what did not match.
 */
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import type { TestLike } from './mount.js';
import { describe, PYTHON, run, start, type RunOptions } from './run.js';

/** one file written or read: wall-clock start and end (ms), 'w' | 'r', bytes, whether every call succeeded */
export type LoadOp = [number, number, 'w' | 'r', number, boolean];

export interface LoadSummary {
  role: 'writer' | 'reader';
  /** files written (renamed to .dat) or read and verified */
  files: number;
  bytes: number;
  errorCount: number;
  /** the first 50: [call, errno, file, wall-clock ms when the call started, its duration ms] */
  errors: [string, string, string, number, number][];
  /** reader: files whose size or sha256 did not match their name (first 50) */
  mismatches: string[];
  mismatchCount: number;
  /** longest call per kind (open, write, fsync, close, rename, read, listdir, fadvise), ms */
  maxMs: Record<string, number>;
  /** calls that took longer than 1 s: [call, wall-clock start ms, duration ms, errno or 'OK'] */
  slow: [string, number, number, string][];
  ops: LoadOp[];
}

const SCRIPT = String.raw`
import errno, hashlib, json, math, os, random, sys, time
role, d, stop, seed, lo, hi = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rnd = random.Random(seed)
wall = lambda: time.time() * 1000
res = {'role': role, 'files': 0, 'bytes': 0, 'errorCount': 0, 'errors': [], 'mismatches': [], 'mismatchCount': 0,
       'maxMs': {}, 'slow': [], 'ops': []}

def timed(kind, name, fn, *a):
    w0, t0, code = wall(), time.monotonic(), 'EXC'
    try:
        r = fn(*a); code = 'OK'
        return r
    except OSError as e:
        code = errno.errorcode.get(e.errno, str(e.errno))
        res['errorCount'] += 1
        if len(res['errors']) < 50:
            res['errors'].append([kind, code, name, w0, round((time.monotonic() - t0) * 1000)])
        raise
    finally:
        ms = (time.monotonic() - t0) * 1000
        if ms > res['maxMs'].get(kind, 0):
            res['maxMs'][kind] = round(ms, 1)
        if ms > 1000:
            res['slow'].append([kind, w0, round(ms), code])

def close_quietly(fd):
    try:
        os.close(fd)
    except OSError:
        pass

def write_one(i):
    size = int(math.exp(rnd.uniform(math.log(lo), math.log(hi))))
    data = rnd.randbytes(size)
    h = hashlib.sha256(data).hexdigest()
    tmp = '%s/%05d.tmp' % (d, i)
    fd = timed('open', tmp, os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        v = memoryview(data)
        while v:
            v = v[timed('write', tmp, os.write, fd, v):]
        timed('fsync', tmp, os.fsync, fd)
    except OSError:
        close_quietly(fd)
        raise
    timed('close', tmp, os.close, fd)
    timed('rename', tmp, os.rename, tmp, '%s/%05d-%d-%s.dat' % (d, i, size, h))
    return size

def read_one(name, drop):
    _, size, sha = name[:-4].split('-')
    p = d + '/' + name
    fd = timed('open', p, os.open, p, os.O_RDONLY)
    try:
        if drop:
            timed('fadvise', p, os.posix_fadvise, fd, 0, 0, os.POSIX_FADV_DONTNEED)
        h, n = hashlib.sha256(), 0
        while True:
            b = timed('read', p, os.read, fd, 1 << 20)
            if not b:
                break
            h.update(b); n += len(b)
    finally:
        close_quietly(fd)
    if n != int(size) or h.hexdigest() != sha:
        res['mismatchCount'] += 1
        if len(res['mismatches']) < 50:
            res['mismatches'].append('%s: read %d bytes, sha256 %s' % (name, n, h.hexdigest()))
    return n

i = 0
while not os.path.exists(stop):
    t0, ok, n = wall(), True, 0
    try:
        if role == 'writer':
            n = write_one(i)
        else:
            names = sorted(x for x in timed('listdir', d, os.listdir, d) if x.endswith('.dat'))
            if not names:
                time.sleep(0.02)
                continue
            k = i % 3
            n = read_one(names[-1] if k == 0 else rnd.choice(names), k == 2)
    except OSError:
        ok = False
        time.sleep(0.01)
    res['ops'].append([t0, wall(), 'w' if role == 'writer' else 'r', n, ok])
    if ok:
        res['files'] += 1; res['bytes'] += n
    i += 1
print(json.dumps(res), flush=True)
`;

const VERIFY = String.raw`
import hashlib, json, os, sys
d = sys.argv[1]
out = {'files': 0, 'bytes': 0, 'bad': [], 'names': []}
for name in sorted(os.listdir(d)):
    out['names'].append(name)
    if not name.endswith('.dat'):
        continue
    _, size, sha = name[:-4].split('-')
    try:
        with open(d + '/' + name, 'rb') as f:
            b = f.read()
    except OSError as e:
        out['bad'].append('%s: %s' % (name, e)); continue
    out['files'] += 1; out['bytes'] += len(b)
    if len(b) != int(size) or hashlib.sha256(b).hexdigest() != sha:
        out['bad'].append('%s: read %d bytes, sha256 %s' % (name, len(b), hashlib.sha256(b).hexdigest()))
print(json.dumps(out))
`;

export interface Load {
  /** asks the process to stop after its current file; resolves with its summary */
  stop(): Promise<LoadSummary>;
  /** what the process printed so far (for messages) */
  output(): { stdout: string; stderr: string };
}

export interface LoadOptions {
  seed: number;
  /** bytes; default 1 KiB */
  minSize?: number;
  /** bytes; default 2 MiB */
  maxSize?: number;
  /** a path on local disk (not the mount) whose existence tells the process to stop */
  stopFile: string;
  /** ms to wait for the summary after stop() (default 60 s) */
  stopTimeoutMs?: number;
}

/** starts a writer or a reader on dir (a directory on the mount); killed at teardown if still running */
export function startLoad(t: TestLike, role: 'writer' | 'reader', dir: string, opts: LoadOptions): Load {
  const s = start(PYTHON, ['-c', SCRIPT, role, dir, opts.stopFile, String(opts.seed), String(opts.minSize ?? 1024),
    String(opts.maxSize ?? 2 << 20)], { timeout: 900_000 });
  t.teardown(() => s.kill());
  return {
    output: () => s.output(),
    async stop() {
      writeFileSync(opts.stopFile, '');
      const limit = opts.stopTimeoutMs ?? 60_000;
      let timer: NodeJS.Timeout | undefined;
      const r = await Promise.race([s.result, new Promise<undefined>((res) => { timer = setTimeout(() => res(undefined), limit); })]);
      clearTimeout(timer);
      if (!r) {
        s.kill();
        const o = s.output();
        throw new Error(`the ${role} did not stop within ${limit} ms of being asked (a call hung?)\nstderr:\n${o.stderr.slice(-4000)}`);
      }
      if (r.code !== 0) throw new Error(`the ${role} failed:\n${describe(r)}`);
      return JSON.parse(r.stdout) as LoadSummary;
    },
  };
}

export interface VerifyResult {
  files: number;
  bytes: number;
  /** files that could not be read or did not match their name */
  bad: string[];
  /** every name in the directory (.dat and leftovers) */
  names: string[];
}

/** reads every .dat file of dir once and checks it against its name */
export async function verifyDir(dir: string, opts: RunOptions = {}): Promise<VerifyResult> {
  const r = await run(PYTHON, ['-c', VERIFY, dir], { timeout: 120_000, ...opts });
  if (r.code !== 0) throw new Error(`verifying ${dir} failed:\n${describe(r)}`);
  return JSON.parse(r.stdout) as VerifyResult;
}

/** ops that overlap [from, to] (wall-clock ms) and succeeded: count and bytes */
export function opsWithin(ops: LoadOp[], from: number, to: number): { files: number; bytes: number; failed: number } {
  const hit = ops.filter(([a, b]) => b >= from && a <= to);
  const ok = hit.filter((o) => o[4]);
  return { files: ok.length, bytes: ok.reduce((n, o) => n + o[3], 0), failed: hit.length - ok.length };
}

/** a fresh stop-file path in dir */
export function stopFile(dir: string, name: string): string {
  return join(dir, `stop-${name}`);
}
