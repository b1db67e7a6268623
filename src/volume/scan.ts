/**
 * Walking a collection of the schema (schema.ts: every key under a prefix) page by page, so that memory stays
 * bounded whatever the collection's size. Scans are not part of transactions (txn.ts).
 */
import type { KvStore } from '../backend/kv.js';

/** the page size of a walk, unless the caller asks for another */
export const SCAN_PAGE = 1024;

/**
 * The members of a collection in key order, one page (at most `limit` entries) at a time. Each page starts after
 * the last key of the one before, so members the caller deletes while it walks are not met again.
 */
export async function* scanPages(store: KvStore, prefix: string, limit = SCAN_PAGE): AsyncGenerator<[string, Uint8Array][]> {
  let after: string | undefined;
  for (;;) {
    const page = await store.scan(prefix, { after, limit });
    if (page.length) yield page;
    if (page.length < limit) return;
    after = page[page.length - 1]![0];
  }
}

/**
 * Every key under prefix (of any collection) with its value, a page at a time (KvStore.keyPages, then one getMany
 * per page): for walks of a whole volume. A key deleted between the two reads is left out.
 */
export async function* keyValuePages(store: KvStore, prefix: string, limit = SCAN_PAGE): AsyncGenerator<[string, Uint8Array][]> {
  for await (const keys of store.keyPages(prefix, limit)) {
    const vals = await store.getMany(keys);
    const page: [string, Uint8Array][] = [];
    for (let i = 0; i < keys.length; i++) if (vals[i]) page.push([keys[i]!, vals[i]!]);
    if (page.length) yield page;
  }
}
