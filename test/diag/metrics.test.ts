/**
 * Prometheus metrics (src/diag/metrics.ts): a real server on a free loopback port, scraped with fetch and read
 * with a real text-format parser (parse-prometheus-text-format): every family of the contract with its type and
 * values from the stats, the latency histogram's buckets, sum and count (and none for an opcode without them, or
 * with a broken one), series that follow the stats from one scrape to the next (an opcode that goes away is
 * gone), stats with parts missing, 404/405/500 and serving on after a failed source, the listen address syntax,
 * and close() freeing the port.
 */
import t, { type Test } from 'tap';
import { createRequire } from 'node:module';
import { LATENCY_BOUNDS_US } from '../../src/diag/latency.js';
import { parseListenAddress, startMetrics, type DaemonStats, type MetricsServer } from '../../src/diag/metrics.js';

/** one metric family as parse-prometheus-text-format gives it (the package ships no typings) */
interface ParsedFamily {
  name: string;
  help: string;
  type: string;
  metrics: {
    value?: string; labels?: Record<string, string>; count?: string; sum?: string;
    quantiles?: Record<string, string>; buckets?: Record<string, string>;
  }[];
}
const parse = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => ParsedFamily[];

/** the families of a scrape, by name */
function families(text: string): Map<string, ParsedFamily> {
  return new Map(parse(text).map((f) => [f.name, f]));
}

interface Sample { name: string; labels: Record<string, string>; value: number }

/**
 * Every sample line of a scrape with its own name and labels. The parser folds a summary's quantiles, and a
 * histogram's buckets, into one map without their other labels (here: op), so the samples are read from the text
 * without its TYPE lines, where every family is untyped and each line stays as it is (a histogram's lines under
 * the names NAME_bucket, NAME_sum, NAME_count).
 */
function samples(text: string): Sample[] {
  const untyped = text.split('\n').filter((l) => !l.startsWith('# TYPE ')).join('\n');
  return parse(untyped).flatMap((f) => f.metrics.map((m) => ({ name: f.name, labels: m.labels ?? {}, value: Number(m.value) })));
}

const same = (a: Record<string, string>, b: Record<string, string>) =>
  Object.keys(a).length === Object.keys(b).length && Object.entries(a).every(([k, v]) => b[k] === v);
