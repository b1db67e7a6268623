/**
 * `kvfs gc` (src/volume/gc.ts) on the local (LMDB) store, through real daemons and the real CLI:
 *  1. kill -9 of a daemon during a write-heavy run (small files and 6 MiB ones, fsync now and then) leaves blobs
 *     that no chunk map names (commits cut short after their blobs were written): the raw store is audited
 *     before (test/helpers/store.ts auditBlobs, independent of gc's own code); `kvfs gc --sweep --dry-run`
 *     reports exactly them and changes nothing; `kvfs gc --sweep` deletes them (counts and bytes); the audit
 *     then finds no unreferenced blob; fsck reports after the crash with an exit status that says so, and is
 *     clean after gc and fsck --repair; every file closed before the kill reads back intact after a remount.
 *     The kill falls while the daemon writes a 32 MiB file and another process holds LMDB's write lock, so the
 *     blobs are written and the commit that would name them waits (crashUntilLeak); the crash is repeated (up to 6
 *     times) until it leaves a leak, so the claim is never vacuous. The same on a 3-master Redis Cluster (the kill
 *     falls while the metadata's master is paused with CLIENT PAUSE WRITE, so commits wait while their blobs are
 *     written to the other masters), where the sweep first leaves the killed mount's blobs alone (its session is
 *     live until its heartbeat expires: --session-ttl 12) and then reclaims them.
 *  2. Sweeps beside a live mount that is writing (the store's lock is the daemon's, so gc leaves the live
 *     session's blobs alone): sweep after sweep during seconds of writes and rewrites, then every file reads
 *     back; on the Redis Cluster too (no lock there: the live session is the only guard).
 *  3. Bad input: a store without a volume, a memory: store, a negative grace: one-line errors.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import { expectCliError, expectExit } from '../helpers/assert.js';
import { kvfs, mountKvfs, PYTHON, REPO, run, start, tempDir, type Mounted } from '../helpers/mount.js';
import { auditBlobs, holdLmdbWriteLock } from '../helpers/store.js';
import { RedisCluster, redisAvailable } from '../helpers/redis-cluster.js';

const NO_PW = { KVFS_REDIS_PASSWORD: undefined, KVFS_REDIS_PASSWORD_FILE: undefined };
type Env = Record<string, string | undefined>;

t.setTimeout(300_000);

interface Audit { blobs: number; named: number; queued: number; unreferenced: number; unreferencedBytes: number }
interface Report { dryRun: boolean; leaked: number; leakedBytes: number; leakedLive: number; collected: number; purged: number; orphans: number }

// Writes files in DIR until killed: small ones and 6 MiB ones, rewriting some, fsync now and then. Before each
// file "B path", after its close "E path sha256" on stdout (flushed): a closed file survives kill -9 of the
// daemon (close commits), and a path whose last line is "B" was cut off mid-write.
const WRITER = String.raw`
import hashlib, os, random, sys
d, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
i = 0
while True:
    big = i % 4 == 0
    path = os.path.join(d, "w%05d" % (i if rng.random() < 0.8 else rng.randrange(0, i + 1)))
    data = rng.randbytes(6 << 20 if big else rng.choice([100, 5000, 70000, 300000]))
    print("B", path, flush=True)
    try:
        with open(path, "wb") as f:
            for off in range(0, len(data), 1 << 20):
                f.write(data[off:off + (1 << 20)])
            if i % 3 == 0:
                f.flush(); os.fsync(f.fileno())
    except OSError:
        sys.exit(0)
    print("E", path, hashlib.sha256(data).hexdigest(), flush=True)
    i += 1
`;

const CHECK = String.raw`
import hashlib, json, sys
want = {}
for line in sys.stdin.read().split("\n"):
    if line.strip():
        p, h = line.split(" ")
        want[p] = h
bad = []
for p, h in want.items():
    try:
        got = hashlib.sha256(open(p, "rb").read()).hexdigest()
    except OSError as e:
        got = "error %d" % e.errno
    if got != h: bad.append([p, got])
print(json.dumps({"files": len(want), "bad": bad}))
`;

/** the JSON report a gc run printed last */
function report(stdout: string): Report | undefined {
  const line = stdout.split('\n').reverse().find((l) => l.startsWith('kvfs gc: {'));
  return line ? JSON.parse(line.slice('kvfs gc: '.length)) as Report : undefined;
}

