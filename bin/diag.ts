/**
 * Seeing inside a live daemon: its side of the control channel (src/diag/control.ts), and the CLI commands
 * that use it (`kvfs stats`, `kvfs profile`). The socket is `mount-<hash>.sock` beside the daemon's record in
 * its owner's runtime directory (daemons.ts), so the CLI finds it from the mountpoint, for the owner and root.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { native } from '../src/native.js';
import { getHeapStatistics } from 'node:v8';
import { ControlClient, CONTROL_VERSION, ControlError, ControlServer, type ControlCommand } from '../src/diag/control.js';
import { Profilers } from '../src/diag/profilers.js';
import { log, logLevel, setLogLevel } from '../src/log.js';
import type { OffHeapPart } from '../src/diag/pprof.js';
import { isKvfsMount, mountAt, mountOwner, type MountEntry } from '../src/fs/fuse/mount-table.js';
import { ownRuntimeDir, runtimeDirOf, socketName, type DaemonRecord } from './daemons.js';

export interface DaemonView {
  record: DaemonRecord;
  /** the driver's figures (native driver: channel, session, pool, fs) */
  stats: () => object;
  /** memory the daemon holds outside V8's heap, counted by its parts */
  offHeap: () => OffHeapPart[];
  /** the volume's record and usage, as `kvfs status` prints them */
  volume: () => Promise<string[]>;
}

/**
 * What the daemon's memory is made of, adding up to its RSS: the parts the daemon counts itself (`offHeap`:
 * the pool's arena, the blob cache, write-back buffers), other Buffers and ArrayBuffers (V8's external memory
 * less those), V8's heap (its resident pages), files mapped in (RssFile: code, libraries, an LMDB store's map),
 * malloc's blocks beyond the Buffers (libuv, the addon's read index and reader scratch, V8's own structures) and
 * what malloc keeps free for reuse (mallinfo2), and `other`: the rest of the anonymous memory (thread stacks,
 * memory mapped without malloc). `other` is what the daemon cannot explain.
 */
/** glibc malloc's figures (zeros where the addon cannot say) */
function mallocFigures(): { inUse: number; free: number } {
  try {
    return native().mallocInfo();
  } catch {
    return { inUse: 0, free: 0 };
  }
}

export function memoryReport(offHeap: OffHeapPart[]): { rss: number; parts: { name: string; bytes: number }[] } {
  const m = process.memoryUsage();
  const status = readStatus();
  const counted = offHeap.reduce((n, p) => n + p.bytes, 0);
  const malloc = mallocFigures();
  const parts = [
    ...offHeap.map((p) => ({ name: p.name, bytes: p.bytes })),
    { name: 'other buffers', bytes: Math.max(0, m.external - counted) },
    { name: 'V8 heap', bytes: getHeapStatistics().total_physical_size },
    { name: 'mapped files', bytes: status.RssFile ?? 0 },
    // malloc's blocks that are not Buffers (libuv, the addon's read index, V8's own structures), and memory the
    // program freed that malloc keeps for reuse
    { name: 'native allocations', bytes: Math.max(0, malloc.inUse - m.external) },
    { name: 'malloc free lists', bytes: malloc.free },
  ];
  const explained = parts.reduce((n, p) => n + p.bytes, 0);
  return { rss: m.rss, parts: [...parts, { name: 'other', bytes: m.rss - explained }] };
}

/** /proc/self/status's Rss* lines, in bytes */
function readStatus(): Record<string, number> {
  const out: Record<string, number> = {};
  try {
    for (const line of readFileSync('/proc/self/status', 'utf8').split('\n')) {
      const mm = /^(Rss\w+):\s+(\d+) kB/.exec(line);
      if (mm) out[mm[1]!] = Number(mm[2]) * 1024;
    }
  } catch { /* no /proc: every part but the ones counted here is "other" */ }
  return out;
}

