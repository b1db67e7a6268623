/**
 * The fio bench: the reference jobs of ../shared/bench (run-fio.sh) against each target, one target after the
 * other in one run, and one table of MB/s and IOPS per target with kvfs-native's ratio to each other target.
 * Saved to bench/out/RESULT-<date>.md, with fio's JSON (fio-<date>/) and the daemons' logs (logs-<date>/).
 *
 *   npm run bench -- [--targets a,b] [--jobs a,b] [--quick] [--store URL [--format] | --redis-cluster]
 *                    [--mount-args '...'] [--no-warm] [--warm-gib N] [--pipe-max-size BYTES]
 *
 * Stores: memory: by default (the channel, not the store, is measured); any store URL, such as a volume on a
 * Redis Cluster (`--store redis-cluster://HOST:PORT,.../VOLUME --format`); or `--redis-cluster`, which starts
 * a throw-away 3-master Redis Cluster from Debian's redis-server on loopback ports for the run (on this same
 * machine, so it shares the cores with fio and kvfs) and formats a fresh volume on it.
 *
 * Targets, in the default order:
 *   kvfs-native   kvfs mount STORE --driver native (our /dev/fuse channel; default pool and caches)
 *   kvfs-libfuse  kvfs mount STORE --driver libfuse (fuse-native, libfuse 2)
 *   ceiling       ../shared/bench/ceiling/fuse-ceiling.c (C, libfuse3 low-level, data in a pre-faulted arena),
 *                 built here with cc -O2 and run as its header says: `fuse-ceiling MNT -f`, `fusermount3 -u MNT`
 *   tmpfs         a tmpfs mount (as root; else a directory in /dev/shm)
 * Like with like: no target asks for the kernel's writeback cache (kvfs-native's --writeback-cache is off by
 * default, libfuse 2 through fuse-native never asks, the ceiling runs without -o writeback). What still
 * differs is written in the report: the kernel's attribute cache (kvfs-native and the ceiling 1 s, kvfs-libfuse
 * 0 s by default; --mount-args '--attr-timeout 1' evens it), and the largest WRITE (kvfs-native splits writes
 * at 512 KiB when fs.pipe-max-size < 2 MiB and it lacks CAP_SYS_RESOURCE; --pipe-max-size 2097152 raises the
 * sysctl for the run and puts the old value back after).
 *
 * Rules from ../shared/bench/README.md: warm-memory runs right before each target; every write job runs twice
 * per target and the second run is kept. Every mount is unmounted and every daemon stopped in every outcome
 * (errors, a hung job, SIGINT, SIGTERM, an exception): see common.ts's atExit.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { RedisCluster } from '../test/helpers/redis-cluster.js';
import {
  atExit, fmt, forceUnmount, gitVersion, isAlive, isMounted, killGroup, kvfsBin, kvfsMount, kvfsUnmount, mib,
  procMemory, quietness, removeDir, removeWork, repoRoot, run, say, sharedBench, sleep, stamp, stopDaemon,
  unexpectedLogLines, waitGone, waitMounted, type KvfsMount,
} from './common.js';

/** A filesystem under test. `setup` makes `dir` an empty, writable directory on it; `teardown` undoes
 * everything `setup` did, also after a failed or partial setup, is safe to call twice, and returns what went
 * wrong (for the report). `notes` are facts for the report (a daemon's peak memory, a log line). */
interface Target {
  readonly name: string;
  /** the name in ratio columns */
  readonly short: string;
  readonly dir: string;
  readonly notes: string[];
  setup(): Promise<void>;
  teardown(): Promise<string[]>;
}

interface Options {
  store: string;
  /** more `kvfs mount` arguments for both kvfs targets */
  mountArgs: string[];
  format: boolean;
  quick: boolean;
  work: string;
  logDir: string;
  ceilingArenaMb: number;
}

