/**
 * Prometheus metrics (src/diag/metrics.ts): a real server on a free loopback port, scraped with fetch and read
 * with a real text-format parser (parse-prometheus-text-format): every family of the contract with its type and
 * values from the stats, series that follow the stats from one scrape to the next (an opcode that goes away is
 * gone), stats with parts missing, 404/405/500 and serving on after a failed source, the listen address syntax,
 * and close() freeing the port.
 */
import t, { type Test } from 'tap';
import { createRequire } from 'node:module';
import { parseListenAddress, startMetrics, type DaemonStats, type MetricsServer } from '../../src/diag/metrics.js';

/** one metric family as parse-prometheus-text-format gives it (the package ships no typings) */
interface ParsedFamily {
  name: string;
  help: string;
  type: string;
  metrics: { value?: string; labels?: Record<string, string>; quantiles?: Record<string, string>; count?: string; sum?: string }[];
}
const parse = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => ParsedFamily[];

/** the families of a scrape, by name */
function families(text: string): Map<string, ParsedFamily> {
  return new Map(parse(text).map((f) => [f.name, f]));
}

interface Sample { name: string; labels: Record<string, string>; value: number }

/**
 * Every sample line of a scrape with its own name and labels. The parser folds a summary's quantiles into one
 * map without their other labels (here: op), so the samples are read from the text without its TYPE lines,
 * where every family is untyped and each line stays as it is.
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
const CONTRACT: Record<string, 'COUNTER' | 'GAUGE' | 'SUMMARY'> = {
  kvfs_requests_total: 'COUNTER',
  kvfs_request_errors_total: 'COUNTER',
  kvfs_requests_in_flight: 'GAUGE',
  kvfs_fast_reads_total: 'COUNTER',
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
};

/** what a busy daemon's `stats` looks like (latency in microseconds) */
function stats(): DaemonStats {
  return {
    session: {
      requests: 48_213, inFlight: 3, errors: 17,
      byOp: { LOOKUP: 1204, GETATTR: 3310, READ: 20_481, WRITE: 22_907, FLUSH: 311 },
      latency: {
        LOOKUP: { p50: 45.3, p99: 380.5, max: 2210, count: 1204 },
        GETATTR: { p50: 9.5, p99: 76.1, max: 905.2, count: 3310 },
        READ: { p50: 128, p99: 2048, max: 15_320.4, count: 20_481 },
        WRITE: { p50: 215.3, p99: 4871.7, max: 80_114, count: 22_905 },
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
  for (const name of Object.keys(CONTRACT)) t.ok(ofFamily(ss, name).length > 0, `${name} has samples`);
  t.ok(value(ss, 'process_resident_memory_bytes')! > 0, 'process_resident_memory_bytes has a value');

  const session = s.session!;
  t.equal(value(ss, 'kvfs_requests_total', { op: 'WRITE' }), session.byOp.WRITE, 'WRITE exactly');
  t.same(ofFamily(ss, 'kvfs_requests_total').map((x) => [x.labels.op, x.value]).sort(), Object.entries(session.byOp).sort(),
    'one series per opcode of byOp');
  t.equal(value(ss, 'kvfs_request_errors_total'), 17);
  t.equal(value(ss, 'kvfs_requests_in_flight'), 3);
  t.equal(value(ss, 'kvfs_fast_reads_total'), 91_377 + 4_021, 'fast reads = fastReads + fileReads');

  for (const [op, l] of Object.entries(session.latency!)) {
    t.equal(value(ss, 'kvfs_request_latency_seconds', { op, quantile: '0.5' }), l.p50 / 1e6, `${op} p50 in seconds`);
    t.equal(value(ss, 'kvfs_request_latency_seconds', { op, quantile: '0.99' }), l.p99 / 1e6, `${op} p99 in seconds`);
    t.equal(value(ss, 'kvfs_request_latency_seconds_count', { op }), l.count, `${op} count`);
    t.equal(value(ss, 'kvfs_request_latency_seconds_max', { op }), l.max / 1e6, `${op} max in seconds`);
  }
  t.equal(ofFamily(ss, 'kvfs_request_latency_seconds').length, 2 * 4, 'two quantiles for each of the four opcodes');
  t.equal(ofFamily(ss, 'kvfs_request_latency_seconds_sum').length, 0, 'no _sum: the daemon keeps none');
  const summary = fams.get('kvfs_request_latency_seconds')!;
  t.same(Object.keys(summary.metrics[0]?.quantiles ?? {}).sort(), ['0.5', '0.99'], 'the parser reads the quantiles');

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
  const second = samples((await get(m.url)).text);
  t.equal(reads, 2);
  t.equal(value(second, 'kvfs_requests_total', { op: 'WRITE' }), 30_000, 'the counter went up');
  t.equal(value(second, 'kvfs_bytes_written_total'), 4_000_000_000);
  t.equal(value(second, 'kvfs_requests_in_flight'), 0, 'a gauge at 0 is still there');
  t.equal(value(second, 'kvfs_requests_total', { op: 'GETATTR' }), undefined, 'GETATTR is gone from requests');
  t.notOk(second.some((x) => x.labels.op === 'GETATTR'), 'and from every family');
  t.equal(ofFamily(second, 'kvfs_requests_total').length, 4, 'the other four opcodes stay');
  t.equal(ofFamily(second, 'kvfs_request_latency_seconds').length, 2 * 3);
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

  s = { session: { requests: 5, inFlight: 0, errors: 0, byOp: { LOOKUP: 5 } }, channel: { fileReads: 9 },
    fs: { openFiles: 2 } };
  r = await get(m.url);
  const ss = samples(r.text).filter((x) => x.name.startsWith('kvfs_'));
  t.same(ss.map((x) => x.name).sort(), [
    'kvfs_fast_reads_total', 'kvfs_open_files', 'kvfs_request_errors_total', 'kvfs_requests_in_flight', 'kvfs_requests_total',
  ], 'only what the stats have');
  t.equal(value(ss, 'kvfs_fast_reads_total'), 9, 'fileReads alone');

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