/** "path sha256" of each file a writer's output shows closed, whose last write was not cut off */
function fsynced(stdout: string): string {
  const last = new Map<string, string | undefined>();
  for (const l of stdout.split('\n')) {
    const [ev, path, sha] = l.split(' ');
    if (ev === 'B') last.set(path!, undefined);
    else if (ev === 'E' && sha) last.set(path!, `${path} ${sha}`);
  }
  return [...last.values()].filter(Boolean).join('\n');
}

// Holds a file open in DIR (created and committed first), prints "ready", and on a line on stdin writes 32 MiB
// into it in 1 MiB writes: far past the mount's write-back budget, so the daemon puts blobs and commits them.
const BIG_WRITER = String.raw`
import os, sys
f = os.open(os.path.join(sys.argv[1], "big"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.fsync(f)
print("ready", flush=True)
sys.stdin.readline()
block = os.urandom(1 << 20)
try:
    for i in range(32):
        os.write(f, block)
    os.fsync(f)
except OSError:
    pass
`;

/**
 * Crashes the mount until the crash leaves blobs no chunk map names (six rounds at most). Each round three
 * writers, in their own directories, write for firstMs; then they are stopped (SIGSTOP) and `block` makes the
 * store hold back commits (LMDB: another process takes its write lock; Redis: the metadata's master is paused);
 * a fourth writer then writes 32 MiB into a file it opened before: the daemon puts the blobs of its chunks and
 * waits in the commit that would name them, and the kill -9 falls there. `block` returns its undo. Returns the
 * last audit of the raw store and every writer's output (for the read back).
 */
async function crashUntilLeak(t: Test, m: Mounted, url: string, dataDir: string, env: Env, seed: number, firstMs: number,
  block: () => Promise<() => Promise<void>>): Promise<{ audit: Audit | undefined; survivors: string }> {
  let audit: Audit | undefined;
  let survivors = '';
  for (let round = 0; round < 6; round++) {
    if (round > 0) await m.remount();
    const started = await Promise.all([0, 1, 2].map(async (k) => {
      const dir = join(m.mnt, `d${k}`);
      await run('mkdir', ['-p', dir]);
      return start(PYTHON, ['-c', WRITER, dir, String(seed + 3 * round + k)], { timeout: 120_000 });
    }));
    const big = start(PYTHON, ['-c', BIG_WRITER, m.mnt], { timeout: 120_000 });
    await big.waitFor(/^ready$/, 30_000);
    await new Promise((r) => setTimeout(r, firstMs));
    for (const w of started) w.kill('SIGSTOP');
    await new Promise((r) => setTimeout(r, 300)); // the requests they had under way are answered
    const undo = await block();
    big.write('go\n');
    await new Promise((r) => setTimeout(r, 1500));
    await m.kill9();
    await undo();
    for (const w of started) w.kill('SIGCONT');
    for (const w of started) survivors += (await w.result).stdout;
    await big.result;
    expectExit(t, await kvfs(['umount', m.mnt], { dataDir, env }), `round ${round}: kvfs umount of the dead mount`);
    const a = await auditBlobs(url);
    expectExit(t, a, `round ${round}: audit the raw store`);
    audit = JSON.parse(a.stdout || '{}') as Audit;
    t.comment(`round ${round}: ${JSON.stringify(audit)}`);
    if (audit.unreferenced > 0) break;
  }
  t.ok(audit && audit.unreferenced > 0, `the kill left blobs no chunk map names: ${audit?.unreferenced} (${audit?.unreferencedBytes} bytes)`);
  return { audit, survivors };
}

