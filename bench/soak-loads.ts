/**
 * The soak's load on one kvfs mount, and the ledger of what it closed or fsynced (see soak.ts for the whole).
 *
 * Five loops run at once, each as child processes (never a call on the mount from this process):
 *   fio     a 4k random read/write job with an fsync every 32 writes on 4 files of 8 MiB, time-based, run again
 *           and again (a pause ends the current run with SIGINT, which fio takes as "finish now")
 *   cp      `cp -r SRC MNT/cp/cN` of a tree made once on local disk; the two newest copies are kept, an older
 *           one is read back against the ledger and then removed with `rm -r`
 *   ls      `ls -l MNT/big` (ENTRIES empty files made once by `soak-load.py mkbig`), each listing checked
 *   writer  soak-load.py writer: files written, rewritten, truncated and deleted under MNT/writer
 *   sqlite  soak-load.py sqlite: transactions on MNT/sqlite/soak.db with PRAGMA integrity_check each round
 *
 * The ledger holds every file a load process closed (or fsynced, then closed) with its size and sha256, from
 * the moment the tool that wrote it returned until the tool that deleted it returned: the cp source's
 * checksums for each copy `cp` completed, the writer's W lines (D and X lines remove them), and, at each safe
 * point (`pause` then `snapshot`), the fio files and the SQLite database, which their tools have closed then.
 * `verify` checks the whole ledger through the mount, with the exact file sets of MNT/cp, MNT/writer and
 * MNT/sqlite, the big directory and the database's own checks (soak-load.py verify).
 *
 * Every failure a tool reports is kept as a LoadError with its wall-clock span (soak.ts attributes them to the
 * chaos windows); a read-back that does not match (a B line, a verification) is a Mismatch. Nothing is retried
 * silently: a loop whose step failed records it and goes on with its next step.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { atExit, killGroup, repoRoot, type RunResult } from './common.js';

export type Kind = 'fio' | 'cp' | 'rm' | 'ls' | 'writer' | 'sqlite' | 'hash' | 'verify' | 'pause';
export const KINDS: Kind[] = ['fio', 'cp', 'rm', 'ls', 'writer', 'sqlite', 'hash', 'verify', 'pause'];

export interface LoadError { kind: Kind; t0: number; t1: number; what: string }
export interface Mismatch { t: number; what: string }

export const PYTHON = '/usr/bin/python3';
const LOAD_PY = path.join(repoRoot, 'bench/soak-load.py');

/** the environment of every tool: English messages, no Node options of ours */
function toolEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: 'C', LANG: 'C' };
  delete env.NODE_OPTIONS;
  return env;
}

// ---------------------------------------------------------------------------------------------------------
// child processes

export interface Tool {
  pid: number;
  done: Promise<RunResult>;
}

/** every tool still running, so that the soak can kill them all (their process groups) in any outcome */
export const running = new Set<number>();

/** pid and every process below it (from /proc/PID/stat's ppid) */
function familyOf(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(name)]);
    } catch { /* gone */ }
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) out.push(...(children.get(out[i]!) ?? []));
  return out;
}

/**
 * SIGKILL to a tool's process group and to every process below it: fio's job processes call setsid(), so
 * they are in a group (and session) of their own and would go on holding the mount.
 */
export function killTool(pid: number): void {
  const family = familyOf(pid);
  for (const p of family) killGroup(p, 'SIGKILL');
}

/**
 * Starts a tool in its own process group, stdout to `onLine` line by line (else collected), stderr collected
 * (its last 64 KiB); after `timeoutMs` the group is killed (SIGKILL) and the result says `timedOut`.
 */
