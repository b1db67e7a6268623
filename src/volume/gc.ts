/**
 * Collecting a volume's garbage without a mount (`kvfs gc`), safe beside live mounts, on shared stores too.
 *
 *  1. Sessions: the orphans of mounts that are gone (files unlinked while open there) are removed, and on a
 *     shared store the files dead sessions held open are released (sessions.ts).
 *  2. The queues: every removed inode's chunk entries and xattrs are deleted, and every blob no chunk map names
 *     any more (queues.ts), with the usage counters following.
 *  3. Sweep (`sweep`): blobs that nothing names at all, neither a chunk map nor the GC queue: a commit that a
 *     crash cut short after its blobs were written. A blob is taken only when its session (the writer named by
 *     its id, `<session>.<n>`) is not live, so a live mount's commit in flight is never robbed; and only when it
 *     is still unreferenced after `graceMs`, found by a second look at the chunk maps, so a mount that was
 *     stalled past its session's expiry and committed meanwhile keeps its blob. Leaked blobs of a live session
 *     wait for its end.
 * On a local store whose daemon lock gc holds (no mount can run), every session is dead (`noLiveSessions`).
 * `dryRun` changes nothing and reports what would go. Memory: every collection is walked a page at a time; the
 * sweep holds 8 bytes per blob the volume names and per leaked blob (sweep).
 */
import type { KvStore } from '../backend/kv.js';
import { Queues } from './queues.js';
import { K, decodeChunk, entryBlobs, memberOf } from './schema.js';
import { SortedNumbers, idHash } from './numbers.js';
import { keyValuePages, scanPages } from './scan.js';
import { Sessions } from './sessions.js';
import { Volume } from './inodes.js';

export interface GcOptions {
  dryRun?: boolean;
  sweep?: boolean;
  /** how long a leaked blob must stay unreferenced before the sweep takes it (default 60 s) */
  graceMs?: number;
  /**
   * no mount can be live (a local store whose daemon lock the caller holds): every session is dead, so the sweep
   * need not wait for any
   */
  noLiveSessions?: boolean;
  /**
   * a session without a record counts as live (Sessions.unknownLive): a local store whose daemon lock another
   * process holds, whose mount's newest session record may not be in LMDB yet
   */
  unknownSessionsLive?: boolean;
  /** what the collector is doing, and how far it got (for a progress line or bar) */
  progress?(phase: string, done: number, total?: number): void;
}

export interface GcReport {
  dryRun: boolean;
  /** orphans of gone mounts removed (found, in a dry run) */
  orphans: number;
  /** dead sessions whose open files were released (shared stores) */
  sessions: number;
  /** removed inodes whose chunks and xattrs were purged (queued, in a dry run) */
  purged: number;
  /** blobs of the GC queue deleted, and their bytes (queued, in a dry run) */
  collected: number;
  collectedBytes: number;
  /** blobs nothing named, deleted by the sweep (found, in a dry run), and their bytes */
  leaked: number;
  leakedBytes: number;
  /** unreferenced blobs of live sessions, left for later */
  leakedLive: number;
}

const PAGE = 1024;
/** leaked blobs read (to count their bytes) and deleted at once */
const SWEEP_BATCH = 16;

export async function collectGarbage(store: KvStore, opts: GcOptions = {}): Promise<GcReport> {
  const dryRun = !!opts.dryRun;
  const progress = opts.progress ?? (() => undefined);
  const report: GcReport = {
    dryRun, orphans: 0, sessions: 0, purged: 0, collected: 0, collectedBytes: 0, leaked: 0, leakedBytes: 0, leakedLive: 0,
  };
  const shared = !!(await store.info()).shared;
  const vol = new Volume(store, { counted: (d) => void store.incr(K.inodeCount, d).catch(() => undefined) });
  // a session of its own that never registers: every live mount's orphans are left alone
  const sessions = new Sessions({ store, vol, session: `gc-${process.pid}-${Date.now()}`, shared,
    unknownLive: !!opts.unknownSessionsLive, inUse: () => false, kept: () => undefined });

  progress('sessions', 0);
  if (dryRun) {
    for await (const page of scanPages(store, K.orphanPrefix, PAGE)) {
      for (const [, owner] of page) if (!(await sessions.isLive(Buffer.from(owner).toString()))) report.orphans++;
    }
    for await (const page of scanPages(store, K.purgePrefix, PAGE)) report.purged += page.length;
    for await (const page of scanPages(store, K.gcPrefix, PAGE)) {
      report.collected += page.length;
      for (const [, v] of page) report.collectedBytes += Number(Buffer.from(v).toString()) || 0;
    }
  } else {
    const reaped = await sessions.reapOrphans();
    report.orphans = reaped.orphans;
    report.sessions = reaped.sessions;
    const queues = new Queues(store, {
      purged: (n) => {
        report.purged += n;
        progress('purge', report.purged);
      },
      collected: (count, bytes) => {
        report.collected += count;
        report.collectedBytes += bytes;
        progress('collect', report.collected);
      },
    });
    await queues.drain();
    if (report.purged) await store.incr(K.inodeCount, -report.purged);
    if (report.collectedBytes) await store.incr(K.byteCount, -report.collectedBytes);
  }
  if (opts.sweep) await sweep(store, (sid) => (opts.noLiveSessions ? Promise.resolve(false) : sessions.isLive(sid)), opts.graceMs ?? 60_000, dryRun, report, progress);
  return report;
}