/** the value of the one sample of `name` with exactly `labels`, or undefined */
function value(ss: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = ss.filter((s) => s.name === name && same(s.labels, labels));
  if (found.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} appears ${found.length} times`);
  return found[0]?.value;
}
const ofFamily = (ss: Sample[], name: string) => ss.filter((s) => s.name === name);

/** the families of the contract and their types */
const CONTRACT: Record<string, 'COUNTER' | 'GAUGE' | 'SUMMARY' | 'HISTOGRAM'> = {
  kvfs_requests_total: 'COUNTER',
  kvfs_request_errors_total: 'COUNTER',
  kvfs_requests_in_flight: 'GAUGE',
  kvfs_fast_reads_total: 'COUNTER',
  kvfs_request_duration_seconds: 'HISTOGRAM',
  kvfs_request_latency_seconds: 'SUMMARY',
  kvfs_request_latency_seconds_max: 'GAUGE',
  kvfs_buffer_pool_capacity_bytes: 'GAUGE',
  kvfs_buffer_pool_in_use_bytes: 'GAUGE',
  kvfs_buffer_pool_high_water_bytes: 'GAUGE',
  kvfs_buffer_pool_waiters: 'GAUGE',
  kvfs_buffer_pool_waits_total: 'COUNTER',
  kvfs_buffer_pool_class_buffers: 'GAUGE',
  kvfs_buffer_pool_class_high_water: 'GAUGE',
  kvfs_blob_cache_bytes: 'GAUGE',
  kvfs_blob_cache_hits_total: 'COUNTER',
  kvfs_blob_cache_misses_total: 'COUNTER',
  kvfs_write_back_dirty_bytes: 'GAUGE',
  kvfs_bytes_written_total: 'COUNTER',
  kvfs_bytes_sent_total: 'COUNTER',
  kvfs_bytes_returned_total: 'COUNTER',
  kvfs_bytes_fetched_total: 'COUNTER',
  kvfs_open_files: 'GAUGE',
  kvfs_memory_bytes: 'GAUGE',
  kvfs_memory_rss_bytes: 'GAUGE',
  kvfs_store_calls_total: 'COUNTER',
  kvfs_store_errors_total: 'COUNTER',
  kvfs_store_retries_total: 'COUNTER',
  kvfs_store_blob_reads_total: 'COUNTER',
};

/** the le of the latency histogram's bounds, 2^0..2^25 us in seconds, as dashboards are written against them */
const LE = [
  '0.000001', '0.000002', '0.000004', '0.000008', '0.000016', '0.000032', '0.000064', '0.000128', '0.000256',
  '0.000512', '0.001024', '0.002048', '0.004096', '0.008192', '0.016384', '0.032768', '0.065536', '0.131072',
  '0.262144', '0.524288', '1.048576', '2.097152', '4.194304', '8.388608', '16.777216', '33.554432',
];
/** cumulative bucket counts for the 26 bounds: the ones given, then the last repeated */
const upTo = (...head: number[]) => [...head, ...Array<number>(LE.length - head.length).fill(head[head.length - 1]!)];

/**
 * what a busy daemon's `stats` looks like (latency in microseconds); GETATTR's latency is as an older daemon
 * gave it, without buckets and sum
 */
function stats(): DaemonStats {
  return {
    session: {
      requests: 48_213, inFlight: 3, errors: 17,
      byOp: { LOOKUP: 1204, GETATTR: 3310, READ: 20_481, WRITE: 22_907, FLUSH: 311 },
      latency: {
        LOOKUP: { p50: 45.3, p99: 380.5, max: 2210, count: 1204, sum: 81_522.6,
          buckets: upTo(0, 0, 0, 0, 12, 140, 610, 930, 1150, 1196, 1201, 1203, 1204) },
        GETATTR: { p50: 9.5, p99: 76.1, max: 905.2, count: 3310 },
        READ: { p50: 128, p99: 2048, max: 15_320.4, count: 20_481, sum: 3_310_287.5,
          buckets: upTo(0, 0, 0, 3, 41, 500, 2100, 9800, 14_000, 17_500, 19_900, 20_300, 20_470, 20_478, 20_481) },
        WRITE: { p50: 215.3, p99: 4871.7, max: 80_114, count: 22_905, sum: 6_122_904.1,
          buckets: upTo(0, 0, 0, 0, 0, 0, 310, 4900, 12_800, 19_700, 22_400, 22_790, 22_880, 22_897, 22_903, 22_904,
            22_904, 22_905) },
      },
    },
    channel: { fastReads: 91_377, fileReads: 4_021, requests: 143_611 },
    pool: {
      capacityBytes: 69_206_016, inUseBytes: 2_228_224, highWaterBytes: 35_651_584, waiters: 1, totalWaits: 42,
      classes: [
        { size: 4096, count: 512, inUse: 12, free: 500, highWater: 130 },
        { size: 1_052_672, count: 64, inUse: 2, free: 62, highWater: 33 },
      ],
    },
    fs: {
      blobCacheBytes: 50_331_648, blobCacheHits: 9_120, blobCacheMisses: 311, writeBackBytes: 1_048_576,
      bytesWritten: 2_998_927_360, bytesSent: 3_001_024_512, bytesReturned: 1_342_177_280, bytesFetched: 402_653_184,
      openFiles: 7,
    },
    memory: {
      rss: 231_735_296,
      parts: [
        { name: 'buffer pool', bytes: 69_206_016 }, { name: 'blob cache', bytes: 50_331_648 },
        { name: 'V8 heap', bytes: 41_943_040 }, { name: 'other', bytes: 70_254_592 },
      ],
    },
    store: { calls: { get: 30_112, commit: 4_420, put: 2_970 }, errors: { UNAVAILABLE: 2 }, retries: { transient: 5, throttled: 1 }, blobReads: { served: 9_001, handedBack: 3 } },
  };
}

async function get(url: string, init?: RequestInit): Promise<{ status: number; type: string; text: string }> {
  const r = await fetch(url, init);
  return { status: r.status, type: r.headers.get('content-type') ?? '', text: await r.text() };
}

async function serve(t: Test, source: () => DaemonStats): Promise<MetricsServer> {
  const m = await startMetrics({ host: '127.0.0.1', port: 0 }, source);
  t.teardown(() => m.close());
  return m;
}

t.test('every family of the contract, with its type and the values of the stats', async (t) => {
  const s = stats();
  const m = await serve(t, () => s);
  t.match(m.url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
  t.equal(m.url, `http://127.0.0.1:${m.port}/metrics`);
  const r = await get(m.url);
  t.equal(r.status, 200);
  t.match(r.type, /^text\/plain; version=0\.0\.4/, "prom-client's registry content type");

  const fams = families(r.text);
  for (const [name, type] of Object.entries(CONTRACT)) {
    t.equal(fams.get(name)?.type, type, `${name} is a ${type.toLowerCase()}`);
    t.ok(fams.get(name)!.help.length > 0, `${name} has help`);
  }
  t.same([...fams.keys()].filter((n) => n.startsWith('kvfs_')).sort(), Object.keys(CONTRACT).sort(),
    'no kvfs_ family beyond the contract');
  t.equal(fams.get('process_resident_memory_bytes')?.type, 'GAUGE', 'default process metrics, standard names');
  t.ok(fams.get('process_cpu_seconds_total'), 'process_cpu_seconds_total');
  t.ok(fams.get('nodejs_eventloop_lag_seconds'), 'nodejs_eventloop_lag_seconds');

  const ss = samples(r.text);
  for (const [name, type] of Object.entries(CONTRACT)) {
    t.ok(ofFamily(ss, type === 'HISTOGRAM' ? `${name}_bucket` : name).length > 0, `${name} has samples`);
  }
  t.ok(value(ss, 'process_resident_memory_bytes')! > 0, 'process_resident_memory_bytes has a value');

  const session = s.session!;
  t.equal(value(ss, 'kvfs_requests_total', { op: 'WRITE' }), session.byOp.WRITE, 'WRITE exactly');
  t.same(ofFamily(ss, 'kvfs_requests_total').map((x) => [x.labels.op, x.value]).sort(), Object.entries(session.byOp).sort(),
    'one series per opcode of byOp');
  t.equal(value(ss, 'kvfs_request_errors_total'), 17);
  t.equal(value(ss, 'kvfs_requests_in_flight'), 3);
  // (fastReads counts the READs answered from blob files too: fileReads is a part of it, not added to it)
  t.equal(value(ss, 'kvfs_fast_reads_total'), 91_377, 'fast reads = fastReads');

  for (const [op, l] of Object.entries(session.latency!)) {
    t.equal(value(ss, 'kvfs_request_latency_seconds', { op, quantile: '0.5' }), l.p50 / 1e6, `${op} p50 in seconds`);
    t.equal(value(ss, 'kvfs_request_latency_seconds', { op, quantile: '0.99' }), l.p99 / 1e6, `${op} p99 in seconds`);
    t.equal(value(ss, 'kvfs_request_latency_seconds_count', { op }), l.count, `${op} count`);
    t.equal(value(ss, 'kvfs_request_latency_seconds_max', { op }), l.max / 1e6, `${op} max in seconds`);
  }
  t.equal(ofFamily(ss, 'kvfs_request_latency_seconds').length, 2 * 4, 'two quantiles for each of the four opcodes');
  t.equal(ofFamily(ss, 'kvfs_request_latency_seconds_sum').length, 0, 'no _sum in the summary: the histogram has it');
  const summary = fams.get('kvfs_request_latency_seconds')!;
  t.same(Object.keys(summary.metrics[0]?.quantiles ?? {}).sort(), ['0.5', '0.99'], 'the parser reads the quantiles');

  t.same(LE, LATENCY_BOUNDS_US.map((us) => String(us / 1e6)), 'le: the bounds in seconds, as String() writes them');
  const read = session.latency!.READ!;
  t.same(LE.map((le) => value(ss, 'kvfs_request_duration_seconds_bucket', { op: 'READ', le })), read.buckets,
    'READ: a bucket for each bound, with the counts of the stats');
  t.equal(value(ss, 'kvfs_request_duration_seconds_bucket', { op: 'READ', le: '0.000008' }), 3, 'READ le 8 us exactly');
  t.equal(value(ss, 'kvfs_request_duration_seconds_bucket', { op: 'READ', le: '0.016384' }), 20_481, 'READ le 16.384 ms');
  t.equal(value(ss, 'kvfs_request_duration_seconds_bucket', { op: 'READ', le: '+Inf' }), 20_481, 'READ +Inf = count');
  t.equal(value(ss, 'kvfs_request_duration_seconds_sum', { op: 'READ' }), 3.3102875, 'READ _sum in seconds');
  t.equal(value(ss, 'kvfs_request_duration_seconds_count', { op: 'READ' }), 20_481, 'READ _count');
  for (const op of ['LOOKUP', 'READ', 'WRITE']) {
    const l = session.latency![op]!;
    const got = ofFamily(ss, 'kvfs_request_duration_seconds_bucket').filter((x) => x.labels.op === op);
    t.same(got.map((x) => x.labels.le), [...LE, '+Inf'], `${op}: the bounds in order, then +Inf`);
    t.same(got.map((x) => x.value), [...l.buckets!, l.count], `${op}: the buckets, then +Inf = count`);
    t.equal(value(ss, 'kvfs_request_duration_seconds_sum', { op }), l.sum! / 1e6, `${op} _sum`);
    t.equal(value(ss, 'kvfs_request_duration_seconds_count', { op }), l.count, `${op} _count`);
  }
  t.notOk(ss.some((x) => x.name.startsWith('kvfs_request_duration_seconds') && x.labels.op === 'GETATTR'),
    'GETATTR, without buckets and sum: no histogram sample');
  t.ok(value(ss, 'kvfs_request_latency_seconds', { op: 'GETATTR', quantile: '0.5' }), 'but its summary is there');
  t.equal(ofFamily(ss, 'kvfs_request_duration_seconds_bucket').length, 3 * 27, '27 buckets for each of three opcodes');
  t.same(ofFamily(ss, 'kvfs_request_duration_seconds_count').map((x) => x.labels.op), ['LOOKUP', 'READ', 'WRITE']);
  // the parser, typed, folds every opcode's buckets into one map by le (the last opcode's counts win) and drops
  // the _sum and _count, which carry op: what it reads is the le strings, in order
  const histogram = fams.get('kvfs_request_duration_seconds')!;
  t.equal(histogram.metrics.length, 1, 'the parser: one metric for the family');
  t.same(Object.keys(histogram.metrics[0]?.buckets ?? {}), [...LE, '+Inf'], 'the parser reads the buckets by le');
  t.same(Object.values(histogram.metrics[0]?.buckets ?? {}).map(Number), [...session.latency!.WRITE!.buckets!, 22_905],
    "and WRITE's counts, the last opcode's");
  t.same([histogram.metrics[0]?.count, histogram.metrics[0]?.sum], [undefined, undefined], 'and no count or sum');

  const pool = s.pool!;
  t.equal(value(ss, 'kvfs_buffer_pool_capacity_bytes'), pool.capacityBytes);
  t.equal(value(ss, 'kvfs_buffer_pool_in_use_bytes'), pool.inUseBytes);
  t.equal(value(ss, 'kvfs_buffer_pool_high_water_bytes'), pool.highWaterBytes);
  t.equal(value(ss, 'kvfs_buffer_pool_waiters'), 1);
  t.equal(value(ss, 'kvfs_buffer_pool_waits_total'), 42);
  for (const c of pool.classes) {
    const size = String(c.size);
    t.equal(value(ss, 'kvfs_buffer_pool_class_buffers', { size, state: 'in_use' }), c.inUse, `class ${size} in use`);
    t.equal(value(ss, 'kvfs_buffer_pool_class_buffers', { size, state: 'free' }), c.free, `class ${size} free`);
    t.equal(value(ss, 'kvfs_buffer_pool_class_high_water', { size }), c.highWater, `class ${size} high water`);
  }
  t.equal(ofFamily(ss, 'kvfs_buffer_pool_class_buffers').length, 4, 'two states of two classes');

  const fs = s.fs!;
  t.equal(value(ss, 'kvfs_blob_cache_bytes'), fs.blobCacheBytes);
  t.equal(value(ss, 'kvfs_blob_cache_hits_total'), fs.blobCacheHits);
  t.equal(value(ss, 'kvfs_blob_cache_misses_total'), fs.blobCacheMisses);
  t.equal(value(ss, 'kvfs_write_back_dirty_bytes'), fs.writeBackBytes);
  t.equal(value(ss, 'kvfs_bytes_written_total'), fs.bytesWritten);
  t.equal(value(ss, 'kvfs_bytes_sent_total'), fs.bytesSent);
  t.equal(value(ss, 'kvfs_bytes_returned_total'), fs.bytesReturned);
  t.equal(value(ss, 'kvfs_bytes_fetched_total'), fs.bytesFetched);
  t.equal(value(ss, 'kvfs_open_files'), 7);

  const mem = s.memory!;
  t.equal(value(ss, 'kvfs_memory_rss_bytes'), mem.rss);
  t.same(ofFamily(ss, 'kvfs_memory_bytes').map((x) => [x.labels.part, x.value]).sort(),
    mem.parts.map((p) => [p.name, p.bytes]).sort(), 'one series per memory part');
  const st = stats().store!;
  for (const [family, label, from] of [['kvfs_store_calls_total', 'method', st.calls], ['kvfs_store_errors_total', 'code', st.errors],
    ['kvfs_store_retries_total', 'kind', st.retries]] as const) {
    t.same(ofFamily(ss, family).map((x) => [x.labels[label], x.value]).sort(), Object.entries(from!).sort(), `${family}: one series per ${label}, exact`);
  }
  t.same(ofFamily(ss, 'kvfs_store_blob_reads_total').map((x) => [x.labels.path, x.value]).sort(), [['direct', 9_001], ['ioredis', 3]],
    'Redis blob reads by the path that answered');
});

