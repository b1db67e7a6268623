import { mkdir, statfs } from 'node:fs/promises';
import { open, type RootDatabase } from 'lmdb';
import { addCounter, checkScan } from './kv-rules.js';
import { StoreError, isStoreError } from './errors.js';
import type { KvCheck, KvEngineInfo, KvStore, KvWrite, ScanOptions } from './kv.js';

/**
 * Initial size of the memory map: 1 GiB of virtual address space. It is not disk: without MDB_WRITEMAP the data
 * file grows only as pages are written. lmdb-js doubles the map on demand with no upper bound, so the store's
 * real limit is the filesystem holding it; a larger initial map only saves remaps (lmdb-js keeps each old map
 * mapped for lingering readers, so fewer remaps means less address space held).
 */
export const DEFAULT_MAP_SIZE = 2 ** 30;

export interface LmdbStoreOptions {
  /** initial map size in bytes (default DEFAULT_MAP_SIZE); the map still grows beyond it on demand */
  mapSize?: number;
}

/**
 * A KvStore on LMDB (lmdb-js) in one directory: data.mdb and lock.mdb. Keys are strings (lmdb-js's
 * ordered-binary encoding keeps printable ASCII as its bytes, so key order is byte order); values are raw bytes.
 *
 * Order and atomicity: every write (put, del, incr, commit) is one synchronous LMDB write transaction on the
 * main thread (transactionSync), so writes apply in call order, and a commit's checks and writes see no other
 * writer in between; an error half-way through a commit aborts its transaction, so nothing of it applies.
 * Values are copied when a write is called, so the caller may reuse its buffers at once.
 *
 * Durability: commits write their pages without fsync (noSync). A write that resolved is in the data file
 * (the OS page cache), so it survives a kill -9 of the process. `sync()` fsyncs (mdb_env_sync), so every
 * write before it survives a machine crash too; the store also fsyncs on its own within a second of any
 * write. (An fsync per commit costs ~0.4 ms here; without, ~15 us.) LMDB's own caveat for MDB_NOSYNC: after
 * a machine crash, writes since the last fsync may be lost, and the file keeps its integrity only where the
 * filesystem preserves write order. doc/SEMANTICS.md says so to users.
 *
 * Errors: a full disk (ENOSPC, EDQUOT, EFBIG) or map (MDB_MAP_FULL) is NOSPACE naming the limit; use after close
 * is CLOSED; a damaged file is CORRUPT; EIO is UNAVAILABLE, or NOSPACE when the filesystem is nearly full (LMDB
 * reports a short write as EIO); an over-long key (over ~1978 bytes) is INVALID. LMDB can reuse pages freed
 * by a delete once a few later transactions have committed.
 */
export class LmdbStore implements KvStore {
  /** the absolute directory holding the store */
  readonly dir: string;
  readonly #db: RootDatabase<Buffer, string>;
  #closed = false;
  /** writes since the last fsync, and the timer that fsyncs them within SYNC_INTERVAL_MS */
  #unsynced = false;
  #syncTimer: NodeJS.Timeout | undefined;

  private constructor(dir: string, db: RootDatabase<Buffer, string>) {
    this.dir = dir;
    this.#db = db;
  }

  /** opens (creating if missing) the store in directory `dir` */
  static async open(dir: string, opts: LmdbStoreOptions = {}): Promise<LmdbStore> {
    try {
      await mkdir(dir, { recursive: true });
      const db = open<Buffer, string>({
        path: dir,
        noSubdir: false, // lmdb-js would take a path with a '.' in it for a file name
        encoding: 'binary',
        noSync: true, // see Durability above

        overlappingSync: false,
        // with event-turn batching, lmdb-js leaves the promise of each batch's start unhandled, so a failed commit
        // (a full disk) would be an unhandled rejection and end the process; every write here is its own
        // transaction callback, which lmdb-js still batches, so nothing depends on event-turn batching
        eventTurnBatching: false,
        mapSize: opts.mapSize ?? DEFAULT_MAP_SIZE,
      });
      return new LmdbStore(dir, db);
    } catch (e) {
      const err = await translate(e, dir).catch(() => undefined);
      if (err?.code === 'NOSPACE') throw err;
      throw new StoreError('CONFIG', `cannot open LMDB store at ${dir}: ${messageOf(e)}`, { cause: e });
    }
  }

