/**
 * `kvfs load` against `cp -r` through a mount (issue 15): files per second on a tree of small files, MB/s on a
 * few large files, and the loader's peak RSS (the issue asks under 300 MiB for both), on each store in one run.
 *
 *   npm run bench:load -- [--files 100000] [--big 2] [--big-size 1.1G] [--stores local,redis-cluster]
 *                         [--per-dir 1000] [--warm-gib N | --no-warm] [--keep]
 *
 * The sources, in a temp dir of the OS temp dir's disk (not tmpfs), built once and `sync`ed before anything is
 * timed:
 *  - small/: --files regular files in directories of --per-dir, sizes log-uniform from 100 B to 16 KiB (a fixed
 *    seed: every run builds the same tree), bytes from a random pool; in its first directories an empty file, an
 *    empty directory, 9 symlinks (6 to files, one each to a directory, nowhere and /etc), 6 hard links (5 across
 *    directories, 1 within one) and 7 `user.*` xattrs (setfattr, Debian's attr package: 6 files, 1 directory);
 *  - big/: --big files of --big-size bytes: a 1 MiB random block repeated, each 4 KiB of it stamped with the
 *    file, MiB and page number (neither all-zero, which the loader stores as holes, nor one repeated chunk);
 *  - warm/: 300 small files and one 16 MiB file, for the untimed warm-up.
 *
 * For each store in turn (local: a fresh LMDB dir, `kvfs format local:DIR`; redis-cluster: a fresh volume on a
 * 3-master Redis Cluster started for the run on 127.0.0.1, test/helpers/redis-cluster.ts, stopped at the end in
 * every outcome), after warm-memory (../shared/bench: the machine's first touch of fresh memory):
 *  1. `kvfs load warm/ STORE:/warm` (untimed), then `kvfs load small/ STORE:/load/small` and `kvfs load big/
 *     STORE:/load/big`, each a child process under /usr/bin/time -v: wall time (spawn to exit: Node's start,
 *     the scan, the load and the loader's own verify pass, as a user runs it), peak RSS ("Maximum resident set
 *     size"), and the peaks of RssAnon and RssFile sampled every 50 ms (RssFile: LMDB's mapped data file). The
 *     loader's progress lines, timestamped as they arrive, split the time into start, scan, load and verify.
 *  2. `kvfs mount STORE MNT --background` (the defaults: native driver), `cp -r warm/. MNT/warm-cp/` (untimed),
 *     then `cp -r small/. MNT/cp/small/` and `cp -r big/. MNT/cp/big/`, each timed from spawn until `cp` returns
 *     (each close(2) commits its file) plus an fsync(2) of MNT (the store synced, as the loader's exit syncs it;
 *     see syncMount), with the daemon's peak RSS (VmHWM, reset first).
 *  3. The checks, through the same mount after the timings: the type, mode, owner, link count, mtime (ns) and
 *     symlink target of every entry of MNT/load/small against small/ (find -printf), `diff -r --no-dereference` of small/ against
 *     MNT/load/small and MNT/cp/small, the hard links of MNT/load/small (one inode per pair), its xattrs
 *     (getfattr), the size of every big file and `cmp` of the first against MNT/load/big and MNT/cp/big. Then
 *     `kvfs umount`, and the daemon's log must hold nothing unexpected.
 * files/s counts every non-directory entry (regular files, symlinks, hard links); MB/s is 10^6 bytes of regular
 * file data per second. Ratios: the loader over cp -r.
 *
 * Saved: bench/out/LOAD-<date>.md (the tables), bench/out/logs-<date>/ (the loaders' output, the daemons' logs).
 * Exit status 1 on any failed command, failed check, or unexpected daemon log line. Every mount is unmounted,
 * every daemon and Redis server stopped and the work dir removed (unless --keep) in every outcome but a SIGKILL
 * of the bench (then the Redis harness's watchdog still stops its servers; `kvfs umount` the mount left).
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync, existsSync, linkSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, statSync, symlinkSync,
  writeFileSync, writeSync,
} from 'node:fs';
import { open } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { RedisCluster } from '../test/helpers/redis-cluster.js';
import {
  MIB, atExit, filesystemOf, fmt, forceUnmount, gitVersion, howEnded, killGroup, kvfsBin, kvfsMount, kvfsUnmount, mib,
  procMemory, quietness, removeDir, removeWork, repoRoot, resetPeak, run, say, sharedBench, stamp, stopDaemon,
  unexpectedLogLines, type KvfsMount,
} from './common.js';

const USAGE = `usage: npm run bench:load -- [options]
  --files N         small files in the tree (default 100000)
  --per-dir N       small files per directory (default 1000)
  --big K           large files (default 2)
  --big-size SIZE   bytes per large file: 1200000000, 64M, 1.1G (binary units; default 1.1G)
  --stores LIST     local, redis-cluster or both (default local,redis-cluster)
  --warm-gib N      GiB for warm-memory to touch before each store (default: 3/4 of MemAvailable)
  --no-warm         skip warm-memory
  --keep            keep the work dir (sources and the local store)`;

/** the loader's peak RSS the issue asks for */
const RSS_LIMIT_MIB = 300;
const SMALL_MIN = 100;
const SMALL_MAX = 16 << 10;
const TIMEOUT_MS = 4 * 3_600_000;

