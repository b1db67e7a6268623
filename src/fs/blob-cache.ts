/**
 * A byte-bounded LRU of blobs by id. Blobs are immutable, so a cached blob is never stale: truncate, unlink,
 * rewrite and slot migration change which blob a chunk map names, never a blob's bytes.
 * Concurrent misses on one id share one fetch.
 */
import { LRUCache } from 'lru-cache';
import type { KvStore } from '../backend/kv.js';
import { K } from './schema.js';

export class BlobCache {
  private readonly lru: LRUCache<string, Uint8Array> | undefined;
  private readonly pending = new Map<string, Promise<Uint8Array | undefined>>();
  hits = 0;
  misses = 0;

  constructor(private readonly store: KvStore, readonly maxBytes: number) {
    this.lru = maxBytes > 0
      ? new LRUCache<string, Uint8Array>({ maxSize: maxBytes, sizeCalculation: (v) => Math.max(1, v.byteLength) })
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
        if (v && this.lru && v.byteLength <= this.maxBytes / 4) this.lru.set(id, v);
        return v;
      }).finally(() => this.pending.delete(id));
      this.pending.set(id, p);
    }
    return p;
  }

  /** the blob's bytes if they are cached now (no fetch) */
  peek(id: string): Uint8Array | undefined {
    const hit = this.lru?.get(id);
    if (hit) this.hits++;
    return hit;
  }

  /** forgets a blob that was deleted */
  evict(id: string): void {
    this.lru?.delete(id);
  }

  get bytes(): number {
    return this.lru?.calculatedSize ?? 0;
  }
}
