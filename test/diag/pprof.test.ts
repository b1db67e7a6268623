/**
 * V8 profiles to pprof (src/diag/pprof.ts): a real sampling heap profile and a real CPU profile taken in this
 * process through node:inspector, converted, decoded back and checked for what `go tool pprof` relies on (sample
 * types, leaf-first stacks, no "(root)"), plus the off-heap parts; small hand-made trees for the exact figures;
 * bad input.
 */
import t from 'tap';
import inspector, { type Profiler } from 'node:inspector';
import { gzipSync } from 'node:zlib';
import type { Profile } from 'pprof-format';
import {
  PprofError, cpuProfileToPprof, decodePprof, functionNames, heapProfileToPprof, type V8HeapNode, type V8HeapProfile,
} from '../../src/diag/pprof.js';

const MIB = 1 << 20;
const ROOT = { functionName: '(root)', scriptId: '0', url: '', lineNumber: -1, columnNumber: -1 };

/** session.post as a promise */
function post<T = unknown>(s: inspector.Session, method: string, params?: object): Promise<T> {
  return new Promise((resolve, reject) => s.post(method, params, (err, r) => (err ? reject(err) : resolve(r as T))));
}

interface Flat {
  /** function names, leaf first */
  names: string[];
  files: string[];
  values: number[];
  labels: Record<string, string>;
}

/** every sample with its stack resolved through the locations, functions and string table */
function flatten(p: Profile): Flat[] {
  const str = (i: unknown) => p.stringTable.strings[Number(i)]!;
  const fns = new Map(p.function.map((f) => [Number(f.id), f]));
  const locs = new Map(p.location.map((l) => [Number(l.id), l]));
  return p.sample.map((s) => {
    const frames = s.locationId.map((id) => fns.get(Number(locs.get(Number(id))!.line[0]!.functionId))!);
    return {
      names: frames.map((f) => str(f.name)),
      files: frames.map((f) => str(f.filename)),
      values: s.value.map(Number),
      labels: Object.fromEntries(s.label.map((l) => [str(l.key), str(l.str)])),
    };
  });
}

const types = (p: Profile) => p.sampleType.map((v) => `${p.stringTable.strings[Number(v.type)]}/${p.stringTable.strings[Number(v.unit)]}`);
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

let kept: unknown[] = [];

/** keeps ~20 MB: 200 arrays of 12,500 small integers (100 KB each), and an object per array */
function allocateManyArraysForTheTest(): void {
  for (let i = 0; i < 200; i++) {
    kept.push(new Array<number>(12_500).fill(i));
    kept.push({ i, name: `array ${i}` });
  }
}

/** the caller, to see the leaf-first order (no loop, so it is not optimized and allocateMany... not inlined) */
function runHeapWorkloadForTheTest(): void {
  allocateManyArraysForTheTest();
}

function busyLoopForTheCpuTest(ms: number): number {
  const end = performance.now() + ms;
  let x = 0;
  while (performance.now() < end) x += Math.sqrt(x + 1);
  return x;
}

