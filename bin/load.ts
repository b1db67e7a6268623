/**
 * `kvfs load`: the command around src/volume/load.ts (the loader) and load-job.ts (its job in the store):
 *
 *   kvfs load SRC_DIR [STORE][:/PATH]       load (or resume loading) SRC_DIR's contents into PATH (default /)
 *   kvfs load --status [STORE][:/PATH]      the job of PATH, or every job of the volume
 *   kvfs load --cancel [--force] STORE[:/PATH]
 *   kvfs load --clear STORE[:/PATH]
 *
 * STORE defaults to the default store; `:/PATH` alone names a path in it. The path is split from the store URL at
 * its last ':/' (a local store's directory holding ':/' must be given with an explicit path).
 */
import { resolve } from 'node:path';
import cliProgress from 'cli-progress';
import type { KvStore } from '../src/backend/kv.js';
import { humanBytes } from '../src/volume/limits.js';
import { FINISHED, allJobs, describeJob, readJob, type LoadJob } from '../src/volume/load-job.js';
import { LoadError, cancelLoad, clearLoad, runLoad, targetName } from '../src/volume/load-run.js';

export interface LoadArgs {
  source?: string;
  target?: string;
  status?: boolean;
  cancel?: boolean;
  force?: boolean;
  clear?: boolean;
  jobs: number;
  deadline: number;
  verify: boolean;
  json?: boolean;
}

/** what the load command takes from the CLI around it */
export interface LoadContext {
  fail(msg: string): never;
  defaultStore(): string;
  /**
   * runs fn on the volume; on a local store it takes the store's lock, and `busy` is called when a mount (or
   * another loader) holds it; null: no lock
   */
  onVolume(url: string, what: string, busy: ((e: Error) => void) | null, fn: (store: KvStore, locked: boolean) => Promise<void>): Promise<void>;
}

/** STORE[:/PATH] -> the store URL and the absolute volume path */
export function parseTarget(spec: string | undefined, defaultStore: string, fail: (m: string) => never): { url: string; path: string; explicit: boolean } {
  if (spec === undefined || spec === '') return { url: defaultStore, path: '/', explicit: false };
  if (spec.startsWith(':/')) return { url: defaultStore, path: normalPath(spec.slice(1), fail), explicit: true };
  const scheme = spec.indexOf(':');
  const at = spec.lastIndexOf(':/');
  // ':/' of the scheme itself (local:/dir, redis://) is not a path separator
  if (at <= scheme || spec.startsWith('//', at + 1)) return { url: spec, path: '/', explicit: false };
  return { url: spec.slice(0, at), path: normalPath(spec.slice(at + 1), fail), explicit: true };
}

function normalPath(p: string, fail: (m: string) => never): string {
  const parts = p.split('/').filter((x) => x && x !== '.');
  if (parts.includes('..')) fail(`bad target path '${p}': '..' is not allowed`);
  return '/' + parts.join('/');
}

