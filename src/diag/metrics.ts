/**
 * Prometheus metrics of a live daemon, off unless it is started with `--metrics HOST:PORT`: a node:http server
 * answers `GET /metrics` in the Prometheus text format (0.0.4) and 404 for any other path. Each scrape reads the
 * daemon's stats (what the control command `stats` returns, DaemonStats below) exactly once and fills a registry
 * of this server's own (never prom-client's global one) from it; a `source()` that throws answers 500 with one
 * line, and nothing a scrape does throws into the daemon.
 *
 * The metrics; their names, types and labels are a contract (dashboards and alerts are written against them):
 *
 *   name                                  type      labels         from the stats
 *   kvfs_requests_total                   counter   op             session.byOp: requests JavaScript took, by opcode
 *   kvfs_request_errors_total             counter                  session.errors
 *   kvfs_requests_in_flight               gauge                    session.inFlight
 *   kvfs_fast_reads_total                 counter                  channel.fastReads: READs the reader threads
 *                                                                  answered without JavaScript (from blob files too)
 *   kvfs_request_duration_seconds         histogram op, le          session.latency[op]: _bucket{op,le} from .buckets
 *                                                                  (le "0.000001", "0.000002", ... "33.554432": the
 *                                                                  bounds 2^0..2^25 us in seconds) and le "+Inf" from
 *                                                                  .count; _sum{op} from .sum, _count{op} from .count
 *   kvfs_request_latency_seconds          summary   op, quantile   session.latency[op].p50, .p99 (quantile "0.5",
 *                                                                  "0.99"), and _count{op} from .count
 *   kvfs_request_latency_seconds_max      gauge     op             session.latency[op].max
 *   kvfs_buffer_pool_capacity_bytes       gauge                    pool.capacityBytes
 *   kvfs_buffer_pool_in_use_bytes         gauge                    pool.inUseBytes
 *   kvfs_buffer_pool_high_water_bytes     gauge                    pool.highWaterBytes
 *   kvfs_buffer_pool_waiters              gauge                    pool.waiters
 *   kvfs_buffer_pool_waits_total          counter                  pool.totalWaits
 *   kvfs_buffer_pool_class_buffers        gauge     size, state    pool.classes[].inUse (state "in_use") and .free
 *                                                                  (state "free"); size is the class's bytes
 *   kvfs_buffer_pool_class_high_water     gauge     size           pool.classes[].highWater (buffers)
 *   kvfs_blob_cache_bytes                 gauge                    fs.blobCacheBytes
 *   kvfs_blob_cache_hits_total            counter                  fs.blobCacheHits
 *   kvfs_blob_cache_misses_total          counter                  fs.blobCacheMisses
 *   kvfs_write_back_dirty_bytes           gauge                    fs.writeBackBytes
 *   kvfs_bytes_written_total              counter                  fs.bytesWritten: bytes callers wrote
 *   kvfs_bytes_sent_total                 counter                  fs.bytesSent: bytes sent to the store
 *   kvfs_bytes_returned_total             counter                  fs.bytesReturned: bytes callers read
 *   kvfs_bytes_fetched_total              counter                  fs.bytesFetched: bytes asked of the store
 *   kvfs_open_files                       gauge                    fs.openFiles
 *   kvfs_memory_bytes                     gauge     part           memory.parts[]: name, bytes ("other" may be < 0)
 *   kvfs_memory_rss_bytes                 gauge                    memory.rss
 *   kvfs_store_calls_total                counter  method          store.calls (KvStore methods)
 *   kvfs_store_errors_total               counter  code            store.errors (StoreError codes)
 *   kvfs_store_retries_total              counter  kind            store.retries (Redis: transient, throttled)
 *   kvfs_store_blob_reads_total           counter  path            store.blobReads (Redis: direct, ioredis)
 *
 * Beside them, in the same registry, prom-client's default process and Node.js metrics under their standard
 * names (process_resident_memory_bytes, process_cpu_seconds_total, nodejs_eventloop_lag_seconds, ...).
 *
 * Rules:
 *  1. Latency is a histogram, with the daemon's own percentiles beside it. The daemon keeps quarter-octave
 *     histograms (src/diag/latency.ts) and reports per opcode the sum (to 0.1 us) and exact cumulative counts at
 *     whole octaves (LATENCY_BOUNDS_US, 2^0..2^25 us); kvfs_request_duration_seconds carries them, so
 *     histogram_quantile() and rate(_sum) / rate(_count) work and aggregate across opcodes and daemons. An opcode
 *     is in the histogram with all of it or not at all: 26 finite bucket counts, never decreasing, the last at most
 *     count, and a sum and a count, none below 0; stats without buckets or sum (an older daemon) give the family no
 *     sample. The summary kvfs_request_latency_seconds stays: the daemon's p50 and p99 (a quarter-octave bucket's
 *     upper bound, at most 19% high: finer than the histogram's octaves) and _count, no _sum (the histogram has
 *     it); its quantiles cannot be aggregated across daemons (take max() of them, never avg()). Latency is seconds
 *     on the wire (the daemon's microseconds / 1e6); each bound's le is written as prom-client writes one (String()
 *     of the seconds), the same string in every scrape (LATENCY_LE).
 *  2. Counters carry the daemon's absolute totals, set anew at each scrape (reset, then inc by the total). They
 *     start at 0 with the daemon, so a restart is the counter reset rate() expects.
 *  3. Absent is absent. A value missing from the stats (or not a finite number, or below 0 for a counter) has no
 *     sample in that scrape: the family keeps its HELP and TYPE lines and nothing else. Every family is cleared
 *     before it is filled, so a label set gone from the stats (an opcode, a pool class, a memory part) is gone
 *     from the next scrape. Samples with the same labels (two memory parts of one name) are added up.
 *  4. One scrape at a time: each reads `source()` once, and the registry's collect callbacks all read that one
 *     reading, so every kvfs_ sample of a scrape comes from the same stats.
 *  5. The server is unref'd (it never keeps the daemon alive) and serves at most MAX_CONNECTIONS at once.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { isIPv6, type AddressInfo } from 'node:net';
import { Counter, Gauge, Registry, collectDefaultMetrics, type Metric } from 'prom-client';
import { LATENCY_BOUNDS_US } from './latency.js';

/** where `--metrics :PORT` listens: loopback, unless an address is given */
export const DEFAULT_METRICS_HOST = '127.0.0.1';
/** connections served at once; more are dropped by node:http */
const MAX_CONNECTIONS = 32;

