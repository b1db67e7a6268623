import { resolve } from 'node:path';
import { StoreError } from './errors.js';
import type { KvStore } from './kv.js';
import type { LmdbStoreOptions } from './lmdb.js';
import { MemoryStore } from './memory.js';
import type { RedisStoreOptions } from './redis.js';
import { isRedisUrl, parseRedisUrl } from './redis-url.js';

/** options for openStore; each applies to the engines that name it */
export interface OpenStoreOptions extends LmdbStoreOptions, RedisStoreOptions {}

/** a store URL, parsed */
type StoreUrl = { scheme: 'memory'; name: string } | { scheme: 'local'; dir: string } | { scheme: 'redis'; url: string };

/** the origin of each named memory store; handles given out share its data */
const namedMemory = new Map<string, MemoryStore>();

/**
 * Opens the store a URL names:
 *  - `memory:`       a fresh, empty in-memory store
 *  - `memory:NAME`   a handle on the process-wide in-memory store NAME (created empty on first use); closing a
 *                    handle leaves the data and other handles alone
 *  - `local:PATH`    LMDB in directory PATH, created if missing; a relative PATH is resolved against the cwd
 *  - `redis://HOST:PORT/VOLUME`, `redis-cluster://HOST:PORT,.../VOLUME` (and rediss:// over TLS): a Redis
 *                    server or cluster (redis.ts; credentials and TLS in redis-url.ts)
 * Anything else fails with StoreError INVALID.
 */
export async function openStore(url: string, opts: OpenStoreOptions = {}): Promise<KvStore> {
  const u = parseStoreUrl(url);
  // each engine's module (lmdb-js, ioredis) loads when a store of it is opened: every kvfs command starts faster
  if (u.scheme === 'local') return (await import('./lmdb.js')).LmdbStore.open(u.dir, opts);
  if (u.scheme === 'redis') return (await import('./redis.js')).RedisStore.open(u.url, opts);
  if (u.name === '') return new MemoryStore();
  let origin = namedMemory.get(u.name);
  if (!origin) namedMemory.set(u.name, (origin = new MemoryStore()));
  return new MemoryStore(origin);
}

/** a human label for a store URL, for logs and status; never throws */
export function describeStore(url: string): string {
  let u: StoreUrl;
  try {
    u = parseStoreUrl(url);
  } catch {
    return url;
  }
  if (u.scheme === 'local') return `LMDB store in ${u.dir}`;
  if (u.scheme === 'redis') {
    const t = parseRedisUrl(u.url);
    return `volume '${t.volume}' on Redis ${t.cluster ? 'Cluster ' : ''}${t.nodes.map((n) => `${n.host}:${n.port}`).join(',')}`;
  }
  return u.name === '' ? 'in-memory store (not durable)' : `in-memory store '${u.name}' (not durable)`;
}

/** the directory of a local: store URL (resolved), undefined for other stores; throws INVALID like openStore */
export function localStoreDir(url: string): string | undefined {
  const u = parseStoreUrl(url);
  return u.scheme === 'local' ? u.dir : undefined;
}

/** the URL as a mount shows it (its source): a local: path made absolute; throws INVALID like openStore */
export function canonicalStoreUrl(url: string): string {
  const u = parseStoreUrl(url);
  return u.scheme === 'local' ? `local:${u.dir}` : url;
}

function parseStoreUrl(url: string): StoreUrl {
  if (isRedisUrl(url)) {
    parseRedisUrl(url);
    return { scheme: 'redis', url };
  }
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):(.*)$/s.exec(url);
  if (!m) {
    throw new StoreError('INVALID', `store URL '${url}' has no scheme (expected local:PATH, memory: or redis-cluster://...; did you mean local:${url}?)`);
  }
  const scheme = m[1]!.toLowerCase();
  const rest = m[2]!;
  if (scheme === 'memory') return { scheme, name: rest };
  if (scheme === 'local') {
    if (rest === '') {
      throw new StoreError('INVALID', "store URL 'local:' has no path (expected local:PATH, e.g. local:./data or local:/var/lib/kvfs)");
    }
    return { scheme, dir: resolve(rest) };
  }
  throw new StoreError(
    'INVALID',
    `unknown store URL scheme '${m[1]}:' (expected local:PATH, memory:, redis://HOST:PORT/VOLUME or redis-cluster://HOST:PORT,.../VOLUME)`,
  );
}
