/**
 * The fio bench: the reference jobs of ../shared/bench (run-fio.sh) against each target, one target after the
 * other in one run: one table of figures (MB/s, IOPS or ops/s per target and job), one of ratios between named
 * pairs of targets, and with --compare a table against an earlier run. Saved to bench/out/RESULT-<date>.md,
 * results-<date>.json (the figures, for a later --compare), fio's JSON (fio-<date>/) and logs (logs-<date>/).
 *
 *   npm run bench -- [--targets a,b] [--jobs a,b] [--quick] [--data-dir DIR] [--store URL [--format] | --redis-cluster]
 *                    [--libfuse-store URL] [--churn | --no-churn] [--compare results-<date>.json]
 *                    [--mount-args '...'] [--no-warm] [--warm-gib N] [--pipe-max-size BYTES]
 *
 * Targets, in the default order (fio-targets.ts builds them):
 *   kvfs-local    kvfs mount --driver native on the default store: a local: (embedded) store formatted fresh in a
 *                 temp dir of --data-dir (default: the OS temp dir, which must be on a disk), churned first.
 *                 --store URL or --redis-cluster replace its store; it is then named by that store: kvfs-local
 *                 (local:), kvfs-redis (a Redis URL, --redis-cluster) or kvfs-store (anything else)
 *   kvfs-memory   kvfs mount memory: --driver native (the channel without a store)
 *   kvfs-heap     kvfs-local's kind of store (a fresh local: store of its own, churned alike; else the same store)
 *                 with V8's sampling heap profiler switched on once mounted (kvfs profile heap start, a sample
 *                 every 512 KiB): what heap profiling costs a live mount (heap on/off)
 *   kvfs-libfuse  kvfs mount --driver libfuse (fuse-native, libfuse 2) on memory: (--libfuse-store URL for
 *                 another): the baseline of the channel
 *   ceiling       ../shared/bench/ceiling/fuse-ceiling.c (C, libfuse3 low-level, data in a pre-faulted arena),
 *                 built here with cc -O2 and run as its header says: `fuse-ceiling MNT -f`, `fusermount3 -u MNT`
 *   disk          a plain directory of --data-dir: the disk that holds kvfs-local's store, without FUSE
 *   rclone        rclone mount :local:DIR MNT --vfs-cache-mode full (Debian's rclone; remote and cache on
 *                 --data-dir's disk): the tool users pick instead
 *   tmpfs         a tmpfs mount (as root; else a directory in /dev/shm)
 * Ratios (each when both sides ran): kvfs-local over rclone, disk, the ceiling, and on seq-write-1m over the lower
 * of the ceiling and disk; kvfs-memory over the ceiling and kvfs-libfuse; kvfs-heap over kvfs-local (heap on/off).
 *
 * Churn (../shared/bench/README.md: an embedded store must be measured after churn, not only fresh): before
 * kvfs-local's jobs, a file the size of seq-write-1m's is written, rewritten in place and deleted through its
 * mount, and the daemon is let settle. On by default when kvfs-local's store is local:; --churn / --no-churn.
 *
 * Like with like: no target asks for the kernel's writeback cache (kvfs's --writeback-cache is off by default,
 * libfuse 2 through fuse-native never asks, the ceiling runs without -o writeback, rclone without
 * --write-back-cache). What still differs is written in the report: the kernel's name and attribute cache
 * (kvfs's defaults: 3600 s on the single-mount local and memory stores, 1 s on Redis; 1 s for the ceiling and
 * rclone; 0 s for kvfs-libfuse; --mount-args '--attr-timeout 1 --entry-timeout 1' evens it), and the largest WRITE (kvfs's native driver splits writes at 512 KiB when fs.pipe-max-size < 2 MiB
 * and it lacks CAP_SYS_RESOURCE; --pipe-max-size 2097152 raises the sysctl for the run and puts it back after).
 *
 * Rules from ../shared/bench/README.md: warm-memory runs right before each target; every write job (the write
 * that lays out what the read jobs read, the random writes, the creates) runs twice per target and the second
 * run is kept. Every mount is unmounted and every daemon stopped in every outcome (errors, a hung job, SIGINT,
 * SIGTERM, an exception): see common.ts's atExit.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { RedisCluster } from '../test/helpers/redis-cluster.js';
import {
  atExit, filesystemOf, gitVersion, killGroup, kvfsBin, quietness, removeWork, repoRoot, run, say,
  sharedBench, sleep, stamp,
} from './common.js';
import {
  compareTable, figuresTable, ioTable, loadResults, ratioTable, type Cell, type RatioSpec, type Row, type SavedResults,
} from './fio-report.js';
import {
  buildCeiling, ceilingTarget, describeDisk, diskTarget, kvfsTarget, rcloneTarget, tmpfsTarget, type Disk,
  type IoCounters, type KvfsTargetSpec, type Target,
} from './fio-targets.js';

/** The target names in their default order (kvfs-local is named by its store: storeTargetName). */
const TARGET_NAMES = ['kvfs-local', 'kvfs-memory', 'kvfs-heap', 'kvfs-libfuse', 'ceiling', 'disk', 'rclone', 'tmpfs'];

