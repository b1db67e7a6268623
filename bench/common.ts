/**
 * What the benches share: running tools, the mount table, kvfs daemons started and stopped through the CLI,
 * a daemon's memory from /proc, and a last-resort cleanup that runs even when the bench exits abruptly.
 *
 * Contract: every mount a bench makes is registered with `atExit` while it exists, so that an exception,
 * a signal or process.exit still detaches it (synchronously, in the 'exit' handler) and stops its process.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = findRepoRoot(path.dirname(fileURLToPath(import.meta.url)));
export const sharedBench = path.resolve(repoRoot, '../shared/bench');
export const kvfsBin = path.join(repoRoot, 'bin/kvfs.js');
export const MIB = 1 << 20;

export const say = (msg: string): void => void process.stderr.write(`bench: ${msg}\n`);
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function findRepoRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    try {
      if (JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')).name === 'kvfs') return dir;
    } catch {
      // not here; go up
    }
    if (path.dirname(dir) === dir) throw new Error(`no kvfs package.json above ${from}`);
  }
}

export function stamp(d: Date): string {
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
}

export const fmt = (n: number, digits = 0): string =>
  n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
export const mib = (bytes: number, digits = 1): string => `${fmt(bytes / MIB, digits)} MiB`;

/** the kvfs version under test: the commit, and whether the working tree differs from it */
export function gitVersion(): string {
  const head = spawnSync('git', ['-C', repoRoot, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' });
  if (head.status !== 0) return 'unknown version (no git)';
  const dirty = spawnSync('git', ['-C', repoRoot, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' });
  const files = dirty.stdout.trim().split('\n').filter(Boolean).length;
  return `commit ${head.stdout.trim()}${files ? ` with ${files} changed file(s) in the working tree` : ''}`;
}

export function loadAvg(): number {
  return Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
}

function cpuTimes(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - f[3]! - (f[4] ?? 0), total }; // idle and iowait are not busy
}

/** tasks in uninterruptible sleep (state D): each adds 1 to the load average without using a CPU */
function stuckTasks(): number {
  let n = 0;
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      for (const tid of readdirSync(`/proc/${pid}/task`)) {
        const st = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        if (st[st.lastIndexOf(')') + 2] === 'D') n++;
      }
    } catch {
      // gone
    }
  }
  return n;
}

export interface Quiet {
  load: number;
  /** tasks in state D, counted in `load` */
  stuck: number;
  /** % of all CPUs busy over the sampled interval */
  busyPct: number;
  busy: boolean;
  text: string;
}

/** How quiet the machine is: CPU use over `ms`, the load average and the tasks stuck in D state (which count
 * in the load average without using a CPU, so the load alone can read busy on an idle machine). Busy when the
 * CPUs were more than 20% busy over `ms`. */
export async function quietness(ms = 5000): Promise<Quiet> {
  const a = cpuTimes();
  await sleep(ms);
  const b = cpuTimes();
  const busyPct = (100 * (b.busy - a.busy)) / Math.max(1, b.total - a.total);
  const load = loadAvg();
  const stuck = stuckTasks();
  const busy = busyPct > 20;
  const text = `load average ${load}${stuck ? ` (${stuck} task(s) stuck in D state count in it)` : ''}, ` +
    `CPUs ${busyPct.toFixed(0)}% busy over ${ms / 1000} s${busy ? ' (**busy**)' : ' (quiet)'}`;
  return { load, stuck, busyPct, busy, text };
}

// ---------------------------------------------------------------------------------------------------------
// processes

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/**
 * Runs a command to completion, stdout and stderr captured (stderr also echoed with `echo`). With
 * `timeoutMs`, the command's process group is stopped when it runs longer, and `timedOut` is set; when `signal`
 * aborts, it is stopped the same way: SIGTERM, then SIGKILL 3 s later. SIGTERM first because fio runs its jobs
 * in processes of their own sessions, which a SIGKILL of fio's group leaves running; fio ends them on SIGTERM.
 */
export function run(
  cmd: string, args: string[],
  opts: { timeoutMs?: number; echo?: boolean; env?: NodeJS.ProcessEnv; signal?: AbortSignal } = {},
): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env, detached: true });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let hardKill: NodeJS.Timeout | undefined;
    const stop = (): void => {
      killGroup(child.pid, 'SIGTERM');
      hardKill ??= setTimeout(() => killGroup(child.pid, 'SIGKILL'), 3000);
    };
    const unregister = atExit(() => killGroup(child.pid, 'SIGKILL'));
    const onAbort = stop;
    opts.signal?.addEventListener('abort', onAbort);
    if (opts.signal?.aborted) onAbort();
    const timer = opts.timeoutMs
      ? setTimeout(() => {
        timedOut = true;
        stop();
      }, opts.timeoutMs)
      : undefined;
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (opts.echo) process.stderr.write(d);
    });
    const end = (code: number | null, signal: NodeJS.Signals | null): void => {
      clearTimeout(timer);
      clearTimeout(hardKill);
      unregister();
      opts.signal?.removeEventListener('abort', onAbort);
      resolve({ code, signal, stdout, stderr, timedOut });
    };
    child.on('error', (err) => {
      stderr += String(err);
      end(null, null);
    });
    // Not 'close' alone: a daemon started by the command may keep the pipes open for as long as it runs.
    child.on('exit', (code, signal) => {
      const finish = (): void => {
        child.stdout!.destroy();
        child.stderr!.destroy();
        end(code, signal);
      };
      const grace = setTimeout(finish, 200);
      child.on('close', () => {
        clearTimeout(grace);
        finish();
      });
    });
  });
}

