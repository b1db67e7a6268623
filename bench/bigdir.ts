/**
 * The big-directory bench: how long a cold `ls -l` of one directory of N entries takes on an LMDB volume, and
 * which requests reach the daemon per entry.
 *
 *   npm run bench:bigdir -- [--sizes 10000,50000,100000] [--runs 1] [--driver native] [--quick]
 *
 * One fresh LMDB volume (`kvfs format local:WORK/store`) in a temp dir, mounted with `kvfs mount --driver
 * native` (the default). For each N, a directory dN gets N empty regular files named f0000000 … through the
 * mount (a python3 process calling mknod(2), one LOOKUP and one MKNOD per file). Then, for each N and run: the
 * volume is remounted (nothing of it stays in the kernel's dentry, inode or attribute caches, nor in the daemon's
 * memory; the LMDB file stays in the page cache), and `LC_ALL=C ls -l WORK/mnt/dN > /dev/null` is timed.
 * Requests per opcode come from the daemon's stats (its control socket, bin/diag.ts), read before and after
 * each `ls` (native driver only: the libfuse driver keeps no per-opcode counts).
 *
 * The report: per N, seconds (the median of the runs), microseconds per entry, and the requests of each opcode
 * per entry. Saved to bench/out/BIGDIR-<date>.md, the daemon's logs to bench/out/logs-<date>/. The mount is
 * unmounted and the daemon stopped in every outcome (see common.ts's atExit). Exit status 1 when a tool
 * failed, `ls` listed the wrong number of entries, or the daemon's log has unexpected lines.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { daemonStats } from '../bin/diag.js';
import {
  atExit, fmt, forceUnmount, gitVersion, howEnded, kvfsBin, kvfsMount, kvfsUnmount, quietness, removeWork, repoRoot,
  run, say, stamp, stopDaemon, unexpectedLogLines, type KvfsMount,
} from './common.js';

const USAGE = `usage: npm run bench:bigdir -- [options]
  --sizes N,N,...   directory sizes (default 10000,50000,100000; 1000,5000 with --quick)
  --runs R          timed runs of ls -l per size, each after a remount; the median is reported (default 1)
  --driver D        native (default) or libfuse
  --quick           a smoke run`;

/** creates argv[2] entries f0000000 … in directory argv[1] with mknod(2); prints nothing, exits 1 on error */
const CREATE_PY = `
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    os.mknod(os.path.join(d, 'f%07d' % i), 0o100644)
`;

interface Row {
  n: number;
  seconds: number[];
  /** requests that reached the daemon during the (last) ls, by opcode */
  ops?: Record<string, number>;
  listed: number;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      sizes: { type: 'string' },
      runs: { type: 'string', default: '1' },
      driver: { type: 'string', default: 'native' },
      quick: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const sizes = (values.sizes ?? (values.quick ? '1000,5000' : '10000,50000,100000')).split(',').map(Number);
  if (!sizes.every((n) => Number.isInteger(n) && n > 0)) throw new Error(`bad --sizes '${values.sizes}'`);
  const runs = Number(values.runs);
  if (!(Number.isInteger(runs) && runs > 0)) throw new Error(`bad --runs '${values.runs}'`);
  const driver = values.driver!;
  if (driver !== 'native' && driver !== 'libfuse') throw new Error(`bad --driver '${driver}'`);

  const started = new Date();
  const outDir = path.join(repoRoot, 'bench/out');
  const logDir = path.join(outDir, `logs-${stamp(started)}`);
  mkdirSync(logDir, { recursive: true });
  const work = mkdtempSync(path.join(os.tmpdir(), 'kvfs-bigdir-'));
  atExit(() => removeWork(work));
  const version = gitVersion();
  const quiet0 = await quietness();
  say(quiet0.text.replace(/\*/g, ''));

  const store = `local:${path.join(work, 'store')}`;
  const mnt = path.join(work, 'mnt');
  mkdirSync(mnt);
  const mountArgs = ['--driver', driver];
  const env = { KVFS_DATA_DIR: logDir };
  const f = await run(process.execPath, [kvfsBin, 'format', store], { timeoutMs: 60_000, echo: true });
  if (f.code !== 0) throw new Error(`kvfs format ${store}: ${howEnded(f)} ${f.stderr.trim()}`);