/** run-fio.sh's own order: reads follow the write that lays out their file, stat and delete follow create. */
const JOB_ORDER = [
  'seq-write-1m', 'seq-read-1m', 'seq-read-1m-direct', 'rand-read-4k-direct', 'rand-write-4k',
  'meta-create', 'meta-stat', 'meta-delete',
];

/** kvfs-local's names by its store: local: (the default), Redis (redis://, redis-cluster://, rediss://), other */
const STORE_TARGETS = ['kvfs-local', 'kvfs-redis', 'kvfs-store'];
const storeTargetName = (url: string): string =>
  url.startsWith('local:') ? 'kvfs-local' : /^rediss?(-cluster)?:\/\//.test(url) ? 'kvfs-redis' : 'kvfs-store';

const MEMORY_TEXT = 'the in-memory store (memory:, inside the daemon; not durable)';

/** Filesystems that are not a disk: the disk target and a local: store there would measure memory. */
const NOT_A_DISK = new Set(['tmpfs', 'ramfs', 'devtmpfs']);

interface Setup {
  work: string;
  logDir: string;
  disk: Disk;
  /** how `disk` relates to kvfs-local's store, for the legend */
  diskRelation: string;
  /** kvfs-local's store URL and name */
  store: string;
  storeName: string;
  /** the directory of the store the bench formats fresh, when it does */
  freshStoreDir?: string;
  storeText: string;
  libfuseStore: string;
  churnBytes?: number;
  mountArgs: string[];
  ceilingArenaMb: number;
}

/** The targets a run may use, by name (kvfs-local under its run name), in the default order. */
function makeTargets(s: Setup): Map<string, () => Target> {
  type Spec = Pick<KvfsTargetSpec, 'name' | 'short' | 'driver' | 'store' | 'storeText'> & Partial<KvfsTargetSpec>;
  const kvfs = (spec: Spec): (() => Target) =>
    () => kvfsTarget({ mountArgs: s.mountArgs, logDir: s.logDir, work: s.work, ...spec });
  const libfuseText = s.libfuseStore.startsWith('memory:') ? MEMORY_TEXT : `the store ${s.libfuseStore}`;
  return new Map<string, () => Target>([
    [s.storeName, kvfs({
      name: s.storeName, short: s.storeName.slice(5), driver: 'native', store: s.store, storeText: s.storeText,
      format: s.freshStoreDir !== undefined,
      localDir: s.store.startsWith('local:') ? path.resolve(s.store.slice(6)) : undefined,
      churnBytes: s.churnBytes,
    })],
    ['kvfs-memory', kvfs({ name: 'kvfs-memory', short: 'memory', driver: 'native', store: 'memory:', storeText: MEMORY_TEXT })],
    // kvfs-local's store kind with heap sampling on: a local: store of its own, formatted fresh and churned the same
    // way; another store (Redis, --store) is the same volume, mounted after kvfs-local's mount is gone
    ['kvfs-heap', kvfs({
      name: 'kvfs-heap', short: 'heap', driver: 'native', heapSampling: 512 * 1024, churnBytes: s.churnBytes,
      ...(s.freshStoreDir
        ? { store: `local:${s.freshStoreDir}-heap`, format: true, localDir: path.resolve(`${s.freshStoreDir}-heap`) }
        : { store: s.store, localDir: s.store.startsWith('local:') ? path.resolve(s.store.slice(6)) : undefined }),
      storeText: `${s.storeText}; its own, with V8's sampling heap profiler on (kvfs profile heap start, every 512 KiB)`,
    })],
    ['kvfs-libfuse', kvfs({ name: 'kvfs-libfuse', short: 'libfuse', driver: 'libfuse', store: s.libfuseStore, storeText: libfuseText })],
    ['ceiling', () => ceilingTarget(s.work, s.logDir, s.ceilingArenaMb)],
    ['disk', () => diskTarget(s.work, s.disk, s.diskRelation)],
    ['rclone', () => rcloneTarget(s.work, s.logDir, s.disk)],
    ['tmpfs', () => tmpfsTarget(s.work)],
  ]);
}