t.test('a real sampling heap profile, with off-heap parts', async (t) => {
  const s = new inspector.Session();
  s.connect();
  t.teardown(() => s.disconnect());
  await post(s, 'HeapProfiler.startSampling', { samplingInterval: 1024 });
  runHeapWorkloadForTheTest();
  const { profile } = await post<{ profile: V8HeapProfile }>(s, 'HeapProfiler.getSamplingProfile');
  await post(s, 'HeapProfiler.stopSampling');
  t.equal(kept.length, 400, 'the workload kept its arrays until the profile was taken');
  kept = [];

  const gz = heapProfileToPprof(profile, {
    intervalBytes: 1024,
    offHeap: [{ name: 'buffer pool arena', bytes: 64 * MIB, count: 100 }, { name: 'read index', bytes: 0 }],
  });
  t.same([gz[0], gz[1]], [0x1f, 0x8b], 'gzipped');
  const p = decodePprof(gz);
  const str = (i: unknown) => p.stringTable.strings[Number(i)];
  t.same(types(p), ['objects/count', 'space/bytes'], 'sample types');
  t.equal(str(p.defaultSampleType), 'space', 'default sample type: space');
  t.equal(`${str(p.periodType?.type)}/${str(p.periodType?.unit)}`, 'space/bytes', 'period type');
  t.equal(Number(p.period), 1024, 'period: the sampling interval');
  t.ok(Math.abs(Number(p.timeNanos) / 1e6 - Date.now()) < 60_000, 'time: now');
  t.ok(p.comment.map(str).some((c) => c?.includes('[off-heap]') && c.includes('not sampled')), 'a comment says off-heap is counted, not sampled');

  const flat = flatten(p);
  t.ok(flat.length > 2, `samples: ${flat.length}`);
  const names = functionNames(p);
  t.ok(names.includes('allocateManyArraysForTheTest'), 'the allocating function is among the functions');
  t.notOk(names.includes('(root)'), 'no "(root)" function');
  t.notOk(flat.some((f) => f.names.includes('(root)') || f.names.length === 0), 'no "(root)" frame, no empty stack');
  t.equal(new Set(names.map((n, i) => `${n}|${str(p.function[i]!.filename)}|${p.function[i]!.startLine}`)).size, names.length, 'functions deduplicated');

  const mine = flat.filter((f) => f.names.includes('allocateManyArraysForTheTest'));
  const space = sum(mine.map((f) => f.values[1]!));
  t.ok(space >= 5 * MIB, `live bytes under allocateManyArraysForTheTest: ${(space / MIB).toFixed(1)} MiB (kept ~20 MB)`);
  t.ok(sum(mine.map((f) => f.values[0]!)) > 0, `objects counted there: ${sum(mine.map((f) => f.values[0]!))}`);
  const withCaller = mine.filter((f) => f.names.includes('runHeapWorkloadForTheTest'));
  t.ok(withCaller.length > 0, 'its stacks include its caller');
  for (const f of withCaller) {
    if (f.names.indexOf('allocateManyArraysForTheTest') > f.names.indexOf('runHeapWorkloadForTheTest')) {
      t.fail('leaf first: the function comes before its caller', { stack: f.names.join(' <- ') });
    }
  }
  t.ok(mine.some((f) => f.names[0] === 'allocateManyArraysForTheTest'), 'some samples have it as the leaf');
  const file = mine[0]!.files[mine[0]!.names.indexOf('allocateManyArraysForTheTest')]!;
  t.match(file, /^\/.*pprof\.test\.ts$/, 'filename: the path, without file://');
  const fn = p.function.find((f) => str(f.name) === 'allocateManyArraysForTheTest')!;
  // V8's own (0-based) line of the function in this profile: the loader may have moved the code (tsx puts each
  // file on one line), so the pprof line is checked against it, exactly
  const frames: V8HeapNode[] = [profile.head];
  for (let i = 0; i < frames.length; i++) frames.push(...frames[i]!.children);
  const v8Line = frames.find((n) => n.callFrame.functionName === 'allocateManyArraysForTheTest')!.callFrame.lineNumber;
  t.equal(Number(fn.startLine), v8Line + 1, `start line ${fn.startLine}: V8's line ${v8Line}, 1-based`);

  const arena = flat.filter((f) => f.labels.part === 'buffer pool arena');
  t.same(arena, [{ names: ['[off-heap] buffer pool arena'], files: ['kvfs'], values: [100, 64 * MIB], labels: { part: 'buffer pool arena' } }], 'the arena: its count and exact bytes');
  const index = flat.filter((f) => f.labels.part === 'read index');
  t.same(index, [{ names: ['[off-heap] read index'], files: ['kvfs'], values: [1, 0], labels: { part: 'read index' } }], 'the read index: count 1, 0 bytes, still there');
});

