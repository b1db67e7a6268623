/**
 * The Redis harness (helpers/redis-cluster.ts) against real redis-server processes: a cluster comes up with
 * every slot served, reshards under concurrent client I/O, fails over, loses slots on demand; a plain server
 * takes a password; and every way out (stop, a failed start, the test process killed -9) leaves no server and
 * no dir behind. Skipped as a whole when redis-server / redis-cli are not there.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Cluster, Redis } from 'ioredis';
import t from 'tap';
import { processesMentioning } from '../helpers/mount.js';
import { RedisCluster, RedisServer, redisAvailable } from '../helpers/redis-cluster.js';
import { run } from '../helpers/run.js';

// Child mode: this same file, re-run by the watchdog test. It starts a server, says where, and dies by SIGKILL.
if (process.env.KVFS_TEST_REDIS_ORPHAN) {
  const s = await RedisServer.start(undefined);
  process.stdout.write(`${JSON.stringify({ pid: s.pid, dir: s.dir, port: s.port })}\n`);
  process.kill(process.pid, 'SIGKILL');
}

const skip = redisAvailable() ?? false;

/** CRC16/XMODEM of the key's hash tag (or the whole key), mod 16384: Redis Cluster's key slot */
function keySlot(key: string): number {
  const open = key.indexOf('{');
  if (open >= 0) {
    const close = key.indexOf('}', open + 1);
    if (close > open + 1) key = key.slice(open + 1, close);
  }
  let crc = 0;
  for (const b of Buffer.from(key)) {
    crc ^= b << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc % 16384;
}

const inRanges = (slot: number, r: [number, number][]) => r.some(([a, b]) => slot >= a && slot <= b);

/** n hash tags, each in a different slot accepted by want */
function tagsIn(n: number, want: (slot: number) => boolean, prefix: string): string[] {
  const seen = new Set<number>();
  const out: string[] = [];
  for (let i = 0; out.length < n; i++) {
    const s = keySlot(`${prefix}${i}`);
    if (want(s) && !seen.has(s)) {
      seen.add(s);
      out.push(`${prefix}${i}`);
    }
  }
  return out;
}

function ioCluster(c: RedisCluster, password?: string): Cluster {
  const seeds = c.seeds().split(',').map((hp) => ({ host: '127.0.0.1', port: Number(hp.split(':')[1]) }));
  return new Cluster(seeds, { redisOptions: { protocol: 2, ...(password === undefined ? {} : { password }) } });
}

/** dead or a zombie (an orphan's reaper may be slow) */
function gone(pid: number): boolean {
  try {
    return /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/** harness dirs left for any of these ports (each server's dir is ROOT/PORT; ports are unique among live runs) */
const dirsLeftFor = (ports: number[]) =>
  readdirSync(tmpdir())
    .filter((n) => n.startsWith('kvfs-redis-'))
    .flatMap((n) => ports.map((p) => join(tmpdir(), n, String(p))))
    .filter((d) => existsSync(d));
const portsIn = (message = '') => [...new Set([...message.matchAll(/127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1])))];

t.test('a 3-master cluster', { skip }, async (t) => {
  const started = Date.now();
  const c = await RedisCluster.start(t);
  t.comment(`cluster ready in ${Date.now() - started} ms`);
  const seedPorts = c.seeds().split(',').map((hp) => Number(hp.split(':')[1]));

  t.test('every slot is served by exactly one of three masters', async (t) => {
    t.equal(c.nodes.length, 3);
    t.ok(c.nodes.every((n) => n.alive && n.pid > 0 && n.port >= 20000 && existsSync(n.dir)), 'nodes are up');
    t.match(c.seeds(), /^127\.0\.0\.1:\d+,127\.0\.0\.1:\d+,127\.0\.0\.1:\d+$/);
    t.equal(c.url('vol'), `redis-cluster://${c.seeds()}/vol`);
    const ms = await c.masters();
    t.same(ms.map((m) => m.port), seedPorts, 'the seeds are the masters');
    const covered = new Array<number>(16384).fill(0);
    for (const m of ms) for (const [a, b] of m.slots) for (let s = a; s <= b; s++) covered[s]!++;
    t.ok(covered.every((n) => n === 1), 'each slot once');
    for (const n of c.nodes) {
      const info = await c.cli(n.port, 'CLUSTER', 'INFO');
      t.match(info, /cluster_state:ok/);
      t.match(info, /cluster_slots_assigned:16384/);
      t.match(info, /cluster_known_nodes:3/);
      t.equal(await c.cli(n.port, 'CONFIG', 'GET', 'bind'), 'bind\n127.0.0.1', 'loopback only');
    }
    t.equal(await c.slotOwner(0), ms[0]!.port);
    t.equal(await c.slotOwner(16383), ms[2]!.port);
    for (const k of ['a', 'kvfs', '{vol}:inode:1', 'x{}y', '{}{a}']) {
      t.equal(Number(await c.cli(seedPorts[0]!, 'CLUSTER', 'KEYSLOT', k)), keySlot(k), `the test's keySlot(${k})`);
    }
  });

  t.test('a key written with redis-cli -c reads back, from any node', async (t) => {
    t.equal(await c.cli(seedPorts[0]!, '-c', 'SET', 'hello', 'world'), 'OK');
    for (const p of seedPorts) t.equal(await c.cli(p, '-c', 'GET', 'hello'), 'world');
    await t.rejects(c.cli(seedPorts[0]!, 'NOSUCHCOMMAND'), /unknown command/, 'an error reply rejects');
  });

  t.test('migrateSlots moves slots and keys while clients read and write them', async (t) => {
    const [src, dst] = await c.masters();
    const tags = tagsIn(120, (s) => inRanges(s, src!.slots), 'm');
    const slots = tags.map(keySlot);
    const keys = tags.flatMap((tag) => [0, 1, 2, 3].map((j) => `{${tag}}:${j}`));
    const io = ioCluster(c);
    t.teardown(() => io.disconnect());
    const expected = new Map<string, string>();
    await Promise.all(keys.map((k) => io.set(k, 'v0').then(() => expected.set(k, 'v0'))));
    for (const tag of tags.slice(0, 10)) await c.cli(seedPorts[0]!, '-c', 'SET', `{${tag}}:cli`, 'c0');

    let stop = false;
    const errors: string[] = [];
    const ops = { io: 0, mget: 0, cli: 0 };
    const WRITERS = 4;
    const writer = async (w: number) => {
      const mine = keys.filter((_, i) => i % WRITERS === w);
      for (let gen = 1; !stop; gen++) {
        const k = mine[gen % mine.length]!;
        const v = `w${w}-${gen}`;
        try {
          await io.set(k, v);
          expected.set(k, v);
          const got = await io.get(k);
          if (got !== v) errors.push(`${k}: read ${got} right after writing ${v}`);
          ops.io += 2;
        } catch (e) {
          errors.push(`ioredis ${k}: ${(e as Error).message}`);
        }
      }
    };
    // multi-key reads of one tag: TRYAGAIN while a slot's keys are split between nodes, retried by ioredis
    const reader = async () => {
      for (let i = 0; !stop; i++) {
        const tag = tags[i % tags.length]!;
        try {
          const got = await io.mget(`{${tag}}:0`, `{${tag}}:1`, `{${tag}}:2`, `{${tag}}:3`);
          if (got.some((v) => v === null)) errors.push(`MGET {${tag}}: a key is missing: ${JSON.stringify(got)}`);
          ops.mget++;
        } catch (e) {
          errors.push(`ioredis MGET {${tag}}: ${(e as Error).message}`);
        }
      }
    };
    const cliLoop = async () => {
      for (let i = 1; !stop; i++) {
        const k = `{${tags[i % 10]!}}:cli`;
        try {
          await c.cli(seedPorts[i % 3]!, '-c', 'SET', k, `c${i}`);
          const got = await c.cli(seedPorts[(i + 1) % 3]!, '-c', 'GET', k);
          if (got !== `c${i}`) errors.push(`redis-cli ${k}: read ${got} right after writing c${i}`);
          ops.cli += 2;
        } catch (e) {
          errors.push(`redis-cli ${k}: ${(e as Error).message}`);
        }
      }
    };
    const load = [...Array.from({ length: WRITERS }, (_, w) => writer(w)), reader(), cliLoop()];
    await new Promise((r) => setTimeout(r, 200));
    const before = { ...ops };
    const t0 = Date.now();
    try {
      await c.migrateSlots(src!.port, dst!.port, slots, { batch: 3 });
    } finally {
      const took = Date.now() - t0;
      await new Promise((r) => setTimeout(r, 200));
      stop = true;
      await Promise.all(load);
      t.comment(
        `migrated ${slots.length} slots in ${took} ms; during it: ${ops.io - before.io} ioredis ops, ` +
          `${ops.mget - before.mget} MGETs, ${ops.cli - before.cli} redis-cli ops`,
      );
    }
    t.same(errors.slice(0, 20), [], 'no client saw an error or a wrong value');
    t.ok(ops.io > before.io && ops.mget > before.mget && ops.cli > before.cli, 'every client kept working during the move');

    const after = await c.masters();
    const dstNow = after.find((m) => m.port === dst!.port)!;
    const srcNow = after.find((m) => m.port === src!.port)!;
    t.ok(slots.every((s) => inRanges(s, dstNow.slots) && !inRanges(s, srcNow.slots)), 'the target serves every moved slot');
    for (const s of slots.slice(0, 8)) {
      t.equal(await c.slotOwner(s), dst!.port, `slotOwner(${s})`);
      t.equal(await c.cli(src!.port, 'CLUSTER', 'COUNTKEYSINSLOT', String(s)), '0', `slot ${s} empty on the source`);
      t.equal(await c.cli(dst!.port, 'CLUSTER', 'COUNTKEYSINSLOT', String(s)), slots.indexOf(s) < 10 ? '5' : '4', `slot ${s} keys on the target`);
    }
    const values = await Promise.all(keys.map((k) => io.get(k)));
    t.same(values, keys.map((k) => expected.get(k)), 'every value is the last one written');
    t.equal(await c.cli(dst!.port, 'GET', keys[0]!), expected.get(keys[0]!), 'read from the target directly');
    await c.waitOk();
  });

  t.test('delSlots leaves slots unserved', async (t) => {
    const gone = [100, 101, 9000];
    await c.delSlots(gone);
    for (const n of c.nodes) {
      const info = await c.cli(n.port, 'CLUSTER', 'INFO');
      t.match(info, /cluster_slots_assigned:16381/, `127.0.0.1:${n.port} misses 3 slots`);
      t.match(info, /cluster_state:fail/, 'full coverage is required by default');
    }
    await t.rejects(c.slotOwner(100), /slot 100 is not served/);
    const [tag] = tagsIn(1, (s) => s === 9000, 'd');
    await t.rejects(c.cli(seedPorts[0]!, '-c', 'SET', `{${tag}}`, 'x'), /CLUSTERDOWN/);
    for (const n of c.nodes) await c.cli(n.port, 'CONFIG', 'SET', 'cluster-require-full-coverage', 'no');
    const [ok] = tagsIn(1, (s) => s === 9001, 'd');
    // cluster_state flips back to ok on each node at its next cron tick
    for (let i = 0; i < 50; i++) {
      const r = await c.cli(seedPorts[0]!, '-c', 'SET', `{${ok}}`, 'x').catch((e: Error) => e.message);
      if (r === 'OK') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    t.equal(await c.cli(seedPorts[0]!, '-c', 'GET', `{${ok}}`), 'x', 'a served slot works without full coverage');
    await t.rejects(c.cli(seedPorts[0]!, '-c', 'SET', `{${tag}}`, 'x'), /CLUSTERDOWN Hash slot not served/);
  });

  t.test('stop() kills every server and removes every dir, once or twice', async (t) => {
    const pids = c.nodes.map((n) => n.pid);
    const ports = c.nodes.map((n) => n.port);
    const root = dirname(c.nodes[0]!.dir);
    t.ok(existsSync(root));
    await c.stop();
    t.ok(pids.every(gone), 'no server process');
    t.same(ports.flatMap((p) => processesMentioning(`127.0.0.1:${p}`)), [], 'nothing claims those ports');
    t.ok(c.nodes.every((n) => !n.alive), 'handles say dead');
    t.notOk(existsSync(root), 'the dirs are gone');
    await c.stop();
  });
});

t.test('with replicas and a password: a killed master fails over and keeps what was replicated', { skip }, async (t) => {
  const pw = `pw-${randomBytes(8).toString('hex')}`;
  const started = Date.now();
  const c = await RedisCluster.start(t, { masters: 3, replicas: 1, password: pw });
  t.comment(`3+3 cluster ready in ${Date.now() - started} ms`);
  t.equal(c.nodes.length, 6);
  const [victim, other] = await c.masters();
  const replicas = (await c.cli(victim!.port, 'CLUSTER', 'REPLICAS', victim!.id)).split('\n').filter(Boolean);
  t.equal(replicas.length, 1, 'one replica');
  const replicaPort = Number(/:(\d+)@/.exec(replicas[0]!)![1]);
  const io = ioCluster(c, pw);
  t.teardown(() => io.disconnect());

  // slots moved onto the victim (MIGRATE with AUTH2) reach its replica too
  const movedIn = tagsIn(5, (s) => inRanges(s, other!.slots), 'g').map((tag) => `{${tag}}`);
  for (const k of movedIn) await io.set(k, `value of ${k}`);
  await c.migrateSlots(other!.port, victim!.port, movedIn.map(keySlot));
  t.equal(await c.slotOwner(keySlot(movedIn[0]!)), victim!.port, 'moved onto the victim');

  const keys = tagsIn(100, (s) => inRanges(s, victim!.slots), 'f').map((tag) => `{${tag}}`);
  const r = new Redis({ host: '127.0.0.1', port: victim!.port, password: pw, protocol: 2 });
  for (const k of keys) await r.set(k, `value of ${k}`);
  t.equal(await r.call('WAIT', '1', '1000'), 1, 'the replica acknowledged the writes');
  r.disconnect();

  const t0 = Date.now();
  c.kill(victim!.port);
  t.notOk(c.nodes.find((n) => n.port === victim!.port)!.alive, 'dead at once');
  const promoted = await c.waitFailover(victim!.port);
  t.comment(`failover took ${Date.now() - t0} ms`);
  t.equal(promoted, replicaPort, 'the replica took over');
  t.equal(await c.slotOwner(victim!.slots[0]![0]), promoted);
  t.notOk((await c.masters()).some((m) => m.port === victim!.port), 'the dead master is no longer listed');

  const all = [...keys, ...movedIn];
  const io2 = ioCluster(c, pw); // a fresh client: the dead seed is skipped
  t.teardown(() => io2.disconnect());
  t.same(await Promise.all(all.map((k) => io2.get(k))), all.map((k) => `value of ${k}`), 'every write is there');
  t.same(await Promise.all(all.map((k) => io.get(k))), all.map((k) => `value of ${k}`), 'also for the client that saw it');
  t.equal(await c.cli(promoted, 'GET', keys[0]!), `value of ${keys[0]}`);
  await t.rejects(c.waitFailover(promoted, 200), /still alive/);
});

t.test('a plain server with a password', { skip }, async (t) => {
  const pw = `pw-${randomBytes(8).toString('hex')}`;
  const s = await RedisServer.start(t, { password: pw, maxmemory: '16mb', maxmemoryPolicy: 'allkeys-lru' });
  t.equal(s.url('vol'), `redis://127.0.0.1:${s.port}/vol`);
  const anon = await run('redis-cli', ['-e', '-h', '127.0.0.1', '-p', String(s.port), 'SET', 'a', '1'], {
    env: { REDISCLI_AUTH: undefined },
  });
  t.not(anon.code, 0, 'an unauthenticated command fails');
  t.match(anon.stdout + anon.stderr, /NOAUTH/);
  t.equal(await s.cli('SET', 'a', '1'), 'OK');
  t.equal(await s.cli('GET', 'a'), '1');
  t.equal(await s.cli('CONFIG', 'GET', 'maxmemory'), 'maxmemory\n16777216');
  t.equal(await s.cli('CONFIG', 'GET', 'maxmemory-policy'), 'maxmemory-policy\nallkeys-lru');
  t.match(await s.cli('INFO', 'server'), /redis_mode:standalone/);
  t.notOk(readFileSync(`/proc/${s.pid}/cmdline`, 'utf8').includes(pw), 'the password is not in argv');
  const err = await s.cli('NOSUCHCOMMAND', pw).then(() => undefined, (e: Error) => e.message);
  t.match(err, /unknown command/);
  t.notOk(err?.includes(pw), 'messages never show the password');
  const io = new Redis({ host: '127.0.0.1', port: s.port, password: pw, protocol: 2 });
  t.teardown(() => io.disconnect());
  t.equal(await io.get('a'), '1', 'ioredis with the password');
  s.kill();
  t.notOk(s.alive);
  await s.stop();
  t.notOk(existsSync(s.dir));
});

t.test('a failed start stops what it started and shows the log', { skip }, async (t) => {
  const pw = `pw-${randomBytes(8).toString('hex')}`;
  const bad = await RedisServer.start(undefined, { password: pw, extra: ['--no-such-directive', 'yes'] }).then(
    () => undefined,
    (e: Error) => e.message,
  );
  t.match(bad, /exited at start[\s\S]*Bad directive/, 'the node\'s own words');
  t.notOk(bad?.includes(pw), 'no password in the message');
  t.equal(portsIn(bad).length, 1, 'the message names the node');
  t.same(dirsLeftFor(portsIn(bad)), [], 'no dir is left');

  // the servers come up, then redis-cli refuses to make a cluster of two masters
  const two = await RedisCluster.start(undefined, { masters: 2, password: pw }).then(
    () => undefined,
    (e: Error) => e.message,
  );
  t.match(two, /--cluster create failed[\s\S]*at least 3 master[\s\S]*redis\.log/);
  t.notOk(two?.includes(pw), 'no password in the message');
  const ports = portsIn(two);
  t.equal(ports.length, 2, 'the message names both nodes');
  t.same(ports.flatMap((p) => processesMentioning(`127.0.0.1:${p}`)), [], 'both servers are gone');
  t.same(dirsLeftFor(ports), [], 'no dir is left');
});

t.test('the watchdog kills the servers of a test process killed -9', { skip }, async (t) => {
  const child = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url)], {
    env: { ...process.env, KVFS_TEST_REDIS_ORPHAN: '1' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const signal = await new Promise<NodeJS.Signals | null>((res) => child.on('exit', (_code, sig) => res(sig)));
  t.equal(signal, 'SIGKILL', 'the child was killed');
  const line = out.split('\n').find((l) => l.startsWith('{'));
  t.ok(line, 'the child started a server', { out });
  if (!line) return;
  const orphan = JSON.parse(line) as { pid: number; dir: string; port: number };
  t.teardown(() => {
    // should the watchdog have failed: do not leave the orphan running
    if (!gone(orphan.pid) && readFileSync(`/proc/${orphan.pid}/cmdline`, 'utf8').includes('redis-server')) {
      process.kill(orphan.pid, 'SIGKILL');
    }
  });
  const t0 = Date.now();
  while (Date.now() - t0 < 10_000 && (!gone(orphan.pid) || existsSync(dirname(orphan.dir)))) {
    await new Promise((r) => setTimeout(r, 100));
  }
  t.ok(gone(orphan.pid), 'the orphaned server is dead');
  t.notOk(existsSync(dirname(orphan.dir)), 'its dir is gone');
  t.comment(`watchdog cleaned up in ${Date.now() - t0} ms`);
});
