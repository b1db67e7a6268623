/**
 * Seeing inside a live daemon (bin/diag.ts, src/diag/): one mount serves every case. `kvfs stats` under a
 * workload (text and --json); the heap profiler switched on and off at runtime and dumped in pprof's format
 * (decoded with pprof-format: samples, functions of src/, the pool's off-heap bytes); a CPU profile; requests
 * that are not the protocol (each answered with an error, the mount still serving); another uid, refused by the
 * runtime directory and, when that is opened up, by the daemon's own check of its peer (SO_PEERCRED); and a
 * stale socket left by a kill -9, replaced by the next mount.
 */
import t from 'tap';
import { chmodSync, linkSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { expectExit } from '../helpers/assert.js';
import { ensureUser, kvfs, mountKvfs, PYTHON, run, runAs, tempDir, TEST_USER } from '../helpers/mount.js';
import { decodePprof, functionNames } from '../../src/diag/pprof.js';
import { mountAt } from '../../src/fs/fuse/mount-table.js';
import { socketOf } from '../../bin/diag.js';

t.setTimeout(240_000);

const WORKLOAD = String.raw`
import os, sys
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
for i in range(200):
    p = os.path.join(d, f"f{i}")
    with open(p, "wb") as f: f.write(os.urandom(1000 + 300 * i))
    os.stat(p)
for i in range(200):
    with open(os.path.join(d, f"f{i}"), "rb") as f: f.read()
`;

/** one line to the socket, the answers to each line (python: a client of its own, as a user would write one) */
const TALK = String.raw`
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
f = s.makefile("rwb")
out = []
for line in json.loads(sys.argv[2]):
    f.write(line.encode() + b"\n"); f.flush()
    out.append(f.readline().decode().strip())
print(json.dumps(out))
`;

const dir = tempDir(t, 'kvfs-test-diag-');
const m = await mountKvfs(t, { driver: 'default', store: 'memory:' });
const cli = (args: string[]) => kvfs(args, { dataDir: dir });
const work = () => run(PYTHON, ['-c', WORKLOAD, join(m.mnt, `w${Date.now()}`)]);

t.test('kvfs stats: opcodes with counts and latency, the pool per class, memory per part; --json parses', async (t) => {
  expectExit(t, await work(), 'a workload through the mount');
  const r = await cli(['stats', m.mnt, '--json']);
  expectExit(t, r, 'kvfs stats --json');
  const s = JSON.parse(r.stdout) as {
    session: { byOp: Record<string, number>; latency: Record<string, { p50: number; p99: number; max: number }> };
    pool: { capacityBytes: number; classes: { size: number; count: number }[] };
    memory: { rss: number; parts: { name: string; bytes: number }[] };
  };
  for (const op of ['CREATE', 'WRITE', 'LOOKUP', 'OPEN', 'RELEASE', 'FLUSH']) t.ok(s.session.byOp[op]! > 0, `${op}: ${s.session.byOp[op]}`);
  const calls = (s as unknown as { store: { calls: Record<string, number>; errors: Record<string, number> } }).store;
  t.ok(calls.calls.commit! > 0 && calls.calls.get! > 0, `store calls counted (commit ${calls.calls.commit}, get ${calls.calls.get})`);
  t.same(calls.errors, {}, 'no store errors');
  const w = s.session.latency.WRITE;
  t.ok(w && w.p50 > 0 && w.p50 <= w.p99 && w.p99 <= w.max, `WRITE latency p50 ${w?.p50} <= p99 ${w?.p99} <= max ${w?.max} (us)`);
  t.ok(s.pool.classes.length > 0 && s.pool.classes.every((c) => c.size > 0 && c.count > 0), 'the pool, per size class');
  const sum = s.memory.parts.reduce((n, p) => n + p.bytes, 0);
  t.equal(sum, s.memory.rss, `memory parts add up to the RSS (${s.memory.parts.map((p) => p.name).join(', ')})`);
  const other = s.memory.parts.find((p) => p.name === 'other')!.bytes;
  t.ok(Math.abs(other) <= 0.1 * s.memory.rss, `what the daemon cannot explain (${(other / 2 ** 20).toFixed(1)} MiB) is within the stated 10% of its RSS (${(s.memory.rss / 2 ** 20).toFixed(1)} MiB)`);
  const text = await cli(['stats', m.mnt]);
  expectExit(t, text, 'kvfs stats');
  t.match(text.stdout, /opcode\s+count\s+ops\/s\s+p50\s+p99\s+max/, 'a table of opcodes');
  t.match(text.stdout, /buffer pool: /, 'the pool');
  t.match(text.stdout, /memory: RSS /, 'memory');
  t.match(text.stdout, /store calls: .*commit \d+/, 'store calls');
  const status = await cli(['status', m.mnt]);
  expectExit(t, status, 'kvfs status MOUNTPOINT');
  t.match(status.stdout, /^memory: +RSS .*\n(  .+\n)+/m, 'the memory report per part');
  t.match(status.stdout, /^volume: +\S+\nformat version: +\d+/m, 'the volume record, from the daemon (a memory: volume lives in it)');
  // --watch without a terminal: one line per interval, until stopped
  const watch = await run(process.execPath, [join(process.cwd(), 'bin/kvfs.js'), 'stats', m.mnt, '--watch', '0.3'], { timeout: 1500 });
  const lines = watch.stdout.split('\n').filter(Boolean);
  t.ok(lines.length >= 2 && lines.every((l) => /^\d{4}-\d\d-\d\dT\S+ in flight \d+ .*; pool in use .*; RSS /.test(l)), `--watch: a line per interval (${lines.length} in 1.5 s)`);
});

t.test('heap profile: off by default, started, dumped as pprof with src/ functions and the pool, stopped, started again', async (t) => {
  const none = await cli(['profile', 'heap', 'dump', m.mnt, '-o', join(dir, 'none.pb.gz')]);
  t.equal(none.code, 1, 'a dump without a start fails');
  t.match(none.stderr, /heap sampling is off: start it first/, 'and says why');
  expectExit(t, await cli(['profile', 'heap', 'start', m.mnt, '--interval', '4096']), 'start');
  const twice = await cli(['profile', 'heap', 'start', m.mnt]);
  t.equal(twice.code, 1, 'a second start fails');
  t.match(twice.stderr, /already on/, 'and says so');
  expectExit(t, await work(), 'a workload while sampling');
  const file = join(dir, 'heap.pb.gz');
  expectExit(t, await cli(['profile', 'heap', 'dump', m.mnt, '-o', file]), 'dump');
  t.equal(statSync(file).mode & 0o777, 0o600, 'the dump is 0600');
  const p = decodePprof(readFileSync(file));
  t.ok(p.sample.length > 0, `${p.sample.length} samples`);
  const names = functionNames(p);
  const strings = p.stringTable.strings;
  const files = p.function.map((f) => strings[Number(f.filename)] ?? '');
  t.ok(files.some((f) => f.includes('/src/fs/') || f.includes('/src/backend/')), 'functions of src/ (file names)');
  const pool = p.sample.find((s) => {
    const loc = p.location.find((l) => l.id === s.locationId[0]);
    const fn = p.function.find((f) => f.id === loc?.line[0]?.functionId);
    return strings[Number(fn?.name)] === '[off-heap] buffer pool arena';
  });
  const stats = JSON.parse((await cli(['stats', m.mnt, '--json'])).stdout) as { pool: { capacityBytes: number } };
  t.ok(pool, `the pool's arena is an entry (${names.filter((n) => n.startsWith('[off-heap]')).join(', ')})`);
  t.equal(Number(pool?.value[1]), stats.pool.capacityBytes, 'with the bytes the pool counts');
  expectExit(t, await cli(['profile', 'heap', 'stop', m.mnt]), 'stop');
  const again = await cli(['profile', 'heap', 'stop', m.mnt]);
  t.equal(again.code, 1, 'a second stop fails');
  t.match(again.stderr, /not on/, 'and says so');
  expectExit(t, await cli(['profile', 'heap', 'start', m.mnt]), 'a second start after the stop');
  expectExit(t, await cli(['profile', 'heap', 'dump', m.mnt, '-o', join(dir, 'heap2.pb.gz')]), 'dumps again');
  expectExit(t, await cli(['profile', 'heap', 'stop', m.mnt]), 'and stops');
});

t.test('cpu profile: a second under a workload, as pprof', async (t) => {
  const file = join(dir, 'cpu.pb.gz');
  let done = false;
  const profiling = cli(['profile', 'cpu', m.mnt, '--seconds', '2', '-o', file]).finally(() => { done = true; });
  while (!done) expectExit(t, await work(), 'a workload while profiling');
  const r = await profiling;
  expectExit(t, r, 'kvfs profile cpu');
  const p = decodePprof(readFileSync(file));
  t.ok(p.sample.length > 0, `${p.sample.length} samples`);
  const files = p.function.map((f) => p.stringTable.strings[Number(f.filename)] ?? '');
  t.ok(files.some((f) => f.includes('/src/fs/')), `functions of src/fs/ among ${functionNames(p).length}`);
  const bad = await cli(['profile', 'cpu', m.mnt, '--seconds', '0', '-o', file]);
  t.equal(bad.code, 1, '--seconds 0 fails');
  t.match(bad.stderr, /0 < seconds/, 'naming the range');
});

t.test('requests that are not the protocol get an error each; the mount keeps serving', async (t) => {
  const sock = socketOf(mountAt(m.mnt)!);
  const lines = ['garbage', '[1,2]', '{"cmd": 5}', '{"cmd": "nope"}', '{"v": 99, "cmd": "hello"}', '{"cmd": "heap-start", "interval": -1}',
    '{"id": 7, "cmd": "hello"}'];
  const r = await run(PYTHON, ['-c', TALK, sock, JSON.stringify(lines)]);
  expectExit(t, r, 'talk to the socket');
  const out = (JSON.parse(r.stdout) as string[]).map((l) => JSON.parse(l) as { ok: boolean; error?: string; id?: number; result?: { pid: number } });
  t.match(out[0], { ok: false, error: /malformed request \(not JSON\)/ }, 'not JSON');
  t.match(out[1], { ok: false, error: /JSON object/ }, 'not an object');
  t.match(out[2], { ok: false, error: /no "cmd" string/ }, 'no command');
  t.match(out[3], { ok: false, error: /unknown command 'nope' \(known: hello, stats/ }, 'an unknown command, with the known ones');
  t.match(out[4], { ok: false, error: /protocol version 99 is not supported/ }, 'another version');
  t.match(out[5], { ok: false, error: /interval -1/ }, 'a bad argument');
  t.match(out[6], { ok: true, id: 7, result: { pid: m.pid } }, 'and then a good request is answered, with its id');
  const long = await run(PYTHON, ['-c', TALK, sock, JSON.stringify(['x'.repeat(70_000)])]);
  expectExit(t, long, 'a 70,000-byte line');
  t.match(JSON.parse((JSON.parse(long.stdout) as string[])[0]!), { ok: false, error: /over 65536 bytes/ }, 'refused');
  expectExit(t, await work(), 'the mount still serves');
  expectExit(t, await cli(['stats', m.mnt]), 'and answers stats');
});

t.test('another uid: refused by the runtime directory, and by the daemon itself when the socket is reached another way', async (t) => {
  ensureUser(TEST_USER);
  const r = await runAs(TEST_USER, 'env', ['-u', 'NODE_OPTIONS', process.execPath, join(process.cwd(), 'bin/kvfs.js'), 'stats', m.mnt], { cwd: '/' });
  t.not(r.code, 0, 'kvfs stats as another user fails');
  t.match(r.stderr, /belongs to uid 0: only that user and root/, 'saying whose mount it is');
  const sock = socketOf(mountAt(m.mnt)!);
  const runDir = join(sock, '..');
  const saved = { dir: statSync(runDir).mode & 0o7777, sock: statSync(sock).mode & 0o7777 };
  t.equal(saved.dir, 0o700, 'the runtime directory is 0700');
  t.equal(saved.sock, 0o600, 'the socket is 0600');
  // The other user reaches the socket through a hard link in a directory of this test's own (beside the runtime
  // directory, so on its filesystem): the shared runtime directory is never opened up, since a daemon that other
  // test files start meanwhile refuses a runtime directory that others can enter.
  const door = mkdtempSync(join(runDir, '..', 'kvfs-test-door-'));
  chmodSync(door, 0o711);
  const link = join(door, 'control.sock');
  linkSync(sock, link);
  chmodSync(sock, 0o666);
  try {
    const talk = await runAs(TEST_USER, PYTHON, ['-c', TALK, link, JSON.stringify(['{"cmd": "stats"}'])], { cwd: '/' });
    expectExit(t, talk, 'the other user reaches the socket');
    const out = JSON.parse((JSON.parse(talk.stdout) as string[])[0]!) as { ok: boolean; error: string };
    t.match(out, { ok: false, error: /uid \d+ may not use this mount's control socket/ }, 'the daemon refuses it');
  } finally {
    chmodSync(sock, saved.sock);
    rmSync(door, { recursive: true, force: true });
  }
  t.equal(statSync(runDir).mode & 0o7777, 0o700, 'the runtime directory stayed 0700');
  expectExit(t, await cli(['stats', m.mnt]), 'root still gets stats');
});

t.test('a kill -9 leaves a stale socket; the next mount replaces it', async (t) => {
  const sock = socketOf(mountAt(m.mnt)!);
  await m.kill9();
  t.ok(statSync(sock).isSocket(), 'the dead daemon left its socket');
  const dead = await cli(['stats', m.mnt]);
  t.not(dead.code, 0, 'stats of the dead mount fails');
  t.match(dead.stderr, /control socket/, 'naming the socket');
  const m2 = await m.remount();
  const r = await cli(['stats', m2.mnt, '--json']);
  expectExit(t, r, 'stats of the new mount');
  const hello = await run(PYTHON, ['-c', TALK, sock, JSON.stringify(['{"cmd": "hello"}'])]);
  t.match(JSON.parse((JSON.parse(hello.stdout) as string[])[0]!), { ok: true, result: { pid: m2.pid, version: 1 } }, 'the socket is the new daemon\'s');
  t.equal((await m2.unmount()).code, 0, 'unmount');
  t.throws(() => statSync(sock), { code: 'ENOENT' }, 'a clean exit removes the socket');
});

t.test('under fio: kvfs stats and the Prometheus metrics (--metrics) show the same counts', async (t) => {
  const parse = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => {
    name: string; type: string; metrics: { value?: string; labels?: Record<string, string> }[];
  }[];
  const store = `local:${join(dir, 'metrics-volume')}`;
  expectExit(t, await cli(['format', store]), 'format');
  const mm = await mountKvfs(t, { driver: 'default', store, args: ['--metrics', '127.0.0.1:0'] });
  const r = await run('fio', ['--name=stats', `--directory=${mm.mnt}`, '--rw=randrw', '--bs=4k', '--size=8M', '--numjobs=2',
    '--ioengine=psync', '--fsync=32', '--runtime=2', '--time_based', '--group_reporting']);
  expectExit(t, r, 'fio randrw through the mount');
  await new Promise((res) => setTimeout(res, 500)); // the kernel's last RELEASEs and FORGETs
  const url = /metrics at (http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(mm.output().stderr + mm.output().stdout)?.[1];
  t.ok(url, `the daemon says where its metrics are (${url})`);
  const text = await (await fetch(url!)).text();
  const j = await cli(['stats', mm.mnt, '--json']);
  expectExit(t, j, 'kvfs stats --json');
  const s = JSON.parse(j.stdout) as { session: { byOp: Record<string, number> }; pool: { classes: { size: number; inUse: number; free: number }[] } };
  for (const op of ['CREATE', 'OPEN', 'READ', 'WRITE', 'FSYNC', 'RELEASE', 'LOOKUP']) t.ok(s.session.byOp[op]! > 0, `fio drove ${op}: ${s.session.byOp[op]}`);
  t.ok(s.pool.classes.length >= 2 && s.pool.classes.every((c) => c.inUse + c.free > 0), 'the pool\'s classes');
  const families = new Map(parse(text).map((f) => [f.name, f]));
  const requests = families.get('kvfs_requests_total');
  t.equal(requests?.type, 'COUNTER', 'kvfs_requests_total is a counter');
  for (const [op, n] of Object.entries(s.session.byOp)) {
    const m = requests?.metrics.find((x) => x.labels?.op === op);
    t.equal(Number(m?.value), n, `kvfs_requests_total{op="${op}"} = kvfs stats' ${n}`);
  }
  const cls = families.get('kvfs_buffer_pool_class_buffers');
  for (const c of s.pool.classes) {
    const free = cls?.metrics.find((x) => x.labels?.size === String(c.size) && x.labels?.state === 'free');
    t.equal(Number(free?.value), c.free, `pool class ${c.size}: ${c.free} free in both`);
  }
  t.ok(families.has('kvfs_request_latency_seconds') && families.has('process_resident_memory_bytes'), 'latency and process families');
  t.equal((await mm.unmount()).code, 0, 'unmount');
  const bad = await cli(['mount', store, mm.mnt, '--metrics', 'nowhere']);
  t.equal(bad.code, 1, 'a bad --metrics address fails');
  t.match(bad.stderr, /bad --metrics 'nowhere': give HOST:PORT/, 'with a clear message');
});

t.test('logs: JSON lines in a log file, the level changed at runtime, --debug logs every request', async (t) => {
  const file = join(dir, 'daemon.log');
  const mm = await mountKvfs(t, { driver: 'default', store: 'memory:', args: ['--log-file', file] });
  const lines = () => readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { level: string; time: string; pid: number; msg: string; op?: string });
  // the daemon logs "mounted" just after the mount shows in the mount table (which is when mountKvfs returns)
  for (const end = Date.now() + 5000; Date.now() < end && !lines().some((l) => /^mounted /.test(l.msg));) await new Promise((r) => setTimeout(r, 50));
  const first = lines();
  t.ok(first.length > 0, `the log file has lines (${first.length})`);
  t.ok(first.every((l) => typeof l.level === 'string' && !Number.isNaN(Date.parse(l.time)) && l.pid === mm.pid), 'each a JSON object with level, time and pid');
  t.ok(first.some((l) => l.level === 'info' && /^mounted in-memory store/.test(l.msg)), 'the mount is an info event');
  const shown = await cli(['log-level', mm.mnt]);
  expectExit(t, shown, 'kvfs log-level MNT');
  t.match(shown.stdout, /logs at level info/, 'info by default');
  expectExit(t, await run('stat', [join(mm.mnt, 'nothing-here')]), 'a stat before', 1);
  t.notOk(lines().some((l) => l.level === 'debug'), 'no request lines at info');
  expectExit(t, await cli(['log-level', mm.mnt, 'debug']), 'kvfs log-level MNT debug');
  expectExit(t, await run('stat', [join(mm.mnt, 'not-there-either')]), 'a stat at debug', 1);
  const debug = lines().filter((l) => l.level === 'debug');
  t.ok(debug.some((l) => l.op === 'LOOKUP' && l.msg.includes('"not-there-either"')), 'the LOOKUP is logged, with its name');
  expectExit(t, await cli(['log-level', mm.mnt, 'info']), 'back to info');
  const n = lines().length;
  expectExit(t, await run('stat', [join(mm.mnt, 'third')]), 'a stat at info again', 1);
  t.equal(lines().filter((l) => l.level === 'debug').length, debug.length, 'no more request lines');
  t.ok(lines().length >= n, 'the log goes on');
  const bad = await cli(['log-level', mm.mnt, 'loud']);
  t.equal(bad.code, 1, 'an unknown level fails');
  t.match(bad.stderr, /unknown log level 'loud': give one of error, warn, info, debug, trace/, 'naming the levels');
  t.equal((await mm.unmount()).code, 0, 'unmount');
  t.ok(lines().some((l) => /everything committed; stopped/.test(l.msg)), 'the clean end is logged too');

  const dm = await mountKvfs(t, { driver: 'default', store: 'memory:', args: ['--debug'] });
  expectExit(t, await run('stat', [join(dm.mnt, 'x')]), 'a stat on a --debug mount', 1);
  await new Promise((r) => setTimeout(r, 200));
  t.match(dm.output().stderr, /^kvfs: LOOKUP 1 "x" in \d+ us$/m, '--debug on the native driver: readable request lines on a pipe');
  t.equal((await dm.unmount()).code, 0, 'unmount');
});
