/**
 * A kvfs volume on a real Redis Cluster, through real mounts (each subtest starts its own cluster with
 * test/helpers/redis-cluster.ts):
 *  1. a tree copied in with cp -r reads back identical, and its blobs are spread over every master while all
 *     metadata sits in the volume's one slot;
 *  2. live slot migration (half of a master's slots, then the volume's metadata slot) under a checksummed
 *     writer and reader: no error, no wrong byte, every file intact afterwards (page cache dropped, and
 *     from a fresh mount);
 *  3. kill -9 of a master (one serving only blob slots, then the one holding the metadata slot) under load:
 *     every call succeeds or fails within the store deadline, a replica takes over, the mount recovers
 *     without a remount, and every file fsynced before the kill reads back intact;
 *  4. two mounts of one volume: close-to-open (new files, overwrites that grow, shrink or keep the size, a
 *     file the reader held open and cached), renames and unlinks seen within the entry timeout, a file
 *     unlinked on one mount while open on the other stays readable, and the orphan of a killed mount is
 *     cleaned up by a live one.
 * The measured numbers (migration volume and time, longest call and recovery time in a failover, visibility
 * delays) are printed as TAP comments.
 */
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expectExit } from '../helpers/assert.js';
import { opsWithin, startLoad, stopFile, verifyDir, type LoadOp, type LoadSummary } from '../helpers/io-load.js';
import { daemonStats } from '../../bin/diag.js';
import { bash, kvfs, mountKvfs, run, tempDir } from '../helpers/mount.js';
import { prngU32 } from '../helpers/prng.js';
import { pySession } from '../helpers/py-session.js';
import { RedisCluster, redisAvailable } from '../helpers/redis-cluster.js';
import { bytes, makeTree } from '../helpers/tree.js';

t.setTimeout(480_000);
const skip = redisAvailable();

const KiB = 1024;
const MiB = 1024 * KiB;
/** the mounts' --store-timeout: the default */
const DEADLINE_MS = 10_000;
/** what a call may take beyond the store deadline (the kernel, several FUSE requests per call, scheduling) */
const MARGIN_MS = 2_000;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;
const secs = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

/** the cluster slot of a key, as the cluster computes it */
async function keySlot(cluster: RedisCluster, key: string): Promise<number> {
  const [m] = await cluster.masters();
  return Number(await cluster.cli(m!.port, 'CLUSTER', 'KEYSLOT', key));
}

/** keys matching pattern on each master (redis-cli --scan), by port */
async function keysPerMaster(cluster: RedisCluster, pattern: string): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  for (const m of await cluster.masters()) {
    const text = await cluster.cli(m.port, '--scan', '--pattern', pattern);
    out.set(m.port, text.split('\n').filter((l) => l.trim() !== '').length);
  }
  return out;
}

/** formats VOLUME on the cluster; returns its URL and a data dir for the CLI and daemons */
async function formatVolume(t: Test, cluster: RedisCluster, volume: string): Promise<{ url: string; dataDir: string }> {
  const url = cluster.url(volume);
  const dataDir = tempDir(t, 'kvfs-test-data-');
  expectExit(t, await kvfs(['format', url], { dataDir }), `kvfs format ${url}`);
  return { url, dataDir };
}

/** drops the kernel's page, dentry and inode caches (from a child process) */
async function dropCaches(t: Test): Promise<void> {
  expectExit(t, await bash('echo 3 > /proc/sys/vm/drop_caches'), 'drop the kernel caches');
}

function expand(ranges: [number, number][]): number[] {
  const out: number[] = [];
  for (const [a, b] of ranges) for (let s = a; s <= b; s++) out.push(s);
  return out;
}

const ZERO_MIB_SHA256 = createHash('sha256').update(Buffer.alloc(MiB)).digest('hex');
/** ' (read all zeros)' when a pread_all result is 1 MiB of zeros, for messages */
const zeros = (r: { ok: boolean; value?: unknown }) =>
  r.ok && (r.value as { sha256?: string }).sha256 === ZERO_MIB_SHA256 ? ' (it read 1 MiB of zeros)' : '';

/** a load's summary without its per-file log, for diagnostics */
const brief = (s: LoadSummary) => ({ ...s, ops: `${s.ops.length} files` });

// -------------------------------------------------------------------------------------------------------------