export function startTool(cmd: string, args: string[], opts: { timeoutMs: number; onLine?: (l: string) => void }): Tool {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: toolEnv(), detached: true });
  const pid = child.pid ?? -1;
  let stdout = '';
  let stderr = '';
  let timedOut = false;
  if (pid > 0) running.add(pid);
  const unregister = atExit(() => killTool(pid));
  const timer = setTimeout(() => {
    timedOut = true;
    killTool(pid);
  }, opts.timeoutMs);
  const lines = createInterface({ input: child.stdout! });
  lines.on('line', (l) => (opts.onLine ? opts.onLine(l) : (stdout += l + '\n')));
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-65536);
  });
  const done = new Promise<RunResult>((resolve) => {
    let ended = false;
    const end = (code: number | null, signal: NodeJS.Signals | null): void => {
      if (ended) return;
      ended = true;
      clearTimeout(timer);
      unregister();
      running.delete(pid);
      resolve({ code, signal, stdout, stderr, timedOut });
    };
    child.on('error', (e) => {
      stderr += String(e);
      end(null, null);
    });
    // 'close' once stdout is drained (every line delivered); a grandchild holding the pipes must not hang us
    child.on('exit', (code, signal) => {
      const grace = setTimeout(() => {
        child.stdout!.destroy();
        child.stderr!.destroy();
        end(code, signal);
      }, 2000);
      child.on('close', () => {
        clearTimeout(grace);
        end(code, signal);
      });
    });
  });
  return { pid, done };
}

export const toolOk = (r: RunResult): boolean => r.code === 0 && !r.timedOut;

/** "exit 1: cp: cannot create ...: Input/output error" (the first and last lines of stderr) */
export function ended(r: RunResult): string {
  const how = r.timedOut ? 'timed out (killed)' : r.signal ? `signal ${r.signal}` : r.code === null ? 'did not start' : `exit ${r.code}`;
  const lines = r.stderr.trim().split('\n').filter(Boolean);
  const said = lines.length > 2 ? `${lines[0]} ... (${lines.length} lines) ... ${lines[lines.length - 1]}` : lines.join(' | ');
  return said ? `${how}: ${said.slice(0, 600)}` : how;
}

// ---------------------------------------------------------------------------------------------------------
// the ledger and the source tree

export interface FileSum { size: number; sha: string }

export class Ledger {
  readonly files = new Map<string, FileSum>();
  /** files, or directories written `DIR/`, whose content is unknown after a failed call: they may exist */
  readonly allow = new Set<string>();

  set(rel: string, sum: FileSum): void {
    this.files.set(rel, sum);
  }

  drop(rel: string): void {
    this.files.delete(rel);
  }

  dropUnder(dir: string): void {
    for (const rel of [...this.files.keys()]) if (rel.startsWith(`${dir}/`)) this.files.delete(rel);
  }

  under(dir: string): Record<string, [number, string]> {
    const out: Record<string, [number, string]> = {};
    for (const [rel, s] of this.files) if (rel.startsWith(`${dir}/`)) out[rel] = [s.size, s.sha];
    return out;
  }

  all(): Record<string, [number, string]> {
    return Object.fromEntries([...this.files].map(([rel, s]) => [rel, [s.size, s.sha]]));
  }
}

export interface SourceTree {
  root: string;
  files: { rel: string; size: number; sha: string }[];
  bytes: number;
}

/** a tree of `count` files of mixed sizes (empty, small, around the 256 KiB chunk size, a few MiB) in nested dirs */
export function makeSource(root: string, count: number, seed: number): SourceTree {
  let x = seed >>> 0 || 1;
  const next = (): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  const edge = [0, 1, 4095, 4096, 4097, 262143, 262144, 262145, 1048583, 3 * 1048576];
  const files: SourceTree['files'] = [];
  let bytes = 0;
  mkdirSync(path.join(root, 'empty-dir'), { recursive: true });
  for (let i = 0; i < count; i++) {
    const r = next() % 100;
    const size = i < edge.length ? edge[i]! : r < 10 ? 0 : r < 60 ? next() % 4096 : r < 90 ? 4096 + (next() % 61440)
      : r < 98 ? 65536 + (next() % 458752) : 1048576 + (next() % (2 * 1048576));
    const dir = `d${next() % 6}/e${next() % 4}${next() % 3 === 0 ? `/f${next() % 3}` : ''}`;
    const rel = `${dir}/file-${i}${i % 4 === 0 ? '.txt' : ''}`;
    mkdirSync(path.join(root, dir), { recursive: true });
    const data = randomBytes(size);
    writeFileSync(path.join(root, rel), data);
    files.push({ rel, size, sha: createHash('sha256').update(data).digest('hex') });
    bytes += size;
  }
  return { root, files, bytes };
}

// ---------------------------------------------------------------------------------------------------------
// the loads

