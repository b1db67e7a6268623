/**
 * Source trees for the bulk loader's tests (test/mount/load.test.ts), made and described by one Python script:
 *  - `makeTree(dir, spec)`: small files of a few sizes (some empty, some all zeros), spread over directories,
 *    files of several chunks, a sparse one, symlinks (one dangling), hard links (within a directory and
 *    across two), empty directories, a fifo, modes (setuid, 0600, 0750), other owners, times in nanoseconds
 *    (atime an hour ahead: relatime moves an atime older than the ctime on a read, and setting times sets the
 *    ctime, so only an atime ahead of it stays put while the tests read the tree), and user.* xattrs on files
 *    and directories.
 *  - `describeTree(dir)`: one sorted line per entry with what a copy must keep: type, size (not of directories),
 *    mode, owner, link count, mtime and atime in ns, symlink target, user.* xattrs, and a file's sha256; the
 *    root's line is "." so that two roots compare.
 */
import { PYTHON, run } from './mount.js';
import { expectExit } from './assert.js';
import type { Test } from 'tap';

const SCRIPT = String.raw`
import hashlib, json, os, random, stat, sys, time

def make(root, seed, small, big_sizes, per_dir):
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    now = time.time_ns()
    def times(p, k, follow=True):
        mt = now - 7200 * 10**9 - k * 1_000_003_007
        os.utime(p, ns=(now + 3600 * 10**9 + k * 7_000_011, mt), follow_symlinks=follow)
    dirs = []
    for i in range(small):
        d = os.path.join(root, "d%02d" % (i // per_dir))
        if d not in dirs:
            os.makedirs(d, exist_ok=True); dirs.append(d)
        size = rng.choice([0, 1, 100, 4095, 4096, 10000, 65536, 200000])
        p = os.path.join(d, "f%05d" % i)
        with open(p, "wb") as f:
            f.write(bytes(size) if i % 17 == 0 else rng.randbytes(size))
    for j, size in enumerate(big_sizes):
        p = os.path.join(root, "big%d" % j)
        with open(p, "wb") as f:
            block = rng.randbytes(1 << 20)
            left = size
            while left > 0:
                n = min(left, len(block))
                f.write(block[:n]); left -= n
                block = block[1:] + block[:1]
    with open(os.path.join(root, "sparse"), "wb") as f:
        f.truncate(3 << 20); f.seek(1 << 20); f.write(b"middle" * 1000)
    os.makedirs(os.path.join(root, "empty", "deeper"))
    os.makedirs(os.path.join(root, "links"))
    open(os.path.join(root, "links", "target"), "w").write("target of links\n")
    os.symlink("target", os.path.join(root, "links", "sym"))
    os.symlink("../nowhere/at/all", os.path.join(root, "links", "dangling"))
    os.link(os.path.join(root, "links", "target"), os.path.join(root, "links", "hard"))
    if dirs:
        os.link(os.path.join(root, "links", "target"), os.path.join(dirs[0], "hard-elsewhere"))
    os.mkfifo(os.path.join(root, "links", "fifo"))
    special = os.path.join(root, "modes")
    os.makedirs(special)
    for name, mode in [("setuid", 0o4755), ("private", 0o600), ("group", 0o750)]:
        p = os.path.join(special, name)
        open(p, "w").write(name)
        os.chmod(p, mode)
    os.chown(os.path.join(special, "private"), 1234, 5678)
    os.chmod(special, 0o750)
    os.chown(special, 4321, 8765)
    os.setxattr(os.path.join(special, "setuid"), "user.color", b"blue")
    os.setxattr(os.path.join(special, "setuid"), "user.empty", b"")
    os.setxattr(special, "user.dir", b"\x00\x01binary")
    os.setxattr(root, "user.root", b"the root's own")
    k = 0
    for dp, dns, fns in sorted(os.walk(root, topdown=False)):
        for n in sorted(fns):
            p = os.path.join(dp, n)
            k += 1
            times(p, k, not os.path.islink(p))
        for n in sorted(dns):
            p = os.path.join(dp, n)
            if os.path.islink(p):
                k += 1
                times(p, k, False)
        k += 1
        times(dp, k)

def describe(root):
    out = []
    for dp, dns, fns in os.walk(root):
        for n in [None] + sorted(dns) + sorted(fns):
            p = dp if n is None else os.path.join(dp, n)
            if n is not None and n in dns and not os.path.islink(p):
                continue  # described when walked
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            kind = stat.S_IFMT(st.st_mode)
            parts = [rel, "%o" % st.st_mode, str(st.st_uid), str(st.st_gid), str(st.st_nlink), str(st.st_mtime_ns), str(st.st_atime_ns)]
            if stat.S_ISREG(kind):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while True:
                        b = f.read(1 << 20)
                        if not b: break
                        h.update(b)
                parts += [str(st.st_size), h.hexdigest()]
            if stat.S_ISLNK(kind):
                parts += [str(st.st_size), os.readlink(p)]
            if not stat.S_ISLNK(kind):
                xs = sorted(x for x in os.listxattr(p, follow_symlinks=False) if x.startswith("user."))
                parts += ["%s=%s" % (x, os.getxattr(p, x, follow_symlinks=False).hex()) for x in xs]
            out.append("|".join(parts))
    print("\n".join(sorted(out)))

if sys.argv[1] == "make":
    make(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), [int(x) for x in sys.argv[5].split(",") if x], int(sys.argv[6]))
else:
    describe(sys.argv[2])
`;

export interface TreeSpec {
  seed?: number;
  /** small files (default 200), `perDir` to a directory (default 50) */
  small?: number;
  perDir?: number;
  /** sizes of files of several chunks */
  big?: number[];
}

export async function makeTree(t: Test, dir: string, spec: TreeSpec = {}): Promise<void> {
  const r = await run(PYTHON, ['-c', SCRIPT, 'make', dir, String(spec.seed ?? 1), String(spec.small ?? 200), (spec.big ?? []).join(','),
    String(spec.perDir ?? 50)], { timeout: 120_000 });
  expectExit(t, r, `make a source tree in ${dir}`);
}

/** the tree's description (see above); throws when it cannot be made */
export async function describeTree(dir: string): Promise<string> {
  const r = await run(PYTHON, ['-c', SCRIPT, 'describe', dir], { timeout: 120_000 });
  if (r.code !== 0) throw new Error(`describing ${dir} failed: ${r.stderr}`);
  return r.stdout;
}
