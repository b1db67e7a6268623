/**
 * V8 profiles taken in-process (node:inspector) as pprof profiles: profile.proto, gzipped, the `.pb.gz` that
 * `go tool pprof` opens. Built with pprof-format's classes; nothing here encodes protobuf by hand.
 *
 * Both kinds:
 *  - Stacks are leaf first (pprof's order). The tree's synthetic "(root)" frame is left out; "(program)",
 *    "(garbage collector)", "(idle)" and the like stay, as ordinary frames.
 *  - One Function per (name, file, first line), and one Location per Function whose one Line carries that line.
 *    name: callFrame.functionName, or "(anonymous)"; file: callFrame.url without `file://`; line: 1-based (CDP's
 *    are 0-based; its -1, unknown, becomes pprof's 0, unknown).
 *
 * Heap (heapProfileToPprof, from HeapProfiler.getSamplingProfile): what is live now, per allocation site. V8
 * samples about one allocation per intervalBytes and scales each sample up by the allocations it stands for, so
 * both figures are estimates, closer the bigger the site:
 *  - space/bytes: live bytes allocated at the site (the node's selfSize, V8's scaled estimate).
 *  - objects/count: the site's live samples (profile.samples), times selfSize / their summed sizes so that it
 *    follows the same live set as space. It is a floor, not an estimate of live objects: V8 folds the
 *    ~intervalBytes/s objects of s bytes a sample stands for into the sample's size, and the protocol does not give
 *    s apart, so sites of objects smaller than intervalBytes count low by about intervalBytes/s. Rank by space.
 *  - `[off-heap] NAME`: memory V8 does not see (buffer pool arena, read index...), counted exactly by the daemon,
 *    one sample each with the label part=NAME.
 *
 * CPU (cpuProfileToPprof, from Profiler.stop): V8 samples the JS thread's stack every interval, busy or idle.
 *  - samples/count: the samples whose leaf is the node.
 *  - cpu/nanoseconds: the time those samples stand for: each sample i takes the delta BEFORE it (timeDeltas[i],
 *    the time since the previous sample, or since the start for the first), as Go's SIGPROF samples do.
 *  - period: the mean delta.
 */
import type { HeapProfiler, Profiler, Runtime } from 'node:inspector';
import { gunzipSync, gzipSync } from 'node:zlib';
import { Function as PprofFunction, Label, Line, Location, Profile, Sample, StringTable, ValueType } from 'pprof-format';

/** memory the daemon counts itself because V8's heap profiler does not see it */
export interface OffHeapPart {
  /** what it is, e.g. 'buffer pool arena' */
  name: string;
  /** bytes it holds now; 0 still shows the part exists */
  bytes: number;
  /** objects it holds (buffers, entries...); 1 when absent */
  count?: number;
}

/**
 * A sampling heap profile as V8 sends it. @types/node's HeapProfiler types (an old protocol) lack the node ids and
 * the samples list; any HeapProfiler.SamplingHeapProfile is one of these, without them (then objects counts 0).
 */
export interface V8HeapProfile extends HeapProfiler.SamplingHeapProfile {
  head: V8HeapNode;
  /** the live sampled allocations: size is the sample's size times the allocations it stands for */
  samples?: { size: number; nodeId: number; ordinal: number }[];
}
export interface V8HeapNode extends HeapProfiler.SamplingHeapProfileNode {
  id?: number;
  children: V8HeapNode[];
}

export interface HeapPprofOptions {
  /** the samplingInterval HeapProfiler.startSampling was given: mean bytes allocated between samples */
  intervalBytes: number;
  offHeap?: OffHeapPart[];
  /** when the profile was taken, ns since the epoch; now by default */
  timeNanos?: bigint;
}

export type PprofErrorCode = 'NOT_GZIP' | 'NOT_PPROF';

/** bytes that are not a gzipped pprof profile */
export class PprofError extends Error {
  readonly code: PprofErrorCode;
  constructor(code: PprofErrorCode, message: string, cause?: unknown) {
    super(message, { cause });
    this.name = 'PprofError';
    this.code = code;
  }
}

const OFF_HEAP_COMMENT = '[off-heap] entries are counted by the daemon itself, not sampled';

/** One profile's string table, functions, locations and samples; functions and locations deduplicated. */
class Builder {
  readonly strings = new StringTable();
  readonly functions: PprofFunction[] = [];
  readonly locations: Location[] = [];
  readonly samples: Sample[] = [];
  private readonly byKey = new Map<string, number>();