t.test('each scrape follows the stats: counters go up, a vanished opcode is gone', async (t) => {
  let s = stats();
  let reads = 0;
  const m = await serve(t, () => { reads++; return s; });
  const first = samples((await get(m.url)).text);
  t.equal(reads, 1, 'source() is read once per scrape');
  t.equal(value(first, 'kvfs_requests_total', { op: 'GETATTR' }), 3310);

  s = stats();
  s.session!.byOp.WRITE = 30_000;
  delete s.session!.byOp.GETATTR;
  delete s.session!.latency!.GETATTR;
  s.pool!.classes.pop();
  s.memory!.parts = s.memory!.parts.filter((p) => p.name !== 'blob cache');
  s.fs!.bytesWritten = 4_000_000_000;
  s.session!.inFlight = 0;
  delete s.session!.latency!.WRITE!.buckets;
  const second = samples((await get(m.url)).text);
  t.equal(reads, 2);
  t.equal(value(second, 'kvfs_requests_total', { op: 'WRITE' }), 30_000, 'the counter went up');
  t.equal(value(second, 'kvfs_bytes_written_total'), 4_000_000_000);
  t.equal(value(second, 'kvfs_requests_in_flight'), 0, 'a gauge at 0 is still there');
  t.equal(value(second, 'kvfs_requests_total', { op: 'GETATTR' }), undefined, 'GETATTR is gone from requests');
  t.notOk(second.some((x) => x.labels.op === 'GETATTR'), 'and from every family');
  t.equal(ofFamily(second, 'kvfs_requests_total').length, 4, 'the other four opcodes stay');
  t.equal(ofFamily(second, 'kvfs_request_latency_seconds').length, 2 * 3);
  t.same(ofFamily(second, 'kvfs_request_duration_seconds_count').map((x) => x.labels.op), ['LOOKUP', 'READ'],
    'WRITE without buckets is gone from the histogram');
  t.equal(ofFamily(second, 'kvfs_request_duration_seconds_bucket').length, 2 * 27);
  t.equal(value(second, 'kvfs_request_latency_seconds', { op: 'WRITE', quantile: '0.99' }), 4871.7 / 1e6, 'its summary stays');
  t.equal(ofFamily(second, 'kvfs_buffer_pool_class_buffers').length, 2, 'the vanished pool class is gone');
  t.equal(value(second, 'kvfs_buffer_pool_class_high_water', { size: '1052672' }), undefined);
  t.equal(value(second, 'kvfs_memory_bytes', { part: 'blob cache' }), undefined, 'the vanished memory part is gone');
  t.equal(ofFamily(second, 'kvfs_memory_bytes').length, 3);
});

