/**
 * The volume tools on a large volume: `kvfs gc --sweep` and `kvfs fsck` over a volume of N small files, their
 * peak RSS and files per second (issue 14: under 200 MiB for 1,000,000 files).
 *
 *   npm run bench:volume-tools -- [--files 1000000] [--per-dir 1000]
 *
 * The volume (local:, LMDB, in a temp dir) is built through the volume layer (src/volume/inodes.ts), not through
 * FUSE: directories of --per-dir files, each file 100 bytes in one blob, 1,000 files per transaction. Then each
 * tool runs once as its own process under /usr/bin/time -v (peak RSS: "Maximum resident set size"), and the
 * report says seconds, files/s and peak RSS. Saved to bench/out/VOLTOOLS-<date>.md.
 */
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { openStore } from '../src/backend/open-store.js';
import { Volume } from '../src/volume/inodes.js';
import { K, encodeChunk } from '../src/volume/schema.js';
import { transact } from '../src/volume/txn.js';
import { ROOT_INO } from '../src/volume/types.js';
import { fmt, gitVersion, kvfsBin, removeWork, repoRoot, run, say, stamp } from './common.js';

const { values: args } = parseArgs({ options: { files: { type: 'string', default: '1000000' }, 'per-dir': { type: 'string', default: '1000' } } });
const files = Number(args.files);
const perDir = Number(args['per-dir']);
const work = mkdtempSync(path.join(os.tmpdir(), 'kvfs-voltools-'));
const url = `local:${path.join(work, 'store')}`;

async function build(): Promise<number> {
  const t0 = performance.now();
  const r = await run(process.execPath, [kvfsBin, 'format', url]);
  if (r.code !== 0) throw new Error(`format failed: ${r.stderr}`);
  const store = await openStore(url);
  const vol = new Volume(store);
  let inodes = 0;
  let bytes = 0;
  try {
    const dirs = Math.ceil(files / perDir);
    let next = (await store.incr(K.inoCounter, files + dirs + 16)) - (files + dirs + 16) + 2;
    for (let d = 0; d < dirs; d++) {
      const dirIno = next++;
      await transact(store, (tx) => vol.addNode(tx, ROOT_INO, `d${d}`, (_dir, t) => ({
        ino: dirIno, version: 0, mode: 0o40755, nlink: 2, uid: 0, gid: 0, rdev: 0, size: 4096, atime: t, mtime: t, ctime: t,
        parent: ROOT_INO, children: 0, stored: 0, truncFrom: 0,
      })));
      inodes++;
      const n = Math.min(perDir, files - d * perDir);
      for (let from = 0; from < n; from += 1000) {
        const batch: number[] = [];
        for (let i = from; i < Math.min(n, from + 1000); i++) batch.push(next++);
        await Promise.all(batch.map((ino) => store.put(K.blob(`bench.${ino}`), new Uint8Array(100).fill(ino & 0xff))));
        await transact(store, async (tx) => {
          for (const ino of batch) {
            await vol.addNode(tx, dirIno, `f${ino}`, (_dir, t) => ({
              ino, version: 0, mode: 0o100644, nlink: 1, uid: 0, gid: 0, rdev: 0, size: 100, atime: t, mtime: t, ctime: t,
              parent: 0, children: 0, stored: 100, truncFrom: 0,
            }));
            tx.set(K.chunk(ino, 0), encodeChunk(100, `bench.${ino}`));
          }
        });
        inodes += batch.length;
        bytes += 100 * batch.length;
      }
      if (d % 50 === 0) say(`built ${inodes} inodes`);
    }
    await store.incr(K.inodeCount, inodes);
    await store.incr(K.byteCount, bytes);
    await store.sync();
  } finally {
    await store.close();
  }
  return (performance.now() - t0) / 1000;
}

interface Measured { seconds: number; rssMiB: number; anonMiB: number; fileMiB: number; exit: number | null; tail: string }

/**
 * Runs a kvfs command under /usr/bin/time -v (its peak RSS: "Maximum resident set size") and samples the node
 * process's /proc/PID/status every 20 ms for the peaks of RssAnon (the heap, buffers) and RssFile (mapped file
 * pages: LMDB's data file, which a walk maps page by page; the kernel drops them under memory pressure).
 */
async function measure(argv: string[]): Promise<Measured> {
  const peaks = { anon: 0, file: 0 };
  let stop = false;
  const sampler = (async () => {
    while (!stop) {
      for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
        try {
          const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
          if (!cmd.startsWith(process.execPath + '\0') || !cmd.includes(argv.join('\0'))) continue;
          const st = readFileSync(`/proc/${pid}/status`, 'utf8');
          const kb = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+)`).exec(st)?.[1] ?? 0);
          peaks.anon = Math.max(peaks.anon, kb('RssAnon'));
          peaks.file = Math.max(peaks.file, kb('RssFile'));
        } catch { /* gone */ }
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  const r = await run('/usr/bin/time', ['-v', process.execPath, kvfsBin, ...argv], { timeoutMs: 3_600_000 });
  stop = true;
  await sampler;
  const rss = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(r.stderr)?.[1] ?? NaN) / 1024;
  const wall = /Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)/.exec(r.stderr);
  const seconds = wall ? Number(wall[1] ?? 0) * 3600 + Number(wall[2]) * 60 + Number(wall[3]) : NaN;
  return { seconds, rssMiB: rss, anonMiB: peaks.anon / 1024, fileMiB: peaks.file / 1024, exit: r.code, tail: r.stdout.trim().split('\n').slice(-2).join(' / ') };
}

try {
  say(`building a volume of ${files} files (${perDir} per directory) in ${url}`);
  const built = await build();
  say(`built in ${fmt(built)} s`);
  const gc = await measure(['gc', url, '--sweep', '--grace', '0']);
  say(`gc: ${JSON.stringify(gc)}`);
  const fsck = await measure(['fsck', url]);
  say(`fsck: ${JSON.stringify(fsck)}`);
  const lines = [
    `# kvfs gc and fsck on ${files} small files (${stamp(new Date())}, ${gitVersion()})`, '',
    `Volume: local: (LMDB), ${files} files of 100 bytes in directories of ${perDir}, built through the volume layer in ${fmt(built)} s.`, '',
    '| tool | exit | seconds | files/s | peak RSS (MiB) | peak RssAnon | peak RssFile | last lines |', '|---|---:|---:|---:|---:|---:|---:|---|',
    ...[['kvfs gc --sweep --grace 0', gc], ['kvfs fsck', fsck]].map(([name, m]) => {
      const x = m as Measured;
      return `| ${name} | ${x.exit} | ${fmt(x.seconds)} | ${fmt(files / x.seconds)} | ${fmt(x.rssMiB)} | ${fmt(x.anonMiB)} | ${fmt(x.fileMiB)} | ${x.tail.replace(/\|/g, '/')} |`;
    }),
  ];
  const out = path.join(repoRoot, 'bench', 'out');
  mkdirSync(out, { recursive: true });
  const file = path.join(out, `VOLTOOLS-${stamp(new Date())}.md`);
  writeFileSync(file, lines.join('\n') + '\n');
  console.log(lines.join('\n'));
  say(`saved to ${path.relative(repoRoot, file)}`);
} finally {
  if (process.env.KVFS_BENCH_KEEP) say(`kept ${work} (KVFS_BENCH_KEEP)`); else removeWork(work);
}
