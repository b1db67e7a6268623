/**
 * The real-mount harness: a kvfs daemon in a child process, a temp mountpoint, and cleanup in every outcome.
 *
 * Contract:
 *  - `mountKvfs(t, opts)` makes a fresh mountpoint /tmp/kvfs-test-XXXX, spawns `node bin/kvfs.js mount STORE MNT`
 *    in the foreground as a child process (never in the test process), and resolves once MNT shows in
 *    /proc/self/mountinfo. It rejects (with the daemon's stdout/stderr in the message) if the daemon exits first
 *    or the mount does not appear within 20 s.
 *  - KVFS_DATA_DIR is always set for the daemon: a fresh temp dir unless `dataDir` is given.
 *  - Cleanup in every outcome: t.teardown stops the daemon (SIGTERM, then SIGKILL) and lazily unmounts what is
 *    left; a process 'exit' / SIGINT / SIGTERM / SIGHUP / SIGALRM (tap's timeout) hook lazily unmounts and kills
 *    synchronously; and a detached watchdog per daemon does the same if the test process dies by SIGKILL.
 *  - The driver comes from `opts.driver`, else env KVFS_TEST_DRIVER ("default" or unset: no --driver flag).
 *    `testDrivers()` lists the drivers a suite should loop over (env KVFS_TEST_DRIVERS=default,libfuse).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { atProcessEnd, baseEnv, killAllTools, run, startWatchdog, type RunOptions, type RunResult } from './run.js';

export { bash, describe, ensureUser, isInstalled, PYTHON, run, runAs, start, TEST_USER, waitFor } from './run.js';
export type { RunOptions, RunResult, Started } from './run.js';

/** the repository root (test/helpers/../..) */
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The CLI entry point: env KVFS_BIN, else bin/kvfs.js, else dist/bin/kvfs.js (tsc output). */
export function kvfsBin(): string {
  const candidates = [process.env.KVFS_BIN, join(REPO, 'bin', 'kvfs.js'), join(REPO, 'dist', 'bin', 'kvfs.js')];
  for (const c of candidates) if (c && existsSync(c)) return c;
  throw new Error(
    `kvfs CLI not found: no bin/kvfs.js or dist/bin/kvfs.js under ${REPO} (build it with: npx tsc -p tsconfig.json)`,
  );
}

/** Runs the CLI (`node bin/kvfs.js ARGS`) from the repo root. KVFS_DATA_DIR is mandatory: tests never touch the real one. */
export function kvfs(args: readonly string[], opts: RunOptions & { dataDir: string }): Promise<RunResult> {
  let bin: string;
  try {
    bin = kvfsBin();
  } catch (e) {
    return Promise.resolve({
      cmd: `kvfs ${args.join(' ')}`,
      code: 127,
      signal: null,
      stdout: '',
      stderr: (e as Error).message,
      stdoutBuf: Buffer.alloc(0),
      timedOut: false,
    });
  }
  return run(process.execPath, [bin, ...args], {
    cwd: REPO,
    timeout: 30_000,
    ...opts,
    env: { ...opts.env, KVFS_DATA_DIR: opts.dataDir },
  });
}

// ---------------------------------------------------------------------------------------------------------------
// /proc/self/mountinfo

export interface MountEntry {
  mountPoint: string;
  fstype: string;
  source: string;
  options: string;
  superOptions: string;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function mountEntries(): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const dash = f.indexOf('-', 6);
    if (dash < 0) continue;
    out.push({
      mountPoint: unescapeMount(f[4]!),
      options: f[5]!,
      fstype: f[dash + 1]!,
      source: unescapeMount(f[dash + 2] ?? ''),
      superOptions: f[dash + 3] ?? '',
    });
  }
  return out;
}

/** mounts stacked on exactly this path (last = topmost) */
export function mountsAt(path: string): MountEntry[] {
  return mountEntries().filter((e) => e.mountPoint === path);
}