t.test('a part missing from the stats is missing from the scrape, not 0', async (t) => {
  let s: DaemonStats = {};
  const m = await serve(t, () => s);
  let r = await get(m.url);
  t.equal(r.status, 200);
  const fams = families(r.text);
  for (const [name, type] of Object.entries(CONTRACT)) t.equal(fams.get(name)?.type, type, `${name} still declared`);
  t.same(samples(r.text).filter((x) => x.name.startsWith('kvfs_')), [], 'no kvfs_ sample at all');
  t.ok(value(samples(r.text), 'process_resident_memory_bytes')! > 0, 'the process metrics are still there');

  s = { session: { requests: 5, inFlight: 0, errors: 0, byOp: { LOOKUP: 5 } }, channel: { fastReads: 9 },
    fs: { openFiles: 2 } };
  r = await get(m.url);
  const ss = samples(r.text).filter((x) => x.name.startsWith('kvfs_'));
  t.same(ss.map((x) => x.name).sort(), [
    'kvfs_fast_reads_total', 'kvfs_open_files', 'kvfs_request_errors_total', 'kvfs_requests_in_flight', 'kvfs_requests_total',
  ], 'only what the stats have');
  t.equal(value(ss, 'kvfs_fast_reads_total'), 9, 'fastReads alone');

  s = {
    session: { requests: 1, inFlight: 1, errors: -1, byOp: { READ: Number.NaN, WRITE: 1 } },
    memory: { rss: 10, parts: [{ name: 'native', bytes: 3 }, { name: 'native', bytes: 4 }] },
  } as DaemonStats;
  const odd = samples((await get(m.url)).text);
  t.equal(value(odd, 'kvfs_request_errors_total'), undefined, 'a negative counter is left out');
  t.equal(value(odd, 'kvfs_requests_total', { op: 'READ' }), undefined, 'NaN is left out');
  t.equal(value(odd, 'kvfs_requests_total', { op: 'WRITE' }), 1);
  t.equal(value(odd, 'kvfs_memory_bytes', { part: 'native' }), 7, 'two parts of one name are added up');
});

