/**
 * The fio bench: runs the reference jobs (../shared/bench/run-fio.sh) against each target, one target after
 * the other in one run, and prints one table of MB/s and IOPS per target with each target's ratio to the
 * first (the baseline, tmpfs). Saved to bench/out/RESULT-<date>.md, fio's JSON beside it.
 *
 *   npm run bench -- [--targets tmpfs,kvfs] [--jobs a,b] [--quick] [--store URL] [--format] [--driver D]
 *                    [--no-warm]
 *
 * Rules from ../shared/bench/README.md: warm-memory runs right before each target; every write job runs
 * twice per target and the second run is kept. Every target set up is torn down in every outcome (errors,
 * SIGINT, SIGTERM). A target is a small object (see Target); add one by adding a factory to TARGETS.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

/** A filesystem under test. `setup` makes `dir` an empty, writable directory on it; `teardown` undoes
 * everything `setup` did, also after a failed or partial setup, and is safe to call twice. */
export interface Target {
  readonly name: string;
  readonly dir: string;
  setup(): Promise<void>;
  teardown(): Promise<void>;
}

interface Options {
  store: string;
  format: boolean;
  driver: string | undefined;
  work: string;
}

/** Target factories by name, in the order a run uses them by default; the first is the baseline. */
const TARGETS: Record<string, (o: Options) => Target> = {
  tmpfs: (o) => tmpfsTarget('tmpfs', o.work),
  kvfs: (o) => kvfsTarget('kvfs', o),
};

/** run-fio.sh's own order: reads follow the write that lays out their file, stat and delete follow create. */
const JOB_ORDER = [
  'seq-write-1m', 'seq-read-1m', 'seq-read-1m-direct', 'rand-read-4k-direct', 'rand-write-4k',
  'meta-create', 'meta-stat', 'meta-delete',
];

const repoRoot = findRepoRoot(path.dirname(fileURLToPath(import.meta.url)));
const sharedBench = path.resolve(repoRoot, '../shared/bench');
const kvfsBin = path.join(repoRoot, 'bin/kvfs.js');

const say = (msg: string): void => void process.stderr.write(`bench: ${msg}\n`);

// ---------------------------------------------------------------------------------------------------------
// processes and mounts

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The child currently running a benchmark, killed (with its process group) on SIGINT/SIGTERM. */
let current: { child: ChildProcess; done: Promise<void> } | undefined;

/** Runs a command to completion; stdout and stderr are captured (and stderr echoed when `echo`). */
function run(cmd: string, args: string[], opts: { timeoutMs?: number; echo?: boolean } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: opts.timeoutMs });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (opts.echo) process.stderr.write(d);
    });
    child.on('error', (err) => resolve({ code: null, stdout, stderr: stderr + String(err) }));
    // Not 'close': a daemon started by the command may keep the pipes open for as long as it runs.
    child.on('exit', (code) => {
      const finish = (): void => {
        child.stdout!.destroy();
        child.stderr!.destroy();
        resolve({ code, stdout, stderr });
      };
      const grace = setTimeout(finish, 200);
      child.on('close', () => {
        clearTimeout(grace);
        finish();
      });
    });
  });
}

function mountPoints(): Set<string> {
  const out = new Set<string>();
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const field = line.split(' ')[1];
    if (field) out.add(field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8))));
  }
  return out;
}

const isMounted = (dir: string): boolean => mountPoints().has(dir);

async function waitMounted(dir: string, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(100)) if (isMounted(dir)) return true;
  return isMounted(dir);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Detaches a mount that a polite unmount could not remove (busy, or its daemon gone). */
function forceUnmount(dir: string): void {
  if (!isMounted(dir)) return;
  for (const [cmd, ...args] of [['fusermount3', '-u', '-z', dir], ['umount', '-l', dir]]) {
    spawnSync(cmd!, args, { stdio: 'ignore' });
    if (!isMounted(dir)) return;
  }
  say(`could not unmount ${dir}`);
}

/** Removes a directory that is no longer a mount point; never descends into another filesystem. */
function removeDir(dir: string): void {
  if (isMounted(dir)) return;
  spawnSync('rm', ['-rf', '--one-file-system', dir], { stdio: 'ignore' });
}

/** Removes the run's work directory without throwing; a part still busy is left and named. */
function removeWork(work: string): void {
  for (const m of mountPoints()) if (m.startsWith(`${work}/`)) forceUnmount(m);
  spawnSync('rm', ['-rf', '--one-file-system', work], { stdio: 'ignore' });
  if (existsSync(work)) say(`could not remove ${work} entirely`);
}

// ---------------------------------------------------------------------------------------------------------
// targets

