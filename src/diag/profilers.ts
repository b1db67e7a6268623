/**
 * V8's profilers in the daemon's own process, through an in-process inspector session (node:inspector; no port
 * is opened): the sampling heap profiler, switched on and off at runtime (off by default, and then nothing runs),
 * and the CPU profiler for a fixed time. Profiles come out in pprof's format (pprof.ts); a heap profile carries
 * the memory V8 does not see as `[off-heap]` entries the daemon counts itself (`offHeap`).
 */
import { Session } from 'node:inspector/promises';
import type { HeapProfiler, Profiler } from 'node:inspector';
import { ControlError } from './control.js';
import { cpuProfileToPprof, heapProfileToPprof, type OffHeapPart } from './pprof.js';

/** V8's default: one sample per 512 KiB allocated on average */
export const DEFAULT_HEAP_INTERVAL = 512 * 1024;
/** the longest CPU profile a request may ask for */
export const MAX_CPU_SECONDS = 300;

export class Profilers {
  private session: Session | undefined;
  private heapInterval: number | undefined;
  private cpuBusy = false;

  constructor(private readonly offHeap: () => OffHeapPart[]) {}

  private connect(): Session {
    if (!this.session) {
      this.session = new Session();
      this.session.connect();
    }
    return this.session;
  }

  get heapSampling(): number | undefined {
    return this.heapInterval;
  }

  /**
   * Starts sampling every `interval` bytes allocated; with `allocations`, objects the GC has collected since stay
   * in the profile (what was allocated, not only what is live: V8's includeObjectsCollectedBy*GC).
   */
  async heapStart(interval = DEFAULT_HEAP_INTERVAL, allocations = false): Promise<{ interval: number; allocations: boolean }> {
    if (!Number.isInteger(interval) || interval < 64 || interval > 2 ** 30) {
      throw new ControlError(`heap sampling interval ${interval}: give a whole number of bytes from 64 to 1 GiB`);
    }
    if (this.heapInterval !== undefined) throw new ControlError(`heap sampling is already on (every ${this.heapInterval} bytes); stop it first`);
    await this.connect().post('HeapProfiler.startSampling', {
      samplingInterval: interval,
      ...(allocations ? { includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true } : {}),
    } as HeapProfiler.StartSamplingParameterType);
    this.heapInterval = interval;
    return { interval, allocations };
  }

  async heapStop(): Promise<{ stopped: boolean }> {
    if (this.heapInterval === undefined) throw new ControlError('heap sampling is not on');
    await this.connect().post('HeapProfiler.stopSampling');
    this.heapInterval = undefined;
    this.release();
    return { stopped: true };
  }

  /** the live sampled heap now, with the off-heap parts, as a gzipped pprof profile */
  async heapDump(): Promise<Buffer> {
    const interval = this.heapInterval;
    if (interval === undefined) throw new ControlError('heap sampling is off: start it first (kvfs profile heap start MOUNTPOINT)');
    const { profile } = await this.connect().post('HeapProfiler.getSamplingProfile') as HeapProfiler.GetSamplingProfileReturnType;
    return heapProfileToPprof(profile, { intervalBytes: interval, offHeap: this.offHeap() });
  }

  /** a CPU profile of the next `seconds`, as a gzipped pprof profile */
  async cpu(seconds: number): Promise<Buffer> {
    if (!(seconds > 0 && seconds <= MAX_CPU_SECONDS)) throw new ControlError(`profile length ${seconds} s: give 0 < seconds <= ${MAX_CPU_SECONDS}`);
    if (this.cpuBusy) throw new ControlError('a CPU profile is already being taken');
    this.cpuBusy = true;
    const s = this.connect();
    try {
      await s.post('Profiler.enable');
      await s.post('Profiler.setSamplingInterval', { interval: 1000 });
      await s.post('Profiler.start');
      await new Promise((r) => setTimeout(r, seconds * 1000));
      const { profile } = await s.post('Profiler.stop') as Profiler.StopReturnType;
      await s.post('Profiler.disable');
      return cpuProfileToPprof(profile);
    } finally {
      this.cpuBusy = false;
      this.release();
    }
  }

  /** the session goes once no profiler needs it */
  private release(): void {
    if (this.heapInterval === undefined && !this.cpuBusy && this.session) {
      this.session.disconnect();
      this.session = undefined;
    }
  }

  close(): void {
    this.session?.disconnect();
    this.session = undefined;
  }
}
