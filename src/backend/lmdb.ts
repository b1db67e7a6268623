import { closeSync, realpathSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { open, type RootDatabase } from 'lmdb';
import { BLOB_PREFIX, BlobFiles } from './blob-files.js';
import { addCounter, checkPageLimit, checkScan, collectKeys, KEY_PAGE, keyCompare } from './kv-rules.js';
import { firstAfter, Overlay, recordBytes, recover, WriteLog, type LogWrite } from './lmdb-log.js';
import { FullEpisodes, StoreError, isStoreError } from './errors.js';
import type { KvCheck, KvEngineInfo, KvStore, KvWrite, PutOptions, ScanOptions } from './kv.js';
import { native } from '../native.js';
import { available, capacity, kindOf, LmdbSpace, needOf, reusable, type LmdbFigures, type WriteKind } from './lmdb-space.js';

/**
 * Initial size of the memory map: 1 GiB of virtual address space. It is not disk: without MDB_WRITEMAP the data
 * file grows only as pages are written. lmdb-js doubles the map on demand with no upper bound, so the store's
 * real limit is the filesystem holding it (lmdb-space.ts); a larger initial map only saves remaps (lmdb-js keeps
 * each old map mapped for lingering readers, so fewer remaps means less address space held).
 */
export const DEFAULT_MAP_SIZE = 2 ** 30;

export interface LmdbStoreOptions {
  /** initial map size in bytes (default DEFAULT_MAP_SIZE); the map still grows beyond it on demand */
  mapSize?: number;
  /**
   * hand the data file's mapped pages back (they stay in the page cache) after this many bytes of values read or
   * written (maintenance commands that touch the whole volume: gc, fsck, load; off by default: a mount's hot
   * pages stay mapped)
   */
  releaseMappedEvery?: number;
  /**
   * keep a write-ahead log (lmdb-log.ts) when this process can take the store's log lock (default true): writes
   * cost an append, a sync one fdatasync, and LMDB takes them in checkpoints. false, or the lock held by another
   * process: every write is its own durable LMDB transaction.
   */
  log?: boolean;
  /**
   * keys other processes read and write while this one runs (a load job's record, a mount's session record, the
   * volume record): written straight to LMDB in a durable transaction, never through the log, so that another
   * process sees them at once and a commit on them is atomic across processes. An entry ending in '/' names a
   * collection (and what is below it), any other one key.
   */
  sharedKeys?: readonly string[];
  /** writes wait while the log holds this many bytes that LMDB does not yet (default: env KVFS_LOG_LIMIT_BYTES, else 64 MiB) */
  logLimitBytes?: number;
}

/**
 * A KvStore on LMDB (lmdb-js) in one directory: data.mdb and lock.mdb hold the metadata; blob keys (`b/<id>`)
 * are files under blobs/ (blob-files.ts: allocation left to the filesystem, I/O off the event loop), except
 * small blobs (at most SMALL_BLOB bytes: slices of small writes), which LMDB keeps: a file each would cost a
 * create, an fdatasync and a directory fsync per 4 KiB write, where LMDB syncs a whole batch at once. Keys are
 * strings (lmdb-js's ordered-binary encoding keeps printable ASCII as its bytes, so key order is byte order);
 * values are raw bytes. Blob keys are written with put and deleted with del only (kv.ts): a commit that names one
 * is INVALID. A store written before blobs had files keeps its old blobs in LMDB: they are read and deleted there.
 *
 * Writes, in log mode (this process holds DIR/log.lock, the first to open the store; the mount, and maintenance
 * commands that hold the daemon lock): each write (put of metadata or a small blob, del, incr, commit) is one
 * record appended to the write-ahead log (lmdb-log.ts: one write() call, in the page cache when the call returns)
 * and kept in memory (an Overlay) until a checkpoint hands it to LMDB: many records in one LMDB transaction, written
 * and fsynced by lmdb-js's writer thread, off the event loop; then the log file that held them is deleted. Reads
 * look in the overlays first. A commit's checks and writes run in one turn of JavaScript, so no other write of this
 * process comes between them. A checkpoint starts every CHECKPOINT_MS after a write, or at CHECKPOINT_BYTES; writes
 * wait while the overlays hold logLimitBytes (a checkpoint that cannot finish: LMDB's write lock held elsewhere).
 * In direct mode (another process holds the log lock, or log: false), every write is one synchronous LMDB write
 * transaction on the main thread (transactionSync), made durable before it returns. Either way writes apply in
 * call order. Other processes see this one's writes once a checkpoint took them (within CHECKPOINT_MS): a
 * direct-mode writer beside a log owner (kvfs config on a mounted store) is not atomic with the owner's writes.
 * Values are copied when a write is called, except a blob file's, which is written from the caller's buffer
 * (kv.ts: unchanged until the put settles).
 *
 * Durability: a write that resolved is in the log file (or, direct, LMDB's file), or its blob file, in the OS page
 * cache: it survives a kill -9 of the process; the next open replays the log. `sync()` fdatasyncs the blob files
 * written since the last sync, then the log (a SYNCED record, then fdatasync), so every write before it survives a
 * machine crash too, and metadata on disk never names a blob that is not; the store also syncs on its own (the
 * same way) within a second of any write. A checkpoint syncs the blob files before its LMDB transaction, which
 * LMDB commits with its own fsyncs (no MDB_NOSYNC: its file is always whole at its last commit). After a machine
 * crash, replay stops at the log's last SYNCED record: the store comes back as of its last completed sync.
 *
 * Space: a gate (lmdb-space.ts) admits each write only when the store has room for it, so LMDB never runs out of
 * disk mid-transaction (which makes lmdb-js print to stderr, and can abort the process). A write the gate refuses
 * is NOSPACE at once, naming the filesystem, its free bytes, and what frees space; it keeps room for deletes, so
 * a full store can always delete, and LMDB reuses freed pages for later writes. `info()` reports the store's
 * capacity (the disk's free space plus the store's file) and what it can still take.
 *
 * Errors: NOSPACE as above, and when LMDB or the filesystem refuses a write all the same (ENOSPC, EDQUOT, EFBIG,
 * MDB_MAP_FULL, or EIO, LMDB's word for a short write, with the disk nearly full), naming the limit; each NOSPACE
 * carries its episode (FullEpisodes) for the log. Use after close is CLOSED; a damaged file is CORRUPT; any other
 * EIO is UNAVAILABLE; an over-long key (over ~1978 bytes) is INVALID.
 */
export class LmdbStore implements KvStore {
  /** the absolute directory holding the store */
  readonly dir: string;
  readonly #db: RootDatabase<Buffer, string>;
  readonly #blobs: BlobFiles;
  /** the data file's resolved path, as /proc/self/maps names it (#releaseMapped) */
  #dataFile: string | undefined;
  /** LmdbStoreOptions.releaseMappedEvery (0: off), and the bytes of values read and written since the last release */
  #releaseEvery = 0;
  #touchedBytes = 0;
  /** small blobs waiting for their transaction (#putSmall) */
  #small: { writes: { key: string; value: Buffer }[]; done: Promise<void>; run: () => void } | undefined;
  /** whether LMDB itself holds blobs (small ones, or a store written before blob files): reads look there first */
  #blobsInDb: boolean;
  readonly #space: LmdbSpace;
  readonly #episodes = new FullEpisodes();
  #closed = false;
  /** writes since the last fsync, and the timer that fsyncs them within SYNC_INTERVAL_MS */
  #unsynced = false;
  /** writes called so far (a count), the count the last completed sync covered, and who waits for one (durable) */
  #writeGen = 0;
  #durableGen = 0;
  #durableWaiters: { gen: number; resolve: () => void; reject: (e: unknown) => void }[] = [];
  /** blob bytes written since the last write-behind sync, and that sync while it runs */
  #behindBytes = 0;
  #behind: Promise<void> | undefined;
  #syncTimer: NodeJS.Timeout | undefined;
  /** when the timer's sync starts (Date.now() time) */
  #syncDue = 0;
  /** log mode: the log, its lock's descriptor, the writes LMDB does not hold yet (the newest first) */
  #log: WriteLog | undefined;
  #logLock: number | undefined;
  #mem = new Overlay();
  /** the writes a checkpoint is handing to LMDB, and the log file they end in */
  #frozen: Overlay | undefined;
  #frozenEnd = 0;
  #checkpointing: Promise<void> | undefined;
  #checkpointTimer: NodeJS.Timeout | undefined;
  /** the last checkpoint's failure (sync reports it; the writes stay in the log and the overlays) */
  #checkpointError: unknown;
  #logLimit = DEFAULT_LOG_LIMIT;
  #sharedKeys: readonly string[] = [];
  /** writes waiting for the overlays to drain (in call order) */
  #stall: Promise<void> | undefined;
  /** counts, for stats and tests */
  readonly logStats = { checkpoints: 0, replayed: 0, dropped: 0, stalls: 0 };

  private constructor(dir: string, db: RootDatabase<Buffer, string>) {
    this.dir = dir;
    this.#db = db;
    // spares (blob-files.ts rule 5) only while the disk, as last measured, has room for many times what they hold
    this.#blobs = new BlobFiles(dir, { spareWhen: () => this.#space.roomy(SPARE_ROOM) });
    this.#blobsInDb = false;
    for (const key of db.getKeys({ start: BLOB_PREFIX, limit: 1 })) this.#blobsInDb = key.startsWith(BLOB_PREFIX);
    this.#space = new LmdbSpace(dir, () => db.getStats() as never);
  }

  /** opens (creating if missing) the store in directory `dir` */
  static async open(dir: string, opts: LmdbStoreOptions = {}): Promise<LmdbStore> {
    try {
      await mkdir(dir, { recursive: true });
      const db = open<Buffer, string>({
        path: dir,
        noSubdir: false, // lmdb-js would take a path with a '.' in it for a file name
        encoding: 'binary',
        noSync: false, // LMDB commits only in checkpoints (log mode), each durable: see Durability above

        overlappingSync: false,
        // with event-turn batching, lmdb-js leaves the promise of each batch's start unhandled, so a failed commit
        // (a full disk) would be an unhandled rejection and end the process; every write here is its own
        // transaction callback, which lmdb-js still batches, so nothing depends on event-turn batching
        eventTurnBatching: false,
        mapSize: opts.mapSize ?? DEFAULT_MAP_SIZE,
      });
      const store = new LmdbStore(dir, db);
      store.#releaseEvery = opts.releaseMappedEvery ?? 0;
      store.#sharedKeys = opts.sharedKeys ?? [];
      store.#logLimit = opts.logLimitBytes ?? (Number(process.env.KVFS_LOG_LIMIT_BYTES) || DEFAULT_LOG_LIMIT);
      store.#openLog(opts.log ?? true);
      return store;
    } catch (e) {
      let err: StoreError | undefined;
      try {
        err = translate(e, dir, { write: true });
      } catch { /* of no known kind */ }
      if (err?.code === 'NOSPACE') throw err;
      throw new StoreError('CONFIG', `cannot open LMDB store at ${dir}: ${messageOf(e)}`, { cause: e });
    }
  }

  /**
   * Log mode, if this process can take the log lock: replays what a killed owner left in the log (one durable LMDB
   * transaction), deletes it, and starts a new log file. Without the lock, direct mode.
   */
  #openLog(want: boolean): void {
    if (!want) return;
    const fd = native().lockFile(join(this.dir, 'log.lock'));
    if (fd < 0) return;
    this.#logLock = fd;
    try {
      const r = recover(this.dir);
      if (r.writes.length) {
        const set = setIn(this.#db);
        this.#db.transactionSync(() => { for (const w of r.writes) set(w.key, w.value); });
        if (r.writes.some((w) => isBlob(w.key))) this.#blobsInDb = true;
      }
      this.logStats.replayed = r.writes.length;
      this.logStats.dropped = r.dropped;
      this.#log = new WriteLog(this.dir, r.next, r.files);
    } catch (e) {
      closeSync(fd);
      this.#logLock = undefined;
      throw e;
    }
  }

  /** bytes the overlays hold (kv.ts) */
  get heldBytes(): number {
    return this.#overlayBytes();
  }

  /** whether writes go to the log (this process holds its lock) */
  get logged(): boolean {
    return this.#log !== undefined;
  }

  /** whether key is one of sharedKeys (never in the log) */
  #isShared(key: string): boolean {
    for (const s of this.#sharedKeys) if (s.endsWith('/') ? key.startsWith(s) : key === s) return true;
    return false;
  }

  /**
   * the value a metadata key (or small blob) holds: the overlays first, then LMDB. With `peek`, a value read from
   * LMDB is its map's memory, valid only until the next read: for a look that ends at once (a comparison, whether
   * the key exists), which then copies nothing.
   */
  #value(key: string, peek = false): Buffer | undefined {
    if (this.#log) {
      const m = this.#mem.values.get(key);
      if (m !== undefined) return m ?? undefined;
      const f = this.#frozen?.values.get(key);
      if (f !== undefined) return f ?? undefined;
    }
    if (!peek) return this.#db.get(key);
    // (lmdb-js's fast buffer reports the value's length but spans its whole shared buffer: a view of the value alone)
    const v = this.#db.getBinaryFast(key);
    return v?.subarray(0, v.length);
  }

  async get(key: string): Promise<Uint8Array | undefined> {
    this.#ready();
    if (isBlob(key)) return this.#getBlob(key);
    return this.#touched(this.#read(() => this.#value(key)));
  }

  async getMany(keys: readonly string[]): Promise<(Uint8Array | undefined)[]> {
    this.#ready();
    if (!keys.some(isBlob)) return this.#read(() => keys.map((k) => this.#touched(this.#value(k))));
    return Promise.all(keys.map((k) => (isBlob(k) ? this.#getBlob(k) : this.#touched(this.#read(() => this.#value(k))))));
  }

  /**
   * counts a value read or written through the map (releaseMappedEvery): at least a page, and one more for the
   * way down the B-tree (a write copies the pages it changes out of the map)
   */
  #touched<T extends Uint8Array | undefined>(v: T): T {
    if (this.#releaseEvery && v && (this.#touchedBytes += Math.max(v.length, PAGE) + PAGE) >= this.#releaseEvery) {
      this.#touchedBytes = 0;
      this.#releaseMapped();
    }
    return v;
  }

  async put(key: string, value: Uint8Array, opts?: PutOptions): Promise<void> {
    this.#live();
    if (isBlob(key) && value.byteLength <= SMALL_BLOB) return this.#putSmall(key, value);
    this.#flushSmall();
    if (isBlob(key)) {
      // the gate still admits it: blob files and LMDB share the disk, and LMDB must keep room for deletes
      const apart = opts?.syncApart === true;
      await this.#write([{ key, value }], 'grow', () => this.#blobs.put(key, value, apart), true);
      if (!apart) this.#writeBehind(value.byteLength);
      return;
    }
    const bytes = Buffer.from(value);
    await this.#write([{ key, value: bytes }], 'grow', () => this.#atomic((set) => set(key, bytes), [key]), true);
  }

  async del(keys: readonly string[]): Promise<void> {
    this.#ready();
    if (keys.length === 0) return;
    const ks = this.#blobsInDb ? [...keys] : keys.filter((k) => !isBlob(k));
    // a blob LMDB held (a small one) has no file to unlink
    const inDb = new Set<string>();
    // (a del need not be atomic: shared keys go apart from the rest, #atomic)
    const shared = this.#sharedKeys.length ? ks.filter((k) => this.#isShared(k)) : [];
    for (const part of shared.length ? [shared, ks.filter((k) => !this.#isShared(k))] : [ks]) {
      if (!part.length) continue;
      await this.#write(part.map((key) => ({ key, value: null })), 'free', () => this.#atomic((set) => {
        for (const k of part) {
          if (this.#value(k, true) === undefined) continue;
          set(k, null);
          if (isBlob(k)) inDb.add(k);
        }
      }, part));
    }
    const files = keys.filter((k) => isBlob(k) && !inDb.has(k));
    if (files.length) await this.#blobs.del(files).catch((e: unknown) => { throw translate(e, this.dir, {}); });
  }

  async getRange(key: string, offset: number, length: number): Promise<Uint8Array | undefined> {
    this.#ready();
    if (!isBlob(key)) return (await this.get(key))?.subarray(offset, offset + length);
    const inDb = this.#blobInDb(key);
    if (inDb) return inDb.subarray(offset, offset + length);
    try {
      return await this.#blobs.getRange(key, offset, length);
    } catch (e) {
      throw translate(e, this.dir, {});
    }
  }

  blobFile(key: string, length: number): string | undefined {
    if (!isBlob(key) || length <= SMALL_BLOB) return undefined;
    try {
      return this.#blobs.path(key);
    } catch {
      return undefined;
    }
  }

  /**
   * Small blobs put in one run of JavaScript (a commit's slices) are written in one LMDB transaction, on the
   * next microtask or as soon as any other call comes (so writes still apply in call order, and a get sees every
   * put before it); each put resolves when its batch is written.
   */
  #putSmall(key: string, value: Uint8Array): Promise<void> {
    this.#blobs.path(key); // the same ids as files take (kv.ts), wherever a blob is kept
    this.#blobsInDb = true;
    let batch = this.#small;
    if (!batch) {
      const writes: { key: string; value: Buffer }[] = [];
      let run!: () => void;
      const done = new Promise<void>((resolve, reject) => {
        run = () => {
          if (this.#small !== batch) return;
          this.#small = undefined;
          this.#write(writes, 'grow', () => this.#atomic((set) => { for (const w of writes) set(w.key, w.value); }, []), true)
            .then(() => resolve(), reject);
        };
      });
      batch = this.#small = { writes, done, run };
      queueMicrotask(run);
    }
    batch.writes.push({ key, value: Buffer.from(value) });
    return batch.done;
  }

  #flushSmall(): void {
    this.#small?.run();
  }

  /** a blob LMDB holds (a small one, or one of a store written before blob files) */
  #blobInDb(key: string): Uint8Array | undefined {
    return this.#blobsInDb ? this.#touched(this.#read(() => this.#value(key))) : undefined;
  }

  /** a blob from LMDB, else from its file */
  async #getBlob(key: string): Promise<Uint8Array | undefined> {
    const inDb = this.#blobInDb(key);
    if (inDb) return inDb;
    try {
      return await this.#blobs.get(key);
    } catch (e) {
      throw translate(e, this.dir, {});
    }
  }

  async scan(prefix: string, opts: ScanOptions = {}): Promise<[string, Uint8Array][]> {
    const db = this.#ready();
    checkScan(prefix, opts);
    const { after, limit = Infinity } = opts;
    if (prefix === BLOB_PREFIX) {
      const keys = (await this.keys(BLOB_PREFIX)).filter((k) => after === undefined || k > after).slice(0, limit);
      const values = await this.getMany(keys);
      return keys.flatMap((k, i) => (values[i] ? [[k, values[i]!] as [string, Uint8Array]] : []));
    }
    const over = this.#overlayOf(prefix, after, limit);
    if (!over) return this.#scanDb(db, prefix, after, limit);
    // LMDB's rows merged with the overlays': each deleted key there can hide one row of LMDB's, so `dead` more rows
    // make the first `limit` of the merge exact (every key up to LMDB's last row read is in one or the other)
    let dead = 0;
    const held = new Set<string>();
    for (const [k, v] of over) {
      held.add(k);
      if (v === null) dead++;
    }
    const rows = this.#scanDb(db, prefix, after, limit + dead);
    const out: [string, Uint8Array][] = [];
    let i = 0;
    let j = 0;
    while (out.length < limit && (i < rows.length || j < over.length)) {
      if (i < rows.length && held.has(rows[i]![0])) {
        i++;
        continue;
      }
      if (j < over.length && over[j]![1] === null) {
        j++;
        continue;
      }
      if (j >= over.length || (i < rows.length && keyCompare(rows[i]![0], over[j]![0]) < 0)) out.push(rows[i++]!);
      else out.push(over[j++] as [string, Buffer]);
    }
    return out;
  }

  /**
   * Members of collection `prefix` after `after` that the overlays hold (the newest value of each; null: deleted),
   * in byte order, up to the `limit`-th that holds a value: none after it can be among a scan's first `limit`, nor
   * hide one of LMDB's that is. Undefined for none.
   */
  #overlayOf(prefix: string, after: string | undefined, limit: number): [string, Buffer | null][] | undefined {
    if (!this.#log) return undefined;
    const older = this.#frozen?.collection(prefix) ?? [];
    const newer = this.#mem.collection(prefix) ?? [];
    if (!older.length && !newer.length) return undefined;
    let i = firstAfter(older, after);
    let j = firstAfter(newer, after);
    const out: [string, Buffer | null][] = [];
    let live = 0;
    while (live < limit && (i < older.length || j < newer.length)) {
      const c = i >= older.length ? 1 : j >= newer.length ? -1 : keyCompare(older[i]!, newer[j]!);
      let key: string;
      let value: Buffer | null;
      if (c < 0) {
        key = older[i++]!;
        value = this.#frozen!.values.get(key)!;
      } else {
        if (c === 0) i++;
        key = newer[j++]!;
        value = this.#mem.values.get(key)!;
      }
      out.push([key, value]);
      if (value) live++;
    }
    return out.length ? out : undefined;
  }

  /** LMDB's members of a collection: the key range [prefix, end), prefix with its final '/' raised to '0' */
  #scanDb(db: RootDatabase<Buffer, string>, prefix: string, after: string | undefined, limit: number): [string, Uint8Array][] {
    const end = prefix.slice(0, -1) + '0';
    const start = after !== undefined && after > prefix ? after : prefix;
    if (start >= end) return [];
    return this.#read(() => {
      const out: [string, Uint8Array][] = [];
      for (const { key, value } of db.getRange({ start, end })) {
        if (key === after || key.indexOf('/', prefix.length) >= 0) continue; // another (deeper) collection
        out.push([key, value]);
        if (out.length >= limit) break;
      }
      return out;
    });
  }

  keys(prefix: string): Promise<string[]> {
    return collectKeys(this.keyPages(prefix));
  }

  async *keyPages(prefix: string, limit = KEY_PAGE): AsyncGenerator<string[]> {
    checkPageLimit(limit);
    // LMDB first takes what the log holds: a key present for the whole walk is then in LMDB
    this.#ready();
    await this.#checkpointAll();
    // the database's keys, a read transaction per page (each page starts after the last key of the one before)
    let after: string | undefined;
    for (let pages = 1; ; pages++) {
      if (pages % RELEASE_EVERY === 0) this.#releaseMapped();
      const db = this.#ready();
      const start = after;
      const page = this.#read(() => {
        const out: string[] = [];
        for (const key of db.getKeys({ start: start ?? prefix })) {
          if (key === start) continue;
          if (!key.startsWith(prefix) || out.length >= limit) break;
          out.push(key);
        }
        return out;
      });
      if (page.length) yield page;
      if (page.length < limit) break;
      after = page[page.length - 1];
    }
    this.#releaseMapped();
    // blob files (a blob is in the database or in a file, never both)
    if (!BLOB_PREFIX.startsWith(prefix) && !prefix.startsWith(BLOB_PREFIX)) return;
    this.#ready();
    try {
      yield* this.#blobs.keyPages(prefix, limit);
    } catch (e) {
      throw translate(e, this.dir, {});
    }
  }

  async incr(key: string, delta: number): Promise<number> {
    this.#ready();
    // a read (statfs, status) writes nothing, so it works on a full store
    if (delta === 0) return this.#read(() => addCounter(key, this.#value(key), 0));
    return this.#write([{ key, value: COUNTER }], 'free', () =>
      this.#atomic((set) => {
        const next = addCounter(key, this.#value(key), delta);
        set(key, Buffer.from(String(next)));
        return next;
      }, [key]),
    );
  }

  async commit(checks: readonly KvCheck[], writes: readonly KvWrite[], _txid?: string): Promise<boolean> {
    this.#ready();
    const blob = [...checks, ...writes].find((c) => isBlob(c.key));
    if (blob) throw new StoreError('INVALID', `a commit cannot name the blob key '${blob.key}': blobs are written with put and deleted with del`);
    // LMDB commits are local and never retried, so txid needs no record
    const cs = checks.map((c) => ({ key: c.key, value: c.value && Buffer.from(c.value) }));
    const ws = writes.map((w) => ({ key: w.key, value: w.value && Buffer.from(w.value) }));
    return this.#write(ws, kindOf(ws), () =>
      this.#atomic((set) => {
        for (const c of cs) {
          const cur = this.#value(c.key, true);
          if (cur === undefined || c.value === undefined ? cur !== c.value : !cur.equals(c.value)) return false;
        }
        for (const w of ws) set(w.key, w.value);
        return true;
      }, ws.map((w) => w.key)),
    );
  }

  async sync(): Promise<void> {
    const db = this.#ready();
    await this.#flush(() => this.#syncAll(db));
  }

  async syncBlobs(keys: readonly string[]): Promise<void> {
    this.#ready();
    const files = keys.filter((k) => isBlob(k) && this.#value(k, true) === undefined);
    await this.#flush(() => this.#blobs.syncOnly(files));
  }

  /** blob files first, then the log (or LMDB): metadata on disk never names a blob that is not (blob-files.ts rule 2) */
  async #syncAll(db: RootDatabase<Buffer, string>): Promise<void> {
    const gen = this.#writeGen;
    try {
      await this.#blobs.sync();
      if (this.#log) await this.#log.sync();
      else await envSync(db);
    } catch (e) {
      for (const w of this.#durableWaiters.splice(0)) w.reject(e);
      throw e;
    }
    this.#durable(gen);
    // a checkpoint that keeps failing: its writes are durable in the log, but the log cannot be trimmed; say so
    if (this.#checkpointError !== undefined) throw this.#checkpointError;
  }

  /** the writes up to count gen are durable: their waiters go */
  #durable(gen: number): void {
    if (gen <= this.#durableGen) return;
    this.#durableGen = gen;
    const left = [];
    for (const w of this.#durableWaiters) {
      if (w.gen <= gen) w.resolve();
      else left.push(w);
    }
    this.#durableWaiters = left;
  }

  async durable(): Promise<void> {
    this.#ready();
    const gen = this.#writeGen;
    // direct mode: every write was durable when it resolved (a transaction of its own)
    if (!this.#log || gen <= this.#durableGen) return;
    await new Promise<void>((resolve, reject) => {
      this.#durableWaiters.push({ gen, resolve, reject });
      this.#syncWithin(DURABLE_SYNC_MS, true);
    });
  }

  /** capacity: the disk's free space plus the store's file; free: what writes that grow the store can still take */
  async info(): Promise<KvEngineInfo> {
    this.#ready();
    const f = this.#read(() => this.#space.measure());
    // the blob files are the store's too: what it could hold is the disk's free space plus all it holds
    // spares are given back when a write needs their room (#write)
    await this.#blobs.sparesFound;
    const spare = this.#blobs.spareBytes;
    return { engine: 'lmdb', capacityBytes: capacity(f) + this.#blobs.bytes + spare, freeBytes: available(f, this.#space.keep) + spare, reusableBytes: spare };
  }

  /** waits for every write already called, makes them durable, and closes; later calls fail with CLOSED */
  async close(): Promise<void> {
    clearTimeout(this.#syncTimer);
    if (this.#closed) return;
    this.#flushSmall();
    this.#closed = true;
    clearTimeout(this.#checkpointTimer);
    const db = this.#db;
    try {
      if (this.#log) {
        // LMDB takes everything; the log is deleted only then (a failure leaves it for the next open to replay)
        await this.#flush(() => this.#checkpointAll());
        await this.#flush(() => this.#blobs.sync());
        this.#log.close();
        this.#durable(this.#writeGen);
      } else {
        await this.#flush(() => this.#syncAll(db));
      }
    } finally {
      const closed = new StoreError('CLOSED', `the store in ${this.dir} closed before its writes were made durable`);
      for (const w of this.#durableWaiters.splice(0)) w.reject(closed);
      if (this.#logLock !== undefined) closeSync(this.#logLock);
      await db.close();
    }
  }

  /**
   * Runs fn, which reads with #value and writes with `set`, as one atomic write: in log mode as it runs (one turn of
   * JavaScript) and then one log record and the overlay; in direct mode inside one LMDB write transaction.
   */
  #atomic<T>(fn: (set: (key: string, value: Buffer | null) => void) => T, keys: readonly string[]): T {
    const db = this.#db;
    // shared keys straight to LMDB (with the rest of a commit: #write emptied the log first)
    if (!this.#log || keys.some((k) => this.#isShared(k))) return db.transactionSync(() => fn(setIn(db)));
    const writes: LogWrite[] = [];
    const out = fn((key, value) => void writes.push({ key, value }));
    if (writes.length) {
      this.#log.append(writes);
      for (const w of writes) {
        // a key made and deleted while the overlay holds it, that neither the frozen overlay nor LMDB holds, needs
        // no tombstone (a queue's entries: scans would walk past them)
        if (w.value === null && this.#mem.values.get(w.key) && this.#frozen?.values.get(w.key) === undefined &&
            this.#db.get(w.key) === undefined) this.#mem.forget(w.key);
        else this.#mem.set(w.key, w.value);
      }
      if (this.#mem.bytes >= CHECKPOINT_BYTES) void this.#checkpoint();
      else this.#checkpointIn(CHECKPOINT_MS);
    }
    return out;
  }

  /**
   * Hands the writes the log holds to LMDB: freezes the overlay (reads still find it) and starts a new log file;
   * syncs the blob files (LMDB must not name a blob that is not on disk); writes the frozen overlay into LMDB through
   * lmdb-js's writer thread, in one or a few transactions each made durable; then deletes the older log files and
   * the frozen overlay. One at a time; a failure keeps everything (the next attempt writes the same again) and is
   * reported by sync.
   */
  #checkpoint(): Promise<void> {
    if (this.#checkpointing) return this.#checkpointing;
    if (!this.#log || (!this.#mem.size && !this.#frozen)) return Promise.resolve();
    clearTimeout(this.#checkpointTimer);
    this.#checkpointTimer = undefined;
    const run = async () => {
      const log = this.#log!;
      if (!this.#frozen) {
        const end = log.rotate();
        this.#frozen = this.#mem;
        this.#mem = new Overlay();
        this.#frozenEnd = end;
      } else if (this.#mem.size) {
        // a failed checkpoint again: with the writes since, newest last (their deletes may be what frees the disk)
        const end = log.rotate();
        for (const [k, v] of this.#mem.values) this.#frozen.set(k, v);
        this.#frozen.need += this.#mem.need;
        this.#mem = new Overlay();
        this.#frozenEnd = end;
      }
      const frozen = this.#frozen;
      await this.#blobs.sync();
      const db = this.#db;
      const done: Promise<boolean>[] = [];
      for (const [key, value] of frozen.values) done.push(value === null ? db.remove(key) : db.put(key, value));
      try {
        await Promise.all(done);
      } catch (e) {
        // lmdb-js rejects each write with a wrapper, and the commit's own error (ENOSPC, EIO) in e.commitError
        const commitError = (e as { commitError?: Promise<unknown> } | null)?.commitError;
        throw (commitError ? await commitError.then(() => e, (c: unknown) => c) : e);
      }
      log.drop(this.#frozenEnd);
      await log.syncDir();
      this.#frozen = undefined;
      this.#checkpointError = undefined;
      this.logStats.checkpoints++;
    };
    const p = run()
      .catch((e: unknown) => { this.#checkpointError = translate(e, this.dir, { write: true }); })
      .finally(() => {
        this.#checkpointing = undefined;
        if (this.#closed) return;
        // more came meanwhile; after a failure, try again later
        if (this.#frozen || this.#mem.bytes >= CHECKPOINT_BYTES) this.#checkpointIn(this.#frozen ? CHECKPOINT_RETRY_MS : 0);
        else if (this.#mem.size) this.#checkpointIn(CHECKPOINT_MS);
      });
    this.#checkpointing = p;
    return p;
  }

  /** a checkpoint in ms, unless one is set to start already */
  #checkpointIn(ms: number): void {
    this.#checkpointTimer ??= setTimeout(() => {
      this.#checkpointTimer = undefined;
      void this.#checkpoint();
    }, ms).unref();
  }

  /** checkpoints until LMDB holds every write called before this; throws the failure of one */
  async #checkpointAll(): Promise<void> {
    if (!this.#log) return;
    for (let round = 0; round < 3 && (this.#checkpointing || this.#frozen || this.#mem.size); round++) {
      await this.#checkpoint();
      if (this.#checkpointError !== undefined) throw this.#checkpointError;
    }
  }

  /** bytes the overlays hold */
  #overlayBytes(): number {
    return this.#mem.bytes + (this.#frozen?.bytes ?? 0);
  }

  /**
   * Runs `fn` after the writes waiting before it (in call order): later writes wait for it. For writes that must
   * wait for a checkpoint (#write).
   */
  async #inTurn(fn: () => Promise<void>): Promise<void> {
    const before = this.#stall;
    const mine = (async () => {
      await before;
      await fn();
    })();
    this.#stall = mine;
    try {
      await mine;
    } finally {
      if (this.#stall === mine) this.#stall = undefined;
    }
  }

  /** waits until the overlays hold less than logLimitBytes (checkpoints; a failing one is tried again every second) */
  async #room(): Promise<void> {
    if (this.#overlayBytes() >= this.#logLimit) this.logStats.stalls++;
    while (this.#overlayBytes() >= this.#logLimit && !this.#closed) {
      await this.#checkpoint();
      if (this.#checkpointError !== undefined) await new Promise((r) => setTimeout(r, CHECKPOINT_RETRY_MS));
    }
  }

  /** the database for a call other than a small blob's put: small blobs waiting for their batch are written first */
  #ready(): RootDatabase<Buffer, string> {
    const db = this.#live();
    this.#flushSmall();
    return db;
  }

  /** the database, or CLOSED once close() was called */
  #live(): RootDatabase<Buffer, string> {
    if (this.#closed) throw new StoreError('CLOSED', `LMDB store at ${this.dir} is closed`);
    return this.#db;
  }

  /**
   * A walk of the whole keyspace (keyPages, and the values its caller reads page by page) maps the data file page
   * by page, and each page it touched would count in this process's RSS until the end: a maintenance command over a
   * volume of a million files would show the whole file. Every RELEASE_EVERY pages of keys the mapping's pages are
   * handed back (native/mapped.h: they stay in the page cache). A failure only leaves them counted.
   */
  #releaseMapped(): void {
    try {
      this.#dataFile ??= realpathSync(join(this.dir, 'data.mdb'));
      native().releaseMapped(this.#dataFile);
    } catch { /* counted, not lost */ }
  }

  #read<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      throw translate(e, this.dir, {});
    }
  }

  /**
   * Every WRITE_BEHIND_BYTES of blob files, their sync starts in the background (blob files alone: durable early
   * is always safe), so that the disk writes a large file's data while the rest of it comes, and the fsync at its
   * end finds little left to write. A failed one leaves its files to the next sync, which reports it.
   */
  #writeBehind(bytes: number): void {
    this.#behindBytes += bytes;
    if (this.#behindBytes < WRITE_BEHIND_BYTES || this.#behind) return;
    this.#behindBytes = 0;
    this.#behind = this.#blobs.sync().catch(() => undefined).finally(() => { this.#behind = undefined; });
  }

  /** a write was called: it is fsynced in the background within SYNC_INTERVAL_MS (bounding what a machine crash can take) */
  #scheduleSync(): void {
    this.#unsynced = true;
    this.#writeGen++;
    this.#syncWithin(SYNC_INTERVAL_MS, false);
  }

  /**
   * the background sync starts within `ms` (sooner than it was due, never later); `waited`: someone waits for it
   * (durable), and the timer keeps the process alive
   */
  #syncWithin(ms: number, waited: boolean): void {
    if (this.#closed) return;
    if (this.#syncTimer && this.#syncDue <= Date.now() + ms) {
      // due soon enough already; a background timer someone now waits for keeps the process alive too
      if (waited) this.#syncTimer.ref();
      return;
    }
    clearTimeout(this.#syncTimer);
    this.#syncDue = Date.now() + ms;
    this.#syncTimer = setTimeout(() => {
      this.#syncTimer = undefined;
      if (!this.#unsynced || this.#closed) return;
      this.#unsynced = false;
      this.#syncAll(this.#db).catch(() => { this.#unsynced = true; });
    }, ms);
    if (!waited) this.#syncTimer.unref?.();
  }

  /**
   * One write transaction `fn`, if the gate admits it (lmdb-space.ts): `writes` are what it writes (values, or null
   * for a delete), `kind` whether it grows the store or frees, `named` whether a commit will name what it writes.
   */
  async #write<T>(
    writes: readonly { key: string; value: Uint8Array | null }[], kind: WriteKind, fn: () => T | Promise<T>, named = false,
  ): Promise<T> {
    if (this.#releaseEvery) for (const w of writes) this.#touched(w.value ?? undefined);
    const space = this.#space;
    let need = 0;
    let refusedBy: LmdbFigures | undefined;
    const shared = this.#log !== undefined && writes.some((w) => this.#isShared(w.key));
    const log = this.#log !== undefined && !shared && !(writes.length === 1 && isBlob(writes[0]!.key) && (writes[0]!.value?.length ?? 0) > SMALL_BLOB);
    if (this.#stall || (log && this.#overlayBytes() >= this.#logLimit)) await this.#inTurn(() => this.#room());
    // a commit of shared keys with others goes straight to LMDB too, once LMDB holds everything the log does (a
    // later replay must not bring an older value of one of its keys back over it)
    if (shared && writes.some((w) => !this.#isShared(w.key))) await this.#inTurn(() => this.#checkpointAll());
    let pages = 0;
    const admit = () => {
      try {
        // in log mode a write takes disk twice until a checkpoint deletes its log file, and the pages of the
        // writes the log holds are still to come: the room must hold them too
        pages = needOf(space.pageSize, writes, named);
        need = pages + (log ? recordBytes(writes) : 0);
        return space.admit(need + (log ? this.#mem.need + (this.#frozen?.need ?? 0) : 0), kind);
      } catch (e) {
        throw translate(e, this.dir, {});
      }
    };
    refusedBy = admit();
    if (refusedBy && this.#blobs.spareBytes) {
      // the blob files kept for reuse give their room back
      await this.#blobs.releaseSpares().catch(() => undefined);
      refusedBy = admit();
    }
    if (refusedBy && log && (this.#mem.size || this.#frozen)) {
      // the log's copies take disk until a checkpoint: one may free enough (a failed one leaves the refusal)
      await this.#inTurn(() => this.#checkpointAll().catch(() => undefined));
      refusedBy = admit();
    }
    if (refusedBy) {
      const err = new StoreError('NOSPACE', fullMessage(this.dir, space.mountPoint, refusedBy, need, space.keep));
      err.episode = this.#episodes.refused(need);
      throw err;
    }
    this.#scheduleSync();
    try {
      const out = await fn();
      // a commit whose checks failed wrote nothing
      if (log && out !== false) this.#mem.need += pages;
      if (out !== false) {
        space.succeeded(need, kind);
        if (kind === 'grow') this.#episodes.succeeded(need);
      }
      return out;
    } catch (e) {
      const f = isStoreError(e) ? undefined : space.tryMeasure();
      const err = translate(e, this.dir, { write: true, figures: f, need, mountPoint: space.mountPoint });
      if (err.code === 'NOSPACE') {
        space.refused(need, f);
        err.episode = this.#episodes.refused(need);
      }
      throw err;
    }
  }

  /** an fsync of earlier writes */
  async #flush(fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (e) {
      throw translate(e, this.dir, { write: true });
    }
  }
}

const isBlob = (key: string) => key.startsWith(BLOB_PREFIX);

/** a walk of the keys hands the data file's mapped pages back every this many pages of keys (#releaseMapped) */
const RELEASE_EVERY = 4;
/** LMDB's page size here (what a value touches at least) */
const PAGE = 4096;

/** spare blob files are kept only while the disk has this much room beyond what the gate keeps */
const SPARE_ROOM = 4 << 30;

/** blobs of at most this many bytes are kept in LMDB, not as files */
export const SMALL_BLOB = 16 << 10;

/** the log: a checkpoint this long after a write, or once the overlay holds this many bytes; a failed one again after */
const CHECKPOINT_MS = 1000;
const CHECKPOINT_BYTES = 4 << 20;
const CHECKPOINT_RETRY_MS = 1000;
const DEFAULT_LOG_LIMIT = 64 << 20;

/** a direct write of one key inside an LMDB write transaction (null: delete) */
const setIn = (db: RootDatabase<Buffer, string>) => (key: string, value: Buffer | null): void => {
  if (value === null) db.removeSync(key);
  else db.putSync(key, value);
};

/** blob bytes written between two write-behind syncs (#writeBehind) */
const WRITE_BEHIND_BYTES = 64 << 20;

/** how soon after a write the store fsyncs on its own */
const SYNC_INTERVAL_MS = 1000;
/** how soon a sync starts when someone waits for one (durable: the GC, before it deletes blobs) */
const DURABLE_SYNC_MS = 50;

/** fsyncs the data file and marks the newest committed transaction as the one to reopen at after a crash */
function envSync(db: RootDatabase<Buffer, string>): Promise<void> {
  const env = db as unknown as { sync(done: (err?: Error) => void): void };
  return new Promise((resolve, reject) => env.sync((err) => (err ? reject(err) : resolve())));
}

/** a counter's value, for the gate: 20 digits at most */
const COUNTER = new Uint8Array(20);

/** MDB_* codes from lmdb.h that lmdb-js reports as error.code */
const MDB_MAP_FULL = -30792;
const MDB_CORRUPT = new Set([-30796 /* CORRUPTED */, -30797 /* PAGE_NOTFOUND */, -30793 /* INVALID */, -30794 /* VERSION_MISMATCH */]);
const ENOSPC = new Set<unknown>([28, 'ENOSPC']);
const EDQUOT = new Set<unknown>([122, 'EDQUOT']);
const EFBIG = new Set<unknown>([27, 'EFBIG']);
const EIO = new Set<unknown>([5, 'EIO']);

/** below this much room, an EIO from a write is taken for a short write on a full filesystem */
const NEARLY_FULL = 64 * 2 ** 20;

/** the filesystem holding a store, for messages */
const where = (mountPoint: string | undefined): string =>
  mountPoint ? `the filesystem mounted at ${mountPoint}` : 'the filesystem holding it';

/** what frees space and what raises the limit, the same for every way a store fills up */
const REMEDY = 'free space by deleting files on this volume (the store reuses their space; its file never shrinks) ' +
  'or other files on that filesystem, or move the store\'s directory to a larger filesystem while it is unmounted';

/** the NOSPACE message of a write the gate refused: the limit, the figures, and what frees space */
export function fullMessage(dir: string, mountPoint: string | undefined, f: LmdbFigures, need: number, keep: number): string {
  return `LMDB store at ${dir} is full: the limit is ${where(mountPoint)} (${f.diskTotal} bytes); it has ` +
    `${f.diskFree} bytes free and the store's file ${reusable(f)} bytes of free pages, of which kvfs keeps up to ` +
    `${keep} for deletes: too little for a write of ${need} bytes; ${REMEDY}`;
}

interface TranslateContext {
  /** the error came from a write (EIO there may be a short write) */
  write?: boolean;
  /** figures measured after the error */
  figures?: LmdbFigures;
  /** the failed write's need */
  need?: number;
  mountPoint?: string;
}

/**
 * The StoreError for an error raised by lmdb-js or the filesystem (every write here is a transactionSync, whose
 * commit throws its own error). LMDB reports a short write (the filesystem filled up mid-write) as EIO: EIO from a
 * write with the disk nearly full is NOSPACE. Errors of no known kind are rethrown unchanged: they are bugs, and
 * become EIO, logged with their stack.
 */
function translate(e: unknown, dir: string, cx: TranslateContext): StoreError {
  if (isStoreError(e)) return e;
  const code = (e as { code?: unknown } | null)?.code;
  const msg = messageOf(e);
  const f = cx.figures;
  const free = f ? ` (${f.diskFree} of ${f.diskTotal} bytes free there)` : '';
  const full = (limit: string) => new StoreError('NOSPACE', `LMDB store at ${dir} is full: ${limit}; ${REMEDY}`, { cause: e });
  if (code === MDB_MAP_FULL || msg.includes('MDB_MAP_FULL')) {
    return new StoreError('NOSPACE', `LMDB store at ${dir} is full: its memory map${f ? ` (${f.mapSize} bytes)` : ''} could ` +
      'not grow (MDB_MAP_FULL): the limit is the daemon\'s virtual address space; raise `ulimit -v` for it, or ' +
      'delete files on this volume', { cause: e });
  }
  if (ENOSPC.has(code) || /No space left/i.test(msg)) return full(`the limit is ${where(cx.mountPoint)}, out of space${free}`);
  if (EDQUOT.has(code) || /Disk quota/i.test(msg)) {
    return full(`the limit is the disk quota of the daemon's user on ${where(cx.mountPoint)}${free}: raise it (setquota)`);
  }
  if (EFBIG.has(code) || /File too large/i.test(msg)) {
    return full(`the limit is the largest file size allowed for the store's file (the daemon's \`ulimit -f\`, or ${where(cx.mountPoint)}'s own limit)`);
  }
  if (/database is closed|has been closed/i.test(msg)) return new StoreError('CLOSED', `LMDB store at ${dir} is closed`, { cause: e });
  if (MDB_CORRUPT.has(code as number)) return new StoreError('CORRUPT', `LMDB store at ${dir}: ${msg}`, { cause: e });
  if (EIO.has(code) || /Input\/output error/.test(msg)) {
    if (cx.write && f && cx.need !== undefined && f.diskFree + Math.max(0, f.allocated - f.fileEnd) < cx.need + NEARLY_FULL) {
      return full(`the limit is ${where(cx.mountPoint)}, which refused a write part-way${free}`);
    }
    return new StoreError('UNAVAILABLE', `LMDB store at ${dir}: ${msg}`, { cause: e });
  }
  if (/key size is larger/i.test(msg)) return new StoreError('INVALID', `LMDB store at ${dir}: ${msg}`, { cause: e });
  throw e;
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
