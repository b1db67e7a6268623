/**
 * A fixed-capacity pool of request and reply buffers in size classes.
 *
 * The rules:
 *  1. Memory. The pool's memory is one arena, allocated (and touched) once when the pool is made, and cut into
 *     buffers of a few size classes. It is never freed or grown while the pool lives: the total the pool can
 *     hand out is fixed, and no request ever allocates by the largest possible size.
 *  2. Classes. Each class has a size and a fixed count. `acquire(n)` gives the smallest class with a free
 *     buffer whose size is at least n (a larger class serves when the right one is empty; a request larger
 *     than the largest class is refused with PoolError 'TOO_LARGE').
 *  3. Backpressure. When no fitting buffer is free, `acquire` waits. Waiters are served first come, first
 *     served: a released buffer goes to the earliest waiter it fits. A wait can be aborted (AbortSignal); an
 *     aborted waiter leaves the queue at once and its promise rejects with PoolError 'ABORTED'.
 *  4. Release. Every buffer is released exactly once, with `release(buf)` on the very object acquire returned.
 *     A second release ('DOUBLE_RELEASE') or a buffer the pool did not hand out ('FOREIGN') throws, and
 *     changes nothing. Views made from a pool buffer (subarray) are not the buffer and are refused.
 *  5. Stats. Per class: size, count, in use, free, high-water of in use; per pool: waiters now, total waits,
 *     total wait time, in-use bytes and their high-water, which never exceed the capacity.
 *  6. Debug. With `debug: true` the pool keeps the stack of each acquire; `leaks()` lists buffers still held.
 */

export type PoolErrorCode = 'TOO_LARGE' | 'ABORTED' | 'DOUBLE_RELEASE' | 'FOREIGN' | 'CLOSED';

export class PoolError extends Error {
  readonly code: PoolErrorCode;
  constructor(code: PoolErrorCode, message: string) {
    super(message);
    this.name = 'PoolError';
    this.code = code;
  }
}

export interface SizeClass {
  /** bytes per buffer */
  size: number;
  /** buffers of this size */
  count: number;
}

export interface PoolOptions {
  classes: readonly SizeClass[];
  /** memory to cut the buffers from (e.g. an arena the native addon allocated); made and touched here if absent */
  arena?: ArrayBuffer;
  /** keep acquire stacks to report leaks */
  debug?: boolean;
}

export interface ClassStats {
  size: number;
  count: number;
  inUse: number;
  free: number;
  highWater: number;
}

export interface PoolStats {
  capacityBytes: number;
  inUseBytes: number;
  highWaterBytes: number;
  waiters: number;
  totalWaits: number;
  totalWaitMs: number;
  classes: ClassStats[];
}

interface Slot {
  cls: number;
  buf: Buffer;
  held: boolean;
  stack?: string;
}

interface Waiter {
  size: number;
  /** the acquire call's stack (debug mode) */
  stack?: string;
  since: number;
  resolve(b: Buffer): void;
  reject(e: Error): void;
  cleanup(): void;
}

const PAGE = 4096;

/**
 * The default classes for a capacity in bytes: a share each for 4 KiB (small requests and replies), 64 KiB,
 * 256 KiB and 1 MiB + one page (a 1 MiB write with its headers), at least two of each.
 */
export function defaultClasses(capacityBytes: number): SizeClass[] {
  const shares: [number, number][] = [[4096, 0.1], [65536, 0.15], [262144, 0.25], [(1 << 20) + PAGE, 0.5]];
  return shares.map(([size, share]) => ({ size, count: Math.max(2, Math.floor((capacityBytes * share) / size)) }));
}

export class BufferPool {
  readonly capacityBytes: number;
  /** the memory every buffer is cut from (offset 0 is the first buffer of the smallest class) */
  readonly arena: ArrayBuffer;
  private readonly sizes: number[];
  private readonly free: Slot[][];
  private readonly slots = new WeakMap<Buffer, Slot>();
  private readonly all: Slot[] = [];
  private readonly waiters: Waiter[] = [];
  private readonly inUse: number[];
  private readonly highWater: number[];
  private inUseBytes = 0;
  private highWaterBytes = 0;
  private totalWaits = 0;
  private totalWaitMs = 0;
  private closed = false;
  private readonly debug: boolean;

  constructor(opts: PoolOptions) {
    const classes = [...opts.classes].sort((a, b) => a.size - b.size);
    if (!classes.length || classes.some((c) => !(c.size > 0) || !(c.count > 0) || !Number.isInteger(c.count))) {
      throw new RangeError('BufferPool: every class needs a positive size and count');
    }
    this.debug = !!opts.debug;
    this.sizes = classes.map((c) => c.size);
    this.capacityBytes = classes.reduce((n, c) => n + c.size * c.count, 0);
    const arena = opts.arena ?? BufferPool.arena(this.capacityBytes);
    this.arena = arena;
    if (arena.byteLength < this.capacityBytes) throw new RangeError('BufferPool: the arena is smaller than the classes');
    this.free = classes.map(() => []);
    this.inUse = classes.map(() => 0);
    this.highWater = classes.map(() => 0);
    let off = 0;
    classes.forEach((c, cls) => {
      for (let i = 0; i < c.count; i++, off += c.size) {
        const slot: Slot = { cls, buf: Buffer.from(arena, off, c.size), held: false };
        this.slots.set(slot.buf, slot);
        this.all.push(slot);
        this.free[cls].push(slot);
      }
    });
  }

