/**
 * The soak: one kvfs mount under mixed load for MINUTES while the daemon is stopped and continued, asked to
 * unmount while busy, signalled, and restarted; then every file that was closed or fsynced is checked.
 *
 *   npm run soak -- [--minutes 10] [--store URL] [--driver native|libfuse] [--pool-mb 32] [--cache-mb 64]
 *                   [--write-buffer-mb 32] [--entries 50000] [--calibrate 60] [--seed 1]
 *
 * Setup: `kvfs format STORE` (default: a fresh `local:` LMDB store in a temp dir), a source tree of 300 files
 * made on local disk, and the calibration mount: `kvfs mount STORE MNT --background --driver D --buffer-pool-mb P
 * --cache-mb 0 --write-buffer-mb 1 --log-file ...`, on which ENTRIES empty files are made in MNT/big (one python
 * process) and listed once; its idle memory is measured, then it carries the whole load for --calibrate seconds
 * (no chaos) and is unmounted and mounted again with the stated sizes (--cache-mb C --write-buffer-mb W), the
 * ledger verified. The MINUTES of load and chaos start then.
 * The load (soak-loads.ts): fio 4k randrw with fsyncs, a `cp -r` / `rm -r` loop, `ls -l` of MNT/big, a python
 * writer, SQLite transactions; all child processes, all at once, all the time except at the safe points.
 *
 * Chaos, at fixed fractions of MINUTES (each event waits for the previous one):
 *   SIGSTOP burst (x5)   three times: SIGSTOP for 1-3 s, then SIGCONT; no load call may fail (requests wait)
 *   busy unmount (x3)    `kvfs umount MNT` while the load runs: exit 1 naming a holder, the same mount keeps serving
 *   restart (x2)         pause the load at a safe point, `kvfs umount` (exit 0, the daemon logs that it
 *                        committed everything and exits), mount again, verify the whole ledger, resume
 *   SIGTERM busy (x1)    a holder process keeps the mount busy; SIGTERM: the daemon must keep serving (the
 *                        load goes on for 5 s) and say it is busy; pause the load, release the holder: the
 *                        daemon must unmount, commit and exit by itself; mount again, verify, resume
 * At the end: pause, `kvfs umount`, a fresh mount, the whole ledger verified, `kvfs umount`; then no process
 * of this soak (its work dir in the command line or cwd: daemon, fio, python, cp, ls) and no mount under the
 * work dir may be left (pgrep -f, /proc/*\/cwd, /proc/self/mountinfo).
 *
 * Memory: the daemon's VmRSS, RssAnon, RssFile and RssShmem every second (/proc/PID/status), and its stats
 * (its control socket, native driver). The bound holds for RssAnon + RssShmem (the daemon's own memory) of every
 * daemon after the calibration:
 *   fixed overhead + buffer pool + --cache-mb + --write-buffer-mb + evicted blobs (--cache-mb)
 * - fixed overhead: the peak RssAnon + RssShmem of a calibration mount (the same pool, --cache-mb 0,
 *   --write-buffer-mb 1) under the same load for --calibrate seconds, less the pool (its arena is touched when
 *   it is made): the daemon's working memory that is neither cache nor write buffers (V8's heap and its garbage
 *   between collections, requests in flight, LMDB transactions, the kernel's lookups of the big directory).
 *   With --calibrate 0: the idle RssAnon + RssShmem after setup, less the pool (stricter: no working memory).
 * - evicted blobs: a blob the LRU evicts is garbage that V8 frees at its next mark-sweep, which it starts after
 *   about 64 MiB of external (Buffer) memory has grown; so a cache of C bytes under churn holds up to about C
 *   more. Measured apart from kvfs: an lru-cache of 64 MiB of 256 KiB Buffers, 1.5 GiB through it, peaks at
 *   123 MiB more RssAnon than the same loop without a cache. The report also compares the peak without it.
 * RssFile (LMDB's memory map of the store, Node's own binary) is reported apart: those are page cache pages of
 * files, which the kernel reclaims under pressure.
 *
 * Every failed check (a load error anywhere, a ledger mismatch, a chaos event not as expected, the bound, a
 * daemon that did not end cleanly or logged something unexpected, a leftover) makes the exit status 1.
 * Ctrl-C once: the load is killed, the mount unmounted, the daemon stopped, the report written (FAIL);
 * twice: exit at once (common.ts's exit hooks still unmount and kill). Saved: bench/out/SOAK-<date>.md,
 * soak-<date>.csv (memory samples), logs-<date>/daemon.log.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { daemonStats } from '../bin/diag.js';
import {
  logText, atExit, fmt, forceUnmount, gitVersion, isAlive, kvfsBin, kvfsMount, MIB, mib, procMemory, quietness, removeWork, repoRoot, run,
  say, sleep, stamp, stopDaemon, waitGone, type RunResult,
} from './common.js';
import {
  ended, KINDS, Loads, makeSource, PYTHON, startTool, toolOk, verifyProblems, type Kind, type LoadError,
} from './soak-loads.js';

const USAGE = `usage: npm run soak -- [options]
  --minutes N          how long the load runs, chaos included (default 10)
  --store URL          the store (default: a fresh local: LMDB store in a temp dir); it is formatted first
  --driver D           native (default) or libfuse
  --pool-mb N          kvfs mount --buffer-pool-mb (default 32)
  --cache-mb N         kvfs mount --cache-mb (default 64)
  --write-buffer-mb N  kvfs mount --write-buffer-mb (default 32)
  --entries N          entries of the big directory (default 50000)
  --calibrate S        seconds of load on the calibration mount before the soak (default 60; 0: none, the
                       fixed overhead is then the idle one)
  --seed N             seeds the loads and the chaos timings (default 1)`;

type WindowKind = 'sigstop' | 'umount' | 'sigterm' | 'restart';
interface Window { kind: WindowKind; t0: number; t1: number }
/** a load error this long after a window's end still counts as inside it */
const GRACE_MS = 1000;