/** a short description of how a command ended: "exit 0", "exit 1", "signal SIGKILL (timed out)" */
export function howEnded(r: RunResult): string {
  const how = r.signal ? `signal ${r.signal}` : r.code === null ? 'did not start' : `exit ${r.code}`;
  return r.timedOut ? `${how} (timed out)` : how;
}

export function killGroup(pid: number | undefined, sig: NodeJS.Signals): void {
  if (!pid) return;
  try {
    process.kill(-pid, sig);
  } catch {
    try {
      process.kill(pid, sig);
    } catch {
      // gone
    }
  }
}

export function isAlive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // a zombie (our own child not yet reaped) counts as gone
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

/** waits up to `ms` for the process to end; true when it did */
export async function waitGone(pid: number | undefined, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(50)) if (!isAlive(pid)) return true;
  return !isAlive(pid);
}

// ---------------------------------------------------------------------------------------------------------
// last-resort cleanup

const exitHooks = new Set<() => void>();
let exitHookInstalled = false;

/** runs `fn` (synchronously) if the process exits while it is registered; returns the unregister function */
export function atExit(fn: () => void): () => void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const f of [...exitHooks].reverse()) {
        try {
          f();
        } catch {
          // keep going: the next mount matters as much
        }
      }
    });
  }
  exitHooks.add(fn);
  return () => void exitHooks.delete(fn);
}

// ---------------------------------------------------------------------------------------------------------
// mounts

/** a field of /proc/self/mounts with its octal escapes (\040 for a space) undone */
const unescapeMountField = (f: string): string => f.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));

export function mountPoints(): Set<string> {
  const out = new Set<string>();
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const field = line.split(' ')[1];
    if (field) out.add(unescapeMountField(field));
  }
  return out;
}

export const isMounted = (dir: string): boolean => mountPoints().has(dir);

/** the mount at exactly `dir` (source and filesystem type, the last one mounted there), or undefined */
export function mountAt(dir: string): { source: string; fstype: string } | undefined {
  let found: { source: string; fstype: string } | undefined;
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const [source, target, fstype] = line.split(' ');
    if (target && unescapeMountField(target) === dir) found = { source: unescapeMountField(source!), fstype: fstype! };
  }
  return found;
}

/** The filesystem that holds `p` (findmnt -T): its device, type and mount point. */
export function filesystemOf(p: string): { source: string; fstype: string; target: string } {
  const r = spawnSync('findmnt', ['-n', '-o', 'SOURCE,FSTYPE,TARGET', '-T', p], { encoding: 'utf8' });
  const [source, fstype, target] = r.stdout.trim().split(/\s+/);
  if (r.status !== 0 || !target) throw new Error(`findmnt -T ${p} failed: ${r.stderr.trim() || r.status}`);
  return { source: source!, fstype: fstype!, target };
}

