/**
 * The memory-burst bench: bursts of requests against one kvfs-native mount, with the daemon's memory and its
 * buffer pool sampled every 100 ms, and a check that the daemon's peak memory stays within what it was given.
 *
 *   npm run bench:burst -- [--pool-mb 64] [--cache-mb 64] [--write-buffer-mb 64] [--files 100000] [--quick] ...
 *
 * Phases, one after the other on one mount (`kvfs mount memory: MNT --buffer-pool-mb P --cache-mb C
 * --write-buffer-mb W`):
 *   a1  create FILES empty files in DIRS directories (burst-helper.c, 4 processes)
 *   a2  stat every one of them (LOOKUP and GETATTR)
 *   a3  drop the kernel's caches (echo 3 > /proc/sys/vm/drop_caches): a FORGET storm; ends when the daemon's
 *       lookup table stops shrinking
 *   b   64 processes stat() random files for some seconds, the caches dropped again every 2 s
 *   c   16 writers (fio, psync, O_DIRECT) each write 64 MiB in 1 MiB blocks, each to its own file
 * Every 100 ms: the daemon's VmRSS and VmHWM (/proc/PID/status) and its stats, asked for through its control
 * socket (channel, session, pool, kernel inodes, fs caches, memory per part; how long the answer took is kept). VmHWM is reset at the start of each phase
 * (/proc/PID/clear_refs), so each phase's peak is exact, whatever the sampling missed.
 *
 * The check, printed PASS or FAIL with its numbers:
 *   peak RSS <= fixed overhead + pool capacity + --cache-mb + --write-buffer-mb + store content
 * - fixed overhead: the daemon's idle RSS right after the mount, less the pool's arena (which the pool
 *   touches when it is made, so it is already in that RSS).
 * - store content: a `memory:` store keeps the volume in the daemon. File data: the bytes the volume holds
 *   (statfs on the mount, at the end). Metadata: the growth of the idle RSS over phase a (FILES files
 *   created, looked up and forgotten again), an upper bound: it includes anything else the daemon kept.
 * A request failed when any tool exits non-zero or reports an error, a phase times out (a hang), the daemon
 * dies, the mount stops answering, the session counts parse errors or reply failures, or the daemon's log has
 * anything beyond the ordinary lines. Any of these makes the exit status 1.
 *
 * Saved to bench/out/BURST-<date>.md, the samples to burst-<date>.csv, the daemon's log to logs-<date>/.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, statfsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { askDaemon, connectTo } from '../bin/diag.js';
import { decodePprof } from '../src/diag/pprof.js';
import type { ControlClient } from '../src/diag/control.js';
import { mountAt } from '../src/fs/fuse/mount-table.js';
import {
  atExit, fmt, forceUnmount, gitVersion, howEnded, isAlive, isMounted, kvfsMount, kvfsUnmount, MIB, mib,
  procMemory, quietness, removeWork, repoRoot, resetPeak, run, say, sleep, stamp, stopDaemon, unexpectedLogLines,
  type KvfsMount, type RunResult,
} from './common.js';

// ---------------------------------------------------------------------------------------------------------
// the daemon's stats (the shape of NativeMount.stats(), as far as this bench reads it)

interface ClassStats { size: number; count: number; inUse: number; free: number; highWater: number }
interface DaemonStats {
  channel: { requests: number; inlineRequests: number; poolWaits: number; wakes: number; maxQueue: number; stocked: number };
  session: { requests: number; inFlight: number; errors: number; parseErrors: number; replyFailures: number };
  pool: {
    capacityBytes: number; inUseBytes: number; highWaterBytes: number; waiters: number; totalWaits: number;
    totalWaitMs: number; classes: ClassStats[];
  };
  /** inodes the kernel holds lookups on (`lookups` in earlier versions) */
  kernelInodes?: number;
  lookups?: number;
  fs?: {
    openFiles: number; writeBackBytes: number; writeBackHighWater: number; blobCacheBytes: number;
    blobCacheHits: number; blobCacheMisses: number; idleChunkBuffers: number;
  };
  /** the daemon's memory report (bin/diag.ts memoryReport) */
  memory?: { rss: number; parts: { name: string; bytes: number }[] };
}