t.test('cp -r of a tree: identical through the mount, blobs on every master, metadata in one slot', { skip }, async (t) => {
  const cluster = await RedisCluster.start(t, { masters: 3 });
  const volume = 'spread';
  const { url, dataDir } = await formatVolume(t, cluster, volume);
  const local = tempDir(t, 'kvfs-test-src-');
  const tree = makeTree(join(local, 'tree'), { files: 300, seed: 31 });
  // a few more files over 1 MiB (makeTree has two), of sizes that end inside a chunk
  mkdirSync(join(local, 'tree', 'big'));
  const rnd = prngU32(32);
  for (let i = 0; i < 6; i++) writeFileSync(join(local, 'tree', 'big', `big-${i}.bin`), bytes(MiB + (rnd() % (2 * MiB)), 320 + i));

  const m = await mountKvfs(t, { store: url, dataDir });
  expectExit(t, await run('cp', ['-r', tree.root, `${m.mnt}/tree`], { timeout: 120_000 }), 'cp -r the tree onto the mount');
  expectExit(t, await run('diff', ['-r', tree.root, `${m.mnt}/tree`], { timeout: 120_000 }), 'diff -r finds no difference');

  const files = await run('find', [tree.root, '-type', 'f', '-size', '+1M']);
  t.ok(files.stdout.trim().split('\n').length >= 6, `files over 1 MiB were copied (${files.stdout.trim().split('\n').length})`);

  const blobs = await keysPerMaster(cluster, `kvfs:${volume}:b/*`);
  const total = [...blobs.values()].reduce((a, b) => a + b, 0);
  t.comment(`blobs per master: ${[...blobs].map(([p, n]) => `${p}: ${n}`).join(', ')} (${total} in all)`);
  t.equal(blobs.size, 3, 'three masters');
  for (const [port, n] of blobs) t.ok(n > 0, `master ${port} holds blobs of the volume (${n})`);

  const metaSlot = await keySlot(cluster, `kvfs:{${volume}}:v`);
  const metaOwner = await cluster.slotOwner(metaSlot);
  const meta = await keysPerMaster(cluster, `kvfs:{${volume}}*`);
  t.ok((meta.get(metaOwner) ?? 0) > 300, `the metadata is on the owner of slot ${metaSlot}, ${metaOwner} (${meta.get(metaOwner)} keys)`);
  for (const [port, n] of meta) if (port !== metaOwner) t.equal(n, 0, `no metadata on master ${port}`);

  // read back cold: the blobs come through the blob reader's own connections (redis-blobs.ts), as kvfs stats says
  expectExit(t, await bash('echo 3 > /proc/sys/vm/drop_caches'), 'drop the kernel caches');
  expectExit(t, await run('diff', ['-r', join(tree.root, 'big'), `${m.mnt}/tree/big`], { timeout: 120_000 }), 'the big files read back cold');
  const reads = ((await daemonStats(m.mnt)) as { store?: { blobReads?: { served: number; handedBack: number } } }).store?.blobReads;
  t.ok(reads && reads.served > 0, `blob reads on the reader's connections: ${reads?.served}, through ioredis: ${reads?.handedBack}`);
  t.equal((await m.unmount()).code, 0, 'clean unmount');
});

// -------------------------------------------------------------------------------------------------------------

