/**
 * The wait on the CPU for a next request (--spin-us, native-channel.ts spinNow): once every request is
 * answered, the event loop waits up to spinUs for the next one instead of sleeping at once.
 *  - with the default, a caller that waits for each answer (create, write, fsync, unlink, one after another) is
 *    served through it: the daemon's figures count waits (at least the probe's floor of one per 16 chances:
 *    how many more depends on how soon the caller's next request comes, which a loaded machine changes) and
 *    waits that saw a request come; every file the loop made and removed is right (contents read back, names
 *    gone);
 *  - --spin-us 0 never waits;
 *  - an idle daemon does not spin: its CPU time over 2 s of nothing is a small part of one CPU (the waits are
 *    bounded per answer, so with no requests there is nothing to wait after).
 * Its speed is the bench's business (meta-delete: npm run bench).
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { expectExit } from '../helpers/assert.js';
import { mountKvfs, PYTHON, run } from '../helpers/mount.js';
import { channelStats } from '../helpers/daemon-stats.js';

t.setTimeout(120_000);

interface Channel { spins: number; spinHits: number }

/** makes, checks and removes n files one call after another; prints what went wrong, exits 1 */
const LOOP = String.raw`
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
for i in range(n):
    p = os.path.join(d, f"f{i}")
    body = f"file {i}\n".encode() * 3
    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    os.write(fd, body); os.fsync(fd); os.close(fd)
    with open(p, "rb") as f:
        got = f.read()
    if got != body: sys.exit(f"{p}: read back {got!r}, wrote {body!r}")
    os.unlink(p)
    if os.path.exists(p): sys.exit(f"{p} still there after unlink")
left = os.listdir(d)
if left: sys.exit(f"left in the directory: {left[:5]}")
os.rmdir(d)
`;

/** CPU seconds (user + system) the process has used so far */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

t.test('the default waits on the CPU for the next request, and the loop\'s files are right', async (t) => {
  const m = await mountKvfs(t, { store: 'memory:', driver: 'native' });
  const before = await channelStats<Channel>(m.mnt);
  expectExit(t, await run(PYTHON, ['-c', LOOP, `${m.mnt}/d`, '500']), '500 files made, read back and removed one call after another');
  const after = await channelStats<Channel>(m.mnt);
  const spins = after.spins - before.spins;
  const hits = after.spinHits - before.spinHits;
  // Each file is about five answers by this thread (a quiet run counts ~2,600 waits, nearly all hits); while
  // waits see nothing come (a loaded machine delays the caller), only one chance in SPIN_PROBE (16) waits:
  // 500 * 5 / 16 = 156, less chances met while a store call was under way. The file runs alone (tap.serial).
  t.ok(spins >= 100, `waits for a next request: ${spins} (at least the probe's one in 16 chances)`);
  t.ok(hits > 0 && hits <= spins, `waits that saw the next request come: ${hits} of ${spins}`);

  await new Promise((r) => setTimeout(r, 500));
  const cpu0 = cpuSeconds(m.pid);
  await new Promise((r) => setTimeout(r, 2000));
  const idle = cpuSeconds(m.pid) - cpu0;
  t.ok(idle < 0.2, `an idle daemon does not spin: ${(idle * 1000).toFixed(0)} ms of CPU over 2 s with no requests`);
  await m.unmount();
});

t.test('--spin-us 0 never waits', async (t) => {
  const m = await mountKvfs(t, { store: 'memory:', driver: 'native', args: ['--spin-us', '0'] });
  expectExit(t, await run(PYTHON, ['-c', LOOP, `${m.mnt}/d`, '200']), '200 files made, read back and removed');
  const c = await channelStats<Channel>(m.mnt);
  t.equal(c.spins, 0, 'no waits on the CPU');
  t.equal(c.spinHits, 0, 'and none saw a request');
  await m.unmount();
});