/** MB/s (10^6 bytes) and IOPS of the first job's writes in fio's JSON; undefined when it wrote nothing or is not fio's */
export function fioWrites(json: string): { mbs: number; iops: number } | undefined {
  try {
    const w = (JSON.parse(json) as { jobs: { write: { bw_bytes: number; io_bytes: number; iops: number } }[] }).jobs[0]!.write;
    return w.io_bytes > 0 ? { mbs: w.bw_bytes / 1e6, iops: w.iops } : undefined;
  } catch {
    return undefined;
  }
}

/** bytes allocated on disk under `p` (du -sk), or undefined when du fails */
export function diskUsage(p: string): number | undefined {
  const r = spawnSync('du', ['-sk', p], { encoding: 'utf8' });
  const kb = Number(r.stdout.split(/\s/)[0]);
  return r.status === 0 && Number.isFinite(kb) ? kb * 1024 : undefined;
}

/** waits until dir is a mount point; gives up early when `alive` says the mounting process is gone */
export async function waitMounted(dir: string, ms: number, alive: () => boolean = () => true): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(100)) {
    if (isMounted(dir)) return true;
    if (!alive()) break;
  }
  return isMounted(dir);
}

/** Detaches a mount that a polite unmount could not remove (busy, or its daemon gone); synchronous. */
export function forceUnmount(dir: string): void {
  if (!isMounted(dir)) return;
  for (const [cmd, ...args] of [['fusermount3', '-u', '-z', dir], ['umount', '-l', dir]]) {
    spawnSync(cmd!, args, { stdio: 'ignore', timeout: 20_000 });
    if (!isMounted(dir)) return;
  }
  say(`could not unmount ${dir}`);
}

/** Removes a directory that is no longer a mount point; never descends into another filesystem. */
export function removeDir(dir: string): void {
  if (isMounted(dir)) return;
  spawnSync('rm', ['-rf', '--one-file-system', dir], { stdio: 'ignore' });
}

/** Removes a work directory without throwing: mounts under it are detached first; a part still busy is named. */
export function removeWork(work: string): void {
  for (const m of mountPoints()) if (m.startsWith(`${work}/`)) forceUnmount(m);
  spawnSync('rm', ['-rf', '--one-file-system', work], { stdio: 'ignore' });
  if (existsSync(work)) say(`could not remove ${work} entirely`);
}

// ---------------------------------------------------------------------------------------------------------
// kvfs daemons

export interface KvfsMount {
  dir: string;
  /** the daemon's pid, from `kvfs mount --background`'s output */
  pid: number;
  /** the daemon's log (its stdout and stderr) */
  log: string;
}

/**
 * `kvfs mount STORE DIR --background ARGS...`; resolves once DIR is mounted, with the daemon's pid and log.
 * `env` adds to the environment (KVFS_DATA_DIR decides where the log goes). Its figures: `daemonStats` (bin/diag.ts).
 */
export async function kvfsMount(store: string, dir: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<KvfsMount> {
  if (!existsSync(kvfsBin)) throw new Error(`${kvfsBin} does not exist`);
  const argv = [kvfsBin, 'mount', store, dir, '--background', ...args];
  const r = await run(process.execPath, argv, { timeoutMs: 120_000, echo: true, env: { ...process.env, ...env } });
  const m = /daemon pid (\d+), log (.*)\)\s*$/m.exec(r.stdout);
  if (r.code !== 0 || !m) {
    forceUnmount(dir);
    const said = (r.stderr.trim() || r.stdout.trim()).split('\n').pop();
    throw new Error(`kvfs ${argv.slice(1).join(' ')}: ${howEnded(r)}${said ? `: ${said}` : ''}`);
  }
  const mount = { dir, pid: Number(m[1]), log: m[2]! };
  if (!(await waitMounted(dir, 10_000, () => isAlive(mount.pid)))) {
    stopDaemon(mount.pid);
    throw new Error(`kvfs mount exited 0 but ${dir} is not mounted (log: ${mount.log})`);
  }
  return mount;
}

/**
 * Unmounts a kvfs mount and makes sure its daemon is gone: `kvfs umount`, a forced detach if that fails,
 * then the daemon gets 15 s to exit on its own before SIGTERM and SIGKILL. Returns what went wrong, if anything.
 */