t.test('the latency histogram: an opcode with all of it or none, +Inf beyond the last bound', async (t) => {
  const whole = { p50: 1, p99: 2, max: 40e6, count: 5, sum: 40_000_010.5, buckets: upTo(1, 2, 3, 4) };
  const latency: Record<string, Record<string, unknown>> = {
    SLOW: whole,
    SHORT: { ...whole, buckets: whole.buckets.slice(1) },
    DOWN: { ...whole, buckets: upTo(1, 2, 1, 4) },
    OVER: { ...whole, count: 3 },
    NAN: { ...whole, buckets: upTo(1, 2, Number.NaN, 4) },
    NOSUM: { ...whole, sum: undefined },
    NEGSUM: { ...whole, sum: -1 },
    STRINGS: { ...whole, buckets: whole.buckets.map(String) },
    NOTARRAY: { ...whole, buckets: { 0: 1 } },
    NOCOUNT: { ...whole, count: undefined },
    NULL: null as unknown as Record<string, unknown>,
  };
  const m = await serve(t, () => ({ session: { requests: 5, inFlight: 0, errors: 0, byOp: {}, latency } }) as DaemonStats);
  const r = await get(m.url);
  t.equal(r.status, 200);
  const ss = samples(r.text);
  const ops = (name: string) => [...new Set(ofFamily(ss, name).map((x) => x.labels.op))];
  t.same(ops('kvfs_request_duration_seconds_bucket'), ['SLOW'], 'only the whole histogram');
  t.same(ops('kvfs_request_duration_seconds_sum'), ['SLOW']);
  t.same(ops('kvfs_request_duration_seconds_count'), ['SLOW']);
  t.equal(value(ss, 'kvfs_request_duration_seconds_bucket', { op: 'SLOW', le: '33.554432' }), 4, 'within 2^25 us: 4');
  t.equal(value(ss, 'kvfs_request_duration_seconds_bucket', { op: 'SLOW', le: '+Inf' }), 5, '+Inf: the count, one more');
  t.equal(value(ss, 'kvfs_request_duration_seconds_sum', { op: 'SLOW' }), 40.0000105);
  t.equal(value(ss, 'kvfs_request_duration_seconds_count', { op: 'SLOW' }), 5);
  t.equal(value(ss, 'kvfs_request_latency_seconds_count', { op: 'SHORT' }), 5, 'the summary does not need the histogram');
});