/** the JSON of the daemon's `stats` control command, as far as metrics read it; any part may be missing */
export interface DaemonStats {
  session?: {
    requests: number;
    inFlight: number;
    errors: number;
    byOp: Record<string, number>;
    /**
     * per opcode, microseconds (src/diag/latency.ts, LatencySummary); sum and buckets (cumulative counts at
     * LATENCY_BOUNDS_US) are missing from older daemons
     */
    latency?: Record<string, {
      p50: number; p99: number; max: number; count: number; sum?: number; buckets?: number[];
    }>;
  };
  channel?: { fastReads?: number; fileReads?: number; requests?: number };
  pool?: {
    capacityBytes: number; inUseBytes: number; highWaterBytes: number; waiters: number; totalWaits: number;
    classes: { size: number; count: number; inUse: number; free: number; highWater: number }[];
  };
  fs?: {
    blobCacheBytes?: number; blobCacheHits?: number; blobCacheMisses?: number; writeBackBytes?: number;
    bytesWritten?: number; bytesSent?: number; bytesReturned?: number; bytesFetched?: number; openFiles?: number;
  };
  memory?: { rss: number; parts: { name: string; bytes: number }[] };
  /** the store's calls per method, errors per StoreError code, retries per kind (src/diag/store-calls.ts) */
  store?: { calls?: Record<string, number>; errors?: Record<string, number>; retries?: Record<string, number>; blobReads?: { served?: number; handedBack?: number } };
}

export interface MetricsServer {
  /** the port listened on (the one the system chose, for port 0) */
  readonly port: number;
  /** http://HOST:PORT/metrics */
  readonly url: string;
  /** stops listening and ends every connection */
  close(): Promise<void>;
}