type StoreKind = 'local' | 'redis-cluster';

interface Tree {
  dir: string;
  /** non-directory entries: regular files, symlinks, hard links */
  entries: number;
  /** bytes of regular file data (a hard link's once) */
  bytes: number;
  /** pairs of names (relative) of one inode */
  links: [string, string][];
  /** relative name -> the value of its user.kvfs.bench */
  xattrs: Map<string, string>;
  /** relative names of the large files */
  big: string[];
  symlinks: number;
  seconds: number;
}

// ---------------------------------------------------------------------------------------------------------
// the sources

/** "64M", "1.1G", "1.1GiB", "1200000000" -> bytes (K, M, G, T are binary) */
function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(s.trim());
  if (!m) throw new Error(`bad size '${s}': give bytes, or a number with K, M, G or T`);
  const unit = 1024 ** ' kmgt'.indexOf((m[2] || ' ').toLowerCase());
  return Math.round(Number(m[1]) * unit);
}

/** mulberry32: a small seeded PRNG, so that every run builds the same tree */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function setXattr(file: string, value: string): void {
  const r = spawnSync('setfattr', ['-h', '-n', 'user.kvfs.bench', '-v', value, file], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`setfattr ${file}: ${r.error?.message ?? r.stderr.trim()} (Debian's attr package)`);
}

/** small/: see the header */
function buildSmall(dir: string, files: number, perDir: number, seed: number): Tree {
  const t0 = performance.now();
  const rand = prng(seed);
  const pool = randomBytes(MIB + SMALL_MAX);
  const dirs = Math.max(1, Math.ceil(files / perDir));
  const dname = (d: number): string => `d${String(d).padStart(4, '0')}`;
  const fname = (i: number): string => `f${String(i).padStart(7, '0')}`;
  const rel = (i: number): string => `${dname(Math.floor(i / perDir))}/${fname(i)}`;
  let bytes = 0;
  for (let d = 0; d < dirs; d++) {
    mkdirSync(path.join(dir, dname(d)), { recursive: true });
    for (let i = d * perDir; i < Math.min(files, (d + 1) * perDir); i++) {
      const size = Math.round(SMALL_MIN * (SMALL_MAX / SMALL_MIN) ** rand());
      const off = Math.floor(rand() * MIB);
      writeFileSync(path.join(dir, rel(i)), pool.subarray(off, off + size));
      bytes += size;
    }
  }
  let entries = files;
  const links: [string, string][] = [];
  const xattrs = new Map<string, string>();
  // the odd entries, in the first and last directories
  const first = dname(0);
  const last = dname(dirs - 1);
  writeFileSync(path.join(dir, first, 'empty'), '');
  mkdirSync(path.join(dir, first, 'emptydir'));
  entries++;
  const some = Math.min(files, 6);
  for (let k = 0; k < some; k++) symlinkSync(fname(k), path.join(dir, first, `sym-file-${k}`));
  const symlinks: [string, string][] = [['sym-dir', `../${dirs > 1 ? dname(1) : first}`], ['sym-dangling', 'no/such/file'], ['sym-abs', '/etc/hostname']];
  for (const [name, target] of symlinks) symlinkSync(target, path.join(dir, first, name));
  entries += some + symlinks.length;
  const symlinkCount = some + symlinks.length;
  for (let k = 0; k < Math.min(files, 5); k++) {
    const to = `${last}/hl-${k}`;
    linkSync(path.join(dir, rel(k)), path.join(dir, to));
    links.push([rel(k), to]);
  }
  if (files > 10) {
    linkSync(path.join(dir, rel(10)), path.join(dir, first, 'hl-same'));
    links.push([rel(10), `${first}/hl-same`]);
  }
  entries += links.length;
  for (let k = 0; k < Math.min(files, 6); k++) xattrs.set(rel(files - 1 - k), `value-${k}-${'x'.repeat(k * 10)}`);
  xattrs.set(first, 'a directory');
  for (const [name, value] of xattrs) setXattr(path.join(dir, name), value);
  return { dir, entries, bytes, links, xattrs, big: [], symlinks: symlinkCount, seconds: (performance.now() - t0) / 1000 };
}