t.test('slot migration under I/O: no error, no wrong byte, every file intact', { skip }, async (t) => {
  const cluster = await RedisCluster.start(t, { masters: 3 });
  const volume = 'migrate';
  const { url, dataDir } = await formatVolume(t, cluster, volume);
  // a small blob cache, so the reader's re-reads of older files reach the store during the migration
  const m = await mountKvfs(t, { store: url, dataDir, args: ['--cache-mb', '8'] });
  const local = tempDir(t, 'kvfs-test-load-');
  const dir = `${m.mnt}/load`;
  expectExit(t, await run('mkdir', [dir]), 'mkdir on the mount');

  // from: the master holding the volume's metadata slot; first at least half of its slots (every other one,
  // not the metadata slot: blob slots), then the metadata slot itself, both while the load runs
  const metaSlot = await keySlot(cluster, `kvfs:{${volume}}:v`);
  const from = await cluster.slotOwner(metaSlot);
  const masters = await cluster.masters();
  const to = masters.find((x) => x.port !== from)!.port;
  const own = expand(masters.find((x) => x.port === from)!.slots);
  const half = own.filter((s, i) => i % 2 === 0 && s !== metaSlot);
  for (const s of own) if (half.length < Math.ceil(own.length / 2) && s !== metaSlot && !half.includes(s)) half.push(s);

  const writer = startLoad(t, 'writer', dir, { seed: 201, stopFile: stopFile(local, 'writer') });
  const reader = startLoad(t, 'reader', dir, { seed: 202, stopFile: stopFile(local, 'reader') });
  await sleep(2000);
  const t0 = Date.now();
  let t1 = t0;
  let t2 = t0;
  const failures: string[] = [];
  try {
    await cluster.migrateSlots(from, to, half, { batch: 20 });
    t1 = Date.now();
    // small batches keep the metadata slot half-moved for a while (multi-key scripts get TRYAGAIN meanwhile)
    await cluster.migrateSlots(from, to, [metaSlot], { batch: 2 });
    t2 = Date.now();
  } catch (e) {
    failures.push((e as Error).message);
  }
  t.same(failures, [], 'the migrations completed');
  await sleep(1500);
  const w = await writer.stop();
  const r = await reader.stop();

  t.equal(w.errorCount, 0, 'the writer saw no error', { writer: brief(w) });
  t.equal(r.errorCount, 0, 'the reader saw no error', { reader: brief(r) });
  t.equal(r.mismatchCount, 0, 'every file the reader read matched its checksum', { mismatches: r.mismatches });
  const wDuring = opsWithin(w.ops, t0, t2);
  const rDuring = opsWithin(r.ops, t0, t2);
  const rMeta = opsWithin(r.ops, t1, t2);
  const wMeta = opsWithin(w.ops, t1, t2);
  t.ok(wDuring.files > 0, `files were written during the migration (${wDuring.files})`);
  t.ok(rDuring.files > 0, `files were read back during the migration (${rDuring.files})`);

  const after = await cluster.masters();
  const toRanges = after.find((x) => x.port === to)!.slots;
  const fromRanges = after.find((x) => x.port === from)?.slots ?? [];
  const inR = (s: number, r: [number, number][]) => r.some(([a, b]) => s >= a && s <= b);
  t.ok(half.every((s) => inR(s, toRanges) && !inR(s, fromRanges)), `all ${half.length} blob slots moved from ${from} to ${to}`);
  t.equal(await cluster.slotOwner(half[0]!), to, `slotOwner(${half[0]}) is ${to}`);
  t.equal(await cluster.slotOwner(metaSlot), to, `the metadata slot ${metaSlot} moved too: slotOwner is ${to}`);
  t.ok(half.length >= own.length / 2, `at least half of ${from}'s ${own.length} slots moved (${half.length} + the metadata slot)`);

  t.comment(`migration: ${half.length} of ${own.length} slots of ${from} (blob slots) in ${secs(t1 - t0)}, then the ` +
    `metadata slot ${metaSlot} in ${secs(t2 - t1)}, ${from} -> ${to}`);
  t.comment(`during it: written ${wDuring.files} files (${mib(wDuring.bytes)}), read and verified ${rDuring.files} files ` +
    `(${mib(rDuring.bytes)}); during the metadata slot alone: ${wMeta.files} written, ${rMeta.files} read; ` +
    `errors: writer ${w.errorCount}, reader ${r.errorCount}, checksum mismatches ${r.mismatchCount}`);
  t.comment(`whole run: written ${w.files} files (${mib(w.bytes)}), read ${r.files} (${mib(r.bytes)}); longest calls: ` +
    `writer ${JSON.stringify(w.maxMs)}, reader ${JSON.stringify(r.maxMs)}`);

  // everything again: on this mount with the kernel's caches dropped, and on a fresh mount
  await dropCaches(t);
  const v1 = await verifyDir(dir);
  t.same(v1.bad, [], 'every file reads back intact on the same mount after drop_caches');
  t.equal(v1.files, w.files, `all ${w.files} files are there`);
  t.same(v1.names.filter((n) => !n.endsWith('.dat')), [], 'no leftover temporary file');
  const m2 = await mountKvfs(t, { store: url, dataDir: tempDir(t, 'kvfs-test-data-') });
  const v2 = await verifyDir(`${m2.mnt}/load`);
  t.same(v2.bad, [], 'every file reads back intact from a second, fresh mount');
  t.equal(v2.files, w.files, `all ${w.files} files are there too`);
  t.equal((await m2.unmount()).code, 0, 'clean unmount (second mount)');
  t.equal((await m.unmount()).code, 0, 'clean unmount');
});