t.test('404 elsewhere, 405 for other methods, 500 when the stats fail, and serving on', async (t) => {
  let fail: unknown;
  const m = await serve(t, () => {
    if (fail) throw fail;
    return stats();
  });
  const base = `http://127.0.0.1:${m.port}`;
  for (const path of ['/', '/metric', '/metrics/x', '/favicon.ico']) {
    const r = await get(base + path);
    t.equal(r.status, 404, `${path}: 404`);
    t.match(r.text, /\/metrics/, 'the answer names /metrics');
  }
  t.equal((await get(`${base}/metrics?name[]=kvfs_open_files`)).status, 200, 'a query string is ignored');
  const post = await get(m.url, { method: 'POST', body: 'x' });
  t.equal(post.status, 405);
  t.equal((await fetch(m.url, { method: 'HEAD' })).status, 200, 'HEAD');

  fail = new Error('the session is gone\nsecond line');
  let r = await get(m.url);
  t.equal(r.status, 500);
  t.equal(r.text, "kvfs metrics: reading the daemon's stats failed: the session is gone second line\n", 'one line');
  fail = 'a string thrown';
  r = await get(m.url);
  t.equal(r.status, 500);
  t.match(r.text, /a string thrown/);
  fail = undefined;
  r = await get(m.url);
  t.equal(r.status, 200, 'the server serves on');
  t.equal(value(samples(r.text), 'kvfs_requests_total', { op: 'WRITE' }), 22_907);
});

