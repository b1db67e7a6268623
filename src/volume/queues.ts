/**
 * The volume's two work queues, drained without a mount: the purge queue (p/: inodes already removed whose chunk
 * entries and xattrs remain) and the GC queue (g/: blobs no chunk map references). Both are written in the same
 * commit that makes the garbage, so a crash leaks nothing: whoever drains them next (a mount's janitor, or
 * `kvfs gc`) finishes the work.
 *
 * Work is bounded per commit (DELETE_BATCH entries). Several drainers at once (mounts of a shared store) are
 * harmless: the commits check what they read, so each page is done once, and only the drainer whose commit
 * removes a queue entry counts it. A blob is deleted only after a commit removed every reference to it, and that
 * commit is durable (KvStore.durable); a reader that fetched the old chunk map entry first finds the blob missing
 * and reads the map again.
 */
import type { KvCheck, KvStore, KvWrite } from '../backend/kv.js';
import { K, decodeChunk, entryBlobs, memberOf } from './schema.js';
import type { Txn } from './txn.js';

/** How many entries one purge or GC commit deletes at most. */
export const DELETE_BATCH = 512;
/** How many pages of the GC queue one wait for durability covers (collectSome). */
const GC_PAGES = 8;

/** puts a blob on the GC queue in tx, with its length (the volume's byte count gives it back when collected) */
export function queueGc(tx: Txn, blobId: string, length: number): void {
  tx.set(K.gc(blobId), Buffer.from(String(length)));
}

export interface QueueHooks {
  /** n inodes' purges committed */
  purged?(n: number): void;
  /** blobs deleted (before their queue entries go) */
  deleted?(ids: readonly string[]): void;
  /** the queue entries of `count` deleted blobs of `bytes` bytes in all are gone */
  collected?(count: number, bytes: number): void;
  /** before each step: background work waits here while foreground work runs */
  pause?(): Promise<void> | undefined;
}

export class Queues {
  constructor(private readonly store: KvStore, private readonly hooks: QueueHooks = {}) {}

  /** drains both queues (purge first: it fills the GC queue); each page waits for `pause` first */
  async drain(): Promise<void> {
    do {
      await this.hooks.pause?.();
    } while (await this.purgeSome());
    while (await this.collectSome()) { /* next pages (collectSome waits for pause before each) */ }
  }

  /**
   * One page of the purge queue: deletes chunk entries (queueing their blobs) and xattrs of removed inodes.
   * Small inodes (most: a few chunks) go together, up to DELETE_BATCH entries per commit; a larger one is
   * deleted a page per commit on its own.
   */
  async purgeSome(): Promise<boolean> {
    const page = await this.store.scan(K.purgePrefix, { limit: DELETE_BATCH / 8 });
    const batch = { checks: [] as KvCheck[], writes: [] as KvWrite[], inodes: 0 };
    const commitBatch = async (): Promise<void> => {
      if (!batch.inodes) return;
      // another mount purging the same inodes at once: one of them commits, the other finds the queue again
      if (await this.store.commit(batch.checks, batch.writes)) this.hooks.purged?.(batch.inodes);
      Object.assign(batch, { checks: [], writes: [], inodes: 0 });
    };
    for (const [key] of page) {
      const ino = Number(memberOf(key, K.purgePrefix));
      for (;;) {
        const chunks = await this.store.scan(K.chunkPrefix(ino), { limit: DELETE_BATCH });
        const xattrs = chunks.length < DELETE_BATCH ? await this.store.scan(K.xattrPrefix(ino), { limit: DELETE_BATCH }) : [];
        const done = chunks.length < DELETE_BATCH && xattrs.length < DELETE_BATCH;
        const writes: KvWrite[] = [
          ...chunks.flatMap(([k, v]) => {
            const gone = entryBlobs(decodeChunk(v)).map((b) => ({ key: K.gc(b.blobId), value: Buffer.from(String(b.length)) }));
            return [{ key: k, value: null }, ...gone];
          }),
          ...xattrs.map(([k]) => ({ key: k, value: null })),
          ...(done ? [{ key, value: null }] : []),
        ];
        // The checks make a concurrent purge of the same inode by another mount harmless: one of them
        // commits each page, the other scans again; only the one that removes the queue entry counts it.
        const checks = [...chunks.map(([k, v]) => ({ key: k, value: v })), { key, value: new Uint8Array(0) }];
        if (done && batch.writes.length + writes.length <= DELETE_BATCH) {
          batch.checks.push(...checks);
          batch.writes.push(...writes);
          batch.inodes++;
          break;
        }
        await commitBatch();
        if (!(await this.store.commit(checks, writes))) {
          if ((await this.store.get(key)) === undefined) break; // another mount finished it
          continue;
        }
        if (done) {
          this.hooks.purged?.(1);
          break;
        }
      }
    }
    await commitBatch();
    return page.length > 0;
  }

  /**
   * Up to GC_PAGES pages of the GC queue: waits once until the commits that queued them are durable (KvStore.durable:
   * they dropped the references), then per page deletes the blobs, then their queue entries. True when more may
   * be left.
   */
  async collectSome(): Promise<boolean> {
    const pages: [string, Uint8Array][][] = [];
    let after: string | undefined;
    for (let i = 0; i < GC_PAGES; i++) {
      const page = await this.store.scan(K.gcPrefix, { limit: DELETE_BATCH, after });
      if (page.length) pages.push(page);
      if (page.length < DELETE_BATCH) break;
      after = page[page.length - 1]![0];
    }
    if (!pages.length) return false;
    // every entry scanned was written before this call: the wait covers them all
    await this.store.durable?.();
    for (const page of pages) {
      await this.hooks.pause?.();
      const ids = page.map(([k]) => memberOf(k, K.gcPrefix));
      await this.store.del(ids.map((id) => K.blob(id)));
      this.hooks.deleted?.(ids);
      // Another mount may collect the same page at once: deleting blobs twice is harmless, and only the mount
      // whose commit removes the queue entries counts their bytes.
      if (!(await this.store.commit(page.map(([key, value]) => ({ key, value })), page.map(([key]) => ({ key, value: null }))))) {
        continue;
      }
      const bytes = page.reduce((n, [, v]) => n + (Number(Buffer.from(v).toString()) || 0), 0);
      this.hooks.collected?.(ids.length, bytes);
    }
    return pages.length === GC_PAGES && pages[GC_PAGES - 1]!.length === DELETE_BATCH;
  }
}