// -------------------------------------------------------------------------------------------------------------

interface FailoverRun {
  victim: number;
  promoted: number;
  killedAt: number;
  failedOverAt: number;
  writer: LoadSummary;
  reader: LoadSummary;
}

/** the longest time after `at` in which no file completed, and when it ended */
function stall(ops: LoadOp[], at: number): { gapMs: number; endedAt: number } {
  const ends = ops.filter((o) => o[4]).map((o) => o[1]).sort((a, b) => a - b);
  let prev = ends.filter((e) => e < at).pop() ?? at;
  let best = { gapMs: 0, endedAt: at };
  for (const e of ends) {
    if (e < at) continue;
    if (e - prev > best.gapMs) best = { gapMs: e - prev, endedAt: e };
    prev = e;
  }
  return best;
}

/** the ports of the replicas of a master (ROLE) */
async function replicasOf(cluster: RedisCluster, port: number): Promise<number[]> {
  const ports = new Set(cluster.nodes.map((n) => n.port));
  const text = await cluster.cli(port, 'ROLE');
  return text.split('\n').map((l) => Number(l.trim())).filter((p) => ports.has(p) && p !== port);
}

t.test('failover under I/O: calls end within the deadline, the mount recovers, fsynced files survive', { skip }, async (t) => {
  const cluster = await RedisCluster.start(t, { masters: 3, replicas: 1, nodeTimeoutMs: 2000 });
  const volume = 'failover';
  const { url, dataDir } = await formatVolume(t, cluster, volume);
  const m = await mountKvfs(t, { store: url, dataDir });
  t.notMatch(m.output().stderr, /shorter than a failover/, 'the default --store-timeout (10 s) is long enough for this cluster');
  const daemon = m.pid;
  const local = tempDir(t, 'kvfs-test-load-');
  const py = pySession(t);

  // files fsynced before any kill: log-uniform sizes 1 KiB..1 MiB
  await py.ok(['mkdir', `${m.mnt}/pre`]);
  const rnd = prngU32(301);
  const pre: { path: string; sha256: string; size: number }[] = [];
  for (let i = 0; i < 24; i++) {
    const size = Math.floor(Math.exp(Math.log(KiB) + ((rnd() / 2 ** 32) * Math.log(MiB / KiB))));
    const path = `pre/f${i}`;
    const v = await py.ok<{ size: number; sha256: string }>(['write_file', `${m.mnt}/${path}`, size, 3010 + i, true]);
    pre.push({ path, ...v });
  }
  const checkPre = async (mnt: string, what: string) => {
    const bad: string[] = [];
    for (const f of pre) {
      const r = await py.call(['cat', `${mnt}/${f.path}`]);
      const v = r.ok ? (r.value as { size: number; sha256: string }) : undefined;
      if (!v || v.sha256 !== f.sha256 || v.size !== f.size) bad.push(`${f.path}: ${r.ok ? `${v!.size} bytes, sha256 ${v!.sha256}` : r.errno}`);
    }
    t.same(bad, [], `all ${pre.length} files fsynced before the kills read back intact ${what}`);
  };

  const metaSlot = await keySlot(cluster, `kvfs:{${volume}}:v`);
  const metaMaster = await cluster.slotOwner(metaSlot);
  const runs: FailoverRun[] = [];
  let loggedBefore = 0;

  const failoverUnderLoad = async (t: Test, victim: number, label: string): Promise<void> => {
    const replicas = await replicasOf(cluster, victim);
    t.ok(replicas.length > 0, `master ${victim} has a replica (${replicas.join(', ')})`);
    const dir = `${m.mnt}/${label}`;
    await py.ok(['mkdir', dir]);
    const writer = startLoad(t, 'writer', dir, { seed: 310 + runs.length, maxSize: MiB, stopFile: stopFile(local, `w-${label}`) });
    const reader = startLoad(t, 'reader', dir, { seed: 320 + runs.length, stopFile: stopFile(local, `r-${label}`) });
    await sleep(1500);
    const killedAt = Date.now();
    cluster.kill(victim);
    let promoted = 0;
    try {
      promoted = await cluster.waitFailover(victim, 30_000);
    } catch (e) {
      t.fail(`failover of ${victim}: ${(e as Error).message}`);
    }
    const failedOverAt = Date.now();
    // long enough after the failover for calls that were waiting on the dead master to end
    await sleep(DEADLINE_MS + MARGIN_MS - Math.min(DEADLINE_MS, failedOverAt - killedAt) + 1000);
    const w = await writer.stop();
    const r = await reader.stop();
    runs.push({ victim, promoted, killedAt, failedOverAt, writer: w, reader: r });

    t.ok(replicas.includes(promoted), `waitFailover: ${victim}'s replica ${promoted} serves its slots`);
    for (const s of [w, r]) {
      const longest = Math.max(0, ...Object.values(s.maxMs));
      t.ok(longest <= DEADLINE_MS + MARGIN_MS,
        `${s.role}: every call ended within the deadline + ${MARGIN_MS} ms (longest ${Math.round(longest)} ms)`, { maxMs: s.maxMs, slow: s.slow });
      const errnos = [...new Set(s.errors.map((e) => e[1]))];
      t.ok(errnos.every((e) => e === 'EIO'), `${s.role}: the calls that failed failed with EIO (${s.errorCount}: ${errnos.join(', ') || 'none'})`, { errors: s.errors });
    }
    t.equal(r.mismatchCount, 0, 'no read returned wrong bytes', { mismatches: r.mismatches });
    const wAfter = w.ops.filter((o) => o[0] >= failedOverAt && o[4]).length;
    const rAfter = r.ops.filter((o) => o[0] >= failedOverAt && o[4]).length;
    t.ok(wAfter > 0, `files written after the failover, on the same mount (${wAfter})`);
    t.ok(rAfter > 0, `files read after the failover, on the same mount (${rAfter})`);
    const lastW = w.ops.slice(-3);
    t.ok(lastW.length > 0 && lastW.every((o) => o[4]), 'the writer\'s last files all succeeded', { lastW });

    const logged = m.output().stderr.split('\n').filter((l) => /store (unavailable|error)|unexpected error/.test(l));
    for (const l of logged.slice(loggedBefore)) t.comment(`${label}: daemon: ${l.slice(0, 400)}`);
    loggedBefore = logged.length;
    const ws = stall(w.ops, killedAt);
    const rs = stall(r.ops, killedAt);
    t.comment(`${label}: killed ${victim}${victim === metaMaster ? ' (holds the metadata slot)' : ' (blob slots only)'}; ` +
      `waitFailover -> ${promoted} after ${secs(failedOverAt - killedAt)}`);
    t.comment(`${label}: longest call: writer ${JSON.stringify(w.maxMs)}; reader ${JSON.stringify(r.maxMs)}`);
    t.comment(`${label}: writer stalled ${secs(ws.gapMs)}, first file done after it ${secs(ws.endedAt - killedAt)} after the kill; ` +
      `reader stalled ${secs(rs.gapMs)}, resumed ${secs(rs.endedAt - killedAt)} after the kill`);
    t.comment(`${label}: writer ${w.files} files (${mib(w.bytes)}) ${w.errorCount} errors; reader ${r.files} files ` +
      `(${mib(r.bytes)}) ${r.errorCount} errors; calls over 1 s: ${JSON.stringify([...w.slow, ...r.slow].map(([k, at, ms, c]) => `${k} +${secs(at - killedAt)} ${ms} ms ${c}`))}`);
  };

  const blobOnly = (await cluster.masters()).find((x) => x.port !== metaMaster)!.port;
  await t.test('kill -9 of a master serving blob slots only', (t) => failoverUnderLoad(t, blobOnly, 'blob-master'));
  await t.test('kill -9 of the master holding the metadata slot', (t) => failoverUnderLoad(t, metaMaster, 'meta-master'));

  // the same mount, never remounted: new files work, and everything written is intact
  t.ok(m.alive() && m.pid === daemon, `the daemon mounted before the kills (pid ${daemon}) is still the one running`);
  const fresh = await py.call(['write_file', `${m.mnt}/after-failovers`, 700_000, 399, true]);
  t.ok(fresh.ok, `a new file is written and fsynced after both failovers (${fresh.ok ? 'OK' : fresh.errno})`);
  const back = await py.call(['cat', `${m.mnt}/after-failovers`]);
  t.same(back.ok && back.value, fresh.ok && fresh.value, 'and reads back');
  await dropCaches(t);
  await checkPre(m.mnt, 'on the same mount (caches dropped)');
  for (const dir of ['blob-master', 'meta-master']) {
    const v = await verifyDir(`${m.mnt}/${dir}`);
    t.same(v.bad, [], `${dir}: every file the writer completed reads back intact (${v.files})`);
  }
  const m2 = await mountKvfs(t, { store: url, dataDir: tempDir(t, 'kvfs-test-data-') });
  await checkPre(m2.mnt, 'from a fresh mount');
  for (const dir of ['blob-master', 'meta-master']) {
    const v = await verifyDir(`${m2.mnt}/${dir}`);
    t.same(v.bad, [], `${dir}: intact from a fresh mount too (${v.files})`);
  }
  await py.close();
  t.equal((await m2.unmount()).code, 0, 'clean unmount (second mount)');
  t.equal((await m.unmount()).code, 0, 'clean unmount');
});