  async get(key: string): Promise<Uint8Array | undefined> {
    const db = this.#live();
    return this.#read(() => db.get(key));
  }

  async getMany(keys: readonly string[]): Promise<(Uint8Array | undefined)[]> {
    const db = this.#live();
    return this.#read(() => keys.map((k) => db.get(k)));
  }

  async put(key: string, value: Uint8Array): Promise<void> {
    const db = this.#live();
    const bytes = Buffer.from(value);
    await this.#write(() => db.transactionSync(() => void db.putSync(key, bytes)));
  }

  async del(keys: readonly string[]): Promise<void> {
    const db = this.#live();
    if (keys.length === 0) return;
    const ks = [...keys];
    await this.#write(() => db.transactionSync(() => ks.forEach((k) => db.removeSync(k))));
  }

  async scan(prefix: string, opts: ScanOptions = {}): Promise<[string, Uint8Array][]> {
    const db = this.#live();
    checkScan(prefix, opts);
    const { after, limit = Infinity } = opts;
    // the collection is the key range [prefix, end): prefix with its final '/' raised to '0'
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

  async keys(prefix: string): Promise<string[]> {
    const db = this.#live();
    return this.#read(() => {
      const out: string[] = [];
      for (const key of db.getKeys({ start: prefix })) {
        if (!key.startsWith(prefix)) break;
        out.push(key);
      }
      return out;
    });
  }

  async incr(key: string, delta: number): Promise<number> {
    const db = this.#live();
    return this.#write(() =>
      db.transactionSync(() => {
        const next = addCounter(key, db.get(key), delta);
        db.putSync(key, Buffer.from(String(next)));
        return next;
      }),
    );
  }

  async commit(checks: readonly KvCheck[], writes: readonly KvWrite[], _txid?: string): Promise<boolean> {
    const db = this.#live();
    // LMDB commits are local and never retried, so txid needs no record
    const cs = checks.map((c) => ({ key: c.key, value: c.value && Buffer.from(c.value) }));
    const ws = writes.map((w) => ({ key: w.key, value: w.value && Buffer.from(w.value) }));
    return this.#write(() =>
      db.transactionSync(() => {
        for (const c of cs) {
          const cur = db.get(c.key);
          if (cur === undefined || c.value === undefined ? cur !== c.value : !cur.equals(c.value)) return false;
        }
        for (const w of ws) {
          if (w.value === null) db.removeSync(w.key);
          else db.putSync(w.key, w.value);
        }
        return true;
      }),
    );
  }

  async sync(): Promise<void> {
    const db = this.#live();
    await this.#write(() => envSync(db));
  }

  async info(): Promise<KvEngineInfo> {
    this.#live();
    try {
      const s = await statfs(this.dir);
      return { engine: 'lmdb', capacityBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize };
    } catch (e) {
      throw await translate(e, this.dir);
    }
  }

  /** waits for every write already called, makes them durable, and closes; later calls fail with CLOSED */
  async close(): Promise<void> {
    clearTimeout(this.#syncTimer);
    if (this.#closed) return;
    this.#closed = true;
    const db = this.#db;
    try {
      await this.#write(() => envSync(db));
    } finally {
      await db.close();
    }
  }

  /** the database, or CLOSED once close() was called */
  #live(): RootDatabase<Buffer, string> {
    if (this.#closed) throw new StoreError('CLOSED', `LMDB store at ${this.dir} is closed`);
    return this.#db;
  }

  #read<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      throw translateSync(e, this.dir);
    }
  }

  /** fsyncs in the background within SYNC_INTERVAL_MS of a write (bounding what a machine crash can take) */
  #scheduleSync(): void {
    this.#unsynced = true;
    if (this.#syncTimer || this.#closed) return;
    this.#syncTimer = setTimeout(() => {
      this.#syncTimer = undefined;
      if (!this.#unsynced || this.#closed) return;
      this.#unsynced = false;
      envSync(this.#db).catch(() => { this.#unsynced = true; });
    }, SYNC_INTERVAL_MS);
    this.#syncTimer.unref?.();
  }

  async #write<T>(fn: () => T | Promise<T>): Promise<T> {
    this.#scheduleSync();
    try {
      return await fn();
    } catch (e) {
      throw await translate(e, this.dir);
    }
  }
}

/** how soon after a write the store fsyncs on its own */
const SYNC_INTERVAL_MS = 1000;