  /** an arena of n bytes with every page touched, so first use costs no page faults */
  private static arena(n: number): ArrayBuffer {
    const a = new ArrayBuffer(n);
    new Uint8Array(a).fill(0);
    return a;
  }

  /** the largest request the pool can serve */
  get maxSize(): number {
    return this.sizes[this.sizes.length - 1];
  }

  /** a free buffer of at least n bytes now, or undefined (never waits) */
  tryAcquire(n: number): Buffer | undefined {
    this.check(n);
    return this.take(n);
  }

  /** a buffer of at least n bytes; waits (FIFO) while none is free */
  acquire(n: number, signal?: AbortSignal): Promise<Buffer> {
    try {
      this.check(n);
    } catch (e) {
      return Promise.reject(e);
    }
    // Invariant: after every release and abort, no waiter fits any free buffer. So a free buffer that fits
    // this request now fits no earlier waiter, and taking it jumps no queue.
    const b = this.take(n);
    if (b) return Promise.resolve(b);
    if (signal?.aborted) return Promise.reject(new PoolError('ABORTED', 'the wait for a buffer was aborted'));
    this.totalWaits++;
    return new Promise<Buffer>((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new PoolError('ABORTED', 'the wait for a buffer was aborted'));
        this.serveWaiters();
      };
      const w: Waiter = {
        size: n, since: performance.now(), resolve, reject,
        stack: this.debug ? new Error('acquired here').stack : undefined,
        cleanup: () => signal?.removeEventListener('abort', onAbort),
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(w);
    });
  }

  /** gives a buffer back; exactly once per acquire, with the very object acquire returned */
  release(buf: Buffer): void {
    const slot = this.slots.get(buf);
    if (!slot) throw new PoolError('FOREIGN', 'this buffer does not belong to the pool');
    if (!slot.held) throw new PoolError('DOUBLE_RELEASE', 'this buffer was already released');
    slot.held = false;
    slot.stack = undefined;
    this.inUse[slot.cls]--;
    this.inUseBytes -= this.sizes[slot.cls];
    this.free[slot.cls].push(slot);
    this.serveWaiters();
  }

  /** fails every waiter; later acquires fail (CLOSED) */
  close(): void {
    this.closed = true;
    for (const w of this.waiters.splice(0)) {
      w.cleanup();
      w.reject(new PoolError('CLOSED', 'the pool was closed'));
    }
  }

  stats(): PoolStats {
    return {
      capacityBytes: this.capacityBytes, inUseBytes: this.inUseBytes, highWaterBytes: this.highWaterBytes,
      waiters: this.waiters.length, totalWaits: this.totalWaits, totalWaitMs: this.totalWaitMs,
      classes: this.sizes.map((size, i) => ({
        size, count: this.inUse[i] + this.free[i].length, inUse: this.inUse[i], free: this.free[i].length,
        highWater: this.highWater[i],
      })),
    };
  }

  /** buffers still held, with the stack that took each (debug mode; without it the stacks are absent) */
  leaks(): { size: number; stack?: string }[] {
    return this.all.filter((s) => s.held).map((s) => ({ size: this.sizes[s.cls], stack: s.stack }));
  }

  private check(n: number): void {
    if (this.closed) throw new PoolError('CLOSED', 'the pool was closed');
    if (!(n >= 0) || n > this.maxSize) {
      throw new PoolError('TOO_LARGE', `a buffer of ${n} bytes was asked for; the largest class is ${this.maxSize}`);
    }
  }

  private take(n: number, stack?: string): Buffer | undefined {
    for (let cls = 0; cls < this.sizes.length; cls++) {
      if (this.sizes[cls] < n) continue;
      const slot = this.free[cls].pop();
      if (!slot) continue;
      slot.held = true;
      if (this.debug) slot.stack = stack ?? new Error('acquired here').stack;
      this.inUse[cls]++;
      if (this.inUse[cls] > this.highWater[cls]) this.highWater[cls] = this.inUse[cls];
      this.inUseBytes += this.sizes[cls];
      if (this.inUseBytes > this.highWaterBytes) this.highWaterBytes = this.inUseBytes;
      return slot.buf;
    }
    return undefined;
  }

  /** hands free buffers to waiters, earliest first, each to the earliest waiter it can serve */
  private serveWaiters(): void {
    for (let i = 0; i < this.waiters.length;) {
      const w = this.waiters[i];
      const b = this.take(w.size, w.stack);
      if (!b) {
        i++;
        continue;
      }
      this.waiters.splice(i, 1);
      w.cleanup();
      this.totalWaitMs += performance.now() - w.since;
      w.resolve(b);
    }
  }
}