/** fsck --repair repairs whatever is left (exit 0 or 1), then fsck finds the volume clean */
async function repairedClean(t: Test, url: string, dataDir: string, env: Env): Promise<void> {
  const fixed = await kvfs(['fsck', url, '--repair'], { dataDir, env, timeout: 120_000 });
  t.ok(fixed.code === 0 || fixed.code === 1, `fsck --repair repairs whatever is left (exit ${fixed.code})`, { stdout: fixed.stdout });
  const after = await kvfs(['fsck', url], { dataDir, env, timeout: 120_000 });
  expectExit(t, after, 'fsck after gc and repair');
  t.match(after.stdout, /: clean/, 'the volume is clean');
}

/** every file the writers' output shows closed (and not cut off since) reads back with its sha256 */
async function readBack(t: Test, writerOutput: string, what: string): Promise<void> {
  const check = await run(PYTHON, ['-c', CHECK], { input: fsynced(writerOutput), timeout: 120_000 });
  expectExit(t, check, `read back every file closed ${what}`);
  const c = JSON.parse(check.stdout || '{}') as { files: number; bad: unknown[] };
  t.ok(c.files > 0, `the writers closed ${c.files} files`);
  t.same(c.bad, [], 'every one reads back intact');
}

t.test('kill -9 mid-write leaks blobs; gc --sweep reclaims exactly them; fsynced files intact', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-gc-');
  const url = `local:${join(dataDir, 'vol')}`;
  expectExit(t, await kvfs(['format', url], { dataDir }), 'format');
  // small write-back buffers: commits are frequent. Before each kill another process takes LMDB's write lock
  // (LMDB's own, shared by every process that opens the environment): the daemon's checkpoints wait for it, and
  // with a log limit of 1 byte (lmdb.ts: every write waits for a checkpoint) its next commit waits for them.
  const m = await mountKvfs(t, { store: url, dataDir, args: ['--write-buffer-mb', '4'], env: { KVFS_LOG_LIMIT_BYTES: '1' } });
  const { audit, survivors } = await crashUntilLeak(t, m, url, dataDir, {}, 70, 2000, async () => {
    const lock = await holdLmdbWriteLock(join(dataDir, 'vol'), 3000);
    return async () => void await lock.done;
  });

  // fsck after the crash: what it finds (counters a kill cut short, say), and an exit status that says so
  const fs1 = await kvfs(['fsck', url, '--json'], { dataDir, timeout: 120_000 });
  const found = (JSON.parse(fs1.stdout.split('\n').find((l) => l.startsWith('{')) ?? '{"problems":null}') as { problems: { kind: string }[] | null }).problems;
  t.ok(found !== null, 'fsck after the crash reports', { stdout: fs1.stdout, stderr: fs1.stderr });
  t.equal(fs1.code, found?.length ? 4 : 0, `fsck's exit status (${fs1.code}) says whether it found problems: ${found?.map((p) => p.kind).join(', ') || 'none'}`);

  const dry = await kvfs(['gc', url, '--sweep', '--dry-run', '--grace', '0'], { dataDir, timeout: 120_000 });
  expectExit(t, dry, 'kvfs gc --sweep --dry-run');
  const d = report(dry.stdout);
  t.equal(d?.leaked, audit?.unreferenced, 'the dry run finds exactly the unreferenced blobs', { report: d });
  t.equal(d?.leakedBytes, audit?.unreferencedBytes, 'and their bytes');
  const still = JSON.parse((await auditBlobs(url)).stdout) as Audit;
  t.equal(still.unreferenced, audit?.unreferenced, 'the dry run deleted nothing');

  const real = await kvfs(['gc', url, '--sweep', '--grace', '0'], { dataDir, timeout: 120_000 });
  expectExit(t, real, 'kvfs gc --sweep');
  const r = report(real.stdout);
  t.equal(r?.leaked, audit?.unreferenced, `gc deleted them: ${r?.leaked} blobs, ${r?.leakedBytes} bytes`, { report: r });
  t.match(real.stdout, /leaked blobs \d+ \([\d.]+ \w+\) removed/, 'its summary line says what went');
  const after = JSON.parse((await auditBlobs(url)).stdout) as Audit;
  t.equal(after.unreferenced, 0, 'the store holds no blob that nothing references');
  t.equal(after.queued, 0, 'and the GC queue is empty');
  t.comment(`before: ${JSON.stringify(audit)}; after: ${JSON.stringify(after)}`);
  const again = report((await kvfs(['gc', url, '--sweep', '--dry-run', '--grace', '0'], { dataDir, timeout: 120_000 })).stdout);
  t.equal(again?.leaked, 0, 'a second dry run finds nothing');
  await repairedClean(t, url, dataDir, {});

  await m.remount();
  await readBack(t, survivors, 'before the kills');
  await m.unmount();
});