/**
 * `HOST:PORT`, `:PORT` (DEFAULT_METRICS_HOST) or `[IPV6]:PORT`, with PORT 1..65535 or 0 (any free port); an
 * Error with a one-line message for anything else.
 */
export function parseListenAddress(s: string): { host: string; port: number } {
  const shown = s.length > 80 ? `${s.slice(0, 80)}...` : s;
  // one line whatever was given: control characters are shown as '?'
  const bad = (why: string) => new Error(`bad --metrics '${shown}': ${why}`.replace(/[\x00-\x1f\x7f]/g, '?'));
  const usage = 'give HOST:PORT, for example 127.0.0.1:9464';
  let host: string;
  let port: string;
  const v6 = /^\[([^\]]*)\](.*)$/.exec(s);
  if (v6) {
    if (!isIPv6(v6[1]!)) throw bad(`'${v6[1]}' in brackets is not an IPv6 address; for example [::1]:9464`);
    if (!v6[2]!.startsWith(':')) throw bad('give [IPV6]:PORT, for example [::1]:9464');
    host = v6[1]!;
    port = v6[2]!.slice(1);
  } else {
    const colon = s.lastIndexOf(':');
    if (colon < 0) throw bad(usage);
    host = s.slice(0, colon);
    port = s.slice(colon + 1);
    if (host.includes(':')) throw bad('put an IPv6 address in brackets, for example [::1]:9464');
    if (host === '') host = DEFAULT_METRICS_HOST;
    else if (!/^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/.test(host)) {
      throw bad(`'${host}' is neither an IP address nor a host name; ${usage}`);
    }
  }
  if (port === '') throw bad(`no port; ${usage}`);
  if (!/^\d{1,5}$/.test(port) || Number(port) > 65535) throw bad(`port '${port}' is not a number in 1..65535`);
  return { host, port: Number(port) };
}

/**
 * Serves `source()` as Prometheus metrics at http://HOST:PORT/metrics (rules above); rejects with a one-line
 * message when it cannot listen there.
 */
export async function startMetrics(addr: { host: string; port: number }, source: () => DaemonStats): Promise<MetricsServer> {
  const metrics = new DaemonMetrics();
  const server = createServer((req, res) => {
    metrics.answer(req, res, source).catch(() => res.destroy());
  });
  server.maxConnections = MAX_CONNECTIONS;
  server.on('connection', (sock) => sock.unref());
  const host = addr.host.includes(':') ? `[${addr.host}]` : addr.host;
  server.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    const fail = (e: NodeJS.ErrnoException) => reject(new Error(`cannot serve metrics on ${host}:${addr.port}: ${e.code ?? e.message}`));
    server.once('error', fail);
    server.listen(addr.port, addr.host, () => { server.off('error', fail); resolve(); });
  });
  server.unref();
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: `http://${host}:${port}/metrics`,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

// ------------------------------------------------------------------ the families

type Labels = Record<string, string>;
/** one family's samples in one scrape: a number (or nothing) for a family without labels */
type Samples = number | undefined | [Labels, number | undefined][];

interface Family {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  labels?: readonly string[];
  read(s: DaemonStats): Samples;
}

/** a finite number, or nothing */
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
/** microseconds as seconds, or nothing */
const seconds = (us: unknown): number | undefined => {
  const v = num(us);
  return v === undefined ? undefined : v / 1e6;
};
/** the entries of a plain object, or none */
const entries = (o: unknown): [string, unknown][] => (typeof o === 'object' && o !== null && !Array.isArray(o) ? Object.entries(o) : []);
/** the object elements of an array, or none */
const items = <T>(a: T[] | undefined): Partial<T>[] => (Array.isArray(a) ? a.filter((x) => typeof x === 'object' && x !== null) : []);