t.test('concurrent scrapes each read the stats once', async (t) => {
  let n = 0;
  const m = await serve(t, () => {
    n++;
    const s = stats();
    s.session!.byOp.WRITE = n;
    return s;
  });
  const texts = await Promise.all(Array.from({ length: 8 }, () => get(m.url)));
  t.equal(n, 8);
  const seen = texts.map((r) => value(samples(r.text), 'kvfs_requests_total', { op: 'WRITE' })).sort((a, b) => a! - b!);
  t.same(seen, [1, 2, 3, 4, 5, 6, 7, 8], 'each scrape has its own reading');
});

t.test('parseListenAddress', async (t) => {
  t.same(parseListenAddress('127.0.0.1:9464'), { host: '127.0.0.1', port: 9464 });
  t.same(parseListenAddress(':9464'), { host: '127.0.0.1', port: 9464 }, ':PORT is loopback');
  t.same(parseListenAddress('[::1]:9464'), { host: '::1', port: 9464 });
  t.same(parseListenAddress('[::]:1'), { host: '::', port: 1 });
  t.same(parseListenAddress('0.0.0.0:65535'), { host: '0.0.0.0', port: 65535 }, 'all interfaces when asked');
  t.same(parseListenAddress('localhost:0'), { host: 'localhost', port: 0 }, 'port 0: any free port');
  t.same(parseListenAddress('metrics-1.example.internal:9464'), { host: 'metrics-1.example.internal', port: 9464 });

  const bad: [string, RegExp][] = [
    ['x', /^bad --metrics 'x': give HOST:PORT, for example 127\.0\.0\.1:9464$/],
    ['', /^bad --metrics '': give HOST:PORT/],
    ['9464', /give HOST:PORT/],
    ['127.0.0.1', /give HOST:PORT/],
    ['127.0.0.1:', /no port/],
    [':', /no port/],
    ['127.0.0.1:65536', /port '65536' is not a number in 1\.\.65535/],
    ['127.0.0.1:-1', /port '-1'/],
    ['127.0.0.1:94a', /port '94a'/],
    ['127.0.0.1: 9464', /port ' 9464'/],
    ['127.0.0.1:123456', /port '123456'/],
    ['::1:9464', /IPv6 address in brackets, for example \[::1\]:9464/],
    ['[::1]', /give \[IPV6\]:PORT/],
    ['[::1]9464', /give \[IPV6\]:PORT/],
    ['[127.0.0.1]:9464', /'127\.0\.0\.1' in brackets is not an IPv6 address/],
    ['[::1:9464', /IPv6 address in brackets/],
    ['[::1]]:9464', /give \[IPV6\]:PORT/],
    ['[x]:9464', /'x' in brackets is not an IPv6 address/],
    ['host name:9464', /'host name' is neither an IP address nor a host name/],
    ['http://127.0.0.1:9464', /IPv6 address in brackets|neither/],
    ['a\nb:1', /^bad --metrics 'a\?b:1'/],
  ];
  for (const [input, want] of bad) {
    let message = '';
    try {
      parseListenAddress(input);
    } catch (e) {
      message = (e as Error).message;
    }
    t.match(message, want, JSON.stringify(input));
    t.notMatch(message, /\n/, 'one line');
  }
});

