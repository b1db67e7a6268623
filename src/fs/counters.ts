/**
 * The volume's usage counters (live inodes, bytes in blobs), batched: changes add up in memory and reach
 * the store with one incr per counter at most every `intervalMs`, on `flush()`, and at close. Counters are
 * statistics (statfs, status), not invariants: a crash loses at most the last interval's changes, which
 * `kvfs fsck` recounts.
 */
import type { KvStore } from '../backend/kv.js';

export class Counters {
  private readonly pending = new Map<string, number>();
  /** each counter's stored value as last seen (read or flushed), and when */
  private readonly seen = new Map<string, { value: number; at: number }>();
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;

  constructor(private readonly store: KvStore, private readonly intervalMs = 500) {}

  add(key: string, delta: number): void {
    if (!delta) return;
    this.pending.set(key, (this.pending.get(key) ?? 0) + delta);
    if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        void this.flush().catch(() => undefined);
      }, this.intervalMs);
      this.timer.unref?.();
    }
  }

  /** the stored value plus what this mount has not written yet */
  async read(key: string): Promise<number> {
    const value = await this.store.incr(key, 0);
    this.seen.set(key, { value, at: Date.now() });
    return value + (this.pending.get(key) ?? 0);
  }

  /** as read, from the stored value seen within maxAgeMs when there is one (no store call) */
  async recent(key: string, maxAgeMs: number): Promise<number> {
    const s = this.seen.get(key);
    if (s && Date.now() - s.at <= maxAgeMs) return s.value + (this.pending.get(key) ?? 0);
    return this.read(key);
  }

  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (!this.pending.size) return;
    const batch = [...this.pending];
    this.pending.clear();
    this.flushing = (async () => {
      for (const [key, delta] of batch) {
        try {
          const value = await this.store.incr(key, delta);
          this.seen.set(key, { value, at: Date.now() });
        } catch (e) {
          this.pending.set(key, (this.pending.get(key) ?? 0) + delta);
          throw e;
        }
      }
    })().finally(() => { this.flushing = undefined; });
    await this.flushing;
  }

  async close(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.flush();
  }
}