t.test('on a 3-master Redis Cluster: kill -9 mid-write, the sweep waits for the dead session, then reclaims', { skip: redisAvailable() ?? false }, async (t) => {
  const cluster = await RedisCluster.start(t, { masters: 3 });
  const url = cluster.url('gc');
  const ports = (await cluster.masters()).map((x) => x.port);
  const dataDir = tempDir(t, 'kvfs-test-gc-');
  expectExit(t, await kvfs(['format', url], { dataDir, env: NO_PW }), 'format');
  // sessions of 12 s (not 30): the killed session is still live at the first sweep (a heartbeat every 4 s leaves
  // it at least 8 s), and the wait for it to expire is short
  const m = await mountKvfs(t, { store: url, dataDir, env: NO_PW, args: ['--write-buffer-mb', '4', '--session-ttl', '12'] });
  // Just before each kill the metadata's master stops taking writes (a real server's CLIENT PAUSE): commits wait
  // while the blobs of their chunks, on the other masters, are written; the kill falls between them.
  const meta = await cluster.slotOwner(Number((await cluster.cli(ports[0]!, 'CLUSTER', 'KEYSLOT', 'gc')).trim()));
  const { audit, survivors } = await crashUntilLeak(t, m, url, dataDir, NO_PW, 40, 1500, async () => {
    await cluster.cli(meta, 'CLIENT', 'PAUSE', '5000', 'WRITE');
    return async () => void await cluster.cli(meta, 'CLIENT', 'UNPAUSE');
  });

  // the killed mount's session is live until its heartbeat expires: the sweep leaves its blobs till then
  const first = report((await kvfs(['gc', url, '--sweep', '--dry-run', '--grace', '0'], { dataDir, env: NO_PW, timeout: 120_000 })).stdout);
  t.ok(first && first.leaked === 0 && first.leakedLive === audit?.unreferenced,
    `right after the kill the sweep leaves the dead mount's ${first?.leakedLive} blobs alone: its session may still be live`, { report: first });
  let dry: Report | undefined;
  const until = Date.now() + 60_000;
  for (;;) {
    dry = report((await kvfs(['gc', url, '--sweep', '--dry-run', '--grace', '0'], { dataDir, env: NO_PW, timeout: 120_000 })).stdout);
    if (dry?.leakedLive === 0 || Date.now() > until) break;
    await new Promise((r) => setTimeout(r, 2000));
  }
  t.equal(dry?.leakedLive, 0, 'within a minute the dead session no longer counts as live');
  t.equal(dry?.leaked, audit?.unreferenced, 'then the dry run finds exactly the unreferenced blobs', { report: dry });
  const fs1 = await kvfs(['fsck', url], { dataDir, env: NO_PW, timeout: 120_000 });
  t.ok(fs1.code === 0 || fs1.code === 4, `fsck after the crash: exit ${fs1.code}`, { stdout: fs1.stdout });
  const real = report((await kvfs(['gc', url, '--sweep', '--grace', '0'], { dataDir, env: NO_PW, timeout: 120_000 })).stdout);
  t.equal(real?.leaked, audit?.unreferenced, `gc deleted them: ${real?.leaked} blobs, ${real?.leakedBytes} bytes`);
  const after = JSON.parse((await auditBlobs(url)).stdout || '{}') as Audit;
  t.equal(after.unreferenced, 0, 'the cluster holds no blob that nothing references');
  t.comment(`before: ${JSON.stringify(audit)}; after: ${JSON.stringify(after)}`);
  await repairedClean(t, url, dataDir, NO_PW);
  await m.remount();
  await readBack(t, survivors, 'before the kills');
  // a shared store has no lock to take: the live mount's session is what keeps a sweep off its commits
  await raceSweeps(t, m, url, dataDir, NO_PW, 93, 6_000);
  await m.unmount();
});