t.test('a real CPU profile', async (t) => {
  const s = new inspector.Session();
  s.connect();
  t.teardown(() => s.disconnect());
  await post(s, 'Profiler.enable');
  await post(s, 'Profiler.setSamplingInterval', { interval: 100 });
  await post(s, 'Profiler.start');
  busyLoopForTheCpuTest(300);
  const { profile } = await post<Profiler.StopReturnType>(s, 'Profiler.stop');
  await post(s, 'Profiler.disable');

  const p = decodePprof(cpuProfileToPprof(profile));
  const str = (i: unknown) => p.stringTable.strings[Number(i)];
  t.same(types(p), ['samples/count', 'cpu/nanoseconds'], 'sample types');
  t.equal(`${str(p.periodType?.type)}/${str(p.periodType?.unit)}`, 'cpu/nanoseconds', 'period type');
  t.ok(Number(p.period) > 0, `period ${p.period} ns`);
  t.ok(Number(p.durationNanos) >= 250e6, `duration ${Number(p.durationNanos) / 1e6} ms`);
  t.ok(Math.abs(Number(p.timeNanos) / 1e6 - Date.now()) < 60_000, 'time: the start, on the wall clock');

  const flat = flatten(p);
  t.ok(functionNames(p).includes('busyLoopForTheCpuTest'), 'the spinning function is among the functions');
  t.notOk(flat.some((f) => f.names.includes('(root)') || f.names.length === 0), 'no "(root)" frame, no empty stack');
  const mine = flat.filter((f) => f.names.includes('busyLoopForTheCpuTest'));
  const samples = sum(mine.map((f) => f.values[0]!));
  const ns = sum(mine.map((f) => f.values[1]!));
  t.ok(samples > 0, `samples in busyLoopForTheCpuTest: ${samples}`);
  t.ok(ns >= 100e6 && ns <= 5e9, `its time: ${ns / 1e6} ms (spun 300 ms)`);
  const total = sum(flat.map((f) => f.values[1]!));
  t.ok(total >= 100e6 && total <= 5e9, `total time: ${total / 1e6} ms`);
  t.equal(sum(flat.map((f) => f.values[0]!)), profile.samples!.length, 'every sample counted once');
});