export interface LoadsConfig {
  mnt: string;
  /** a directory on local disk for stop files and verification specs */
  work: string;
  src: SourceTree;
  /** entries of MNT/big */
  entries: number;
  seed: number;
  /** seconds of each fio run */
  fioRuntime: number;
}

export interface VerifyResult {
  label: string;
  t: number;
  files: number;
  bytes: number;
  mismatched: string[];
  missing: string[];
  extra: string[];
  big?: { entries: number; bad: string[]; missing: number };
  sqlite?: { integrity: string | null; rows: number | null; bad: string[] };
  /** the verifier itself failed (could not run, or timed out) */
  failed?: string;
}

export const verifyProblems = (v: VerifyResult): string[] => [
  ...(v.failed ? [v.failed] : []),
  ...v.mismatched.map((m) => `mismatch ${m}`), ...v.missing.map((m) => `missing ${m}`),
  ...v.extra.map((m) => `not in the ledger: ${m}`),
  ...(v.big ? [...v.big.bad.map((b) => `big/${b}`), ...(v.big.missing ? [`big: ${v.big.missing} entries missing`] : [])] : []),
  ...(v.sqlite?.bad ?? []).map((b) => `sqlite: ${b}`),
];

const FIO_FILES = ['fio/soak.0.0', 'fio/soak.0.1', 'fio/soak.1.0', 'fio/soak.1.1'];
const DB = 'sqlite/soak.db';

interface PyStats { ops: Record<string, number>; errors: number; maxMs: Record<string, number>; slow: [string, number, number][] }

export class Loads {
  readonly ledger = new Ledger();
  readonly errors: LoadError[] = [];
  readonly mismatches: Mismatch[] = [];
  readonly verifications: VerifyResult[] = [];
  /** operation counters, by name ("fio runs", "cp copies", ...) */
  readonly ops = new Map<string, number>();
  /** the longest single call the python loads saw, per call kind (ms), and every call over 1 s */
  readonly maxMs: Record<string, number> = {};
  readonly slow: [string, number, number][] = [];
  /** rows the SQLite table held at the last commit; undefined when a call failed after it (unknown) */
  sqliteRows: number | undefined = 0;
  /** when the loads last made progress (any tool finished a step) */
  lastProgress = Date.now();

  private active = false;
  private killed = false;
  private loops: Promise<void>[] = [];
  private gen = 0;
  private copyNo = 0;
  private writerRuns = 0;
  private kept: string[] = [];
  private doomed: string[] = [];
  private fio?: Tool;
  private readonly wakers = new Set<() => void>();
  private stopFile = '';

  constructor(private readonly c: LoadsConfig) {}

  get isActive(): boolean {
    return this.active;
  }

  count(name: string, n = 1): void {
    this.ops.set(name, (this.ops.get(name) ?? 0) + n);
    this.lastProgress = Date.now();
  }

  private fail(kind: Kind, t0: number, what: string): void {
    if (this.killed) return; // the soak was interrupted: its tools were killed, they did not fail
    this.errors.push({ kind, t0, t1: Date.now(), what });
  }

  private at(rel: string): string {
    return path.join(this.c.mnt, rel);
  }

  /** the directories of each load, and the big directory (made once; its creation is timed) */
  async setup(): Promise<{ seconds: number }> {
    const t0 = Date.now();
    const mk = await startTool('mkdir', ['-p', ...['fio', 'cp', 'writer', 'sqlite'].map((d) => this.at(d))], { timeoutMs: 60_000 }).done;
    if (!toolOk(mk)) throw new Error(`mkdir in the mount: ${ended(mk)}`);
    const big = await startTool(PYTHON, [LOAD_PY, 'mkbig', this.at('big'), String(this.c.entries)], { timeoutMs: 1_800_000 }).done;
    if (!toolOk(big)) throw new Error(`creating ${this.c.entries} entries in ${this.at('big')}: ${ended(big)}`);
    return { seconds: (Date.now() - t0) / 1000 };
  }

  /** starts every loop (again, after a pause) */
  start(): void {
    if (this.active) return;
    this.active = true;
    this.gen++;
    this.stopFile = path.join(this.c.work, `stop-${this.gen}`);
    // what the snapshot recorded is being changed again
    for (const rel of [...FIO_FILES, DB]) this.ledger.drop(rel);
    this.loops = [this.fioLoop(), this.cpLoop(), this.lsLoop(), this.writerLoop(), this.sqliteLoop()];
  }

