/**
 * The Redis engine: a KvStore on one Redis server (`redis://`) or a Redis Cluster (`redis-cluster://`),
 * through ioredis over RESP2. Engines that speak the same protocol (Apache Kvrocks in cluster mode) work the
 * same way. URLs and credentials: redis-url.ts. Retries, deadlines and error mapping: redis-retry.ts.
 *
 * Key layout of volume VOL (KV keys are those of src/volume/schema.ts):
 *   kvfs:{VOL}:<key>               a metadata key, a Redis string. Every one carries the hash tag {VOL}, so
 *                                  all metadata of a volume lives in one slot and one script changes any of it
 *   kvfs:{VOL}#<collection>        the collection's index: a sorted set of its members' names (score 0, so
 *                                  ZRANGEBYLEX walks them in byte order); `scan` pages through it
 *   kvfs:{VOL}!t:<bucket>          transaction ids applied recently (a hash: txid -> result), one hash per
 *                                  time bucket, each expiring a few buckets after its last write
 *   kvfs:VOL:b/<blob id>           a blob (file data), a Redis string with no hash tag: blobs spread over
 *                                  every slot of the cluster
 *
 * Atomicity: every metadata change (commit, put/del of metadata, incr) is one Lua script whose keys all
 * carry {VOL}: the checks, the writes, the index updates and the transaction record apply together or not
 * at all. A script is sent with EVALSHA (ioredis loads it with EVAL on first use per connection and again
 * after NOSCRIPT). Blob writes are plain SETs, each to its own node, issued in parallel.
 *
 * Idempotence: a commit or incr carries a transaction id (the caller's, or one made here) that its script
 * records with the writes. A retry after an unknown outcome finds the id and returns the first outcome, so
 * no change applies twice and none is skipped. Records live 3-4 buckets; a bucket is at least as long as the
 * call deadline, so every retry of a call finds its record.
 *
 * A full store: scripts start with `#!lua`, so Redis refuses a script that may write as a whole, before it
 * runs, when used memory is over maxmemory (ENOSPC, nothing half-applied). A commit that does not grow the
 * store by more than ALLOW_OOM_GROWTH bytes (by the sizes it knows: deletes, unlinks, truncates, garbage
 * collection, heartbeats) runs with `flags=allow-oom`, so space can always be freed on a full store.
 *
 * Durability: `sync` waits (WAIT) until at least one replica of every master that has one holds every
 * earlier write of this client, so a file fsynced before a master dies survives the failover. When a node
 * connection closed since the last sync (a master died), writes made on it may be on no replica, and WAIT on
 * a new connection cannot tell: that sync fails at once (UNAVAILABLE, EIO) rather than claim durability; the
 * next one starts afresh. The master's own persistence (AOF, RDB) is the server's configuration. The GC deletes a
 * blob only once the commit that dropped its last reference is on a replica too (`durable`, the same wait), so a
 * failover cannot bring back a reference to a deleted blob.
 *
 * Startup checks (before anything is mounted): the server answers and accepts the credentials; a cluster URL
 * names cluster nodes and a plain URL a plain server; every slot of a cluster is served; every node's
 * `maxmemory-policy` is `noeviction` (eviction would silently delete file data).
 */
import { log } from '../log.js';
import { randomBytes } from 'node:crypto';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { byteOrder, checkPageLimit, checkScan, collectKeys, KEY_PAGE } from './kv-rules.js';
import { StoreError } from './errors.js';
import type { KvCheck, KvEngineInfo, KvStore, KvWrite, ScanOptions } from './kv.js';
import { SLAB_BYTES, SlabStore } from './slab-store.js';
import { BlobReader, MISS, slotMaster } from './redis-blobs.js';
import { DEFAULT_RETRY, classify, errorText, withRetry, type RetryHooks, type RetryPolicy } from './redis-retry.js';
import {
  parseRedisUrl, redisPassword, redisTls, type RedisAuthOptions, type RedisNodeAddr, type RedisTarget,
} from './redis-url.js';

export interface RedisStoreOptions extends RedisAuthOptions {
  /** the deadline of every store call, ms (default 10 s) */
  timeoutMs?: number;
  /** where warnings go (default stderr, one line each; a CLI collects them and prints them once it succeeded) */
  warn?: (msg: string) => void;
  /**
   * blob GETs on connections of their own (redis-blobs.ts; default on, off with KVFS_REDIS_BLOB_READER=0); a TLS
   * store always reads through ioredis
   */
  blobReader?: boolean;
  /**
   * bytes of slabs the blob reader reads values into (slab-store.ts: slots come back as V8 collects the values; when
   * every slot is held, a read allocates its own memory); default DEFAULT_READ_SLABS, cut as reads need them
   */
  readSlabBytes?: number;
}