/** The ratio columns whose both sides are in the run; with none of them, the first target over each other. */
function ratioSpecs(names: string[], store: string): RatioSpec[] {
  const s = store.slice(5); // kvfs-local -> local
  const specs: RatioSpec[] = [
    { head: `${s}/rclone`, num: store, den: ['rclone'] },
    { head: `${s}/disk`, num: store, den: ['disk'] },
    { head: `${s}/ceiling`, num: store, den: ['ceiling'] },
    { head: `${s}/min(ceiling,disk)`, num: store, den: ['ceiling', 'disk'], jobs: ['seq-write-1m'] },
    { head: 'memory/ceiling', num: 'kvfs-memory', den: ['ceiling'] },
    { head: 'memory/libfuse', num: 'kvfs-memory', den: ['kvfs-libfuse'] },
    { head: 'heap on/off', num: 'kvfs-heap', den: [store] },
  ].filter((r) => [r.num, ...r.den].every((n) => names.includes(n)));
  if (specs.length || names.length < 2) return specs;
  return names.slice(1).map((d) => ({ head: `${names[0]}/${d}`, num: names[0]!, den: [d] }));
}

/** `p` or its closest existing ancestor (findmnt -T needs a path that exists) */
function firstExisting(p: string): string {
  while (!existsSync(p) && path.dirname(p) !== p) p = path.dirname(p);
  return p;
}

/** bytes from a fio size such as 1G or 64M (fio's suffixes are powers of 1024) */
function fioBytes(s: string): number {
  const m = /^(\d+)([kmgt]?)i?b?$/i.exec(s.trim());
  if (!m) throw new Error(`cannot read fio size '${s}'`);
  return Number(m[1]) * 1024 ** ' kmgt'.indexOf((m[2] || ' ').toLowerCase());
}

/** the size= of a job file (the churn writes as much as seq-write-1m) */
function jobSize(benchDir: string, job: string): number {
  const m = /^\s*size\s*=\s*(\S+)/m.exec(readFileSync(path.join(benchDir, 'jobs', `${job}.fio`), 'utf8'));
  if (!m) throw new Error(`${job}.fio has no size=`);
  return fioBytes(m[1]!);
}

