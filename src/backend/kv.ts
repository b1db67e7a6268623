/**
 * The KV interface every engine implements. POSIX logic lives above it (src/fs), written once.
 *
 * Keys are strings (the part after a collection prefix may be any UTF-8 text without NUL); values are opaque
 * bytes. Keys fall in two kinds:
 *  - metadata keys (volume record, inodes, entries, chunk maps, queues, counters). On a cluster engine they
 *    all share the volume's hash tag, so a `commit` touching several of them is one atomic step in one slot.
 *  - blob keys (prefix `b/`), immutable file data, spread across the cluster. Blobs are written with `put`
 *    before any commit references them and are never changed afterwards, only deleted.
 *
 * Collections: a key's collection is its text up to and including its last '/' (`d/5/` for `d/5/name`,
 * `g/` for `g/id`). `scan(P)` returns the members of collection P, in byte order of their keys, and never
 * keys of another collection (`d/5/` never returns `d/5/x/y` or `d/51/x`). Engines with an ordered keyspace
 * (LMDB) scan a key range and skip deeper keys; engines without one (memory, Redis) keep each collection in
 * its own sorted set or hash. The part of a key after its collection never contains '/'.
 *
 * Values: a stored value is a copy of what the caller gave. A commit's values are copied when it is called; a
 * put's value must stay unchanged until its promise settles (an engine may write it from the caller's buffer:
 * blobs of 256 KiB are not copied once more on their way to a file). A value an engine returns may be shared
 * with the engine: callers never modify returned bytes. It may also be a view into memory the engine reuses once
 * the value is no longer referenced (slab-store.ts): a caller that uses a part of it (a subarray) keeps the value
 * itself referenced as long as it does.
 *
 * Atomicity: `commit` applies a batch of writes only if every check still holds (compare-and-swap on whole
 * values, absence included), all or nothing. It is the only multi-key write. Everything else is one key.
 *
 * Errors: engines throw StoreError (src/backend/errors.ts) with a stable code: NOSPACE when the store is full,
 * UNAVAILABLE when it cannot be reached within the deadline, and so on. An error an adapter does not
 * recognise is rethrown as it is, and becomes EIO with its stack logged at the filesystem boundary.
 */
export interface KvCheck {
  key: string;
  /** the value the key must hold for the commit to apply; undefined means "must not exist" */
  value: Uint8Array | undefined;
}

export interface KvWrite {
  key: string;
  /** the new value; null deletes the key */
  value: Uint8Array | null;
}

export interface ScanOptions {
  /** only keys strictly after this one (a full key inside the collection) */
  after?: string;
  /** at most this many entries (the engine may return fewer; an empty page means the end) */
  limit?: number;
}

export interface PutOptions {
  /**
   * The caller makes this blob durable with syncBlobs before any commit names it (compaction's blobs): sync() need
   * neither wait for it nor make it durable. Engines without syncBlobs ignore it.
   */
  syncApart?: boolean;
}

export interface KvEngineInfo {
  /** engine name: memory, lmdb, redis, redis-cluster */
  engine: string;
  /**
   * bytes the store may hold in all (every volume in it, and its own bookkeeping), when it has a limit it can
   * tell; undefined when unknown. statfs reports it as a volume's total (src/volume/space.ts).
   */
  capacityBytes?: number;
  /** bytes the store can still take (at most capacityBytes), when known; statfs's available space is no more */
  freeBytes?: number;
  /** true when other processes or machines may open the same volume at once (a server-based store) */
  shared?: boolean;
  /**
   * bytes on disk the store keeps for reuse and counts as free (LMDB: spare blob files, given back when a write needs
   * their room), when it keeps any: shown so that a user comparing `du` with the volume sees where the rest went
   */
  reusableBytes?: number;
}