  // a signal exits through process.exit, so the exit hooks (common.ts's atExit) unmount and stop the daemon
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      say(`${sig}: stopping; the mount is torn down on the way out`);
      process.exit(sig === 'SIGINT' ? 130 : 143);
    });
  }
  const problems: string[] = [];
  const logs: string[] = [];
  let m: KvfsMount | undefined;
  let unregister = (): void => {};
  const mount = async (): Promise<void> => {
    m = await kvfsMount(store, mnt, mountArgs, env);
    const mm = m;
    unregister = atExit(() => {
      forceUnmount(mnt);
      stopDaemon(mm.pid);
    });
  };
  const unmount = async (): Promise<void> => {
    if (!m) return;
    problems.push(...(await kvfsUnmount(m)));
    unregister();
    logs.push(m.log);
    m = undefined;
  };

  /** the daemon's requests by opcode now, through its control socket (native driver) */
  const opsNow = async (): Promise<Record<string, number> | undefined> => {
    if (driver !== 'native') return undefined;
    return ((await daemonStats(mnt)) as { session: { byOp: Record<string, number> } }).session.byOp;
  };

  const rows: Row[] = [];
  const createSeconds: number[] = [];
  try {
    await mount();
    for (const n of sizes) {
      const dir = path.join(mnt, `d${n}`);
      mkdirSync(dir);
      say(`creating ${fmt(n)} files in ${dir}`);
      const t = performance.now();
      const r = await run('python3', ['-c', CREATE_PY, dir, String(n)], { timeoutMs: 3_600_000, echo: true });
      if (r.code !== 0) throw new Error(`creating ${n} files: python3 ${howEnded(r)}`);
      createSeconds.push((performance.now() - t) / 1000);
    }
    for (const n of sizes) {
      const row: Row = { n, seconds: [], listed: NaN };
      for (let i = 0; i < runs; i++) {
        await unmount();
        await mount();
        const before = await opsNow();
        const t = performance.now();
        const r = await run('sh', ['-c', 'LC_ALL=C exec ls -l "$1" > /dev/null', 'sh', path.join(mnt, `d${n}`)], { timeoutMs: 3_600_000 });
        const s = (performance.now() - t) / 1000;
        if (r.code !== 0 || r.stderr.trim()) throw new Error(`ls -l d${n}: ${howEnded(r)} ${r.stderr.trim().split('\n')[0] ?? ''}`);
        const after = await opsNow();
        if (before && after) row.ops = Object.fromEntries(Object.keys(after).map((k) => [k, after[k]! - (before[k] ?? 0)]).filter(([, v]) => v));
        row.seconds.push(s);
        say(`ls -l of ${fmt(n)} entries: ${s.toFixed(2)} s`);
      }
      // every name listed, with its size and mode (outside the timing)
      const c = await run('sh', ['-c', 'LC_ALL=C ls -l "$1" | grep -c "^-rw-r--r-- 1 [^ ]* [^ ]* 0 "', 'sh', path.join(mnt, `d${n}`)], { timeoutMs: 3_600_000 });
      row.listed = Number(c.stdout.trim());
      if (row.listed !== n) problems.push(`ls -l of d${n} showed ${row.listed} empty -rw-r--r-- files, not ${n}`);
      rows.push(row);
    }
  } catch (e) {
    problems.push((e as Error).message);
  } finally {
    await unmount();
    for (const log of logs) {
      const lines = unexpectedLogLines(log);
      if (lines.length) problems.push(`the daemon's log (${log}) has ${lines.length} unexpected line(s): ${lines.slice(0, 5).join(' | ')}`);
    }
    removeWork(work);
  }

  // ------------------------------------------------------------------------------------------- the report
  const quiet1 = await quietness();
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const opNames = [...new Set(rows.flatMap((r) => Object.keys(r.ops ?? {})))].sort();
  const lines: string[] = [];
  lines.push(`# kvfs big directories ${started.toISOString()}`, '');
  lines.push(`${os.hostname()}, Linux ${os.release()}, ${os.cpus().length} CPUs, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ` +
    `Node ${process.version}. At the start: ${quiet0.text}; at the end: ${quiet1.text}.`, '');
  lines.push(`kvfs ${version}. Store: a fresh LMDB volume (local:). Mount: \`kvfs mount STORE MNT ${mountArgs.join(' ')}\` ` +
    '(default timeouts: entries and attributes 1 s), remounted before each timed `LC_ALL=C ls -l DIR > /dev/null`; ' +
    `${runs} run(s) per size, the median shown.`, '');
  lines.push(`Files made through the mount with mknod(2): ${rows.map((r, i) => `${fmt(r.n)} in ${createSeconds[i]?.toFixed(1)} s`).join(', ')}.`, '');
  lines.push(`| entries | s | µs per entry |${opNames.map((o) => ` ${o} |`).join('')}`);
  lines.push(`|---:|---:|---:|${opNames.map(() => '---:|').join('')}`);
  for (const r of rows) {
    const s = median(r.seconds);
    const per = (o: string): string => (r.ops ? `${fmt((r.ops[o] ?? 0) / r.n, 3)} (${fmt(r.ops[o] ?? 0)})` : 'n/a');
    lines.push(`| ${fmt(r.n)} | ${s.toFixed(2)} | ${fmt((s * 1e6) / r.n, 1)} |${opNames.map((o) => ` ${per(o)} |`).join('')}`);
  }
  if (opNames.length) lines.push('', 'Opcode columns: requests that reached the daemon during the `ls`, per entry listed (in all).');
  else if (driver !== 'native') lines.push('', 'No per-opcode counts: the libfuse driver keeps none.');
  lines.push('', problems.length ? `**Problems (${problems.length})**:` : 'No problems: every tool exited 0, every ls listed every entry, the logs are clean.');
  if (problems.length) lines.push('', ...problems.map((p) => `- ${p}`));
  lines.push('');
  const md = lines.join('\n');
  const file = path.join(outDir, `BIGDIR-${stamp(started)}.md`);
  writeFileSync(file, md);
  console.log(md);
  console.log(`saved to ${path.relative(process.cwd(), file)}`);
  return problems.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    say(err instanceof Error ? (err.stack ?? err.message) : String(err));
    process.exit(2);
  },
);
