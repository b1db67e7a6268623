/**
 * The filesystems `npm run bench` (run.ts) measures, each a Target: set up, measured, torn down, one at a time.
 *
 * Contract of a Target: `setup` makes `dir` an empty, writable directory on the filesystem under test and fills
 * in `what` (exactly what the target is, for the report's legend); `teardown` undoes everything `setup` did,
 * also after a failed or partial setup, is safe to call twice, and returns what went wrong. While a mount or a
 * process of a target exists it is registered with common.ts's `atExit`, so an exception or a signal still
 * detaches and stops it. `notes` are facts for the report (a daemon's peak memory, the churn's figures).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { askDaemon, daemonStats } from '../bin/diag.js';
import { mountAt as mountEntryAt } from '../src/fs/fuse/mount-table.js';
import {
  atExit, diskUsage, fioWrites, logText, fmt, forceUnmount, isAlive, isMounted, killGroup, kvfsBin, kvfsMount, kvfsUnmount, mib,
  mountAt, procMemory, removeDir, run, say, sharedBench, stopDaemon, unexpectedLogLines, waitGone, waitIdle,
  waitMounted, type KvfsMount,
} from './common.js';

export interface Target {
  /** the name in --targets and in the tables */
  readonly name: string;
  /** the name in ratio columns */
  readonly short: string;
  readonly dir: string;
  /** what exactly is measured: the command, the store, the device; complete once setup has run */
  what: string;
  readonly notes: string[];
  setup(): Promise<void>;
  teardown(): Promise<string[]>;
  /** kvfs targets: the daemon's byte counters now (its stats file), for the bytes-moved table */
  io?(): Promise<IoCounters | undefined>;
  /** cuts a setup in progress short (an interrupt): it then fails soon, and teardown follows as usual */
  abort?(): void;
}

/** bytes callers wrote and read, and what kvfs sent to its store and fetched from it for them (FsStats) */
export interface IoCounters { bytesWritten: number; bytesSent: number; bytesReturned: number; bytesFetched: number }

/** a disk filesystem as findmnt names it */
export interface Disk {
  source: string;
  fstype: string;
  target: string;
}
export const describeDisk = (d: Disk): string => `${d.source} (${d.fstype}, mounted at ${d.target})`;

/** tmpfs mounted at a fresh directory (as root); otherwise a directory in /dev/shm, which is tmpfs. */
export function tmpfsTarget(work: string): Target {
  let dir = path.join(work, 'tmpfs');
  let mounted = false;
  let unregister = (): void => {};
  return {
    name: 'tmpfs',
    short: 'tmpfs',
    what: 'tmpfs',
    notes: [],
    get dir() {
      return dir;
    },
    async setup() {
      if (process.getuid?.() === 0) {
        mkdirSync(dir, { recursive: true });
        const r = await run('mount', ['-t', 'tmpfs', '-o', 'size=6g,mode=0755', 'kvfs-bench', dir]);
        if (r.code !== 0) throw new Error(`mount -t tmpfs failed: ${r.stderr.trim()}`);
        mounted = true;
        unregister = atExit(() => forceUnmount(dir));
        this.what = 'a tmpfs mounted for the run (`mount -t tmpfs -o size=6g`), no FUSE';
      } else {
        dir = mkdtempIn('/dev/shm/kvfs-bench-');
        this.what = `a directory in /dev/shm (tmpfs), no FUSE`;
      }
    },
    async teardown() {
      const problems: string[] = [];
      if (mounted && isMounted(dir)) {
        const r = await run('umount', [dir], { timeoutMs: 60_000 });
        if (r.code !== 0) {
          problems.push(`umount ${dir}: ${r.stderr.trim()}; detached it lazily`);
          forceUnmount(dir);
        }
      }
      mounted = false;
      unregister();
      removeDir(dir);
      return problems;
    },
  };
}