/** listens on this daemon's control socket; the server, to close at exit */
export async function startControl(view: DaemonView): Promise<{ server: ControlServer; profilers: Profilers; stats: () => object }> {
  const profilers = new Profilers(view.offHeap);
  const profileOut = (gz: Buffer) => ({ bytes: gz.length, pprof: gz.toString('base64') });
  const stats = () => ({ ...view.stats(), memory: memoryReport(view.offHeap()), heapSampling: profilers.heapSampling ?? null });
  const commands: Record<string, ControlCommand> = {
    hello: () => ({ version: CONTROL_VERSION, ...view.record }),
    stats,
    memory: () => memoryReport(view.offHeap()),
    volume: () => view.volume(),
    'heap-start': (a) => profilers.heapStart(a.interval === undefined ? undefined : Number(a.interval), a.allocations === true),
    'heap-stop': () => profilers.heapStop(),
    'heap-dump': async () => profileOut(await profilers.heapDump()),
    'cpu-profile': async (a) => profileOut(await profilers.cpu(Number(a.seconds ?? 10))),
    'log-level': (a) => {
      const was = logLevel();
      if (a.level === undefined) return { level: was };
      try {
        const level = setLogLevel(String(a.level));
        if (level !== was) log.info(`log level ${was} -> ${level} (kvfs log-level)`);
        return { level, was };
      } catch (e) {
        throw new ControlError((e as Error).message);
      }
    },
  };
  const uid = process.getuid!();
  const path = `${ownRuntimeDir()}/${socketName(view.record.mountpoint)}`;
  const server = await ControlServer.listen(path, commands, uid === 0 ? [0] : [uid, 0]);
  return { server, profilers, stats };
}

// ------------------------------------------------------------------ the CLI's side

/** the control socket of the kvfs mount m (in its owner's runtime directory) */
export function socketOf(m: MountEntry): string {
  return `${runtimeDirOf(mountOwner(m) ?? process.getuid!())}/${socketName(m.mountPoint)}`;
}

/** a connection to the daemon of mount m, or a one-line Error saying why there is none */
export async function connectTo(m: MountEntry): Promise<ControlClient> {
  if (!isKvfsMount(m)) throw new ControlError(`${m.mountPoint} is not a kvfs mount (it is ${m.fsType} from ${m.source})`);
  const owner = mountOwner(m);
  const me = process.getuid!();
  if (owner !== undefined && owner !== me && me !== 0) {
    throw new ControlError(`${m.mountPoint} belongs to uid ${owner}: only that user and root may look inside its daemon`);
  }
  try {
    return await ControlClient.connect(socketOf(m));
  } catch (e) {
    throw new ControlError(`${(e as Error).message} (is the daemon of ${m.mountPoint} running, and of this kvfs version?)`);
  }
}

/** one request to the daemon of mount m, on a connection of its own */
export async function askDaemon(m: MountEntry, cmd: string, args: Record<string, unknown> = {}, timeoutMs?: number): Promise<unknown> {
  const c = await connectTo(m);
  try {
    return await c.request(cmd, args, timeoutMs);
  } finally {
    c.close();
  }
}