const kernelInodes = (s: DaemonStats | undefined): number => s?.kernelInodes ?? s?.lookups ?? NaN;

interface Sample {
  t: number;
  phase: string;
  rss: number;
  hwm: number;
  stats?: DaemonStats;
  /** ms the daemon took to answer its stats (the control socket, served by its event loop) */
  statsAge: number;
}

/** Samples the daemon every `everyMs`: memory from /proc, stats through its control socket (one connection). */
class Sampler {
  readonly samples: Sample[] = [];
  phase = 'mount';
  maxGapMs = 0;
  maxStatsAgeMs = 0;
  private timer?: NodeJS.Timeout;
  private last = 0;
  private client?: ControlClient;
  /** the stats asked for last: one at a time on the connection */
  private asking: Promise<unknown> = Promise.resolve();
  lastStats?: DaemonStats;

  constructor(private readonly pid: number, private readonly mnt: string, private readonly t0: number) {}

  start(everyMs: number): void {
    this.timer = setInterval(() => void this.sample(), everyMs);
    void this.sample();
  }

  stop(): void {
    clearInterval(this.timer);
    this.client?.close();
  }

  async sample(): Promise<Sample | undefined> {
    const now = Date.now();
    if (this.last) this.maxGapMs = Math.max(this.maxGapMs, now - this.last);
    this.last = now;
    const mem = procMemory(this.pid);
    if (!mem) return undefined;
    const s: Sample = { t: now - this.t0, phase: this.phase, rss: mem.rss, hwm: mem.hwm, statsAge: NaN };
    this.samples.push(s);
    const ask = this.asking.then(async () => {
      try {
        const m = mountAt(this.mnt);
        if (!m) return;
        this.client ??= await connectTo(m);
        const asked = Date.now();
        s.stats = this.lastStats = (await this.client.request('stats', {}, 10_000)) as DaemonStats;
        s.statsAge = Date.now() - asked;
        if (s.statsAge > this.maxStatsAgeMs) this.maxStatsAgeMs = s.statsAge;
      } catch {
        // the daemon is gone, or did not answer in time: the next sample connects again
        this.client?.close();
        this.client = undefined;
      }
    });
    this.asking = ask;
    await ask;
    return s;
  }

  of(phase: string): Sample[] {
    return this.samples.filter((s) => s.phase === phase);
  }

  /** stats asked for now */
  async fresh(): Promise<DaemonStats | undefined> {
    return (await this.sample())?.stats ?? this.lastStats;
  }

  csv(): string {
    const head = 't_ms,phase,rss_bytes,hwm_bytes,pool_in_use_bytes,pool_waiters,pool_total_waits,kernel_inodes,' +
      'in_flight,requests,write_back_bytes,blob_cache_bytes,stats_answer_ms';
    return [head, ...this.samples.map((s) => [
      s.t, s.phase, s.rss, s.hwm, s.stats?.pool.inUseBytes ?? '', s.stats?.pool.waiters ?? '',
      s.stats?.pool.totalWaits ?? '', s.stats ? kernelInodes(s.stats) : '', s.stats?.session.inFlight ?? '',
      s.stats?.session.requests ?? '', s.stats?.fs?.writeBackBytes ?? '', s.stats?.fs?.blobCacheBytes ?? '',
      Number.isNaN(s.statsAge) ? '' : Math.round(s.statsAge),
    ].join(','))].join('\n') + '\n';
  }
}

// ---------------------------------------------------------------------------------------------------------

interface PhaseResult {
  id: string;
  what: string;
  seconds: number;
  /** what the tool said, or the outcome */
  outcome: string;
  ok: boolean;
  /** VmHWM at the end of the phase (reset at its start) */
  peakRss: number;
  rssBefore: number;
  poolInUsePeak: number;
  waits: number;
  errorReplies: number;
  requests: number;
  lookupsEnd: number;
  /** the heap profile dumped at the phase's end: sampled bytes allocated by the request path as Buffers, of all */
  requestBufferBytes: number;
  sampledBytes: number;
  /** buffers the pool holds in all (in use and free), at the end */
  poolBuffers: number;
  /** the daemon's memory report at the end: RSS and what it could not explain ("other") */
  rss: number;
  unexplained: number;
  parts: string;
}

