/**
 * Filling a mount until the store is full, and checking what was written: the scripted writer, sha256sum and df,
 * each in a child process (never in the test process, which must not block on the mount).
 */
import type { Test } from 'tap';
import { expectExit } from './assert.js';
import { describe, PYTHON, run } from './run.js';

// Writes files of SIZE random bytes with O_TRUNC, write (1 MiB calls), fsync and close, until a call fails or MOST
// files are done; prints one JSON list. Each file: its sha256, the errno of each failed call, and the slowest call.
const FILL = String.raw`
import hashlib, json, os, sys, time
d, prefix, size, most = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
files = []
for i in range(most):
    path = os.path.join(d, '%s%03d' % (prefix, i))
    data = os.urandom(size)
    errs, slowest = {}, [0.0, '']
    def call(name, fn, *a):
        t0 = time.monotonic()
        try:
            return fn(*a)
        except OSError as e:
            errs.setdefault(name, e.errno)
            return None
        finally:
            s = time.monotonic() - t0
            if s > slowest[0]:
                slowest[0], slowest[1] = s, name
    fd = call('open', os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if fd is not None:
        off = 0
        while off < size and 'write' not in errs:
            n = call('write', os.write, fd, data[off:off + 1048576])
            off += n or 0
        call('fsync', os.fsync, fd)
        call('close', os.close, fd)
    files.append({'path': path, 'size': size, 'sha': hashlib.sha256(data).hexdigest(), 'errs': errs,
                  'slowest': round(slowest[0], 3), 'slowestCall': slowest[1]})
    if errs:
        break
print(json.dumps(files))
`;

export interface Filled {
  path: string;
  size: number;
  sha: string;
  /** call name -> errno, for each call that failed */
  errs: Record<string, number>;
  /** seconds of the slowest call, and its name */
  slowest: number;
  slowestCall: string;
}

/** writes DIR/PREFIXnnn files of `size` bytes until a call fails or `most` are done; [] when it did not finish */
export async function fillFiles(t: Test, dir: string, prefix: string, size: number, most: number): Promise<Filled[]> {
  const r = await run(PYTHON, ['-c', FILL, dir, prefix, String(size), String(most)], { timeout: 120_000 });
  if (!expectExit(t, r, `write ${prefix}* files with fsync`) || r.timedOut) return [];
  return JSON.parse(r.stdout) as Filled[];
}

/** sha256 of each file, through sha256sum; undefined for a file it could not read */
export async function sha256sums(t: Test, files: string[]): Promise<Map<string, string | undefined>> {
  const out = new Map<string, string | undefined>();
  if (!files.length) return out;
  const r = await run('sha256sum', files, { timeout: 60_000 });
  t.notOk(r.timedOut, 'sha256sum finished', { command: describe(r) });
  for (const f of files) out.set(f, undefined);
  for (const line of r.stdout.split('\n')) {
    const m = /^([0-9a-f]{64})\s+\*?(.*)$/.exec(line);
    if (m) out.set(m[2]!, m[1]!);
  }
  return out;
}

/** `df -B1` of a mount */
export async function df(t: Test, mnt: string): Promise<{ size: number; used: number; avail: number }> {
  const r = await run('df', ['-B1', '--output=size,used,avail', mnt], { timeout: 15_000 });
  expectExit(t, r, 'df on the mount');
  const [size, used, avail] = (r.stdout.trim().split('\n')[1] ?? '').trim().split(/\s+/).map(Number);
  return { size: size!, used: used!, avail: avail! };
}