// -------------------------------------------------------------------------------------------------------------

t.test('two mounts of one volume: close-to-open, names within the entry timeout, unlinked-while-open', { skip }, async (t) => {
  const cluster = await RedisCluster.start(t, { masters: 3 });
  const volume = 'shared';
  const { url } = await formatVolume(t, cluster, volume);
  // sessions of 6 s (not 30): the killed mount's orphans go within ~12 s, so the test need not wait a minute
  const args = ['--entry-timeout', '1', '--attr-timeout', '1', '--session-ttl', '6'];
  const mount = () => mountKvfs(t, { store: url, dataDir: tempDir(t, 'kvfs-test-data-'), args });
  const A = await mount();
  const B = await mount();
  // C: a third mount whose daemon is killed while it holds an unlinked file open
  const C = await mount();
  const a = pySession(t);
  const b = pySession(t);
  const c = pySession(t);
  const metaSlot = await keySlot(cluster, `kvfs:{${volume}}:v`);
  const metaOwner = await cluster.slotOwner(metaSlot);
  const [seed] = (await cluster.masters()).map((x) => x.port);

  /** blob keys of a file (chunk map read from the store) */
  const blobKeys = async (ino: number, chunks: number): Promise<string[]> => {
    const out: string[] = [];
    for (let i = 0; i < chunks; i++) {
      const v = await cluster.cli(metaOwner, 'GET', `kvfs:{${volume}}:c/${ino}/${i.toString(16).padStart(8, '0')}`);
      out.push(`kvfs:${volume}:b/${v.slice(v.indexOf(':') + 1)}`);
    }
    return out;
  };
  const blobsLeft = async (keys: string[]) => {
    let n = 0;
    for (const k of keys) n += Number(await cluster.cli(seed!, '-c', 'EXISTS', k));
    return n;
  };

  // ---- orphans of a killed mount: set up first, checked last (it takes up to a minute). Two files C holds
  // open when its daemon is killed: one unlinked on A (the case of the issue), one unlinked on C itself.
  const held: { name: string; by: string; ino: number; wrote: { size: number; sha256: string }; blobs: string[]; atKill?: number }[] = [];
  for (const [name, by] of [['orphan-a', 'A'], ['orphan-c', 'C']] as const) {
    const wrote = await a.ok<{ size: number; sha256: string }>(['write_file', `${A.mnt}/${name}`, MiB, 401 + held.length, true]);
    const ino = (await a.ok<{ ino: number }>(['stat', `${A.mnt}/${name}`])).ino;
    const blobs = await blobKeys(ino, 4);
    t.equal(await blobsLeft(blobs), 4, `${name}: the 1 MiB file has its 4 blobs in the store`);
    held.push({ name, by, ino, wrote, blobs });
  }
  const cfds: number[] = [];
  for (const h of held) cfds.push(await c.ok<number>(['open', `${C.mnt}/${h.name}`, ['O_RDONLY']]));
  await a.ok(['unlink', `${A.mnt}/orphan-a`]);
  await c.ok(['unlink', `${C.mnt}/orphan-c`]);
  await sleep(1500); // the janitors of A, B and C run within this
  for (const [i, h] of held.entries()) {
    t.equal(await blobsLeft(h.blobs), 4, `${h.name}: unlinked on ${h.by} while C holds it open, the file keeps its blobs`);
    const viaC = await c.call(['pread_all', cfds[i]]);
    t.same(viaC.ok ? viaC.value : viaC.errno, h.wrote, `${h.name}: C reads the whole file through its open descriptor${zeros(viaC)}`);
  }
  for (const h of held) h.atKill = await blobsLeft(h.blobs);
  await C.kill9();
  const killedAt = Date.now();
  await c.close();

  // ---- close-to-open: what A wrote and closed, a new open on B reads whole
  await t.test('close-to-open: new file, overwrites that grow, shrink, keep the size', async (t) => {
    const cases: [string, number, string[]][] = [
      ['a new file', 300_000, []],
      ['an overwrite that grows it', 700_000, ['O_TRUNC']],
      ['an overwrite that shrinks it', 5000, ['O_TRUNC']],
      ['an overwrite of the same size', 5000, ['O_TRUNC']],
      ['a rewrite in place without O_TRUNC, same size', 5000, []],
    ];
    let n = 0;
    for (const [what, size, flags] of cases) {
      const wrote = await a.ok<{ size: number; sha256: string }>(['write_file', `${A.mnt}/c2o`, size, 410 + n++, false, flags]);
      const read = await b.call(['cat', `${B.mnt}/c2o`]);
      t.same(read.ok ? read.value : read.errno, wrote, `${what}: B reads all ${size} new bytes at once`);
    }
  });

  await t.test('close-to-open: a file B holds open and cached; a new open on B after A\'s close sees the new content', async (t) => {
    const sizes: [string, number][] = [['same size', 200_000], ['grows', 600_000], ['shrinks', 3000]];
    await a.ok(['write_file', `${A.mnt}/held`, 200_000, 420, false]);
    let n = 0;
    for (const [what, size] of sizes) {
      const fd = await b.ok<number>(['open', `${B.mnt}/held`, ['O_RDONLY']]);
      const before = await b.ok<{ size: number; sha256: string }>(['pread_all', fd]); // in B's page cache now
      const wrote = await a.ok<{ size: number; sha256: string }>(['write_file', `${A.mnt}/held`, size, 421 + n++, false, ['O_TRUNC']]);
      t.not(wrote.sha256, before.sha256, `${what}: A changed the file`);
      const fresh = await b.call(['cat', `${B.mnt}/held`]);
      t.same(fresh.ok ? fresh.value : fresh.errno, wrote, `${what}: a new open on B reads A's new content, while B's old descriptor is still open`);
      const old = await b.call(['pread_all', fd]);
      t.comment(`${what}: B's descriptor opened before A's change now reads ${old.ok ? JSON.stringify(old.value) : old.errno} (not specified)`);
      await b.ok(['close', fd]);
    }
  });

  await t.test('rename and unlink on A are seen on B within the entry timeout', async (t) => {
    for (const f of ['r1', 'r2', 'u1', 'u2']) await a.ok(['write_file', `${A.mnt}/${f}`, 100, 430, false]);
    // B looks every name up first, so its kernel caches the entries
    for (const f of ['r1', 'r2', 'u1', 'u2']) await b.ok(['stat', `${B.mnt}/${f}`]);
    // within the timeout: check once, 1.5 s after the change
    const rAt = (await a.call(['rename', `${A.mnt}/r1`, `${A.mnt}/r1-new`])).at;
    const uAt = (await a.call(['unlink', `${A.mnt}/u1`])).at;
    await sleep(Math.max(0, Math.max(rAt, uAt) + 1500 - Date.now()));
    const seen = [
      await b.call(['stat', `${B.mnt}/r1`]), await b.call(['stat', `${B.mnt}/r1-new`]), await b.call(['stat', `${B.mnt}/u1`]),
    ].map((r) => (r.ok ? 'OK' : r.errno));
    t.same(seen, ['ENOENT', 'OK', 'ENOENT'], 'after 1.5 s B sees the rename (old name gone, new name there) and the unlink');
    // how long it takes: B looks the name up again (its cached entry had expired), A changes it at once, and
    // B polls from then on
    await b.ok(['stat', `${B.mnt}/r2`]);
    const r2At = (await a.call(['rename', `${A.mnt}/r2`, `${A.mnt}/r2-new`])).at;
    const r2 = await b.call(['poll', `${B.mnt}/r2`, 'ENOENT', 10_000]);
    const r2new = await b.call(['stat', `${B.mnt}/r2-new`]);
    await b.ok(['stat', `${B.mnt}/u2`]);
    const u2At = (await a.call(['unlink', `${A.mnt}/u2`])).at;
    const u2 = await b.call(['poll', `${B.mnt}/u2`, 'ENOENT', 10_000]);
    t.ok(r2.ok && r2.at - r2At <= 1500, `B sees the rename's old name gone ${r2.at - r2At} ms after it (${r2.ok ? 'OK' : r2.errno})`);
    t.ok(r2new.ok, 'and the new name there');
    t.ok(u2.ok && u2.at - u2At <= 1500, `B sees the unlink ${u2.at - u2At} ms after it (${u2.ok ? 'OK' : u2.errno})`);
    t.comment(`visibility on B: rename ${Math.round(r2.at - r2At)} ms, unlink ${Math.round(u2.at - u2At)} ms (--entry-timeout 1 --attr-timeout 1)`);
  });

  await t.test('a file unlinked on A while open on B stays readable through B\'s descriptor', async (t) => {
    const cases: [string, boolean, number, boolean][] = [
      // what, B reads it before the unlink, ms to wait after it, drop the kernel's caches before reading
      ['read by B 0.3 s after the unlink (attributes still cached)', false, 300, false],
      ['read by B 1.2 s after the unlink, caches dropped', false, 1200, true],
      ['read (cached) by B before the unlink, again 1.2 s after it, caches dropped', true, 1200, true],
    ];
    let n = 0;
    for (const [what, readFirst, wait, drop] of cases) {
      const name = `gone-${n}`;
      const wrote = await a.ok<{ size: number; sha256: string }>(['write_file', `${A.mnt}/${name}`, MiB, 440 + n++, true]);
      const fd = await b.ok<number>(['open', `${B.mnt}/${name}`, ['O_RDONLY']]);
      if (readFirst) await b.ok(['pread_all', fd]);
      await a.ok(['unlink', `${A.mnt}/${name}`]);
      await sleep(wait); // A's janitor runs within this
      if (drop) await dropCaches(t);
      const back = await b.call(['pread_all', fd]);
      t.same(back.ok ? back.value : back.errno, wrote, `${what}: B reads the whole file${zeros(back)}`);
      await b.ok(['close', fd]);
    }
  });

  // ---- the orphans of the killed mount C go: its session expires 6 s (--session-ttl) after its last heartbeat,
  // and each live mount reaps orphans every 6 s
  const goneAfter = new Map<string, number>();
  while (goneAfter.size < held.length && Date.now() - killedAt < 45_000) {
    for (const h of held) if (!goneAfter.has(h.name) && (await blobsLeft(h.blobs)) === 0) goneAfter.set(h.name, Date.now() - killedAt);
    if (goneAfter.size < held.length) await sleep(1000);
  }
  for (const h of held) {
    const took = goneAfter.get(h.name);
    t.ok(took !== undefined, `${h.name}: its blobs are removed by the live mounts after C was killed ` +
      `(${took === undefined ? 'not within 45 s' : `${secs(took)} after the kill`}; blobs left at the kill: ${h.atKill})`);
    // where the clean-up stands in the store: orphan record, inode, purge queue entry, first chunk entry
    const state: string[] = [];
    for (const k of ['o', 'i', 'p']) state.push(`${k}/${h.ino}: ${await cluster.cli(metaOwner, 'EXISTS', `kvfs:{${volume}}:${k}/${h.ino}`)}`);
    state.push(`c/${h.ino}/00000000: ${await cluster.cli(metaOwner, 'EXISTS', `kvfs:{${volume}}:c/${h.ino}/00000000`)}`);
    t.comment(`orphan ${h.name} (unlinked on ${h.by}): ${h.atKill} of 4 blobs left at kill -9 of C; all gone ` +
      `${took === undefined ? 'not within 45 s' : `${secs(took)} after it`}; keys now: ${state.join(', ')}`);
  }

  await a.close();
  await b.close();
  t.equal((await B.unmount()).code, 0, 'clean unmount of B');
  t.equal((await A.unmount()).code, 0, 'clean unmount of A');
});