/** fsyncs the data file and marks the newest committed transaction as the one to reopen at after a crash */
function envSync(db: RootDatabase<Buffer, string>): Promise<void> {
  const env = db as unknown as { sync(done: (err?: Error) => void): void };
  return new Promise((resolve, reject) => env.sync((err) => (err ? reject(err) : resolve())));
}

/** MDB_* codes from lmdb.h that lmdb-js reports as error.code */
const MDB_MAP_FULL = -30792;
const MDB_CORRUPT = new Set([-30796 /* CORRUPTED */, -30797 /* PAGE_NOTFOUND */, -30793 /* INVALID */, -30794 /* VERSION_MISMATCH */]);
/** errnos: ENOSPC, EDQUOT, EFBIG; EIO */
const NOSPACE_ERRNO = new Set<unknown>([28, 122, 27, 'ENOSPC', 'EDQUOT', 'EFBIG']);
const EIO = new Set<unknown>([5, 'EIO']);

/** below this many free bytes, an EIO from LMDB is taken for a short write on a full filesystem */
const NEARLY_FULL = 64 * 2 ** 20;

/**
 * The StoreError for an error raised by lmdb-js or the filesystem; NOSPACE says how much space is left.
 * A failed batch commit rejects every write in it with a generic error whose `commitError` holds the cause.
 * LMDB reports a short write (the filesystem filled up mid-write) as EIO, so EIO with the filesystem nearly full
 * is NOSPACE. Errors of no known kind are rethrown unchanged: they are bugs, and become EIO, logged with their stack.
 */
async function translate(e: unknown, dir: string): Promise<StoreError> {
  const commitError = (e as { commitError?: Promise<unknown> } | null)?.commitError;
  if (commitError) e = await commitError.then(() => e, (cause: unknown) => cause);
  let err = translateSync(e, dir);
  const eio = EIO.has((e as { code?: unknown } | null)?.code) || /Input\/output error/.test(messageOf(e));
  if (!(err.code === 'NOSPACE' || eio) || err.message.includes('MDB_MAP_FULL')) return err;
  const s = await statfs(dir).catch(() => undefined);
  if (!s) return err;
  const free = s.bavail * s.bsize;
  if (eio && free < NEARLY_FULL) err = diskFull(`${messageOf(e)} (a short write)`, dir, e);
  if (err.code === 'NOSPACE') err.message += ` (now ${free} of ${s.blocks * s.bsize} bytes free)`;
  return err;
}

function diskFull(what: string, dir: string, cause: unknown): StoreError {
  return new StoreError(
    'NOSPACE',
    `LMDB store at ${dir} is full: ${what}; the limit is the free space (or quota, or \`ulimit -f\`) of the ` +
      `filesystem holding it: free space there (delete files, run kvfs gc) or move the store to a larger filesystem`,
    { cause },
  );
}

/** the StoreError for e, without the free-space numbers; rethrows e when it is of no known kind */
function translateSync(e: unknown, dir: string): StoreError {
  if (isStoreError(e)) return e;
  const code = (e as { code?: unknown } | null)?.code;
  const msg = messageOf(e);
  if (code === MDB_MAP_FULL || msg.includes('MDB_MAP_FULL')) {
    return new StoreError(
      'NOSPACE',
      `LMDB store at ${dir} is full: MDB_MAP_FULL, its memory map could not grow further (the limit is the ` +
        `process's virtual address space); raise \`ulimit -v\` or open it with a larger mapSize`,
      { cause: e },
    );
  }
  if (NOSPACE_ERRNO.has(code) || /No space left|Disk quota|File too large/i.test(msg)) return diskFull(msg, dir, e);
  if (/database is closed|has been closed/i.test(msg)) return new StoreError('CLOSED', `LMDB store at ${dir} is closed`, { cause: e });
  if (MDB_CORRUPT.has(code as number)) return new StoreError('CORRUPT', `LMDB store at ${dir}: ${msg}`, { cause: e });
  if (EIO.has(code) || /Input\/output error/.test(msg)) return new StoreError('UNAVAILABLE', `LMDB store at ${dir}: ${msg}`, { cause: e });
  if (/key size is larger/i.test(msg)) return new StoreError('INVALID', `LMDB store at ${dir}: ${msg}`, { cause: e });
  throw e;
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
