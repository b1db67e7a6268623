/**
 * Background clean-up of a mount: the purge queue (inodes already removed whose chunk entries and xattrs
 * remain) and the GC queue (blobs no chunk map references). Both queues are written in the same commit that
 * makes the garbage, so a crash leaks nothing: the next janitor run (on any mount) finishes the work.
 *
 * Work is bounded per commit (DELETE_BATCH entries). One run at a time; `kick` asks for another run soon.
 * A blob is deleted only after a commit removed every reference to it; a reader that fetched the old chunk
 * map entry first finds the blob missing and reads the map again (FileData.storedChunk).
 */
import { log } from '../log.js';
import type { KvCheck, KvStore, KvWrite } from '../backend/kv.js';
import { DELETE_BATCH } from './file-data.js';
import { K, decodeChunk, entryBlobs, memberOf } from './schema.js';
import type { BlobCache } from './blob-cache.js';
import type { Counters } from './counters.js';

export class Janitor {
  private running: Promise<void> | undefined;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  purged = 0;
  collected = 0;
  lastError: unknown;

  constructor(private readonly store: KvStore, private readonly blobs: BlobCache, private readonly counters: Counters) {}

  /** asks for a run soon (coalesced) */
  kick(): void {
    if (this.closed) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        void this.run();
      }, 20);
      this.timer.unref?.();
    }
  }

  /** runs until both queues are empty; resolves when done (errors are kept in lastError and logged) */
  run(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          while (await this.purgeSome()) { /* next page */ }
          while (await this.collectSome()) { /* next page */ }
          await this.counters.flush();
        } catch (e) {
          this.lastError = e;
          if (!this.closed) log.warn(`clean-up paused after an error (it resumes on the next change): ${(e as Error).message}`);
          break;
        }
      } while (this.again && !this.closed);
    })().finally(() => { this.running = undefined; });
    return this.running;
  }

  /** stops scheduling; waits for a run in progress */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running;
  }

  /**
   * One page of the purge queue: deletes chunk entries (queueing their blobs) and xattrs of removed inodes.
   * Small inodes (most: a few chunks) go together, up to DELETE_BATCH entries per commit; a larger one is
   * deleted a page per commit on its own.
   */
  private async purgeSome(): Promise<boolean> {
    const page = await this.store.scan(K.purgePrefix, { limit: DELETE_BATCH / 8 });
    const batch = { checks: [] as KvCheck[], writes: [] as KvWrite[], inodes: 0 };
    const commitBatch = async (): Promise<void> => {
      if (!batch.inodes) return;
      // another mount purging the same inodes at once: one of them commits, the other finds the queue again
      if (await this.store.commit(batch.checks, batch.writes)) this.finished(batch.inodes);
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
          this.finished(1);
          break;
        }
      }
    }
    await commitBatch();
    return page.length > 0;
  }

  /** n inodes' purges committed */
  private finished(n: number): void {
    this.purged += n;
    this.counters.add(K.inodeCount, -n);
  }

  /** One page of the GC queue: deletes the blobs, then their queue entries. */
  private async collectSome(): Promise<boolean> {
    const page = await this.store.scan(K.gcPrefix, { limit: DELETE_BATCH });
    if (!page.length) return false;
    const ids = page.map(([k]) => memberOf(k, K.gcPrefix));
    await this.store.del(ids.map((id) => K.blob(id)));
    for (const id of ids) this.blobs.evict(id);
    // Another mount may collect the same page at once: deleting blobs twice is harmless, and only the mount
    // whose commit removes the queue entries counts their bytes.
    if (!(await this.store.commit(page.map(([key, value]) => ({ key, value })), page.map(([key]) => ({ key, value: null }))))) {
      return true;
    }
    const bytes = page.reduce((n, [, v]) => n + (Number(Buffer.from(v).toString()) || 0), 0);
    this.counters.add(K.byteCount, -bytes);
    this.collected += ids.length;
    return page.length === DELETE_BATCH;
  }
}
