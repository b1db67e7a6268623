/**
 * Optimistic transactions over KvStore.commit.
 *
 * `transact(store, fn)` runs fn against a Txn that records every key it read (with the value seen) and
 * buffers every write. At the end, one `commit` applies the writes only if every key read still holds the
 * value seen; on a conflict fn runs again from scratch (it must have no effects but through the Txn), with a
 * short randomized backoff. Reads inside a Txn see its own writes. Scans are not part of transactions: the
 * schema keeps counts (e.g. a directory's `children`) where a decision needs to know about a collection.
 */
import type { KvStore, KvWrite } from '../backend/kv.js';
import { StoreError } from '../backend/errors.js';

const MAX_ATTEMPTS = 64;

export class Txn {
  private readonly reads = new Map<string, Uint8Array | undefined>();
  private readonly writes = new Map<string, Uint8Array | null>();
  /** work to run after the commit succeeded (e.g. waking the janitor) */
  readonly after: (() => void)[] = [];

  constructor(private readonly store: KvStore) {}

  async get(key: string): Promise<Uint8Array | undefined> {
    const w = this.writes.get(key);
    if (w !== undefined) return w === null ? undefined : w;
    if (this.reads.has(key)) return this.reads.get(key);
    const v = await this.store.get(key);
    if (!this.reads.has(key)) this.reads.set(key, v);
    return this.reads.get(key);
  }

  /** the values of many keys, in order, as get() gives them: the keys not yet read are fetched in one store call */
  async getMany(keys: readonly string[]): Promise<(Uint8Array | undefined)[]> {
    const missing = keys.filter((k) => !this.writes.has(k) && !this.reads.has(k));
    if (missing.length) {
      const vals = await this.store.getMany(missing);
      missing.forEach((k, i) => { if (!this.reads.has(k)) this.reads.set(k, vals[i]); });
    }
    return keys.map((k) => {
      const w = this.writes.get(k);
      return w !== undefined ? (w ?? undefined) : this.reads.get(k);
    });
  }

  set(key: string, value: Uint8Array): void {
    this.writes.set(key, value);
  }

  del(key: string): void {
    this.writes.set(key, null);
  }

  get hasWrites(): boolean {
    return this.writes.size > 0;
  }

  /** @internal */
  async commit(): Promise<boolean> {
    const checks = [...this.reads].map(([key, value]) => ({ key, value }));
    const writes: KvWrite[] = [...this.writes].map(([key, value]) => ({ key, value }));
    return this.store.commit(checks, writes);
  }
}

export async function transact<T>(store: KvStore, fn: (tx: Txn) => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    const tx = new Txn(store);
    const result = await fn(tx);
    if (!tx.hasWrites || (await tx.commit())) {
      for (const f of tx.after) f();
      return result;
    }
    if (attempt + 1 >= MAX_ATTEMPTS) {
      throw new StoreError('THROTTLED', `a metadata transaction conflicted ${MAX_ATTEMPTS} times in a row`);
    }
    // Conflict: another writer changed something we read. Back off a little, with jitter, and run again.
    if (attempt > 0) await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, 2 ** attempt)));
  }
}
