import { freemem } from 'node:os';
import { addCounter, checkPageLimit, checkScan, collectKeys, KEY_PAGE, keyCompare } from './kv-rules.js';
import { StoreError } from './errors.js';
import { SlabStore } from './slab-store.js';
import type { KvCheck, KvEngineInfo, KvStore, KvWrite, ScanOptions } from './kv.js';

/** The shared state behind one or more MemoryStore handles: values by key, and each collection's keys sorted. */
interface MemoryData {
  values: Map<string, Uint8Array>;
  /** where large values live */
  slabs: SlabStore;
  /** collection (key up to its last '/') -> its keys, ascending by bytes */
  collections: Map<string, string[]>;
}

/**
 * An ordered in-memory KvStore, for tests and for `memory:` URLs. Nothing is durable.
 *
 * Values are copied on the way in; values returned are the stored bytes (callers never modify them, kv.ts).
 * Each collection keeps its own sorted key list, so inserts and deletes cost the size of one collection,
 * not of the store. Every method runs
 * to completion without awaiting, so each call is atomic and calls apply in the order they were made.
 * Counters are stored as decimal ASCII, as Redis INCRBY does, and kept within Number.MAX_SAFE_INTEGER.
 *
 * Several handles may share one dataset (see the constructor), as several clients of one server would; closing a
 * handle leaves the data and the other handles alone.
 */
export class MemoryStore implements KvStore {
  readonly #data: MemoryData;
  #closed = false;

  /** a fresh empty store, or, given another handle, a second handle on that handle's data */
  constructor(sharedWith?: MemoryStore) {
    this.#data = sharedWith ? sharedWith.#data : { values: new Map(), collections: new Map(), slabs: new SlabStore() };
  }

  get #db(): MemoryData {
    if (this.#closed) throw new StoreError('CLOSED', 'memory store is closed');
    return this.#data;
  }

  async get(key: string): Promise<Uint8Array | undefined> {
    return this.#db.values.get(key);
  }

  async getMany(keys: readonly string[]): Promise<(Uint8Array | undefined)[]> {
    const { values } = this.#db;
    return keys.map((k) => values.get(k));
  }

  async getRange(key: string, offset: number, length: number): Promise<Uint8Array | undefined> {
    return this.#db.values.get(key)?.subarray(offset, offset + length);
  }

  async put(key: string, value: Uint8Array): Promise<void> {
    set(this.#db, key, own(this.#db, value));
  }

  async del(keys: readonly string[]): Promise<void> {
    const db = this.#db;
    for (const k of keys) remove(db, k);
  }

  async scan(prefix: string, opts: ScanOptions = {}): Promise<[string, Uint8Array][]> {
    const db = this.#db;
    checkScan(prefix, opts);
    const { after, limit = Infinity } = opts;
    const keys = db.collections.get(prefix) ?? [];
    let i = after !== undefined && after > prefix ? lowerBound(keys, after) : 0;
    if (keys[i] === after) i++;
    const out: [string, Uint8Array][] = [];
    for (; i < keys.length && out.length < limit; i++) out.push([keys[i]!, db.values.get(keys[i]!)!]);
    return out;
  }

  keys(prefix: string): Promise<string[]> {
    return collectKeys(this.keyPages(prefix));
  }

  async *keyPages(prefix: string, limit = KEY_PAGE): AsyncGenerator<string[]> {
    checkPageLimit(limit);
    for (const [c, keys] of this.#db.collections) {
      if (!c.startsWith(prefix) && !prefix.startsWith(c)) continue;
      // a copy: deletes during the walk must not shift keys past it (the store is in memory anyway)
      const mine = c.startsWith(prefix) ? keys.slice() : keys.filter((k) => k.startsWith(prefix));
      for (let i = 0; i < mine.length; i += limit) yield mine.slice(i, i + limit);
    }
  }

  async incr(key: string, delta: number): Promise<number> {
    const db = this.#db;
    const next = addCounter(key, db.values.get(key), delta);
    set(db, key, new TextEncoder().encode(String(next)));
    return next;
  }

  async commit(checks: readonly KvCheck[], writes: readonly KvWrite[], _txid?: string): Promise<boolean> {
    const db = this.#db;
    for (const c of checks) {
      if (!sameBytes(db.values.get(c.key), c.value)) return false;
    }
    for (const w of writes) {
      if (w.value === null) remove(db, w.key);
      else set(db, w.key, own(db, w.value));
    }
    return true;
  }

  async sync(): Promise<void> {
    void this.#db; // CLOSED once closed; otherwise nothing to do
  }

  /** no capacity of its own: it holds what the machine's memory can (free: the memory available now) */
  async info(): Promise<KvEngineInfo> {
    void this.#db; // CLOSED once closed
    return { engine: 'memory', freeBytes: freemem() };
  }

  async close(): Promise<void> {
    this.#closed = true;
  }
}

/** a private copy of v, written once (no zero-fill first: fresh memory is touched only by the copy) */
function own(db: MemoryData, v: Uint8Array): Uint8Array {
  const slotted = db.slabs.store(v);
  if (slotted) return slotted;
  const b = Buffer.allocUnsafe(v.length); // small values: from Node's shared pool, no ArrayBuffer each
  b.set(v);
  return b;
}

/** a key's collection: its text up to and including its last '/' */
function collectionOf(key: string): string {
  return key.slice(0, key.lastIndexOf('/') + 1);
}

function set(db: MemoryData, key: string, value: Uint8Array): void {
  const old = db.values.get(key);
  if (old) db.slabs.release(old);
  if (!db.values.has(key)) {
    const c = collectionOf(key);
    let keys = db.collections.get(c);
    if (!keys) db.collections.set(c, (keys = []));
    if (!keys.length || keyCompare(keys[keys.length - 1]!, key) < 0) keys.push(key);
    else keys.splice(lowerBound(keys, key), 0, key);
  }
  db.values.set(key, value);
}

function remove(db: MemoryData, key: string): void {
  const old = db.values.get(key);
  if (!old) return;
  db.values.delete(key);
  db.slabs.release(old);
  const c = collectionOf(key);
  const keys = db.collections.get(c)!;
  keys.splice(lowerBound(keys, key), 1);
  if (!keys.length) db.collections.delete(c);
}

/** index of the first element of sorted `keys` that is >= key (byte order) */
function lowerBound(keys: readonly string[], key: string): number {
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keyCompare(keys[mid]!, key) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** whole-value equality; undefined equals only undefined (absent) */
function sameBytes(a: Uint8Array | undefined, b: Uint8Array | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