/** big/: see the header */
function buildBig(dir: string, count: number, size: number): Tree {
  const t0 = performance.now();
  mkdirSync(dir, { recursive: true });
  const block = randomBytes(MIB);
  const buf = Buffer.allocUnsafe(MIB);
  const big: string[] = [];
  for (let f = 0; f < count; f++) {
    const name = `big${f}.bin`;
    const fd = openSync(path.join(dir, name), 'w');
    try {
      for (let at = 0, m = 0; at < size; at += MIB, m++) {
        block.copy(buf);
        for (let p = 0; p < MIB; p += 4096) {
          buf.writeUInt32LE(f, p);
          buf.writeUInt32LE(m, p + 4);
          buf.writeUInt32LE(p, p + 8);
        }
        const len = Math.min(MIB, size - at);
        for (let off = 0; off < len;) off += writeSync(fd, buf, off, len - off);
      }
    } finally {
      closeSync(fd);
    }
    big.push(name);
  }
  return { dir, entries: count, bytes: count * size, links: [], xattrs: new Map(), big, symlinks: 0, seconds: (performance.now() - t0) / 1000 };
}

// ---------------------------------------------------------------------------------------------------------
// timing a command

interface Timed {
  what: string;
  seconds: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  /** the command's peak RSS, from /usr/bin/time -v, in MiB */
  rssMiB: number;
  /** sampled peaks of the command's RssAnon and RssFile (MiB), when sampled */
  anonMiB?: number;
  fileMiB?: number;
  stdout: string;
  stderr: string;
  /** seconds from the spawn to the first stdout line matching each key of `marks` */
  marks: Map<string, number>;
}

/** the pids of pid's children (/proc/PID/task/PID/children) */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/**
 * Runs cmd under /usr/bin/time -v in its own process group (killed on timeout and at exit). stdout lines are
 * timestamped as they arrive: `marks` records the first line that matches each given pattern. With `sample`,
 * the command's RssAnon and RssFile are read every 50 ms for their peaks.
 */
function timed(
  what: string, cmd: string, args: string[],
  opts: { env?: NodeJS.ProcessEnv; sample?: boolean; marks?: Record<string, RegExp>; log?: string } = {},
): Promise<Timed> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const child = spawn('/usr/bin/time', ['-v', cmd, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: { ...process.env, ...opts.env },
    });
    const unregister = atExit(() => killGroup(child.pid, 'SIGKILL'));
    let stdout = '';
    let stderr = '';
    let partial = '';
    const marks = new Map<string, number>();
    child.stdout!.on('data', (d: Buffer) => {
      const now = (performance.now() - t0) / 1000;
      stdout += d.toString();
      const lines = (partial + d.toString()).split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        for (const [k, re] of Object.entries(opts.marks ?? {})) if (!marks.has(k) && re.test(line)) marks.set(k, now);
      }
    });
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const peaks = { anon: 0, file: 0 };
    let inner: number | undefined;
    const sampler = opts.sample ? setInterval(() => {
      inner ??= childrenOf(child.pid ?? 0)[0];
      const m = inner === undefined ? undefined : procMemory(inner);
      // a process on its way out (a zombie) has no Rss lines: NaN
      if (m && Number.isFinite(m.rssAnon)) peaks.anon = Math.max(peaks.anon, m.rssAnon);
      if (m && Number.isFinite(m.rssFile)) peaks.file = Math.max(peaks.file, m.rssFile);
    }, 50) : undefined;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid, 'SIGTERM');
      setTimeout(() => killGroup(child.pid, 'SIGKILL'), 5000).unref();
    }, TIMEOUT_MS);
    const end = (code: number | null, signal: NodeJS.Signals | null): void => {
      const seconds = (performance.now() - t0) / 1000;
      clearTimeout(timer);
      if (sampler) clearInterval(sampler);
      unregister();
      if (opts.log) writeFileSync(opts.log, `$ ${cmd} ${args.join(' ')}\n${stdout}\n--- stderr\n${stderr}`);
      const rss = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(stderr)?.[1] ?? NaN) / 1024;
      resolve({
        what, seconds, code, signal, timedOut, rssMiB: rss, stdout, stderr, marks,
        ...(opts.sample ? { anonMiB: peaks.anon / MIB, fileMiB: peaks.file / MIB } : {}),
      });
    };
    child.on('error', (e) => {
      stderr += String(e);
      end(null, null);
    });
    child.on('close', (code, signal) => end(code, signal));
  });
}

/** how a timed command failed, or undefined when it exited 0 */
function failure(t: Timed): string | undefined {
  if (t.code === 0 && !t.timedOut) return undefined;
  const how = howEnded({ code: t.code, signal: t.signal, stdout: '', stderr: '', timedOut: t.timedOut });
  const said = t.stderr.split('\n').filter((l) => l.trim() && !/^\s|^Command (being timed|exited)/.test(l)).slice(-3).join(' / ');
  return `${t.what}: ${how}${said ? `: ${said}` : ''}`;
}

// ---------------------------------------------------------------------------------------------------------
// one store

