#!/usr/bin/env node
// `npm test`: the tap suite as two tap runs.
//   1. every test file not in package.json's tap.serial, with tap's `jobs` (2): most files spend their time
//      waiting on mounts, servers and child processes, so two at a time keep both cores busy;
//   2. the files in tap.serial, one at a time, with nothing else running beside them.
// A file is in tap.serial when another file running beside it would change what it measures or sees: bounds on
// wall-clock time across processes (a store deadline plus a margin), counts of kernel-cache misses (another file's
// drop_caches), or state of the whole machine that it changes (/etc/fuse.conf, the mode of /dev/fuse). A plain
// `tap` honours the same list (it runs each of them alone, where it falls in the alphabetical order).
// Both runs always run; the exit status is 0 only when both passed. Each prints its own summary
// (`# { total: ... }`), which .ci/run adds up. With arguments (test files, tap options): one plain `tap` run.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
const tap = join(repo, 'node_modules', '.bin', 'tap');
const run = (args) => {
  const r = spawnSync(tap, args, { cwd: repo, stdio: 'inherit' });
  if (r.error) console.error(`scripts/test.mjs: cannot run tap: ${r.error.message}`);
  return r.status ?? 1;
};

const args = process.argv.slice(2);
if (args.length) process.exit(run(args));

const serial = JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')).tap.serial ?? [];
const listed = spawnSync(tap, ['list'], { cwd: repo, encoding: 'utf8' });
if (listed.status !== 0) {
  console.error(`scripts/test.mjs: tap list failed:\n${listed.stderr}`);
  process.exit(1);
}
const files = listed.stdout.split('\n').filter(Boolean);
const unknown = serial.filter((f) => !files.includes(f));
if (unknown.length) {
  console.error(`scripts/test.mjs: tap.serial names files tap does not find: ${unknown.join(', ')}`);
  process.exit(1);
}
const parallel = files.filter((f) => !serial.includes(f));
const first = run(parallel);
const second = serial.length ? run(['--jobs=1', ...serial]) : 0;
process.exit(first || second);
