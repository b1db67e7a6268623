/**
 * A bulk load's job (`kvfs load`, load.ts) as a state machine kept in the store, one per target path (key
 * `j/<target>`, schema.ts), so that every machine sees it and a second loader of the same target is refused:
 *
 *   pending -> scanning -> loading -> verifying -> succeeded
 *                 \           \           \------> failed | canceled
 *
 * Every change is one compare-and-swap transaction on the record (txn.ts). The loader that owns a job renews
 * `owner.expires` with a heartbeat (JOB_TTL_MS); a job whose owner's heartbeat expired, or whose owner was a
 * process of this machine that is gone, has no live owner and may be taken over by the same command (resume),
 * canceled or cleared. A cancel is a request in the record (`cancel`): 'safe' lets the owner stop at its next safe
 * point (the files under way finish), 'force' marks the job canceled at once and the owner stops at its next
 * heartbeat, its only write then taking its name off the job. `sessions` lists every session the job's runs wrote blobs under, for `--clear`.
 */
import { hostname } from 'node:os';
import type { KvStore } from '../backend/kv.js';
import { K } from './schema.js';
import { scanPages } from './scan.js';
import { transact, type Txn } from './txn.js';

export type JobState = 'pending' | 'scanning' | 'loading' | 'verifying' | 'succeeded' | 'failed' | 'canceled';

export const FINISHED: readonly JobState[] = ['succeeded', 'failed', 'canceled'];

/** a job's owner renews its heartbeat this often, and is taken for gone this long after the last one */
export const JOB_BEAT_MS = 500;
export const JOB_TTL_MS = 10_000;

/** at most this many failed files are named in the record (the rest are counted) */
export const MAX_FAILURES = 20;

export interface JobCounters {
  /** found by the scan: files (every non-directory) and their bytes */
  files: number;
  bytes: number;
  /** written by this job, and their bytes */
  done: number;
  doneBytes: number;
  /** there already (same type, size, mode and mtime), not written again */
  skipped: number;
  /** could not be loaded (unreadable, in the way of a directory, ...) */
  failed: number;
  /** store calls retried after a transient error (throttling, timeouts, failover) */
  retried: number;
  /** checked by the verify phase, and those rewritten because they differed */
  verified: number;
  repaired: number;
}

export interface LoadJob {
  id: string;
  /** the local source directory (absolute) and the machine it is on */
  source: string;
  host: string;
  /** the volume path loaded into */
  target: string;
  state: JobState;
  owner?: { host: string; pid: number; session: string; expires: number };
  cancel?: 'safe' | 'force';
  sessions: string[];
  runs: number;
  created: number;
  updated: number;
  counters: JobCounters;
  failures: { path: string; error: string }[];
  /** why the job failed or was canceled */
  error?: string;
}

export const emptyCounters = (): JobCounters => ({
  files: 0, bytes: 0, done: 0, doneBytes: 0, skipped: 0, failed: 0, retried: 0, verified: 0, repaired: 0,
});

export const jobKey = (target: string) => K.job(encodeURIComponent(target));

export function encodeJob(j: LoadJob): Uint8Array {
  return Buffer.from(JSON.stringify(j));
}

export function decodeJob(raw: Uint8Array): LoadJob {
  return JSON.parse(Buffer.from(raw).toString('utf8')) as LoadJob;
}

/** whether the job has an owner that is running (heartbeat ahead, and not a process of this machine that is gone) */
export function ownerLive(j: LoadJob, now = Date.now()): boolean {
  const o = j.owner;
  if (!o || o.expires <= now) return false;
  if (o.host === hostname()) {
    try {
      process.kill(o.pid, 0);
    } catch (e) {
      return (e as NodeJS.ErrnoException).code === 'EPERM';
    }
  }
  return true;
}

export async function readJob(store: KvStore | Txn, target: string): Promise<LoadJob | undefined> {
  const raw = await store.get(jobKey(target));
  return raw ? decodeJob(raw) : undefined;
}

/** every job of the volume */
export async function* allJobs(store: KvStore): AsyncGenerator<LoadJob> {
  for await (const page of scanPages(store, K.jobPrefix)) for (const [, raw] of page) yield decodeJob(raw);
}

/**
 * Changes the job of `target` in one transaction: `fn` gets the record as stored (undefined when there is none)
 * and returns the record to store (null: delete it; undefined: leave it). Returns what is stored afterwards.
 */
export async function changeJob(store: KvStore, target: string,
  fn: (j: LoadJob | undefined) => LoadJob | null | undefined): Promise<LoadJob | undefined> {
  return transact(store, async (tx) => {
    const cur = await readJob(tx, target);
    const next = fn(cur === undefined ? undefined : structuredClone(cur));
    if (next === undefined) return cur;
    if (next === null) {
      tx.del(jobKey(target));
      return undefined;
    }
    next.updated = Date.now();
    tx.set(jobKey(target), encodeJob(next));
    return next;
  });
}

/** one line about a job, for --status and messages */
export function describeJob(j: LoadJob, now = Date.now()): string {
  const c = j.counters;
  const who = j.owner
    ? `${ownerLive(j, now) ? 'running' : 'not running (its loader is gone)'}: pid ${j.owner.pid} on ${j.owner.host}`
    : 'no loader';
  const age = (ms: number) => `${Math.max(0, Math.round((now - ms) / 1000))} s ago`;
  return `${j.target} <- ${j.host}:${j.source}: ${j.state}${j.cancel && !FINISHED.includes(j.state) ? ` (cancel asked: ${j.cancel})` : ''}, ` +
    `${who}; files ${c.done + c.skipped}/${c.files} (${c.done} written, ${c.skipped} there already), ` +
    `${c.failed} failed, ${c.retried} retried, ${c.verified} verified; run ${j.runs}, started ${age(j.created)}, updated ${age(j.updated)}` +
    (j.error ? `; ${j.error}` : '');
}