/** the blob reader's slabs unless told (measured: 128 MiB read 1 GiB at ~490 MB/s, 256 MiB at ~600) */
export const DEFAULT_READ_SLABS = 256 << 20;

/** a commit growing the store by at most this many bytes runs even on a full store (see above) */
export const ALLOW_OOM_GROWTH = 128;
/** metadata keys per MGET / per commit of a bulk delete */
const BATCH = 512;
const BUCKET_MIN_MS = 10_000;

type Client = Redis | Cluster;

interface Scripts {
  kvfsCommit(...args: (string | Buffer | number)[]): Promise<string>;
  kvfsCommitOom(...args: (string | Buffer | number)[]): Promise<string>;
  kvfsIncr(...args: (string | Buffer | number)[]): Promise<string>;
}

// Every script starts with its transaction id's lookup (KEYS[1..3]: the buckets; ARGV[1]: the id) and ends by
// recording its result in the newest bucket (ARGV[2]: the bucket's lifetime, ms): see "Idempotence" above.
const TX_LOOKUP = `
local txid = ARGV[1]
for b = 1, 3 do
  local done = redis.call('HGET', KEYS[b], txid)
  if done then return done end
end`;
const txRecord = (result: string) => `
redis.call('HSET', KEYS[1], txid, ${result})
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return ${result}`;

// KEYS: 3 transaction buckets (record into the first, look up all), then nc check keys, nw write keys, nw
// index keys. ARGV: txid, ttl ms, nc, nw, then per check (present '0'|'1', value), per write (op 'S'|'D',
// member, value).
const COMMIT_BODY = `${TX_LOOKUP}
local nc, nw = tonumber(ARGV[3]), tonumber(ARGV[4])
local a = 5
for i = 1, nc do
  local v = redis.call('GET', KEYS[3 + i])
  if ARGV[a] == '0' then
    if v then return '0' end
  elseif (not v) or v ~= ARGV[a + 1] then
    return '0'
  end
  a = a + 2
end
for i = 1, nw do
  local k, idx = KEYS[3 + nc + i], KEYS[3 + nc + nw + i]
  if ARGV[a] == 'S' then
    redis.call('SET', k, ARGV[a + 2])
    redis.call('ZADD', idx, 0, ARGV[a + 1])
  elseif redis.call('DEL', k) == 1 then
    redis.call('ZREM', idx, ARGV[a + 1])
  end
  a = a + 3
end${txRecord("'1'")}
`;

// KEYS: 3 transaction buckets, the counter, its index. ARGV: txid, ttl ms, delta, member.
// Counters are decimal ASCII within +-(2^53-1), as kv-rules.ts keeps them.
const INCR_BODY = `${TX_LOOKUP}
local cur = redis.call('GET', KEYS[4])
local n = 0
if cur then
  if #cur > 17 or not string.match(cur, '^%-?%d+$') then
    return redis.error_reply('KVFS_CORRUPT stored value is not an integer')
  end
  n = tonumber(cur)
end
local nx = n + tonumber(ARGV[3])
if nx > 9007199254740991 or nx < -9007199254740991 then
  return redis.error_reply('KVFS_INVALID the counter would overflow')
end
local s = string.format('%.0f', nx)
redis.call('SET', KEYS[4], s)
redis.call('ZADD', KEYS[5], 0, ARGV[4])${txRecord('s')}
`;

const isBlob = (key: string) => key.startsWith('b/');
const collectionOf = (key: string) => key.slice(0, key.lastIndexOf('/') + 1);
const buf = (u: Uint8Array) => Buffer.from(u.buffer, u.byteOffset, u.byteLength);
const globEscape = (s: string) => s.replace(/[*?[\]\\{}^]/g, (c) => `\\${c}`);

/** `k:v` lines of an INFO reply */
export function parseInfo(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) m.set(line.slice(0, i), line.slice(i + 1).trim());
  }
  return m;
}

/** the slot ranges not served, from a CLUSTER SLOTS reply */
export function uncoveredSlots(slots: [number, number, ...unknown[]][]): [number, number][] {
  const ranges = slots.map(([a, b]) => [a, b] as [number, number]).sort((x, y) => x[0] - y[0]);
  const out: [number, number][] = [];
  let next = 0;
  for (const [a, b] of ranges) {
    if (a > next) out.push([next, a - 1]);
    next = Math.max(next, b + 1);
  }
  if (next <= 16383) out.push([next, 16383]);
  return out;
}

const fmtRanges = (r: [number, number][]) =>
  r.slice(0, 4).map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(', ') + (r.length > 4 ? `, ... (${r.length} ranges)` : '');