t.test('close() frees the port; a taken port is a clear error', async (t) => {
  const a = await startMetrics({ host: '127.0.0.1', port: 0 }, stats);
  const port = a.port;
  t.equal((await get(a.url)).status, 200);
  await t.rejects(startMetrics({ host: '127.0.0.1', port }, stats), { message: `cannot serve metrics on 127.0.0.1:${port}: EADDRINUSE` });
  // a connection kept alive by the client must not hold the port
  const keep = await fetch(a.url, { headers: { connection: 'keep-alive' } });
  await keep.text();
  await a.close();
  await t.rejects(fetch(a.url), 'nothing listens after close');
  const b = await startMetrics({ host: '127.0.0.1', port }, stats);
  t.equal(b.port, port, 'a second server listens on the same port');
  t.equal((await get(b.url)).status, 200);
  await b.close();
  await b.close();
  t.pass('a second close() is harmless');
});

t.test('an IPv6 loopback address', async (t) => {
  let m: MetricsServer;
  try {
    m = await startMetrics({ host: '::1', port: 0 }, stats);
  } catch (e) {
    return t.plan(0, `no IPv6 loopback here: ${(e as Error).message}`);
  }
  t.teardown(() => m.close());
  t.equal(m.url, `http://[::1]:${m.port}/metrics`);
  t.equal((await get(m.url)).status, 200);
});
