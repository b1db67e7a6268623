/**
 * Rules of the KV interface (kv.ts) that every engine enforces the same way: what a scan may ask for, how a
 * counter is stored and added to (decimal ASCII within +-2^53, as Redis INCRBY keeps it), and keys() as the
 * sorted union of an engine's keyPages.
 */
import { StoreError } from './errors.js';
import type { ScanOptions } from './kv.js';

/** throws INVALID unless prefix names a collection and limit is a positive integer */
export function checkScan(prefix: string, opts: ScanOptions): void {
  if (!prefix.endsWith('/')) throw new StoreError('INVALID', `scan prefix '${prefix}' must end in '/'`);
  if (opts.limit !== undefined && !(Number.isInteger(opts.limit) && opts.limit > 0)) {
    throw new StoreError('INVALID', `scan limit must be a positive integer, got ${opts.limit}`);
  }
}

/** the counter stored at key plus delta; throws CORRUPT for a stored non-integer, INVALID for a bad delta or overflow */
export function addCounter(key: string, stored: Uint8Array | undefined, delta: number): number {
  if (!Number.isSafeInteger(delta)) throw new StoreError('INVALID', `incr of '${key}': delta ${delta} is not a safe integer`);
  const text = stored === undefined ? '0' : Buffer.from(stored.buffer, stored.byteOffset, stored.byteLength).toString('latin1');
  if (!/^-?\d{1,16}$/.test(text)) throw new StoreError('CORRUPT', `incr of '${key}': stored value is not an integer`);
  const next = Number(text) + delta;
  if (!Number.isSafeInteger(next)) throw new StoreError('INVALID', `incr of '${key}' would overflow (${text} + ${delta})`);
  return next;
}

/** the page size of keyPages unless the caller asks for another */
export const KEY_PAGE = 1024;

/** throws INVALID unless limit (of keyPages) is a positive integer */
export function checkPageLimit(limit: number): void {
  if (!(Number.isInteger(limit) && limit > 0)) throw new StoreError('INVALID', `key page limit must be a positive integer, got ${limit}`);
}

/** KvStore.keys from an engine's keyPages: every key once, in byte order */
export async function collectKeys(pages: AsyncIterable<string[]>): Promise<string[]> {
  const all = new Set<string>();
  for await (const page of pages) for (const k of page) all.add(k);
  return [...all].sort(byteOrder);
}

/** byte order of two keys' UTF-8 encodings (code point order, which UTF-16 order is not) */
export function byteOrder(a: string, b: string): number {
  return a === b ? 0 : Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/**
 * byteOrder, fast: for the engines' sorted key lists, where a scan or an insertion holds many compares. UTF-16
 * order is code point order, so UTF-8 order, wherever the first code unit that differs is below the surrogates;
 * only there (a surrogate against a char above it) do the two orders part, and byteOrder decides.
 */
export function keyCompare(a: string, b: string): number {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  if (i === n) return a.length < b.length ? -1 : 1;
  const x = a.charCodeAt(i);
  const y = b.charCodeAt(i);
  if (x < 0xd800 && y < 0xd800) return x < y ? -1 : 1;
  return byteOrder(a, b);
}