const mib = (n: number) => `${(n / 1048576).toFixed(n % 1048576 ? 1 : 0)} MiB`;

export class RedisStore implements KvStore {
  readonly #client: Client & Scripts;
  readonly #target: RedisTarget;
  readonly #policy: RetryPolicy;
  readonly #meta: string;
  readonly #idx: string;
  readonly #tx: string;
  readonly #blob: string;
  readonly #txPrefix = randomBytes(6).toString('base64url');
  readonly #bucketMs: number;
  #txSeq = 0;
  #closed = false;
  /** blob reads beside ioredis, when on (redis-blobs.ts), and the memory they read into */
  #blobs: BlobReader | undefined;
  #slabs: SlabStore | undefined;
  /** maxmemory per master as the startup check found it (for the store-full message) */
  #maxmemory = new Map<string, number>();
  /** replicas per master, refreshed at most every 2 s (for sync) */
  #replicas: { at: number; count: Map<string, number> } = { at: 0, count: new Map() };
  /** counts closed node connections; sync (and durable, on its own) compares it with its value at its last call */
  #connEpoch = 0;
  #syncedEpoch = 0;
  #durableEpoch = 0;
  readonly retries = { transient: 0, throttled: 0 };

  private constructor(client: Client, target: RedisTarget, policy: RetryPolicy, kvrocks: boolean) {
    this.#client = client as Client & Scripts;
    this.#target = target;
    this.#policy = policy;
    const v = target.volume;
    this.#meta = `kvfs:{${v}}:`;
    this.#idx = `kvfs:{${v}}#`;
    this.#tx = `kvfs:{${v}}!t:`;
    this.#blob = `kvfs:${v}:`;
    this.#bucketMs = Math.max(BUCKET_MIN_MS, policy.deadlineMs);
    const closed = () => { this.#connEpoch++; };
    if (client instanceof Cluster) {
      client.on('+node', (node: Redis) => node.on('close', closed));
      client.on('-node', closed);
    } else {
      client.on('close', closed);
    }
    const define = (name: string, lua: string) => client.defineCommand(name, { lua });
    // Kvrocks keeps data on disk (its limit is max-db-size, no OOM flags) and takes scripts without a shebang.
    const shebang = (flags: string) => (kvrocks ? '' : `#!lua${flags}\n`);
    define('kvfsCommit', `${shebang('')}${COMMIT_BODY}`);
    define('kvfsCommitOom', `${shebang(' flags=allow-oom')}${COMMIT_BODY}`);
    define('kvfsIncr', `${shebang(' flags=allow-oom')}${INCR_BODY}`);
  }

  /** connects, runs the startup checks (above), and returns the open store; fails within the deadline */
  static async open(url: string, opts: RedisStoreOptions = {}): Promise<RedisStore> {
    const target = parseRedisUrl(url);
    const password = redisPassword(opts);
    const tls = redisTls(target, opts);
    const policy: RetryPolicy = { ...DEFAULT_RETRY, deadlineMs: opts.timeoutMs ?? DEFAULT_RETRY.deadlineMs };
    const warn = opts.warn ?? ((m: string) => log.warn(m));
    const deadline = Date.now() + policy.deadlineMs;
    const base: RedisOptions = {
      username: target.username, password, tls, protocol: 2, connectionName: 'kvfs', lazyConnect: true, enableOfflineQueue: false,
      maxRetriesPerRequest: 0, connectTimeout: Math.min(policy.deadlineMs, 5_000), commandTimeout: policy.deadlineMs,
    };
    const { kvrocks } = await preflight(target, base, deadline, policy);
    let client: Client;
    if (target.cluster) {
      client = new Cluster(target.nodes, {
        redisOptions: base, lazyConnect: true, enableOfflineQueue: false, scaleReads: 'master',
        slotsRefreshTimeout: 2_000, slotsRefreshInterval: 5_000,
        retryDelayOnFailover: 100, retryDelayOnClusterDown: 100, retryDelayOnTryAgain: 100, retryDelayOnMoved: 0,
        maxRedirections: 16, clusterRetryStrategy: (n) => Math.min(100 * n, 1_000),
      });
    } else {
      client = new Redis({
        ...base, host: target.nodes[0]!.host, port: target.nodes[0]!.port, enableAutoPipelining: true,
        retryStrategy: (n) => Math.min(50 * n, 1_000),
      });
    }
    let lastError: unknown;
    client.on('error', (e) => { lastError = e; });
    if (client instanceof Cluster) client.on('node error', (e) => { lastError = e; });
    const store = new RedisStore(client, target, policy, kvrocks);
    if (!tls && (opts.blobReader ?? process.env.KVFS_REDIS_BLOB_READER !== '0')) {
      const one = `${target.nodes[0]!.host}:${target.nodes[0]!.port}`;
      const cluster = client instanceof Cluster ? client : undefined;
      const slabs = new SlabStore(Math.max(1, Math.floor((opts.readSlabBytes ?? DEFAULT_READ_SLABS) / SLAB_BYTES)));
      store.#slabs = slabs;
      store.#blobs = new BlobReader({
        username: target.username, password,
        masterOf: (k) => (cluster ? slotMaster(cluster.slots, k) : one),
        alloc: (len) => slabs.take(len) ?? Buffer.allocUnsafeSlow(len),
      });
    }
    try {
      await withRetry(`connecting to ${target.label}`, { ...policy, deadlineMs: Math.max(1, deadline - Date.now()), reportMs: policy.deadlineMs }, store.#retryHooks, async () => {
        if (client.status === 'ready') return;
        if (client.status === 'wait' || client.status === 'end' || client.status === 'close') await client.connect();
        else await new Promise<void>((resolve, reject) => {
          const t = setTimeout(() => reject(lastError ?? new Error('Connection timeout')), 1_000);
          client.once('ready', () => { clearTimeout(t); resolve(); });
        });
      });
      await store.#checkNodes(warn);
      store.#syncedEpoch = store.#durableEpoch = store.#connEpoch;
    } catch (e) {
      store.#blobs?.close();
      client.disconnect();
      throw e;
    }
    return store;
  }

  /** what the blob reader did (redis-blobs.ts), when it is on */
  get blobReads(): { served: number; handedBack: number; connections: number } | undefined {
    const b = this.#blobs;
    return b && { served: b.served, handedBack: b.handedBack, connections: b.connections };
  }

  get readBufferBytes(): number | undefined {
    return this.#slabs?.bytes;
  }

  /** the retry layer's hooks for this store (built once: every call uses them) */
  readonly #retryHooks: RetryHooks = {
    closed: () => this.#closed,
    nospace: (e: unknown) => this.#nospaceMessage(e),
    auth: (e: unknown) => `the Redis store ${this.#target.label} refused our credentials (${errorText(e)}); check KVFS_REDIS_PASSWORD or the password file`,
    known: scriptError,
    onRetry: (cls: string) => { if (cls === 'throttled') this.retries.throttled++; else this.retries.transient++; },
  };

  #nospaceMessage(e: unknown): string {
    const limits = [...new Set(this.#maxmemory.values())].filter((n) => n > 0);
    const limit = limits.length ? `maxmemory ${limits.map(mib).join('/')} per node` : 'its memory limit';
    const kvrocks = /max-db-size/i.test(errorText(e));
    return kvrocks
      ? `the store ${this.#target.label} reached max-db-size (${errorText(e)}): raise max-db-size (CONFIG SET max-db-size) or add nodes, or delete files`
      : `the Redis store ${this.#target.label} is full: used memory reached ${limit} with maxmemory-policy noeviction; ` +
        'raise maxmemory (CONFIG SET maxmemory <bytes> on every master, and in redis.conf) or add masters, or delete files';
  }

  async #retry<T>(what: string, attempt: () => Promise<T>): Promise<T> {
    return withRetry(what, this.#policy, this.#retryHooks, attempt);
  }

  #masters(): Redis[] {
    return this.#client instanceof Cluster ? this.#client.nodes('master') : [this.#client];
  }

  #nodeName(r: Redis): string {
    return `${r.options.host}:${r.options.port}`;
  }

  /** every node's eviction policy and limit (startup check); warnings for settings that work badly together */
  async #checkNodes(warn: (m: string) => void): Promise<void> {
    const nodes = this.#client instanceof Cluster ? this.#client.nodes('all') : [this.#client];
    await this.#retry('checking the Redis nodes', async () => {
      for (const n of nodes) {
        const info = parseInfo(await n.info('memory'));
        const policy = info.get('maxmemory_policy');
        const name = this.#nodeName(n);
        if (policy !== undefined && policy !== 'noeviction') {
          throw new StoreError('CONFIG',
            `Redis node ${name} has maxmemory-policy ${policy}: it would evict keys, silently deleting file data. ` +
            'kvfs needs maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf)');
        }
        this.#maxmemory.set(name, Number(info.get('maxmemory') ?? 0));
      }
    });
    if (this.#client instanceof Cluster) {
      const timeout = await this.#masters()[0]!.config('GET', 'cluster-node-timeout').catch(() => undefined) as string[] | undefined;
      const ms = Number(timeout?.[1]);
      if (Number.isFinite(ms) && ms > 0 && this.#policy.deadlineMs < ms + 2_000) {
        warn(`--store-timeout ${this.#policy.deadlineMs / 1000} s is shorter than a failover takes here ` +
          `(cluster-node-timeout ${ms / 1000} s + election): calls during a failover will fail with EIO instead of waiting`);
      }
    }
  }

  // ------------------------------------------------------------------ keys

  #key(key: string): string {
    return isBlob(key) ? this.#blob + key : this.#meta + key;
  }

  #txKeys(): [string, string, string] {
    const b = Math.floor(Date.now() / this.#bucketMs);
    return [`${this.#tx}${b}`, `${this.#tx}${b - 1}`, `${this.#tx}${b - 2}`];
  }

  #newTxid(): string {
    return `${this.#txPrefix}.${(this.#txSeq++).toString(36)}`;
  }

  #open(): void {
    if (this.#closed) throw new StoreError('CLOSED', 'the Redis store is closed');
  }

  // ------------------------------------------------------------------ KvStore

  async get(key: string): Promise<Uint8Array | undefined> {
    this.#open();
    const k = this.#key(key);
    // A blob is asked of its master on the blob reader's connection first; whatever that cannot answer is asked
    // again through ioredis, within the same deadline (redis-blobs.ts, rule 2).
    let direct = this.#blobs !== undefined && isBlob(key);
    const v = await this.#retry(`get of ${key}`, async () => {
      if (direct) {
        direct = false;
        const r = await this.#blobs!.tryGet(k);
        if (r !== MISS) return r ?? null;
      }
      return this.#client.getBuffer(k);
    });
    return v ?? undefined;
  }

  async getMany(keys: readonly string[]): Promise<(Uint8Array | undefined)[]> {
    this.#open();
    const out: (Uint8Array | undefined)[] = new Array(keys.length);
    const metaIdx: number[] = [];
    const jobs: Promise<void>[] = [];
    keys.forEach((key, i) => {
      if (isBlob(key)) jobs.push(this.get(key).then((v) => { out[i] = v; }));
      else metaIdx.push(i);
    });
    for (let s = 0; s < metaIdx.length; s += BATCH) {
      const part = metaIdx.slice(s, s + BATCH);
      const ks = part.map((i) => this.#meta + keys[i]!);
      jobs.push(this.#retry(`get of ${ks.length} keys`, () => this.#client.mgetBuffer(...ks)).then((vals) => {
        part.forEach((i, j) => { out[i] = vals[j] ?? undefined; });
      }));
    }
    await Promise.all(jobs);
    return out;
  }

  async put(key: string, value: Uint8Array): Promise<void> {
    this.#open();
    if (!isBlob(key)) {
      await this.commit([], [{ key, value }]);
      return;
    }
    // A blob is written once with one value, so a retry is harmless. The caller keeps its buffer unchanged
    // until this resolves (kv.ts), and ioredis copies it into the socket.
    const k = this.#key(key);
    const v = buf(value);
    await this.#retry(`write of ${key} (${value.byteLength} bytes)`, () => this.#client.set(k, v));
  }

  async del(keys: readonly string[]): Promise<void> {
    this.#open();
    const meta = keys.filter((k) => !isBlob(k));
    const jobs = keys.filter(isBlob).map((key) => {
      const k = this.#key(key);
      return this.#retry(`delete of ${key}`, () => this.#client.del(k)).then(() => undefined);
    });
    for (let s = 0; s < meta.length; s += BATCH) {
      jobs.push(this.commit([], meta.slice(s, s + BATCH).map((key) => ({ key, value: null }))).then(() => undefined));
    }
    await Promise.all(jobs);
  }

  async scan(prefix: string, opts: ScanOptions = {}): Promise<[string, Uint8Array][]> {
    this.#open();
    checkScan(prefix, opts);
    const { after, limit } = opts;
    if (isBlob(prefix)) {
      // Blobs have no index (they are not in the volume's slot): a maintenance walk of the keyspace.
      let ks = (await this.keys(prefix)).filter((k) => collectionOf(k) === prefix);
      if (after !== undefined) ks = ks.filter((k) => byteOrder(k, after) > 0);
      if (limit !== undefined) ks = ks.slice(0, limit);
      const vals = await this.getMany(ks);
      return ks.flatMap((k, i) => (vals[i] ? [[k, vals[i]!] as [string, Uint8Array]] : []));
    }
    let min: string | Buffer = '-';
    if (after !== undefined && byteOrder(after, prefix) > 0) {
      // every member starts with prefix: an `after` above prefix without it sorts after every member
      if (!after.startsWith(prefix)) return [];
      min = Buffer.concat([Buffer.from('('), Buffer.from(after.slice(prefix.length))]);
    }
    const idx = this.#idx + prefix;
    const members = await this.#retry(`scan of ${prefix}`, () => (limit === undefined
      ? this.#client.zrangebylexBuffer(idx, min, '+')
      : this.#client.zrangebylexBuffer(idx, min, '+', 'LIMIT', 0, limit)));
    const keys = members.map((m) => prefix + m.toString('utf8'));
    const vals = await this.getMany(keys);
    // A member deleted between the two reads is left out: scans are not transactional (txn.ts).
    return keys.flatMap((k, i) => (vals[i] ? [[k, vals[i]!] as [string, Uint8Array]] : []));
  }

  keys(prefix: string): Promise<string[]> {
    return collectKeys(this.keyPages(prefix));
  }

  /**
   * SCAN of every master, for the volume's metadata keys and its blobs under prefix. SCAN of a master sees the keys
   * it holds; a key that moves to another master during the walk (resharding) could be missed, so the walk reads
   * the cluster's layout before and after and fails (UNAVAILABLE) when slots are moving or moved meanwhile.
   */
  async *keyPages(prefix: string, limit = KEY_PAGE): AsyncGenerator<string[]> {
    this.#open();
    checkPageLimit(limit);
    const before = await this.#layout(prefix);
    const patterns = [`${globEscape(this.#meta + prefix)}*`, `${globEscape(this.#blob + prefix)}*`];
    for (const node of this.#masters()) {
      for (const match of patterns) {
        let cursor = '0';
        do {
          const [next, ks] = await this.#retry(`listing keys under ${prefix}`, () => node.scan(cursor, 'MATCH', match, 'COUNT', limit));
          cursor = next;
          const page = new Set<string>();
          for (const k of ks) {
            const key = k.startsWith(this.#meta) ? k.slice(this.#meta.length) : k.startsWith(this.#blob) ? k.slice(this.#blob.length) : undefined;
            if (key?.startsWith(prefix)) page.add(key);
          }
          // COUNT is a hint: a call may return more
          const keys = [...page];
          for (let i = 0; i < keys.length; i += limit) yield keys.slice(i, i + limit);
        } while (cursor !== '0');
      }
    }
    if ((await this.#layout(prefix)) !== before) {
      throw new StoreError('UNAVAILABLE', `the cluster ${this.#target.label} moved slots between its masters while kvfs walked its keys (under ${prefix}): run the command again`);
    }
  }

  /**
   * Which master serves which slots, as the masters themselves say (CLUSTER NODES), for a walk of every master's
   * keys: '' for a plain server. UNAVAILABLE while slots are moving (a master reports a slot migrating or
   * importing) or when a master serves slots that this client does not walk.
   */
  async #layout(prefix: string): Promise<string> {
    if (!(this.#client instanceof Cluster)) return '';
    const walked = new Map<string, string>();
    let all = '';
    for (const node of this.#masters()) {
      const text = String(await this.#retry('reading the cluster layout', () => node.cluster('NODES')));
      if (/\[\d+-[<>]-/.test(text)) {
        throw new StoreError('UNAVAILABLE', `the cluster ${this.#target.label} is moving slots between its masters (resharding): ` +
          `kvfs cannot walk its keys (under ${prefix}) meanwhile; run the command again when it is done`);
      }
      const self = text.split('\n').find((l) => l.split(' ')[2]?.split(',').includes('myself'));
      if (self) walked.set(self.split(' ')[0]!, self.split(' ').slice(8).join(' '));
      all ||= text;
    }
    for (const line of all.split('\n')) {
      const f = line.split(' ');
      if (f[2]?.split(',').includes('master') && f.length > 8 && !walked.has(f[0]!)) {
        throw new StoreError('UNAVAILABLE', `the cluster ${this.#target.label} has a master (${f[1]}) this client does not know yet: run the command again`);
      }
    }
    return [...walked].map(([id, slots]) => `${id} ${slots}`).sort().join('\n');
  }

  async incr(key: string, delta: number): Promise<number> {
    this.#open();
    if (!Number.isSafeInteger(delta)) throw new StoreError('INVALID', `incr of '${key}': delta ${delta} is not a safe integer`);
    if (isBlob(key)) throw new StoreError('INVALID', `incr of '${key}': blob keys are not counters`);
    const txid = this.#newTxid();
    const txKeys = this.#txKeys();
    const ttl = this.#bucketMs * 4;
    const args = [5, ...txKeys, this.#meta + key, this.#idx + collectionOf(key), txid, ttl, delta, key.slice(collectionOf(key).length)];
    const r = await this.#retry(`incr of ${key}`, () => this.#client.kvfsIncr(...args));
    return Number(r);
  }

  async commit(checks: readonly KvCheck[], writes: readonly KvWrite[], txid?: string): Promise<boolean> {
    this.#open();
    for (const c of [...checks, ...writes]) {
      if (isBlob(c.key)) throw new StoreError('INVALID', `commit: blob key '${c.key}' cannot be part of a metadata commit`);
    }
    if (checks.length === 0 && writes.length === 0) return true;
    if (writes.length === 0) {
      // checks only: a consistent read of the keys, no record needed
      const vals = await this.#retry('commit check', () => this.#client.mgetBuffer(...checks.map((c) => this.#meta + c.key)));
      return checks.every((c, i) => (c.value === undefined ? vals[i] === null : vals[i] !== null && buf(c.value).equals(vals[i]!)));
    }
    const keys: string[] = [...this.#txKeys()];
    const args: (string | Buffer | number)[] = [txid ?? this.#newTxid(), this.#bucketMs * 4, checks.length, writes.length];
    const known = new Map<string, number>();
    for (const c of checks) {
      keys.push(this.#meta + c.key);
      if (c.value === undefined) args.push('0', '');
      else args.push('1', buf(c.value));
      known.set(c.key, c.value === undefined ? 0 : c.key.length + c.value.byteLength);
    }
    let growth = 0;
    for (const w of writes) {
      keys.push(this.#meta + w.key);
      const member = w.key.slice(collectionOf(w.key).length);
      if (w.value === null) args.push('D', member, '');
      else args.push('S', member, buf(w.value));
      const before = known.get(w.key) ?? (w.value === null ? w.key.length : 0);
      growth += (w.value === null ? 0 : w.key.length + w.value.byteLength) - before;
    }
    for (const w of writes) keys.push(this.#idx + collectionOf(w.key));
    const call = growth <= ALLOW_OOM_GROWTH ? this.#client.kvfsCommitOom : this.#client.kvfsCommit;
    const r = await this.#retry(`commit of ${writes.length} writes`, () => call.call(this.#client, keys.length, ...keys, ...args));
    return r === '1';
  }

  async sync(): Promise<void> {
    this.#open();
    const epoch = this.#connEpoch;
    await this.#retry('waiting for replicas', async () => {
      // A connection that closed since the last sync may have taken acknowledged writes that no replica
      // holds yet (WAIT on a new connection cannot vouch for them): say so at once instead of waiting.
      if (this.#connEpoch !== this.#syncedEpoch) {
        this.#syncedEpoch = this.#connEpoch;
        throw new StoreError('UNAVAILABLE',
          'a Redis connection was lost (a node failed or restarted) since the last sync: writes made before it may not be on any replica');
      }
      await this.#waitReplicas();
    });
    if (this.#connEpoch !== epoch) {
      this.#syncedEpoch = this.#connEpoch;
      throw new StoreError('UNAVAILABLE', 'a Redis connection was lost while waiting for replicas: writes may not be on any replica');
    }
  }

  /**
   * KvStore.durable, for the GC: every earlier write is on a replica of its master, as sync makes them, so that a
   * failover never brings back a reference whose blob the GC deleted meanwhile (the commit that dropped it was on
   * the old master alone). It keeps its own account of lost connections, so it never takes from sync the failure
   * that an fsync must report; after one it rejects once (the GC waits and tries again). Masters without replicas:
   * their persistence is the server's configuration, as for sync.
   */
  async durable(): Promise<void> {
    this.#open();
    const last = this.#durableEpoch;
    const epoch = this.#connEpoch;
    const replicated = await this.#retry('waiting for replicas', () => this.#waitReplicas());
    const now = this.#connEpoch;
    this.#durableEpoch = now;
    // Without replicas no failover can lose a write: a lost connection says nothing about durability here.
    if (replicated && (last !== epoch || now !== epoch)) {
      throw new StoreError('UNAVAILABLE', 'a Redis connection was lost since the last wait for replicas: earlier writes may not be on any replica');
    }
  }

  /**
   * WAIT on every master that has a replica (the count read again at most every 2 s) until one holds this client's
   * writes; whether any master has one
   */
  async #waitReplicas(): Promise<boolean> {
    const masters = this.#masters();
    if (Date.now() - this.#replicas.at > 2_000) {
      const count = new Map<string, number>();
      await Promise.all(masters.map(async (m) => {
        count.set(this.#nodeName(m), Number(parseInfo(await m.info('replication')).get('connected_slaves') ?? 0));
      }));
      this.#replicas = { at: Date.now(), count };
    }
    const replicated = masters.filter((m) => (this.#replicas.count.get(this.#nodeName(m)) ?? 0) > 0);
    await Promise.all(replicated.map(async (m) => {
      const acked = await (m.call('WAIT', 1, Math.min(this.#policy.deadlineMs, 2_000)) as Promise<number>);
      if (acked < 1) throw new Error(`NOREPLICAS no replica of ${this.#nodeName(m)} acknowledged the writes yet`);
    }));
    return replicated.length > 0;
  }

  async info(): Promise<KvEngineInfo> {
    this.#open();
    let cap = 0;
    let used = 0;
    let limited = true;
    for (const m of this.#masters()) {
      const info = parseInfo(await this.#retry('reading memory use', () => m.info('memory')));
      const max = Number(info.get('maxmemory') ?? 0);
      if (!max) limited = false;
      cap += max;
      used += Number(info.get('used_memory') ?? 0);
    }
    const engine = this.#target.cluster ? 'redis-cluster' : 'redis';
    return limited ? { engine, shared: true, capacityBytes: cap, freeBytes: Math.max(0, cap - used) } : { engine, shared: true };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#blobs?.close();
    const c = this.#client;
    await Promise.race([c.quit().catch(() => undefined), new Promise((r) => setTimeout(r, 1_000).unref())]);
    c.disconnect();
  }
}

/** errors our scripts raise, as StoreErrors */
function scriptError(e: unknown): StoreError | undefined {
  const msg = errorText(e);
  const m = /KVFS_(CORRUPT|INVALID) (.*)$/.exec(msg);
  if (!m) return undefined;
  return new StoreError(m[1] as 'CORRUPT' | 'INVALID', m[2]!);
}

/**
 * Talks to the seeds one by one with a short-lived connection before the real client exists: tells
 * unreachable from refused credentials, a plain server from a cluster node, and finds unserved slots.
 */
async function preflight(target: RedisTarget, base: RedisOptions, deadline: number, policy: RetryPolicy): Promise<{ kvrocks: boolean }> {
  const hooks = {
    closed: () => false,
    nospace: () => 'the store is full',
    auth: (e: unknown) => `the Redis server ${target.label} refused our credentials (${errorText(e)}): ` +
      (base.password === undefined ? 'it needs a password: set KVFS_REDIS_PASSWORD or --password-file' : 'check KVFS_REDIS_PASSWORD or the password file'),
  };
  const names = target.nodes.map((n) => `${n.host}:${n.port}`).join(', ');
  const left = () => Math.max(1, deadline - Date.now());
  const info = await withRetry(`connecting to ${names}`, { ...policy, deadlineMs: left(), reportMs: policy.deadlineMs }, hooks, async () => {
    let last: unknown;
    for (const node of target.nodes) {
      try {
        return await probe(node, base, left());
      } catch (e) {
        if (classify(e) !== 'transient') throw e;
        last = e;
      }
    }
    throw last;
  });
  const enabled = info.info.get('cluster_enabled') === '1';
  const where = `${info.node.host}:${info.node.port}`;
  if (target.cluster && !enabled) {
    throw new StoreError('CONFIG', `${where} is a plain Redis server, not a cluster node (cluster_enabled:0): use redis://${where}/${target.volume}`);
  }
  if (!target.cluster && enabled) {
    throw new StoreError('CONFIG', `${where} is a Redis Cluster node: use redis-cluster://${where}/${target.volume} (the other nodes are discovered)`);
  }
  if (target.cluster) {
    const missing = uncoveredSlots(info.slots ?? []);
    if (missing.length) {
      const n = missing.reduce((s, [a, b]) => s + b - a + 1, 0);
      throw new StoreError('CONFIG',
        `the Redis Cluster at ${where} serves no node for ${n} of 16384 slots (${fmtRanges(missing)}): kvfs needs every slot served ` +
        `(redis-cli --cluster fix ${where}, or assign the slots)`);
    }
  }
  return { kvrocks: info.info.has('kvrocks_version') };
}

async function probe(node: RedisNodeAddr, base: RedisOptions, ms: number): Promise<{ node: RedisNodeAddr; info: Map<string, string>; slots?: [number, number][] }> {
  const r = new Redis({ ...base, host: node.host, port: node.port, retryStrategy: () => null, enableReadyCheck: false, connectTimeout: Math.min(ms, 5_000) });
  let lastError: unknown;
  r.on('error', (e) => { lastError = e; });
  try {
    await r.connect().catch((e) => { throw lastError ?? e; });
    const info = parseInfo(await r.info());
    let slots: [number, number][] | undefined;
    if (info.get('cluster_enabled') === '1') slots = (await r.call('CLUSTER', 'SLOTS')) as [number, number][];
    return { node, info, slots };
  } finally {
    r.disconnect();
  }
}