export interface KvStore {
  /** the value of one key, or undefined */
  get(key: string): Promise<Uint8Array | undefined>;
  /** the values of many keys, in order; blob keys may be fetched from several nodes in parallel */
  getMany(keys: readonly string[]): Promise<(Uint8Array | undefined)[]>;
  /**
   * Bytes [offset, offset + length) of a blob, fewer where the blob ends before; undefined when the key is absent.
   * Optional: engines that can read part of a value without the rest (a file's pread) offer it, so a small read
   * of a large blob moves only what it needs; callers fall back to `get` without it.
   */
  getRange?(key: string, offset: number, length: number): Promise<Uint8Array | undefined>;
  /**
   * Optional: engines that keep a blob of `length` bytes as a file of exactly its bytes, written once and only
   * deleted, name that file, so that a driver's reader threads can read it without a copy through JavaScript.
   * A hint: the file may be missing (the blob is kept otherwise, or deleted); readers then ask the store.
   */
  blobFile?(key: string, length: number): string | undefined;
  /** writes one key (blobs, and metadata that needs no check) */
  put(key: string, value: Uint8Array, opts?: PutOptions): Promise<void>;
  /** deletes keys; missing keys are not an error */
  del(keys: readonly string[]): Promise<void>;
  /** members of one collection, in key order (see above) */
  scan(prefix: string, opts?: ScanOptions): Promise<[string, Uint8Array][]>;
  /**
   * Every key that starts with `prefix`, of any collection, in byte order, all at once: for tests and small
   * collections; maintenance walks of a whole volume use keyPages.
   */
  keys(prefix: string): Promise<string[]>;
  /**
   * Every key that starts with `prefix`, of any collection, a page of at most `limit` keys (default 1,024) at a
   * time, so that a walk of the whole keyspace (fsck, gc) holds one page, never the key list. Not for the request
   * path. Order is the engine's (byte order within LMDB, hash order on Redis and among blob files). A key present
   * for the whole walk appears in it; keys put or deleted meanwhile may or may not. A key may appear twice (Redis's
   * SCAN, when the server resizes its table during the walk): callers that count tolerate it or say so.
   */
  keyPages(prefix: string, limit?: number): AsyncIterable<string[]>;
  /** adds delta to a 64-bit signed counter stored at key (absent is 0) and returns the new value */
  incr(key: string, delta: number): Promise<number>;
  /**
   * Atomically: if every check holds, apply every write and return true; otherwise change nothing and return
   * false. `txid`, when given, makes the commit idempotent: an engine that may retry a commit after an unknown
   * outcome records txid with the writes and answers true for a txid it has already applied.
   */
  commit(checks: readonly KvCheck[], writes: readonly KvWrite[], txid?: string): Promise<boolean>;
  /** makes every earlier write durable on stable storage (fsync); resolves at once where the store has no such step */
  sync(): Promise<void>;
  /**
   * Bytes of written values the engine holds in memory until it has put them where they live (LMDB's log
   * overlays, until a checkpoint); undefined for engines that hold none. `kvfs stats` shows it as a part.
   */
  readonly heldBytes?: number;
  /**
   * Bytes of memory the engine keeps to read values into and reuses (the Redis blob reader's slabs), values it
   * returned and callers still hold among them; undefined for engines that keep none. `kvfs stats` shows it.
   */
  readonly readBufferBytes?: number;
  /**
   * Optional: makes these blobs (put, and settled) durable on their own, apart from every other write: it waits for
   * no sync under way, and a sync() meanwhile does not wait for it (a blob written to be named by a later commit:
   * compaction). Without it, callers use sync().
   */
  syncBlobs?(keys: readonly string[]): Promise<void>;
  /**
   * Optional: resolves once every write called before it is durable, by a sync of the store's own (it starts one
   * within a short while when none is due) or a caller's; rejects with the error of a sync that failed meanwhile.
   * Where every write is durable when it resolves, or the store has no such step, absent. The GC waits for it
   * before it deletes blobs: a commit that dropped a blob's last reference must outlive a machine crash before the
   * blob goes, or the crash brings the reference back without the blob (Redis: it waits until a replica of every
   * master holds the writes, against a failover that would do the same).
   */
  durable?(): Promise<void>;
  /** what the engine knows about itself and its space */
  info(): Promise<KvEngineInfo>;
  /** releases connections and handles; later calls fail */
  close(): Promise<void>;
}