/**
 * fsync(2) of the mount's root directory: kvfs answers FSYNCDIR with a sync of its store (blob files, then LMDB;
 * Redis: WAIT), which is what the loader does when it closes the store. Not `sync -f MNT`: the kernel sends
 * FUSE_SYNCFS to virtiofs only, so syncfs(2) never reaches a kvfs daemon (its stats show no SYNCFS).
 * Returns the error's text, or undefined.
 */
async function syncMount(mnt: string): Promise<string | undefined> {
  try {
    const h = await open(mnt, 'r');
    try {
      await h.sync();
    } finally {
      await h.close();
    }
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

interface LoadRow {
  timed: Timed;
  tree: Tree;
  /** the loader's last JSON line: its counters */
  result?: Record<string, unknown>;
  /** seconds: start (Node and the store opened), scan, load, verify, end (closing, exit) */
  phases?: { start: number; scan: number; load: number; verify: number; end: number };
}

interface CpRow {
  timed: Timed;
  tree: Tree;
  /** seconds of the fsync of MNT after cp returned (in `seconds`) */
  syncSeconds: number;
  seconds: number;
  /** the daemon's peak RSS during cp and the fsync (VmHWM, reset before), MiB */
  daemonMiB?: number;
}

interface StoreResult {
  kind: StoreKind;
  url: string;
  text: string;
  loads: { small?: LoadRow; big?: LoadRow };
  cps: { small?: CpRow; big?: CpRow };
  checks: string[];
  problems: string[];
}

const LOAD_MARKS: Record<string, RegExp> = {
  scanning: /^kvfs load: scanning:/, loading: /^kvfs load: loading:/, verifying: /^kvfs load: verifying:/,
  ended: /^kvfs load: (succeeded|failed|canceled):/,
};

function loadRow(t: Timed, tree: Tree): LoadRow {
  const json = t.stdout.split('\n').reverse().find((l) => l.startsWith('kvfs load: {'));
  let result: Record<string, unknown> | undefined;
  try {
    result = json ? JSON.parse(json.slice('kvfs load: '.length)) as Record<string, unknown> : undefined;
  } catch {
    result = undefined;
  }
  const m = t.marks;
  const at = (k: string): number | undefined => m.get(k);
  let phases: LoadRow['phases'];
  const [s, l, e] = [at('scanning'), at('loading'), at('ended')];
  if (s !== undefined && l !== undefined && e !== undefined) {
    const v = at('verifying') ?? e;
    phases = { start: s, scan: l - s, load: v - l, verify: e - v, end: t.seconds - e };
  }
  return { timed: t, tree, result, phases };
}

async function benchStore(
  kind: StoreKind, work: string, logDir: string, trees: { small: Tree; big: Tree; warm: Tree },
  warm: (() => void) | undefined, stopping: () => boolean,
): Promise<StoreResult> {
  const env = { KVFS_DATA_DIR: logDir };
  const res: StoreResult = { kind, url: '', text: '', loads: {}, cps: {}, checks: [], problems: [] };
  let cluster: RedisCluster | undefined;
  let m: KvfsMount | undefined;
  let unregister = (): void => {};
  const storeDir = path.join(work, `store-${kind}`);
  const mnt = path.join(work, `mnt-${kind}`);
  try {
    if (kind === 'local') {
      res.url = `local:${storeDir}`;
      res.text = `a fresh LMDB volume in ${storeDir}`;
    } else {
      cluster = await RedisCluster.start(undefined, { masters: 3 });
      const c = cluster;
      atExit(() => void c.stop());
      res.url = cluster.url(`load${Date.now()}`);
      res.text = `a fresh volume on a 3-master Redis Cluster started for the run (${cluster.seeds()}; Debian's ` +
        `${spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).stdout.trim().split(' ').slice(0, 3).join(' ')}, no persistence)`;
      say(`${kind}: started a Redis Cluster: ${cluster.seeds()}`);
    }
    const f = await run(process.execPath, [kvfsBin, 'format', res.url], { timeoutMs: 120_000, echo: true, env: { ...process.env, ...env } });
    if (f.code !== 0) throw new Error(`kvfs format ${res.url}: ${howEnded(f)}: ${f.stderr.trim()}`);
    warm?.();
    const load = async (tree: Tree, name: string): Promise<Timed> => {
      say(`${kind}: kvfs load ${path.basename(tree.dir)}/ -> /${name}`);
      const t = await timed(`kvfs load ${path.basename(tree.dir)}/ (${kind})`, process.execPath,
        [kvfsBin, 'load', tree.dir, `${res.url}:/${name}`], { env, sample: true, marks: LOAD_MARKS, log: path.join(logDir, `load-${kind}-${name.replace(/\//g, '-')}.txt`) });
      const bad = failure(t);
      if (bad) res.problems.push(bad);
      say(`${kind}: ${t.what}: ${t.seconds.toFixed(1)} s, peak RSS ${fmt(t.rssMiB)} MiB${bad ? ` (${bad})` : ''}`);
      return t;
    };
    // untimed: Node's and the store's first start, the disk's and the store's first writes
    await load(trees.warm, 'warm');
    if (stopping()) return res;
    res.loads.small = loadRow(await load(trees.small, 'load/small'), trees.small);
    if (stopping()) return res;
    res.loads.big = loadRow(await load(trees.big, 'load/big'), trees.big);
    if (stopping()) return res;

    mkdirSync(mnt);
    m = await kvfsMount(res.url, mnt, [], env);
    const mm = m;
    unregister = atExit(() => {
      forceUnmount(mnt);
      stopDaemon(mm.pid);
    });
    const cp = async (tree: Tree, into: string, timedRun: boolean): Promise<CpRow> => {
      const dst = path.join(mnt, into);
      mkdirSync(dst, { recursive: true });
      if (timedRun) resetPeak(mm.pid);
      say(`${kind}: cp -r ${path.basename(tree.dir)}/. MNT/${into}/`);
      const t = await timed(`cp -r ${path.basename(tree.dir)}/. MNT/${into}/ (${kind})`, 'cp', ['-r', `${tree.dir}/.`, `${dst}/`]);
      const s0 = performance.now();
      const synced = await syncMount(mnt);
      const syncSeconds = (performance.now() - s0) / 1000;
      const daemonMiB = timedRun ? (procMemory(mm.pid)?.hwm ?? NaN) / MIB : undefined;
      const bad = failure(t) ?? (synced ? `fsync of ${mnt}: ${synced}` : undefined);
      if (bad) res.problems.push(bad);
      const row = { timed: t, tree, syncSeconds, seconds: t.seconds + syncSeconds, ...(daemonMiB !== undefined ? { daemonMiB } : {}) };
      say(`${kind}: ${t.what}: ${t.seconds.toFixed(1)} s + fsync ${syncSeconds.toFixed(1)} s${bad ? ` (${bad})` : ''}`);
      return row;
    };
    await cp(trees.warm, 'warm-cp', false);
    if (stopping()) return res;
    res.cps.small = await cp(trees.small, 'cp/small', true);
    if (stopping()) return res;
    res.cps.big = await cp(trees.big, 'cp/big', true);
    if (stopping()) return res;

    say(`${kind}: checking the copies through the mount`);
    await checks(res, trees, mnt);
  } catch (e) {
    res.problems.push(`${kind}: ${(e as Error).message}`);
    say(`${kind}: ${(e as Error).message}`);
  } finally {
    if (m) {
      res.problems.push(...(await kvfsUnmount(m)).map((p) => `${kind}: ${p}`));
      unregister();
      const lines = unexpectedLogLines(m.log);
      if (lines.length) res.problems.push(`${kind}: the daemon's log (${m.log}) has ${lines.length} unexpected line(s): ${lines.slice(0, 5).join(' | ')}`);
    }
    if (cluster) {
      await cluster.stop();
      say(`${kind}: stopped the Redis Cluster`);
    }
    removeDir(mnt);
  }
  return res;
}

/** the checks through the mount (see the header); each outcome goes to res.checks, each failure to problems too */
async function checks(res: StoreResult, trees: { small: Tree; big: Tree }, mnt: string): Promise<void> {
  const note = (ok: boolean, text: string): void => {
    res.checks.push(`${ok ? 'ok' : '**FAILED**'}: ${text}`);
    if (!ok) res.problems.push(`${res.kind}: check failed: ${text}`);
  };
  const diff = async (into: string): Promise<void> => {
    const r = await run('diff', ['-r', '--no-dereference', trees.small.dir, path.join(mnt, into)], { timeoutMs: 3_600_000 });
    const out = (r.stdout + r.stderr).trim().split('\n').filter(Boolean);
    note(r.code === 0, `diff -r --no-dereference small/ MNT/${into}: ${howEnded(r)}` +
      `${out.length ? ` (${out.length} line(s): ${out.slice(0, 3).join(' / ')})` : ''}`);
  };
  const cmp = async (into: string): Promise<void> => {
    for (const name of trees.big.big) {
      const got = statSync(path.join(mnt, into, name), { throwIfNoEntry: false })?.size;
      const want = statSync(path.join(trees.big.dir, name)).size;
      if (got !== want) note(false, `MNT/${into}/${name}: ${got === undefined ? 'missing' : `${got} bytes, not ${want}`}`);
    }
    const first = trees.big.big[0];
    if (!first) return;
    const r = await run('cmp', [path.join(trees.big.dir, first), path.join(mnt, into, first)], { timeoutMs: 3_600_000 });
    note(r.code === 0, `cmp big/${first} MNT/${into}/${first}: ${howEnded(r)}${r.code ? `: ${(r.stdout + r.stderr).trim().split('\n')[0]}` : ''}`);
  };
  if (res.loads.small) {
    await diff('load/small');
    const at = path.join(mnt, 'load/small');
    const badLinks = trees.small.links.filter(([a, b]) => {
      const sa = statSync(path.join(at, a), { throwIfNoEntry: false });
      const sb = statSync(path.join(at, b), { throwIfNoEntry: false });
      return !sa || !sb || sa.ino !== sb.ino || sa.nlink < 2;
    });
    note(!badLinks.length, `hard links in MNT/load/small: ${trees.small.links.length - badLinks.length} of ${trees.small.links.length} ` +
      `pairs share an inode${badLinks.length ? ` (not: ${badLinks.map((p) => p.join(' = ')).join(', ')})` : ''}`);
    const badX: string[] = [];
    for (const [name, value] of trees.small.xattrs) {
      const r = await run('getfattr', ['-h', '--only-values', '-n', 'user.kvfs.bench', path.join(at, name)]);
      if (r.code !== 0 || r.stdout !== value) badX.push(`${name}: ${r.code !== 0 ? r.stderr.trim() : JSON.stringify(r.stdout)}`);
    }
    note(!badX.length, `xattrs in MNT/load/small: ${trees.small.xattrs.size - badX.length} of ${trees.small.xattrs.size} as in the source` +
      `${badX.length ? ` (not: ${badX.join('; ')})` : ''}`);
    // type, mode, owner, link count, mtime in ns and symlink target of every entry, as find(1) prints them
    const listing = async (dir: string): Promise<string[]> => {
      const r = await run('bash', ['-o', 'pipefail', '-c', `cd "$1" && find . -mindepth 1 -printf '%P|%y|%m|%U|%G|%n|%T@|%l\\n' | LC_ALL=C sort`, 'bash', dir],
        { timeoutMs: 3_600_000 });
      return r.code === 0 ? r.stdout.split('\n') : [`find failed: ${r.stderr.trim()}`];
    };
    const [want, got] = [await listing(trees.small.dir), await listing(at)];
    const inGot = new Set(got);
    const differ = want.filter((l) => !inGot.has(l));
    note(!differ.length && want.length === got.length, `modes, owners, link counts, mtimes (ns) and symlink targets of MNT/load/small: ` +
      `${want.length - differ.length} of ${want.length} entries as in the source${differ.length ? ` (not: ${differ.slice(0, 3).join(' / ')})` : ''}`);
  }
  if (res.loads.big) await cmp('load/big');
  if (res.cps.small) await diff('cp/small');
  if (res.cps.big) await cmp('cp/big');
}

// ---------------------------------------------------------------------------------------------------------
// warm-memory

/** Builds ../shared/bench/warm-memory.c into the work dir; returns a function that runs it. */
function warmer(work: string, gib: string | undefined): () => void {
  const bin = path.join(work, 'warm-memory');
  const r = spawnSync('cc', ['-O2', '-o', bin, path.join(sharedBench, 'warm-memory.c')], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error('building warm-memory.c failed (cc -O2)');
  return () => {
    const t = Date.now();
    const w = spawnSync(bin, gib ? [gib] : [], { encoding: 'utf8' });
    if (w.status !== 0) throw new Error(`warm-memory failed: ${w.stderr}`);
    say(`${w.stdout.trim()} in ${((Date.now() - t) / 1000).toFixed(1)} s`);
  };
}

// ---------------------------------------------------------------------------------------------------------
// the report

const num = (n: number | undefined, digits = 0): string => (n === undefined || !Number.isFinite(n) ? 'n/a' : fmt(n, digits));
/** files/s: two decimals below 10 (the big files) */
const perSecond = (n: number, s: number): string => num(n / s, n / s < 10 ? 2 : 0);

function report(
  started: Date, version: string, quiet0: string, quiet1: string, disk: string,
  trees: { small: Tree; big: Tree }, bigSize: number, results: StoreResult[], problems: string[],
): string {
  const { small, big } = trees;
  const L: string[] = [];
  L.push(`# kvfs load against cp -r through a mount ${started.toISOString()}`, '');
  L.push(`${os.hostname()}, Linux ${os.release()}, ${os.cpus().length} CPUs, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ` +
    `Node ${process.version}. kvfs ${version}. At the start: ${quiet0}; at the end: ${quiet1}.`, '');
  L.push(`Sources on ${disk}: small/ ${fmt(small.entries)} entries (regular files of 100 B to 16 KiB, log-uniform, ` +
    `in directories of up to ${fmt(perDirArg)}; ${small.links.length} hard links, ${small.symlinks} symlinks, ${small.xattrs.size} xattrs, one empty ` +
    `file and directory), ${mib(small.bytes)}, built in ${small.seconds.toFixed(1)} s; big/ ${big.entries} file(s) of ` +
    `${fmt(bigSize)} bytes (${mib(bigSize)}), built in ${big.seconds.toFixed(1)} s.`, '');
  for (const r of results) L.push(`- ${r.kind}: \`${r.url}\`: ${r.text}.`);
  L.push('');
  L.push('kvfs load: `kvfs load SRC STORE:/load/{small,big}` (defaults: --jobs 16, verify on), spawn to exit. ' +
    'cp: `cp -r SRC/. MNT/cp/{small,big}/` through `kvfs mount STORE MNT --background` (defaults), until cp returns ' +
    'plus an fsync(2) of MNT (kvfs syncs its store: the loader\'s exit does the same; `sync -f MNT` would not reach ' +
    'the daemon: the kernel sends FUSE_SYNCFS to virtiofs only). cp -r keeps symlinks but not modes, times, xattrs or hard links (each link name is ' +
    'copied as a file of its own); the loader keeps all of them. Peak RSS: the command\'s, from /usr/bin/time -v; ' +
    'the daemon\'s for cp (VmHWM, reset before each cp).', '');
  L.push(`| store | tree | method | exit | seconds | files/s | MB/s | peak RSS (MiB) | peak RssAnon / RssFile | daemon peak RSS (MiB) | loader ≤ ${RSS_LIMIT_MIB} MiB |`);
  L.push('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|');
  for (const r of results) {
    for (const which of ['small', 'big'] as const) {
      const l = r.loads[which];
      const c = r.cps[which];
      if (l) {
        const t = l.timed;
        L.push(`| ${r.kind} | ${which} | kvfs load | ${t.code ?? t.signal} | ${num(t.seconds, 1)} | ${perSecond(l.tree.entries, t.seconds)} | ` +
          `${num(l.tree.bytes / 1e6 / t.seconds, 1)} | ${num(t.rssMiB)} | ${num(t.anonMiB)} / ${num(t.fileMiB)} | | ` +
          `${t.rssMiB <= RSS_LIMIT_MIB ? 'yes' : '**no**'} |`);
      }
      if (c) {
        const t = c.timed;
        L.push(`| ${r.kind} | ${which} | cp -r + fsync | ${t.code ?? t.signal} | ${num(c.seconds, 1)} (fsync ${num(c.syncSeconds, 1)}) | ` +
          `${perSecond(c.tree.entries, c.seconds)} | ${num(c.tree.bytes / 1e6 / c.seconds, 1)} | ${num(t.rssMiB)} | | ${num(c.daemonMiB)} | |`);
      }
    }
  }
  L.push('', 'The loader\'s time by phase (s, from its progress lines as they arrived): start is Node\'s start and the ' +
    'store opened; end is closing the store and exiting.', '');
  L.push('| store | tree | start | scan | load | verify | end | written | skipped | failed | retried | verified |');
  L.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of results) {
    for (const which of ['small', 'big'] as const) {
      const l = r.loads[which];
      if (!l) continue;
      const p = l.phases;
      const c = (k: string): string => (typeof l.result?.[k] === 'number' ? fmt(l.result[k] as number) : 'n/a');
      L.push(`| ${r.kind} | ${which} | ${num(p?.start, 1)} | ${num(p?.scan, 1)} | ${num(p?.load, 1)} | ${num(p?.verify, 1)} | ` +
        `${num(p?.end, 1)} | ${c('done')} | ${c('skipped')} | ${c('failed')} | ${c('retried')} | ${c('verified')} |`);
    }
  }
  L.push('', 'Ratios, the loader over cp -r (above 1: the loader is faster); "without verify" takes the loader\'s ' +
    'verify phase off its time.', '');
  L.push('| store | small: files/s | small, without verify | big: MB/s | big, without verify |');
  L.push('|---|---:|---:|---:|---:|');
  for (const r of results) {
    const ratio = (which: 'small' | 'big', noVerify: boolean): string => {
      const l = r.loads[which];
      const c = r.cps[which];
      if (!l || !c || l.timed.code !== 0 || c.timed.code !== 0) return 'n/a';
      const ls = l.timed.seconds - (noVerify ? l.phases?.verify ?? NaN : 0);
      return `${num(c.seconds / ls, 2)}`;
    };
    L.push(`| ${r.kind} | ${ratio('small', false)} | ${ratio('small', true)} | ${ratio('big', false)} | ${ratio('big', true)} |`);
  }
  L.push('', 'Checks (through the mount, after the timings):', '');
  for (const r of results) for (const c of r.checks) L.push(`- ${r.kind}: ${c}`);
  L.push('', problems.length ? `**Problems (${problems.length})**:` : 'No problems: every command exited 0, every check passed, the daemons\' logs are clean.');
  if (problems.length) L.push('', ...problems.map((p) => `- ${p}`));
  L.push('');
  return L.join('\n');
}

// ---------------------------------------------------------------------------------------------------------

let perDirArg = 1000;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      files: { type: 'string', default: '100000' },
      'per-dir': { type: 'string', default: '1000' },
      big: { type: 'string', default: '2' },
      'big-size': { type: 'string', default: '1.1G' },
      stores: { type: 'string', default: 'local,redis-cluster' },
      'warm-gib': { type: 'string' },
      'no-warm': { type: 'boolean', default: false },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const files = Number(values.files);
  perDirArg = Number(values['per-dir']);
  const bigCount = Number(values.big);
  const bigSize = parseSize(values['big-size']!);
  if (!Number.isInteger(files) || files < 1) throw new Error(`bad --files '${values.files}'`);
  if (!Number.isInteger(perDirArg) || perDirArg < 1) throw new Error(`bad --per-dir '${values['per-dir']}'`);
  if (!Number.isInteger(bigCount) || bigCount < 1) throw new Error(`bad --big '${values.big}'`);
  if (bigSize < 1) throw new Error(`bad --big-size '${values['big-size']}'`);
  const stores = values.stores!.split(',').map((s) => s.trim()).filter(Boolean);
  for (const s of stores) if (s !== 'local' && s !== 'redis-cluster') throw new Error(`bad --stores entry '${s}': local or redis-cluster`);
  if (!existsSync(kvfsBin)) throw new Error(`${kvfsBin} does not exist`);

  const started = new Date();
  const outDir = path.join(repoRoot, 'bench/out');
  const logDir = path.join(outDir, `logs-${stamp(started)}`);
  mkdirSync(logDir, { recursive: true });
  const work = mkdtempSync(path.join(os.tmpdir(), 'kvfs-load-'));
  const fs = filesystemOf(work);
  if (fs.fstype === 'tmpfs' || fs.fstype === 'ramfs') throw new Error(`${work} is on ${fs.fstype}: the sources must be on a disk (set TMPDIR)`);
  const disk = `${fs.source} (${fs.fstype}, mounted on ${fs.target}), in ${work}`;
  atExit(() => {
    if (values.keep) say(`kept ${work} (--keep)`);
    else removeWork(work);
  });
  let stopping = false;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      if (stopping) process.exit(sig === 'SIGINT' ? 130 : 143);
      stopping = true;
      // the exit hooks stop the loader or cp, unmount, stop the daemon and the Redis servers, remove the work dir
      say(`${sig}: stopping; everything is torn down on the way out`);
      process.exit(sig === 'SIGINT' ? 130 : 143);
    });
  }
  const version = gitVersion();
  const quiet0 = await quietness();
  say(quiet0.text);

  say(`building small/: ${fmt(files)} files`);
  const small = buildSmall(path.join(work, 'small'), files, perDirArg, 15);
  say(`small/: ${fmt(small.entries)} entries, ${mib(small.bytes)} in ${small.seconds.toFixed(1)} s`);
  say(`building big/: ${bigCount} x ${fmt(bigSize)} bytes`);
  const big = buildBig(path.join(work, 'big'), bigCount, bigSize);
  say(`big/: ${mib(big.bytes)} in ${big.seconds.toFixed(1)} s`);
  const warmTree = buildSmall(path.join(work, 'warm'), 300, 100, 16);
  buildBig(path.join(work, 'warm', 'big'), 1, 16 * MIB);
  const s0 = performance.now();
  spawnSync('sync');
  say(`sync: ${((performance.now() - s0) / 1000).toFixed(1)} s`);
  const warm = values['no-warm'] ? undefined : warmer(work, values['warm-gib']);

  const results: StoreResult[] = [];
  for (const kind of stores as StoreKind[]) {
    if (stopping) break;
    results.push(await benchStore(kind, work, logDir, { small, big, warm: warmTree }, warm, () => stopping));
    if (kind === 'local' && !values.keep) removeDir(path.join(work, 'store-local')); // its disk space, before the next store
  }
  const problems = results.flatMap((r) => r.problems);
  for (const r of results) {
    for (const l of [r.loads.small, r.loads.big]) {
      if (l && l.result && l.result.done !== undefined && Number(l.result.done) + Number(l.result.skipped ?? 0) !== l.tree.entries) {
        problems.push(`${r.kind}: ${l.timed.what} wrote ${l.result.done} and skipped ${l.result.skipped} of ${l.tree.entries} entries`);
      }
    }
  }
  const left = readdirSync(work).filter((n) => n.startsWith('mnt-'));
  for (const n of left) if (existsSync(path.join(work, n))) problems.push(`${n} was left in the work dir (still mounted?)`);

  const quiet1 = await quietness();
  const md = report(started, version, quiet0.text, quiet1.text, disk, { small, big }, bigSize, results, problems);
  const file = path.join(outDir, `LOAD-${stamp(started)}.md`);
  writeFileSync(file, md);
  console.log(md);
  say(`saved to ${path.relative(process.cwd(), file)}; logs in ${path.relative(process.cwd(), logDir)}`);
  return problems.length ? 1 : 0;
}

process.exitCode = await main().catch((e: unknown) => {
  say((e as Error).stack ?? String(e));
  return 1;
});
