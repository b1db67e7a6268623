/**
 * Counts a store's calls, per method, and their failures, per StoreError code (`kvfs stats`: "store calls,
 * retries and errors per kind"). The store is wrapped, not changed: each method is called on the store itself
 * (engines keep private fields), and a method's wrapper is made once. Retries are the engine's own count where it
 * keeps one (the Redis adapter's `retries`: transient and throttled). Calls under way are counted too (inFlight:
 * the native channel waits on the CPU for a next request only when none is, see native-channel.ts spinNow).
 */
import type { KvStore } from '../backend/kv.js';

export interface StoreCallStats {
  calls: Record<string, number>;
  errors: Record<string, number>;
  retries?: Record<string, number>;
}

export function countStoreCalls(store: KvStore): { store: KvStore; stats(): StoreCallStats; inFlight(): number } {
  const calls = new Map<string, number>();
  let inFlight = 0;
  const errors = new Map<string, number>();
  const wrapped = new Map<PropertyKey, unknown>();
  const failed = (e: unknown) => {
    const code = typeof (e as { code?: unknown })?.code === 'string' ? (e as { code: string }).code : 'OTHER';
    errors.set(code, (errors.get(code) ?? 0) + 1);
    throw e;
  };
  const proxy = new Proxy(store, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target) as unknown;
      if (typeof v !== 'function' || typeof prop !== 'string' || prop === 'constructor') return v;
      let w = wrapped.get(prop);
      if (!w) {
        const f = v as (...a: unknown[]) => unknown;
        w = (...args: unknown[]) => {
          calls.set(prop, (calls.get(prop) ?? 0) + 1);
          let out: unknown;
          try {
            out = f.apply(target, args);
          } catch (e) {
            return failed(e);
          }
          if (!(out instanceof Promise)) return out;
          inFlight++;
          return out.then((v: unknown) => {
            inFlight--;
            return v;
          }, (e: unknown) => {
            inFlight--;
            return failed(e);
          });
        };
        wrapped.set(prop, w);
      }
      return w;
    },
  });
  return {
    store: proxy,
    /** calls whose promise has not settled yet */
    inFlight: () => inFlight,
    stats: () => {
      const retries = (store as { retries?: Record<string, number> }).retries;
      return { calls: Object.fromEntries(calls), errors: Object.fromEntries(errors), ...(retries ? { retries: { ...retries } } : {}) };
    },
  };
}