const FAMILIES: readonly Family[] = [
  { name: 'kvfs_requests_total', type: 'counter', labels: ['op'], help: 'FUSE requests JavaScript took, by opcode',
    read: (s) => entries(s.session?.byOp).map(([op, n]) => [{ op }, num(n)]) },
  { name: 'kvfs_request_errors_total', type: 'counter', help: 'FUSE requests answered with an error',
    read: (s) => num(s.session?.errors) },
  { name: 'kvfs_requests_in_flight', type: 'gauge', help: 'FUSE requests taken and not yet answered',
    read: (s) => num(s.session?.inFlight) },
  { name: 'kvfs_fast_reads_total', type: 'counter', help: 'READs the reader threads answered without JavaScript',
    read: (s) => num(s.channel?.fastReads) },
  { name: 'kvfs_request_latency_seconds_max', type: 'gauge', labels: ['op'], help: 'the longest FUSE request so far, by opcode',
    read: (s) => entries(s.session?.latency).map(([op, l]) => [{ op }, seconds((l as { max?: unknown })?.max)]) },
  { name: 'kvfs_buffer_pool_capacity_bytes', type: 'gauge', help: 'bytes the buffer pool holds',
    read: (s) => num(s.pool?.capacityBytes) },
  { name: 'kvfs_buffer_pool_in_use_bytes', type: 'gauge', help: 'bytes of pool buffers handed out',
    read: (s) => num(s.pool?.inUseBytes) },
  { name: 'kvfs_buffer_pool_high_water_bytes', type: 'gauge', help: 'the most bytes of pool buffers handed out at once',
    read: (s) => num(s.pool?.highWaterBytes) },
  { name: 'kvfs_buffer_pool_waiters', type: 'gauge', help: 'acquires waiting for a pool buffer',
    read: (s) => num(s.pool?.waiters) },
  { name: 'kvfs_buffer_pool_waits_total', type: 'counter', help: 'acquires that had to wait for a pool buffer',
    read: (s) => num(s.pool?.totalWaits) },
  { name: 'kvfs_buffer_pool_class_buffers', type: 'gauge', labels: ['size', 'state'],
    help: 'pool buffers of a size class (bytes), in use or free',
    read: (s) => items(s.pool?.classes).flatMap((c) => num(c.size) === undefined ? [] : [
      [{ size: String(c.size), state: 'in_use' }, num(c.inUse)],
      [{ size: String(c.size), state: 'free' }, num(c.free)],
    ] as [Labels, number | undefined][]) },
  { name: 'kvfs_buffer_pool_class_high_water', type: 'gauge', labels: ['size'],
    help: 'the most pool buffers of a size class (bytes) in use at once',
    read: (s) => items(s.pool?.classes).flatMap((c) => num(c.size) === undefined ? [] : [[{ size: String(c.size) }, num(c.highWater)]] as [Labels, number | undefined][]) },
  { name: 'kvfs_blob_cache_bytes', type: 'gauge', help: 'bytes in the blob cache',
    read: (s) => num(s.fs?.blobCacheBytes) },
  { name: 'kvfs_blob_cache_hits_total', type: 'counter', help: 'blob cache lookups that found the blob',
    read: (s) => num(s.fs?.blobCacheHits) },
  { name: 'kvfs_blob_cache_misses_total', type: 'counter', help: 'blob cache lookups that had to fetch the blob',
    read: (s) => num(s.fs?.blobCacheMisses) },
  { name: 'kvfs_write_back_dirty_bytes', type: 'gauge', help: 'written bytes not yet committed to the store',
    read: (s) => num(s.fs?.writeBackBytes) },
  { name: 'kvfs_bytes_written_total', type: 'counter', help: 'bytes callers wrote',
    read: (s) => num(s.fs?.bytesWritten) },
  { name: 'kvfs_bytes_sent_total', type: 'counter', help: 'bytes sent to the store',
    read: (s) => num(s.fs?.bytesSent) },
  { name: 'kvfs_bytes_returned_total', type: 'counter', help: 'bytes callers read',
    read: (s) => num(s.fs?.bytesReturned) },
  { name: 'kvfs_bytes_fetched_total', type: 'counter', help: 'bytes fetched from the store',
    read: (s) => num(s.fs?.bytesFetched) },
  { name: 'kvfs_open_files', type: 'gauge', help: 'open file handles',
    read: (s) => num(s.fs?.openFiles) },
  { name: 'kvfs_memory_bytes', type: 'gauge', labels: ['part'], help: "the daemon's resident memory, by part",
    read: (s) => items(s.memory?.parts).flatMap((p) => typeof p.name === 'string' ? [[{ part: p.name }, num(p.bytes)]] as [Labels, number | undefined][] : []) },
  { name: 'kvfs_memory_rss_bytes', type: 'gauge', help: "the daemon's resident set size",
    read: (s) => num(s.memory?.rss) },
  { name: 'kvfs_store_calls_total', type: 'counter', labels: ['method'], help: 'calls to the store, by method',
    read: (s) => entries(s.store?.calls).map(([method, n]) => [{ method }, num(n)]) },
  { name: 'kvfs_store_errors_total', type: 'counter', labels: ['code'], help: 'store calls that failed, by error code',
    read: (s) => entries(s.store?.errors).map(([code, n]) => [{ code }, num(n)]) },
  { name: 'kvfs_store_retries_total', type: 'counter', labels: ['kind'], help: 'store calls retried, by kind (Redis)',
    read: (s) => entries(s.store?.retries).map(([kind, n]) => [{ kind }, num(n)]) },
  { name: 'kvfs_store_blob_reads_total', type: 'counter', labels: ['path'], help: 'Redis blob reads, by the path that answered: the blob reader\'s own connections (direct) or ioredis (what the reader handed back)',
    read: (s) => (s.store?.blobReads ? [[{ path: 'direct' }, num(s.store.blobReads.served)], [{ path: 'ioredis' }, num(s.store.blobReads.handedBack)]] : []) },
];

