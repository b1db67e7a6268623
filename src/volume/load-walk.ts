/**
 * What `kvfs load` (load.ts) walks and how many writes it keeps under way: the source tree's walk, depth-first in
 * name order, streaming (one directory's names per level), and the Gate that lowers the writes under way while
 * the store throttles and raises them again when it recovers.
 */
import type { BigIntStats } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { StoreError, isStoreError } from '../backend/errors.js';

/** lstat calls of a directory's entries under way at once */
const LSTAT_AHEAD = 64;

export interface Walked {
  kind: 'enter' | 'leave' | 'entry' | 'error';
  /** path below the source root ('' for the root) */
  rel: string;
  abs: string;
  st?: BigIntStats;
  error?: NodeJS.ErrnoException;
}

/** depth-first, names in byte order: the root's 'enter', its entries (directories entered and left), 'leave' */
export async function* walk(root: string, rel = '', st?: BigIntStats): AsyncGenerator<Walked> {
  const abs = rel ? join(root, rel) : root;
  st ??= await lstat(abs, { bigint: true });
  let names: string[];
  try {
    names = (await readdir(abs)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  } catch (e) {
    yield { kind: 'error', rel, abs, st, error: e as NodeJS.ErrnoException };
    return;
  }
  yield { kind: 'enter', rel, abs, st };
  // the entries' lstat calls go out LSTAT_AHEAD at a time (one at a time, a walk of 100,000 files waits 3 s)
  for (let at = 0; at < names.length; at += LSTAT_AHEAD) {
    const part = names.slice(at, at + LSTAT_AHEAD);
    const stats = await Promise.all(part.map((n) => lstat(join(abs, n), { bigint: true }).catch((e: NodeJS.ErrnoException) => e)));
    for (const [i, name] of part.entries()) {
      const r = rel ? `${rel}/${name}` : name;
      const a = join(abs, name);
      const s = stats[i]!;
      if (s instanceof Error) yield { kind: 'error', rel: r, abs: a, error: s };
      else if (s.isDirectory()) yield* walk(root, r, s);
      else yield { kind: 'entry', rel: r, abs: a, st: s };
    }
  }
  yield { kind: 'leave', rel, abs, st };
}


/**
 * Tasks under way: at most `limit`, which a transient store error halves (at least 1) and a run of `limit`
 * successes raises by one (at most `max`): additive increase, multiplicative decrease.
 */
export class Gate {
  limit: number;
  private active = 0;
  private streak = 0;
  private readonly waiters: (() => void)[] = [];
  private readonly running = new Set<Promise<void>>();

  constructor(readonly max: number) {
    this.limit = max;
  }

  /**
   * runs task once a slot is free (waits for one: backpressure on the walk); a task reports its own failures (one
   * that rejects all the same is dropped here, never left an unhandled rejection that would end the process)
   */
  async run(task: () => Promise<void>): Promise<void> {
    while (this.active >= this.limit) await new Promise<void>((r) => this.waiters.push(r));
    this.active++;
    const p: Promise<void> = task().catch(() => undefined).finally(() => {
      this.active--;
      this.running.delete(p);
      this.wake();
    });
    this.running.add(p);
  }

  /** waits for every task under way */
  async drain(): Promise<void> {
    while (this.running.size) await Promise.allSettled([...this.running]);
  }

  ok(): void {
    if (++this.streak >= this.limit && this.limit < this.max) {
      this.limit++;
      this.streak = 0;
      this.wake();
    }
  }

  backoff(): void {
    this.limit = Math.max(1, Math.floor(this.limit / 2));
    this.streak = 0;
  }

  private wake(): void {
    while (this.waiters.length && this.active < this.limit) this.waiters.shift()!();
  }
}

/** store errors that pass: throttling, an unreachable or failing-over store, a full store (space may come back) */
export function transient(e: unknown): boolean {
  return isStoreError(e) && (e.code === 'THROTTLED' || e.code === 'UNAVAILABLE' || (e.code === 'NOSPACE' && !(e as QuotaError).quota));
}

export type QuotaError = StoreError & { quota?: boolean };

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