function mkdtempIn(prefix: string): string {
  const r = spawnSync('mktemp', ['-d', `${prefix}XXXXXX`], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`mktemp -d ${prefix}XXXXXX failed: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

/** A plain directory on a disk (the one that holds the store): the same jobs without FUSE or a store.
 * `relation` says how that disk relates to the store, for the legend. */
export function diskTarget(work: string, disk: Disk, relation: string): Target {
  const dir = path.join(work, 'disk');
  return {
    name: 'disk',
    short: 'disk',
    dir,
    what: `a plain directory on ${describeDisk(disk)}, no FUSE: ${relation}`,
    notes: [],
    async setup() {
      mkdirSync(dir, { recursive: true });
    },
    async teardown() {
      removeDir(dir);
      return [];
    },
  };
}

export interface KvfsTargetSpec {
  name: string;
  short: string;
  driver: 'native' | 'libfuse';
  store: string;
  /** setup formats the store (`kvfs format`) before it mounts */
  format?: boolean;
  /** a local: store's directory: its size on disk goes in the notes */
  localDir?: string;
  /** a description of the store for the legend (its engine, where it lives, how it was made) */
  storeText: string;
  /** churn the store through the mount before the jobs (see churn()) */
  churnBytes?: number;
  mountArgs: string[];
  logDir: string;
  work: string;
  /** start the daemon's heap sampling (kvfs profile heap start, this interval in bytes) once it is mounted */
  heapSampling?: number;
}

/** kvfs mounted in the background by its CLI, with --driver `driver`; a `memory:` store lives in the daemon. */
export function kvfsTarget(spec: KvfsTargetSpec): Target {
  const dir = path.join(spec.work, spec.name);
  const storeDir = spec.localDir;
  let m: KvfsMount | undefined;
  let unregister = (): void => {};
  const notes: string[] = [];
  const size = (): string => {
    const bytes = storeDir ? diskUsage(storeDir) : undefined;
    return bytes === undefined ? '?' : mib(bytes);
  };
  const sizes: string[] = [];
  const argv = ['--driver', spec.driver, ...spec.mountArgs];
  const aborter = new AbortController();
  return {
    async io() {
      try {
        return (await daemonStats(dir)).fs as IoCounters; // through the daemon's control socket
      } catch {
        return undefined; // not mounted (yet)
      }
    },
    name: spec.name,
    short: spec.short,
    dir,
    what: `\`kvfs mount ${spec.store} MNT --background ${argv.join(' ')}\`: ${spec.storeText}`,
    notes,
    async setup() {
      if (spec.format) {
        const r = await run(process.execPath, [kvfsBin, 'format', spec.store], { timeoutMs: 120_000, echo: true });
        if (r.code !== 0) throw new Error(`kvfs format ${spec.store} exited with ${r.code}`);
      }
      if (storeDir) sizes.push(`${size()} ${spec.format ? 'formatted' : 'at the start'}`);
      mkdirSync(dir, { recursive: true });
      m = await kvfsMount(spec.store, dir, argv, { KVFS_DATA_DIR: spec.logDir });
      const mount = m;
      unregister = atExit(() => {
        forceUnmount(mount.dir);
        stopDaemon(mount.pid);
      });
      notes.push(`daemon pid ${m.pid}, log ${path.relative(process.cwd(), m.log)}`);
      if (spec.heapSampling) {
        await askDaemon(mountEntryAt(dir)!, 'heap-start', { interval: spec.heapSampling });
        notes.push(`heap sampling on (a sample every ${spec.heapSampling} bytes allocated), through the control socket`);
      }
      if (spec.churnBytes) {
        notes.push(await churn(dir, spec.churnBytes, m.pid, spec.work, aborter.signal));
        if (storeDir) sizes.push(`${size()} after the churn`);
      }
    },
    abort() {
      aborter.abort();
    },
    async teardown() {
      if (!m) {
        forceUnmount(dir);
        removeDir(dir);
        return [];
      }
      const mount = m;
      m = undefined;
      const mem = procMemory(mount.pid);
      if (mem) notes.push(`daemon peak RSS ${mib(mem.hwm)}, RSS at the end ${mib(mem.rss)}`);
      const problems = await kvfsUnmount(mount);
      unregister();
      if (storeDir) {
        sizes.push(`${size()} after the jobs (run-fio.sh deletes its files at the end) and the unmount`);
        notes.push(`store on disk (du -sk ${storeDir}): ${sizes.join(', ')}`);
      }
      const pipeNote = existsSync(mount.log) ? /^kvfs: (fs\.pipe-max-size is .*)$/m.exec(readFileSync(mount.log, 'utf8').split('\n').map(logText).join('\n'))?.[1] : undefined;
      if (pipeNote) notes.push(pipeNote);
      const odd = unexpectedLogLines(mount.log);
      if (odd.length) {
        problems.push(`daemon log ${mount.log}: ${odd.length} unexpected line(s), first: ${odd.slice(0, 3).join(' | ')}`);
      }
      removeDir(dir);
      return problems;
    },
  };
}

/**
 * Ages a store through its mount so that it is measured as it is used, not fresh: a file of `bytes` written
 * in 1 MiB writes with an fsync at the end (fio), then rewritten in place the same way, then deleted; then
 * waits until the daemon's CPU is idle (the deleted data purged). Returns the note for the report.
 */
