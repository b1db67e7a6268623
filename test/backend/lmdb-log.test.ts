import { mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { byteOrder, keyCompare } from '../../src/backend/kv-rules.js';
import { firstAfter, Overlay, recover, WriteLog, type LogWrite } from '../../src/backend/lmdb-log.js';
import { LmdbStore } from '../../src/backend/lmdb.js';
import { prng } from '../helpers/prng.js';
import { describe, run } from '../helpers/run.js';

/**
 * The write-ahead log of the LMDB store (lmdb-log.ts) and the store's log mode (lmdb.ts), on real files: replay
 * rules of `recover`, kill -9 and reopen, overlays merged into get and scan against a model, a second handle in
 * direct mode, backpressure at logLimitBytes, and close.
 */

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (u: Uint8Array | undefined): string | undefined => (u === undefined ? undefined : Buffer.from(u).toString());

const root = mkdtempSync(join(tmpdir(), 'kvfs-lmdb-log.'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const freshDir = (): string => join(root, `store.${n++}`);
const emptyDir = (): string => mkdtempSync(join(root, 'log.'));

/** the compiled store, for child processes (they run without tap's TypeScript loader) */
const DIST_LMDB = fileURLToPath(new URL('../../dist/src/backend/lmdb.js', import.meta.url));
/** runs an ES module body in a child node, with `LmdbStore` and `readdirSync` imported, `dir` = argv[1], more args after */
const child = (body: string, dir: string, ...args: string[]) =>
  run(process.execPath, ['--input-type=module', '-e', `import { readdirSync } from 'node:fs';
import { LmdbStore } from ${JSON.stringify('file://' + DIST_LMDB)};
const dir = process.argv[1];
const enc = (s) => new TextEncoder().encode(s);
${body}`, dir, ...args], { timeout: 30_000 });

/** log files by kind: log.<n> and log-spare.<n> */
const logFiles = (dir: string): string[] => readdirSync(dir).filter((f) => /^log\.\d+$/.test(f)).sort();
const spareFiles = (dir: string): string[] => readdirSync(dir).filter((f) => /^log-spare\.\d+$/.test(f));

/** the log file header (lmdb-log.ts Format): MAGIC 'kvfs-log-2\n', a 36-byte boot id, the file's number (u32) */
const HEADER = 'kvfs-log-2\n'.length + 36 + 4;
/** [start, end) of each record of a log file: [u32 body length][u32 crc][u32 file number][body], until a zero length */
function records(path: string): [number, number][] {
  const data = readFileSync(path);
  const out: [number, number][] = [];
  for (let at = HEADER, len; at + 12 <= data.length && (len = data.readUInt32LE(at)) !== 0; at += 12 + len) out.push([at, at + 12 + len]);
  return out;
}

const w = (key: string, value: string | Buffer | null): LogWrite => ({ key, value: typeof value === 'string' ? Buffer.from(value) : value });
/** writes as comparable rows: [key, value as hex, or null] */
const rows = (ws: readonly LogWrite[]) => ws.map((x) => [x.key, x.value === null ? null : x.value.toString('hex')]);

t.test('recover replays what a WriteLog appended, in order: puts, deletes, non-ASCII keys, empty and 100 KiB values', async (t) => {
  const dir = emptyDir();
  const log = new WriteLog(dir, 1);
  const big = Buffer.alloc(100 << 10, 0x5c);
  const recs: LogWrite[][] = [
    [w('d/1/héllo wörld', 'x'), w('d/1/日本語', ''), w('i/1', big)],
    [w('d/1/héllo wörld', null)],
    [w('d/2/🙂', Buffer.alloc(0)), w('d/1/日本語', 'second')],
    [w('i/1', null), w('i/2', big.subarray(1))],
  ];
  for (const r of recs) log.append(r);
  const got = recover(dir);
  t.same(rows(got.writes), rows(recs.flat()), 'every write, in the order appended, with its bytes');
  t.equal(got.dropped, 0, 'nothing dropped');
  t.same(got.files, [join(dir, 'log.1')], 'from log.1');
  t.equal(got.next, 2, 'the next file number follows the newest file');
  log.close();
  t.same(readdirSync(dir), [], 'close deletes every log file');
});

t.test('a file let go while a sync is under way: the sync and the ones after it succeed (CI: EBADF, then every sync failed)', async (t) => {
  const dir = emptyDir();
  const log = new WriteLog(dir, 1);
  for (let round = 0; round < 20; round++) {
    log.append([w(`k/${round}`, 'v')]);
    const syncing = log.sync();
    // a checkpoint's rotate and drop while the fdatasync is under way (the dropped file's descriptor must stay open)
    log.drop(log.rotate());
    await t.resolves(syncing, `round ${round}: the sync under way succeeds`);
  }
  log.append([w('k/last', 'v')]);
  await t.resolves(log.sync(), 'a later sync succeeds');
  t.same(rows(recover(dir).writes), rows([w('k/last', 'v')]), 'the current file holds the last record');
  log.close();
});

t.test('a torn tail ends the replay at the torn record and counts it as dropped', async (t) => {
  const recs = [[w('k/1', 'one')], [w('k/2', 'two')], [w('k/3', Buffer.alloc(3000, 3))]];
  for (const tear of ['truncated mid-record', 'a byte flipped in the last record'] as const) {
    const dir = emptyDir();
    const log = new WriteLog(dir, 1);
    for (const r of recs) log.append(r);
    const path = join(dir, 'log.1');
    const [start, end] = records(path).at(-1)!;
    if (tear === 'truncated mid-record') {
      truncateSync(path, start + Math.floor((end - start) / 2));
    } else {
      const data = readFileSync(path);
      data[end - 100]! ^= 0x40;
      writeFileSync(path, data);
    }
    const got = recover(dir);
    t.same(rows(got.writes), rows(recs.slice(0, 2).flat()), `${tear}: the records before it are replayed`);
    t.equal(got.dropped, 1, `${tear}: the torn record is counted in dropped`);
    log.close();
  }
});

t.test('a reused segment: records of its earlier number are never replayed', async (t) => {
  const dir = emptyDir();
  const log = new WriteLog(dir, 1);
  const rec = (tag: string, i: number) => [w(`o/${tag}${String(i).padStart(3, '0')}`, Buffer.alloc(200, i))];
  for (let i = 0; i < 50; i++) log.append(rec('old', i));
  const oldEnds = records(join(dir, 'log.1'));
  log.drop(log.rotate()); // log.1 -> a spare; log.2 current
  t.same(logFiles(dir), ['log.2'], 'log.2 is current');
  t.equal(spareFiles(dir).length, 1, 'log.1 was kept as a spare');
  log.rotate(); // log.3 is the spare renamed
  t.same(spareFiles(dir), [], 'log.3 reused the spare');
  for (let i = 0; i < 5; i++) log.append(rec('new', i));
  // records of the same size: the new ones end where old record 5 starts; the zero slot written after the last
  // new record is all that ends the replay there; put old record 5's length back (a slot that never reached the
  // disk): the record still names file 1, and must end the replay
  const path = join(dir, 'log.3');
  const data = readFileSync(path);
  t.equal(data.readUInt32LE(oldEnds[5]![0]), 0, 'a zero slot after the last new record');
  data.writeUInt32LE(oldEnds[5]![1] - oldEnds[5]![0] - 12, oldEnds[5]![0]);
  writeFileSync(path, data);
  const got = recover(dir);
  t.same(got.writes.map((x) => x.key), Array.from({ length: 5 }, (_, i) => rec('new', i)[0]!.key), 'only the 5 new records of log.3');
  t.equal(got.next, 4, 'the next file is log.4');
  log.close();
});

t.test('after a machine crash (another boot id) only what the last SYNCED covers is replayed, across files', async (t) => {
  const dir = emptyDir();
  const log = new WriteLog(dir, 1);
  log.append([w('a/1', '1')]);
  log.append([w('a/2', '2'), w('a/1', null)]);
  await log.sync();
  log.append([w('a/3', '3')]);
  log.rotate(); // not dropped: both files hold records LMDB never took
  log.append([w('b/1', '1')]);
  await log.sync();
  log.append([w('b/2', '2')]);
  log.append([w('b/3', '3')]);
  const otherBoot = 'another-boot-id-'.padEnd(36, '0');
  const crashed = recover(dir, otherBoot);
  t.same(crashed.writes.map((x) => x.key), ['a/1', 'a/2', 'a/1', 'a/3', 'b/1'], 'up to the last SYNCED, in log.2');
  t.equal(crashed.dropped, 2, 'the two records after it are dropped');
  const killed = recover(dir);
  t.same(killed.writes.map((x) => x.key), ['a/1', 'a/2', 'a/1', 'a/3', 'b/1', 'b/2', 'b/3'], 'the same boot (a killed process): everything');
  t.equal(killed.dropped, 0, 'and drops nothing');
  log.close();
  const bare = emptyDir();
  const unsynced = new WriteLog(bare, 1);
  unsynced.append([w('c/1', '1')]);
  t.same(recover(bare, otherBoot).writes, [], 'no SYNCED at all: nothing is replayed');
  unsynced.close();
});

/** what the killed child writes (KILLED_BODY): metadata by put, commit, incr and del; small blobs by put and del */
const KILLED = 120;
const KILLED_BODY = `
const s = await LmdbStore.open(dir, JSON.parse(process.argv[2]));
for (let i = 0; i < ${KILLED}; i++) {
  await s.put('m/' + i, enc('m' + i));
  if (!(await s.commit([{ key: 'c/' + i, value: undefined }], [{ key: 'c/' + i, value: enc('c' + i) }]))) throw new Error('commit');
  await s.incr('n/count', 1);
  if (i % 3 === 0) await s.del(['m/' + i]);
  if (i < 20) await s.put('b/s' + i, new Uint8Array(4096 * (1 + (i % 4))).fill(i));
}
await s.del(['b/s0', 'b/s1', 'b/s2', 'b/s3', 'b/s4']);
await s.put('m/é日🙂', new Uint8Array(0));
process.stdout.write(JSON.stringify({ logged: s.logged, checkpoints: s.logStats.checkpoints, files: readdirSync(dir) }) + '\\n');
process.kill(process.pid, 'SIGKILL');`;

for (const limit of [undefined, 16 << 10]) t.test(`log mode${limit ? ' with checkpoints and reused files (logLimitBytes 16 KiB)' : ''}: every resolved write survives kill -9, is replayed at the next open, and the old log is let go`, async (t) => {
  const dir = freshDir();
  const r = await child(KILLED_BODY, dir, JSON.stringify({ logLimitBytes: limit }));
  t.equal(r.signal, 'SIGKILL', r.signal === 'SIGKILL' ? 'the child was killed after its writes resolved' : describe(r));
  const seen = JSON.parse(r.stdout) as { logged: boolean; checkpoints: number; files: string[] };
  t.ok(seen.logged, 'the child wrote in log mode');
  const before = logFiles(dir);
  t.ok(before.length >= 1, `the child left its log (${before.join(' ')}; ${seen.checkpoints} checkpoints ran)`);
  let s = await LmdbStore.open(dir);
  t.ok(s.logged, 'the reopened store is in log mode');
  t.ok(s.logStats.replayed > 0, `${s.logStats.replayed} writes replayed`);
  t.equal(s.logStats.dropped, 0, 'none dropped');
  const after = logFiles(dir);
  t.equal(after.length, 1, `one log file left: ${after.join(' ')}`);
  t.notOk(before.includes(after[0]!), 'the new one, not one the child wrote');
  const check = async (when: string) => {
    const ms = Array.from({ length: KILLED }, (_, i) => i).filter((i) => i % 3 !== 0).map((i) => [`m/${i}`, `m${i}`]);
    t.same((await s.scan('m/')).map(([k, v]) => [k, dec(v)]).sort((a, b) => byteOrder(a[0]!, b[0]!)),
      [...ms, ['m/é日🙂', '']].sort((a, b) => byteOrder(a[0]!, b[0]!)), `${when}: puts and dels of metadata`);
    t.equal((await s.scan('c/')).length, KILLED, `${when}: every commit`);
    t.equal(dec(await s.get('n/count')), String(KILLED), `${when}: every incr`);
    const blobs = await s.getMany(Array.from({ length: 20 }, (_, i) => `b/s${i}`));
    t.ok(blobs.every((b, i) => (i < 5 ? b === undefined : b?.length === 4096 * (1 + (i % 4)) && b.every((x) => x === i))),
      `${when}: small blobs put, and deleted`);
  };
  await check('replayed');
  await s.close();
  s = await LmdbStore.open(dir);
  t.teardown(() => s.close());
  t.equal(s.logStats.replayed, 0, 'a reopen after close replays nothing');
  await check('reopened');
});

t.test('keyCompare is UTF-8 byte order (byteOrder) on every pair: ASCII, accents, BMP chars above the surrogates, astral ones', (t) => {
  const rnd = prng(0xc0de);
  // the orders of UTF-16 and UTF-8 part where a surrogate meets a char in U+E000..U+FFFF: both are among the units
  const units = ['a', 'b', 'z', '/', '0', '\u00e9', '\u65e5', '\ud7ff', '\ue000', '\uffee', '\uffff', '\ud83d\ude42', '\ud800\udc00', '\udbff\udfff'];
  const word = () => Array.from({ length: Math.floor(rnd() * 4) }, () => units[Math.floor(rnd() * units.length)]).join('');
  const sign = (n: number) => Math.sign(n);
  let wrong = 0;
  let first = '';
  for (let i = 0; i < 20000; i++) {
    const p = word();
    const a = 'd/1/' + p + word();
    const b = 'd/1/' + p + word();
    if (sign(keyCompare(a, b)) !== sign(byteOrder(a, b))) {
      wrong++;
      first ||= `${JSON.stringify(a)} vs ${JSON.stringify(b)}: ${keyCompare(a, b)}, byteOrder ${byteOrder(a, b)}`;
    }
  }
  t.equal(wrong, 0, `every pair in byte order${first ? ` (first wrong: ${first})` : ''}`);
  // and a sorted array searched with it
  const keys = Array.from({ length: 500 }, () => 'x/' + word()).sort(byteOrder);
  const probe = 'x/' + units[8];
  const at = firstAfter(keys, probe);
  t.ok(keys.slice(0, at).every((k) => byteOrder(k, probe) <= 0) && keys.slice(at).every((k) => byteOrder(k, probe) > 0), 'firstAfter splits a byte-ordered array at the probe');
  t.end();
});

t.test('an Overlay lists each collection\'s keys in byte order through any mix of sets, forgets and scans', (t) => {
  const rnd = prng(0x0e1a);
  const o = new Overlay();
  const model = new Map<string, Set<string>>();
  const colls = ['d/1/', 'd/10/', 'g/', 'i/'];
  const names = ['a', 'b', 'a0', 'é', '日', '\ue000', '\ud83d\ude42', '10', '9', 'z'];
  let wrong = '';
  let steps = 0;
  for (let i = 0; i < 30000 && !wrong; i++, steps++) {
    const coll = colls[Math.floor(rnd() * colls.length)]!;
    const key = coll + names[Math.floor(rnd() * names.length)]! + (rnd() < 0.5 ? String(Math.floor(rnd() * 300)) : '');
    const r = rnd();
    const keys = model.get(coll) ?? new Set<string>();
    model.set(coll, keys);
    if (r < 0.6) {
      o.set(key, rnd() < 0.3 ? null : Buffer.from('v'));
      keys.add(key);
    } else if (r < 0.9) {
      o.forget(key);
      keys.delete(key);
    } else {
      const got = o.collection(coll) ?? [];
      const want = [...keys].sort(byteOrder);
      if (got.join('|') !== want.join('|')) wrong = `step ${i}, ${coll}: got ${got.length} keys, want ${want.length}`;
    }
  }
  t.equal(wrong, '', `every scan in byte order with what is held (${steps} steps)`);
  t.equal(o.size, [...model.values()].reduce((n, k) => n + k.size, 0), 'values held: those set and not forgotten');
  t.end();
});

t.test('overlays and LMDB merge in get and scan exactly as a model says (random writes, checkpoints, reopens)', async (t) => {
  const dir = freshDir();
  const rnd = prng(0x5eed10);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  // 'd/1/sub/' keys are deeper than 'd/1/' (never in its scan); 'd/10/' sorts right after 'd/1/'
  const colls = ['d/1/', 'd/2/', 'd/10/', 'd/1/sub/', 'i/'];
  const names = [...'abcdefghijklmnop', 'a0', 'a00', 'é', 'zé', '日本', '🙂', 'Z'];
  const counters = ['i/n0', 'i/n1'];
  const key = () => pick(colls) + pick(names);
  // mostly small values, some empty; a few large ones fill the overlay to CHECKPOINT_BYTES (4 MiB), which starts a
  // checkpoint in the background: the next operations then run with a frozen overlay, a new one, and LMDB
  const value = (step: number) => Buffer.from(`v${step}.`.padEnd(rnd() < 0.03 ? 256 << 10 : Math.floor(rnd() * rnd() * 800), 'x'));
  // each open takes one of two limits: a small one (writes stall, a checkpoint every few writes) or one above
  // CHECKPOINT_BYTES (checkpoints start in the background)
  const opts = () => ({ logLimitBytes: pick([12 << 10, 6 << 20]) });
  let s = await LmdbStore.open(dir, { logLimitBytes: 12 << 10 });
  const counts = { checkpoints: 0, stalls: 0 };
  const tally = () => { counts.checkpoints += s.logStats.checkpoints; counts.stalls += s.logStats.stalls; };
  const model = new Map<string, Buffer>();
  const stats = { puts: 0, dels: 0, commits: 0, failedChecks: 0, incrs: 0, keys: 0, yields: 0, reopens: 0, scans: 0 };
  let wrong: string | undefined;
  const show = (rs: readonly (readonly [string, Uint8Array | undefined])[]) => rs.map(([k, v]) => `${k}=${v === undefined ? '-' : dec(v.subarray(0, 12))}/${v?.length}`).join(' ');
  const same = (a: readonly (readonly [string, Uint8Array | undefined])[], b: readonly (readonly [string, Uint8Array | undefined])[]) =>
    a.length === b.length && a.every(([k, v], i) => k === b[i]![0] && (v === undefined ? b[i]![1] === undefined : b[i]![1] !== undefined && Buffer.from(v).equals(b[i]![1]!)));
  const expect = (what: string, got: readonly (readonly [string, Uint8Array | undefined])[], want: readonly (readonly [string, Uint8Array | undefined])[]) => {
    if (wrong === undefined && !same(got, want)) wrong = `${what}: got ${show(got)}; want ${show(want)}`;
  };
  const walk = async (prefix: string, limit: number, step: number) => {
    const all = [...model].filter(([k]) => k.startsWith(prefix) && !k.slice(prefix.length).includes('/')).sort((a, b) => byteOrder(a[0], b[0]));
    let after: string | undefined;
    for (let from = 0; ; from += limit) {
      const page = await s.scan(prefix, after === undefined ? { limit } : { after, limit });
      stats.scans++;
      expect(`step ${step}: scan('${prefix}', { after: ${after}, limit: ${limit} })`, page, all.slice(from, from + limit));
      if (page.length === 0 || wrong) return;
      after = page.at(-1)![0];
    }
  };
  const STEPS = 3000;
  for (let step = 0; step < STEPS && !wrong; step++) {
    const r = rnd();
    const touched = [key(), key()];
    if (r < 0.4) {
      const v = value(step);
      await s.put(touched[0]!, v);
      model.set(touched[0]!, v);
      stats.puts++;
    } else if (r < 0.55) {
      await s.del(touched);
      for (const k of touched) model.delete(k);
      stats.dels++;
    } else if (r < 0.78) {
      // a check of touched[0] against what the model holds, or (a third of the time) against something else
      const held = model.get(touched[0]!);
      const bad = rnd() < 0.33;
      const check = bad ? (held === undefined ? Buffer.from('nope') : undefined) : held;
      const v = value(step);
      const ok = await s.commit([{ key: touched[0]!, value: check }], [{ key: touched[0]!, value: v }, { key: touched[1]!, value: null }]);
      if (ok === bad && !wrong) wrong = `step ${step}: commit with a ${bad ? 'failing' : 'holding'} check returned ${ok}`;
      if (ok) {
        model.set(touched[0]!, v);
        model.delete(touched[1]!);
      } else stats.failedChecks++;
      stats.commits++;
    } else if (r < 0.92) {
      const c = pick(counters);
      touched.push(c);
      const next = Number(model.get(c)?.toString() ?? '0') + 1;
      const got = await s.incr(c, 1);
      if (got !== next && !wrong) wrong = `step ${step}: incr('${c}') = ${got}, want ${next}`;
      model.set(c, Buffer.from(String(next)));
      stats.incrs++;
    } else if (r < 0.94) {
      const c = pick(counters);
      await s.del([c]);
      model.delete(c);
      touched.push(c);
    } else if (r < 0.955) {
      // keys() checkpoints first: LMDB then holds every write
      const want = [...model.keys()].filter((k) => k.startsWith('d/')).sort(byteOrder);
      expect(`step ${step}: keys('d/')`, (await s.keys('d/')).map((k) => [k, undefined]), want.map((k) => [k, undefined]));
      stats.keys++;
    } else if (r < 0.997) {
      await new Promise((res) => setImmediate(res)); // a background checkpoint may finish
      stats.yields++;
    } else {
      await s.close();
      tally();
      s = await LmdbStore.open(dir, opts());
      stats.reopens++;
    }
    const got = await s.getMany(touched);
    expect(`step ${step}: getMany`, touched.map((k, i) => [k, got[i]]), touched.map((k) => [k, model.get(k)]));
    const prefix = touched[0]!.slice(0, touched[0]!.lastIndexOf('/') + 1);
    for (const limit of [1, 3, 100]) await walk(prefix, limit, step);
    if (step % 500 === 499) for (const p of colls) for (const limit of [1, 3, 100]) await walk(p, limit, step);
  }
  t.equal(wrong, undefined, 'every get and every page of every scan walk matched the model');
  await s.close();
  tally();
  t.comment(JSON.stringify({ ...stats, ...counts }));
  t.ok(counts.stalls > 0 && counts.checkpoints > stats.keys + stats.reopens, 'checkpoints came from stalls and the background too');
});

t.test('a second handle, in another process, is direct mode; each sees the other\'s writes', async (t) => {
  const dir = freshDir();
  let a = await LmdbStore.open(dir);
  t.teardown(() => a.close());
  t.ok(a.logged, 'the first to open holds the log lock: log mode');
  await a.put('x/a', enc('from A'));
  await a.keys('x/'); // a walk of the keys checkpoints first
  t.ok(a.logStats.checkpoints >= 1, 'LMDB took the write');
  const r = await child(`
const s = await LmdbStore.open(dir);
const a = await s.get('x/a');
await s.put('y/child', enc('from the child'));
console.log(JSON.stringify({ logged: s.logged, a: a && new TextDecoder().decode(a) }));
await s.close();`, dir);
  t.equal(r.code, 0, r.code === 0 ? 'the child ran' : describe(r));
  t.same(JSON.parse(r.stdout), { logged: false, a: 'from A' }, 'the child is direct mode, and reads what A checkpointed');
  t.equal(dec(await a.get('y/child')), 'from the child', 'A reads the child\'s direct write');
  t.same((await a.scan('y/')).map(([k, v]) => [k, dec(v)]), [['y/child', 'from the child']], 'and scans it');
  await a.put('x/b', enc('after'));
  await a.close();
  a = await LmdbStore.open(dir);
  t.same(await a.keys(''), ['x/a', 'x/b', 'y/child'], 'after a reopen: both processes\' writes');
});

t.test('at logLimitBytes writes stall for a checkpoint, and still apply and resolve in call order', async (t) => {
  const s = await LmdbStore.open(freshDir(), { logLimitBytes: 8 << 10 });
  t.teardown(() => s.close());
  const N = 300;
  const counts: Promise<number>[] = [];
  const writes: Promise<unknown>[] = [];
  const order: number[] = [];
  for (let i = 0; i < N; i++) {
    writes.push(s.put(`p/${i}`, new Uint8Array(1024).fill(i)));
    counts.push(s.incr('n/c', 1).then((c) => (order.push(c), c)));
    writes.push(s.put('p/last', enc(String(i))));
    if (i % 10 === 0) writes.push(s.put(`b/s${i}`, new Uint8Array(2048).fill(i)));
  }
  t.same(await Promise.all(counts), Array.from({ length: N }, (_, i) => i + 1), 'the incr calls counted 1..N in call order');
  t.same(order, Array.from({ length: N }, (_, i) => i + 1), 'and resolved in that order');
  await Promise.all(writes);
  t.ok(s.logStats.stalls > 0, `${s.logStats.stalls} stalls, ${s.logStats.checkpoints} checkpoints`);
  t.equal(dec(await s.get('p/last')), String(N - 1), 'the last put called is the value left');
  t.equal((await s.scan('p/')).length, N + 1, 'every put is there');
  const blobs = await s.getMany(Array.from({ length: N / 10 }, (_, i) => `b/s${i * 10}`));
  t.ok(blobs.every((b, i) => b?.length === 2048 && b[0] === (i * 10) % 256), 'and every small blob');
});

t.test('close hands everything to LMDB and deletes the log, with writes stalled at logLimitBytes too', async (t) => {
  const dir = freshDir();
  let s = await LmdbStore.open(dir, { logLimitBytes: 4 << 10 });
  await s.put('q/first', enc('1'));
  const puts = Array.from({ length: 200 }, (_, i) => s.put(`q/${String(i).padStart(3, '0')}`, new Uint8Array(512).fill(i)));
  const closed = s.close();
  const settled = await Promise.allSettled(puts);
  await closed;
  t.same(settled.filter((p) => p.status === 'rejected').map((p) => String((p as PromiseRejectedResult).reason)), [],
    'every write called before close resolved (close waits for them)');
  t.ok(s.logStats.stalls > 0, 'some of them had stalled');
  t.same([...logFiles(dir), ...spareFiles(dir)], [], 'no log file is left, nor a spare');
  t.equal(recover(dir).writes.length, 0, 'nothing to replay');
  s = await LmdbStore.open(dir);
  t.teardown(() => s.close());
  t.equal(s.logStats.replayed, 0, 'the reopen replays nothing');
  t.equal((await s.scan('q/')).length, 201, 'every write is in LMDB');
});
