/**
 * `kvfs load`: a local tree written straight into a volume, through the volume layer (no FUSE), in the format a
 * mount writes (256 KiB chunks as immutable blobs, chunk maps, inodes and entries), as a job kept in the store
 * (load-job.ts).
 *
 * Phases: scanning (a walk that counts files and bytes, for progress), loading (a second walk that writes),
 * verifying (a third that reads every file back from the store and compares its checksum with the source's,
 * rewriting what differs). Each walk is depth-first in name order and streams: it holds the names of one
 * directory per level, never the tree's file list.
 *
 * Writes:
 *  - directories are made (or found) as the walk enters them, their attributes (mode, owner, times) set once
 *    everything in them is written;
 *  - small files (one chunk at most), symlinks and special files go in batches of a directory (BATCH_FILES, or
 *    BATCH_BYTES of data): their blobs are put, then one transaction makes every inode, chunk entry, entry and
 *    xattr of the batch. A file appears whole or not at all;
 *  - a larger file's blobs are put a chunk at a time and its inode made in one transaction; above BIG_CHUNKS
 *    chunks it is made first as an orphan of the loader's session (o/<ino>: nlink 0, so a crash leaves it to
 *    the reaper of dead sessions), its chunk entries committed as they come, and it is linked at the end;
 *  - a name that exists already is skipped when it is the same (type, size, mode and mtime): a rerun resumes;
 *    a different file or symlink there is replaced; a directory in the way of a file (or a file in the way of
 *    a directory) is a failure of that entry;
 *  - hard links within the tree stay links (a map of the source's multi-link inodes: its size is their number);
 *  - all-zero chunks are holes (no blob).
 * Store errors that pass (throttling, timeouts, failover, a full store) are retried with exponential backoff and
 * jitter, and halve the number of tasks under way (Gate), which grows back by one per run of successes; a retry
 * writes again (blob puts are idempotent, a transaction re-reads the names), never skips. When no file
 * completes for `deadlineMs`, the job fails with the last error.
 */
import { createHash, randomBytes } from 'node:crypto';
import { open, readFile, readlink } from 'node:fs/promises';
import type { BigIntStats } from 'node:fs';
import type { KvStore } from '../backend/kv.js';
import { isStoreError, type StoreError } from '../backend/errors.js';
import { native } from '../native.js';
import { FsError, fsErr } from './errors.js';
import { NAME_MAX, S_IFDIR, Volume, isDir, xattrStored } from './inodes.js';
import { Limits } from './limits.js';
import { JOB_TTL_MS, MAX_FAILURES, emptyCounters, type JobCounters, type JobState, type LoadJob } from './load-job.js';
import { Gate, sleep, transient, walk, type Walked } from './load-walk.js';
import { INO_BATCH, K, decodeChunk, decodeDirent, decodeInode, encodeChunk, encodeDirent, nowTs, type Inode } from './schema.js';
import { readVolume } from './format.js';
import { scanPages } from './scan.js';
import { Sessions } from './sessions.js';
import { transact, type Txn } from './txn.js';
import { ROOT_INO, type Ino, type Timespec } from './types.js';

/** small files of one directory written in one transaction */
const BATCH_FILES = 128;
const BATCH_BYTES = 4 << 20;
/** files of more chunks are made as orphans and linked at the end (their chunk entries committed as they come) */
const BIG_CHUNKS = 256;
/** blob puts under way for one large file */
const PUTS_PER_FILE = 4;

/** a one-line error that ends a load (or refuses to start one) */
export class LoadError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
    this.name = 'LoadError';
  }
}

export interface LoadOptions {
  /** the local directory whose contents are loaded (absolute) */
  source: string;
  /** the volume path they go into (absolute; made when missing) */
  target: string;
  /** how users name the store, for the commands messages suggest */
  storeName: string;
  /** tasks under way at most (default 16): the gate lowers it under throttling and raises it back */
  jobs?: number;
  /** the job fails when no file completes for this long (default 300 s) */
  deadlineMs?: number;
  /** read every file back and compare checksums (default true) */
  verify?: boolean;
  /** the job as it stands, at every heartbeat and phase change */
  progress?(job: LoadJob): void;
  /** a line about one entry (a file that failed, the store waiting for space) */
  warn?(line: string): void;
  /** true once the user asked to stop (Ctrl-C): the loader stops at its next safe point */
  interrupted?(): boolean;
}

export interface LoadResult {
  job: LoadJob;
  seconds: number;
}

// ------------------------------------------------------------------------------------------------------------
// the loader

interface DirState {
  rel: string;
  ino: Ino;
  st: BigIntStats;
  parent?: DirState;
  /** tasks and subdirectories not finished */
  pending: number;
  left: boolean;
  /** small entries waiting for a batch */
  batch: Walked[];
  batchBytes: number;
  /** xattrs finishDir sets (the target root's: other directories get theirs when they are made) */
  xattrs?: [string, Buffer][];
}