// ------------------------------------------------------------------ the registry and its scrapes

/** the registry, filled from one reading of the stats per scrape */
class DaemonMetrics {
  readonly registry = new Registry();
  /** the stats of the scrape under way (rule 4) */
  private current: DaemonStats = {};
  private queue: Promise<unknown> = Promise.resolve();

  constructor() {
    for (const f of FAMILIES) this.add(f);
    // prom-client's Registry serializes any object with name, help, type and get(); its typings name only its
    // own four classes, none of which can be set from quantiles or bucket counts computed elsewhere
    this.registry.registerMetric(new LatencySummary(() => this.current) as unknown as Metric);
    this.registry.registerMetric(new LatencyHistogram(() => this.current) as unknown as Metric);
    collectDefaultMetrics({ register: this.registry });
  }

  private add(f: Family): void {
    const labelNames = f.labels ?? [];
    const fill = (m: Counter | Gauge) => {
      m.reset();
      if (!labelNames.length) m.remove(); // reset leaves a 0 in a family without labels; absent stays absent
      const got = f.read(this.current);
      const samples: [Labels, number | undefined][] = typeof got === 'object' ? got : [[{}, got]];
      for (const [labels, v] of samples) {
        if (v === undefined || (f.type === 'counter' && v < 0)) continue;
        m.inc(labels, v);
      }
    };
    const config = { name: f.name, help: f.help, labelNames, registers: [this.registry] };
    if (f.type === 'counter') new Counter({ ...config, collect() { fill(this); } });
    else new Gauge({ ...config, collect() { fill(this); } });
  }