/** the heap profiler's sampling interval in the burst: a sample every 64 KiB allocated */
const HEAP_INTERVAL = 64 * 1024;
/** the memory report's stated margin: what the daemon cannot explain ("other") stays under this share of its RSS */
const UNEXPLAINED_MARGIN = 0.1;
/** the request path's share of the sampled bytes the heap profile may show */
const REQUEST_BUFFER_LIMIT = 0.01;

const USAGE = `usage: npm run bench:burst -- [options]
  --pool-mb N          kvfs mount --buffer-pool-mb (default 64)
  --cache-mb N         kvfs mount --cache-mb (default 64)
  --write-buffer-mb N  kvfs mount --write-buffer-mb (default 64)
  --store URL          the store (default memory:, which the check assumes: it counts the store's content)
  --files N            files to create in phase a (default 100000; 10000 with --quick)
  --dirs N             directories they are spread over (default 10)
  --stat-procs N       phase b's concurrent stat loops (default 64)
  --stat-seconds S     phase b's length (default 10; 3 with --quick)
  --drop-every S       phase b drops the caches every S seconds (default 2; 0: never)
  --writers N          phase c's concurrent writers (default 16)
  --writer-mib N       MiB each writer writes in 1 MiB O_DIRECT blocks (default 64; 16 with --quick)
  --quick              a smoke run`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      'pool-mb': { type: 'string', default: '64' },
      'cache-mb': { type: 'string', default: '64' },
      'write-buffer-mb': { type: 'string', default: '64' },
      store: { type: 'string', default: 'memory:' },
      files: { type: 'string' },
      dirs: { type: 'string', default: '10' },
      'stat-procs': { type: 'string', default: '64' },
      'stat-seconds': { type: 'string' },
      'drop-every': { type: 'string', default: '2' },
      writers: { type: 'string', default: '16' },
      'writer-mib': { type: 'string' },
      quick: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const num = (name: string, v: string | undefined, dflt: number): number => {
    const n = v === undefined ? dflt : Number(v);
    if (!(Number.isFinite(n) && n >= 0)) throw new Error(`bad --${name} '${v}'`);
    return n;
  };
  const quick = values.quick;
  const poolMb = num('pool-mb', values['pool-mb'], 64);
  const cacheMb = num('cache-mb', values['cache-mb'], 64);
  const wbMb = num('write-buffer-mb', values['write-buffer-mb'], 64);
  const files = num('files', values.files, quick ? 10_000 : 100_000);
  const dirs = Math.max(1, Math.min(100, num('dirs', values.dirs, 10)));
  const perDir = Math.ceil(files / dirs);
  const nfiles = perDir * dirs;
  const statProcs = num('stat-procs', values['stat-procs'], 64);
  const statSeconds = num('stat-seconds', values['stat-seconds'], quick ? 3 : 10);
  const dropEvery = num('drop-every', values['drop-every'], 2);
  const writers = num('writers', values.writers, 16);
  const writerMib = num('writer-mib', values['writer-mib'], quick ? 16 : 64);
  const store = values.store;
  const root = process.getuid?.() === 0;
  if (!root) say('not root: the caches cannot be dropped, so there will be no FORGET storm (phase a3, and none in b)');

  const started = new Date();
  const outDir = path.join(repoRoot, 'bench/out');
  const logDir = path.join(outDir, `logs-${stamp(started)}`);
  mkdirSync(logDir, { recursive: true });
  const work = mkdtempSync(path.join(os.tmpdir(), 'kvfs-burst-'));
  atExit(() => removeWork(work));
  const version = gitVersion();
  const quiet0 = await quietness();
  say(quiet0.text.replace(/\*/g, ''));

  // tools
  const helper = path.join(work, 'burst-helper');
  const cc = spawnSync('cc', ['-O2', '-Wall', '-o', helper, path.join(repoRoot, 'bench/burst-helper.c')], { stdio: 'inherit' });
  if (cc.status !== 0) throw new Error('building bench/burst-helper.c failed (cc -O2)');
  if (spawnSync('fio', ['--version'], { stdio: 'ignore' }).status !== 0) throw new Error('fio is not installed');

  const mnt = path.join(work, 'mnt');
  mkdirSync(mnt);
  const mountArgs = ['--driver', 'native', '--buffer-pool-mb', String(poolMb), '--cache-mb', String(cacheMb), '--write-buffer-mb', String(wbMb)];
  say(`mounting ${store} at ${mnt}: ${mountArgs.join(' ')}`);
  const m: KvfsMount = await kvfsMount(store, mnt, mountArgs, { KVFS_DATA_DIR: logDir });
  const unregister = atExit(() => {
    forceUnmount(mnt);
    stopDaemon(m.pid);
  });
  const sampler = new Sampler(m.pid, mnt, Date.now());
  sampler.start(100);

  const problems: string[] = [];
  const phases: PhaseResult[] = [];
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (stopping) process.exit(1);
    stopping = true;
    say(`${sig}: stopping; the mount is torn down on the way out`);
    process.exit(sig === 'SIGINT' ? 130 : 143); // the exit hooks kill the tools, unmount and stop the daemon
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  /** the daemon is alive and the mount answers (a stat of its root within 10 s) */
  const healthy = async (): Promise<string | undefined> => {
    if (!isAlive(m.pid)) return `the daemon (pid ${m.pid}) is gone`;
    if (!isMounted(mnt)) return `${mnt} is no longer mounted`;
    const r = await run('stat', ['-c', '%i', mnt], { timeoutMs: 10_000 });
    return r.code === 0 ? undefined : `stat ${mnt}: ${howEnded(r)} ${r.stderr.trim()}`;
  };

  /** median RSS over a second of quiet, after `settleMs` */
  const idleRss = async (settleMs: number): Promise<number> => {
    await sleep(settleMs);
    const rs: number[] = [];
    for (let i = 0; i < 10; i++, await sleep(100)) rs.push(procMemory(m.pid)?.rss ?? NaN);
    rs.sort((a, b) => a - b);
    return rs[5]!;
  };

  const dropCaches = (): Promise<RunResult> => run('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches'], { timeoutMs: 120_000 });

  /** runs one phase: resets the peak, runs `body`, and records the phase's figures */
  const phase = async (id: string, what: string, body: () => Promise<{ ok: boolean; outcome: string }>): Promise<boolean> => {
    if (stopping) return false;
    const rssBefore = procMemory(m.pid)?.rss ?? NaN;
    const before = await sampler.fresh();
    if (!resetPeak(m.pid)) problems.push('cannot reset VmHWM (/proc/PID/clear_refs): phase peaks are peaks since the mount');
    sampler.phase = id;
    say(`${id}: ${what}`);
    const t = Date.now();
    let r: { ok: boolean; outcome: string };
    try {
      r = await body();
    } catch (e) {
      r = { ok: false, outcome: (e as Error).message };
    }
    const seconds = (Date.now() - t) / 1000;
    const mem = procMemory(m.pid);
    const after = await sampler.fresh();
    const heap = await requestBufferShare().catch((e: Error) => {
      problems.push(`${id}: no heap profile: ${e.message}`);
      return { request: NaN, all: NaN };
    });
    sampler.phase = `${id}-end`;
    const health = await healthy();
    if (health) r = { ok: false, outcome: `${r.outcome}; ${health}` };
    if (!r.ok) problems.push(`${id} (${what}): ${r.outcome}`);
    const inUse = sampler.of(id).map((s) => s.stats?.pool.inUseBytes ?? 0);
    phases.push({
      id, what, seconds, outcome: r.outcome, ok: r.ok, rssBefore,
      peakRss: Math.max(mem?.hwm ?? 0, ...sampler.of(id).map((s) => s.rss)),
      poolInUsePeak: Math.max(0, ...inUse),
      waits: (after?.pool.totalWaits ?? 0) - (before?.pool.totalWaits ?? 0),
      errorReplies: (after?.session.errors ?? 0) - (before?.session.errors ?? 0),
      requests: (after?.session.requests ?? 0) - (before?.session.requests ?? 0),
      lookupsEnd: kernelInodes(after),
      requestBufferBytes: heap.request, sampledBytes: heap.all,
      poolBuffers: after?.pool.classes.reduce((n, c) => n + c.count, 0) ?? NaN,
      rss: after?.memory?.rss ?? NaN,
      unexplained: after?.memory?.parts.find((p) => p.name === 'other')?.bytes ?? NaN,
      parts: after?.memory?.parts.map((p) => `${p.name} ${mib(p.bytes)}`).join(', ') ?? '?',
    });
    say(`${id}: ${r.outcome} in ${seconds.toFixed(1)} s; peak RSS ${mib(phases[phases.length - 1]!.peakRss)}`);
    return r.ok && !health;
  };

  /** a burst-helper run as a phase body */
  const helperRun = async (args: string[], timeoutMs: number): Promise<{ ok: boolean; outcome: string }> => {
    const r = await run(helper, [args[0]!, mnt, String(dirs), String(perDir), ...args.slice(1)], { timeoutMs, echo: true });
    const out = r.stdout.trim() || r.stderr.trim().split('\n').pop() || '';
    return { ok: r.code === 0, outcome: r.code === 0 ? out : `${howEnded(r)}: ${out}` };
  };

  /** one request to the daemon's control socket */
  const control = (cmd: string, args: Record<string, unknown> = {}): Promise<unknown> => askDaemon(mountAt(mnt)!, cmd, args, 60_000);
  /**
   * The heap profile now (V8's sampling profiler, allocations kept): of the sampled bytes V8 allocated, those
   * the request path (a frame of src/fs/fuse/) allocated as Buffers (a frame of node:buffer, or Buffer code).
   */
  const requestBufferShare = async (): Promise<{ request: number; all: number }> => {
    const { pprof } = (await control('heap-dump')) as { pprof: string };
    const p = decodePprof(Buffer.from(pprof, 'base64'));
    const str = (i: unknown) => p.stringTable.strings[Number(i)] ?? '';
    const fnOf = new Map(p.function.map((f) => [Number(f.id), { name: str(f.name), file: str(f.filename) }]));
    const frames = new Map(p.location.map((l) => [Number(l.id), l.line.map((ln) => fnOf.get(Number(ln.functionId))!)]));
    const space = p.sampleType.findIndex((t) => str(t.type) === 'space');
    let request = 0;
    let all = 0;
    for (const smp of p.sample) {
      const stack = smp.locationId.flatMap((id) => frames.get(Number(id)) ?? []);
      if (stack.some((f) => f.name.startsWith('[off-heap]'))) continue;
      const bytes = Number(smp.value[space]);
      all += bytes;
      const inRequestPath = stack.some((f) => f.file.includes('/src/fs/fuse/'));
      const buffer = stack.some((f) => f.file === 'node:buffer' || f.file.startsWith('node:internal/buffer') || /^(FastBuffer|allocUnsafe|allocUnsafeSlow|createUnsafeBuffer)$/.test(f.name));
      if (inRequestPath && buffer) request += bytes;
    }
    return { request, all };
  };

  let idleMount = NaN;
  let idleAfterA = NaN;
  let idleEnd = NaN;
  let dataBytes = NaN;
  let final: DaemonStats | undefined;
  let teardownProblems: string[] = [];
  let logLines: string[] = [];
  try {
    idleMount = await idleRss(2000);
    const s0 = await sampler.fresh();
    if (!s0) throw new Error(`the daemon of ${mnt} answers no stats on its control socket (kvfs stats ${mnt})`);
    say(`idle RSS after mount ${mib(idleMount)}; pool capacity ${mib(s0.pool.capacityBytes)}`);
    // every phase ends with a heap profile: V8's sampling heap profiler on from here, collected objects kept
    await control('heap-start', { interval: HEAP_INTERVAL, allocations: true });

    let ok = await phase('a1', `create ${fmt(nfiles)} files in ${dirs} directories (4 processes)`,
      () => helperRun(['create', '4'], 1_800_000));
    if (ok) {
      await sleep(1100); // past the entry timeout: the stats below look every name up again
      ok = await phase('a2', `stat all ${fmt(nfiles)} files (4 processes)`, () => helperRun(['stat', '4'], 1_200_000));
    }
    if (ok && root) {
      ok = await phase('a3', 'drop caches: FORGET storm', async () => {
        const from = kernelInodes(await sampler.fresh());
        const r = await dropCaches();
        if (r.code !== 0) return { ok: false, outcome: `drop_caches: ${howEnded(r)} ${r.stderr.trim()}` };
        // the storm is over when the daemon's lookup table has not shrunk for a second (60 s at most)
        let last = NaN;
        let steady = 0;
        for (const end = Date.now() + 60_000; Date.now() < end && steady < 10; await sleep(100)) {
          const n = kernelInodes(sampler.lastStats);
          steady = n === last || Number.isNaN(n) ? steady + 1 : 0;
          last = n;
        }
        return { ok: true, outcome: `kernel inodes ${fmt(from)} -> ${fmt(last)}` };
      });
    }
    idleAfterA = await idleRss(2000);
    if (ok) {
      ok = await phase('b', `${statProcs} stat loops for ${statSeconds} s${root && dropEvery ? `, caches dropped every ${dropEvery} s` : ''}`, async () => {
        let dropping = root && dropEvery > 0;
        const drops: Promise<RunResult>[] = [];
        const dropper = (async () => {
          while (dropping) {
            await sleep(dropEvery * 1000);
            if (dropping) drops.push(dropCaches());
          }
        })();
        const r = await helperRun(['statloop', String(statProcs), String(statSeconds)], statSeconds * 1000 + 300_000);
        dropping = false;
        await dropper;
        const bad = (await Promise.all(drops)).filter((d) => d.code !== 0);
        if (bad.length) return { ok: false, outcome: `${r.outcome}; drop_caches failed ${bad.length} time(s)` };
        return { ...r, outcome: `${r.outcome}${drops.length ? `; ${drops.length} drops` : ''}` };
      });
    }
    if (ok) {
      await phase('c', `${writers} writers x ${writerMib} MiB, 1 MiB O_DIRECT writes (fio psync)`, async () => {
        const wdir = path.join(mnt, 'w');
        mkdirSync(wdir);
        const r = await run('fio', [
          '--name=burst-write', `--directory=${wdir}`, '--rw=write', '--bs=1M', `--size=${writerMib}M`,
          `--numjobs=${writers}`, '--direct=1', '--ioengine=psync', '--group_reporting', '--output-format=json',
        ], { timeoutMs: 1_200_000, echo: true });
        let out = '';
        try {
          const j = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: { write: { bw_bytes: number; io_bytes: number } }[] };
          const w = j.jobs[0]!.write;
          out = `${mib(w.io_bytes, 0)} written at ${fmt(w.bw_bytes / 1e6, 1)} MB/s`;
        } catch {
          out = r.stdout.trim().split('\n').slice(-2).join(' ');
        }
        return { ok: r.code === 0, outcome: r.code === 0 ? out : `fio ${howEnded(r)}: ${out}` };
      });
    }
    idleEnd = await idleRss(2000);
    try {
      const st = statfsSync(mnt);
      dataBytes = (st.blocks - st.bfree) * st.bsize;
    } catch (e) {
      problems.push(`statfs ${mnt}: ${(e as Error).message}`);
    }
    final = await sampler.fresh();
  } finally {
    sampler.stop();
    teardownProblems = await kvfsUnmount(m);
    unregister();
    logLines = unexpectedLogLines(m.log);
    removeWork(work);
  }
  problems.push(...teardownProblems);
  for (const p of phases) {
    if (!(p.requestBufferBytes / p.sampledBytes < REQUEST_BUFFER_LIMIT)) {
      problems.push(`${p.id}: the request path allocated ${mib(p.requestBufferBytes)} of ${mib(p.sampledBytes)} sampled bytes as Buffers (limit ${REQUEST_BUFFER_LIMIT * 100}%)`);
    }
    if (!(Math.abs(p.unexplained / p.rss) <= UNEXPLAINED_MARGIN)) {
      problems.push(`${p.id}: the memory report leaves ${mib(p.unexplained)} of ${mib(p.rss)} RSS unexplained (margin ${UNEXPLAINED_MARGIN * 100}%)`);
    }
  }
  if (new Set(phases.map((p) => p.poolBuffers)).size > 1) problems.push(`the pool's buffer count changed between phases: ${phases.map((p) => p.poolBuffers).join(', ')}`);
  if (logLines.length) problems.push(`the daemon's log (${m.log}) has ${logLines.length} unexpected line(s): ${logLines.slice(0, 5).join(' | ')}`);
  if (final && (final.session.parseErrors || final.session.replyFailures)) {
    problems.push(`the session counted ${final.session.parseErrors} parse error(s) and ${final.session.replyFailures} reply failure(s)`);
  }

  // ------------------------------------------------------------------------------------------- the report
  const pool = final?.pool;
  const capacity = pool?.capacityBytes ?? poolMb * MIB;
  const peak = Math.max(0, ...phases.map((p) => p.peakRss), ...sampler.samples.map((s) => s.rss));
  const fixed = idleMount - capacity;
  const meta = Math.max(0, idleAfterA - idleMount);
  const storeBytes = (Number.isNaN(dataBytes) ? 0 : dataBytes) + meta;
  const budget = fixed + capacity + cacheMb * MIB + wbMb * MIB + storeBytes;
  const pass = peak > 0 && peak <= budget;
  const failed = problems.length > 0;
  const quiet1 = await quietness();
  const cls = (c: ClassStats): string => {
    const [m, k] = [Math.floor(c.size / MIB), Math.round((c.size % MIB) / 1024)];
    return m ? `${m} MiB${k ? `+${k} KiB` : ''}` : `${k} KiB`;
  };

  const lines: string[] = [];
  lines.push(`# kvfs memory burst ${started.toISOString()}`, '');
  lines.push(`${os.hostname()}, Linux ${os.release()}, ${os.cpus().length} CPUs, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ` +
    `Node ${process.version}. At the start: ${quiet0.text}; at the end: ${quiet1.text}.`, '');
  lines.push(`kvfs ${version} (dist/ compiled at the start).`, '');
  lines.push(`Mount: \`kvfs mount ${store} MNT ${mountArgs.join(' ')}\` (defaults otherwise: 2 readers, no writeback cache). ` +
    `Daemon memory (VmRSS, VmHWM) and stats sampled every 100 ms: ${sampler.samples.length} samples, ` +
    `longest gap between samples ${sampler.maxGapMs} ms, longest the daemon took to answer its stats ${Math.round(sampler.maxStatsAgeMs)} ms.`, '');
  lines.push('| phase | what | s | result | peak RSS | over RSS at start | pool in use (sampled peak) | pool waits | requests | error replies | kernel inodes at end |');
  lines.push('|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const p of phases) {
    lines.push(`| ${p.id} | ${p.what} | ${p.seconds.toFixed(1)} | ${p.ok ? '' : '**FAILED** '}${p.outcome} | ${mib(p.peakRss)} | ` +
      `${mib(p.peakRss - p.rssBefore)} | ${mib(p.poolInUsePeak)} | ${fmt(p.waits)} | ${fmt(p.requests)} | ${fmt(p.errorReplies)} | ${fmt(p.lookupsEnd)} |`);
  }
  lines.push('', '"error replies" counts every error answer, ENOENT included (a1 looks each new name up before creating it).', '');
  lines.push(`Heap profile at each phase's end (V8's sampling heap profiler on since the mount, a sample every ${HEAP_INTERVAL / 1024} KiB ` +
    'allocated, collected objects kept), the pool, and the memory report (`kvfs stats`: the parts add up to the RSS; ' +
    `"other" is what the daemon cannot explain, stated margin ${UNEXPLAINED_MARGIN * 100}% of the RSS):`, '');
  lines.push('| phase | request-path Buffer bytes / sampled bytes | pool buffers | RSS | other (unexplained) | parts |');
  lines.push('|---|---:|---:|---:|---:|---|');
  for (const p of phases) {
    const share = p.requestBufferBytes / p.sampledBytes;
    const other = p.unexplained / p.rss;
    lines.push(`| ${p.id} | ${(share * 100).toFixed(3)}% (${mib(p.requestBufferBytes)} of ${mib(p.sampledBytes)})${share < REQUEST_BUFFER_LIMIT ? '' : ' **over 1%**'} | ` +
      `${fmt(p.poolBuffers)} | ${mib(p.rss)} | ${mib(p.unexplained)} (${(other * 100).toFixed(1)}%)${Math.abs(other) <= UNEXPLAINED_MARGIN ? '' : ' **over the margin**'} | ${p.parts} |`);
  }
  const buffers = new Set(phases.map((p) => p.poolBuffers));
  lines.push('', `Pool buffers at every phase's end: ${[...buffers].map(fmt).join(', ')}` +
    `${buffers.size === 1 ? ' (the same: the request path took every buffer from the pool; none was allocated after the mount)' : ' (**changed**)'}.`, '');
  lines.push(`- Idle RSS: ${mib(idleMount)} right after the mount, ${mib(idleAfterA)} after phase a, ${mib(idleEnd)} at the end.`);
  lines.push(`- Fixed overhead: ${mib(idleMount)} idle after the mount - ${mib(capacity)} pool arena (touched when the pool is made) = **${mib(fixed)}**.`);
  if (pool) {
    lines.push(`- Pool: capacity ${mib(capacity)} (${pool.classes.map((c) => `${cls(c)} x ${c.count}`).join(', ')}); ` +
      `high-water ${mib(pool.highWaterBytes)} (${fmt(pool.highWaterBytes)} bytes); per class (high-water/count): ` +
      `${pool.classes.map((c) => `${cls(c)} ${c.highWater}/${c.count}`).join(', ')}.`);
    lines.push(`- Waits: ${fmt(pool.totalWaits)} pool waits (${fmt(pool.totalWaitMs, 1)} ms in all), ` +
      `${fmt(final!.channel.poolWaits)} reader waits for a stocked buffer; in use at the end ${mib(pool.inUseBytes)} ` +
      `(${final!.channel.stocked} buffers stocked for the readers), ${pool.waiters} waiting.`);
    lines.push(`- Requests: ${fmt(final!.session.requests)} (${fmt(final!.channel.inlineRequests)} inline), ` +
      `${fmt(final!.session.errors)} error replies, ${final!.session.parseErrors} parse errors, ${final!.session.replyFailures} reply failures; ` +
      `reader queue peak ${fmt(final!.channel.maxQueue)}.`);
  }
  if (final?.fs) {
    const f = final.fs;
    lines.push(`- Caches: write-back buffers high-water ${mib(f.writeBackHighWater)} (of --write-buffer-mb ${wbMb}), ` +
      `blob cache ${mib(f.blobCacheBytes)} at the end (of --cache-mb ${cacheMb}; ${fmt(f.blobCacheHits)} hits, ` +
      `${fmt(f.blobCacheMisses)} misses), ${f.idleChunkBuffers} idle chunk buffers, ${f.openFiles} open files.`);
  }
  lines.push(`- Store content (${store}, held in the daemon): file data ${mib(dataBytes)} (statfs at the end) + metadata ${mib(meta)} ` +
    `(idle RSS growth over phase a: ${fmt(nfiles)} files) = ${mib(storeBytes)}.`);
  lines.push('', `**Check: peak RSS ${mib(peak)} ${pass ? '<=' : '>'} fixed ${mib(fixed)} + pool ${mib(capacity)} + cache ${mib(cacheMb * MIB)} ` +
    `+ write buffers ${mib(wbMb * MIB)} + store ${mib(storeBytes)} = ${mib(budget)}: ${pass ? 'PASS' : 'FAIL'}** ` +
    `(headroom ${mib(budget - peak)}).`);
  lines.push('', failed ? `**Failed requests or problems (${problems.length})**:` : 'No request failed: every tool exited 0 without errors, no phase hung, the daemon stayed up, the mount answered, its log is clean.');
  if (failed) lines.push('', ...problems.map((p) => `- ${p}`));
  lines.push('');
  const md = lines.join('\n');

  const file = path.join(outDir, `BURST-${stamp(started)}.md`);
  writeFileSync(file, md);
  writeFileSync(path.join(outDir, `burst-${stamp(started)}.csv`), sampler.csv());
  console.log(md);
  console.log(`saved to ${path.relative(process.cwd(), file)}, samples in bench/out/burst-${stamp(started)}.csv`);
  return failed || !pass ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    say(err instanceof Error ? (err.stack ?? err.message) : String(err));
    process.exit(2);
  },
);
