/**
 * GETATTR of directories answered by the reader threads (read-index.h PublishAttr, filesystem.ts put/getattr):
 * on a single-mount volume the core publishes a directory's attributes after every commit that changes it, and
 * the kernel, which asks again after each change in the directory, gets them without a trip through
 * JavaScript. What it answers must always be what the core would answer:
 *  - after each kind of change (create, mkdir, rename in and out, link, unlink, rmdir, chmod, chown, utimes,
 *    setxattr, removexattr, a rename over a directory), stat of the directory equals the daemon's own answer,
 *    taken again after the kernel forgot the directory (drop_caches: FORGET retracts, GETATTR goes to the core),
 *    and the fields the change must move (nlink, mode, owner, times) moved;
 *  - under concurrent creates and unlinks in one directory, a stat loop sees its mtime and ctime never go back
 *    and nlink always right (each worker's subdirectory stays);
 *  - the readers did answer GETATTRs (fastGetattrs). (Shared stores, where other mounts change directories, never
 *    publish: filesystem.ts publishesAttrs.)
 */
import t from 'tap';
import { join } from 'node:path';
import { expectExit } from '../helpers/assert.js';
import { kvfs, mountKvfs, PYTHON, run, tempDir } from '../helpers/mount.js';
import { channelStats } from '../helpers/daemon-stats.js';

t.setTimeout(180_000);

interface Stats { channel: { fastGetattrs: number; publishedAttrs: number } }

// Each step changes directory D, then compares stat(D) now (the readers' answer when published) with stat(D)
// after the kernel dropped it (the core's answer), and checks what the step must have changed.
const STEPS = String.raw`
import os, sys, time
root = sys.argv[1]
D = os.path.join(root, "d")
os.mkdir(D)
os.mkdir(os.path.join(root, "other"))
def st(p=D):
    s = os.stat(p)
    return dict(mode=s.st_mode, nlink=s.st_nlink, uid=s.st_uid, gid=s.st_gid, size=s.st_size,
                atime=s.st_atime_ns, mtime=s.st_mtime_ns, ctime=s.st_ctime_ns)
def forget():
    with open("/proc/sys/vm/drop_caches", "w") as f: f.write("2")
served = 0
def step(name, fn, moved):
    global served
    before = st()
    time.sleep(0.002)
    fn()
    now = st()
    forget()
    core = st()
    if now != core: sys.exit(f"{name}: stat answered {now}, the core has {core}")
    for field in moved:
        if now[field] == before[field]: sys.exit(f"{name}: {field} did not change ({now[field]})")
    served += 1
p = lambda *a: os.path.join(D, *a)
step("create", lambda: open(p("f"), "w").close(), ["mtime", "ctime"])
step("mkdir", lambda: os.mkdir(p("sub")), ["mtime", "ctime", "nlink"])
step("rename in", lambda: os.rename(os.path.join(root, "other"), p("moved")), ["mtime", "nlink"])
step("link", lambda: os.link(p("f"), p("f2")), ["mtime", "ctime"])
step("unlink", lambda: os.unlink(p("f2")), ["mtime", "ctime"])
step("rename within", lambda: os.rename(p("f"), p("g")), ["mtime", "ctime"])
step("rename out", lambda: os.rename(p("moved"), os.path.join(root, "back")), ["mtime", "nlink"])
step("mkdir again", lambda: os.mkdir(p("empty")), ["nlink"])
step("rename over a directory", lambda: os.rename(p("sub"), p("empty")), ["mtime", "nlink"])
step("rmdir", lambda: os.rmdir(p("empty")), ["mtime", "nlink"])
step("chmod", lambda: os.chmod(D, 0o711), ["mode", "ctime"])
step("chown", lambda: os.chown(D, 1234, 5678), ["uid", "gid", "ctime"])
step("utimes", lambda: os.utime(D, ns=(1_000_000_000, 2_000_000_000)), ["atime", "mtime", "ctime"])
step("setxattr", lambda: os.setxattr(D, "user.k", b"v"), ["ctime"])
step("removexattr", lambda: os.removexattr(D, "user.k"), ["ctime"])
step("symlink", lambda: os.symlink("g", p("l")), ["mtime"])
print(served)
`;

