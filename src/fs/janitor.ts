/**
 * Background clean-up of a mount: drains the volume's purge and GC queues (src/volume/queues.ts) after the
 * commits that fill them. One run at a time; `kick` asks for another run soon; the cached blobs it deletes are
 * evicted, and the usage counters follow what it removed.
 */
import { log } from '../log.js';
import type { KvStore } from '../backend/kv.js';
import { K } from '../volume/schema.js';
import { Queues } from '../volume/queues.js';
import { foreground } from './foreground.js';
import type { BlobCache } from './blob-cache.js';
import type { Counters } from './counters.js';

/** a failed run is tried again after this long, twice as long after each failure in a row, up to RETRY_MAX_MS */
const RETRY_FIRST_MS = 1_000;
const RETRY_MAX_MS = 30_000;

export class Janitor {
  private running: Promise<void> | undefined;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  /** the next run after a failed one, and how many failed in a row */
  private retry: NodeJS.Timeout | undefined;
  private failures = 0;
  private closed = false;
  purged = 0;
  collected = 0;
  lastError: unknown;

  private readonly queues: Queues;

  constructor(store: KvStore, blobs: BlobCache, private readonly counters: Counters) {
    this.queues = new Queues(store, {
      purged: (n) => {
        this.purged += n;
        counters.add(K.inodeCount, -n);
      },
      deleted: (ids) => { for (const id of ids) blobs.evict(id); },
      pause: () => foreground.idle(),
      collected: (count, bytes) => {
        counters.add(K.byteCount, -bytes);
        this.collected += count;
      },
    });
  }

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
          await this.queues.drain();
          await this.counters.flush();
          if (this.failures) log.info(`clean-up resumed after ${this.failures} failed run(s)`);
          this.failures = 0;
        } catch (e) {
          this.lastError = e;
          if (!this.closed) {
            // tried again on its own (a store back up, a wait for replicas that failed once), sooner on a change
            const ms = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** this.failures++);
            log.warn(`clean-up paused after an error (tried again in ${ms / 1000} s, or on the next change): ${(e as Error).message}`);
            clearTimeout(this.retry);
            this.retry = setTimeout(() => this.kick(), ms);
            this.retry.unref?.();
          }
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
    clearTimeout(this.retry);
    await this.running;
  }


}
