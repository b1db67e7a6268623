/**
 * Foreground work (an fsync, a close's commit: a caller waits for it) goes before background work (the janitor's
 * clean-up, compaction behind commits) on the one JavaScript thread: a background step waits while any is in
 * flight, at most MAX_WAIT_MS (steady fsyncs cannot starve the clean-up). A step under way is not interrupted.
 * Measured: rand-write-4k on local (an fsync every 64 writes), 3 rounds alternating, 7,219/7,428/7,607 IOPS
 * without, 8,646/8,606/7,359 with; before the other changes of the same commit, 6,020/5,923 vs 6,952/6,775.
 */
const MAX_WAIT_MS = 50;

export class Foreground {
  #active = 0;
  #waiters: (() => void)[] = [];

  /** runs fn as foreground work */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    this.#active++;
    try {
      return await fn();
    } finally {
      if (--this.#active === 0) for (const w of this.#waiters.splice(0)) w();
    }
  }

  /** resolves when no foreground work is in flight, or after MAX_WAIT_MS */
  idle(): Promise<void> | undefined {
    if (!this.#active) return undefined;
    return new Promise<void>((resolve) => {
      const t = setTimeout(resolve, MAX_WAIT_MS);
      this.#waiters.push(() => { clearTimeout(t); resolve(); });
    });
  }
}

export const foreground = new Foreground();