export async function kvfsUnmount(m: KvfsMount): Promise<string[]> {
  const problems: string[] = [];
  if (isMounted(m.dir)) {
    const r = await run(process.execPath, [kvfsBin, 'umount', m.dir], { timeoutMs: 60_000, echo: true });
    if (r.code !== 0 || isMounted(m.dir)) {
      problems.push(`kvfs umount ${m.dir}: ${howEnded(r)}; detached it with a lazy unmount`);
      forceUnmount(m.dir);
    }
  }
  if (!(await waitGone(m.pid, 15_000))) {
    problems.push(`the daemon (pid ${m.pid}) was still running 15 s after the unmount; killed it`);
    stopDaemon(m.pid);
  }
  return problems;
}

/** SIGTERM, then SIGKILL after 3 s (synchronous wait: usable from an 'exit' handler) */
export function stopDaemon(pid: number): void {
  if (!isAlive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  for (const end = Date.now() + 3000; Date.now() < end && isAlive(pid);) spawnSync('sleep', ['0.05']);
  if (isAlive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

/** the log lines of a kvfs daemon that are not the ordinary ones (mounted, unmounting, formatted, notes) */
export function unexpectedLogLines(log: string): string[] {
  let text = '';
  try {
    text = readFileSync(log, 'utf8');
  } catch {
    return [`(cannot read ${log})`];
  }
  const ordinary = [
    /^kvfs: mounted /, /^kvfs: (SIGTERM|SIGINT|SIGHUP): committing and unmounting /, /^kvfs: \S+ was unmounted$/,
    /^kvfs: unmounted \S+: everything committed; stopped$/, /^kvfs: formatted a new volume/,
    /^kvfs: fs\.pipe-max-size is /,
  ];
  return text.split('\n').map(logText).filter((l) => l.trim() && !ordinary.some((re) => re.test(l)));
}

/** a line of a daemon's log as text: a JSON line (the background log, src/log.ts) as `kvfs: <msg>` */
export function logText(line: string): string {
  if (!line.startsWith('{')) return line;
  try {
    const j = JSON.parse(line) as { msg?: unknown };
    return typeof j.msg === 'string' ? `kvfs: ${j.msg}` : line;
  } catch {
    return line;
  }
}

// ---------------------------------------------------------------------------------------------------------
// memory of a process

export interface ProcMemory {
  /** bytes resident now (VmRSS) */
  rss: number;
  /** the peak of VmRSS since the process started or since the last `resetPeak` (VmHWM) */
  hwm: number;
  rssAnon: number;
  rssFile: number;
  /** shared memory pages resident (RssShmem) */
  rssShmem: number;
}

/** the process's memory from /proc/PID/status, or undefined when it is gone */
export function procMemory(pid: number): ProcMemory | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const kb = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM'), rssAnon: kb('RssAnon'), rssFile: kb('RssFile'), rssShmem: kb('RssShmem') };
}

/** CPU time the process has used (user + system), in ms, or undefined when it is gone */
export function cpuMs(pid: number): number | undefined {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLOCK_TICKS; // utime, stime (fields 14, 15)
  } catch {
    return undefined;
  }
}
const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/**
 * Waits until the process has used less than `pct`% of one CPU over a whole `windowMs` (its background work,
 * such as a store purging a deleted file, is done), for at most `timeoutMs`. Returns the ms waited, or
 * undefined on timeout, when the process is gone or when `signal` aborts.
 */
export async function waitIdle(
  pid: number, pct: number, windowMs: number, timeoutMs: number, signal?: AbortSignal,
): Promise<number | undefined> {
  const t0 = Date.now();
  for (let before = cpuMs(pid); Date.now() - t0 < timeoutMs && !signal?.aborted;) {
    await sleep(windowMs);
    const after = cpuMs(pid);
    if (before === undefined || after === undefined) return undefined;
    if (after - before < (windowMs * pct) / 100) return Date.now() - t0;
    before = after;
  }
  return undefined;
}

/** resets VmHWM to the current VmRSS (Linux >= 4.0, `5` to /proc/PID/clear_refs); false when not allowed */
export function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}
