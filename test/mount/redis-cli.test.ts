/**
 * The CLI and a real mount over Redis (src/backend/redis.ts), against real servers (test/helpers/redis-cluster.ts).
 *
 *  A. A full store: on a 3-master cluster with maxmemory 32 MiB each (noeviction), files written with fsync
 *     until one fails. Each failing call fails with ENOSPC, never EIO, and quickly (well under the store
 *     deadline); the daemon logs one line naming maxmemory and how to raise it; every file fsynced before is
 *     intact; `rm` works on the full store, and once the janitor freed the blobs new files fit and read back
 *     intact. `df` reports the sum of the masters' maxmemory as the size.
 *  B. Bad input: each a one-line `kvfs: ...` error on stderr, a non-zero exit, within the deadline
 *     (--store-timeout 3, wall time < 5 s), no password printed, nothing mounted, the mountpoint still empty,
 *     and nothing written to the store.
 *  C. `kvfs format` and `kvfs status` on a cluster volume: the volume's name, inodes, bytes and the store's
 *     free space.
 */
import { createHash } from 'node:crypto';
import { readdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { expectCliError, expectExit } from '../helpers/assert.js';
import {
  describe,
  cliScene,
  isMounted,
  kvfs,
  mountKvfs,
  mountsAt,
  processesMentioning,
  run,
  tempDir,
  driverArgs as driverArgsFor,
  testDriver,
  type RunResult,
} from '../helpers/mount.js';
import { df, fillFiles, sha256sums, type Filled } from '../helpers/fill.js';
import { RedisCluster, RedisServer, redisAvailable } from '../helpers/redis-cluster.js';
import { bytes } from '../helpers/tree.js';

t.setTimeout(170_000);

const skip = redisAvailable() ?? false;
const driver = testDriver();
const driverArgs = driverArgsFor(driver);
const MiB = 1 << 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** passwords unlike anything else in a message, so a leak is unambiguous */
const tag = `${process.pid}x${Date.now().toString(36)}`;
const REAL_PW = `realPw-${tag}`;
const WRONG_PW = `wrongPw-${tag}`;
const FILE_PW = `filePw-${tag}`;
const URL_PW = `urlPw-${tag}`;
const SECRETS = [REAL_PW, WRONG_PW, FILE_PW, URL_PW];
/** no password from the test's own environment leaks into a case */
const NO_PW = { KVFS_REDIS_PASSWORD: undefined, KVFS_REDIS_PASSWORD_FILE: undefined };

// ------------------------------------------------------------------------------------------ helpers

/** a loopback port nothing listens on (bound, then closed) */
function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen({ host: '127.0.0.1', port: 0 }, () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

interface Timed {
  r: RunResult;
  ms: number;
}

/**
 * Runs a kvfs command that must fail, and holds it to the contract: one `kvfs: ` line matching re, a non-zero
 * exit, done within 5 s (--store-timeout 3 is on every command that opens a store), no password in its
 * output, and mnt not mounted, empty and not named by any process.
 */
async function refused(
  t: Test, what: string, args: string[], o: { dataDir: string; mnt: string; env?: Record<string, string | undefined>; re: RegExp },
): Promise<Timed> {
  const start = Date.now();
  const r = await kvfs(args, { dataDir: o.dataDir, env: { ...NO_PW, ...o.env }, timeout: 20_000 });
  const ms = Date.now() - start;
  t.comment(`${what}: exit ${r.code} after ${ms} ms: ${r.stderr.trimEnd()}`);
  expectCliError(t, r, what, o.re);
  t.ok(r.code === 1 || r.code === 2, `${what}: exit 1 or 2 (got ${r.code})`);
  t.ok(ms < 5000, `${what}: fails within 5 s with --store-timeout 3 (${ms} ms)`, { command: describe(r) });
  for (const pw of SECRETS) {
    t.notOk(r.stdout.includes(pw) || r.stderr.includes(pw), `${what}: no password in the output`, { command: describe(r) });
  }
  t.notOk(isMounted(o.mnt), `${what}: nothing mounted on ${o.mnt}`, { mounts: mountsAt(o.mnt) });
  t.same(readdirSync(o.mnt), [], `${what}: the mountpoint is still empty`);
  t.same(processesMentioning(o.mnt), [], `${what}: no process left for the mountpoint`);
  return { r, ms };
}

const mountArgs = (url: string, mnt: string, ...more: string[]) => ['mount', url, mnt, '--store-timeout', '3', ...driverArgs, ...more];

/**
 * Every key (sorted) on each of ports, through redis-cli --scan, but the records of applied transactions
 * (kvfs:{VOL}!t:N, bookkeeping that expires by itself)
 */
async function keysOn(cli: (port: number, ...args: string[]) => Promise<string>, ports: number[]): Promise<string[]> {
  const out: string[] = [];
  for (const p of ports) out.push(...(await cli(p, '--scan', '--pattern', '*')).split('\n').filter(Boolean));
  return out.filter((k) => !/^kvfs:\{[^}]*\}!t:/.test(k)).sort();
}

/** the status figure on the line whose label matches re ("inodes: 12" -> 12) */
function figure(status: string, re: RegExp): number | undefined {
  const m = status.split('\n').find((l) => re.test(l))?.match(/:\s*(-?\d+)\s*$/);
  return m ? Number(m[1]) : undefined;
}

/** used_memory and maxmemory summed over ports */
async function memory(cluster: RedisCluster, ports: number[]): Promise<{ used: number; max: number }> {
  let used = 0;
  let max = 0;
  for (const p of ports) {
    const info = await cluster.cli(p, 'INFO', 'memory');
    used += Number(/^used_memory:(\d+)/m.exec(info)?.[1]);
    max += Number(/^maxmemory:(\d+)/m.exec(info)?.[1]);
  }
  return { used, max };
}

const ENOSPC = 28;
const EIO = 5;

// ------------------------------------------------------------------------------------------ A. a full store

t.test('A. a full Redis Cluster: ENOSPC at once, one log line, earlier files intact, space back after rm', { skip }, async (t) => {
  const cluster = await RedisCluster.start(t, { masters: 3, maxmemory: '32mb', maxmemoryPolicy: 'noeviction' });
  const ports = (await cluster.masters()).map((m) => m.port);
  const url = cluster.url('full');
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const STORE_TIMEOUT_S = 10;
  // "well under the store deadline": a call that retried until the deadline instead of failing would take 10 s
  const CALL_BOUND_S = STORE_TIMEOUT_S / 2.5;
  expectExit(t, await kvfs(['format', url], { dataDir, env: NO_PW }), 'kvfs format');
  const m = await mountKvfs(t, { store: url, dataDir, args: ['--store-timeout', String(STORE_TIMEOUT_S)], env: NO_PW });
  const scratch = tempDir(t, 'kvfs-test-src-');
  const storeFullLines = () => m.output().stderr.split('\n').filter((l) => /full|maxmemory|no space/i.test(l));

  // statfs: the size is the masters' maxmemory summed; the free space what Redis says is left
  const mem0 = await memory(cluster, ports);
  t.equal(mem0.max, 3 * 32 * MiB, 'the masters have 3 x 32 MiB of maxmemory');
  const df0 = await df(t, m.mnt);
  t.ok(Math.abs(df0.size - mem0.max) <= 4096, `df size ${df0.size} is the sum of maxmemory ${mem0.max} (within a block)`);
  t.ok(Math.abs(df0.avail - (mem0.max - mem0.used)) < 4 * MiB,
    `df avail ${df0.avail} is maxmemory - used_memory (${mem0.max - mem0.used}) within 4 MiB`);
  t.comment(`df before: size ${df0.size}, used ${df0.used}, avail ${df0.avail}`);

  // fill: 4 MiB files, each fsynced, until a call fails (96 MiB of memory cannot hold 40 of them)
  const SIZE = 4 * MiB;
  const written = await fillFiles(t, m.mnt, 'f', SIZE, 40);
  const ok = written.filter((f) => !Object.keys(f.errs).length);
  const failed = written.filter((f) => Object.keys(f.errs).length);
  t.equal(failed.length, 1, `a write failed after ${ok.length} files (${(ok.length * SIZE) / MiB} MiB)`, { last: written.at(-1) });
  t.ok(ok.length >= 8, `at least 8 files (32 MiB) fit before the store was full (${ok.length})`);
  const bad = failed[0];
  if (bad) {
    const errnos = Object.values(bad.errs);
    t.ok(errnos.every((e) => e === ENOSPC), `every failed call of ${bad.path} failed with ENOSPC, none EIO`, { errs: bad.errs });
    t.notOk(errnos.includes(EIO), 'no EIO', { errs: bad.errs });
    if (bad.errs.open === undefined) {
      // a write the daemon buffered must not be reported durable: fsync (or the write itself) says ENOSPC
      t.ok(bad.errs.write === ENOSPC || bad.errs.fsync === ENOSPC, 'write or fsync reports ENOSPC (fsync never claims the data is stored)', { errs: bad.errs });
    }
    t.comment(`first failure: ${bad.path}, errnos ${JSON.stringify(bad.errs)}`);
  }
  const slowest = written.reduce((a, f) => (f.slowest > a.slowest ? f : a), written[0]!);
  t.ok(slowest && slowest.slowest < CALL_BOUND_S, `no call took ${CALL_BOUND_S} s or more (slowest: ${slowest?.slowestCall} ${slowest?.slowest} s)`);

  // the daemon logged the condition once, naming the limit and the knob
  const lines = storeFullLines();
  t.equal(lines.length, 1, 'one store-full line in the daemon log', { stderr: m.output().stderr });
  t.match(lines[0], /maxmemory 32 MiB/, 'it names the limit');
  t.match(lines[0], /raise maxmemory \(CONFIG SET maxmemory/, 'it says how to raise it');

  // dd gets ENOSPC too, as quickly, and the log does not grow
  const src = join(scratch, 'src');
  writeFileSync(src, bytes(SIZE, 1));
  let started = Date.now();
  const dd = await run('dd', [`if=${src}`, `of=${m.mnt}/dd-full`, 'bs=1M', 'conv=fsync'], { timeout: 60_000 });
  const ddMs = Date.now() - started;
  t.ok(dd.code !== 0 && !dd.timedOut, 'dd on the full store fails', { command: describe(dd) });
  t.match(dd.stderr, /No space left on device/, 'dd: No space left on device', { command: describe(dd) });
  t.notMatch(dd.stderr, /Input\/output error/, 'dd: no EIO', { command: describe(dd) });
  t.ok(ddMs < CALL_BOUND_S * 1000, `dd fails within ${CALL_BOUND_S} s (${ddMs} ms)`);
  t.equal(storeFullLines().length, 1, 'still one store-full line after more failures', { stderr: m.output().stderr });
  t.notMatch(m.output().stderr, /unavailable|unexpected error|answering EIO|store error/i, 'the daemon logged no EIO of any kind',
    { stderr: m.output().stderr });

  const mem1 = await memory(cluster, ports);
  const df1 = await df(t, m.mnt);
  t.ok(df1.avail < df1.size / 10, `df shows the store nearly full (avail ${df1.avail} of ${df1.size})`);
  t.comment(`full: ${ok.length} files x 4 MiB = ${(ok.length * SIZE) / MiB} MiB of data; used_memory ${mem1.used} of ${mem1.max}; df used ${df1.used}, avail ${df1.avail}`);

  // every file fsynced before the store filled is intact; reading any file (the failed ones too) is not EIO
  let sums = await sha256sums(t, ok.map((f) => f.path));
  for (const f of ok) t.equal(sums.get(f.path), f.sha, `${f.path} intact`);
  const readAll = await run('sh', ['-c', 'cat "$1"/* > /dev/null', 'sh', m.mnt], { timeout: 60_000 });
  expectExit(t, readAll, 'every file on the full store reads without error (no EIO)');

  // deletes work on the full store; the janitor frees the blobs and writes succeed again
  const gone = ok.slice(0, Math.ceil(ok.length / 2));
  const kept = ok.slice(gone.length);
  started = Date.now();
  const rm = await run('rm', ['-f', ...gone.map((f) => f.path), ...failed.map((f) => f.path), `${m.mnt}/dd-full`], { timeout: 60_000 });
  const rmMs = Date.now() - started;
  expectExit(t, rm, `rm of ${gone.length} files on the full store`);
  t.ok(rmMs < CALL_BOUND_S * 1000, `rm is quick (${rmMs} ms)`);
  started = Date.now();
  let probes = 0;
  let back: Filled | undefined;
  for (;;) {
    probes++;
    const p = (await fillFiles(t, m.mnt, 'probe', SIZE, 1))[0];
    if (p && !Object.keys(p.errs).length) {
      back = p;
      break;
    }
    if (p) t.ok(Object.values(p.errs).every((e) => e === ENOSPC), `probe ${probes} failed with ENOSPC only`, { errs: p.errs });
    if (Date.now() - started > 30_000) break;
    await sleep(200);
  }
  const recoveredMs = Date.now() - started;
  t.ok(back, `a 4 MiB write with fsync succeeds again after the rm (${recoveredMs} ms, ${probes} attempts)`);
  t.comment(`rm took ${rmMs} ms; writes work again ${recoveredMs} ms after it (${probes} attempts)`);
  const mem2 = await memory(cluster, ports);
  t.ok(mem2.used < mem1.used - gone.length * SIZE * 0.8, `the blobs were freed (used_memory ${mem1.used} -> ${mem2.used})`);

  // new files (dd with conv=fsync) read back intact, and so do the files kept from before
  const fresh: { path: string; sha: string }[] = [];
  for (let i = 0; i < 3; i++) {
    const data = bytes(SIZE, 100 + i);
    writeFileSync(src, data);
    const path = `${m.mnt}/new${i}`;
    expectExit(t, await run('dd', [`if=${src}`, `of=${path}`, 'bs=1M', 'conv=fsync'], { timeout: 60_000 }), `dd of ${path}`);
    fresh.push({ path, sha: createHash('sha256').update(data).digest('hex') });
  }
  const survivors = [...fresh, ...kept, ...(back ? [back] : [])];
  sums = await sha256sums(t, survivors.map((f) => f.path));
  for (const f of survivors) t.equal(sums.get(f.path), f.sha, `${f.path} intact after the rm`);

  // and they are in the store, not only in a cache: a new daemon (and an empty page cache) reads the same
  await m.remount();
  sums = await sha256sums(t, survivors.map((f) => f.path));
  for (const f of survivors) t.equal(sums.get(f.path), f.sha, `${f.path} intact after a remount`);
  t.equal((await m.unmount()).code, 0, 'the daemon exits cleanly');
});

// ------------------------------------------------------------------------------------------ B. bad input

t.test('B. bad input on plain Redis servers: one line, quick, no password shown, nothing mounted', { skip }, async (t) => {
  const { dataDir, base, mnt } = cliScene(t);
  const [locked, plain, lru] = await Promise.all([
    RedisServer.start(t, { password: REAL_PW }),
    RedisServer.start(t),
    RedisServer.start(t, { maxmemoryPolicy: 'allkeys-lru' }),
  ]);
  const o = { dataDir, mnt };
  const closed = await closedPort();

  // unreachable: a closed port, for every command that opens a store
  for (const url of [`redis://127.0.0.1:${closed}/v`, `redis-cluster://127.0.0.1:${closed}/v`]) {
    await refused(t, `mount ${url} (closed port)`, mountArgs(url, mnt), { ...o, re: /127\.0\.0\.1:\d+.*did not answer within [23](\.\d)? s.*ECONNREFUSED/ });
  }
  const down = `redis://127.0.0.1:${closed}/v`;
  await refused(t, 'format on a closed port', ['format', down, '--store-timeout', '3'], { ...o, re: /did not answer within [23](\.\d)? s/ });
  await refused(t, 'status on a closed port', ['status', down, '--store-timeout', '3'], { ...o, re: /did not answer within [23](\.\d)? s/ });

  // credentials: wrong (environment, file), missing; the server's password is never shown, nor the wrong one
  const pwFile = join(base, 'pw');
  writeFileSync(pwFile, `${FILE_PW}\n`);
  const lockedUrl = locked.url('v');
  await refused(t, 'mount with a wrong KVFS_REDIS_PASSWORD', mountArgs(lockedUrl, mnt), {
    ...o, env: { KVFS_REDIS_PASSWORD: WRONG_PW }, re: /refused our credentials \(WRONGPASS.*check KVFS_REDIS_PASSWORD or the password file/,
  });
  await refused(t, 'mount with a wrong --password-file', mountArgs(lockedUrl, mnt, '--password-file', pwFile), {
    ...o, re: /refused our credentials \(WRONGPASS/,
  });
  await refused(t, 'mount with no password', mountArgs(lockedUrl, mnt), { ...o, re: /NOAUTH.*needs a password: set KVFS_REDIS_PASSWORD or --password-file/ });
  await refused(t, 'format with a wrong password', ['format', lockedUrl, '--store-timeout', '3'], {
    ...o, env: { KVFS_REDIS_PASSWORD: WRONG_PW }, re: /refused our credentials/,
  });
  await refused(t, 'status with no password', ['status', lockedUrl, '--store-timeout', '3'], { ...o, re: /needs a password/ });
  t.equal(await locked.cli('DBSIZE'), '0', 'nothing was written to the password-protected server');

  // a password in the URL is refused before anything connects, and masked in the message
  for (const url of [`redis://kvfs:${URL_PW}@127.0.0.1:${plain.port}/v`, `redis://:${URL_PW}@127.0.0.1:${plain.port}/v`]) {
    const { r } = await refused(t, `mount ${url.replace(URL_PW, 'PW')}`, mountArgs(url, mnt), { ...o, re: /carries a password: put it in KVFS_REDIS_PASSWORD/ });
    t.match(r.stderr, /:\*\*\*@127\.0\.0\.1/, 'the password is shown as ***');
  }

  // the wrong kind of server, bad volume names, an evicting server
  await refused(t, 'a plain server given as redis-cluster://', mountArgs(`redis-cluster://127.0.0.1:${plain.port}/v`, mnt), {
    ...o, re: new RegExp(`127\\.0\\.0\\.1:${plain.port} is a plain Redis server, not a cluster node.*use redis://127\\.0\\.0\\.1:${plain.port}/v`),
  });
  for (const name of ['a.b', '{x}', 'a/b', 'a%2Fb', 'é']) {
    await refused(t, `volume name '${name}'`, mountArgs(plain.url(name), mnt), { ...o, re: /volume name .* must be 1-64 characters of A-Z a-z 0-9 _ -/ });
    await refused(t, `format of volume name '${name}'`, ['format', plain.url(name), '--store-timeout', '3'], { ...o, re: /volume name/ });
  }
  await refused(t, 'maxmemory-policy allkeys-lru', mountArgs(lru.url('v'), mnt), {
    ...o, re: new RegExp(`127\\.0\\.0\\.1:${lru.port} has maxmemory-policy allkeys-lru.*needs maxmemory-policy noeviction`),
  });
  await refused(t, 'format on an allkeys-lru server', ['format', lru.url('v'), '--store-timeout', '3'], { ...o, re: /allkeys-lru/ });
  t.equal(await lru.cli('DBSIZE'), '0', 'nothing was written to the evicting server');

  // a volume never formatted: mount and status say to run kvfs format, and write nothing
  await refused(t, 'mount of an unformatted volume', mountArgs(plain.url('fresh'), mnt), { ...o, re: /holds no kvfs volume.*kvfs format redis:\/\// });
  // --background: the reason must reach the user's terminal too, not only the daemon's log file
  await refused(t, 'mount --background of an unformatted volume', mountArgs(plain.url('fresh'), mnt, '--background'), {
    ...o, re: /no kvfs volume.*kvfs format redis:\/\//,
  });
  await refused(t, 'status of an unformatted volume', ['status', plain.url('fresh'), '--store-timeout', '3'], { ...o, re: /no kvfs volume.*kvfs format/ });
  t.equal(await plain.cli('DBSIZE'), '0', 'nothing was written for the unformatted volume');

  // a formatted volume: --writeback-cache is refused, and so is a second format; the volume is unchanged
  expectExit(t, await kvfs(['format', plain.url('v'), '--store-timeout', '3'], { dataDir, env: NO_PW }), 'format a volume');
  const keys = () => keysOn((_p, ...args) => plain.cli(...args), [plain.port]);
  const record = async () => plain.cli('GET', 'kvfs:{v}:v');
  const [keysBefore, recordBefore] = [await keys(), await record()];
  t.match(recordBefore, /"name":"v"/, 'the volume record is there');
  await refused(t, '--writeback-cache on a redis:// volume', mountArgs(plain.url('v'), mnt, '--writeback-cache'), {
    ...o, re: /--writeback-cache cannot be used .*close-to-open/,
  });
  await refused(t, 'format of a formatted volume', ['format', plain.url('v'), '--store-timeout', '3'], { ...o, re: /already holds a volume; refusing/ });
  await refused(t, 'format of a formatted volume with --name', ['format', plain.url('v'), '--name', 'other', '--store-timeout', '3'], {
    ...o, re: /already holds a volume/,
  });
  t.same(await keys(), keysBefore, 'the same keys');
  t.equal(await record(), recordBefore, 'the volume record is unchanged');
});

t.test('B. bad input on a Redis Cluster: one line, quick, no password shown, nothing mounted', { skip }, async (t) => {
  const { dataDir, mnt } = cliScene(t);
  // cluster-node-timeout 1 s: a 3 s deadline outlasts a failover (1 s + 2 s), so kvfs has nothing to warn about
  const cluster = await RedisCluster.start(t, { masters: 3, password: REAL_PW, nodeTimeoutMs: 1000 });
  const ports = (await cluster.masters()).map((m) => m.port);
  const cli = (port: number, ...args: string[]) => cluster.cli(port, ...args);
  const o = { dataDir, mnt };
  const auth = { KVFS_REDIS_PASSWORD: REAL_PW };

  await refused(t, 'cluster: a wrong KVFS_REDIS_PASSWORD', mountArgs(cluster.url('v'), mnt), {
    ...o, env: { KVFS_REDIS_PASSWORD: WRONG_PW }, re: /refused our credentials \(WRONGPASS/,
  });
  await refused(t, 'cluster: no password', mountArgs(cluster.url('v'), mnt), { ...o, re: /needs a password/ });
  await refused(t, 'a cluster node given as redis://', mountArgs(`redis://127.0.0.1:${ports[0]}/v`, mnt), {
    ...o, env: auth, re: new RegExp(`127\\.0\\.0\\.1:${ports[0]} is a Redis Cluster node: use redis-cluster://127\\.0\\.0\\.1:${ports[0]}/v`),
  });
  await refused(t, 'cluster: mount of an unformatted volume', mountArgs(cluster.url('fresh'), mnt), {
    ...o, env: auth, re: /holds no kvfs volume.*kvfs format redis-cluster:\/\//,
  });
  t.same(await keysOn(cli, ports), [], 'nothing was written for the unformatted volume');

  expectExit(t, await kvfs(['format', cluster.url('v'), '--store-timeout', '3'], { dataDir, env: auth }), 'format a cluster volume');
  const keysBefore = await keysOn(cli, ports);
  const record = () => cluster.cli(ports[0]!, '-c', 'GET', 'kvfs:{v}:v');
  const recordBefore = await record();
  t.match(recordBefore, /"name":"v"/, 'the volume record is there');
  await refused(t, 'cluster: --writeback-cache', mountArgs(cluster.url('v'), mnt, '--writeback-cache'), {
    ...o, env: auth, re: /--writeback-cache cannot be used .*close-to-open/,
  });
  await refused(t, 'cluster: format of a formatted volume', ['format', cluster.url('v'), '--store-timeout', '3'], {
    ...o, env: auth, re: /already holds a volume; refusing/,
  });
  t.same(await keysOn(cli, ports), keysBefore, 'the same keys');
  t.equal(await record(), recordBefore, 'the volume record is unchanged');

  // one evicting master is enough to refuse the cluster
  await cluster.cli(ports[1]!, 'CONFIG', 'SET', 'maxmemory-policy', 'allkeys-lru');
  await refused(t, 'cluster: one master with allkeys-lru', mountArgs(cluster.url('v'), mnt), {
    ...o, env: auth, re: new RegExp(`127\\.0\\.0\\.1:${ports[1]} has maxmemory-policy allkeys-lru`),
  });
  await cluster.cli(ports[1]!, 'CONFIG', 'SET', 'maxmemory-policy', 'noeviction');

  // A deadline shorter than a failover draws a warning; a command that fails must still print one line.
  await refused(t, 'cluster: a failing command with a deadline shorter than a failover', [
    'mount', cluster.url('fresh'), mnt, '--store-timeout', '2', ...driverArgs,
  ], { ...o, env: auth, re: /holds no kvfs volume/ });

  // last: a slot no node serves (the whole cluster reports CLUSTERDOWN)
  await cluster.delSlots([100, 101, 102]);
  const uncovered = /serves no node for 3 of 16384 slots \(100-102\).*every slot/;
  await refused(t, 'cluster with unserved slots: mount', mountArgs(cluster.url('v'), mnt), { ...o, env: auth, re: uncovered });
  await refused(t, 'cluster with unserved slots: format', ['format', cluster.url('w'), '--store-timeout', '3'], { ...o, env: auth, re: uncovered });
  await refused(t, 'cluster with unserved slots: status', ['status', cluster.url('v'), '--store-timeout', '3'], { ...o, env: auth, re: uncovered });
  t.same(await keysOn(cli, ports), keysBefore, 'the same keys');
});

// ------------------------------------------------------------------------------------------ C. format, status

t.test('C. kvfs format and kvfs status on a cluster volume', { skip }, async (t) => {
  const cluster = await RedisCluster.start(t, { masters: 3, maxmemory: '64mb' });
  const ports = (await cluster.masters()).map((m) => m.port);
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const url = cluster.url('stat_vol-1');

  const f = await kvfs(['format', url, '--chunk-size', '64K'], { dataDir, env: NO_PW });
  expectExit(t, f, 'kvfs format');
  t.match(f.stdout, /formatted volume 'stat_vol-1' on Redis Cluster .*: volume 'stat_vol-1', chunk size 65536/, 'format names the volume and chunk size');
  t.equal(f.stderr, '', 'format prints nothing on stderr');

  const status = async (what: string) => {
    const r = await kvfs(['status', url], { dataDir, env: NO_PW });
    expectExit(t, r, what);
    return r.stdout;
  };
  let s = await status('kvfs status of the new volume');
  t.match(s, /^volume:\s+stat_vol-1$/m, 'status: the volume name');
  t.match(s, /^store:\s+volume 'stat_vol-1' on Redis Cluster 127\.0\.0\.1:\d+/m, 'status: the store');
  t.match(s, /^chunk size:\s+65536$/m, 'status: the chunk size');
  t.equal(figure(s, /^inodes:/), 1, 'status: one inode (the root)');
  t.equal(figure(s, /^bytes:/), 0, 'status: no bytes');
  let mem = await memory(cluster, ports);
  const free0 = figure(s, /^store free:/);
  t.ok(free0 !== undefined && free0 <= mem.max && Math.abs(free0 - (mem.max - mem.used)) < 2 * MiB,
    `status: store free ${free0} is maxmemory - used_memory (${mem.max} - ${mem.used}) within 2 MiB`);
  t.comment(s);

  const m = await mountKvfs(t, { store: url, dataDir, env: NO_PW });
  const sizes = [0, 1, 65536, 65537, 3 * MiB + 5];
  const script = sizes.map((n, i) => `head -c ${n} /dev/urandom > "$1/f${i}"`).join(' && ') + ' && mkdir "$1/d" && sync';
  expectExit(t, await run('sh', ['-c', script, 'sh', m.mnt], { timeout: 60_000 }), 'write files and a directory');
  t.equal((await m.unmount()).code, 0, 'unmount (flushes the counters)');

  s = await status('kvfs status after writing');
  t.equal(figure(s, /^inodes:/), 1 + sizes.length + 1, 'status: inodes count the root, the files and the directory');
  t.equal(figure(s, /^bytes:/), sizes.reduce((a, b) => a + b, 0), 'status: bytes are the files\' sizes');
  mem = await memory(cluster, ports);
  const free1 = figure(s, /^store free:/);
  t.ok(free1 !== undefined && free0 !== undefined && free1 < free0 - 3 * MiB, `status: store free went down by the data (${free0} -> ${free1})`);
  t.ok(free1 !== undefined && Math.abs(free1 - (mem.max - mem.used)) < 2 * MiB, 'status: store free is maxmemory - used_memory within 2 MiB');
  t.comment(s);
});