/** Target factories by name, in the order a run uses them by default. */
const TARGETS: Record<string, (o: Options) => Target> = {
  'kvfs-native': (o) => kvfsTarget('kvfs-native', 'native', 'native', o),
  'kvfs-libfuse': (o) => kvfsTarget('kvfs-libfuse', 'libfuse', 'libfuse', o),
  ceiling: (o) => ceilingTarget(o),
  tmpfs: (o) => tmpfsTarget(o.work),
};

/** Ratios are this target's over each other one (or the first target's, when it is not in the run). */
const SUBJECT = 'kvfs-native';

/** run-fio.sh's own order: reads follow the write that lays out their file, stat and delete follow create. */
const JOB_ORDER = [
  'seq-write-1m', 'seq-read-1m', 'seq-read-1m-direct', 'rand-read-4k-direct', 'rand-write-4k',
  'meta-create', 'meta-stat', 'meta-delete',
];

// ---------------------------------------------------------------------------------------------------------
// targets

/** tmpfs mounted at a fresh directory (as root); otherwise a directory in /dev/shm, which is tmpfs. */
function tmpfsTarget(work: string): Target {
  let dir = path.join(work, 'tmpfs');
  let mounted = false;
  let unregister = (): void => {};
  return {
    name: 'tmpfs',
    short: 'tmpfs',
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
      } else {
        dir = mkdtempSync('/dev/shm/kvfs-bench-');
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

/** kvfs mounted in the background by its CLI, with --driver `driver`; a `memory:` store lives in the daemon. */
function kvfsTarget(name: string, short: string, driver: string, o: Options): Target {
  const dir = path.join(o.work, name);
  let m: KvfsMount | undefined;
  let unregister = (): void => {};
  const notes: string[] = [];
  return {
    name,
    short,
    dir,
    notes,
    async setup() {
      mkdirSync(dir, { recursive: true });
      m = await kvfsMount(o.store, dir, ['--driver', driver, ...o.mountArgs], { KVFS_DATA_DIR: o.logDir });
      const mount = m;
      unregister = atExit(() => {
        forceUnmount(mount.dir);
        stopDaemon(mount.pid);
      });
      notes.push(`daemon pid ${m.pid}, log ${path.relative(process.cwd(), m.log)}`);
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
      const pipeNote = existsSync(mount.log) ? /^kvfs: (fs\.pipe-max-size is .*)$/m.exec(readFileSync(mount.log, 'utf8'))?.[1] : undefined;
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

/** Builds ../shared/bench/ceiling/fuse-ceiling.c into the work dir (once); returns the binary's path. */
function buildCeiling(work: string): string {
  const bin = path.join(work, 'fuse-ceiling');
  if (existsSync(bin)) return bin;
  const pc = spawnSync('pkg-config', ['fuse3', '--cflags', '--libs'], { encoding: 'utf8' });
  if (pc.status !== 0) throw new Error(`pkg-config fuse3 failed (libfuse3-dev installed?): ${pc.stderr.trim()}`);
  const args = ['-O2', '-Wall', path.join(sharedBench, 'ceiling/fuse-ceiling.c'), ...pc.stdout.trim().split(/\s+/), '-lpthread', '-o', bin];
  const r = spawnSync('cc', args, { stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) throw new Error(`building fuse-ceiling failed: cc ${args.join(' ')}`);
  return bin;
}

/** The C ceiling, run in the foreground (-f) as a child in its own process group; unmounted with fusermount3. */
function ceilingTarget(o: Options): Target {
  const dir = path.join(o.work, 'ceiling');
  const log = path.join(o.logDir, 'fuse-ceiling.log');
  let child: ChildProcess | undefined;
  let unregister = (): void => {};
  const notes: string[] = [];
  return {
    name: 'ceiling',
    short: 'ceiling',
    dir,
    notes,
    async setup() {
      const bin = buildCeiling(o.work);
      mkdirSync(dir, { recursive: true });
      const fd = openSync(log, 'a');
      const args = [dir, '-f', '-o', `arena=${o.ceilingArenaMb}`];
      child = spawn(bin, args, { stdio: ['ignore', fd, fd], detached: true });
      closeSync(fd);
      const c = child;
      unregister = atExit(() => {
        forceUnmount(dir);
        killGroup(c.pid, 'SIGKILL');
      });
      child.on('error', () => undefined);
      notes.push(`fuse-ceiling ${args.join(' ')} (pid ${child.pid}), log ${path.relative(process.cwd(), log)}`);
      // it mounts once its arena is faulted in: seconds per GiB on a cold machine
      if (!(await waitMounted(dir, 180_000, () => isAlive(c.pid)))) {
        const tail = existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n').slice(-3).join(' | ') : '';
        throw new Error(`fuse-ceiling did not mount ${dir}${isAlive(c.pid) ? ' within 180 s' : ' (it exited)'}: ${tail}`);
      }
    },
    async teardown() {
      const problems: string[] = [];
      const c = child;
      child = undefined;
      if (isMounted(dir)) {
        const r = await run('fusermount3', ['-u', dir], { timeoutMs: 60_000 });
        if (r.code !== 0 || isMounted(dir)) {
          problems.push(`fusermount3 -u ${dir}: ${r.stderr.trim() || r.code}; detached it lazily`);
          forceUnmount(dir);
        }
      }
      if (c && !(await waitGone(c.pid, 10_000))) {
        problems.push(`fuse-ceiling (pid ${c.pid}) was still running 10 s after the unmount; killed it`);
        killGroup(c.pid, 'SIGTERM');
        if (!(await waitGone(c.pid, 3000))) killGroup(c.pid, 'SIGKILL');
      }
      unregister();
      removeDir(dir);
      return problems;
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// jobs

interface JobResult {
  mbs: number;
  iops: number;
}
type Row = Map<string, JobResult | string>;

/** The jobs to run, in dependency order; unknown names are an error. */
function selectJobs(jobsDir: string, wanted: string[] | undefined): string[] {
  const all = readdirSync(jobsDir).filter((f) => f.endsWith('.fio')).map((f) => f.slice(0, -4));
  const known = [...JOB_ORDER.filter((j) => all.includes(j)), ...all.filter((j) => !JOB_ORDER.includes(j)).sort()];
  if (!wanted) return known;
  const unknown = wanted.filter((j) => !known.includes(j));
  if (unknown.length) throw new Error(`unknown job(s) ${unknown.join(', ')}; known: ${known.join(', ')}`);
  return known.filter((j) => wanted.includes(j));
}

/** A job that writes data or creates files: run twice per target, the second run kept. */
function isWriteJob(jobsDir: string, job: string): boolean {
  const text = readFileSync(path.join(jobsDir, `${job}.fio`), 'utf8');
  return /^\s*rw\s*=\s*(rand)?(write|rw|randrw)\b/m.test(text) || /^\s*ioengine\s*=\s*filecreate\b/m.test(text);
}

/** A copy of the shared bench (run-fio.sh and jobs/) with smaller files and shorter runs, for a smoke run. */
function quickBench(work: string): string {
  const dir = path.join(work, 'quick-bench');
  mkdirSync(path.join(dir, 'jobs'), { recursive: true });
  writeFileSync(path.join(dir, 'run-fio.sh'), readFileSync(path.join(sharedBench, 'run-fio.sh')));
  chmodSync(path.join(dir, 'run-fio.sh'), 0o755);
  for (const f of readdirSync(path.join(sharedBench, 'jobs'))) {
    const text = readFileSync(path.join(sharedBench, 'jobs', f), 'utf8')
      .replace(/^(\s*size\s*=\s*)\S+/gm, '$164M')
      .replace(/^(\s*runtime\s*=\s*)\S+/gm, '$15')
      .replace(/^(\s*nrfiles\s*=\s*)\S+/gm, '$1500');
    writeFileSync(path.join(dir, 'jobs', f), text);
  }
  return dir;
}

/** The fio run in progress, stopped (with its process group) on SIGINT/SIGTERM. */
let current: { child: ChildProcess; done: Promise<void> } | undefined;

/**
 * Runs the jobs on one target through run-fio.sh; returns the last result line per job. A job that gives no
 * result within `jobTimeoutMs` is taken as hung: fio is killed and the jobs left are marked.
 */
async function runJobs(benchDir: string, target: Target, jobs: string[], jsonDir: string, jobTimeoutMs: number): Promise<{ row: Row; problems: string[] }> {
  const jobsDir = path.join(benchDir, 'jobs');
  const list = jobs.flatMap((j) => (isWriteJob(jobsDir, j) ? [j, j] : [j]));
  const row: Row = new Map();
  const problems: string[] = [];
  const child = spawn('bash', [path.join(benchDir, 'run-fio.sh'), target.dir, target.name, ...list], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, FIO_JSON_DIR: jsonDir },
    detached: true, // its own process group, so that an interrupt or a hang stops fio too
  });
  const unregister = atExit(() => killGroup(child.pid, 'SIGKILL'));
  let hung: string | undefined;
  let next = 0;
  let watchdog: NodeJS.Timeout | undefined;
  const arm = (): void => {
    clearTimeout(watchdog);
    watchdog = setTimeout(() => {
      hung = list[next] ?? '?';
      problems.push(`${target.name}: ${hung} gave no result within ${jobTimeoutMs / 1000} s; fio was killed (hung?)`);
      say(problems[problems.length - 1]!);
      killGroup(child.pid, 'SIGKILL');
    }, jobTimeoutMs);
  };
  arm();
  let buf = '';
  const onLine = (line: string): void => {
    const [label, job, mbs, iops] = line.split('\t');
    if (label !== target.name || !job || mbs === 'MB/s') return;
    next++;
    arm();
    row.set(job, mbs === 'FAILED' ? 'FAILED' : { mbs: Number(mbs), iops: Number(iops) });
    say(`${target.name} ${job}: ${mbs} MB/s, ${iops} IOPS`);
  };
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      onLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  const done = new Promise<number | null>((resolve) => {
    child.on('error', () => resolve(null));
    child.on('close', (code) => resolve(code));
  });
  current = { child, done: done.then(() => undefined) };
  const code = await done;
  clearTimeout(watchdog);
  unregister();
  current = undefined;
  if (code !== 0 && !hung) problems.push(`${target.name}: run-fio.sh exited with ${code}`);
  for (const j of jobs) if (!row.has(j)) row.set(j, hung ? 'HUNG' : 'FAILED');
  if ([...row.values()].includes('FAILED')) problems.push(`${target.name}: a job failed (its fio error is above, on stderr)`);
  return { row, problems };
}

// ---------------------------------------------------------------------------------------------------------
// memory

/** Builds ../shared/bench/warm-memory.c once into the work dir; returns the binary's path. */
function buildWarmMemory(work: string): string {
  const bin = path.join(work, 'warm-memory');
  const r = spawnSync('cc', ['-O2', '-o', bin, path.join(sharedBench, 'warm-memory.c')], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error('building warm-memory.c failed (cc -O2)');
  return bin;
}

function warmMemory(bin: string, gib: string | undefined): void {
  const t = Date.now();
  const r = spawnSync(bin, gib ? [gib] : [], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`warm-memory failed: ${r.stderr}`);
  say(`${r.stdout.trim()} in ${((Date.now() - t) / 1000).toFixed(1)} s`);
}

// ---------------------------------------------------------------------------------------------------------
// report

/** One markdown table: job, MB/s and IOPS per target, then the subject's IOPS over each other target's
 * (ops/s for meta-*; for the fixed-block jobs the IOPS ratio is the MB/s ratio). */
function table(jobs: string[], targets: Target[], rows: Map<string, Row>): string {
  const subject = targets.find((t) => t.name === SUBJECT) ?? targets[0]!;
  const others = targets.filter((t) => t !== subject);
  const head = [
    'job', ...targets.flatMap((t) => [`${t.name} MB/s`, `${t.name} IOPS`]),
    ...others.map((t) => `${subject.short}/${t.short}`),
  ];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map((_, i) => (i ? '---:' : '---')).join('|')}|`];
  for (const job of jobs) {
    const cells = [job];
    for (const t of targets) {
      const r = rows.get(t.name)?.get(job);
      if (r === undefined) cells.push('-', '-');
      else if (typeof r === 'string') cells.push(r, '-');
      else cells.push(fmt(r.mbs, 1), fmt(r.iops));
    }
    const s = rows.get(subject.name)?.get(job);
    for (const t of others) {
      const r = rows.get(t.name)?.get(job);
      cells.push(typeof r === 'object' && typeof s === 'object' && r.iops > 0 ? (s.iops / r.iops).toFixed(2) : '-');
    }
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

const USAGE = `usage: npm run bench -- [options]
  --targets a,b    targets in order (default: ${Object.keys(TARGETS).join(',')});
                   ratios are ${SUBJECT}'s (or the first target's) over each other one
  --jobs a,b       fio jobs from ../shared/bench/jobs (default: all)
  --quick          smoke run: 64 MiB files, 5 s timed jobs, 500 files per meta job
  --store URL      the kvfs targets' store (default memory:; e.g. local:DIR); --format: kvfs format URL first
  --redis-cluster  start a local 3-master Redis Cluster for the run and use a fresh volume on it
  --mount-args S   more kvfs mount arguments for both kvfs targets, e.g. '--attr-timeout 1'
  --pipe-max-size N  set the sysctl fs.pipe-max-size to N for the run (2097152 lets kvfs-native take 1 MiB
                   writes whole); the old value is put back at the end
  --warm-gib N     GiB for warm-memory to touch (default: 3/4 of MemAvailable; 2 with --quick)
  --no-warm        skip warm-memory (numbers for first-touch memory are not comparable)
  --ceiling-arena-mb N  fuse-ceiling's data arena (default 4096; 1024 with --quick)
  --job-timeout S  a job with no result after S seconds is taken as hung and killed (default 600)`;

// ---------------------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      targets: { type: 'string' },
      jobs: { type: 'string' },
      quick: { type: 'boolean', default: false },
      store: { type: 'string', default: 'memory:' },
      format: { type: 'boolean', default: false },
      'redis-cluster': { type: 'boolean', default: false },
      'no-warm': { type: 'boolean', default: false },
      'warm-gib': { type: 'string' },
      'ceiling-arena-mb': { type: 'string' },
      'job-timeout': { type: 'string', default: '600' },
      'mount-args': { type: 'string', default: '' },
      'pipe-max-size': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const list = (s: string | undefined): string[] | undefined => s?.split(',').map((x) => x.trim()).filter(Boolean);
  const names = list(values.targets) ?? Object.keys(TARGETS);
  const unknown = names.filter((n) => !(n in TARGETS));
  if (unknown.length) throw new Error(`unknown target(s) ${unknown.join(', ')}; known: ${Object.keys(TARGETS).join(', ')}`);
  if (!existsSync(path.join(sharedBench, 'run-fio.sh'))) throw new Error(`${sharedBench}/run-fio.sh does not exist`);
  if (!existsSync(kvfsBin)) throw new Error(`${kvfsBin} does not exist`);
  const jobs = selectJobs(path.join(sharedBench, 'jobs'), list(values.jobs));
  const jobTimeoutMs = Number(values['job-timeout']) * 1000;
  if (!(jobTimeoutMs > 0)) throw new Error(`bad --job-timeout '${values['job-timeout']}'`);

  const started = new Date();
  const outDir = path.join(repoRoot, 'bench/out');
  const jsonDir = path.join(outDir, `fio-${stamp(started)}`);
  const logDir = path.join(outDir, `logs-${stamp(started)}`);
  mkdirSync(logDir, { recursive: true });
  const work = mkdtempSync(path.join(os.tmpdir(), 'kvfs-bench-'));
  atExit(() => removeWork(work));
  let store = values.store;
  if (values['redis-cluster']) {
    const cluster = await RedisCluster.start(undefined, { masters: 3 });
    atExit(() => { void cluster.stop(); });
    store = cluster.url(`bench${Date.now()}`);
    say(`started a Redis Cluster for the run: ${cluster.seeds()}`);
  }
  const opts: Options = {
    store, format: values.format || values['redis-cluster'], quick: values.quick, work, logDir,
    mountArgs: values['mount-args'].split(/\s+/).filter(Boolean),
    ceilingArenaMb: Number(values['ceiling-arena-mb'] ?? (values.quick ? 1024 : 4096)),
  };
  const benchDir = values.quick ? quickBench(work) : sharedBench;
  const pipeMaxFile = '/proc/sys/fs/pipe-max-size';
  const pipeMax0 = readFileSync(pipeMaxFile, 'utf8').trim();
  if (values['pipe-max-size'] !== undefined) {
    writeFileSync(pipeMaxFile, values['pipe-max-size']);
    atExit(() => writeFileSync(pipeMaxFile, pipeMax0));
    say(`fs.pipe-max-size ${pipeMax0} -> ${readFileSync(pipeMaxFile, 'utf8').trim()} for the run`);
  }
  const pipeMax = readFileSync(pipeMaxFile, 'utf8').trim();
  const version = gitVersion();
  const quiet0 = await quietness();
  say(`${quiet0.text.replace(/\*/g, '')}${quiet0.busy ? ': the figures will not be comparable' : ''}`);

  const targets = names.map((n) => TARGETS[n]!(opts));
  // Targets set up (or being set up); each is torn down exactly once, by the run or by a signal.
  const setups = new Map<Target, Promise<unknown>>();
  const teardowns = new Map<Target, Promise<string[]>>();
  const down = (t: Target): Promise<string[]> => {
    let p = teardowns.get(t);
    if (!p) {
      // a setup still in flight (an interrupt during mount) finishes first, so that nothing mounts after teardown
      p = (setups.get(t) ?? Promise.resolve())
        .then(() => t.teardown())
        .catch((err: unknown) => [`teardown of ${t.name} failed: ${(err as Error).message}`]);
      teardowns.set(t, p);
    }
    return p;
  };
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (stopping) process.exit(1); // a second interrupt: leave now (the exit hooks still unmount)
    stopping = true;
    say(`${sig}: stopping fio and tearing down`);
    const c = current;
    killGroup(c?.child.pid, 'SIGTERM');
    void (async () => {
      await Promise.race([c?.done, sleep(5000)]);
      for (const t of [...setups.keys()].reverse()) await down(t);
      removeWork(work);
      process.exit(sig === 'SIGINT' ? 130 : 143);
    })();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const rows = new Map<string, Row>();
  const problems: string[] = [];
  const busyBefore: string[] = [];
  try {
    const warm = values['no-warm'] ? undefined : buildWarmMemory(work);
    if (targets.some((t) => t.name === 'ceiling')) buildCeiling(work); // a build error stops the run before any mount
    if (opts.format && targets.some((t) => t.name.startsWith('kvfs-'))) {
      const r = await run(process.execPath, [kvfsBin, 'format', opts.store], { timeoutMs: 120_000, echo: true });
      if (r.code !== 0) throw new Error(`kvfs format ${opts.store} exited with ${r.code}`);
    }
    for (const target of targets) {
      if (stopping) break;
      const q = await quietness(2000);
      target.notes.push(`before it: ${q.text}`);
      if (q.busy) busyBefore.push(target.name);
      if (warm) warmMemory(warm, values['warm-gib'] ?? (values.quick ? '2' : undefined));
      say(`${target.name}: setting up`);
      try {
        const setup = target.setup();
        setups.set(target, setup.catch(() => undefined));
        await setup;
        if (stopping) break;
        say(`${target.name}: ${jobs.length} job(s) on ${target.dir}`);
        const r = await runJobs(benchDir, target, jobs, jsonDir, jobTimeoutMs);
        rows.set(target.name, r.row);
        problems.push(...r.problems);
      } catch (err) {
        problems.push(`${target.name}: ${(err as Error).message}`);
        say(`${target.name}: ${(err as Error).message}`);
        rows.set(target.name, new Map(jobs.map((j) => [j, 'no target'])));
      } finally {
        if (!stopping) {
          const p = await down(target);
          problems.push(...p.map((x) => `${target.name}: ${x}`));
          for (const x of p) say(`${target.name}: ${x}`);
        }
      }
    }
  } finally {
    if (!stopping) {
      for (const t of [...setups.keys()].reverse()) await down(t);
      removeWork(work);
    }
  }

  if (stopping) return new Promise<number>(() => {}); // the signal handler finishes and exits

  const quiet1 = await quietness();
  const tableText = table(jobs, targets, rows);
  const failed = [...rows.values()].some((r) => [...r.values()].some((v) => typeof v === 'string'));
  const host = `${os.hostname()}, Linux ${os.release()}, ${os.cpus().length} CPUs, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
  const md = [
    `# kvfs bench ${started.toISOString()}`,
    '',
    `${host}. At the start: ${quiet0.text}; at the end: ${quiet1.text}` +
      `${busyBefore.length ? `; busy right before ${busyBefore.join(', ')}` : ''}` +
      `${quiet0.busy || quiet1.busy || busyBefore.length ? '; the figures are not comparable' : ''}.`,
    `kvfs ${version} (dist/ compiled at the start). ` +
      `kvfs store \`${opts.store}\`, default pool and caches${opts.mountArgs.length ? `, mount arguments \`${opts.mountArgs.join(' ')}\`` : ''}; ` +
      `no writeback cache on any target; fs.pipe-max-size ${pipeMax}${pipeMax !== pipeMax0 ? ` (raised from ${pipeMax0} for the run)` : ''}.` +
      `${values.quick ? ' **quick** (64 MiB files, 5 s jobs, 500 files per meta job).' : ''}` +
      `${values['no-warm'] ? ' **no warm-memory**.' : ''} Write jobs ran twice per target; the second run is shown. ` +
      `Ratios are IOPS (ops/s for meta-*; the MB/s ratio for fixed-size blocks).`,
    `Kernel attribute cache: kvfs-native 1 s, ceiling 1 s, kvfs-libfuse 0 s` +
      `${opts.mountArgs.includes('--attr-timeout') ? ' (both kvfs targets as --mount-args says)' : ' (its default)'}.`,
    '',
    tableText,
    '',
    ...targets.flatMap((t) => t.notes.map((n) => `- ${t.name}: ${n}`)),
    ...(problems.length ? ['', '**Problems**', '', ...problems.map((e) => `- ${e}`)] : []),
    '',
  ].join('\n');
  const file = path.join(outDir, `RESULT-${stamp(started)}.md`);
  writeFileSync(file, md);
  console.log(tableText);
  if (problems.length) console.log(`\nproblems:\n${problems.map((e) => `  - ${e}`).join('\n')}`);
  console.log(`\nsaved to ${path.relative(process.cwd(), file)}${existsSync(jsonDir) ? `, fio JSON in ${path.relative(process.cwd(), jsonDir)}` : ''}`);
  return problems.length || failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    say(err instanceof Error ? err.message : String(err));
    process.exit(2);
  },
);