/** a number of bytes for people */
export function human(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

interface StatsShape {
  session?: { requests: number; inFlight: number; errors: number; byOp: Record<string, number>; latency?: Record<string, Latency> };
  channel?: { fastReads?: number; fileReads?: number; splicedReads?: number; fastGetattrs?: number; earlyWrites?: number;
    spins?: number; spinHits?: number };
  pool?: { capacityBytes: number; inUseBytes: number; highWaterBytes: number; waiters: number; totalWaits: number;
    classes: { size: number; count: number; inUse: number; free: number; highWater: number }[] };
  fs?: Record<string, number>;
  memory?: { rss: number; parts: { name: string; bytes: number }[] };
  store?: { calls: Record<string, number>; errors: Record<string, number>; retries?: Record<string, number>; blobReads?: { served: number; handedBack: number } };
}
export interface Latency { p50: number; p99: number; max: number }

/** the stats as text: per opcode count, rate (against `prev`, taken `dtMs` earlier) and latency; pool; memory */
export function formatStats(s: StatsShape, prev?: StatsShape, dtMs?: number): string {
  const lines: string[] = [];
  const byOp = s.session?.byOp ?? {};
  const rate = (op: string) => (prev && dtMs ? ((byOp[op]! - (prev.session?.byOp[op] ?? 0)) * 1000) / dtMs : undefined);
  const us = (v: number | undefined) => (v === undefined ? '-' : v >= 1000 ? `${(v / 1000).toFixed(1)}ms` : `${Math.round(v)}us`);
  lines.push(`requests ${s.session?.requests ?? 0}, in flight ${s.session?.inFlight ?? 0}, errors ${s.session?.errors ?? 0}; ` +
    `answered by reader threads: ${s.channel?.fastReads ?? 0} READs ` +
    `(${s.channel?.fileReads ?? 0} from blob files, ${s.channel?.splicedReads ?? 0} of them spliced), ` +
    `${s.channel?.fastGetattrs ?? 0} GETATTRs, ${s.channel?.earlyWrites ?? 0} WRITEs before they were applied; ` +
    `waits for a next request on the CPU: ${s.channel?.spins ?? 0}, which saw one come: ${s.channel?.spinHits ?? 0}`);
  lines.push('opcode          count      ops/s     p50      p99      max');
  for (const op of Object.keys(byOp).sort((a, b) => byOp[b]! - byOp[a]!)) {
    const l = s.session?.latency?.[op];
    const r = rate(op);
    lines.push(`${op.padEnd(12)} ${String(byOp[op]).padStart(9)} ${(r === undefined ? '-' : r.toFixed(0)).padStart(10)} ` +
      `${us(l?.p50).padStart(7)}  ${us(l?.p99).padStart(7)}  ${us(l?.max).padStart(7)}`);
  }
  const p = s.pool;
  if (p) {
    lines.push(`buffer pool: ${human(p.capacityBytes)}, in use ${human(p.inUseBytes)} (high water ${human(p.highWaterBytes)}), ` +
      `waiters ${p.waiters}, waits so far ${p.totalWaits}`);
    for (const c of p.classes) {
      lines.push(`  ${human(c.size).padStart(9)} x ${String(c.count).padStart(5)}: in use ${c.inUse}, free ${c.free}, high water ${c.highWater}`);
    }
  }
  const f = s.fs;
  if (f) {
    const looks = (f.blobCacheHits ?? 0) + (f.blobCacheMisses ?? 0);
    lines.push(`blob cache ${human(f.blobCacheBytes ?? 0)}, hit ratio ${looks ? ((100 * f.blobCacheHits!) / looks).toFixed(1) + '%' : '-'}; ` +
      `write-back ${human(f.writeBackBytes ?? 0)} dirty (high water ${human(f.writeBackHighWater ?? 0)}); open files ${f.openFiles ?? 0}; ` +
      `bytes written ${human(f.bytesWritten ?? 0)}, sent ${human(f.bytesSent ?? 0)}, returned ${human(f.bytesReturned ?? 0)}, fetched ${human(f.bytesFetched ?? 0)}`);
  }
  const st = s.store;
  if (st) {
    const list = (r: Record<string, number> | undefined) => Object.entries(r ?? {}).map(([k, v]) => `${k} ${v}`).join(', ') || 'none';
    lines.push(`store calls: ${list(st.calls)}; errors: ${list(st.errors)}${st.retries ? `; retries: ${list(st.retries)}` : ''}` +
      (st.blobReads ? `; blob reads on the reader's connections ${st.blobReads.served}, through ioredis ${st.blobReads.handedBack}` : ''));
  }
  const m = s.memory;
  if (m) lines.push(`memory: RSS ${human(m.rss)} = ${m.parts.map((x) => `${x.name} ${human(x.bytes)}`).join(' + ')}`);
  return lines.join('\n');
}

/** `kvfs stats MOUNTPOINT [--json] [--watch [SECONDS]]` */
export async function statsCommand(m: MountEntry, opts: { json?: boolean; watch?: number }): Promise<void> {
  const c = await connectTo(m);
  try {
    let prev: StatsShape | undefined;
    let prevAt = 0;
    const tty = process.stdout.isTTY && !opts.json;
    for (;;) {
      const s = (await c.request('stats')) as StatsShape;
      const now = Date.now();
      if (opts.json) console.log(JSON.stringify(s));
      else if (tty && opts.watch) process.stdout.write(`\x1b[H\x1b[2J${new Date(now).toISOString()} ${m.mountPoint}\n${formatStats(s, prev, now - prevAt)}\n`);
      else if (opts.watch && prev) console.log(oneLine(s, prev, now - prevAt));
      else if (!opts.watch) console.log(formatStats(s));
      if (!opts.watch) return;
      prev = s;
      prevAt = now;
      await new Promise((r) => setTimeout(r, opts.watch! * 1000));
    }
  } finally {
    c.close();
  }
}

/** --watch without a terminal: one line per interval */
function oneLine(s: StatsShape, prev: StatsShape, dtMs: number): string {
  const byOp = s.session?.byOp ?? {};
  const ops = Object.keys(byOp).map((op) => [op, ((byOp[op]! - (prev.session?.byOp[op] ?? 0)) * 1000) / dtMs] as const)
    .filter(([, r]) => r > 0).sort((a, b) => b[1] - a[1]).map(([op, r]) => `${op} ${r.toFixed(0)}/s`);
  return `${new Date().toISOString()} in flight ${s.session?.inFlight ?? 0} ${ops.join(' ') || 'idle'}; ` +
    `pool in use ${human(s.pool?.inUseBytes ?? 0)}; RSS ${human(s.memory?.rss ?? 0)}`;
}

/** `kvfs profile heap start|stop|dump` and `kvfs profile cpu` */
export async function profileCommand(m: MountEntry, a: {
  kind: string; action?: string; interval?: number; allocations?: boolean; output?: string; seconds?: number;
}): Promise<void> {
  const save = (r: unknown) => {
    const { pprof, bytes } = r as { pprof: string; bytes: number };
    writeFileSync(a.output!, Buffer.from(pprof, 'base64'), { mode: 0o600 });
    console.log(`kvfs: wrote ${a.output} (${bytes} bytes, pprof; open it with: go tool pprof -top ${a.output})`);
  };
  if (a.kind === 'cpu') {
    if (!a.output) throw new ControlError('name the file for the profile: -o FILE');
    const seconds = a.seconds ?? 10;
    save(await askDaemon(m, 'cpu-profile', { seconds }, seconds * 1000 + 30_000));
  } else if (a.action === 'start') {
    const r = (await askDaemon(m, 'heap-start', {
      ...(a.interval === undefined ? {} : { interval: a.interval }), ...(a.allocations ? { allocations: true } : {}),
    })) as { interval: number };
    console.log(`kvfs: heap sampling on for ${m.mountPoint} (a sample every ${r.interval} bytes allocated on average` +
      `${a.allocations ? '; collected objects kept: an allocation profile' : ''})`);
  } else if (a.action === 'stop') {
    await askDaemon(m, 'heap-stop');
    console.log(`kvfs: heap sampling off for ${m.mountPoint}`);
  } else if (a.action === 'dump') {
    if (!a.output) throw new ControlError('name the file for the profile: -o FILE');
    save(await askDaemon(m, 'heap-dump', {}, 60_000));
  } else {
    throw new ControlError(`kvfs profile heap: give start, stop or dump (not '${a.action}')`);
  }
}

/** the `stats` of the daemon serving the kvfs mount at mountpoint (for tests and benches; an Error when none) */
export async function daemonStats(mountpoint: string): Promise<Record<string, unknown>> {
  const m = mountAt(mountpoint);
  if (!m) throw new Error(`${mountpoint} is not a mountpoint`);
  return (await askDaemon(m, 'stats')) as Record<string, unknown>;
}

/** `kvfs log-level MOUNTPOINT [LEVEL]`: the daemon's log level, set or shown */
export async function logLevelCommand(m: MountEntry, level: string | undefined): Promise<void> {
  const r = (await askDaemon(m, 'log-level', level === undefined ? {} : { level })) as { level: string; was?: string };
  console.log(level === undefined ? `kvfs: ${m.mountPoint} logs at level ${r.level}` : `kvfs: ${m.mountPoint}: log level ${r.was} -> ${r.level}`);
}
