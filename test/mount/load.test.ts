/**
 * `kvfs load` (src/volume/load.ts, load-job.ts, bin/load.ts): a local tree written straight into a volume, as a
 * job in the store, through the real CLI; what it wrote is read through a real mount.
 *  1. Local store: a tree of every kind of entry (test/helpers/load-tree.ts) loaded into /data; through a mount
 *     `diff -r` finds nothing and the description (modes, owners, link counts, times in ns, symlink targets,
 *     xattrs, contents) equals the source's; fsck is clean; a rerun writes nothing; a blob changed in the raw
 *     store is found by the verify phase and written again.
 *  2. A 3-master Redis Cluster, with a mount already running: the load under bursts of CLIENT PAUSE WRITE on every
 *     master (with a short --store-timeout, so the loader itself retries) completes; the live mount sees the tree
 *     within its entry timeout; a store that fills (maxmemory) waits and completes once maxmemory is raised; a
 *     store paused past --deadline fails the job with a clear message in bounded time, and the same command
 *     resumes it afterwards.
 *  3. kill -9 of the loader mid-load, then the same command: the tree is identical, the job succeeded, and
 *     `kvfs load --clear` removes exactly the blobs the kill left (gc's dry run counts them before, none after).
 *  4. --cancel and --cancel --force in every state of a running job (KVFS_LOAD_HOLD holds the loader at the start
 *     of a state: a test hook), then a rerun resumes to success; --cancel of an ended job, --clear of a running one.
 *  5. Bad input: one-line errors and nothing written.
 */
import t, { type Test } from 'tap';
import { chmodSync, chownSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expectCliError, expectExit, sameLines } from '../helpers/assert.js';
import { kvfs, kvfsBin, mountKvfs, run, start, tempDir, type Started } from '../helpers/mount.js';
import { ensureUser, TEST_USER } from '../helpers/run.js';
import { describeTree, makeTree, type TreeSpec } from '../helpers/load-tree.js';
import { onStore } from '../helpers/store.js';
import { RedisCluster, redisAvailable } from '../helpers/redis-cluster.js';

t.setTimeout(300_000);

const NO_PW = { KVFS_REDIS_PASSWORD: undefined, KVFS_REDIS_PASSWORD_FILE: undefined };
type Env = Record<string, string | undefined>;

interface Summary { state: string; files: number; done: number; skipped: number; failed: number; retried: number; verified: number; repaired: number }

/** the JSON summary line a load printed last */
function summary(stdout: string): Summary | undefined {
  const line = stdout.split('\n').reverse().find((l) => l.startsWith('kvfs load: {'));
  return line ? JSON.parse(line.slice('kvfs load: '.length)) as Summary : undefined;
}

interface JobView { state: string; owner?: { pid: number }; counters: Summary; error?: string; sessions: string[] }

async function jobOf(target: string, dataDir: string, env: Env = {}): Promise<JobView | undefined> {
  const r = await kvfs(['load', '--status', target, '--json'], { dataDir, env });
  const line = r.stdout.split('\n').find((l) => l.startsWith('['));
  return line ? (JSON.parse(line) as JobView[])[0] : undefined;
}

/** a data dir, a source tree in it (makeTree) and a local volume formatted with `format` arguments */
async function localScene(t: Test, spec: TreeSpec, format: string[] = []): Promise<{ dataDir: string; src: string; url: string }> {
  const dataDir = tempDir(t, 'kvfs-test-load-');
  const src = join(dataDir, 'src');
  await makeTree(t, src, spec);
  const url = `local:${join(dataDir, 'vol')}`;
  expectExit(t, await kvfs(['format', url, ...format], { dataDir }), 'format');
  return { dataDir, src, url };
}

/** a `kvfs` process left running (its stdin closed), for a test to act while it works */
function startKvfs(args: string[], env: Env, timeout = 120_000): Started {
  const s = start(process.execPath, [kvfsBin(), ...args], { env, timeout });
  s.end();
  return s;
}