export async function loadCommand(argv: LoadArgs, cx: LoadContext): Promise<void> {
  const modes = [argv.status, argv.cancel, argv.clear].filter(Boolean).length;
  if (modes > 1) cx.fail('give one of --status, --cancel and --clear');
  if (argv.force && !argv.cancel) cx.fail('--force goes with --cancel');
  if (!Number.isInteger(argv.jobs) || argv.jobs < 1 || argv.jobs > 256) cx.fail(`bad --jobs ${argv.jobs}: give a whole number from 1 to 256`);
  if (!Number.isFinite(argv.deadline) || argv.deadline < 1 || argv.deadline > 86400) cx.fail(`bad --deadline ${argv.deadline}: give seconds from 1 to 86400`);
  if (modes) {
    if (argv.target !== undefined) cx.fail('--status, --cancel and --clear take one argument: STORE[:/PATH]');
    const { url, path, explicit } = parseTarget(argv.source, cx.defaultStore(), cx.fail);
    if (url.startsWith('memory:')) cx.fail('a memory: volume lives in its daemon only: there is no load job to find from here');
    // the job record is written with its own checks: beside a mount or a running loader is fine, and no lock
    // is taken (it would keep a loader that starts meanwhile from starting)
    await cx.onVolume(url, 'load', null, async (store) => {
      try {
        if (argv.status) await status(store, url, explicit ? path : undefined, !!argv.json, cx);
        else if (argv.cancel) await cancel(store, url, path, !!argv.force);
        else await clear(store, url, path);
      } catch (e) {
        if (!(e instanceof LoadError)) throw e;
        if (e.exitCode) cx.fail(e.message);
        console.log(`kvfs load: ${e.message}`);
      }
    });
    return;
  }
  if (argv.source === undefined) cx.fail('usage: kvfs load SRC_DIR [STORE][:/PATH] (kvfs load --help)');
  const source = resolve(argv.source!);
  const { url, path } = parseTarget(argv.target, cx.defaultStore(), cx.fail);
  if (url.startsWith('memory:')) cx.fail('a memory: volume lives in the daemon that mounts it: copy into the mount instead');
  await cx.onVolume(url, 'load', (e) => cx.fail(/\(load\)/.test(e.message) ? e.message : `${e.message} (kvfs load writes into the store ` +
    'directly, and a mount of a local store would not see the new files: it caches names for long)'), async (store) => {
    const view = progressView(!!process.stdout.isTTY);
    let interrupted = false;
    const onInt = () => {
      if (interrupted) process.exit(130);
      interrupted = true;
      view.note('stopping at the next safe point (Ctrl-C again to stop at once; the same command resumes)');
    };
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onInt);
    try {
      const r = await runLoad(store, {
        source, target: path, storeName: url, jobs: argv.jobs, deadlineMs: argv.deadline * 1000, verify: argv.verify,
        progress: (j) => view.update(j), warn: (line) => view.note(line), interrupted: () => interrupted,
      });
      view.done();
      const c = r.job.counters;
      const secs = Math.max(r.seconds, 0.001);
      console.log(`kvfs load: ${source} -> ${targetName(url, path)}: ${r.job.state}: ${c.done} written (${humanBytes(c.doneBytes)}), ` +
        `${c.skipped} there already, ${c.failed} failed, ${c.retried} retried, ${c.verified} verified` +
        `${c.repaired ? ` (${c.repaired} written again)` : ''} in ${secs.toFixed(1)} s ` +
        `(${Math.round(c.done / secs)} files/s, ${(c.doneBytes / secs / 1e6).toFixed(1)} MB/s)`);
      console.log(`kvfs load: ${JSON.stringify({ state: r.job.state, seconds: r.seconds, ...c })}`);
    } catch (e) {
      view.done();
      if (e instanceof LoadError) {
        const j = await readJob(store, path).catch(() => undefined);
        if (j) console.log(`kvfs load: ${JSON.stringify({ state: j.state, ...j.counters })}`);
        process.exitCode = e.exitCode;
        if (e.exitCode) console.error(`kvfs: ${e.message}`);
        else console.log(`kvfs load: ${e.message}`);
        return;
      }
      throw e;
    } finally {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onInt);
    }
  });
}

async function status(store: KvStore, url: string, path: string | undefined, json: boolean, cx: LoadContext): Promise<void> {
  const jobs: LoadJob[] = [];
  if (path !== undefined) {
    const j = await readJob(store, path);
    if (!j) cx.fail(`no load job for ${path} in ${url}`);
    jobs.push(j!);
  } else {
    for await (const j of allJobs(store)) jobs.push(j);
  }
  if (!jobs.length) console.log(`kvfs load: no load jobs in ${url}`);
  for (const j of jobs) console.log(`kvfs load: ${describeJob(j)}`);
  if (json) console.log(JSON.stringify(jobs));
}