/** tmpfs mounted at a fresh directory (as root); otherwise a directory in /dev/shm, which is tmpfs. */
function tmpfsTarget(name: string, work: string): Target {
  let dir = path.join(work, name);
  let mounted = false;
  return {
    name,
    get dir() {
      return dir;
    },
    async setup() {
      if (process.getuid?.() === 0) {
        mkdirSync(dir, { recursive: true });
        const r = await run('mount', ['-t', 'tmpfs', '-o', 'size=4g,mode=0755', 'kvfs-bench', dir]);
        if (r.code !== 0) throw new Error(`mount -t tmpfs failed: ${r.stderr.trim()}`);
        mounted = true;
      } else {
        dir = mkdtempSync('/dev/shm/kvfs-bench-');
      }
    },
    async teardown() {
      if (mounted && isMounted(dir)) {
        const r = await run('umount', [dir]);
        if (r.code !== 0) forceUnmount(dir);
      }
      mounted = false;
      removeDir(dir);
    },
  };
}

/** kvfs mounted in the background by its CLI; the daemon holds the store (a `memory:` store lives in it). */
function kvfsTarget(name: string, o: Options): Target {
  const dir = path.join(o.work, name);
  const cli = (...args: string[]): Promise<RunResult> =>
    run(process.execPath, [kvfsBin, ...args], { timeoutMs: 120_000, echo: true });
  return {
    name,
    dir,
    async setup() {
      if (!existsSync(kvfsBin)) throw new Error(`${kvfsBin} does not exist`);
      mkdirSync(dir, { recursive: true });
      if (o.format) {
        const r = await cli('format', o.store);
        if (r.code !== 0) throw new Error(`kvfs format ${o.store} exited with ${r.code}`);
      }
      const args = ['mount', o.store, dir, '--background', ...(o.driver ? ['--driver', o.driver] : [])];
      const r = await cli(...args);
      if (r.code !== 0) throw new Error(`kvfs ${args.join(' ')} exited with ${r.code}`);
      if (!(await waitMounted(dir, 10_000))) throw new Error(`kvfs mount returned 0 but ${dir} is not mounted`);
    },
    async teardown() {
      if (isMounted(dir)) {
        const r = await cli('umount', dir);
        if (r.code !== 0 || isMounted(dir)) {
          say(`kvfs umount ${dir} exited with ${r.code}; detaching it`);
          forceUnmount(dir);
        }
      }
      removeDir(dir);
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// jobs

interface JobResult {
  mbs: number;
  iops: number;
}
type Row = Map<string, JobResult | 'FAILED' | string>;

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

/** Runs the jobs on one target through run-fio.sh; returns the last result line per job. */
async function runJobs(benchDir: string, target: Target, jobs: string[], jsonDir: string): Promise<Row> {
  const jobsDir = path.join(benchDir, 'jobs');
  const list = jobs.flatMap((j) => (isWriteJob(jobsDir, j) ? [j, j] : [j]));
  const row: Row = new Map();
  const child = spawn('bash', [path.join(benchDir, 'run-fio.sh'), target.dir, target.name, ...list], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, FIO_JSON_DIR: jsonDir },
    detached: true, // its own process group, so that an interrupt stops fio too
  });
  let buf = '';
  const onLine = (line: string): void => {
    const [label, job, mbs, iops] = line.split('\t');
    if (label !== target.name || !job || mbs === 'MB/s') return;
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
  current = undefined;
  if (code !== 0) say(`run-fio.sh on ${target.name} exited with ${code}`);
  for (const j of jobs) if (!row.has(j)) row.set(j, 'FAILED');
  return row;
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

const fmt = (n: number, digits = 0): string =>
  n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

/** One markdown table: job, MB/s and IOPS per target, and each later target's IOPS over the baseline's
 * (ops/s for meta-*; for the fixed-block jobs the IOPS ratio is the MB/s ratio). */
function table(jobs: string[], names: string[], rows: Map<string, Row>): string {
  const [base, ...others] = names;
  const head = ['job', ...names.flatMap((n) => [`${n} MB/s`, `${n} IOPS`]), ...others.map((n) => `${n}/${base}`)];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map((_, i) => (i ? '---:' : '---')).join('|')}|`];
  for (const job of jobs) {
    const cells = [job];
    for (const n of names) {
      const r = rows.get(n)?.get(job);
      if (r === undefined) cells.push('-', '-');
      else if (typeof r === 'string') cells.push(r, '-');
      else cells.push(fmt(r.mbs, 1), fmt(r.iops));
    }
    const b = base === undefined ? undefined : rows.get(base)?.get(job);
    for (const n of others) {
      const r = rows.get(n)?.get(job);
      cells.push(typeof r === 'object' && typeof b === 'object' && b.iops > 0 ? (r.iops / b.iops).toFixed(2) : '-');
    }
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

function stamp(d: Date): string {
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
}

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

const USAGE = `usage: npm run bench -- [options]
  --targets a,b    targets in order, the first is the baseline (default: ${Object.keys(TARGETS).join(',')})
  --jobs a,b       fio jobs from ../shared/bench/jobs (default: all)
  --quick          smoke run: 64 MiB files, 5 s timed jobs, 500 files per meta job
  --store URL      kvfs store (default memory:); --format runs \`kvfs format URL\` first
  --driver NAME    kvfs mount --driver NAME
  --warm-gib N     GiB for warm-memory to touch (default: 3/4 of MemAvailable; 2 with --quick)
  --no-warm        skip warm-memory (numbers for first-touch memory are not comparable)`;

// ---------------------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      targets: { type: 'string' },
      jobs: { type: 'string' },
      quick: { type: 'boolean', default: false },
      store: { type: 'string', default: 'memory:' },
      format: { type: 'boolean', default: false },
      driver: { type: 'string' },
      'no-warm': { type: 'boolean', default: false },
      'warm-gib': { type: 'string' },
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
  const jobs = selectJobs(path.join(sharedBench, 'jobs'), list(values.jobs));

  const work = mkdtempSync(path.join(os.tmpdir(), 'kvfs-bench-'));
  const opts: Options = { store: values.store, format: values.format, driver: values.driver, work };
  let benchDir = sharedBench;
  try {
    if (values.quick) benchDir = quickBench(work);
  } catch (err) {
    removeWork(work);
    throw err;
  }
  const started = new Date();
  const outDir = path.join(repoRoot, 'bench/out');
  const jsonDir = path.join(outDir, `fio-${stamp(started)}`);
  mkdirSync(outDir, { recursive: true });

  // Targets set up (or being set up); each is torn down exactly once, by the run or by a signal.
  const active = new Set<Target>();
  const setups = new Map<Target, Promise<unknown>>();
  const teardowns = new Map<Target, Promise<void>>();
  const down = (t: Target): Promise<void> => {
    let p = teardowns.get(t);
    if (!p) {
      // a setup still in flight (an interrupt during mount) finishes first, so that nothing mounts after teardown
      p = (setups.get(t) ?? Promise.resolve())
        .then(() => t.teardown())
        .catch((err: unknown) => say(`teardown of ${t.name} failed: ${(err as Error).message}`));
      teardowns.set(t, p);
    }
    active.delete(t);
    return p;
  };
  const teardownAll = async (): Promise<void> => {
    for (const t of [...active].reverse()) await down(t);
  };
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (stopping) process.exit(1); // a second interrupt: leave now
    stopping = true;
    say(`${sig}: stopping fio and tearing down`);
    const c = current;
    if (c?.child.pid) {
      try {
        process.kill(-c.child.pid, 'SIGTERM');
      } catch {
        // already gone
      }
    }
    void (async () => {
      await Promise.race([c?.done, sleep(5000)]);
      await teardownAll();
      await Promise.all(teardowns.values()); // also those the run itself had begun
      removeWork(work);
      process.exit(sig === 'SIGINT' ? 130 : 143);
    })();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const rows = new Map<string, Row>();
  const errors: string[] = [];
  try {
    const warm = values['no-warm'] ? undefined : buildWarmMemory(work);
    for (const name of names) {
      if (stopping) break;
      const target = TARGETS[name]!(opts);
      if (warm) warmMemory(warm, values['warm-gib'] ?? (values.quick ? '2' : undefined));
      say(`${name}: setting up`);
      active.add(target);
      try {
        const setup = target.setup();
        setups.set(target, setup.catch(() => undefined));
        await setup;
        if (stopping) break;
        say(`${name}: ${jobs.length} job(s) on ${target.dir}`);
        rows.set(name, await runJobs(benchDir, target, jobs, jsonDir));
      } catch (err) {
        errors.push(`${name}: ${(err as Error).message}`);
        say(`${name}: ${(err as Error).message}`);
        rows.set(name, new Map(jobs.map((j) => [j, 'no target'])));
      } finally {
        await down(target);
      }
    }
  } finally {
    await teardownAll();
    removeWork(work);
  }

  if (stopping) return new Promise<number>(() => {}); // the signal handler finishes and exits

  const tableText = table(jobs, names, rows);
  const failed = [...rows.values()].some((r) => [...r.values()].some((v) => typeof v === 'string'));
  const host = `${os.hostname()}, Linux ${os.release()}, ${os.cpus().length} CPUs, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
  const md = [
    `# kvfs bench ${started.toISOString()}`,
    '',
    `${host}. kvfs store \`${opts.store}\`${opts.driver ? `, driver ${opts.driver}` : ''}` +
      `${values.quick ? ', **quick** (64 MiB files, 5 s jobs, 500 files per meta job)' : ''}` +
      `${values['no-warm'] ? ', **no warm-memory**' : ''}. Write jobs ran twice per target; the second run is shown. ` +
      `Ratios are IOPS (ops/s for meta-*) over the first target's.`,
    '',
    tableText,
    ...(errors.length ? ['', ...errors.map((e) => `- ${e}`)] : []),
    '',
  ].join('\n');
  const file = path.join(outDir, `RESULT-${stamp(started)}.md`);
  writeFileSync(file, md);
  console.log(tableText);
  console.log(`\nsaved to ${path.relative(process.cwd(), file)}${existsSync(jsonDir) ? `, fio JSON in ${path.relative(process.cwd(), jsonDir)}` : ''}`);
  return errors.length || failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    say(err instanceof Error ? err.message : String(err));
    process.exit(2);
  },
);
