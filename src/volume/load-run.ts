/**
 * `kvfs load` as a job (load-job.ts) around the loader (load.ts): runLoad claims the job of a target (resuming a
 * job of the same source whose loader is gone), runs the phases with a heartbeat that renews the claim and picks up
 * cancels, and records how the job ended; cancelLoad and clearLoad are the commands' other two verbs.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { lstat, readdir } from 'node:fs/promises';
import type { KvStore } from '../backend/kv.js';
import { S_IFLNK, Volume, isDir } from './inodes.js';
import {
  FINISHED, JOB_BEAT_MS, JOB_TTL_MS, changeJob, emptyCounters, ownerLive, readJob, type JobState, type LoadJob,
} from './load-job.js';
import { LoadError, Loader, type LoadOptions, type LoadResult } from './load.js';
import { sleep } from './load-walk.js';
import { K, decodeInode } from './schema.js';
import { scanPages } from './scan.js';
import { transact } from './txn.js';
import { ROOT_INO } from './types.js';

export { LoadError, type LoadOptions, type LoadResult } from './load.js';

/**
 * Loads opts.source into opts.target as a job of the store (load-job.ts): claims it (a job of the same source
 * whose loader is gone is resumed), runs the phases with a heartbeat that also picks up cancels, and records how
 * it ended. Throws LoadError for a refusal and for a job that failed; the job record says the rest.
 */