/** the mount's copy described as the source is, and compared line for line */
async function sameTree(t: Test, source: string, copy: string, what: string): Promise<void> {
  const [a, b] = [await describeTree(source), await describeTree(copy)];
  // the root of the load is "." in both; its link count depends on the subdirectories only
  sameLines(t, b, a, `${what}: modes, owners, link counts, times (ns), symlinks, xattrs and contents as the source's`);
  const d = await run('diff', ['-r', '--no-dereference', '-x', 'fifo', source, copy], { timeout: 120_000 });
  expectExit(t, d, `${what}: diff -r finds no difference`);
}

t.test('local store: a tree of every kind of entry, loaded, identical through a mount; a rerun writes nothing; verify repairs', async (t) => {
  // a 64 KiB chunk: the 17 MiB file has more than 256 chunks (it is made as an orphan and linked at the end)
  const { dataDir, src, url } = await localScene(t, { small: 300, big: [1_500_000, 17 << 20] }, ['--chunk-size', '64K']);
  const first = await kvfs(['load', src, `${url}:/data`], { dataDir, timeout: 120_000 });
  expectExit(t, first, 'kvfs load');
  const s1 = summary(first.stdout);
  t.equal(s1?.state, 'succeeded', 'the job succeeded', { summary: s1 });
  t.equal(s1?.failed, 0, 'nothing failed');
  t.equal(s1?.done, s1?.files, `every entry written (${s1?.done})`);
  t.match(first.stdout, /kvfs load: .* -> .*:\/data: succeeded: \d+ written/, 'a summary line');
  expectExit(t, await kvfs(['fsck', url], { dataDir, timeout: 60_000 }), 'fsck finds the volume clean');

  const again = await kvfs(['load', src, `${url}:/data`], { dataDir, timeout: 120_000 });
  expectExit(t, again, 'the same load again');
  const s2 = summary(again.stdout);
  t.equal(s2?.done, 0, 'a rerun writes nothing', { summary: s2 });
  t.equal(s2?.skipped, s1?.files, 'every entry is there already');
  t.equal(s2?.verified, s1?.files, 'and verified');

  const m = await mountKvfs(t, { store: url, dataDir });
  await sameTree(t, src, join(m.mnt, 'data'), 'through a mount');
  await m.unmount();

  // a blob changed behind the volume's back: the verify phase compares bytes, finds it, and writes it again
  const bad = await onStore(url, `
  for (const k of await store.keys('c/')) {
    const e = decodeChunk(await store.get(k));
    const b = await store.get('b/' + e.blobId);
    if (!b || b.length < 1000) continue;
    const x = Buffer.from(b); x[500] ^= 0xff;
    await store.del(['b/' + e.blobId]); await store.put('b/' + e.blobId, x); await store.sync();
    console.log(k); break;
  }`);
  expectExit(t, bad, 'flip a byte of a blob in the raw store');
  const third = await kvfs(['load', src, `${url}:/data`], { dataDir, timeout: 120_000 });
  expectExit(t, third, 'the load again');
  const s3 = summary(third.stdout);
  t.equal(s3?.repaired, 1, 'verify found the changed file and wrote it again', { summary: s3, out: third.stdout });
  t.match(third.stdout, /differs in the volume from the source: written again/, 'and said so');
  const m2 = await mountKvfs(t, { store: url, dataDir });
  await sameTree(t, src, join(m2.mnt, 'data'), 'after the repair');
  await m2.unmount();
  t.match((await kvfs(['load', '--status', url], { dataDir })).stdout, /\/data <- .*: succeeded, no loader; files \d+\/\d+/, '--status lists the job');
  t.notMatch(first.stdout, /\x1b\[/, 'not on a terminal: plain lines, no escape sequences');
  // on a terminal (script(1) gives it one): a bar with files, bytes, rates, retries; then the summary
  const tty = await run('script', ['-qec', `${process.execPath} ${kvfsBin()} load ${src} ${url}:/tty`, '/dev/null'],
    { env: { KVFS_DATA_DIR: dataDir }, timeout: 60_000 });
  expectExit(t, tty, 'kvfs load on a terminal');
  t.match(tty.stdout, /kvfs load: (scanning|loading|verifying|succeeded)\s+[\u2588\u2591]+ \d+\/\d+ \| \d+\/\d+ (files|verified), .* files\/s, .* MB\/s, \d+ retried, \d+ failed/,
    'a progress bar is drawn', { out: tty.stdout.slice(0, 600) });
  t.match(tty.stdout, /succeeded: \d+ written/, 'and the summary follows it');
});

t.test('on a 3-master Redis Cluster: throttled, filled, down: it completes or fails clearly; a live mount sees it', { skip: redisAvailable() ?? false }, async (t) => {
  const cluster = await RedisCluster.start(t, { masters: 3 });
  const ports = (await cluster.masters()).map((x) => x.port);
  const url = cluster.url('load');
  const dataDir = tempDir(t, 'kvfs-test-load-');
  const src = join(dataDir, 'src');
  await makeTree(t, src, { small: 600, big: [5 << 20], perDir: 200 });
  expectExit(t, await kvfs(['format', url], { dataDir, env: NO_PW }), 'format');
  const live = await mountKvfs(t, { store: url, dataDir, env: NO_PW, args: ['--entry-timeout', '1', '--attr-timeout', '1'] });
  const pauseAll = (ms: number) => Promise.all(ports.map((p) => cluster.cli(p, 'CLIENT', 'PAUSE', String(ms), 'WRITE')));
  const unpauseAll = () => Promise.all(ports.map((p) => cluster.cli(p, 'CLIENT', 'UNPAUSE')));

  await t.test('bursts of CLIENT PAUSE WRITE on every master: the loader retries and completes', async (t) => {
    // a store call gives up after 1 s, so the pauses reach the loader (its retries, its gate), not only the engine
    const load = startKvfs(['load', src, `${url}:/burst`, '--store-timeout', '1', '--jobs', '8'], { ...NO_PW, KVFS_DATA_DIR: dataDir }, 120_000);
    await load.waitFor(/loading/, 30_000);
    for (let i = 0; i < 2; i++) {
      await pauseAll(1500);
      await new Promise((r) => setTimeout(r, 1800));
    }
    const r = await load.result;
    expectExit(t, r, 'the load under pauses');
    const s = summary(r.stdout);
    t.equal(s?.state, 'succeeded', 'succeeded', { summary: s });
    t.ok((s?.retried ?? 0) > 0, `the loader retried writes the store held back (${s?.retried})`);
    // the mount that ran all along sees the new tree within its entry timeout
    await new Promise((r) => setTimeout(r, 1500));
    await sameTree(t, src, join(live.mnt, 'burst'), 'through the mount that ran beside the load');
  });

  await t.test('a full store (maxmemory) waits; raised mid-load, the load completes', async (t) => {
    const used = await Promise.all(ports.map(async (p) => Number(/used_memory:(\d+)/.exec(await cluster.cli(p, 'INFO', 'memory'))?.[1])));
    await Promise.all(ports.map((p, i) => cluster.cli(p, 'CONFIG', 'SET', 'maxmemory', String(used[i]! + (2 << 20)))));
    const load = startKvfs(['load', src, `${url}:/full`, '--store-timeout', '1', '--deadline', '60'], { ...NO_PW, KVFS_DATA_DIR: dataDir }, 120_000);
    try {
      await load.waitFor(/the store is full .*waiting for space/, 60_000);
    } finally {
      await Promise.all(ports.map((p) => cluster.cli(p, 'CONFIG', 'SET', 'maxmemory', '0')));
    }
    const r = await load.result;
    expectExit(t, r, 'the load, once maxmemory was raised');
    t.equal(summary(r.stdout)?.state, 'succeeded', 'succeeded');
    await new Promise((r) => setTimeout(r, 1500));
    await sameTree(t, src, join(live.mnt, 'full'), 'the tree loaded into a store that filled');
  });

  await t.test('a store down past --deadline: the job fails with a clear message in bounded time; the same command resumes', async (t) => {
    const args = ['load', src, `${url}:/down`, '--store-timeout', '1', '--deadline', '4'];
    const load = startKvfs(args, { ...NO_PW, KVFS_DATA_DIR: dataDir }, 120_000);
    await load.waitFor(/loading/, 30_000);
    const at = Date.now();
    await pauseAll(30_000);
    let r;
    try {
      r = await load.result;
    } finally {
      await unpauseAll();
    }
    const took = Date.now() - at;
    t.equal(r.code, 1, 'the loader exits 1', { out: r.stdout, err: r.stderr });
    const [first, ...rest] = r.stderr.trimEnd().split('\n');
    t.match(first, /^kvfs: the store made no progress for 4 s \(last error: .*\): the load failed; run the same command again to resume$/,
      'one line: what happened and what to do');
    t.ok(rest.every((l) => l.startsWith('kvfs: warning: ')), 'and nothing else but warnings (a --store-timeout this short has one)', { rest });
    t.ok(took < 20_000, `it ended ${took} ms after the store stopped (deadline 4 s, store calls 1 s)`);
    const again = await kvfs(args.slice(0, 3), { dataDir, env: NO_PW, timeout: 120_000 });
    expectExit(t, again, 'the same command, the store back');
    t.equal(summary(again.stdout)?.state, 'succeeded', 'resumed to success');
    await new Promise((r) => setTimeout(r, 1500));
    await sameTree(t, src, join(live.mnt, 'down'), 'the tree after the outage');
  });
  await t.test('a second loader of the same target, from anywhere: refused by the job in the store', async (t) => {
    const first = startKvfs(['load', src, `${url}:/twice`], { ...NO_PW, KVFS_DATA_DIR: dataDir, KVFS_LOAD_HOLD: 'loading' }, 60_000);
    await first.waitFor(/loading/, 20_000);
    const other = tempDir(t, 'kvfs-test-load-other-');
    expectCliError(t, await kvfs(['load', src, `${url}:/twice`], { dataDir: other, env: NO_PW }), 'a second load of the same target',
      /a load into \/twice is running \(pid \d+ on .*, loading\): wait for it, or stop it with: kvfs load --cancel/);
    expectExit(t, await kvfs(['load', '--cancel', '--force', `${url}:/twice`], { dataDir: other, env: NO_PW }), 'cancel the first');
    await first.result;
  });
  await live.unmount();
});

t.test('kill -9 mid-load, the same command again: identical tree, succeeded; --clear takes what the kill left', async (t) => {
  const { dataDir, src, url } = await localScene(t, { small: 2000, big: [20 << 20, 20 << 20], perDir: 500 }, ['--chunk-size', '64K']);
  const args = ['load', src, `${url}:/data`, '--jobs', '2'];
  // the kill falls while a batch waits between its blob puts and its transaction (KVFS_LOAD_HOLD=commit, a test
  // hook: the loader is fast enough here that a kill at a moment chosen from outside would often miss the load)
  const load = startKvfs(args, { KVFS_DATA_DIR: dataDir, KVFS_LOAD_HOLD: 'commit' }, 120_000);
  await load.waitFor(/holding with a batch's blobs put, before its commit/, 60_000);
  await new Promise((r) => setTimeout(r, 600)); // the job's record is renewed every 0.5 s
  load.kill('SIGKILL');
  await load.result;
  const killed = await jobOf(`${url}:/data`, dataDir);
  t.equal(killed?.state, 'loading', 'the job was loading when its loader was killed', { job: killed });
  const done = killed?.counters.done ?? 0;
  t.ok(done > 0 && done < (killed?.counters.files ?? 0), `killed mid-load (${done} of ${killed?.counters.files} written)`);

  const again = await kvfs(args, { dataDir, timeout: 120_000 });
  expectExit(t, again, 'the same command again');
  const s = summary(again.stdout);
  t.equal(s?.state, 'succeeded', 'the job succeeded', { summary: s });
  t.ok((s?.skipped ?? 0) > 0, `what the first run wrote was not written again (${s?.skipped} there already)`);
  const m = await mountKvfs(t, { store: url, dataDir });
  await sameTree(t, src, join(m.mnt, 'data'), 'after kill -9 and a rerun');
  await m.unmount();

  const dry = await kvfs(['gc', url, '--sweep', '--dry-run', '--grace', '0'], { dataDir });
  expectExit(t, dry, 'gc --sweep --dry-run');
  const leaked = Number(/"leaked":(\d+)/.exec(dry.stdout)?.[1]);
  t.ok(leaked > 0, `the kill left blobs no chunk map names: ${leaked} (the held batch's)`);
  const cleared = await kvfs(['load', '--clear', `${url}:/data`], { dataDir });
  expectExit(t, cleared, 'kvfs load --clear');
  const m2 = /(\d+) unfinished files and (\d+) unreferenced blobs/.exec(cleared.stdout);
  t.equal(Number(m2?.[2]), leaked, `--clear removed the ${leaked} blobs the kill left`, { out: cleared.stdout });
  t.ok(Number(m2?.[1]) <= 2, `and the unfinished large files (${m2?.[1]})`);
  const after = await kvfs(['gc', url, '--sweep', '--dry-run', '--grace', '0'], { dataDir });
  t.match(after.stdout, /"leaked":0,/, 'gc finds nothing orphaned afterwards');
  expectExit(t, await kvfs(['fsck', url], { dataDir, timeout: 60_000 }), 'fsck finds the volume clean');
  t.match((await kvfs(['load', '--status', url], { dataDir })).stdout, /no load jobs/, 'the job record is gone');
  const m3 = await mountKvfs(t, { store: url, dataDir });
  await sameTree(t, src, join(m3.mnt, 'data'), 'the loaded files stay after --clear');
  await m3.unmount();
});

t.test('--cancel and --cancel --force in every state of a running job; a rerun resumes', async (t) => {
  const { dataDir, src, url } = await localScene(t, { small: 40 });
  const target = `${url}:/c`;
  for (const state of ['pending', 'scanning', 'loading', 'verifying']) {
    for (const force of [false, true]) {
      const what = `${force ? '--cancel --force' : '--cancel'} while ${state}`;
      const load = startKvfs(['load', src, target], { KVFS_DATA_DIR: dataDir, KVFS_LOAD_HOLD: state }, 60_000);
      // the loader prints each state as it enters it (and holds there)
      await load.waitFor(new RegExp(`^kvfs load: ${state}:`), 20_000);
      const job = await jobOf(target, dataDir);
      t.equal(job?.state, state, `${what}: the job in the store is ${state}`);
      t.ok(job?.owner, `${what}: with its loader`);
      const c = await kvfs(['load', '--cancel', ...(force ? ['--force'] : []), target], { dataDir, timeout: 60_000 });
      expectExit(t, c, what);
      const r = await load.result;
      t.equal(r.code, 3, `${what}: the loader stops, exit 3`, { err: r.stderr });
      t.match(r.stderr, force ? /canceled \(kvfs load --cancel --force\)/ : /canceled \(kvfs load --cancel\): stopped at a safe point/, `${what}: and says why`);
      const after = await jobOf(target, dataDir);
      t.equal(after?.state, 'canceled', `${what}: the job is canceled`);
      t.notOk(after?.owner, `${what}: and has no loader`);
    }
  }
  const ended = await kvfs(['load', '--cancel', target], { dataDir });
  expectExit(t, ended, '--cancel of an ended job');
  t.match(ended.stdout, /has ended already \(canceled\): nothing to cancel/, 'says there is nothing to cancel');
  const resumed = await kvfs(['load', src, target], { dataDir, timeout: 60_000 });
  expectExit(t, resumed, 'the same command after the cancels');
  t.equal(summary(resumed.stdout)?.state, 'succeeded', 'resumes to success');
  // --clear of a running job is refused; the running one is untouched
  const load = startKvfs(['load', src, `${url}:/held`], { KVFS_DATA_DIR: dataDir, KVFS_LOAD_HOLD: 'loading' }, 60_000);
  await load.waitFor(/loading/, 20_000);
  expectCliError(t, await kvfs(['load', '--clear', `${url}:/held`], { dataDir }), '--clear of a running job', /is running \(pid \d+ on .*\): stop it first with: kvfs load --cancel/);
  // on a local store the first loader holds the store's lock: a second loader (of any target) is refused by it
  expectCliError(t, await kvfs(['load', src, `${url}:/held`], { dataDir }), 'a second load into a local store', /is in use by kvfs pid \d+ \(load\)/);
  expectExit(t, await kvfs(['load', '--cancel', '--force', `${url}:/held`], { dataDir }), 'cancel it');
  await load.result;
});

t.test('bad input: one line, nothing written', async (t) => {
  const { dataDir, src, url } = await localScene(t, { small: 10 });
  const nothing = async (what: string) => {
    const st = await kvfs(['load', '--status', url], { dataDir });
    t.match(st.stdout, /no load jobs/, `${what}: no job recorded`);
    const f = await kvfs(['fsck', url, '--json'], { dataDir });
    t.match(f.stdout, /"inodes":1,/, `${what}: the volume still holds only its root`);
  };
  expectCliError(t, await kvfs(['load', join(dataDir, 'nope'), url], { dataDir }), 'a missing source', /cannot load .*nope: no such directory/);
  writeFileSync(join(dataDir, 'afile'), 'x');
  expectCliError(t, await kvfs(['load', join(dataDir, 'afile'), url], { dataDir }), 'a source that is a file', /not a directory \(kvfs load takes a directory/);
  expectCliError(t, await kvfs(['load', src, `local:${join(dataDir, 'none')}`], { dataDir }), 'a store without a volume', /holds no kvfs volume/);
  expectCliError(t, await kvfs(['load', src, url, '--jobs', '0'], { dataDir }), '--jobs 0', /bad --jobs 0/);
  expectCliError(t, await kvfs(['load', src, `${url}:/a/../b`], { dataDir }), 'a path with ..', /'\.\.' is not allowed/);
  expectCliError(t, await kvfs(['load', '--status', '--clear', url], { dataDir }), 'two modes', /give one of --status, --cancel and --clear/);
  expectCliError(t, await kvfs(['load', '--cancel', `${url}:/x`], { dataDir }), '--cancel of no job', /no load job for \/x/);
  await nothing('after the refusals');
  // a target that is a file in the volume
  const m = await mountKvfs(t, { store: url, dataDir });
  writeFileSync(join(m.mnt, 'plain'), 'a file');
  expectCliError(t, await kvfs(['load', src, `${url}:/x`], { dataDir }), 'a mounted local store', /is in use by kvfs pid \d+ .*unmount it first.*a mount of a local store would not see the new files/);
  await m.unmount();
  expectCliError(t, await kvfs(['load', src, `${url}:/plain`], { dataDir }), 'a target that is a file', /the target \/plain is a file in the volume, not a directory/);
  expectCliError(t, await kvfs(['load', src, `${url}:/plain/deeper`], { dataDir }), 'a target below a file', /the target \/plain is a file in the volume/);
  t.match((await kvfs(['load', '--status', url], { dataDir })).stdout, /no load jobs/, 'no job recorded for a refused target');

  // unreadable entries (as an ordinary user: root reads everything): reported, counted, the rest loads
  const { uid, gid } = ensureUser();
  const udir = tempDir(t, 'kvfs-test-load-user-');
  chownSync(udir, uid, gid);
  const usrc = join(udir, 'src');
  mkdirSync(join(usrc, 'locked'), { recursive: true });
  writeFileSync(join(usrc, 'ok'), 'readable');
  writeFileSync(join(usrc, 'secret'), 'not for you');
  writeFileSync(join(usrc, 'locked', 'inside'), 'x');
  await run('chown', ['-R', `${uid}:${gid}`, usrc]);
  chmodSync(join(usrc, 'secret'), 0o000);
  chmodSync(join(usrc, 'locked'), 0o000);
  const uurl = `local:${join(udir, 'vol')}`;
  expectExit(t, await kvfs(['format', uurl], { dataDir: udir, user: TEST_USER }), 'format as a user');
  const r = await kvfs(['load', usrc, uurl], { dataDir: udir, user: TEST_USER, timeout: 60_000 });
  t.equal(r.code, 1, 'the load ends in failure (exit 1)', { out: r.stdout, err: r.stderr });
  t.match(r.stdout, /kvfs load: secret: cannot read it: EACCES/, 'the unreadable file is reported');
  t.match(r.stdout, /kvfs load: locked: cannot read it: EACCES/, 'so is the unreadable directory');
  t.match(r.stderr, /^kvfs: the load failed: 2 entries could not be loaded \(first: /, 'one line says how many');
  t.equal(summary(r.stdout)?.failed, 2, 'two counted as failed');
  t.equal(summary(r.stdout)?.done, 1, 'the readable file loaded');
});
