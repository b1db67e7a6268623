/**
 * Per-key async mutual exclusion. `lock(keys)` takes every key's lock in sorted order (so two callers can
 * never wait on each other in a cycle) and resolves to a release function that must be called exactly once.
 * It keeps transactions of one mount on the same inodes from conflicting; correctness across mounts comes
 * from the store's compare-and-swap, not from here.
 */
export class KeyedMutex {
  private readonly tails = new Map<number, Promise<void>>();

  async lock(keys: readonly number[]): Promise<() => void> {
    const sorted = [...new Set(keys)].sort((a, b) => a - b);
    const releases: (() => void)[] = [];
    for (const k of sorted) releases.push(await this.lockOne(k));
    let released = false;
    return () => {
      if (released) throw new Error('KeyedMutex: released twice');
      released = true;
      for (const r of releases.reverse()) r();
    };
  }

  private async lockOne(key: number): Promise<() => void> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => { release = r; });
    const tail = prev.then(() => mine);
    this.tails.set(key, tail);
    await prev;
    return () => {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    };
  }

  /** runs fn while holding the locks of keys */
  async with<T>(keys: readonly number[], fn: () => Promise<T>): Promise<T> {
    const release = await this.lock(keys);
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