interface Daemon {
  n: number;
  pid: number;
  why: string;
  /** the calibration mount (no blob cache, the smallest write buffers) */
  cal: boolean;
  /** the log's size before this daemon started: its lines follow */
  logStart: number;
  dev: string;
  t0: number;
  t1?: number;
  /** how it ended: "committed everything and exited", or what went wrong */
  end?: string;
  cleanEnd?: boolean;
}

interface ChaosEvent { t: number; name: string; seconds: number; ok: boolean; outcome: string }

interface Sample { t: number; daemon: number; pid: number; rss: number; anon: number; file: number; shmem: number; writeBack?: number; blobCache?: number }

/** the fields of /proc/PID/status this soak reads (bytes), or undefined when the process is gone */
function memoryOf(pid: number): { rss: number; anon: number; file: number; shmem: number } | undefined {
  const m = procMemory(pid);
  return m && { rss: m.rss, anon: m.rssAnon, file: m.rssFile, shmem: m.rssShmem };
}

/** the state letter of /proc/PID/stat (R, S, D, T, Z, ...), or undefined when the process is gone */
function procState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0];
  } catch {
    return undefined;
  }
}

/** the device ("major:minor") of the mount at exactly this path, from /proc/self/mountinfo; never touches it */
function mountDev(dir: string): string | undefined {
  let dev: string | undefined;
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f[4] && f[4].replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))) === dir) dev = f[2];
  }
  return dev;
}

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '')
    .map((m) => m.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((m) => m === dir || m.startsWith(`${dir}/`));
}

/** the daemon records (bin/daemons.ts: a JSON file per mount in /run/kvfs for root) that name this mountpoint */
function recordsOf(mnt: string): string[] {
  const dir = process.getuid?.() === 0 ? '/run/kvfs' : `/tmp/kvfs-${process.getuid?.()}`;
  const out: string[] = [];
  try {
    for (const f of readdirSync(dir)) {
      try {
        if ((JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as { mountpoint?: string }).mountpoint === mnt) out.push(path.join(dir, f));
      } catch { /* another kind of file, or being written */ }
    }
  } catch { /* no runtime directory */ }
  return out;
}

/** processes other than this one with `work` in their command line (pgrep -f) or their cwd under it */
function processesOf(work: string): string[] {
  const out = new Set<string>();
  const pg = spawnSync('pgrep', ['-a', '-f', work], { encoding: 'utf8' });
  for (const l of pg.stdout.split('\n').filter(Boolean)) if (Number(l.split(' ')[0]) !== process.pid) out.add(l.slice(0, 200));
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      const cwd = readlinkSync(`/proc/${pid}/cwd`);
      if (cwd === work || cwd.startsWith(`${work}/`)) out.add(`${pid} (cwd ${cwd}) ${readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').slice(0, 160)}`);
    } catch { /* gone, or a kernel thread */ }
  }
  return [...out];
}