/**
 * The blobs the volume names: every blob of every chunk map and of the GC queue, as 53-bit hashes (numbers.ts).
 * Two ids sharing a hash err on the safe side: a leaked blob whose hash a named one has is kept.
 */
async function namedBlobs(store: KvStore, progress: (phase: string, done: number, total?: number) => void): Promise<SortedNumbers> {
  const named = new SortedNumbers();
  let chunks = 0;
  for await (const page of keyValuePages(store, 'c/', PAGE)) {
    for (const [, v] of page) for (const b of entryBlobs(decodeChunk(v))) named.add(idHash(b.blobId));
    progress('chunk maps', (chunks += page.length));
  }
  for await (const page of store.keyPages(K.gcPrefix, PAGE)) for (const k of page) named.add(idHash(memberOf(k, K.gcPrefix)));
  named.sorted();
  return named;
}

/** the ids of the volume's blobs that `named` does not hold, a page of the blob walk at a time */
async function* unnamedBlobs(store: KvStore, named: SortedNumbers): AsyncGenerator<string[]> {
  for await (const page of store.keyPages('b/', PAGE)) {
    const ids = page.map((k) => memberOf(k, 'b/')).filter((id) => !named.has(idHash(id)));
    if (ids.length) yield ids;
  }
}

/**
 * Memory: the hashes of the named blobs (8 bytes a blob) and of the candidates (8 bytes a leaked blob); keys are
 * walked a page at a time (KvStore.keyPages).
 */
async function sweep(store: KvStore, sessionLive: (sid: string) => Promise<boolean>, graceMs: number, dryRun: boolean, report: GcReport,
  progress: (phase: string, done: number, total?: number) => void): Promise<void> {
  const live = new Map<string, boolean>();
  const isLive = async (id: string): Promise<boolean> => {
    const sid = id.slice(0, id.lastIndexOf('.'));
    if (!live.has(sid)) live.set(sid, await sessionLive(sid));
    return live.get(sid)!;
  };
  const take = async (ids: string[]): Promise<void> => {
    await deleteBlobs(store, ids, dryRun, (count, bytes) => {
      report.leaked += count;
      report.leakedBytes += bytes;
      progress('sweep', report.leaked);
    });
  };
  // first look: unreferenced blobs of sessions that are not live are candidates (a dry run counts them)
  const candidates = new SortedNumbers();
  for await (const ids of unnamedBlobs(store, await namedBlobs(store, progress))) {
    const dead: string[] = [];
    for (const id of ids) {
      if (await isLive(id)) report.leakedLive++;
      else dead.push(id);
    }
    if (dryRun) await take(dead);
    else for (const id of dead) candidates.add(idHash(id));
  }
  if (dryRun || !candidates.size) return;
  if (graceMs > 0) {
    progress('grace', 0, graceMs);
    await new Promise((r) => setTimeout(r, graceMs));
  }
  // a second look: what a commit named meanwhile stays, and so do blobs whose session came back
  live.clear();
  for await (const ids of unnamedBlobs(store, await namedBlobs(store, progress))) {
    const gone: string[] = [];
    for (const id of ids) if (candidates.has(idHash(id)) && !(await isLive(id))) gone.push(id);
    await take(gone);
  }
}

/**
 * Deletes the blobs that nothing names of the sessions `mine` picks (sessions the caller knows are over: a load
 * job's runs, kvfs load --clear), at once, without a grace period. Returns how many went, and their bytes.
 */
export async function sweepSessions(store: KvStore, mine: (sid: string) => boolean): Promise<{ count: number; bytes: number }> {
  const out = { count: 0, bytes: 0 };
  for await (const ids of unnamedBlobs(store, await namedBlobs(store, () => undefined))) {
    await deleteBlobs(store, ids.filter((id) => mine(id.slice(0, id.lastIndexOf('.')))), false, (count, bytes) => {
      out.count += count;
      out.bytes += bytes;
    });
  }
  return out;
}

/** reads (to count their bytes) and deletes blobs a few at a time (a blob may be a whole chunk); a dry run only counts */
async function deleteBlobs(store: KvStore, ids: string[], dryRun: boolean, done: (count: number, bytes: number) => void): Promise<void> {
  for (let i = 0; i < ids.length; i += SWEEP_BATCH) {
    const part = ids.slice(i, i + SWEEP_BATCH).map((id) => K.blob(id));
    let bytes = 0;
    for (const v of await store.getMany(part)) if (v) bytes += v.length;
    if (!dryRun) await store.del(part);
    done(part.length, bytes);
  }
}