async function cancel(store: KvStore, url: string, path: string, force: boolean): Promise<void> {
  try {
    const j = await cancelLoad(store, path, force, url);
    if (j.state === 'canceled') {
      console.log(`kvfs load: ${path}: canceled${j.owner ? ` (its loader, pid ${j.owner.pid} on ${j.owner.host}, stops within a second)` : ''}`);
      return;
    }
    console.log(`kvfs load: ${path}: asked its loader (pid ${j.owner!.pid} on ${j.owner!.host}) to stop at its next safe point`);
    // it stops once the files under way are written: wait for that, a minute at most
    const until = Date.now() + 60_000;
    for (;;) {
      await new Promise((r) => setTimeout(r, 200));
      const now = await readJob(store, path);
      if (!now || FINISHED.includes(now.state)) {
        console.log(`kvfs load: ${path}: ${now?.state ?? 'gone'}`);
        return;
      }
      if (Date.now() > until) {
        console.log(`kvfs load: ${path}: still ${now.state} after a minute; it stops at its next safe point (--force stops it at once)`);
        return;
      }
    }
  } catch (e) {
    if (e instanceof LoadError && e.exitCode === 0) {
      console.log(`kvfs load: ${e.message}`);
      return;
    }
    throw e;
  }
}


async function clear(store: KvStore, url: string, path: string): Promise<void> {
  const r = await clearLoad(store, path, url);
  console.log(`kvfs load: cleared the ${r.job.state} job of ${path} (from ${r.job.host}:${r.job.source}): ` +
    `${r.orphans} unfinished files and ${r.blobs} unreferenced blobs (${humanBytes(r.bytes)}) removed; files it loaded whole stay`);
}

/** progress: a bar on a terminal (cli-progress), a plain line every 2 s otherwise; notes go above the bar */
function progressView(tty: boolean): { update(j: LoadJob): void; note(line: string): void; done(): void } {
  const t0 = Date.now();
  const line = (j: LoadJob) => {
    const c = j.counters;
    const secs = Math.max((Date.now() - t0) / 1000, 0.001);
    const files = j.state === 'verifying' ? `${c.verified}/${c.files} verified` : `${c.done + c.skipped}/${c.files} files`;
    return `${files}, ${humanBytes(c.doneBytes)}/${humanBytes(c.bytes)}, ${Math.round(c.done / secs)} files/s, ` +
      `${(c.doneBytes / secs / 1e6).toFixed(1)} MB/s, ${c.retried} retried, ${c.failed} failed`;
  };
  if (!tty) {
    let last = 0;
    let lastState = '';
    return {
      update(j) {
        const now = Date.now();
        if (now - last < 2000 && j.state === lastState) return;
        last = now;
        lastState = j.state;
        console.log(`kvfs load: ${j.state}: ${line(j)}`);
      },
      note: (l) => console.log(`kvfs load: ${l}`),
      done: () => undefined,
    };
  }
  let bar: cliProgress.SingleBar | undefined;
  return {
    update(j) {
      const c = j.counters;
      const total = Math.max(c.files, 1);
      const value = j.state === 'verifying' ? c.verified : c.done + c.skipped + c.failed;
      if (!bar) {
        bar = new cliProgress.SingleBar({
          format: 'kvfs load: {phase} {bar} {value}/{total} | {info} | ETA {eta_formatted}', hideCursor: true, clearOnComplete: false,
        }, cliProgress.Presets.shades_classic);
        bar.start(total, value, { phase: j.state.padEnd(9), info: line(j) });
      }
      bar.setTotal(total);
      bar.update(Math.min(value, total), { phase: j.state.padEnd(9), info: line(j) });
    },
    note(l) {
      if (bar) bar.stop();
      bar = undefined;
      console.log(`kvfs load: ${l}`);
    },
    done() {
      bar?.stop();
      bar = undefined;
    },
  };
}