  /**
   * Stops every loop at a safe point: the python loads after their current operation, fio at once (SIGINT),
   * cp/rm/ls after their current step. Resolves when all are idle; a loop still busy after `ms` is killed
   * (and that is an error).
   */
  async pause(ms = 300_000): Promise<void> {
    if (!this.active) return;
    const t0 = Date.now();
    this.active = false;
    this.count('pauses');
    writeFileSync(this.stopFile, '');
    if (this.fio) killGroup(this.fio.pid, 'SIGINT');
    for (const w of this.wakers) w();
    let timer: NodeJS.Timeout | undefined;
    const idle = await Promise.race([
      Promise.all(this.loops).then(() => true),
      new Promise<boolean>((r) => { timer = setTimeout(() => r(false), ms); }),
    ]);
    clearTimeout(timer);
    if (!idle) {
      this.fail('pause', t0, `the loads did not stop within ${ms / 1000} s of being asked: killed ${running.size} tool(s)`);
      for (const pid of running) killTool(pid);
      await Promise.all(this.loops);
    }
  }

  /** SIGKILL to every tool's process group (teardown, an interrupted soak) */
  killAll(): void {
    this.active = false;
    this.killed = true;
    try {
      if (this.stopFile) writeFileSync(this.stopFile, '');
    } catch { /* the work dir is gone: so are the loads */ }
    for (const pid of running) killTool(pid);
    for (const w of this.wakers) w();
  }

