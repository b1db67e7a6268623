/**
 * A byte-bounded LRU of blobs by id. Blobs are immutable, so a cached blob is never stale: truncate, unlink,
 * rewrite and slot migration change which blob a chunk map names, never a blob's bytes.
 * Concurrent misses on one id share one fetch.
 */
import { LRUCache } from 'lru-cache';
import type { KvStore } from '../backend/kv.js';
import { K, isCombinedKey } from '../volume/schema.js';

export class BlobCache {
  private readonly lru: LRUCache<string, Uint8Array> | undefined;
  private readonly pending = new Map<string, Promise<Uint8Array | undefined>>();
  hits = 0;
  misses = 0;
  /** bytes fetched from the store on misses */
  fetched = 0;
  /** called when a blob leaves the cache (evicted for room, or deleted) */
  onDrop: ((id: string) => void) | undefined;

  /**
   * storeKeeps: the store's values are its own memory and stay unchanged while their blob exists (an
   * in-process store; the cache is then off).
   */
  constructor(private readonly store: KvStore, readonly maxBytes: number, private readonly storeKeeps = false) {
    this.lru = maxBytes > 0
      ? new LRUCache<string, Uint8Array>({
        maxSize: maxBytes, sizeCalculation: (v) => Math.max(1, v.byteLength),
        dispose: (_v, id) => this.onDrop?.(id),
      })
      : undefined;
  }

  /** the blob's bytes, or undefined when the store no longer holds it */
  get(id: string): Promise<Uint8Array | undefined> {
    const hit = this.lru?.get(id);
    if (hit) {
      this.hits++;
      return Promise.resolve(hit);
    }
    let p = this.pending.get(id);
    if (!p) {
      this.misses++;
      p = this.store.get(K.blob(id)).then((v) => {
        this.fetched += v?.byteLength ?? 0;
        if (v && this.lru && v.byteLength <= this.maxBytes / 4) this.lru.set(id, v);
        return v;
      }).finally(() => this.pending.delete(id));
      this.pending.set(id, p);
    }
    return p;
  }

  /** a blob read to be combined into something larger (a slice): from the cache if there, else not kept */
  async getPart(id: string): Promise<Uint8Array | undefined> {
    const hit = this.lru?.get(id);
    if (hit) return hit;
    const v = await this.store.get(K.blob(id));
    this.fetched += v?.byteLength ?? 0;
    return v;
  }

  /** keeps bytes made of blobs (a chunk with its slices) under a key of their own, as a fetched blob is kept */
  add(key: string, data: Uint8Array): void {
    if (this.lru && data.byteLength <= this.maxBytes / 4) this.lru.set(key, data);
  }

  /** the blob's bytes if they are cached now (no fetch) */
  peek(id: string): Uint8Array | undefined {
    const hit = this.lru?.get(id);
    if (hit) this.hits++;
    return hit;
  }

  /**
   * Whether these bytes of the blob stay as they are until `onDrop` names it: the cache holds exactly them,
   * or the store keeps its own values. Bytes that are neither may be garbage-collected once dropped.
   */
  keeps(id: string, data: Uint8Array): boolean {
    return this.lru ? this.lru.peek(id) === data : this.storeKeeps && !isCombinedKey(id);
  }

  /** forgets a blob that was deleted */
  evict(id: string): void {
    this.lru?.delete(id);
  }

  get bytes(): number {
    return this.lru?.calculatedSize ?? 0;
  }
}