function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '10' },
      store: { type: 'string' },
      driver: { type: 'string', default: 'native' },
      'pool-mb': { type: 'string', default: '32' },
      'cache-mb': { type: 'string', default: '64' },
      'write-buffer-mb': { type: 'string', default: '32' },
      entries: { type: 'string', default: '50000' },
      calibrate: { type: 'string', default: '60' },
      seed: { type: 'string', default: '1' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const num = (name: string, v: string | undefined, min: number): number => {
    const n = Number(v);
    if (!(Number.isFinite(n) && n >= min)) throw new Error(`bad --${name} '${v}' (a number >= ${min})`);
    return n;
  };
  const minutes = num('minutes', values.minutes, 0.5);
  const poolMb = num('pool-mb', values['pool-mb'], 4);
  const cacheMb = num('cache-mb', values['cache-mb'], 0);
  const wbMb = num('write-buffer-mb', values['write-buffer-mb'], 1);
  const entries = Math.round(num('entries', values.entries, 1));
  const seed = Math.round(num('seed', values.seed, 0));
  const calibrateS = num('calibrate', values.calibrate, 0);
  const driver = values.driver!;
  if (driver !== 'native' && driver !== 'libfuse') throw new Error(`bad --driver '${driver}' (native or libfuse)`);
  if (!existsSync(PYTHON)) throw new Error(`${PYTHON} is missing (the loads are python scripts)`);
  if (spawnSync('fio', ['--version'], { stdio: 'ignore' }).status !== 0) throw new Error('fio is not installed');
  const rand = xorshift(seed * 7919 + 1);

  const started = new Date();
  const outDir = path.join(repoRoot, 'bench/out');
  const logDir = path.join(outDir, `logs-${stamp(started)}`);
  mkdirSync(logDir, { recursive: true });
  const logFile = path.join(logDir, 'daemon.log');
  const work = mkdtempSync(path.join(os.tmpdir(), 'kvfs-soak-'));
  const mnt = path.join(work, 'mnt');
  mkdirSync(mnt);
  const store = values.store ?? `local:${path.join(work, 'store')}`;
  const version = gitVersion();
  const quiet0 = await quietness();
  say(quiet0.text.replace(/\*/g, ''));

  const problems: string[] = [];
  const events: ChaosEvent[] = [];
  const windows: Window[] = [];
  const daemons: Daemon[] = [];
  const samples: Sample[] = [];
  let current: Daemon | undefined;
  /** the daemon pid this soak has stopped (SIGSTOP) and not yet continued */
  let stopped: number | undefined;
  let aborted = false;
  let loadStart = 0;
  let loadEnd = 0;
  let idleAfterMount = NaN;
  let idleAfterSetup = NaN;
  /** the calibration daemon's peak RssAnon+RssShmem under load */
  let calPeak = NaN;
  let poolBytes = driver === 'native' ? poolMb * MIB : 0;
  let setupSeconds = NaN;
  let leftovers: string[] = [];

  const src = makeSource(path.join(work, 'src'), 300, seed);
  const loads = new Loads({ mnt, work, src, entries, seed, fioRuntime: 30 });

  // in every outcome: continue a stopped daemon, kill the tools, unmount, stop the daemons, remove the work dir
  atExit(() => {
    if (stopped) try { process.kill(stopped, 'SIGCONT'); } catch { /* gone */ }
    loads.killAll();
    forceUnmount(mnt);
    for (const d of daemons) stopDaemon(d.pid);
    removeWork(work);
  });
  const onSignal = (sig: NodeJS.Signals): void => {
    if (aborted) process.exit(130);
    aborted = true;
    say(`${sig}: stopping the soak; the load is killed and the mount torn down (again to exit at once)`);
    problems.push(`interrupted by ${sig}`);
    if (stopped) try { process.kill(stopped, 'SIGCONT'); } catch { /* gone */ }
    loads.killAll();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const kvfs = (args: string[], timeoutMs = 120_000): Promise<RunResult> => run(process.execPath, [kvfsBin, ...args], { timeoutMs });
  const logSince = (d: Daemon): string[] => {
    try {
      return readFileSync(logFile).subarray(d.logStart).toString('utf8').split('\n').filter(Boolean).map(logText);
    } catch {
      return [];
    }
  };
  const logSize = (): number => (existsSync(logFile) ? statSync(logFile).size : 0);
  const argsWith = (cache: number, wb: number): string[] => ['--driver', driver, '--buffer-pool-mb', String(poolMb),
    '--cache-mb', String(cache), '--write-buffer-mb', String(wb)];
  const mountArgs = argsWith(cacheMb, wbMb);
  const calArgs = argsWith(0, 1);

  const mount = async (why: string, cal = false): Promise<Daemon> => {
    const logStart = logSize();
    const m = await kvfsMount(store, mnt, [...(cal ? calArgs : mountArgs), '--log-file', logFile]);
    const d: Daemon = { n: daemons.length + 1, pid: m.pid, why, cal, logStart, dev: mountDev(mnt) ?? '?', t0: Date.now() };
    daemons.push(d);
    current = d;
    say(`daemon ${d.n} (pid ${d.pid}) mounted ${store} at ${mnt} (${why})`);
    return d;
  };

  /** waits for the daemon to exit after its mount went away; records how it ended */
  const ending = async (d: Daemon, ms = 60_000): Promise<boolean> => {
    const gone = await waitGone(d.pid, ms);
    d.t1 = Date.now();
    const said = logSince(d);
    const committed = said.some((l) => /: everything committed; stopped$/.test(l));
    const records = recordsOf(mnt);
    d.cleanEnd = gone && committed && records.length === 0;
    d.end = !gone ? `still running ${ms / 1000} s after its mount went away`
      : !committed ? `exited without logging "everything committed" (last line: ${said[said.length - 1] ?? 'none'})`
        : records.length ? `exited, but its record ${records[0]} is still there` : 'committed everything and exited';
    if (current === d) current = undefined;
    return d.cleanEnd;
  };

  /** the median RssAnon + RssShmem of the current daemon over 3 s, after `settleMs` */
  const idleAnon = async (settleMs: number): Promise<number> => {
    await sleep(settleMs);
    const v: number[] = [];
    for (let i = 0; i < 6; i++, await sleep(500)) {
      const m = current && memoryOf(current.pid);
      if (m && Number.isFinite(m.anon + m.shmem)) v.push(m.anon + m.shmem);
    }
    v.sort((a, b) => a - b);
    return v[Math.floor(v.length / 2)] ?? NaN;
  };

  // ------------------------------------------------------------------------------------- sampling
  let stuckSaid = false;
  let sampling = false;
  const sampler = setInterval(async () => {
    const d = current;
    if (!d || sampling) return;
    const m = memoryOf(d.pid);
    if (!m || Object.values(m).some((v) => Number.isNaN(v))) return; // gone, or a zombie (no Vm lines)
    let st: { pool?: { capacityBytes: number }; fs?: { writeBackBytes: number; blobCacheBytes: number } } | undefined;
    sampling = true;
    try {
      st = (await daemonStats(mnt)) as typeof st;
      if (st?.pool) poolBytes = st.pool.capacityBytes;
    } catch { /* not mounted now (chaos), or no answer */ } finally {
      sampling = false;
    }
    samples.push({ t: Date.now(), daemon: d.n, pid: d.pid, ...m, writeBack: st?.fs?.writeBackBytes, blobCache: st?.fs?.blobCacheBytes });
    if (loads.isActive && !stopped && Date.now() - loads.lastProgress > 180_000 && !stuckSaid) {
      stuckSaid = true;
      problems.push(`no load finished a step for 180 s (at ${((Date.now() - loadStart) / 1000).toFixed(0)} s): a hang`);
    }
  }, 1000);

  // ------------------------------------------------------------------------------------- chaos
  const live = (d: Daemon): string | undefined => (!isAlive(d.pid) ? `the daemon (pid ${d.pid}) is gone`
    : mountDev(mnt) !== d.dev ? `${mnt} is no longer the same mount` : undefined);

  /** three SIGSTOPs of 1-3 s each; the load must see no error */
  const stopBurst = async (): Promise<[boolean, string]> => {
    const d = current!;
    const said: string[] = [];
    let ok = true;
    for (let k = 0; k < 3 && !aborted; k++) {
      const ms = Math.round(1000 + rand() * 2000);
      const w: Window = { kind: 'sigstop', t0: Date.now(), t1: 0 };
      windows.push(w);
      process.kill(d.pid, 'SIGSTOP');
      stopped = d.pid;
      await sleep(200);
      const state = procState(d.pid);
      await sleep(ms - 200);
      const still = mountDev(mnt) === d.dev;
      process.kill(d.pid, 'SIGCONT');
      stopped = undefined;
      w.t1 = Date.now();
      if (state !== 'T' || !still) ok = false;
      said.push(`${(ms / 1000).toFixed(1)} s${state !== 'T' ? ` (state ${state}, not stopped)` : ''}${still ? '' : ' (mount gone)'}`);
      await sleep(1000 + rand() * 1000);
    }
    const bad = live(d);
    return [ok && !bad, `stopped ${said.join(', ')}; ${bad ?? 'the daemon went on serving'}`];
  };

  /** `kvfs umount` while the load holds the mount: exit 1 naming a holder, the mount unchanged */
  const busyUmount = async (): Promise<[boolean, string]> => {
    const d = current!;
    const w: Window = { kind: 'umount', t0: Date.now(), t1: 0 };
    windows.push(w);
    const r = await kvfs(['umount', mnt], 60_000);
    w.t1 = Date.now();
    const said = (r.stderr.trim() || r.stdout.trim()).split('\n').pop() ?? '';
    const holder = /is busy \(used by (pid \d+ \([^)]*\))/.exec(said)?.[1];
    const before = loads.lastProgress;
    await sleep(3000);
    const bad = live(d);
    const progressed = loads.lastProgress > before;
    const ok = r.code === 1 && !!holder && !bad && progressed;
    return [ok, `exit ${r.code}${holder ? `, named ${holder}` : ', named no holder'}; ${bad ?? 'same mount still serving'}` +
      `${progressed ? '' : '; the load made no progress for 3 s after it'} ("${said.slice(0, 160)}")`];
  };

  /** pause at a safe point, let `unmounted` end the daemon, mount again, verify the ledger, resume */
  const cycle = async (label: string, unmounted: () => Promise<string | undefined>): Promise<[boolean, string]> => {
    const d = current!;
    const w: Window = { kind: 'restart', t0: Date.now(), t1: 0 };
    windows.push(w);
    await loads.pause();
    await loads.snapshot();
    const why = await unmounted();
    const clean = await ending(d);
    if (aborted) return [false, 'interrupted'];
    await mount(`after ${label}`);  // with the configured sizes
    const v = await loads.verify(`after ${label}`);
    const bad = verifyProblems(v);
    w.t1 = Date.now();
    if (!aborted) loads.start();
    return [!why && clean && bad.length === 0,
      `${why ? `${why}; ` : ''}daemon ${d.n} ${d.end}; ledger on daemon ${current?.n}: ${fmt(v.files)} files (${mib(v.bytes)}) read back, ` +
      `${bad.length ? `${bad.length} problem(s): ${bad.slice(0, 3).join('; ')}` : 'all match'}` +
      `${v.big ? `; big: ${fmt(v.big.entries)} entries` : ''}${v.sqlite ? `; sqlite: ${v.sqlite.rows} rows, integrity ${v.sqlite.integrity}` : ''}`];
  };

  const restart = (label: string) => (): Promise<[boolean, string]> => cycle(label, async () => {
    const r = await kvfs(['umount', mnt]);
    return r.code === 0 && /unmounted/.test(r.stdout) ? undefined : `kvfs umount: exit ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 200)}`;
  });

  /** SIGTERM while a holder keeps the mount busy: the daemon keeps serving, then unmounts once released */
  const sigtermBusy = async (): Promise<[boolean, string]> => {
    const d = current!;
    const holdStop = path.join(work, `hold-stop-${Date.now()}`);
    let holding = false;
    const holder = startTool(PYTHON, [path.join(repoRoot, 'bench/soak-load.py'), 'hold', mnt, holdStop], {
      timeoutMs: 900_000, onLine: (l) => { holding ||= l.startsWith('H '); },
    });
    for (const end = Date.now() + 30_000; !holding && Date.now() < end;) await sleep(50);
    if (!holding) {
      writeFileSync(holdStop, '');
      return [false, `the holder did not start: ${ended(await holder.done)}`];
    }
    const w: Window = { kind: 'sigterm', t0: Date.now(), t1: 0 };
    windows.push(w);
    process.kill(d.pid, 'SIGTERM');
    let busyLine: string | undefined;
    for (const end = Date.now() + 20_000; !busyLine && Date.now() < end;) {
      await sleep(200);
      busyLine = logSince(d).find((l) => /cannot unmount .* it is busy/.test(l));
    }
    const before = loads.lastProgress;
    await sleep(5000);
    const serving = live(d);
    const progressed = loads.lastProgress > before;
    w.t1 = Date.now();
    const [ok, outcome] = await cycle('SIGTERM', async () => {
      writeFileSync(holdStop, '');
      await holder.done;
      for (const end = Date.now() + 30_000; mountDev(mnt) && Date.now() < end;) await sleep(100);
      return mountDev(mnt) ? 'the daemon did not unmount within 30 s of the release' : undefined;
    });
    const holderPid = holder.pid;
    return [ok && !!busyLine && !serving && progressed,
      `${busyLine ? `daemon said "${busyLine.replace(/^kvfs: /, '').slice(0, 120)}..."` : 'the daemon never said it was busy'}; ` +
      `${serving ?? `kept serving for 5 s${progressed ? '' : ' but the load made no progress'}`}; released holder pid ${holderPid}: ${outcome}`];
  };

  // ------------------------------------------------------------------------------------- the run
  const plan: [number, string, () => Promise<[boolean, string]>][] = [
    [0.08, 'SIGSTOP burst', stopBurst],
    [0.15, 'kvfs umount while busy', busyUmount],
    [0.22, 'SIGSTOP burst', stopBurst],
    [0.30, 'restart (kvfs umount, mount)', restart('restart 1')],
    [0.40, 'kvfs umount while busy', busyUmount],
    [0.47, 'SIGSTOP burst', stopBurst],
    [0.55, 'SIGTERM while busy, then release', sigtermBusy],
    [0.65, 'SIGSTOP burst', stopBurst],
    [0.72, 'kvfs umount while busy', busyUmount],
    [0.80, 'restart (kvfs umount, mount)', restart('restart 2')],
    [0.90, 'SIGSTOP burst', stopBurst],
  ];
  const durationMs = minutes * 60_000;
  let final: ReturnType<typeof verifyProblems> = [];
  let finalFiles = 0;
  try {
    const f = await kvfs(['format', store]);
    if (f.code !== 0) throw new Error(`kvfs format ${store}: exit ${f.code}: ${f.stderr.trim()}`);
    await mount(calibrateS ? 'calibration: --cache-mb 0 --write-buffer-mb 1' : 'start', calibrateS > 0);
    idleAfterMount = await idleAnon(2000);
    say(`creating ${fmt(entries)} entries in ${mnt}/big`);
    setupSeconds = (await loads.setup()).seconds;
    const warm = await startTool('ls', ['-l', path.join(mnt, 'big')], { timeoutMs: 1_800_000, onLine: () => undefined }).done;
    if (!toolOk(warm)) throw new Error(`ls -l big: ${ended(warm)}`);
    idleAfterSetup = await idleAnon(3000);
    say(`idle RssAnon+RssShmem: ${mib(idleAfterMount)} after the mount, ${mib(idleAfterSetup)} after setup; load for ${minutes} min`);

    loads.start();
    if (calibrateS) {
      // the daemon's own working memory under this load, with no cache and the smallest write buffers
      say(`calibration: ${calibrateS} s of load on a mount with --cache-mb 0 --write-buffer-mb 1`);
      const t = Date.now();
      while (!aborted && Date.now() - t < calibrateS * 1000) await sleep(200);
      const cal = current!;
      const under = samples.filter((x) => x.daemon === cal.n && x.t >= t).map((x) => x.anon + x.shmem);
      calPeak = under.length ? Math.max(...under) : NaN;
      const [ok, outcome] = await restart('calibration')();
      events.push({ t: -1, name: 'end of calibration: kvfs umount, mount with the configured sizes', seconds: (Date.now() - t) / 1000 - calibrateS, ok, outcome });
      say(`  ${ok ? 'ok' : 'NOT AS EXPECTED'}: ${outcome}`);
      if (!current) throw new Error('no daemon after the calibration');
    }
    loadStart = Date.now();
    for (const [at, name, fn] of plan) {
      while (!aborted && Date.now() - loadStart < at * durationMs) await sleep(200);
      if (aborted || !current) break;
      const t = Date.now();
      say(`${((t - loadStart) / 1000).toFixed(0)} s: ${name}`);
      let r: [boolean, string];
      try {
        r = await fn();
      } catch (e) {
        r = [false, `threw: ${(e as Error).message}`];
      }
      events.push({ t: t - loadStart, name, seconds: (Date.now() - t) / 1000, ok: r[0], outcome: r[1] });
      say(`  ${r[0] ? 'ok' : 'NOT AS EXPECTED'}: ${r[1]}`);
      if (!current) {
        problems.push(`no daemon is serving ${mnt} after "${name}": the soak stops`);
        break;
      }
    }
    while (!aborted && current && Date.now() - loadStart < durationMs) await sleep(200);

    // the end: pause, unmount, verify everything on a fresh mount, unmount
    if (!aborted && current) {
      say('the end: pausing the load, unmounting, verifying the ledger on a fresh mount');
      await loads.pause();
      loadEnd = Date.now();
      await loads.snapshot();
      const d = current;
      const r = await kvfs(['umount', mnt]);
      if (r.code !== 0) problems.push(`the last kvfs umount: exit ${r.code}: ${(r.stderr || r.stdout).trim()}`);
      await ending(d);
      const v = await (async () => {
        await mount('the final check');
        return loads.verify('final, on a fresh mount');
      })();
      final = verifyProblems(v);
      finalFiles = v.files;
      const last = current!;
      const u = await kvfs(['umount', mnt]);
      if (u.code !== 0) problems.push(`the final kvfs umount: exit ${u.code}: ${(u.stderr || u.stdout).trim()}`);
      await ending(last);
    }
  } catch (e) {
    problems.push(`the soak stopped: ${(e as Error).message}`);
    say((e as Error).stack ?? String(e));
  } finally {
    clearInterval(sampler);
    if (stopped) try { process.kill(stopped, 'SIGCONT'); } catch { /* gone */ }
    loadEnd ||= Date.now();
    await loads.stopNow(30_000);
    if (current || mountDev(mnt)) {
      const r = await kvfs(['umount', mnt], 60_000);
      if (r.code !== 0) await kvfs(['umount', '--lazy', mnt], 60_000);
      forceUnmount(mnt);
      if (current && !current.end) await ending(current, 15_000);
    }
    for (const d of daemons) {
      if (!isAlive(d.pid)) continue;
      problems.push(`daemon ${d.n} (pid ${d.pid}) was still running at the end: stopped it (SIGTERM, then SIGKILL)`);
      stopDaemon(d.pid);
    }
    // nothing of this soak may be left: processes, mounts
    await sleep(500);
    leftovers = [...processesOf(work).map((p) => `process ${p}`), ...mountsUnder(work).map((m) => `mount ${m}`)];
    for (const l of leftovers) say(`LEFT BEHIND: ${l}`);
    if (leftovers.length) {
      for (const m of mountsUnder(work)) forceUnmount(m);
      for (const p of processesOf(work)) try { process.kill(Number(p.split(' ')[0]), 'SIGKILL'); } catch { /* gone */ }
    }
  }

  // ------------------------------------------------------------------------------------- the report
  const windowOf = (e: { t0: number; t1: number }): WindowKind | 'other' =>
    windows.find((w) => e.t1 >= w.t0 && e.t0 <= (w.t1 || Date.now()) + GRACE_MS)?.kind ?? 'other';
  const errorsOf = (k: Kind): LoadError[] => loads.errors.filter((e) => e.kind === k);
  const op = (name: string): number => loads.ops.get(name) ?? 0;
  const opsText: Record<Kind, string> = {
    fio: `${fmt(op('fio runs'))} runs: ${fmt(op('fio reads'))} reads, ${fmt(op('fio writes'))} writes, ${fmt(op('fio fsyncs'))} fsyncs`,
    cp: `${fmt(op('cp copies'))} copies (${fmt(op('cp files'))} files, ${mib(op('cp bytes'))})`,
    rm: `${fmt(op('rm trees'))} trees removed`,
    ls: `${fmt(op('ls listings'))} listings of ${fmt(entries)}${op('ls listings') ? ` (mean ${(op('ls seconds') / op('ls listings')).toFixed(1)} s)` : ''}`,
    writer: `${fmt(op('writer create'))} created, ${fmt(op('writer rewrite'))} rewritten, ${fmt(op('writer truncate'))} truncated, ` +
      `${fmt(op('writer delete'))} read back and deleted, ${fmt(op('writer adopt'))} read back after a restart`,
    sqlite: `${fmt(op('sqlite transaction'))} transactions, ${fmt(op('sqlite integrity_check'))} integrity checks`,
    hash: `${fmt(op('snapshots'))} snapshots of the fio files and the database at safe points`,
    verify: `${fmt(op('verify runs'))} runs, ${fmt(op('verify files'))} files read back`,
    pause: `${fmt(op('pauses'))} safe points (every load stopped after its current step)`,
  };
  const loadErrors = loads.errors.length;
  const restartVerifs = loads.verifications.filter((v) => !v.label.startsWith('before rm'));
  const soakDaemons = new Set(daemons.filter((d) => !d.cal).map((d) => d.n));
  const anonPeak = Math.max(0, ...samples.filter((s) => soakDaemons.has(s.daemon)).map((s) => s.anon + s.shmem));
  const filePeak = Math.max(0, ...samples.map((s) => s.file));
  const rssPeak = Math.max(0, ...samples.map((s) => s.rss));
  const idleFixed = idleAfterSetup - poolBytes;
  const fixed = calibrateS ? calPeak - poolBytes : idleFixed;
  const configured = fixed + poolBytes + cacheMb * MIB + wbMb * MIB;
  const bound = configured + cacheMb * MIB; // + the blobs the cache evicted, until V8 collects them (see the header)
  const boundOk = samples.length > 0 && anonPeak <= bound;
  const unexpected = daemons.flatMap((d) => logSince(d).filter((l) => !ORDINARY.some((re) => re.test(l))).map((l) => `daemon ${d.n}: ${l}`));
  const uniqueUnexpected = [...new Set(unexpected)];
  const checks: [string, boolean, string][] = [
    ['no load error', loadErrors === 0, `${loadErrors} error(s)`],
    ['every closed or fsynced file matches the ledger', loads.mismatches.length === 0 && final.length === 0 && finalFiles > 0,
      `${loads.mismatches.length} problem(s) during the run, ${final.length} in the final check of ${fmt(finalFiles)} files`],
    ['every chaos event as expected', events.length > 0 && events.every((e) => e.ok), `${events.filter((e) => e.ok).length}/${events.length}`],
    ['every daemon committed everything and exited', daemons.length > 0 && daemons.every((d) => d.cleanEnd),
      daemons.filter((d) => !d.cleanEnd).map((d) => `daemon ${d.n}: ${d.end}`).join('; ') || `${daemons.length} daemons`],
    ['RssAnon+RssShmem within the bound', boundOk, `peak ${mib(anonPeak)} vs bound ${mib(bound)}`],
    ['daemon log: no unexpected lines', uniqueUnexpected.length === 0, `${uniqueUnexpected.length} line(s)`],
    ['nothing left behind', leftovers.length === 0, leftovers.length ? leftovers.join('; ') : 'no process, no mount'],
    ['no other problem', problems.length === 0, problems.join('; ') || 'none'],
  ];
  const pass = checks.every((c) => c[1]);
  const quiet1 = await quietness();

  const L: string[] = [];
  const cell = (s: string): string => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');
  L.push(`# kvfs soak ${started.toISOString()}: ${pass ? 'PASS' : 'FAIL'}`, '');
  L.push(`${os.hostname()}, Linux ${os.release()}, ${os.cpus().length} CPUs, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}. ` +
    `kvfs ${version}. At the start: ${quiet0.text}; at the end: ${quiet1.text}.`, '');
  L.push(`Store \`${store}\`, mounted with \`kvfs mount STORE MNT --background ${mountArgs.join(' ')}\` ` +
    `(${daemons.length} daemons in turn). Source tree for cp: ${src.files.length} files, ${mib(src.bytes)}. ` +
    `Big directory: ${fmt(entries)} empty files, made in ${setupSeconds.toFixed(1)} s.`, '');
  L.push('| | |', '|---|---|');
  L.push(`| duration | ${(loadStart ? (loadEnd - loadStart) / 60_000 : 0).toFixed(1)} min of load and chaos (asked: ${minutes} min), ${((Date.now() - started.getTime()) / 60_000).toFixed(1)} min in all |`);
  L.push(`| chaos events | ${events.length}: ${events.filter((e) => e.ok).length} as expected |`);
  L.push(`| ledger | ${restartVerifs.map((v) => `${fmt(v.files)}`).join(' / ')} files verified at ${restartVerifs.length} checkpoints ` +
    `(the last on a fresh mount); ${fmt(op('verify files') - restartVerifs.reduce((n, v) => n + v.files, 0))} more read back before rm -r; ` +
    `${loads.mismatches.length} mismatched or missing |`);
  L.push(`| memory | peak RssAnon+RssShmem ${mib(anonPeak)} vs bound ${mib(bound)} (fixed ${mib(fixed)} + pool ${mib(poolBytes)} + cache ${mib(cacheMb * MIB)} + write buffers ${mib(wbMb * MIB)} ` +
    `+ evicted blobs ${mib(cacheMb * MIB)}); peak RssFile ${mib(filePeak)}; peak VmRSS ${mib(rssPeak)} |`);
  L.push(`| result | **${pass ? 'PASS' : 'FAIL'}** |`, '');

  L.push('## Load', '', '| kind | operations | errors | during SIGSTOP | during kvfs umount | during SIGTERM busy | during restarts | other |');
  L.push('|---|---|---:|---:|---:|---:|---:|---:|');
  for (const k of KINDS) {
    const es = errorsOf(k);
    const by = (w: WindowKind | 'other'): number => es.filter((e) => windowOf(e) === w).length;
    L.push(`| ${k} | ${opsText[k]} | ${es.length} | ${by('sigstop')} | ${by('umount')} | ${by('sigterm')} | ${by('restart')} | ${by('other')} |`);
  }
  const slowest = Object.entries(loads.maxMs).sort((a, b) => b[1] - a[1]).slice(0, 6);
  L.push('', `Longest single calls of the python loads: ${slowest.map(([k, ms]) => `${k} ${fmt(ms / 1000, 2)} s`).join(', ') || 'none'}; ` +
    `${loads.slow.length} calls over 1 s, of which ${loads.slow.filter(([, t, ms]) => windowOf({ t0: t, t1: t + ms }) === 'sigstop').length} overlap a SIGSTOP.`);
  if (loadErrors) {
    L.push('', 'Errors (first 30):', '');
    for (const e of loads.errors.slice(0, 30)) L.push(`- ${((e.t0 - loadStart) / 1000).toFixed(1)} s, ${e.kind} (${windowOf(e)}): ${cell(e.what)}`);
  }
  if (loads.mismatches.length) {
    L.push('', 'Mismatches (first 30):', '');
    for (const m of loads.mismatches.slice(0, 30)) L.push(`- ${((m.t - loadStart) / 1000).toFixed(1)} s: ${cell(m.what)}`);
  }

  L.push('', '## Chaos', '', '| at | event | took | as expected | outcome |', '|---:|---|---:|---|---|');
  for (const e of events) L.push(`| ${e.t < 0 ? 'calibration' : `${(e.t / 1000).toFixed(0)} s`} | ${e.name} | ${e.seconds.toFixed(1)} s | ${e.ok ? 'yes' : '**NO**'} | ${cell(e.outcome)} |`);
  const stops = windows.filter((w) => w.kind === 'sigstop');
  L.push('', `${stops.length} SIGSTOPs in all, ${(stops.reduce((n, w) => n + w.t1 - w.t0, 0) / 1000).toFixed(1)} s stopped.`);

  L.push('', '## Ledger checkpoints', '', '| checkpoint | files | bytes | mismatched | missing | not in the ledger | big directory | sqlite |', '|---|---:|---:|---:|---:|---:|---|---|');
  for (const v of restartVerifs) {
    L.push(`| ${v.label} | ${fmt(v.files)} | ${mib(v.bytes)} | ${v.mismatched.length} | ${v.missing.length} | ${v.extra.length} | ` +
      `${v.big ? `${fmt(v.big.entries)} entries, ${v.big.bad.length + v.big.missing} bad` : ''} | ` +
      `${v.sqlite ? `${v.sqlite.rows} rows, integrity ${v.sqlite.integrity}, ${v.sqlite.bad.length} bad` : ''}${v.failed ? ` ${cell(v.failed)}` : ''} |`);
  }

  L.push('', '## Memory', '', '| daemon | pid | why | lived | samples | peak RssAnon+RssShmem | peak RssFile | peak VmRSS | how it ended |',
    '|---:|---:|---|---:|---:|---:|---:|---:|---|');
  for (const d of daemons) {
    const s = samples.filter((x) => x.daemon === d.n);
    L.push(`| ${d.n} | ${d.pid} | ${d.why} | ${(((d.t1 ?? Date.now()) - d.t0) / 1000).toFixed(0)} s | ${s.length} | ` +
      `${mib(Math.max(0, ...s.map((x) => x.anon + x.shmem)))} | ${mib(Math.max(0, ...s.map((x) => x.file)))} | ${mib(Math.max(0, ...s.map((x) => x.rss)))} | ${cell(d.end ?? '?')} |`);
  }
  const wbPeak = Math.max(0, ...samples.map((s) => s.writeBack ?? 0));
  const cachePeak = Math.max(0, ...samples.map((s) => s.blobCache ?? 0));
  L.push('', calibrateS
    ? `- Fixed overhead: the peak RssAnon+RssShmem of the calibration daemon (daemon 1: the same pool, --cache-mb 0, --write-buffer-mb 1) ` +
      `over ${calibrateS} s of the same load, ${mib(calPeak)}, - pool arena ${mib(poolBytes)} = **${mib(fixed)}**: the daemon's working memory ` +
      `that is none of the configured parts (V8 heap and its garbage between collections, requests in flight, LMDB transactions, ` +
      `the kernel's ${fmt(entries)} lookups of the big directory).`
    : `- Fixed overhead: idle RssAnon+RssShmem of daemon 1 after setup - pool arena ${mib(poolBytes)} = **${mib(fixed)}**.`);
  L.push(`- Idle RssAnon+RssShmem of daemon 1: ${mib(idleAfterMount)} right after the mount, ${mib(idleAfterSetup)} after setup (${fmt(entries)} ` +
    `entries created and listed once, so the kernel holds their lookups); idle overhead ${mib(idleFixed)} (less the pool).`);
  const soakSamples = samples.filter((x) => soakDaemons.has(x.daemon) && x.t >= loadStart && x.t <= loadEnd);
  const third = (loadEnd - loadStart) / 3;
  const thirds = [0, 1, 2].map((i) => Math.max(0, ...soakSamples.filter((x) => x.t - loadStart >= i * third && x.t - loadStart < (i + 1) * third).map((x) => x.anon + x.shmem)));
  L.push(`- Growth: peak RssAnon+RssShmem in each third of the soak: ${thirds.map((b) => mib(b)).join(' / ')}.`);
  L.push(`- Bound: ${mib(fixed)} + pool ${mib(poolBytes)} + --cache-mb ${cacheMb} + --write-buffer-mb ${wbMb} + evicted blobs ${cacheMb} MiB ` +
    `= **${mib(bound)}**; peak RssAnon+RssShmem **${mib(anonPeak)}** (${boundOk ? 'within' : 'OVER'}, headroom ${mib(bound - anonPeak)}). ` +
    `Without the evicted blobs (fixed + what is configured): ${mib(configured)}, ${anonPeak <= configured ? 'within' : `exceeded by ${mib(anonPeak - configured)}`}.`);
  if (driver === 'native') L.push(`- The daemon's own figures (stats file, sampled): write-back buffers peak ${mib(wbPeak)} of ${wbMb} MiB, blob cache peak ${mib(cachePeak)} of ${cacheMb} MiB.`);
  L.push(`- RssFile (the LMDB map of the store, Node's binary and libraries; page cache, reclaimable) peak ${mib(filePeak)}, reported apart.`);

  L.push('', '## Checks', '', '| check | result | detail |', '|---|---|---|');
  for (const [name, ok, detail] of checks) L.push(`| ${name} | ${ok ? 'PASS' : '**FAIL**'} | ${cell(detail.slice(0, 600))} |`);
  if (uniqueUnexpected.length) {
    L.push('', 'Unexpected daemon log lines (first 20):', '');
    for (const l of uniqueUnexpected.slice(0, 20)) L.push(`- \`${l.slice(0, 300)}\``);
  }
  L.push('', `Daemon log: ${path.relative(repoRoot, logFile)}.`, '');

  const md = L.join('\n');
  const file = path.join(outDir, `SOAK-${stamp(started)}.md`);
  writeFileSync(file, md);
  writeFileSync(path.join(outDir, `soak-${stamp(started)}.csv`), ['t_ms,daemon,pid,rss,rss_anon,rss_file,rss_shmem,write_back,blob_cache',
    ...samples.map((s) => [s.t - started.getTime(), s.daemon, s.pid, s.rss, s.anon, s.file, s.shmem, s.writeBack ?? '', s.blobCache ?? ''].join(','))].join('\n') + '\n');
  console.log(md);
  console.log(`saved to ${path.relative(process.cwd(), file)}, samples in bench/out/soak-${stamp(started)}.csv`);
  removeWork(work);
  return pass ? 0 : 1;
}

/** the daemon's log lines this soak expects (mounting, signals, busy, unmounting) */
const ORDINARY = [
  /^kvfs: mounted /, /^kvfs: fs\.pipe-max-size is /, /^kvfs: SIGTERM: committing and unmounting /,
  /^kvfs: cannot unmount .*: it is busy/, /^kvfs: .* was unmounted$/, /^kvfs: unmounted .*: everything committed; stopped$/,
];

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    say(err instanceof Error ? (err.stack ?? err.message) : String(err));
    process.exit(2);
  },
);