t.test('hand-made trees: the exact figures', async (t) => {
  const cf = (functionName: string, lineNumber: number, url = 'file:///srv/app.js') => ({ functionName, scriptId: '1', url, lineNumber, columnNumber: 0 });
  // (root) -> main -> grow (600 bytes live, 3 samples of 250) ; (root) -> main -> anonymous (no url, 100 bytes, no samples)
  // main itself 0 bytes (no pprof sample); a second node for grow under (root) (same function: one Function)
  const heap: V8HeapProfile = {
    head: {
      id: 1, callFrame: ROOT, selfSize: 0, children: [
        { id: 2, callFrame: cf('main', 0), selfSize: 0, children: [
          { id: 3, callFrame: cf('grow', 9), selfSize: 600, children: [] },
          { id: 4, callFrame: cf('', 19, ''), selfSize: 100, children: [] },
        ] },
        { id: 5, callFrame: cf('grow', 9), selfSize: 1000, children: [] },
      ],
    },
    samples: [3, 3, 3, 5].map((nodeId, ordinal) => ({ nodeId, ordinal, size: nodeId === 3 ? 250 : 1000 })),
  };
  const hp = decodePprof(heapProfileToPprof(heap, { intervalBytes: 512, timeNanos: 42n }));
  t.equal(Number(hp.timeNanos), 42, 'timeNanos as given');
  t.same(
    flatten(hp).map((f) => [f.names, f.values]).sort(),
    [
      [['(anonymous)', 'main'], [0, 100]],
      [['grow'], [1, 1000]],
      [['grow', 'main'], [2, 600]], // 3 samples x 600 / 750
    ].sort(),
    'one sample per node with live bytes, leaf first; objects scaled by selfSize / sampled bytes',
  );
  t.same(functionNames(hp).sort(), ['(anonymous)', 'grow', 'main'], 'grow once');
  const line = (name: string) => hp.function.find((f) => hp.stringTable.strings[Number(f.name)] === name)!;
  t.equal(Number(line('grow').startLine), 10, 'lines 1-based');
  t.equal(hp.stringTable.strings[Number(line('grow').filename)], '/srv/app.js', 'file:// removed');
  t.equal(hp.stringTable.strings[Number(line('(anonymous)').filename)], '', 'no url: empty filename');
  t.notOk(hp.comment.map((c) => hp.stringTable.strings[Number(c)]).some((c) => c?.includes('[off-heap]')), 'no off-heap comment without parts');

  // (root) -> main -> f ; (root) -> (idle). Samples f, f, main, (idle), each with the delta before it.
  const cpu: Profiler.Profile = {
    nodes: [
      { id: 1, callFrame: ROOT, children: [2, 4] },
      { id: 2, callFrame: cf('main', 0), children: [3] },
      { id: 3, callFrame: cf('f', 4) },
      { id: 4, callFrame: { ...ROOT, functionName: '(idle)' } },
    ],
    startTime: 1_000,
    endTime: 2_000,
    samples: [3, 3, 2, 4],
    timeDeltas: [10, 20, 30, 100],
  };
  const cp = decodePprof(cpuProfileToPprof(cpu, { timeNanos: 7n }));
  t.same(
    flatten(cp).map((f) => [f.names, f.values]).sort(),
    [
      [['f', 'main'], [2, 30_000]],
      [['main'], [1, 30_000]],
      [['(idle)'], [1, 100_000]],
    ].sort(),
    'per node: its samples and the µs before each, in ns; (idle) an ordinary frame',
  );
  t.equal(Number(cp.period), 40_000, 'period: the mean delta');
  t.equal(Number(cp.durationNanos), 1_000_000, 'duration: endTime - startTime');
  t.equal(Number(cp.timeNanos), 7, 'timeNanos as given');
  const none = decodePprof(cpuProfileToPprof({ nodes: [{ id: 1, callFrame: ROOT }], startTime: 0, endTime: 0 }));
  t.equal(Number(none.period), 1_000_000, 'no deltas: period 1 ms');
  t.equal(none.sample.length, 0, 'no samples');
});

t.test('bad input', async (t) => {
  const empty: V8HeapProfile = { head: { id: 1, callFrame: ROOT, selfSize: 0, children: [] }, samples: [] };
  const p = decodePprof(heapProfileToPprof(empty, { intervalBytes: 1024, offHeap: [{ name: 'blob cache', bytes: 12345, count: 3 }, { name: 'read index', bytes: 0 }] }));
  t.same(types(p), ['objects/count', 'space/bytes'], 'an empty heap profile: still a profile');
  t.same(flatten(p).map((f) => [f.names, f.values]), [[['[off-heap] blob cache'], [3, 12345]], [['[off-heap] read index'], [1, 0]]], 'only the off-heap samples');
  t.equal(decodePprof(heapProfileToPprof(empty, { intervalBytes: 1024 })).sample.length, 0, 'and with no parts, no samples');

  t.throws(() => heapProfileToPprof(empty, { intervalBytes: 1024, offHeap: [{ name: 'x', bytes: NaN }] }), RangeError, 'NaN bytes refused');
  t.throws(() => decodePprof(Buffer.from('this is not gzip')), { name: 'PprofError', code: 'NOT_GZIP', message: /not a gzipped pprof profile/ }, 'not gzip');
  t.throws(() => decodePprof(Buffer.alloc(0)), { code: 'NOT_GZIP', message: /not a gzipped pprof profile/ }, 'no bytes');
  t.throws(() => decodePprof(gzipSync('hello, this is a text file')), { code: 'NOT_PPROF', message: /not a gzipped pprof profile/ }, 'gzipped text');
  t.throws(() => decodePprof(gzipSync(Buffer.alloc(0))), { code: 'NOT_PPROF', message: /not a gzipped pprof profile/ }, 'gzipped nothing');
  t.throws(() => decodePprof(Buffer.from('nope')), PprofError, 'a PprofError');
});