  /** the text of one scrape, after those before it */
  scrape(source: () => DaemonStats): Promise<string> {
    const run = this.queue.then(async () => {
      let s: unknown;
      try {
        s = source();
      } catch (e) {
        throw new Error(`reading the daemon's stats failed: ${(e as Error)?.message ?? String(e)}`);
      }
      this.current = typeof s === 'object' && s !== null ? s : {};
      try {
        return await this.registry.metrics();
      } catch (e) {
        throw new Error(`collecting the metrics failed: ${(e as Error)?.message ?? String(e)}`);
      } finally {
        this.current = {};
      }
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  async answer(req: IncomingMessage, res: ServerResponse, source: () => DaemonStats): Promise<void> {
    req.resume();
    const plain = (status: number, text: string, headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', ...headers });
      res.end(`${text.replace(/[\r\n]+/g, ' ')}\n`);
    };
    let path: string;
    try {
      path = new URL(req.url ?? '/', 'http://metrics').pathname;
    } catch {
      return plain(400, 'bad request path');
    }
    if (path !== '/metrics') return plain(404, 'not found: kvfs serves its metrics at /metrics');
    if (req.method !== 'GET' && req.method !== 'HEAD') return plain(405, 'only GET /metrics', { Allow: 'GET, HEAD' });
    let text: string;
    try {
      text = await this.scrape(source);
    } catch (e) {
      return plain(500, `kvfs metrics: ${(e as Error).message}`);
    }
    res.writeHead(200, { 'Content-Type': this.registry.contentType });
    res.end(text);
  }
}

/** a sample as prom-client's Registry writes it: metricName for a family's suffixed series (_count) */
interface Sample { labels: Labels; value: number; metricName?: string }

/** kvfs_request_latency_seconds: the daemon's own p50 and p99 per opcode, and its count; no _sum (rule 1) */
class LatencySummary {
  readonly name = 'kvfs_request_latency_seconds';
  readonly help = 'time from a FUSE request reaching JavaScript to its answer, by opcode (quantiles of the daemon\'s own histograms)';
  readonly type = 'summary';

  constructor(private readonly stats: () => DaemonStats) {}

  async get(): Promise<{ name: string; help: string; type: string; values: Sample[] }> {
    const values: Sample[] = [];
    for (const [op, l] of entries(this.stats().session?.latency)) {
      const { p50, p99, count } = (l ?? {}) as { p50?: unknown; p99?: unknown; count?: unknown };
      const q50 = seconds(p50);
      const q99 = seconds(p99);
      const n = num(count);
      if (q50 !== undefined) values.push({ labels: { op, quantile: '0.5' }, value: q50 });
      if (q99 !== undefined) values.push({ labels: { op, quantile: '0.99' }, value: q99 });
      if (n !== undefined && n >= 0) values.push({ metricName: `${this.name}_count`, labels: { op }, value: n });
    }
    return { name: this.name, help: this.help, type: this.type, values };
  }

  reset(): void {}
}

/** the le label of each of LATENCY_BOUNDS_US, in seconds, as prom-client writes a histogram's bound */
const LATENCY_LE: readonly string[] = LATENCY_BOUNDS_US.map((us) => String(us / 1e6));

/** an opcode's histogram, if its stats have all of it (rule 1) */
function histogramOf(l: unknown): { buckets: number[]; sum: number; count: number } | undefined {
  const { buckets, sum, count } = (l ?? {}) as { buckets?: unknown; sum?: unknown; count?: unknown };
  const n = num(count);
  const total = num(sum);
  if (n === undefined || n < 0 || total === undefined || total < 0) return undefined;
  if (!Array.isArray(buckets) || buckets.length !== LATENCY_LE.length) return undefined;
  let last = 0;
  for (const b of buckets as unknown[]) {
    const v = num(b);
    if (v === undefined || v < last) return undefined;
    last = v;
  }
  if (last > n) return undefined;
  return { buckets: buckets as number[], sum: total, count: n };
}

/** kvfs_request_duration_seconds: the daemon's cumulative counts at whole octaves, its sum and count (rule 1) */
class LatencyHistogram {
  readonly name = 'kvfs_request_duration_seconds';
  readonly help = 'time from a FUSE request reaching JavaScript to its answer, by opcode';
  readonly type = 'histogram';

  constructor(private readonly stats: () => DaemonStats) {}

  async get(): Promise<{ name: string; help: string; type: string; values: Sample[] }> {
    const values: Sample[] = [];
    const bucket = `${this.name}_bucket`;
    for (const [op, l] of entries(this.stats().session?.latency)) {
      const h = histogramOf(l);
      if (!h) continue;
      h.buckets.forEach((v, i) => values.push({ metricName: bucket, labels: { op, le: LATENCY_LE[i]! }, value: v }));
      values.push({ metricName: bucket, labels: { op, le: '+Inf' }, value: h.count });
      values.push({ metricName: `${this.name}_sum`, labels: { op }, value: h.sum / 1e6 });
      values.push({ metricName: `${this.name}_count`, labels: { op }, value: h.count });
    }
    return { name: this.name, help: this.help, type: this.type, values };
  }

  reset(): void {}
}