/**
 * Sweeps (grace 0) one after another for `ms` while a writer keeps writing and rewriting files on the live mount m:
 * none takes a blob (the mount's session is live), and afterwards every file the writer closed reads back.
 */
async function raceSweeps(t: Test, m: Mounted, url: string, dataDir: string, env: Env, seed: number, ms: number): Promise<void> {
  const dir = join(m.mnt, `race${seed}`);
  await run('mkdir', ['-p', dir]);
  const writer = start(PYTHON, ['-c', WRITER, dir, String(seed)], { timeout: 120_000 });
  let sweeps = 0;
  let live = 0;
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const g = await kvfs(['gc', url, '--sweep', '--grace', '0'], { dataDir, env, timeout: 120_000 });
    if (!expectExit(t, g, `sweep ${sweeps + 1} beside the mount`)) break;
    const r = report(g.stdout);
    t.equal(r?.leaked, 0, `sweep ${sweeps + 1}: nothing of the live mount taken`, { report: r });
    live += r?.leakedLive ?? 0;
    sweeps++;
  }
  writer.kill();
  const w = await writer.result;
  t.ok(sweeps >= 3, `${sweeps} sweeps ran while the mount wrote`);
  t.comment(`unreferenced blobs of the live mount seen (left alone): ${live}`);
  await readBack(t, w.stdout, 'while gc swept');
}

t.test('sweeps beside a live mount that is writing never take what it commits', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-gc-');
  const url = `local:${join(dataDir, 'vol')}`;
  expectExit(t, await kvfs(['format', url], { dataDir }), 'format');
  const m = await mountKvfs(t, { store: url, dataDir });
  await raceSweeps(t, m, url, dataDir, {}, 91, 8_000);
  await m.unmount();
});

t.test('gc: bad input is a one-line error', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-gc-');
  expectCliError(t, await kvfs(['gc', `local:${join(dataDir, 'none')}`], { dataDir }), 'gc of a store that does not exist', /holds no kvfs volume/);
  expectCliError(t, await kvfs(['gc', 'memory:'], { dataDir }), 'gc of memory:', /its own janitor/);
  const url = `local:${join(dataDir, 'vol')}`;
  expectExit(t, await kvfs(['format', url], { dataDir }), 'format');
  expectCliError(t, await kvfs(['gc', url, '--grace=-1'], { dataDir }), 'gc --grace -1', /bad --grace/);
  const ok = await kvfs(['gc', url], { dataDir });
  expectExit(t, ok, 'gc of a clean volume');
  t.match(ok.stdout, /orphans 0, dead sessions 0, purged inodes 0, queued blobs 0/, 'nothing to do on a clean volume');
  t.notMatch(ok.stdout, /\x1b\[/, 'not on a terminal: plain lines, no escape sequences');
  // on a terminal (script(1) gives it one): a progress bar
  const tty = await run('script', ['-qec', `${process.execPath} ${join(REPO, 'bin', 'kvfs.js')} gc ${url} --sweep --grace 0`, '/dev/null'],
    { env: { KVFS_DATA_DIR: dataDir }, timeout: 60_000 });
  expectExit(t, tty, 'gc on a terminal');
  t.match(tty.stdout, /kvfs gc: sessions\s+[\u2588\u2591]+ \d/, 'a progress bar is drawn', { out: tty.stdout.slice(0, 400) });
  t.match(tty.stdout, /leaked blobs 0 \(0 B\) removed/, 'and the summary follows it');
});