export async function runLoad(store: KvStore, opts: LoadOptions): Promise<LoadResult> {
  const t0 = Date.now();
  const info = await store.info();
  const loader = new Loader(store, opts, !!info.shared);
  const srcSt = await lstat(opts.source, { bigint: true }).catch((e: NodeJS.ErrnoException) => {
    throw new LoadError(`cannot load ${opts.source}: ${e.code === 'ENOENT' ? 'no such directory' : e.code}`);
  });
  if (!srcSt.isDirectory()) throw new LoadError(`cannot load ${opts.source}: not a directory (kvfs load takes a directory and loads what is in it)`);
  await readdir(opts.source).catch((e: NodeJS.ErrnoException) => {
    throw new LoadError(`cannot load ${opts.source}: cannot read it (${e.code})`);
  });
  await loader.init();
  const me = { host: hostname(), pid: process.pid, session: loader.sessionId, expires: Date.now() + JOB_TTL_MS };
  const target = opts.target;
  // the target must be a directory (or missing) before a job is claimed for it
  await checkTarget(store, target);
  /** the session of a loader that died with the job (taken over below) */
  let gone: string | undefined;
  const claimed = await changeJob(store, target, (cur) => {
    if (cur && ownerLive(cur)) {
      throw new LoadError(`a load into ${target} is running (pid ${cur.owner!.pid} on ${cur.owner!.host}, ${cur.state}): ` +
        `wait for it, or stop it with: kvfs load --cancel ${targetName(opts.storeName, target)}`);
    }
    if (cur && (cur.source !== opts.source || cur.host !== me.host)) {
      throw new LoadError(`${target} has a load job from ${cur.host}:${cur.source} (${cur.state}): resume it with that command, ` +
        `or remove it with: kvfs load --clear ${targetName(opts.storeName, target)}`);
    }
    const now = Date.now();
    gone = cur?.owner?.session;
    const base: LoadJob = cur ?? {
      id: randomBytes(8).toString('hex'), source: opts.source, host: me.host, target, state: 'pending', sessions: [], runs: 0,
      created: now, updated: now, counters: emptyCounters(), failures: [],
    };
    base.owner = me;
    base.runs++;
    base.sessions = [...base.sessions.slice(-63), me.session];
    base.state = 'pending';
    base.counters = emptyCounters();
    base.failures = [];
    delete base.cancel;
    delete base.error;
    return base;
  });
  const jobId = claimed!.id;
  // a dead loader's session ends here: its orphans and unnamed blobs are then the reaper's and gc's at once
  if (gone) await store.del([K.session(gone)]);
  let canceledBy: 'safe' | 'force' | undefined;
  let lost = false;
  let job = claimed!;
  const snapshot = (): LoadJob => ({ ...job, state: loader.phase, counters: { ...loader.counters }, failures: [...loader.failures] });
  const beat = async (): Promise<void> => {
    await loader.heartbeat();
    const next = await changeJob(store, target, (cur) => {
      if (!cur || cur.id !== jobId || cur.owner?.session !== me.session) {
        lost = true;
        return undefined;
      }
      if (cur.state === 'canceled' || cur.cancel === 'force') {
        canceledBy = 'force';
        return undefined;
      }
      if (cur.cancel === 'safe') canceledBy = 'safe';
      return { ...cur, state: loader.phase, counters: { ...loader.counters }, failures: [...loader.failures], owner: { ...me, expires: Date.now() + JOB_TTL_MS } };
    });
    if (next) job = next;
    if (lost) loader.abort(new LoadError(`the job of ${target} was taken over or cleared by another command: this loader stopped`));
    else if (canceledBy === 'force') loader.abort(new LoadError(`canceled (kvfs load --cancel --force): stopped at once`, 3));
    else if (canceledBy === 'safe' || opts.interrupted?.()) loader.stop();
  };
  let beating = false;
  const timer = setInterval(() => {
    if (beating) return;
    beating = true;
    void beat().catch(() => undefined).finally(() => { beating = false; });
  }, JOB_BEAT_MS);
  timer.unref?.();
  /**
   * KVFS_LOAD_HOLD=<state>: the loader waits at the start of that state (heartbeating, taking cancels) until a
   * cancel or 120 s: a test hook that lets a test find a job in any state (test/mount/load.test.ts); `commit`
   * holds a batch between its blob puts and its transaction (Loader.holdHere). Off unless set.
   */
  const hold = async (p: JobState): Promise<void> => {
    if (process.env.KVFS_LOAD_HOLD !== p) return;
    for (const until = Date.now() + 120_000; Date.now() < until && !canceledBy && !lost && !opts.interrupted?.();) await sleep(100);
  };
  const phase = async (p: JobState): Promise<void> => {
    loader.phase = p;
    await beat().catch((e: unknown) => { if (p === 'scanning') throw e; });
    opts.progress?.(snapshot());
    await hold(p);
  };
  const progressTimer = setInterval(() => opts.progress?.(snapshot()), 500);
  progressTimer.unref?.();
  let outcome: { state: JobState; error?: string };
  try {
    opts.progress?.(snapshot());
    await hold('pending');
    if (!stopped() && !loader.aborted) await phase('scanning');
    if (!stopped()) await loader.scan();
    if (loader.aborted) throw loader.aborted;
    const rootIno = stopped() ? ROOT_INO : await loader.targetDir(target, srcSt);
    if (!stopped()) await phase('loading');
    if (!stopped()) await loader.load(rootIno);
    if (opts.verify !== false && !stopped()) {
      await phase('verifying');
      await loader.verify(rootIno);
    }
    if (stopped()) {
      outcome = { state: 'canceled', error: opts.interrupted?.() && canceledBy === undefined ? 'interrupted: run the same command to resume' : 'canceled (kvfs load --cancel): stopped at a safe point' };
    } else if (loader.counters.failed) {
      outcome = { state: 'failed', error: `${loader.counters.failed} entries could not be loaded (first: ${loader.failures[0]?.path}: ${loader.failures[0]?.error})` };
    } else {
      outcome = { state: 'succeeded' };
    }
  } catch (e) {
    const err = e instanceof LoadError ? e : new LoadError(`the load failed: ${(e as Error).message}`);
    outcome = { state: canceledBy === 'force' ? 'canceled' : 'failed', error: err.message };
    clearInterval(timer);
    clearInterval(progressTimer);
    await loader.end();
    if (canceledBy === 'force') await letGo().catch(() => undefined);
    else if (!lost) await finish(outcome).catch(() => undefined);
    throw err;
  }
  clearInterval(timer);
  clearInterval(progressTimer);
  await loader.end();
  // durable before the job says so (blob files first, then the metadata, as the engines order a sync)
  await store.sync();
  const final = await finish(outcome);
  await store.sync();
  if (outcome.state !== 'succeeded') throw new LoadError(`the load ${outcome.state === 'canceled' ? 'was canceled' : 'failed'}: ${outcome.error}`, outcome.state === 'canceled' ? 3 : 1);
  return { job: final ?? snapshot(), seconds: (Date.now() - t0) / 1000 };

  function stopped(): boolean {
    return canceledBy === 'safe' || !!opts.interrupted?.();
  }

  /** a forced cancel marked the job already: this loader only takes its name off it */
  async function letGo(): Promise<void> {
    await changeJob(store, target, (cur) => {
      if (!cur || cur.id !== jobId || cur.owner?.session !== me.session) return undefined;
      delete cur.owner;
      return cur;
    });
  }

  async function finish(o: { state: JobState; error?: string }): Promise<LoadJob | undefined> {
    loader.phase = o.state;
    const next = await changeJob(store, target, (cur) => {
      if (!cur || cur.id !== jobId || cur.owner?.session !== me.session) return undefined;
      const j: LoadJob = { ...cur, state: o.state, counters: { ...loader.counters }, failures: [...loader.failures] };
      delete j.owner;
      delete j.cancel;
      if (o.error) j.error = o.error;
      else delete j.error;
      return j;
    });
    if (next) {
      job = next;
      opts.progress?.(next);
    }
    return next;
  }
}