  str(s: string): number {
    return this.strings.dedup(s);
  }

  type(type: string, unit: string): ValueType {
    return new ValueType({ type: this.str(type), unit: this.str(unit) });
  }

  /** the location of a function, made on first use; one per function, so their ids are the same */
  location(name: string, file: string, line: number): number {
    const key = `${name}\0${file}\0${line}`;
    let id = this.byKey.get(key);
    if (id === undefined) {
      id = this.functions.length + 1;
      this.functions.push(new PprofFunction({ id, name: this.str(name), filename: this.str(file), startLine: line }));
      this.locations.push(new Location({ id, line: [new Line({ functionId: id, line })] }));
      this.byKey.set(key, id);
    }
    return id;
  }

  frame(cf: Runtime.CallFrame): number {
    return this.location(cf.functionName || '(anonymous)', cf.url.replace(/^file:\/\//, ''), Math.max(0, cf.lineNumber + 1));
  }

  sample(locationId: number[], value: number[], label: Label[] = []): void {
    this.samples.push(new Sample({ locationId, value: value.map(Math.round), label }));
  }

  /** the gzipped profile of everything added, with these header fields */
  encode(head: {
    sampleType: ValueType[]; defaultSampleType?: string; periodType: ValueType; period: number;
    timeNanos: bigint; durationNanos?: number; comments: string[];
  }): Buffer {
    const p = new Profile({
      sampleType: head.sampleType,
      sample: this.samples,
      location: this.locations,
      function: this.functions,
      stringTable: this.strings,
      timeNanos: head.timeNanos,
      durationNanos: Math.max(0, Math.round(head.durationNanos ?? 0)),
      periodType: head.periodType,
      period: Math.round(head.period),
      comment: head.comments.map((c) => this.str(c)),
      defaultSampleType: head.defaultSampleType === undefined ? 0 : this.str(head.defaultSampleType),
    });
    return gzipSync(p.encode());
  }
}

/** A CDP call tree by node id: each node's frame and parent. */
class CallTree {
  private readonly frames = new Map<number, Runtime.CallFrame>();
  private readonly parents = new Map<number, number>();
  private readonly stacks = new Map<number, number[]>();

  constructor(private readonly b: Builder) {}

  add(id: number, frame: Runtime.CallFrame, parent: number | undefined): void {
    this.frames.set(id, frame);
    if (parent !== undefined) this.parents.set(id, parent);
  }

  has(id: number): boolean {
    return this.frames.has(id);
  }

  /** location ids of the node and its ancestors, leaf first, without the root "(root)" */
  stack(id: number): number[] {
    let s = this.stacks.get(id);
    if (s === undefined) {
      s = [];
      for (let n: number | undefined = id; n !== undefined; n = this.parents.get(n)) {
        const f = this.frames.get(n)!;
        if (!this.parents.has(n) && f.functionName === '(root)') break;
        s.push(this.b.frame(f));
      }
      this.stacks.set(id, s);
    }
    return s;
  }
}

/** a count the caller gave: a finite number >= 0 */
function amount(what: string, v: number): number {
  if (!(Number.isFinite(v) && v >= 0)) throw new RangeError(`${what}: ${v} is not a finite number >= 0`);
  return v;
}

/** The live sampled heap plus the off-heap parts, as a gzipped pprof profile (figures: see the top). */
export function heapProfileToPprof(profile: V8HeapProfile, opts: HeapPprofOptions): Buffer {
  const interval = amount('heap profile intervalBytes', opts.intervalBytes);
  const b = new Builder();
  const tree = new CallTree(b);

  // live samples per node: how many, and their summed (scaled) sizes
  const sampled = new Map<number, { n: number; bytes: number }>();
  for (const s of profile.samples ?? []) {
    const e = sampled.get(s.nodeId) ?? { n: 0, bytes: 0 };
    e.n++;
    e.bytes += s.size;
    sampled.set(s.nodeId, e);
  }

  // the tree walked depth first, parents before children; its nodes numbered by the walk (V8's ids name samples)
  const todo: [V8HeapNode, number | undefined][] = [[profile.head, undefined]];
  let seq = 0;
  for (let next = todo.pop(); next; next = todo.pop()) {
    const [node, parent] = next;
    const id = ++seq;
    tree.add(id, node.callFrame, parent);
    for (const c of node.children) todo.push([c, id]);
    if (node.selfSize <= 0) continue;
    const s = (node.id !== undefined && sampled.get(node.id)) || { n: 0, bytes: 0 };
    b.sample(tree.stack(id), [s.bytes > 0 ? (s.n * node.selfSize) / s.bytes : s.n, node.selfSize]);
  }

  const offHeap = opts.offHeap ?? [];
  for (const part of offHeap) {
    const loc = b.location(`[off-heap] ${part.name}`, 'kvfs', 0);
    const values = [amount(`off-heap ${part.name} count`, part.count ?? 1), amount(`off-heap ${part.name} bytes`, part.bytes)];
    b.sample([loc], values, [new Label({ key: b.str('part'), str: b.str(part.name) })]);
  }

  return b.encode({
    sampleType: [b.type('objects', 'count'), b.type('space', 'bytes')],
    defaultSampleType: 'space',
    periodType: b.type('space', 'bytes'),
    period: interval,
    timeNanos: opts.timeNanos ?? BigInt(Date.now()) * 1_000_000n,
    comments: [
      `V8 heap: live allocations estimated by sampling about one per ${interval} bytes allocated`,
      ...(offHeap.length > 0 ? [OFF_HEAP_COMMENT] : []),
    ],
  });
}

/**
 * A CPU profile as a gzipped pprof profile (figures: see the top). time_nanos is the profile's startTime, which
 * V8 gives in µs on the monotonic clock process.hrtime reads, moved to the epoch by the two clocks' offset now:
 * right for a profile taken in this process (or on this machine since its boot); `opts.timeNanos` overrides it.
 */
export function cpuProfileToPprof(profile: Profiler.Profile, opts: { timeNanos?: bigint } = {}): Buffer {
  const b = new Builder();
  const tree = new CallTree(b);
  const parents = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parents.set(c, n.id);
  for (const n of profile.nodes) tree.add(n.id, n.callFrame, parents.get(n.id));

  // per node: samples whose leaf it is, and the µs they stand for (a negative delta, V8 reordering two
  // samples, counts 0)
  const deltas = profile.timeDeltas ?? [];
  const hits = new Map<number, { n: number; us: number }>();
  (profile.samples ?? []).forEach((id, i) => {
    if (!tree.has(id)) throw new RangeError(`cpu profile: sample ${i} names node ${id}, which is not in the tree`);
    const e = hits.get(id) ?? { n: 0, us: 0 };
    e.n++;
    e.us += Math.max(0, deltas[i] ?? 0);
    hits.set(id, e);
  });
  for (const [id, e] of hits) b.sample(tree.stack(id), [e.n, e.us * 1000]);

  const meanNs = deltas.length > 0 ? (deltas.reduce((a, d) => a + Math.max(0, d), 0) / deltas.length) * 1000 : 0;
  const clockOffset = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();
  return b.encode({
    sampleType: [b.type('samples', 'count'), b.type('cpu', 'nanoseconds')],
    periodType: b.type('cpu', 'nanoseconds'),
    period: meanNs >= 1 ? meanNs : 1_000_000,
    timeNanos: opts.timeNanos ?? BigInt(Math.round(profile.startTime)) * 1000n + clockOffset,
    durationNanos: (profile.endTime - profile.startTime) * 1000,
    comments: ['V8 CPU profile: samples of the JS thread, busy or idle; each sample takes the time since the one before'],
  });
}

/** a `.pb.gz` read back; a PprofError when it is not a gzipped pprof profile */
export function decodePprof(gz: Buffer): Profile {
  let raw: Buffer;
  try {
    raw = gunzipSync(gz);
  } catch (e) {
    throw new PprofError('NOT_GZIP', `not a gzipped pprof profile: gunzip fails (${(e as Error).message})`, e);
  }
  let p: Profile;
  try {
    p = Profile.decode(raw);
  } catch (e) {
    throw new PprofError('NOT_PPROF', `not a gzipped pprof profile: gzipped, but not profile.proto (${(e as Error).message})`, e);
  }
  // profile.proto decodes from many byte strings; a profile has sample types and as many values in each sample
  if (p.sampleType.length === 0 || p.stringTable.strings[0] !== '' || p.sample.some((s) => s.value.length !== p.sampleType.length)) {
    throw new PprofError('NOT_PPROF', 'not a gzipped pprof profile: gzipped, but no sample types or samples that do not match them');
  }
  return p;
}

/** every function's name, in the profile's function order */
export function functionNames(p: Profile): string[] {
  return p.function.map((f) => p.stringTable.strings[Number(f.name)] ?? '');
}