async function churn(dir: string, bytes: number, pid: number, work: string, signal: AbortSignal): Promise<string> {
  const file = path.join(dir, 'kvfs-bench-churn');
  const jobFile = path.join(work, 'churn.fio');
  writeFileSync(jobFile, [
    '[churn]', `filename=${file}`, 'ioengine=psync', 'rw=write', 'bs=1M', `size=${bytes}`, 'end_fsync=1', '',
  ].join('\n'));
  const rates: number[] = [];
  for (const pass of ['write', 'rewrite']) {
    say(`churn: ${pass} of ${mib(bytes, 0)} on ${dir}`);
    const r = await run('fio', ['--output-format=json', jobFile], { timeoutMs: 1_800_000, signal });
    if (signal.aborted) throw new Error('churn: interrupted');
    const mbs = r.code === 0 ? fioWrites(r.stdout)?.mbs : undefined;
    if (mbs === undefined) throw new Error(`churn: fio ${pass} failed (exit ${r.code}): ${r.stderr.trim().split('\n').pop() ?? ''}`);
    rates.push(mbs);
  }
  const rm = await run('rm', ['-f', file], { timeoutMs: 600_000, signal });
  if (rm.code !== 0) throw new Error(`churn: rm ${file} failed: ${rm.stderr.trim()}`);
  const settled = await waitIdle(pid, 5, 1000, 300_000, signal);
  if (signal.aborted) throw new Error('churn: interrupted');
  return `churned before its jobs: a ${mib(bytes, 0)} file written at ${fmt(rates[0]!, 1)} MB/s, rewritten in place ` +
    `at ${fmt(rates[1]!, 1)} MB/s (fio, 1 MiB writes, fsync at the end of each pass), then deleted; ` +
    (settled === undefined
      ? 'the daemon was still busy 300 s later (its CPU above 5%); the jobs started anyway'
      : `the daemon was idle (CPU under 5% for 1 s) ${fmt(settled / 1000, 1)} s after the delete`);
}