export function isMounted(path: string): boolean {
  return mountsAt(path).length > 0;
}

/** true for the contract's kvfs mount: type fuse.kvfs, or type fuse with source kvfs */
export function isKvfsEntry(e: MountEntry): boolean {
  return e.fstype === 'fuse.kvfs' || (e.fstype.startsWith('fuse') && /kvfs/.test(e.source));
}

/** Synchronously detaches every mount on path (umount -l, else fusermount3/fusermount -uz). */
export function lazyUnmount(path: string): void {
  for (let i = 0; i < 8 && isMounted(path); i++) {
    for (const [cmd, args] of [
      ['umount', ['-l', path]],
      ['fusermount3', ['-uz', path]],
      ['fusermount', ['-uz', path]],
    ] as const) {
      const r = spawnSync(cmd, args, { stdio: 'ignore', timeout: 10_000 });
      if (r.status === 0) break;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// drivers

/** the driver for this run: env KVFS_TEST_DRIVER, "default" when unset */
export function testDriver(): string {
  return process.env.KVFS_TEST_DRIVER || 'default';
}

/**
 * drivers a suite loops over: env KVFS_TEST_DRIVERS (comma list); else the one KVFS_TEST_DRIVER names; else
 * both drivers, the default (native) and libfuse, so the POSIX suite holds each of them to the same claims
 */
export function testDrivers(): string[] {
  const list = (process.env.KVFS_TEST_DRIVERS ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (list.length) return list;
  return process.env.KVFS_TEST_DRIVER ? [testDriver()] : ['default', 'libfuse'];
}

/** the `kvfs mount` arguments that select a test driver (none for the default) */
export function driverArgs(driver: string): string[] {
  return driver === 'default' ? [] : ['--driver', driver];
}

// ---------------------------------------------------------------------------------------------------------------
// the harness

/** the subset of tap's Test the harness uses */
export interface TestLike {
  teardown(fn: () => unknown): void;
}

export interface MountOptions {
  /** store URL; default "memory:". null: a bare `kvfs mount MNT` (local:$KVFS_DATA_DIR/default) */
  store?: string | null;
  /** extra arguments after MOUNTPOINT */
  args?: string[];
  /** KVFS_DATA_DIR for the daemon; default a fresh temp dir, removed at teardown */
  dataDir?: string;
  /** driver name, "default" for none; default testDriver() */
  driver?: string;
  /** an existing directory to mount on (kept at teardown); default a fresh /tmp/kvfs-test-XXXX */
  mnt?: string;
  /** milliseconds to wait for the mount to appear (default 20 s) */
  readyTimeout?: number;
  /** extra environment for the daemon */
  env?: Record<string, string | undefined>;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Mounted {
  readonly mnt: string;
  /** the current daemon's pid (changes on remount) */
  readonly pid: number;
  readonly store: string | null;
  readonly dataDir: string;
  readonly driver: string;
  /** the full daemon command line */
  readonly cmd: string;
  /** the current daemon's stdout and stderr so far */
  output(): { stdout: string; stderr: string };
  /** whether the current daemon process is still running */
  alive(): boolean;
  /**
   * Stops the daemon cleanly and waits until it exited and the mount is gone (throws otherwise, with output).
   * via "signal" (default): SIGTERM (or `signal`) to the foreground daemon. via "cli": `kvfs umount MNT`.
   */
  unmount(opts?: { via?: 'signal' | 'cli'; signal?: NodeJS.Signals; timeout?: number }): Promise<Exit>;
  /** SIGKILLs the daemon and waits for it to die; the (dead) mount stays. */
  kill9(): Promise<Exit>;
  /** stops the daemon if alive, detaches a leftover dead mount, and mounts the same store on the same mountpoint */
  remount(): Promise<Mounted>;
}

interface Live {
  child: ChildProcess;
  watchdog?: ChildProcess;
  exited: Promise<Exit>;
  exit?: Exit;
  stdout: Buffer[];
  stderr: Buffer[];
}

/** every mount the harness owns, for the synchronous exit hook */
const registry = new Set<{ mnt: string; live?: Live; dataDirToRemove?: string; mntToRemove?: string }>();

function emergencyCleanup(): void {
  killAllTools();
  for (const r of registry) {
    try {
      lazyUnmount(r.mnt);
    } catch {
      /* best effort */
    }
    if (r.live && !r.live.exit && r.live.child.pid !== undefined) {
      try {
        process.kill(r.live.child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    if (r.live?.watchdog?.pid !== undefined) {
      try {
        process.kill(-r.live.watchdog.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    try {
      if (r.mntToRemove && !isMounted(r.mntToRemove)) rmdirSync(r.mntToRemove);
      if (r.dataDirToRemove) rmSync(r.dataDirToRemove, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  }
  registry.clear();
}

/** a watchdog (run.ts) that unmounts, stops the daemon and removes the data dir if the test process is SIGKILLed */
function mountWatchdog(daemonPid: number, mnt: string, dataDir: string): ChildProcess {
  return startWatchdog('kvfs-test-watchdog', `
    dp=$1; m=$2; dd=$3
    umount -l "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || fusermount -uz "$m" 2>/dev/null
    if tr '\\0' ' ' < /proc/"$dp"/cmdline 2>/dev/null | grep -q kvfs; then kill -9 "$dp"; fi
    rmdir "$m" 2>/dev/null
    case "$dd" in /tmp/kvfs-test-data-?*) grep -q " $dd" /proc/self/mountinfo || rm -rf "$dd" ;; esac`,
  [String(daemonPid), mnt, dataDir]);
}

function killWatchdog(l: Live | undefined): void {
  if (l?.watchdog?.pid === undefined) return;
  try {
    process.kill(-l.watchdog.pid, 'SIGKILL');
  } catch {
    /* gone */
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let tm: NodeJS.Timeout;
  return Promise.race([p, new Promise<undefined>((r) => (tm = setTimeout(() => r(undefined), ms)))]).finally(() =>
    clearTimeout(tm),
  );
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function tail(bufs: Buffer[], max = 8000): string {
  const s = Buffer.concat(bufs).toString('utf8');
  return s.length > max ? `...${s.slice(-max)}` : s;
}

export async function mountKvfs(t: TestLike, opts: MountOptions = {}): Promise<Mounted> {
  atProcessEnd(emergencyCleanup);
  const bin = kvfsBin();
  const store = opts.store === undefined ? 'memory:' : opts.store;
  const driver = opts.driver ?? testDriver();
  const ownDataDir = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? mkdtempSync('/tmp/kvfs-test-data-');
  const ownMnt = opts.mnt === undefined;
  const mnt = realpathSync(opts.mnt ?? mkdtempSync('/tmp/kvfs-test-'));
  const argv = [bin, 'mount', ...(store === null ? [] : [store]), mnt, ...driverArgs(driver), ...(opts.args ?? [])];
  const cmd = ['node', ...argv].join(' ');
  const readyTimeout = opts.readyTimeout ?? 20_000;

  const entry: { mnt: string; live?: Live; dataDirToRemove?: string; mntToRemove?: string } = {
    mnt,
    ...(ownDataDir ? { dataDirToRemove: dataDir } : {}),
    ...(ownMnt ? { mntToRemove: mnt } : {}),
  };
  registry.add(entry);

  const spawnDaemon = async (): Promise<Live> => {
    const child = spawn(process.execPath, argv, {
      cwd: REPO,
      env: baseEnv({ ...opts.env, KVFS_DATA_DIR: dataDir }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const l: Live = {
      child,
      stdout: [],
      stderr: [],
      exited: undefined as unknown as Promise<Exit>,
    };
    l.exited = new Promise<Exit>((res) => {
      child.on('exit', (code, signal) => {
        l.exit = { code, signal };
        res(l.exit);
      });
      child.on('error', (e) => {
        l.stderr.push(Buffer.from(`spawn error: ${e.message}\n`));
        l.exit = { code: 127, signal: null };
        res(l.exit);
      });
    });
    // Always drain the pipes: a daemon blocked on a full pipe would look like a filesystem hang.
    const cap = (arr: Buffer[]) => (b: Buffer) => {
      arr.push(b);
      let n = arr.reduce((s, x) => s + x.length, 0);
      while (n > 1 << 20 && arr.length > 1) n -= arr.shift()!.length;
    };
    child.stdout!.on('data', cap(l.stdout));
    child.stderr!.on('data', cap(l.stderr));
    entry.live = l;
    if (child.pid !== undefined) l.watchdog = mountWatchdog(child.pid, mnt, ownDataDir ? dataDir : '');

    const deadline = Date.now() + readyTimeout;
    for (;;) {
      if (isMounted(mnt)) return l;
      if (l.exit) {
        killWatchdog(l);
        throw new Error(
          `kvfs daemon exited before mounting (exit ${l.exit.code ?? 'signal ' + l.exit.signal}): ${cmd}\n` +
            `--- stdout ---\n${tail(l.stdout)}\n--- stderr ---\n${tail(l.stderr)}`,
        );
      }
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        await withTimeout(l.exited, 5000);
        lazyUnmount(mnt);
        killWatchdog(l);
        throw new Error(
          `kvfs mount did not appear in /proc/self/mountinfo within ${readyTimeout} ms: ${cmd}\n` +
            `--- stdout ---\n${tail(l.stdout)}\n--- stderr ---\n${tail(l.stderr)}`,
        );
      }
      await sleep(50);
    }
  };

  const dispose = async () => {
    const l = entry.live;
    if (l && !l.exit) {
      l.child.kill('SIGTERM');
      if (!(await withTimeout(l.exited, 10_000))) {
        console.error(`kvfs-test: daemon ${l.child.pid} ignored SIGTERM for 10 s; killing it (${mnt})`);
        l.child.kill('SIGKILL');
        await withTimeout(l.exited, 5000);
      }
    }
    if (isMounted(mnt)) lazyUnmount(mnt);
    killWatchdog(l);
    registry.delete(entry);
    if (ownMnt) {
      try {
        if (!isMounted(mnt)) rmdirSync(mnt);
      } catch (e) {
        console.error(`kvfs-test: cannot remove mountpoint ${mnt}: ${(e as Error).message}`);
      }
    }
    if (ownDataDir) rmSync(dataDir, { recursive: true, force: true });
  };
  t.teardown(dispose);

  let live: Live;
  try {
    live = await spawnDaemon();
  } catch (e) {
    await dispose();
    throw e;
  }

  const waitGone = async (l: Live, timeout: number, what: string): Promise<Exit> => {
    const ex = await withTimeout(l.exited, timeout);
    if (!ex) {
      throw new Error(
        `kvfs daemon ${l.child.pid} did not exit within ${timeout} ms after ${what}: ${cmd}\n` +
          `--- stdout ---\n${tail(l.stdout)}\n--- stderr ---\n${tail(l.stderr)}`,
      );
    }
    for (let i = 0; i < 20 && isMounted(mnt); i++) await sleep(50);
    if (isMounted(mnt)) {
      throw new Error(
        `kvfs daemon exited (${ex.code ?? ex.signal}) after ${what} but ${mnt} is still mounted: ${cmd}\n` +
          `--- stderr ---\n${tail(l.stderr)}`,
      );
    }
    killWatchdog(l);
    return ex;
  };

  const m: Mounted = {
    mnt,
    get pid() {
      return live.child.pid!;
    },
    store,
    dataDir,
    driver,
    cmd,
    output: () => ({ stdout: tail(live.stdout, 1 << 20), stderr: tail(live.stderr, 1 << 20) }),
    alive: () => !live.exit,
    async unmount({ via = 'signal', signal = 'SIGTERM', timeout = 20_000 } = {}) {
      const l = live;
      if (l.exit) throw new Error(`kvfs daemon already exited (${l.exit.code ?? l.exit.signal}); nothing to unmount`);
      if (via === 'cli') {
        const r = await kvfs(['umount', mnt], { dataDir, timeout });
        if (r.code !== 0) {
          throw new Error(`kvfs umount failed:\n$ ${r.cmd}\nexit ${r.code}\n${r.stdout}${r.stderr}`);
        }
        return waitGone(l, timeout, 'kvfs umount');
      }
      l.child.kill(signal);
      return waitGone(l, timeout, signal);
    },
    async kill9() {
      const l = live;
      if (l.exit) throw new Error(`kvfs daemon already exited (${l.exit.code ?? l.exit.signal})`);
      l.child.kill('SIGKILL');
      const ex = await withTimeout(l.exited, 10_000);
      if (!ex) throw new Error(`kvfs daemon ${l.child.pid} survived SIGKILL for 10 s`);
      return ex;
    },
    async remount() {
      if (!live.exit) await m.unmount();
      if (isMounted(mnt)) lazyUnmount(mnt);
      killWatchdog(live);
      live = await spawnDaemon();
      return m;
    },
  };
  return m;
}

/**
 * Guards a mount the harness did not start (e.g. `kvfs mount --background`): on teardown and on abnormal exit,
 * kill pid (if given and still a kvfs process) and lazily unmount mnt.
 */
/** a fresh KVFS_DATA_DIR, a scratch dir and an empty mountpoint (guarded: a mount that should not happen is cleaned) */
export function cliScene(t: TestLike): { dataDir: string; base: string; mnt: string } {
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const base = tempDir(t, 'kvfs-test-base-');
  const mnt = join(base, 'mnt');
  mkdirSync(mnt);
  guardMount(t, mnt);
  return { dataDir, base, mnt };
}

export function guardMount(t: TestLike, mnt: string, pid?: () => number | undefined): void {
  atProcessEnd(emergencyCleanup);
  const entry = { mnt };
  registry.add(entry);
  const killPid = () => {
    const p = pid?.();
    if (p === undefined) return;
    try {
      if (readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('kvfs')) process.kill(p, 'SIGKILL');
    } catch {
      /* gone */
    }
  };
  process.on('exit', killPid);
  t.teardown(async () => {
    const p = pid?.();
    if (p !== undefined) {
      try {
        process.kill(p, 'SIGTERM');
      } catch {
        /* gone */
      }
      for (let i = 0; i < 100 && existsSync(`/proc/${p}`); i++) await sleep(50);
    }
    killPid();
    if (isMounted(mnt)) lazyUnmount(mnt);
    registry.delete(entry);
    process.removeListener('exit', killPid);
  });
}

/** a fresh temp directory removed at teardown (never while something is mounted on it) */
export function tempDir(t: TestLike, prefix = 'kvfs-test-tmp-'): string {
  const d = realpathSync(mkdtempSync(join('/tmp', prefix)));
  t.teardown(() => {
    const below = mountEntries().filter((e) => e.mountPoint === d || e.mountPoint.startsWith(d + '/'));
    for (const e of below.reverse()) lazyUnmount(e.mountPoint);
    if (!mountEntries().some((e) => e.mountPoint === d || e.mountPoint.startsWith(d + '/'))) {
      rmSync(d, { recursive: true, force: true });
    }
  });
  return d;
}

/** pids of live processes (other than this one) whose command line contains s, e.g. a leftover daemon for a mountpoint */
export function processesMentioning(s: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${name}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmd.includes(s) && !cmd.includes('kvfs-test-watchdog')) out.push(Number(name));
    } catch {
      /* gone */
    }
  }
  return out;
}