// W workers create and unlink files in D (each keeps a subdirectory: nlink is 2 + W); one loop stats D the
// whole time and counts the times its mtime went back (the kernel can take a GETATTR answered just before a
// change after the change: session.ts DIR_ATTR_SECONDS); nlink never goes past 2 + W. 1.2 s after the last
// change, stat of D equals the core's answer (taken after the kernel forgot D): nothing stale stays.
const RACE = String.raw`
import os, sys, time, multiprocessing as mp
D, W, N = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def st():
    s = os.stat(D)
    return (s.st_mode, s.st_nlink, s.st_mtime_ns, s.st_ctime_ns)
def work(w):
    os.mkdir(os.path.join(D, f"w{w}"))
    for i in range(N):
        f = os.path.join(D, f"f{w}-{i}")
        open(f, "w").close()
        os.unlink(f)
if __name__ == "__main__":
    os.mkdir(D)
    ws = [mp.Process(target=work, args=(w,)) for w in range(W)]
    for p in ws: p.start()
    last = 0
    stats = back = 0
    while any(p.is_alive() for p in ws) or stats == 0:
        s = os.stat(D)
        if s.st_mtime_ns < last: back += 1
        if s.st_nlink > 2 + W: sys.exit(f"nlink {s.st_nlink} with {W} subdirectories")
        last = max(last, s.st_mtime_ns)
        stats += 1
    for p in ws: p.join()
    if sorted(os.listdir(D)) != sorted(f"w{w}" for w in range(W)): sys.exit(f"left: {os.listdir(D)}")
    time.sleep(1.2)
    now = st()
    with open("/proc/sys/vm/drop_caches", "w") as f: f.write("2")
    core = st()
    if now != core: sys.exit(f"1.2 s after the race, stat answered {now}, the core has {core}")
    if now[1] != 2 + W: sys.exit(f"nlink {now[1]} at the end, want {2 + W}")
    if now[2] < last: sys.exit(f"the final mtime {now[2]} is older than one seen during the race ({last})")
    print(stats, back)
`;

t.test('local store: directory attributes answered by the readers are always the core\'s', async (t) => {
  const dir = tempDir(t, 'kvfs-test-dirattrs-');
  const url = `local:${join(dir, 'volume')}`;
  expectExit(t, await kvfs(['format', url], { dataDir: dir }), 'format');
  const m = await mountKvfs(t, { driver: 'default', store: url });
  const stats = () => channelStats<Stats['channel']>(m.mnt);

  const before = await stats();
  const r = await run(PYTHON, ['-c', STEPS, m.mnt], { timeout: 60_000 });
  expectExit(t, r, 'each change: stat of the directory equals the core\'s answer, and moved what it must');
  t.equal(r.stdout.trim(), '16', 'all 16 steps ran');
  const mid = await stats();
  t.ok(mid.fastGetattrs - before.fastGetattrs >= 16, `GETATTRs the readers answered: ${mid.fastGetattrs - before.fastGetattrs}`);

  const race = await run(PYTHON, ['-c', RACE, join(m.mnt, 'race'), '4', '400'], { timeout: 120_000 });
  expectExit(t, race, '4 workers create and unlink 400 files each beside a stat loop: nlink never past 2 + 4; 1.2 s later stat is the core\'s');
  const [taken, back] = race.stdout.trim().split(' ').map(Number);
  t.ok(taken! > 10, `stats taken during the race: ${taken}, of which ${back} saw an older mtime than one seen before`);
  const end = await stats();
  t.ok(end.fastGetattrs > mid.fastGetattrs, `GETATTRs the readers answered during the race: ${end.fastGetattrs - mid.fastGetattrs}`);
  t.equal((await m.unmount()).code, 0, 'unmount');
});