/** a directory the verify walk is in: its volume inode (-1: missing there), and entries waiting for a batch */
interface VerifyDir {
  rel: string;
  ino: Ino;
  st: BigIntStats;
  batch: Walked[];
}

const ts = (sec: bigint, nsec: bigint): Timespec => ({ sec: Number(sec), nsec: Number(nsec) });
const mtimeOf = (st: BigIntStats): Timespec => ts(st.mtimeMs / 1000n, st.mtimeNs % 1_000_000_000n);
const atimeOf = (st: BigIntStats): Timespec => ts(st.atimeMs / 1000n, st.atimeNs % 1_000_000_000n);

/** the xattrs of a local file that a volume stores, as far as they can be read */
function xattrsOf(abs: string): [string, Buffer][] {
  const names = native().listXattrs(abs);
  if (typeof names === 'number') return [];
  const out: [string, Buffer][] = [];
  for (const name of names) {
    if (!xattrStored(name)) continue;
    const v = native().getXattr(abs, name);
    if (typeof v !== 'number') out.push([name, v]);
  }
  return out;
}

function isZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i]) return false;
  return true;
}

/** whether the volume's inode n holds what the source's st says (the quick check a rerun uses) */
function same(n: Inode, st: BigIntStats): boolean {
  const m = mtimeOf(st);
  return n.mode === Number(st.mode) && n.size === Number(st.size) && n.mtime.sec === m.sec && n.mtime.nsec === m.nsec &&
    n.uid === Number(st.uid) && n.gid === Number(st.gid);
}

export class Loader {
  private readonly vol: Volume;
  private readonly limits: Limits;
  private readonly gate: Gate;
  private readonly deadlineMs: number;
  private readonly session = `load-${randomBytes(6).toString('base64url')}`;
  private blobSeq = 0;
  private inoNext = 0;
  private inoEnd = -1;
  private chunkSize = 0;
  readonly counters: JobCounters = emptyCounters();
  readonly failures: { path: string; error: string }[] = [];
  /** sha256 of the large files this run wrote, as read (relative path -> hex): verify reads only the volume's side */
  private readonly sums = new Map<string, string>();
  /** the entries that failed (the first 10,000): the verify phase does not count them missing again */
  private readonly failedPaths = new Set<string>();
  phase: JobState = 'pending';
  private lastProgress = Date.now();
  private lastError = '';
  /** a reason the job must end now (deadline, quota, forced cancel, a lost job) */
  private fatal: LoadError | undefined;
  private stopping = false;
  /** source multi-link inodes -> the volume inode they became */
  private readonly links = new Map<string, Promise<Ino | undefined>>();
  /** this run's orphans: large files not linked yet */
  private readonly orphans = new Set<Ino>();
  private readonly sessions: Sessions;
  private nospaceWarned = false;

  constructor(private readonly store: KvStore, private readonly opts: LoadOptions, shared: boolean) {
    this.vol = new Volume(store);
    this.limits = new Limits({}, opts.storeName);
    this.gate = new Gate(Math.max(1, opts.jobs ?? 16));
    this.deadlineMs = opts.deadlineMs ?? 300_000;
    this.sessions = new Sessions({
      store, vol: this.vol, session: this.session, shared, ttlMs: JOB_TTL_MS, inUse: () => false, kept: () => undefined,
    });
  }

  get sessionId(): string {
    return this.session;
  }

  private newBlobId(): string {
    return `${this.session}.${(this.blobSeq++).toString(36)}`;
  }

  private async newIno(): Promise<Ino> {
    if (this.inoNext > this.inoEnd) {
      const end = await this.retrying('taking inode numbers', () => this.store.incr(K.inoCounter, INO_BATCH));
      this.inoNext = Math.max(end - INO_BATCH + 1, ROOT_INO + 1);
      this.inoEnd = end;
    }
    return this.inoNext++;
  }

  async init(): Promise<void> {
    const record = await readVolume(this.store);
    this.chunkSize = record.chunkSize;
    this.limits.update(record);
  }

  /** the session ends: its record goes, and with it any claim on orphans a failed run left (the reaper's then) */
  async end(): Promise<void> {
    for (const ino of this.orphans) {
      await transact(this.store, async (tx) => {
        tx.del(K.orphan(ino));
        if (await tx.get(K.inode(ino))) this.vol.queuePurge(tx, ino);
      }).catch(() => undefined);
    }
    await this.store.del([K.session(this.session)]).catch(() => undefined);
  }

  heartbeat(): Promise<void> {
    return this.sessions.heartbeat();
  }

  /** stop at the next safe point (a cancel, Ctrl-C) */
  stop(): void {
    this.stopping = true;
  }

  abort(e: LoadError): void {
    this.fatal ??= e;
  }

  private get halted(): boolean {
    return !!this.fatal || this.stopping;
  }

  /** the reason the job must end now, if any */
  get aborted(): LoadError | undefined {
    return this.fatal;
  }