/** Builds ../shared/bench/ceiling/fuse-ceiling.c into the work dir (once); returns the binary's path. */
export function buildCeiling(work: string): string {
  const bin = path.join(work, 'fuse-ceiling');
  if (existsSync(bin)) return bin;
  const pc = spawnSync('pkg-config', ['fuse3', '--cflags', '--libs'], { encoding: 'utf8' });
  if (pc.status !== 0) throw new Error(`pkg-config fuse3 failed (libfuse3-dev installed?): ${pc.stderr.trim()}`);
  const args = ['-O2', '-Wall', path.join(sharedBench, 'ceiling/fuse-ceiling.c'), ...pc.stdout.trim().split(/\s+/), '-lpthread', '-o', bin];
  const r = spawnSync('cc', args, { stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) throw new Error(`building fuse-ceiling failed: cc ${args.join(' ')}`);
  return bin;
}

/** A FUSE server run in the foreground as a child in its own process group, stopped with `fusermount3 -u`. */
interface ForegroundFuse {
  name: string;
  dir: string;
  log: string;
  /** the mount's type in /proc/self/mounts once it is up */
  fstype: string;
  /** how long it may take to mount */
  mountMs: number;
  /** how long it may take to exit after the unmount */
  exitMs: number;
  /** prepares and returns the command line */
  command(): [string, string[]];
}

/** A Target around a ForegroundFuse; `describe` gives `what` from the command line. */
function foregroundFuseTarget(name: string, short: string, f: ForegroundFuse, describe: (cmd: string) => string): Target {
  let child: ChildProcess | undefined;
  let unregister = (): void => {};
  const notes: string[] = [];
  return {
    name,
    short,
    dir: f.dir,
    what: name,
    notes,
    async setup() {
      const [bin, args] = f.command();
      mkdirSync(f.dir, { recursive: true });
      const fd = openSync(f.log, 'a');
      child = spawn(bin, args, { stdio: ['ignore', fd, fd], detached: true });
      closeSync(fd);
      const c = child;
      unregister = atExit(() => {
        forceUnmount(f.dir);
        killGroup(c.pid, 'SIGKILL');
      });
      child.on('error', () => undefined);
      this.what = describe(`${path.basename(bin)} ${args.join(' ')}`);
      notes.push(`pid ${child.pid}, log ${path.relative(process.cwd(), f.log)}`);
      if (!(await waitMounted(f.dir, f.mountMs, () => isAlive(c.pid)))) {
        const tail = existsSync(f.log) ? readFileSync(f.log, 'utf8').trim().split('\n').slice(-3).join(' | ') : '';
        throw new Error(`${f.name} did not mount ${f.dir}${isAlive(c.pid) ? ` within ${f.mountMs / 1000} s` : ' (it exited)'}: ${tail}`);
      }
      const m = mountAt(f.dir);
      if (m?.fstype !== f.fstype) throw new Error(`${f.dir} is mounted as ${m?.fstype ?? 'nothing'}, not ${f.fstype}`);
    },
    async teardown() {
      const problems: string[] = [];
      const c = child;
      child = undefined;
      if (isMounted(f.dir)) {
        const r = await run('fusermount3', ['-u', f.dir], { timeoutMs: 60_000 });
        if (r.code !== 0 || isMounted(f.dir)) {
          problems.push(`fusermount3 -u ${f.dir}: ${r.stderr.trim() || r.code}; detached it lazily`);
          forceUnmount(f.dir);
        }
      }
      if (c && !(await waitGone(c.pid, f.exitMs))) {
        problems.push(`${f.name} (pid ${c.pid}) was still running ${f.exitMs / 1000} s after the unmount; killed it`);
        killGroup(c.pid, 'SIGTERM');
        if (!(await waitGone(c.pid, 3000))) killGroup(c.pid, 'SIGKILL');
      }
      unregister();
      removeDir(f.dir);
      return problems;
    },
  };
}

/** The C ceiling (../shared/bench/ceiling/fuse-ceiling.c, run as its header says). */
export function ceilingTarget(work: string, logDir: string, arenaMb: number): Target {
  const dir = path.join(work, 'ceiling');
  return foregroundFuseTarget('ceiling', 'ceiling', {
    name: 'fuse-ceiling',
    dir,
    log: path.join(logDir, 'fuse-ceiling.log'),
    fstype: 'fuse.fuse-ceiling',
    mountMs: 180_000, // it mounts once its arena is faulted in: seconds per GiB on a cold machine
    exitMs: 10_000,
    command: () => [buildCeiling(work), [dir, '-f', '-o', `arena=${arenaMb}`]],
  }, (cmd) => `\`${cmd}\`: ../shared/bench/ceiling/fuse-ceiling.c, C on libfuse3's low-level API, ` +
    'data in a pre-faulted memory arena (no store)');
}

/** rclone's version line and Debian's package version, for the legend */
function rcloneVersion(): string {
  const v = spawnSync('rclone', ['version'], { encoding: 'utf8' }).stdout?.split('\n')[0]?.trim() ?? '';
  const deb = spawnSync('dpkg-query', ['-W', '-f=${Version}', 'rclone'], { encoding: 'utf8' }).stdout?.trim();
  if (!v) throw new Error('rclone is not installed (node scripts/system-deps.mjs bench installs Debian\'s)');
  return `${v}${deb ? `, Debian package ${deb}` : ''}`;
}

/**
 * `rclone mount` of a local directory with the VFS cache in full mode, the tool users pick instead: a remote of
 * type local named on the command line (no config file), its cache dir beside it on the same disk.
 */
export function rcloneTarget(work: string, logDir: string, disk: Disk): Target {
  const dir = path.join(work, 'rclone');
  const remote = path.join(work, 'rclone-remote');
  const cache = path.join(work, 'rclone-cache');
  const log = path.join(logDir, 'rclone.log');
  let version = '';
  const t = foregroundFuseTarget('rclone', 'rclone', {
    name: 'rclone mount',
    dir,
    log,
    fstype: 'fuse.rclone',
    mountMs: 60_000,
    exitMs: 60_000, // it may still be copying written files from its cache to the remote
    command: () => {
      version = rcloneVersion();
      mkdirSync(remote, { recursive: true });
      mkdirSync(cache, { recursive: true });
      return ['rclone', [
        'mount', `:local:${remote}`, dir, '--vfs-cache-mode', 'full', '--cache-dir', cache, '--config', '/dev/null',
        '--log-file', log,
      ]];
    },
  }, (cmd) => `\`${cmd}\` (${version}); the remote and the cache dir are on ${describeDisk(disk)}. ` +
    'Its defaults: --attr-timeout 1s, --dir-cache-time 5m, no kernel writeback cache; fsync syncs the file in ' +
    'the cache dir, and the copy to the remote follows 5 s after the last close (--vfs-write-back), in the background');
  const teardown = t.teardown.bind(t);
  t.teardown = async () => {
    const problems = await teardown();
    const errors = existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter((l) => /\bERROR\b/.test(l)) : [];
    // an upload from the cache that found the file changed under it is retried by rclone: a fact, not a failure
    const retried = errors.filter((l) => /source file is being updated|will retry in/.test(l));
    const other = errors.filter((l) => !retried.includes(l));
    if (retried.length) {
      t.notes.push(`${retried.length} ERROR line(s) in its log for uploads it retried (a file changed while it copied it to the remote)`);
    }
    if (other.length) problems.push(`rclone log ${log}: ${other.length} ERROR line(s), first: ${other.slice(0, 3).join(' | ')}`);
    removeDir(remote);
    removeDir(cache);
    return problems;
  };
  return t;
}