/** refuses a target that is not a directory (a missing one is made by the load) */
async function checkTarget(store: KvStore, target: string): Promise<void> {
  const vol = new Volume(store);
  let ino = ROOT_INO;
  const parts = target.split('/').filter(Boolean);
  for (const [i, nm] of parts.entries()) {
    const e = await vol.entry(store, ino, nm);
    if (!e) return;
    if (!isDir(e.type)) throw new LoadError(`the target /${parts.slice(0, i + 1).join('/')} is ${(e.type << 12) === S_IFLNK ? 'a symlink' : 'a file'} in the volume, not a directory`);
    ino = e.ino;
  }
}

/** STORE:/PATH as users write it */
export function targetName(storeName: string, target: string): string {
  return target === '/' ? storeName : `${storeName}:${target}`;
}

/**
 * Asks the job of target to stop: 'safe' at its loader's next safe point (or at once when no loader runs),
 * 'force' now (the job is marked canceled; a running loader stops at its next heartbeat). Returns the job as
 * stored after the request.
 */
export async function cancelLoad(store: KvStore, target: string, force: boolean, storeName: string): Promise<LoadJob> {
  const j = await changeJob(store, target, (cur) => {
    if (!cur) throw new LoadError(`no load job for ${target} in this volume (kvfs load --status ${storeName} lists them)`);
    if (FINISHED.includes(cur.state)) throw new LoadError(`the load into ${target} has ended already (${cur.state}): nothing to cancel` +
      `${cur.state === 'succeeded' ? '' : ` (kvfs load --clear ${targetName(storeName, target)} removes it)`}`, 0);
    if (force || !ownerLive(cur)) {
      cur.state = 'canceled';
      cur.error = force ? 'canceled (kvfs load --cancel --force)' : 'canceled (kvfs load --cancel) while no loader ran';
      if (force) cur.cancel = 'force';
      else delete cur.cancel;
      if (!ownerLive(cur)) delete cur.owner;
      return cur;
    }
    cur.cancel = 'safe';
    return cur;
  });
  return j!;
}

export interface ClearReport {
  job: LoadJob;
  orphans: number;
  blobs: number;
  bytes: number;
}

/**
 * Removes the job of target once it ended (or its loader is gone), with what its runs left unfinished: the
 * large files they had not linked yet (orphans of their sessions) and blobs they wrote that no chunk map names.
 * Files the job loaded whole stay.
 */
export async function clearLoad(store: KvStore, target: string, storeName: string): Promise<ClearReport> {
  const j = await readJob(store, target);
  if (!j) throw new LoadError(`no load job for ${target} in this volume (kvfs load --status ${storeName} lists them)`);
  if (ownerLive(j)) throw new LoadError(`the load into ${target} is running (pid ${j.owner!.pid} on ${j.owner!.host}): stop it first with: kvfs load --cancel ${targetName(storeName, target)}`);
  const vol = new Volume(store);
  const mine = new Set(j.sessions);
  let orphans = 0;
  for await (const page of scanPages(store, K.orphanPrefix)) {
    for (const [key, owner] of page) {
      if (!mine.has(Buffer.from(owner).toString())) continue;
      const ino = Number(key.slice(K.orphanPrefix.length));
      await transact(store, async (tx) => {
        tx.del(key);
        const raw = await tx.get(K.inode(ino));
        if (raw && decodeInode(ino, raw).nlink === 0) vol.queuePurge(tx, ino);
      });
      orphans++;
    }
  }
  // blobs of the job's sessions that nothing names (puts whose commit never came)
  const { sweepSessions } = await import('./gc.js');
  const swept = await sweepSessions(store, (sid) => mine.has(sid));
  await store.del(j.sessions.map((s) => K.session(s)));
  await changeJob(store, target, (cur) => (cur && cur.id === j.id && !ownerLive(cur) ? null : undefined));
  return { job: j, orphans, blobs: swept.count, bytes: swept.bytes };
}