  private fail(rel: string, error: string): void {
    this.counters.failed++;
    if (this.failedPaths.size < 10_000) this.failedPaths.add(rel);
    if (this.failures.length < MAX_FAILURES) this.failures.push({ path: rel || '.', error });
    this.opts.warn?.(`${rel || '.'}: ${error}`);
  }

  /** runs a write with retries of transient store errors, until the deadline without progress */
  private async retrying<T>(what: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      if (this.fatal) throw this.fatal;
      try {
        const r = await fn();
        this.gate.ok();
        return r;
      } catch (e) {
        if (!transient(e)) throw e;
        this.lastError = `${what}: ${(e as Error).message}`;
        this.counters.retried++;
        this.gate.backoff();
        if ((e as StoreError).code === 'NOSPACE' && !this.nospaceWarned) {
          this.nospaceWarned = true;
          this.opts.warn?.(`the store is full (${(e as Error).message}): waiting for space, up to ${Math.round(this.deadlineMs / 1000)} s without progress`);
        }
        if (Date.now() - this.lastProgress > this.deadlineMs) {
          this.abort(new LoadError(`the store made no progress for ${Math.round(this.deadlineMs / 1000)} s (last error: ${this.lastError}): ` +
            `the load failed; run the same command again to resume`));
          throw this.fatal;
        }
        await sleep(Math.min(5000, 100 * 2 ** Math.min(attempt, 6)) * (0.5 + Math.random()));
      }
    }
  }

  private holding = false;

  /** the KVFS_LOAD_HOLD=commit test hook: says so once, and waits until the job ends (2 min at most) */
  private async holdHere(where: string): Promise<void> {
    if (!this.holding) this.opts.warn?.(`holding ${where} (KVFS_LOAD_HOLD)`);
    this.holding = true;
    for (const until = Date.now() + 120_000; Date.now() < until && !this.halted;) await sleep(100);
  }

  private progressed(): void {
    this.lastProgress = Date.now();
  }

  /** the quota (the volume's capacity): a load past it fails, as a write through a mount would */
  private async admit(bytes: number, inodes: number): Promise<void> {
    try {
      if (this.limits.capacity !== undefined) this.limits.admitBytes(await this.store.incr(K.byteCount, 0), bytes);
      if (this.limits.inodeCapacity !== undefined && inodes) this.limits.admitInode(await this.store.incr(K.inodeCount, 0) + inodes - 1);
    } catch (e) {
      if (isStoreError(e) && e.code === 'NOSPACE') throw new LoadError(`the load stopped: ${e.message}`);
      throw e;
    }
  }

  private async count(inodes: number, bytes: number): Promise<void> {
    if (inodes) await this.store.incr(K.inodeCount, inodes).catch(() => undefined);
    if (bytes) await this.store.incr(K.byteCount, bytes).catch(() => undefined);
  }

  // ---------------------------------------------------------------------------------------------------------
  // the target

  /** the volume directory at path, made (with its parents, 0755) when missing */
  async targetDir(path: string, st: BigIntStats): Promise<Ino> {
    let ino = ROOT_INO;
    const parts = path.split('/').filter(Boolean);
    for (const [i, name] of parts.entries()) {
      const where = '/' + parts.slice(0, i + 1).join('/');
      const e = await this.retrying('reading the target', () => this.vol.entry(this.store, ino, name));
      if (e) {
        if (!isDir(e.type)) throw new LoadError(`the target ${where} is not a directory in the volume`);
        ino = e.ino;
        continue;
      }
      const last = i === parts.length - 1;
      ino = await this.retrying(`making ${where}`, () => this.makeDir(ino, name, last ? st : undefined));
    }
    return ino;
  }

  /** a directory `name` in parent (found when there, made when not): its ino */
  private async makeDir(parent: Ino, name: string, st: BigIntStats | undefined, xattrs: [string, Buffer][] = []): Promise<Ino> {
    const ino = await this.newIno();
    return transact(this.store, async (tx) => {
      const e = await this.vol.entry(tx, parent, name);
      if (e) {
        if (!isDir(e.type)) throw fsErr('ENOTDIR', 'a file is in the way of this directory in the volume');
        return e.ino;
      }
      await this.vol.addNode(tx, parent, name, (dir, t) => ({
        ino, version: 0, mode: st ? Number(st.mode) : S_IFDIR | 0o755, nlink: 2, uid: st ? Number(st.uid) : 0,
        gid: st ? Number(st.gid) : 0, rdev: 0, size: 4096, atime: t, mtime: t, ctime: t, parent: dir.ino,
        children: 0, stored: 0, truncFrom: 0,
      }));
      for (const [n, v] of xattrs) tx.set(K.xattr(ino, n), v);
      tx.after.push(() => void this.count(1, 0));
      return ino;
    });
  }

  /** a directory's mode, owner and times as the source's (once everything in it is written) */
  private async finishDir(d: DirState): Promise<void> {
    await this.retrying(`setting the attributes of ${d.rel || '.'}`, () => transact(this.store, async (tx) => {
      const n = await this.vol.dirInode(tx, d.ino);
      const want = { mode: Number(d.st.mode), uid: Number(d.st.uid), gid: Number(d.st.gid), atime: atimeOf(d.st), mtime: mtimeOf(d.st) };
      for (const [x, v] of d.xattrs ?? []) {
        const had = await tx.get(K.xattr(d.ino, x));
        if (!had || Buffer.compare(Buffer.from(had), v)) tx.set(K.xattr(d.ino, x), v);
      }
      if (n.mode === want.mode && n.uid === want.uid && n.gid === want.gid && n.mtime.sec === want.mtime.sec &&
        n.mtime.nsec === want.mtime.nsec && n.atime.sec === want.atime.sec && n.atime.nsec === want.atime.nsec) return;
      Object.assign(n, want, { ctime: nowTs() });
      this.vol.put(tx, n);
    }));
  }

  // ---------------------------------------------------------------------------------------------------------
  // the walks

  async scan(): Promise<void> {
    for await (const w of walk(this.opts.source)) {
      if (this.halted) return;
      if (w.kind !== 'entry') continue;
      this.counters.files++;
      if (w.st!.isFile()) this.counters.bytes += Number(w.st!.size);
    }
  }

  async load(rootIno: Ino): Promise<void> {
    let cur: DirState | undefined;
    const settle = async (d: DirState): Promise<void> => {
      // a directory is finished once it was left and nothing in it is under way; then its parent may be
      for (let x: DirState | undefined = d; x && x.left && x.pending === 0;) {
        const parent: DirState | undefined = x.parent;
        if (!this.fatal) await this.finishDir(x).catch((e: unknown) => this.failed(x!.rel, e));
        if (!parent) return;
        parent.pending--;
        x = parent;
      }
    };
    const submit = async (d: DirState, task: () => Promise<void>): Promise<void> => {
      d.pending++;
      await this.gate.run(async () => {
        try {
          await task();
        } catch (e) {
          // (a batch past the deadline throws the job's end, which this records once more)
          this.failed(d.rel, e);
        } finally {
          d.pending--;
          await settle(d);
        }
      });
    };
    const flush = async (d: DirState): Promise<void> => {
      if (!d.batch.length) return;
      const batch = d.batch;
      d.batch = [];
      d.batchBytes = 0;
      await submit(d, () => this.writeBatch(d, batch));
    };

    for await (const w of walk(this.opts.source)) {
      if (this.halted) break;
      if (w.kind === 'error') {
        this.fail(w.rel, `cannot read it: ${w.error!.code ?? w.error!.message}`);
        continue;
      }
      if (w.kind === 'enter') {
        if (!cur) {
          // the target's own xattrs are the source root's, set with its other attributes at the end
          cur = { rel: '', ino: rootIno, st: w.st!, pending: 0, left: false, batch: [], batchBytes: 0, xattrs: xattrsOf(w.abs) };
          continue;
        }
        const parent: DirState = cur;
        let ino: Ino;
        try {
          if (parent.ino < 0) throw fsErr('ENOENT', 'its directory could not be made');
          ino = await this.retrying(`making ${w.rel}`, () => this.makeDir(parent.ino, name(w.rel), w.st, xattrsOf(w.abs)));
        } catch (e) {
          this.failed(w.rel, e);
          ino = -1; // its subtree is skipped (below)
        }
        parent.pending++;
        cur = { rel: w.rel, ino, st: w.st!, parent, pending: 0, left: false, batch: [], batchBytes: 0 };
        continue;
      }
      if (w.kind === 'leave') {
        const d = cur!;
        if (d.ino >= 0) await flush(d);
        d.left = true;
        cur = d.parent;
        if (d.ino < 0) {
          // a directory that could not be made: nothing in it was written, nor are its attributes set
          d.pending = 0;
          if (d.parent) {
            d.parent.pending--;
            await settle(d.parent);
          }
          continue;
        }
        if (d.pending === 0) await settle(d);
        continue;
      }
      // an entry (anything but a directory)
      const d = cur!;
      if (d.ino < 0) continue;
      const st = w.st!;
      if (Buffer.byteLength(name(w.rel)) > NAME_MAX) {
        this.fail(w.rel, `its name is longer than ${NAME_MAX} bytes`);
        continue;
      }
      if (st.isFile() && Number(st.size) > this.chunkSize) {
        await submit(d, () => this.writeLarge(d, w));
        continue;
      }
      d.batch.push(w);
      d.batchBytes += st.isFile() ? Number(st.size) : 0;
      if (d.batch.length >= BATCH_FILES || d.batchBytes >= BATCH_BYTES) await flush(d);
    }
    await this.gate.drain();
    if (this.fatal) throw this.fatal;
  }

  /** an entry that could not be written: its error becomes a failure, or ends the job when it must */
  private failed(rel: string, e: unknown): void {
    if (e instanceof LoadError) {
      this.abort(e);
      return;
    }
    if (e instanceof FsError) {
      this.fail(rel, e.message === e.code ? e.code : `${e.message} (${e.code})`);
      return;
    }
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && !isStoreError(e)) {
      this.fail(rel, `cannot read it: ${code}`);
      return;
    }
    this.abort(new LoadError(`the load stopped at ${rel || '.'}: ${(e as Error).message ?? String(e)}`));
  }

  // ---------------------------------------------------------------------------------------------------------
  // writing entries

  /** what a small entry is made of, read from the source */
  private async readSmall(w: Walked): Promise<{ w: Walked; data?: Buffer; target?: string; xattrs: [string, Buffer][] }> {
    const st = w.st!;
    const xattrs = xattrsOf(w.abs);
    if (st.isFile()) return { w, data: await readFile(w.abs), xattrs };
    if (st.isSymbolicLink()) return { w, target: await readlink(w.abs), xattrs };
    return { w, xattrs };
  }

  /** `force`: written even when the volume's entry looks the same (verify found its bytes differ) */
  private async writeBatch(d: DirState, batch: Walked[], force = false): Promise<void> {
    // what is there already (a rerun): the same entries are skipped without reading them. A failure here ends
    // the batch as one later would (failed()): the task never rejects, as the gate does not wait for it
    let existing: (Inode | undefined)[];
    try {
      existing = force ? [] : await this.retrying('reading the target', () => this.existing(d.ino, batch));
    } catch (e) {
      for (const w of batch) this.failed(w.rel, e);
      return;
    }
    const todo: Walked[] = [];
    for (const [i, w] of batch.entries()) {
      const n = existing[i];
      if (n && same(n, w.st!) && !(w.st!.nlink > 1n && this.links.has(linkKey(w.st!)))) {
        this.counters.skipped++;
        if (w.st!.nlink > 1n) this.links.set(linkKey(w.st!), Promise.resolve(n.ino));
        this.progressed();
        continue;
      }
      todo.push(w);
    }
    // the second and later names of a multi-link file become links, after the first is written
    const linked: Walked[] = [];
    const fresh: Walked[] = [];
    const made = new Map<Walked, (ino: Ino | undefined) => void>();
    for (const w of todo) {
      if (w.st!.nlink > 1n && this.links.has(linkKey(w.st!))) {
        linked.push(w);
        continue;
      }
      fresh.push(w);
      if (w.st!.nlink > 1n) {
        let resolve!: (ino: Ino | undefined) => void;
        this.links.set(linkKey(w.st!), new Promise((r) => { resolve = r; }));
        made.set(w, resolve);
      }
    }
    try {
      const items: { w: Walked; data?: Buffer; target?: string; xattrs: [string, Buffer][] }[] = [];
      const read = await Promise.all(fresh.map((w) => this.readSmall(w).catch((e: unknown) => ({ w, e }))));
      for (const it of read) {
        if ('e' in it) {
          this.failed(it.w.rel, it.e);
          made.get(it.w)?.(undefined);
        } else {
          items.push(it);
        }
      }
      const blobs = new Map<Walked, string>();
      const bytes = items.reduce((s, it) => s + (it.data && !isZero(it.data) ? it.data.length : 0), 0);
      await this.admit(bytes, items.length);
      await Promise.all(items.map(async (it) => {
        if (!it.data?.length || isZero(it.data)) return;
        const id = this.newBlobId();
        await this.retrying(`writing ${it.w.rel}`, () => this.store.put(K.blob(id), it.data!));
        blobs.set(it.w, id);
      }));
      const inos = new Map<Walked, Ino>();
      for (const it of items) inos.set(it.w, await this.newIno());
      // KVFS_LOAD_HOLD=commit (a test hook): once 100 files are written, a batch waits here, its blobs put and its
      // transaction not made, until the job ends (a kill -9 then leaves those blobs unnamed)
      if (process.env.KVFS_LOAD_HOLD === 'commit' && this.counters.done >= 100) await this.holdHere('with a batch\'s blobs put, before its commit');
      await this.retrying(`writing ${batch.length} entries of ${d.rel || '.'}`, () => transact(this.store, async (tx) => {
        for (const it of items) {
          const st = it.w.st!;
          const ino = inos.get(it.w)!;
          await this.replaceable(tx, d.ino, name(it.w.rel));
          const size = it.target !== undefined ? Buffer.byteLength(it.target) : Number(st.size);
          const blob = blobs.get(it.w);
          await this.vol.addNode(tx, d.ino, name(it.w.rel), (_dir, t) => ({
            ino, version: 0, mode: Number(st.mode), nlink: 1, uid: Number(st.uid), gid: Number(st.gid), rdev: Number(st.rdev),
            size, atime: atimeOf(st), mtime: mtimeOf(st), ctime: t, parent: 0, children: 0,
            stored: blob ? it.data!.length : 0, truncFrom: 0, ...(it.target !== undefined ? { target: it.target } : {}),
          }));
          if (blob) tx.set(K.chunk(ino, 0), encodeChunk(it.data!.length, blob));
          for (const [n, v] of it.xattrs) tx.set(K.xattr(ino, n), v);
        }
      }));
      for (const it of items) made.get(it.w)?.(inos.get(it.w));
      await this.count(items.length, bytes);
      for (const it of items) {
        this.counters.done++;
        this.counters.doneBytes += it.data?.length ?? 0;
      }
      this.progressed();
    } catch (e) {
      for (const resolve of made.values()) resolve(undefined);
      for (const w of fresh) this.failed(w.rel, e);
      return;
    }
    for (const w of linked) await this.writeLink(d, w).catch((e: unknown) => this.failed(w.rel, e));
  }

  /** the inodes the entries of batch name in directory dir now (undefined: none) */
  private async existing(dir: Ino, batch: Walked[]): Promise<(Inode | undefined)[]> {
    const ents = await this.store.getMany(batch.map((w) => K.dirent(dir, name(w.rel))));
    const inos = ents.map((e) => (e ? decodeDirent(e).ino : undefined));
    const raw = await this.store.getMany(inos.filter((i): i is number => i !== undefined).map((i) => K.inode(i)));
    let k = 0;
    return inos.map((ino) => {
      if (ino === undefined) return undefined;
      const r = raw[k++];
      return r ? decodeInode(ino, r) : undefined;
    });
  }

  /** makes room for a new entry `nm` in dir: an entry there that is not a directory goes, in tx */
  private async replaceable(tx: Txn, dir: Ino, nm: string): Promise<void> {
    const e = await this.vol.entry(tx, dir, nm);
    if (!e) return;
    if (isDir(e.type)) throw fsErr('EISDIR', 'a directory is in the way of this file in the volume');
    await this.vol.unlink(tx, dir, nm, this.vol.remove);
  }

  /** a later name of a multi-link source file: a link to the inode its first name became */
  private async writeLink(d: DirState, w: Walked): Promise<void> {
    const ino = await this.links.get(linkKey(w.st!))!;
    if (ino === undefined) {
      this.fail(w.rel, 'its first name (a hard link) could not be written');
      return;
    }
    const nm = name(w.rel);
    const wrote = await this.retrying(`linking ${w.rel}`, () => transact(this.store, async (tx) => {
      const e = await this.vol.entry(tx, d.ino, nm);
      if (e?.ino === ino) return false;
      await this.replaceable(tx, d.ino, nm);
      await this.vol.addLink(tx, ino, d.ino, nm);
      return true;
    }));
    if (wrote) this.counters.done++;
    else this.counters.skipped++;
    this.progressed();
  }

  /** a file of more than one chunk (see the header) */
  private async writeLarge(d: DirState, w: Walked): Promise<void> {
    const st = w.st!;
    const nm = name(w.rel);
    try {
      if (st.nlink > 1n && this.links.has(linkKey(st))) {
        await this.writeLink(d, w);
        return;
      }
      const [existing] = await this.retrying('reading the target', () => this.existing(d.ino, [w]));
      if (existing && same(existing, st)) {
        this.counters.skipped++;
        if (st.nlink > 1n) this.links.set(linkKey(st), Promise.resolve(existing.ino));
        this.progressed();
        return;
      }
      let resolveLink: ((ino: Ino | undefined) => void) | undefined;
      if (st.nlink > 1n) this.links.set(linkKey(st), new Promise((r) => { resolveLink = r; }));
      try {
        const ino = await this.writeLargeData(d, w, nm);
        resolveLink?.(ino);
        this.counters.doneBytes += Number(st.size);
      } catch (e) {
        resolveLink?.(undefined);
        throw e;
      }
      this.counters.done++;
      this.progressed();
    } catch (e) {
      this.failed(w.rel, e);
    }
  }

  private async writeLargeData(d: DirState, w: Walked, nm: string): Promise<Ino> {
    const st = w.st!;
    const size = Number(st.size);
    const cs = this.chunkSize;
    const chunks = Math.ceil(size / cs);
    const big = chunks > BIG_CHUNKS;
    const ino = await this.newIno();
    const xattrs = xattrsOf(w.abs);
    const make = (t: Timespec, nlink: number): Inode => ({
      ino, version: 0, mode: Number(st.mode), nlink, uid: Number(st.uid), gid: Number(st.gid), rdev: 0, size: 0,
      atime: atimeOf(st), mtime: mtimeOf(st), ctime: t, parent: 0, children: 0, stored: 0, truncFrom: 0,
    });
    await this.admit(size, 1);
    if (big) {
      // an orphan of this session until it is whole: a crash leaves it to the reaper
      await this.retrying(`starting ${w.rel}`, () => transact(this.store, async (tx) => {
        this.vol.put(tx, { ...make(nowTs(), 0), version: -1 });
        tx.set(K.orphan(ino), Buffer.from(this.session));
        for (const [n, v] of xattrs) tx.set(K.xattr(ino, n), v);
      }));
      this.orphans.add(ino);
      await this.count(1, 0);
    }
    const fh = await open(w.abs, 'r');
    let pending: { idx: number; length: number; id: string }[] = [];
    const commitEntries = async (final: boolean): Promise<void> => {
      const entries = pending.sort((a, b) => a.idx - b.idx);
      pending = [];
      const add = entries.reduce((s, e) => s + e.length, 0);
      await this.retrying(`writing ${w.rel}`, () => transact(this.store, async (tx) => {
        if (big) {
          const n = await this.vol.inode(tx, ino);
          for (const e of entries) tx.set(K.chunk(ino, e.idx), encodeChunk(e.length, e.id));
          n.stored += add;
          n.size = final ? size : Math.max(n.size, Math.min(size, ((entries.at(-1)?.idx ?? -1) + 1) * cs));
          if (final) {
            await this.replaceable(tx, d.ino, nm);
            const dir = await this.vol.dirInode(tx, d.ino);
            n.nlink = 1;
            n.ctime = nowTs();
            tx.del(K.orphan(ino));
            tx.set(K.dirent(d.ino, nm), encodeDirent(ino, n.mode));
            dir.children++;
            this.vol.touchDir(tx, dir, n.ctime);
          }
          this.vol.put(tx, n);
          return;
        }
        await this.replaceable(tx, d.ino, nm);
        await this.vol.addNode(tx, d.ino, nm, (_dir, t) => ({ ...make(t, 1), size, stored: add }));
        for (const e of entries) tx.set(K.chunk(ino, e.idx), encodeChunk(e.length, e.id));
        for (const [n, v] of xattrs) tx.set(K.xattr(ino, n), v);
      }));
      await this.count(big ? 0 : 1, add);
      if (final) this.orphans.delete(ino);
    };
    try {
      const puts = new Set<Promise<void>>();
      let failure: unknown;
      // the checksum of what was read, for the verify phase (which then reads only the volume's side)
      const sum = createHash('sha256');
      for (let idx = 0; idx < chunks; idx++) {
        if (this.fatal) throw this.fatal;
        const len = Math.min(cs, size - idx * cs);
        const buf = Buffer.allocUnsafe(len);
        let got = 0;
        while (got < len) {
          const { bytesRead } = await fh.read(buf, got, len - got, idx * cs + got);
          if (!bytesRead) break;
          got += bytesRead;
        }
        if (got < len) buf.fill(0, got); // the file shrank meanwhile: the rest reads as zeros, as a hole would
        sum.update(buf);
        if (isZero(buf)) continue;
        const entry = { idx, length: len, id: this.newBlobId() };
        const p: Promise<void> = this.retrying(`writing ${w.rel}`, () => this.store.put(K.blob(entry.id), buf))
          .then(() => void pending.push(entry), (e: unknown) => { failure ??= e; })
          .finally(() => puts.delete(p));
        puts.add(p);
        if (puts.size >= PUTS_PER_FILE) await Promise.race(puts);
        if (failure) throw failure;
        if (big && pending.length >= BIG_CHUNKS) await commitEntries(false);
      }
      await Promise.all(puts);
      if (failure) throw failure;
      await commitEntries(true);
      this.sums.set(w.rel, sum.digest('hex'));
      return ino;
    } finally {
      await fh.close();
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // verifying

  async verify(rootIno: Ino): Promise<void> {
    const dirs: VerifyDir[] = [];
    const flush = async (d: VerifyDir): Promise<void> => {
      if (!d.batch.length) return;
      const batch = d.batch;
      d.batch = [];
      await this.gate.run(() => this.verifyBatch(d, batch).catch((e: unknown) => this.failed(batch[0]!.rel, e)));
    };
    for await (const w of walk(this.opts.source)) {
      if (this.halted) break;
      if (w.kind === 'error') continue; // reported by the load
      if (w.kind === 'enter') {
        if (!dirs.length) {
          dirs.push({ rel: '', ino: rootIno, st: w.st!, batch: [] });
          continue;
        }
        const parent = dirs[dirs.length - 1]!;
        const e = parent.ino < 0 ? undefined : await this.retrying('reading the target', () => this.vol.entry(this.store, parent.ino, name(w.rel)));
        dirs.push({ rel: w.rel, ino: e && isDir(e.type) ? e.ino : -1, st: w.st!, batch: [] });
        continue;
      }
      if (w.kind === 'leave') {
        await flush(dirs.pop()!);
        continue;
      }
      const dir = dirs[dirs.length - 1]!;
      if (dir.ino < 0 || Buffer.byteLength(name(w.rel)) > NAME_MAX) continue; // reported by the load
      dir.batch.push(w);
      if (dir.batch.length >= BATCH_FILES) await flush(dir);
    }
    await this.gate.drain();
    if (this.fatal) throw this.fatal;
  }

  /**
   * Compares a batch of one directory's entries with the volume: metadata (the quick check), a symlink's target,
   * and a file's bytes (one chunk or less: read back in two calls for the batch; larger: checksums, streamed).
   * What differs is written again.
   */
  private async verifyBatch(vd: VerifyDir, batch: Walked[]): Promise<void> {
    const dir = vd.ino;
    const nodes = await this.retrying('reading the target', () => this.existing(dir, batch));
    const cs = this.chunkSize;
    const small = batch.map((w, i) => (w.st!.isFile() && nodes[i] && Number(w.st!.size) <= cs ? i : -1)).filter((i) => i >= 0);
    const entries = await this.retrying('reading the volume', () => this.store.getMany(small.map((i) => K.chunk(nodes[i]!.ino, 0))));
    const blobIds = entries.map((e) => (e ? decodeChunk(e) : undefined));
    const blobs = await this.retrying('reading the volume', () => this.store.getMany(blobIds.flatMap((e) => (e && !e.slices?.length ? [K.blob(e.blobId)] : []))));
    const stored = new Map<number, Uint8Array | undefined>();
    let k = 0;
    small.forEach((i, j) => {
      const e = blobIds[j];
      stored.set(i, e && !e.slices?.length ? blobs[k++] : e ? undefined : Buffer.alloc(0));
    });
    // the source's side, read for the whole batch at once
    const source = await Promise.all(batch.map((w, i) => (stored.has(i) ? readFile(w.abs).catch(() => undefined)
      : w.st!.isSymbolicLink() ? readlink(w.abs).catch(() => undefined) : undefined)));
    const redo: Walked[] = [];
    for (const [i, w] of batch.entries()) {
      const st = w.st!;
      const n = nodes[i];
      this.counters.verified++;
      this.progressed();
      if (!n) {
        if (!this.failedPaths.has(w.rel) && this.failedPaths.size < 10_000) this.fail(w.rel, 'missing in the volume after the load');
        continue;
      }
      let ok = same(n, st);
      if (ok && st.isSymbolicLink()) ok = n.target === source[i];
      if (ok && st.isFile() && stored.has(i)) {
        const want = source[i] as Buffer | undefined;
        if (!want) {
          this.fail(w.rel, 'cannot read it to verify');
          continue;
        }
        const got = stored.get(i);
        // a blob holds the bytes below the size (all-zero chunks are holes: no entry)
        ok = got !== undefined && (got.length ? Buffer.compare(want, Buffer.from(got.buffer, got.byteOffset, Math.min(got.length, want.length))) === 0 &&
          got.length >= want.length : isZero(want));
      } else if (ok && st.isFile()) {
        const want = this.sums.get(w.rel) ?? (await this.sourceHash(w.abs));
        this.sums.delete(w.rel);
        ok = want === (await this.retrying('reading the volume', () => this.volumeHash(n)));
      }
      if (ok) continue;
      this.counters.repaired++;
      this.opts.warn?.(`${w.rel}: differs in the volume from the source: written again`);
      redo.push(w);
    }
    if (!redo.length) return;
    const d: DirState = { rel: vd.rel, ino: dir, st: vd.st, pending: 0, left: false, batch: [], batchBytes: 0 };
    for (const w of redo) {
      if (w.st!.isFile() && Number(w.st!.size) > cs) await this.writeLargeData(d, w, name(w.rel));
      else await this.writeBatch(d, [w], true);
    }
    // writing into the directory moved its times: they are the source's again
    await this.finishDir(d);
  }

  private async sourceHash(abs: string): Promise<string> {
    const h = createHash('sha256');
    const fh = await open(abs, 'r');
    try {
      const buf = Buffer.allocUnsafe(1 << 20);
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        if (!bytesRead) break;
        h.update(buf.subarray(0, bytesRead));
      }
    } finally {
      await fh.close();
    }
    return h.digest('hex');
  }

  /** the sha256 of a file's bytes in the volume (holes as zeros) */
  private async volumeHash(n: Inode): Promise<string> {
    const h = createHash('sha256');
    const cs = this.chunkSize;
    let at = 0;
    const zeros = (len: number) => {
      for (let left = len; left > 0; left -= cs) h.update(Buffer.alloc(Math.min(cs, left)));
    };
    for await (const page of scanPages(this.store, K.chunkPrefix(n.ino), 64)) {
      const entries = page.map(([k, v]) => [Number.parseInt(k.slice(k.lastIndexOf('/') + 1), 16), decodeChunk(v)] as const);
      const blobs = await this.store.getMany(entries.map(([, e]) => K.blob(e.blobId)));
      for (const [i, [idx, e]] of entries.entries()) {
        if (idx * cs >= n.size) break;
        zeros(idx * cs - at);
        const b = blobs[i];
        if (!b || e.slices?.length) throw new LoadError(`chunk ${idx} of ${n.ino} cannot be read back (run kvfs fsck)`);
        const len = Math.min(cs, n.size - idx * cs);
        h.update(b.subarray(0, Math.min(len, e.length)));
        if (e.length < len) zeros(len - e.length);
        at = idx * cs + len;
      }
    }
    zeros(n.size - at);
    return h.digest('hex');
  }
}

const linkKey = (st: BigIntStats) => `${st.dev}:${st.ino}`;
const name = (rel: string) => rel.slice(rel.lastIndexOf('/') + 1);