// ---------------------------------------------------------------------------------------------------------
// jobs

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
async function runJobs(benchDir: string, target: Target, jobs: string[], jsonDir: string, jobTimeoutMs: number): Promise<{ row: Row; io: Map<string, IoCounters>; problems: string[] }> {
  const jobsDir = path.join(benchDir, 'jobs');
  const list = jobs.flatMap((j) => (isWriteJob(jobsDir, j) ? [j, j] : [j]));
  const row: Row = new Map();
  // per job, what the daemon's byte counters moved while it ran (from the previous job's end to its own)
  const io = new Map<string, IoCounters>();
  // a kvfs target's counters start at 0 with its daemon, which the stats file may not show yet
  let ioLast = target.io ? (await target.io()) ?? { bytesWritten: 0, bytesSent: 0, bytesReturned: 0, bytesFetched: 0 } : undefined;
  // the counters are asked for as each job's result line comes, one ask after another
  let ioAsks = Promise.resolve();
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
    const asked = target.io?.();
    ioAsks = ioAsks.then(async () => {
      const ioNow = await asked;
      if (ioNow && ioLast) {
        io.set(job, {
          bytesWritten: ioNow.bytesWritten - ioLast.bytesWritten, bytesSent: ioNow.bytesSent - ioLast.bytesSent,
          bytesReturned: ioNow.bytesReturned - ioLast.bytesReturned, bytesFetched: ioNow.bytesFetched - ioLast.bytesFetched,
        });
      }
      ioLast = ioNow;
    });
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
  await ioAsks;
  clearTimeout(watchdog);
  unregister();
  current = undefined;
  if (code !== 0 && !hung) problems.push(`${target.name}: run-fio.sh exited with ${code}`);
  for (const j of jobs) if (!row.has(j)) row.set(j, hung ? 'HUNG' : 'FAILED');
  if ([...row.values()].includes('FAILED')) problems.push(`${target.name}: a job failed (its fio error is above, on stderr)`);
  return { row, io, problems };
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

const USAGE = `usage: npm run bench -- [options]
  --targets a,b    targets in order (default: ${TARGET_NAMES.join(',')})
  --jobs a,b       fio jobs from ../shared/bench/jobs (default: all)
  --quick          smoke run: 64 MiB files, 5 s timed jobs, 500 files per meta job
  --data-dir DIR   where the fresh local: store, the disk target's directory, rclone's remote and cache and the
                   mountpoints go (default: ${os.tmpdir()}); it must be on a disk, not tmpfs
  --store URL      kvfs-local's store instead of a fresh local: one; the target is then kvfs-local (local:),
                   kvfs-redis (Redis URLs) or kvfs-store; --format: kvfs format it (and --libfuse-store's) first
  --redis-cluster  kvfs-local's store is a fresh volume on a 3-master Redis Cluster started for the run
                   (the target is kvfs-redis)
  --libfuse-store URL  kvfs-libfuse's store (default memory:)
  --churn, --no-churn  write, rewrite and delete a file the size of seq-write-1m's on kvfs-local before its jobs
                   (default: on when its store is local:)
  --compare FILE   also print each target's figures against an earlier run's results-<date>.json
  --mount-args S   more kvfs mount arguments for every kvfs target, e.g. '--attr-timeout 1'
  --pipe-max-size N  set the sysctl fs.pipe-max-size to N for the run (2097152 lets kvfs's native driver take
                   1 MiB writes whole); the old value is put back at the end
  --warm-gib N     GiB for warm-memory to touch (default: 3/4 of MemAvailable; 2 with --quick)
  --no-warm        skip warm-memory (numbers for first-touch memory are not comparable)
  --ceiling-arena-mb N  fuse-ceiling's data arena (default 4096; 1024 with --quick)
  --job-timeout S  a job with no result after S seconds is taken as hung and killed (default 600)`;

async function main(): Promise<number> {
  // `--mount-args '--attr-timeout 1'`: parseArgs takes a value that starts with a dash only as --mount-args=...
  const argv = process.argv.slice(2);
  const args = argv.flatMap((a, i) => {
    if (argv[i - 1] === '--mount-args') return [];
    return a === '--mount-args' && i + 1 < argv.length ? [`${a}=${argv[i + 1]}`] : [a];
  });
  const { values } = parseArgs({
    args,
    options: {
      targets: { type: 'string' },
      jobs: { type: 'string' },
      quick: { type: 'boolean', default: false },
      'data-dir': { type: 'string' },
      store: { type: 'string' },
      format: { type: 'boolean', default: false },
      'redis-cluster': { type: 'boolean', default: false },
      'libfuse-store': { type: 'string', default: 'memory:' },
      churn: { type: 'boolean' },
      'no-churn': { type: 'boolean' },
      compare: { type: 'string' },
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
  if (values.store !== undefined && values['redis-cluster']) {
    throw new Error('--store and --redis-cluster both name kvfs-local\'s store: give one');
  }
  if (values.churn && values['no-churn']) throw new Error('--churn and --no-churn: give one');
  if (!existsSync(path.join(sharedBench, 'run-fio.sh'))) throw new Error(`${sharedBench}/run-fio.sh does not exist`);
  if (!existsSync(kvfsBin)) throw new Error(`${kvfsBin} does not exist`);
  const list = (s: string | undefined): string[] | undefined => s?.split(',').map((x) => x.trim()).filter(Boolean);
  const jobs = selectJobs(path.join(sharedBench, 'jobs'), list(values.jobs));
  const jobTimeoutMs = Number(values['job-timeout']) * 1000;
  if (!(jobTimeoutMs > 0)) throw new Error(`bad --job-timeout '${values['job-timeout']}'`);
  const then: SavedResults | undefined = values.compare ? loadResults(values.compare) : undefined;
  const dataDir = path.resolve(values['data-dir'] ?? os.tmpdir());
  if (!existsSync(dataDir)) throw new Error(`--data-dir ${dataDir} does not exist`);
  const disk = filesystemOf(dataDir);
  if (NOT_A_DISK.has(disk.fstype)) {
    throw new Error(`${dataDir} is on ${disk.fstype}, not a disk: the disk target and the local: store need one (--data-dir DIR)`);
  }
  const storeUrl = values.store;
  const storeName = values['redis-cluster'] ? 'kvfs-redis' : storeTargetName(storeUrl ?? 'local:');
  const wanted = list(values.targets)?.map((n) => (STORE_TARGETS.includes(n) ? storeName : n));
  const known = TARGET_NAMES.map((n) => (n === 'kvfs-local' ? storeName : n));
  const names = wanted ?? known;
  const unknown = names.filter((n) => !known.includes(n));
  if (unknown.length) throw new Error(`unknown target(s) ${unknown.join(', ')}; known: ${known.join(', ')}`);

  const started = new Date();
  const outDir = path.join(repoRoot, 'bench/out');
  const jsonDir = path.join(outDir, `fio-${stamp(started)}`);
  const logDir = path.join(outDir, `logs-${stamp(started)}`);
  mkdirSync(logDir, { recursive: true });
  const work = mkdtempSync(path.join(dataDir, 'kvfs-bench-'));
  atExit(() => removeWork(work));
  const benchDir = values.quick ? quickBench(work) : sharedBench;
  const writeJobs = jobs.filter((j) => isWriteJob(path.join(benchDir, 'jobs'), j));

  // kvfs-local's store: fresh local: by default, else --store or a volume on a Redis Cluster started here
  let store: string;
  let storeText: string;
  let freshStoreDir: string | undefined;
  const format = values.format || values['redis-cluster'];
  let cluster: RedisCluster | undefined;
  if (values['redis-cluster']) {
    cluster = await RedisCluster.start(undefined, { masters: 3 });
    const c = cluster;
    atExit(() => { void c.stop(); });
    store = cluster.url(`bench${Date.now()}`);
    storeText = `a fresh volume on a 3-master Redis Cluster started for the run on loopback (${cluster.seeds()}; ` +
      'Debian\'s redis-server on this machine\'s cores)';
    say(`started a Redis Cluster for the run: ${cluster.seeds()}`);
  } else if (storeUrl !== undefined) {
    store = storeUrl;
    const dir = storeUrl.startsWith('local:') ? path.resolve(storeUrl.slice(6)) : undefined;
    storeText = dir
      ? `the local: store in ${dir}, on ${describeDisk(filesystemOf(firstExisting(dir)))}`
      : storeUrl.startsWith('memory:') ? MEMORY_TEXT : `the store ${storeUrl}`;
    if (!storeUrl.startsWith('memory:')) storeText += format ? ', formatted at the start of the run' : ', as it was';
  } else {
    freshStoreDir = path.join(work, 'store');
    store = `local:${freshStoreDir}`;
    storeText = `a local: store (the default, embedded engine) formatted fresh for this run in ${freshStoreDir}, ` +
      `on ${describeDisk(disk)}`;
  }
  const storeDisk = store.startsWith('local:') ? filesystemOf(firstExisting(path.resolve(store.slice(6)))) : undefined;
  const diskRelation = storeDisk?.source === disk.source && storeDisk.target === disk.target
    ? `the filesystem that holds ${storeName}'s store`
    : `--data-dir's filesystem; ${storeName}'s store is ${storeDisk ? `on ${describeDisk(storeDisk)}` : 'not on a disk'}`;
  const churn = values.churn ?? (!values['no-churn'] && store.startsWith('local:'));
  const churnBytes = churn ? jobSize(benchDir, 'seq-write-1m') : undefined;
  if (churn) storeText += '; churned before its jobs (its notes give the figures)';
  else if (store.startsWith('local:')) storeText += '; **not churned** (--no-churn): measured as it was';

  const setup: Setup = {
    work, logDir, disk, diskRelation, store, storeName, freshStoreDir, storeText, churnBytes,
    libfuseStore: values['libfuse-store'],
    mountArgs: values['mount-args'].split(/\s+/).filter(Boolean),
    ceilingArenaMb: Number(values['ceiling-arena-mb'] ?? (values.quick ? 1024 : 4096)),
  };
  const factories = makeTargets(setup);
  const targets = names.map((n) => factories.get(n)!());

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
    for (const t of setups.keys()) t.abort?.();
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
  const ios = new Map<string, Map<string, IoCounters>>();
  const problems: string[] = [];
  const busyBefore: string[] = [];
  try {
    const warm = values['no-warm'] ? undefined : buildWarmMemory(work);
    if (names.includes('ceiling')) buildCeiling(work); // a build error stops the run before any mount
    const toFormat = [...new Set([
      ...(format && !freshStoreDir && names.includes(storeName) ? [store] : []),
      ...(values.format && names.includes('kvfs-libfuse') ? [setup.libfuseStore] : []),
    ])].filter((url) => !url.startsWith('memory:')); // a memory: volume is made by its mount
    for (const url of toFormat) {
      const r = await run(process.execPath, [kvfsBin, 'format', url], { timeoutMs: 120_000, echo: true });
      if (r.code !== 0) throw new Error(`kvfs format ${url} exited with ${r.code}`);
    }
    for (const target of targets) {
      if (stopping) break;
      const q = await quietness(2000);
      target.notes.push(`before it: ${q.text}`);
      if (q.busy) busyBefore.push(target.name);
      if (warm) warmMemory(warm, values['warm-gib'] ?? (values.quick ? '2' : undefined));
      say(`${target.name}: setting up`);
      try {
        const setupDone = target.setup();
        setups.set(target, setupDone.catch(() => undefined));
        await setupDone;
        if (stopping) break;
        say(`${target.name}: ${jobs.length} job(s) on ${target.dir}`);
        const r = await runJobs(benchDir, target, jobs, jsonDir, jobTimeoutMs);
        rows.set(target.name, r.row);
        if (r.io.size) ios.set(target.name, r.io);
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
      await cluster?.stop();
    }
  }

  if (stopping) return new Promise<number>(() => {}); // the signal handler finishes and exits

  const quiet1 = await quietness();
  const figures = figuresTable(jobs, names, rows);
  const ratios = ratioSpecs(names, storeName);
  const ratioText = ratios.length ? ratioTable(jobs, ratios, rows) : undefined;
  const compared = then ? compareTable(jobs, names, rows, then) : undefined;
  const moved = ios.size ? ioTable(jobs, ios) : undefined;
  const failed = [...rows.values()].some((r) => [...r.values()].some((v) => typeof v === 'string'));
  const host = `${os.hostname()}, Linux ${os.release()}, ${os.cpus().length} CPUs, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
  const attr = setup.mountArgs.includes('--attr-timeout')
    ? `the kvfs targets as --mount-args says; ceiling and rclone 1 s`
    : `${storeName} ${storeName === 'kvfs-redis' ? '1 s (a shared store)' : '3600 s'}, kvfs-memory 3600 s (kvfs's defaults on ` +
      'single-mount stores: names and attributes too), ceiling and rclone 1 s, kvfs-libfuse 0 s (the defaults)';
  const md = [
    `# kvfs bench ${started.toISOString()}`,
    '',
    `${host}. At the start: ${quiet0.text}; at the end: ${quiet1.text}` +
      `${busyBefore.length ? `; busy right before ${busyBefore.join(', ')}` : ''}` +
      `${quiet0.busy || quiet1.busy || busyBefore.length ? '; the figures are not comparable' : ''}.`,
    `kvfs ${version} (dist/ compiled at the start), default pool and caches` +
      `${setup.mountArgs.length ? `, mount arguments \`${setup.mountArgs.join(' ')}\`` : ''}; ` +
      `no writeback cache on any target; kernel attribute cache: ${attr}; fs.pipe-max-size ${pipeMax}` +
      `${pipeMax !== pipeMax0 ? ` (raised from ${pipeMax0} for the run)` : ''}.` +
      `${values.quick ? ' **quick** (64 MiB files, 5 s jobs, 500 files per meta job).' : ''}` +
      `${values['no-warm'] ? ' **no warm-memory**.' : ''} Write jobs (${writeJobs.join(', ')}) ` +
      'ran twice per target; the second run is shown.',
    '',
    '## Targets',
    '',
    '| target | what it is |',
    '|---|---|',
    ...targets.map((t) => `| ${t.name} | ${t.what.replace(/\|/g, '\\|')} |`),
    '',
    '## Figures',
    '',
    'MB/s (10^6 bytes/s) for seq-*, IOPS for rand-*, operations per second for meta-*.',
    '',
    figures,
    ...(ratioText ? [
      '',
      '## Ratios',
      '',
      'One target\'s figure over another\'s, same job, same run. min(ceiling,disk): over the lower of the two (named).',
      '',
      ratioText,
    ] : []),
    ...(moved ? [
      '',
      '## Bytes moved (kvfs targets)',
      '',
      'Per job (its second run for write jobs), from the daemon\'s counters: bytes sent to the store per byte written, ' +
        'and bytes fetched from the store per byte returned to callers through the core. Reads the reader threads ' +
        'answer from published chunks are not counted as returned, but what the core fetched to publish them is ' +
        'counted as fetched: read-ahead jobs show more than 1. `-`: the job wrote or read nothing through the core.',
      '',
      moved,
    ] : []),
    ...(compared ? ['', `## Against ${path.basename(values.compare!)} (${then!.started}${then!.quick ? ', quick' : ''})`, '', compared] : []),
    '',
    '## Notes',
    '',
    ...targets.flatMap((t) => t.notes.map((n) => `- ${t.name}: ${n}`)),
    ...(problems.length ? ['', '## Problems', '', ...problems.map((e) => `- ${e}`)] : []),
    '',
  ].join('\n');
  const file = path.join(outDir, `RESULT-${stamp(started)}.md`);
  writeFileSync(file, md);
  const saved: SavedResults = {
    started: started.toISOString(), host, version, quick: values.quick,
    targets: targets.map((t) => ({ name: t.name, what: t.what })),
    rows: Object.fromEntries([...rows].map(([n, r]) => [n, Object.fromEntries(r) as Record<string, Cell>])),
  };
  const resultsFile = path.join(outDir, `results-${stamp(started)}.json`);
  writeFileSync(resultsFile, `${JSON.stringify(saved, null, 1)}\n`);
  console.log(figures);
  if (ratioText) console.log(`\n${ratioText}`);
  if (moved) console.log(`\nbytes moved:\n${moved}`);
  if (compared) console.log(`\nagainst ${values.compare}:\n${compared}`);
  if (problems.length) console.log(`\nproblems:\n${problems.map((e) => `  - ${e}`).join('\n')}`);
  console.log(`\nsaved to ${path.relative(process.cwd(), file)} and ${path.relative(process.cwd(), resultsFile)}` +
    `${existsSync(jsonDir) ? `, fio JSON in ${path.relative(process.cwd(), jsonDir)}` : ''}`);
  return problems.length || failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    say(err instanceof Error ? err.message : String(err));
    process.exit(2);
  },
);
