/**
 * `npm run bench:churn`: does the default store stay as fast and as small as it started when files are written
 * and rewritten for minutes? (issue 12: an embedded store whose cost per byte does not grow with churn.)
 *
 * One kvfs mount of a fresh local: store (in a temp dir of --data-dir, default the OS temp dir: a disk). Rounds
 * until --minutes pass, each: a file of --file-mib rewritten in place with 1 MiB writes (fio, fsync at the end),
 * then --random-s seconds of 4 KiB random writes to it with an fsync every 64 (fio: slices and compaction),
 * then a second file written whole and deleted (blobs freed and collected). After each round the daemon is let
 * go idle and the store's size on disk (du -sk) is taken. Printed per round, and first against last: the
 * sequential rate, the random IOPS and the store's size. Flat (last/first near 1 for the rates, the size not
 * growing round after round) is the claim; a machine's noise is a few percent between rounds.
 *
 *   npm run bench:churn -- [--minutes 5] [--file-mib 1024] [--random-s 15] [--data-dir DIR]
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import {
  atExit, diskUsage, fioWrites, fmt, forceUnmount, kvfsBin, kvfsMount, kvfsUnmount, mib, quietness, removeDir, run, say, stamp,
  waitIdle,
} from './common.js';

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '5' },
    'file-mib': { type: 'string', default: '1024' },
    'random-s': { type: 'string', default: '15' },
    'data-dir': { type: 'string', default: os.tmpdir() },
  },
});
const minutes = Number(values.minutes);
const fileBytes = Number(values['file-mib']) * 2 ** 20;
const randomS = Number(values['random-s']);

interface Round { seqMbs: number; randIops: number; storeBytes: number; at: number }

async function fio(name: string, file: string, lines: string[]): Promise<{ mbs: number; iops: number }> {
  const job = path.join(work, `${name}.fio`);
  writeFileSync(job, [`[${name}]`, `filename=${file}`, 'ioengine=psync', ...lines, ''].join('\n'));
  const r = await run('fio', ['--output-format=json', job], { timeoutMs: 1_800_000 });
  if (r.code !== 0) throw new Error(`fio ${name} failed (exit ${r.code}): ${r.stderr.trim().split('\n').pop() ?? ''}`);
  const w = fioWrites(r.stdout);
  if (!w) throw new Error(`fio ${name} reported no writes`);
  return w;
}

const work = mkdtempSync(path.join(values['data-dir'], 'kvfs-churn-'));
const storeDir = path.join(work, 'store');
const mnt = path.join(work, 'mnt');

async function main(): Promise<number> {
  const q = await quietness(2000);
  say(`${q.text}`);
  const fmtRun = await run(process.execPath, [kvfsBin, 'format', `local:${storeDir}`], { timeoutMs: 60_000 });
  if (fmtRun.code !== 0) throw new Error(`kvfs format failed: ${fmtRun.stderr.trim()}`);
  mkdirSync(mnt, { recursive: true });
  const m = await kvfsMount(`local:${storeDir}`, mnt, [], { KVFS_DATA_DIR: work });
  const unregister = atExit(() => forceUnmount(mnt));
  const rounds: Round[] = [];
  const started = Date.now();
  try {
    const file = path.join(mnt, 'churned');
    const other = path.join(mnt, 'other');
    await fio('layout', file, ['rw=write', 'bs=1M', `size=${fileBytes}`, 'end_fsync=1']);
    while (Date.now() - started < minutes * 60_000) {
      const seq = await fio('rewrite', file, ['rw=write', 'bs=1M', `size=${fileBytes}`, 'end_fsync=1']);
      const rand = await fio('random', file, ['rw=randwrite', 'bs=4k', `size=${fileBytes}`, 'fsync=64', 'time_based=1', `runtime=${randomS}`]);
      await fio('other', other, ['rw=write', 'bs=1M', `size=${Math.min(fileBytes, 256 << 20)}`, 'end_fsync=1']);
      const rm = await run('rm', ['-f', other], { timeoutMs: 600_000 });
      if (rm.code !== 0) throw new Error(`rm failed: ${rm.stderr.trim()}`);
      await waitIdle(m.pid, 5, 1000, 300_000);
      const storeBytes = diskUsage(storeDir) ?? NaN;
      const r = { seqMbs: seq.mbs, randIops: rand.iops, storeBytes, at: (Date.now() - started) / 1000 };
      rounds.push(r);
      say(`round ${rounds.length} at ${fmt(r.at)} s: rewrite ${fmt(r.seqMbs, 1)} MB/s, random 4 KiB ${fmt(r.randIops)} IOPS, store ${mib(r.storeBytes)}`);
    }
  } finally {
    const problems = await kvfsUnmount(m);
    unregister();
    for (const p of problems) say(p);
    removeDir(work);
  }
  if (rounds.length < 2) {
    say('fewer than two rounds: give more --minutes');
    return 1;
  }
  const first = rounds[0]!;
  const last = rounds[rounds.length - 1]!;
  const lines = [
    `# kvfs churn ${stamp(new Date(started))}: local: store, ${rounds.length} rounds in ${fmt(last.at)} s, file ${mib(fileBytes, 0)}, ${randomS} s of random writes per round`,
    '',
    '| round | at (s) | rewrite MB/s | random 4 KiB IOPS | store on disk |',
    '|---:|---:|---:|---:|---:|',
    ...rounds.map((r, i) => `| ${i + 1} | ${fmt(r.at)} | ${fmt(r.seqMbs, 1)} | ${fmt(r.randIops)} | ${mib(r.storeBytes)} |`),
    '',
    `last / first: rewrite ${fmt(last.seqMbs / first.seqMbs, 2)}, random ${fmt(last.randIops / first.randIops, 2)}, store size ${fmt(last.storeBytes / first.storeBytes, 2)}`,
  ];
  console.log(lines.join('\n'));
  return 0;
}

main().then((code) => process.exit(code), (e: unknown) => {
  say(`failed: ${(e as Error).message}`);
  forceUnmount(mnt);
  removeDir(work);
  process.exit(1);
});
