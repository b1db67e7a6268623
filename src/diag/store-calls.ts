/**
 * Counts a store's calls, per method, and their failures, per StoreError code (`kvfs stats`: "store calls,
 * retries and errors per kind"). The store is wrapped, not changed: each method is called on the store itself
 * (engines keep private fields), and a method's wrapper is made once. Retries are the engine's own count where it
 * keeps one (the Redis adapter's `retries`: transient and throttled), and so are the Redis blob reader's figures.
 * Calls under way are counted too (inFlight: the native channel waits on the CPU for a next request only when none
 * is, see native-channel.ts spinNow).
 */
import type { KvStore } from '../backend/kv.js';

export interface StoreCallStats {
  calls: Record<string, number>;
  errors: Record<string, number>;
  retries?: Record<string, number>;
  /** blob reads answered on the Redis blob reader's connections, and handed back to ioredis (redis-blobs.ts) */
  blobReads?: { served: number; handedBack: number };
}

export function countStoreCalls(store: KvStore): { store: KvStore; stats(): StoreCallStats; inFlight(): number } {
  const calls = new Map<string, number>();
  let inFlight = 0;
  const errors = new Map<string, number>();
  const failed = (e: unknown) => {
    const code = typeof (e as { code?: unknown })?.code === 'string' ? (e as { code: string }).code : 'OTHER';
    errors.set(code, (errors.get(code) ?? 0) + 1);
    throw e;
  };
  // A plain object with the store's methods wrapped and its other properties forwarded, made once: every load of a
  // method is then a fast property load (a Proxy's trap on every access cost a runtime lookup each, on the hot path)
  const wrapper: Record<string, unknown> = {};
  const count = (name: string, f: (...a: unknown[]) => unknown) => (...args: unknown[]) => {
    calls.set(name, (calls.get(name) ?? 0) + 1);
    let out: unknown;
    try {
      out = f.apply(store, args);
    } catch (e) {
      return failed(e);
    }
    // a wait for the store's own next sync (durable) is no call under way: it takes no work of the store's
    if (!(out instanceof Promise) || name === 'durable') return out;
    inFlight++;
    return out.then((v: unknown) => {
      inFlight--;
      return v;
    }, (e: unknown) => {
      inFlight--;
      return failed(e);
    });
  };
  for (let o: object | null = store; o && o !== Object.prototype; o = Object.getPrototypeOf(o) as object | null) {
    for (const name of Object.getOwnPropertyNames(o)) {
      if (name === 'constructor' || Object.prototype.hasOwnProperty.call(wrapper, name)) continue;
      const d = Object.getOwnPropertyDescriptor(o, name)!;
      if (typeof d.value === 'function') {
        Object.defineProperty(wrapper, name, { value: count(name, d.value as (...a: unknown[]) => unknown), enumerable: true });
      } else {
        // fields and getters read live from the store itself (private fields need it as `this`)
        Object.defineProperty(wrapper, name, { get: () => Reflect.get(store, name, store), enumerable: true });
      }
    }
  }
  return {
    store: wrapper as unknown as KvStore,
    /** calls whose promise has not settled yet */
    inFlight: () => inFlight,
    stats: () => {
      const { retries, blobReads } = store as { retries?: Record<string, number>; blobReads?: { served: number; handedBack: number } };
      return {
        calls: Object.fromEntries(calls), errors: Object.fromEntries(errors), ...(retries ? { retries: { ...retries } } : {}),
        ...(blobReads ? { blobReads: { served: blobReads.served, handedBack: blobReads.handedBack } } : {}),
      };
    },
  };
}