  /** kills every tool and waits (up to ms) for the loops to end */
  async stopNow(ms: number): Promise<void> {
    this.killAll();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(this.loops), new Promise((r) => { timer = setTimeout(r, ms); })]);
    clearTimeout(timer);
  }

  /** after a pause: the fio files and the database, closed by their tools, enter the ledger */
  async snapshot(): Promise<void> {
    const t0 = Date.now();
    this.count('snapshots');
    const r = await startTool(PYTHON, [LOAD_PY, 'hash', this.c.mnt, ...FIO_FILES, DB], { timeoutMs: 300_000 }).done;
    let sums: Record<string, [number, string] | string>;
    try {
      if (!toolOk(r)) throw new Error(ended(r));
      sums = JSON.parse(r.stdout) as typeof sums;
    } catch (e) {
      return this.fail('hash', t0, `soak-load.py hash: ${(e as Error).message}`);
    }
    for (const [rel, s] of Object.entries(sums)) {
      if (typeof s !== 'string') this.ledger.set(rel, { size: s[0], sha: s[1] });
      else if (s !== 'ENOENT' || rel === DB) this.fail('hash', t0, `${rel}: ${s}`);
    }
  }

  /** the whole ledger against the mount (after a snapshot, with the loads paused) */
  async verify(label: string): Promise<VerifyResult> {
    const spec = {
      root: this.c.mnt, files: this.ledger.all(), exact: ['cp', 'writer', 'sqlite'], allow: [...this.ledger.allow],
      big: { dir: 'big', n: this.c.entries }, sqlite: this.ledger.files.has(DB) ? { rel: DB, rows: this.sqliteRows ?? null } : null,
    };
    return this.runVerify(label, spec);
  }

  private async runVerify(label: string, spec: object): Promise<VerifyResult> {
    const t0 = Date.now();
    const file = path.join(this.c.work, `verify-${this.verifications.length}.json`);
    writeFileSync(file, JSON.stringify(spec));
    const r = await startTool(PYTHON, [LOAD_PY, 'verify', file], { timeoutMs: 1_800_000 }).done;
    rmSync(file, { force: true });
    let v: VerifyResult;
    try {
      if (!toolOk(r)) throw new Error(ended(r));
      v = { label, t: t0, ...(JSON.parse(r.stdout) as Omit<VerifyResult, 'label' | 't'>) };
    } catch (e) {
      v = { label, t: t0, files: 0, bytes: 0, mismatched: [], missing: [], extra: [], failed: `the verifier: ${(e as Error).message}` };
      this.fail('verify', t0, v.failed!);
    }
    this.verifications.push(v);
    for (const p of verifyProblems(v)) this.mismatches.push({ t: t0, what: `${label}: ${p}` });
    this.count('verify runs');
    this.count('verify files', v.files);
    return v;
  }

  /** sleeps up to ms; a pause ends it early */
  private nap(ms: number): Promise<void> {
    return new Promise((r) => {
      const wake = (): void => {
        clearTimeout(timer);
        this.wakers.delete(wake);
        r();
      };
      const timer = setTimeout(wake, ms);
      this.wakers.add(wake);
    });
  }

  // ------------------------------------------------------------------------------------------- the loops

  private async fioLoop(): Promise<void> {
    while (this.active) {
      const t0 = Date.now();
      const tool = startTool('fio', [
        '--name=soak', `--directory=${this.at('fio')}`, '--rw=randrw', '--rwmixread=50', '--bs=4k', '--size=16m',
        '--nrfiles=2', '--numjobs=2', '--ioengine=psync', '--fsync=32', '--rate_iops=300,300', '--time_based',
        `--runtime=${this.c.fioRuntime}`, '--output-format=json',
      ], { timeoutMs: (this.c.fioRuntime + 600) * 1000 });
      this.fio = tool;
      const r = await tool.done;
      this.fio = undefined;
      const interrupted = !this.active;
      let jobs: { error: number; read: { total_ios: number }; write: { total_ios: number }; sync?: { total_ios: number } }[] = [];
      try {
        jobs = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: typeof jobs }).jobs;
      } catch { /* no report: said below */ }
      const jobErrors = jobs.filter((j) => j.error !== 0).map((j) => `error ${j.error}`);
      // fio ends with status 128 when it was told to stop (SIGINT)
      const ok = !r.timedOut && (r.code === 0 || (interrupted && r.code === 128)) && jobs.length > 0 && jobErrors.length === 0;
      if (!ok) this.fail('fio', t0, `${ended(r)}${jobErrors.length ? `; jobs: ${jobErrors.join(', ')}` : ''}${jobs.length ? '' : '; no JSON report'}`);
      this.count('fio runs');
      this.count('fio reads', jobs.reduce((n, j) => n + j.read.total_ios, 0));
      this.count('fio writes', jobs.reduce((n, j) => n + j.write.total_ios, 0));
      this.count('fio fsyncs', jobs.reduce((n, j) => n + (j.sync?.total_ios ?? 0), 0));
      if (!ok && this.active) await this.nap(1000);
    }
  }

  private async cpLoop(): Promise<void> {
    while (this.active) {
      const rel = `cp/c${++this.copyNo}`;
      const t0 = Date.now();
      const r = await startTool('cp', ['-r', this.c.src.root, this.at(rel)], { timeoutMs: 900_000 }).done;
      if (toolOk(r)) {
        for (const f of this.c.src.files) this.ledger.set(`${rel}/${f.rel}`, { size: f.size, sha: f.sha });
        this.kept.push(rel);
        this.count('cp copies');
        this.count('cp files', this.c.src.files.length);
        this.count('cp bytes', this.c.src.bytes);
      } else {
        this.fail('cp', t0, `cp -r SRC ${rel}: ${ended(r)}`);
        this.ledger.allow.add(`${rel}/`);
        this.doomed.push(rel);
      }
      while (this.kept.length > 2) {
        const old = this.kept.shift()!;
        // each copy is read back before it leaves the ledger
        await this.runVerify(`before rm -r ${old}`, { root: this.c.mnt, files: this.ledger.under(old), exact: [], allow: [] });
        this.doomed.push(old);
      }
      for (const d of [...this.doomed]) {
        const t1 = Date.now();
        const rm = await startTool('rm', ['-r', this.at(d)], { timeoutMs: 900_000 }).done;
        this.ledger.dropUnder(d);
        if (toolOk(rm)) {
          this.ledger.allow.delete(`${d}/`);
          this.doomed.splice(this.doomed.indexOf(d), 1);
          this.count('rm trees');
        } else {
          this.fail('rm', t1, `rm -r ${d}: ${ended(rm)}`);
          this.ledger.allow.add(`${d}/`);
        }
      }
    }
  }

  private async lsLoop(): Promise<void> {
    const dir = this.at('big');
    while (this.active) {
      const t0 = Date.now();
      let entries = 0;
      const bad: string[] = [];
      const r = await startTool('ls', ['-l', '--color=never', dir], {
        timeoutMs: 1_800_000,
        onLine: (l) => {
          if (l.startsWith('total ')) return;
          entries++;
          const f = l.split(/\s+/);
          if (!l.startsWith('-') || f[4] !== '0' || !/^f\d{7}$/.test(f[f.length - 1]!)) if (bad.length < 5) bad.push(l);
        },
      }).done;
      if (!toolOk(r)) this.fail('ls', t0, `ls -l big: ${ended(r)}`);
      else if (entries !== this.c.entries || bad.length) {
        this.fail('ls', t0, `ls -l big listed ${entries} entries (expected ${this.c.entries})${bad.length ? `; not empty regular files: ${bad.join(' | ')}` : ''}`);
      } else {
        this.count('ls listings');
        this.count('ls seconds', (Date.now() - t0) / 1000);
      }
      if (this.active) await this.nap(1000);
    }
  }

  /** a python load: started again if it ends while the loads are active (that is an error) */
  private async pyLoop(kind: 'writer' | 'sqlite', args: () => string[], onLine: (l: string) => void): Promise<void> {
    while (this.active) {
      const t0 = Date.now();
      const r = await startTool(PYTHON, [LOAD_PY, kind, ...args()], {
        timeoutMs: 86_400_000,
        onLine: (l) => {
          if (l.startsWith('E ')) {
            const [, call, errno, t, ms, ...name] = l.split(' ');
            if (kind === 'sqlite') this.sqliteRows = undefined; // a failed call leaves the count unknown until the next commit
            this.errors.push({ kind, t0: Number(t), t1: Number(t) + Number(ms), what: `${call} ${path.relative(this.c.mnt, name.join(' '))}: ${errno}` });
          } else if (l.startsWith('B ')) {
            this.mismatches.push({ t: Date.now(), what: `${kind}: ${l.slice(2)}` });
          } else if (l.startsWith('S ')) {
            const s = JSON.parse(l.slice(2)) as PyStats;
            for (const [k, n] of Object.entries(s.ops)) this.count(`${kind} ${k}`, n);
            for (const [k, ms] of Object.entries(s.maxMs)) this.maxMs[`${kind} ${k}`] = Math.max(this.maxMs[`${kind} ${k}`] ?? 0, ms);
            this.slow.push(...s.slow.map(([k, t, ms]) => [`${kind} ${k}`, t, ms] as [string, number, number]));
          } else {
            onLine(l);
          }
        },
      }).done;
      if (!toolOk(r)) this.fail(kind, t0, `soak-load.py ${kind}: ${ended(r)}`);
      else if (this.active) this.fail(kind, t0, `soak-load.py ${kind} ended by itself`);
      if (this.active) await this.nap(1000);
    }
  }

  private writerLoop(): Promise<void> {
    const adopt = path.join(this.c.work, 'adopt.json');
    return this.pyLoop('writer', () => {
      const mine = Object.entries(this.ledger.under('writer')).map(([rel, [size, sha]]) => [path.basename(rel), size, sha]);
      writeFileSync(adopt, JSON.stringify(mine));
      // a new name prefix per process: a writer started again never meets its predecessor's names
      const run = ++this.writerRuns;
      return [this.at('writer'), this.stopFile, String(this.c.seed * 1000 + run), `w${run}`, adopt];
    }, (l) => {
      const [tag, rel, size, sha] = l.split(' ');
      const at = `writer/${rel}`;
      if (tag === 'W') this.ledger.set(at, { size: Number(size), sha: sha! });
      else if (tag === 'D') this.ledger.drop(at);
      else if (tag === 'X') {
        this.ledger.drop(at);
        this.ledger.allow.add(at);
      }
      this.lastProgress = Date.now();
    });
  }

  private sqliteLoop(): Promise<void> {
    return this.pyLoop('sqlite', () => [this.at(DB), this.stopFile, String(this.c.seed * 7 + this.gen)], (l) => {
      if (l.startsWith('C ')) {
        this.sqliteRows = Number(l.split(' ')[2]);
        this.lastProgress = Date.now();
      }
    });
  }
}
