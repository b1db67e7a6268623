/**
 * The kvfs command line: format, mount, umount, status. It wires the parts together; nothing imports it.
 * Every failure is one line on stderr starting with `kvfs: ` and a non-zero exit (1; 2 for usage errors).
 */
import { spawn } from 'node:child_process';
import {
  existsSync, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeFileSync,
} from 'node:fs';
import inspector from 'node:inspector';
import { homedir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { StoreError } from '../src/backend/errors.js';
import type { KvStore } from '../src/backend/kv.js';
import { canonicalStoreUrl, describeStore, localStoreDir, openStore, type OpenStoreOptions } from '../src/backend/open-store.js';
import { isRedisUrl, parseRedisUrl } from '../src/backend/redis-url.js';
import type { Filesystem } from '../src/fs/filesystem.js';
import type { NativeMount } from '../src/fs/fuse/native-driver.js';
import { isKvfsMount, mountAt, mountHolding, unmount, UnmountError, type MountEntry } from '../src/fs/fuse/mount-table.js';
import { K, SHARED_KEYS } from '../src/volume/schema.js';
import { humanBytes } from '../src/volume/limits.js';
import cliProgress from 'cli-progress';
import { collectGarbage } from '../src/volume/gc.js';
import { fsck } from '../src/volume/fsck.js';
import { MIN_CAPACITY, MIN_INODES, chunkSizeProblem, configureVolume, formatVolume, readVolume } from '../src/volume/format.js';
import { errnoName, fuseDeviceProblem, native } from '../src/native.js';
import {
  daemonOf, holdersOf, isAlive, isStopped, lockStoreDir, ownRuntimeDir, unlockStoreDir, processState, readRecord, removeRecord, writeRecord,
  type DaemonRecord,
} from './daemons.js';
import { Lifecycle, STOP_SIGNALS } from './lifecycle.js';
import { configureLog, log as daemonLog, logsJson } from '../src/log.js';
import { connectTo, human, logLevelCommand, profileCommand, startControl, statsCommand } from './diag.js';
import { loadCommand } from './load.js';
import type { DaemonStats } from '../src/diag/metrics.js';

class CliError extends Error {}
const fail = (msg: string): never => { throw new CliError(msg); };

/** where the default volume lives: $KVFS_DATA_DIR, else $XDG_DATA_HOME/kvfs, else ~/.local/share/kvfs */
function dataDir(): string {
  if (process.env.KVFS_DATA_DIR) return resolve(process.env.KVFS_DATA_DIR);
  const xdg = process.env.XDG_DATA_HOME || join(homedir(), '.local', 'share');
  return join(xdg, 'kvfs');
}

const defaultStore = () => `local:${join(dataDir(), 'default')}`;

/** "256K", "1M", "10G", "2T", "65536" -> bytes (binary units); undefined for anything else */
function parseSize(s: string | number): number | undefined {
  const m = /^(\d+)\s*([kmgt]i?b?)?$/i.exec(String(s).trim());
  if (!m) return undefined;
  const unit = (m[2] ?? '').toLowerCase()[0];
  const n = Number(m[1]) * (unit === 'k' ? 2 ** 10 : unit === 'm' ? 2 ** 20 : unit === 'g' ? 2 ** 30 : unit === 't' ? 2 ** 40 : 1);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** --capacity: a size, or "none" (null: no quota); undefined when not given */
function capacityArg(v: string | number | undefined): number | null | undefined {
  if (v === undefined) return undefined;
  if (String(v).trim().toLowerCase() === 'none') return null;
  const n = parseSize(v);
  if (n === undefined) fail(`bad capacity '${v}': give a size like 500M, 20G or 2T, or none`);
  if (n! < MIN_CAPACITY) fail(`bad capacity '${v}': a volume's capacity is at least 1M`);
  return n;
}

/** --inodes: a count, or "none" (null: no limit); undefined when not given */
function inodesArg(v: string | number | undefined): number | null | undefined {
  if (v === undefined) return undefined;
  if (String(v).trim().toLowerCase() === 'none') return null;
  const n = /^\d+$/.test(String(v).trim()) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n)) fail(`bad inode limit '${v}': give a whole number, or none`);
  if (n < MIN_INODES) fail(`bad inode limit '${v}': a volume holds at least ${MIN_INODES} inodes`);
  return n;
}

function chunkSizeArg(v: string | number | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = parseSize(v);
  if (n === undefined) fail(`bad chunk size '${v}': give bytes or a size like 256K or 1M`);
  const problem = chunkSizeProblem(n!);
  if (problem) fail(problem);
  return n;
}

/** a local: store that does not exist yet must not be created by commands that only read or mount */
function mustExist(url: string): void {
  if (!url.startsWith('local:')) return;
  const dir = resolve(url.slice('local:'.length));
  if (!existsSync(join(dir, 'data.mdb'))) {
    fail(`${url} holds no kvfs volume (nothing at ${dir}); create one with: kvfs format ${url}`);
  }
}

/** the options every command that opens a store takes (Redis: deadline, password file, TLS files) */
interface StoreArgs {
  storeTimeout: number;
  passwordFile?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
}

/** warnings about a store that works (e.g. a deadline shorter than a failover); printed once the command succeeded */
const warnings: string[] = [];
const printWarnings = () => { for (const w of warnings.splice(0)) console.error(`kvfs: warning: ${w}`); };

function storeOptions(a: StoreArgs): OpenStoreOptions {
  inRange('store-timeout', a.storeTimeout, 0.1, 3600);
  return {
    timeoutMs: Math.round(a.storeTimeout * 1000), passwordFile: a.passwordFile, tlsCa: a.tlsCa, tlsCert: a.tlsCert, tlsKey: a.tlsKey,
    warn: (m) => warnings.push(m), sharedKeys: SHARED_KEYS,
  };
}

/** the one-line error for a store that holds no volume */
const noVolume = (url: string) => `${describeStore(url)} holds no kvfs volume; create one with: kvfs format ${url}`;

/** the options of every command that opens a store (Redis: deadline, password file, TLS files) */
const STORE_OPTIONS = {
  'store-timeout': { type: 'number', default: 10, describe: 'seconds a store call may take, retries included, before it fails (EIO)' },
  'password-file': { type: 'string', describe: 'file whose first line is the Redis password (or set KVFS_REDIS_PASSWORD)' },
  'tls-ca': { type: 'string', describe: 'CA certificate file for rediss:// URLs' },
  'tls-cert': { type: 'string', describe: 'client certificate file for rediss:// URLs' },
  'tls-key': { type: 'string', describe: 'client key file for rediss:// URLs' },
} as const;

async function withStore<T>(url: string, args: StoreArgs, fn: (s: KvStore) => Promise<T>, more: Partial<OpenStoreOptions> = {}): Promise<T> {
  const store = await openStore(url, { ...storeOptions(args), ...more });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

// ------------------------------------------------------------------ format

async function format(argv: { store?: string; name?: string; chunkSize?: string; capacity?: string; inodes?: string } & StoreArgs): Promise<void> {
  const url = argv.store ?? defaultStore();
  const capacity = capacityArg(argv.capacity) ?? undefined;
  const inodeCapacity = inodesArg(argv.inodes) ?? undefined;
  // a Redis volume is named by its URL
  const name = argv.name ?? (isRedisUrl(url) ? parseRedisUrl(url).volume : undefined);
  const chunkSize = chunkSizeArg(argv.chunkSize);
  if (argv.name !== undefined && !/^[A-Za-z0-9_-]{1,64}$/.test(argv.name)) {
    fail(`bad volume name '${argv.name}': use 1 to 64 of A-Z a-z 0-9 _ -`);
  }
  if (url.startsWith('memory:')) {
    fail('a memory: volume lives in the memory of the daemon that mounts it and ends with it, so there is nothing to ' +
      'format: `kvfs mount memory: MOUNTPOINT` makes a new one');
  }
  const dir = localStoreDir(url);
  if (dir) {
    storeDirProblem(dir);
    if (existsSync(dir) && !existsSync(join(dir, 'data.mdb')) && readdirSync(dir).some((f) => f !== 'kvfs-daemon.lock')) {
      fail(`${dir} is not empty and holds no kvfs store: format into an empty or new directory`);
    }
    mkdirSync(dir, { recursive: true });
    try {
      lockStoreDir(dir, { what: 'format' });
    } catch (e) {
      fail((e as Error).message);
    }
  }
  await withStore(url, argv, async (store) => {
    const vol = await formatVolume(store, { name, chunkSize, capacity, inodeCapacity });
    console.log(`kvfs: formatted ${describeStore(url)}: volume '${vol.name}', chunk size ${vol.chunkSize}${limitsText(vol)}`);
    printWarnings();
  });
}

/** ", capacity 20.0 GiB, 100000 inodes" for the limits a volume has */
function limitsText(v: { capacity?: number; inodeCapacity?: number }): string {
  return (v.capacity !== undefined ? `, capacity ${humanBytes(v.capacity)}` : '') +
    (v.inodeCapacity !== undefined ? `, at most ${v.inodeCapacity} inodes` : '');
}

// ------------------------------------------------------------------ gc

/**
 * Runs a maintenance command on a volume: the store opened, its volume checked, and on a local store the daemon
 * lock taken when no daemon holds it (`locked` then says no mount runs; `busy` is called when one does; a null
 * `busy` takes no lock: for commands whose every write checks what it read, which must never keep a mount or
 * a loader from starting).
 */
async function onVolume(url: string, argv: StoreArgs, what: string, busy: ((e: Error) => void) | null,
  fn: (store: KvStore, locked: boolean) => Promise<void>): Promise<void> {
  mustExist(url);
  const dir = localStoreDir(url);
  let lock: number | undefined;
  if (dir && busy) {
    try {
      lock = lockStoreDir(dir, { what });
    } catch (e) {
      busy(e as Error);
    }
  }
  try {
    // a walk of the whole volume would leave LMDB's map resident: its pages go back every 8 MiB touched
    await withStore(url, argv, async (store) => {
      await readVolume(store).catch((e: unknown) => (e instanceof StoreError && e.code === 'NOVOLUME' ? fail(noVolume(url)) : Promise.reject(e)));
      await fn(store, lock !== undefined);
      printWarnings();
    }, { releaseMappedEvery: 8 << 20 });
  } finally {
    if (lock !== undefined) unlockStoreDir(lock);
  }
}

/**
 * A progress callback: on a terminal, a bar per phase (cli-progress) with counts and rate; otherwise a plain line
 * "kvfs CMD: phase: done of total" every 2 s at most. `done()` ends the bar before the summary is printed.
 */
function progressReporter(cmd: string): { progress: (phase: string, done: number, total?: number) => void; done: () => void } {
  if (process.stdout.isTTY) {
    let bar: cliProgress.SingleBar | undefined;
    let current = '';
    const done = () => { bar?.stop(); bar = undefined; };
    return {
      done,
      progress: (phase, n, total) => {
        if (phase !== current || !bar) {
          done();
          current = phase;
          bar = new cliProgress.SingleBar({
            format: `kvfs ${cmd}: ${phase.padEnd(10)} {bar} {value}${total !== undefined ? '/{total} | {eta_formatted} left' : ''}`,
            hideCursor: true, clearOnComplete: false,
          }, cliProgress.Presets.shades_classic);
          bar.start(total ?? Math.max(n, 1), n);
        }
        if (total === undefined) bar.setTotal(Math.max(n, 1));
        bar.update(n);
      },
    };
  }
  let last = 0;
  return {
    done: () => undefined,
    progress: (phase, n, total) => {
      const now = Date.now();
      if (now - last < 2000) return;
      last = now;
      console.log(`kvfs ${cmd}: ${phase}: ${n}${total !== undefined ? ` of ${total}` : ''}`);
    },
  };
}

/** collects a volume's garbage (src/volume/gc.ts): safe beside live mounts */
async function gc(argv: { store: string; sweep?: boolean; dryRun?: boolean; grace: number } & StoreArgs): Promise<void> {
  const url = argv.store;
  if (url.startsWith('memory:')) fail('a memory: volume lives in its daemon only: its own janitor collects it');
  if (!Number.isFinite(argv.grace) || argv.grace < 0) fail(`bad --grace '${argv.grace}': give seconds, 0 or more`);
  // mounted: gc runs beside the mount, and leaves what its live session may still commit
  await onVolume(url, argv, 'gc', () => undefined, async (store, locked) => {
    const p = progressReporter('gc');
    const r = await collectGarbage(store, {
      dryRun: argv.dryRun, sweep: argv.sweep, graceMs: argv.grace * 1000, noLiveSessions: locked,
      unknownSessionsLive: !locked && localStoreDir(url) !== undefined, progress: p.progress,
    }).finally(p.done);
    const verb = r.dryRun ? 'would remove' : 'removed';
    console.log(`kvfs gc: ${r.dryRun ? 'dry run, nothing changed: ' : ''}` +
      `orphans ${r.orphans}, dead sessions ${r.sessions}, purged inodes ${r.purged}, ` +
      `queued blobs ${r.collected} (${humanBytes(r.collectedBytes)})` +
      (argv.sweep ? `, leaked blobs ${r.leaked} (${humanBytes(r.leakedBytes)}) ${verb}` +
        (r.leakedLive ? `, ${r.leakedLive} unreferenced blobs of live mounts left for later` : '') : ''));
    console.log(`kvfs gc: ${JSON.stringify(r)}`);
  });
}

// ------------------------------------------------------------------ fsck

/**
 * checks a volume's invariants (src/volume/fsck.ts); exit status as e2fsck's: 0 clean, 1 problems found and all
 * repaired, 4 problems left
 */
async function fsckCmd(argv: { store: string; repair?: boolean; json?: boolean } & StoreArgs): Promise<void> {
  const url = argv.store;
  if (url.startsWith('memory:')) fail('a memory: volume lives in its daemon only: there is nothing to check from here');
  let left = 0;
  let found = 0;
  // mounted: the check runs beside the mount (its report may show changes in flight); a repair does not
  await onVolume(url, argv, 'fsck', (e) => { if (argv.repair) fail(`${e.message}; fsck --repair needs the volume unmounted`); }, async (store) => {
    const p = progressReporter('fsck');
    const r = await fsck(store, { repair: argv.repair, progress: p.progress }).finally(p.done);
    for (const p of r.problems) console.log(`kvfs fsck: ${p.kind}: ${p.what}${p.repaired ? ` [repaired: ${p.repaired}]` : ''}`);
    found = r.problems.length;
    left = r.problems.filter((p) => !p.repaired).length;
    console.log(`kvfs fsck: ${r.inodes} inodes, ${r.entries} entries, ${r.chunks} chunk entries: ` +
      (found === 0 ? 'clean' : `${found} problem(s), ${found - left} repaired, ${left} left`));
    if (argv.json) console.log(JSON.stringify(r));
  });
  if (found) process.exitCode = left ? 4 : 1;
}

// ------------------------------------------------------------------ config

/** sets or removes a volume's quota; live mounts take it within a few seconds */
async function config(argv: { store: string; capacity?: string; inodes?: string } & StoreArgs): Promise<void> {
  const url = argv.store;
  const capacity = capacityArg(argv.capacity);
  const inodeCapacity = inodesArg(argv.inodes);
  if (url.startsWith('memory:')) fail('a memory: volume lives in its daemon only: there is nothing to configure from here');
  mustExist(url);
  await withStore(url, argv, async (store) => {
    const before = await readVolume(store).catch((e: unknown) => (e instanceof StoreError && e.code === 'NOVOLUME' ? fail(noVolume(url)) : Promise.reject(e)));
    const vol = capacity === undefined && inodeCapacity === undefined ? before : await configureVolume(store, { capacity, inodeCapacity });
    const used = await store.incr(K.byteCount, 0);
    const inodes = await store.incr(K.inodeCount, 0);
    console.log(`kvfs: volume '${vol.name}' in ${describeStore(url)}: ` +
      `capacity ${vol.capacity !== undefined ? humanBytes(vol.capacity) : 'none (the store\'s room)'} (${humanBytes(used)} used), ` +
      `inodes ${vol.inodeCapacity ?? 'no limit'} (${inodes} in use)`);
    if (vol.capacity !== undefined && used > vol.capacity) console.log(`kvfs: the volume holds more than its capacity: new data is refused until files are deleted`);
    printWarnings();
  });
}

/**
 * Refuses a local store inside a kvfs mount (its daemon would serve its own store, or lean on another daemon
 * for every page LMDB maps) and a mountpoint inside the store. Reads the mount table only.
 */
function storeDirProblem(dir: string, mountpoint?: string): void {
  const m = mountHolding(dir);
  if (isKvfsMount(m)) fail(`local:${dir} is inside the kvfs mount at ${m!.mountPoint}: keep a store on a local disk, not in a kvfs volume`);
  if (mountpoint && (mountpoint === dir || mountpoint.startsWith(dir + '/'))) fail(`the mountpoint ${mountpoint} is inside the store local:${dir}`);
}

// ------------------------------------------------------------------ mount

interface MountArgs extends StoreArgs {
  store?: string;
  mountpoint: string;
  background?: boolean;
  allowOther?: boolean;
  nonempty?: boolean;
  mkdir?: boolean;
  driver: string;
  debug?: boolean;
  chunkSize?: string;
  cacheMb: number;
  readSlabsMb: number;
  writeBufferMb: number;
  attrTimeout?: number;
  entryTimeout?: number;
  bufferPoolMb: number;
  readers: number;
  spinUs: number;
  writebackCache?: boolean;
  debugBuffers?: boolean;
  requestTimeout: number;
  sessionTtl: number;
  logFile?: string;
  metrics?: string;
}

/**
 * The mount command's options, for yargs and for mount(8)'s `-o name=value` (mount.kvfs): each is reachable as
 * `-o name` (a boolean) or `-o name=value`, with `_` for `-`.
 */
const MOUNT_OPTIONS = {
  'background': { type: 'boolean', describe: 'return once mounted; the daemon keeps running (log: --log-file, else <data dir>/logs/)' },
  'log-file': { type: 'string', describe: 'append the daemon\'s log to this file (created 0600) instead of the terminal' },
  'allow-other': { type: 'boolean', describe: 'let other users in (modes and owners then decide)' },
  'nonempty': { type: 'boolean', describe: 'mount over a non-empty directory' },
  'mkdir': { type: 'boolean', describe: 'create the mountpoint when it does not exist' },
  'driver': { type: 'string', default: 'native', choices: ['native', 'libfuse'], describe: 'FUSE driver: kvfs\'s own channel to /dev/fuse, or libfuse 2 through fuse-native' },
  'buffer-pool-mb': { type: 'number', default: 64, describe: 'MiB of request and reply buffers (native driver); requests wait when they are in use' },
  'readers': { type: 'number', default: 2, describe: 'reader threads on /dev/fuse (native driver)' },
  'spin-us': { type: 'number', default: 100, describe: 'microseconds the daemon waits on the CPU for the next request after answering the last one (native driver): a caller that waits for each answer (unlink, create, fsync loops) is then served without a thread wake-up; 0: sleep at once' },
  'debug-buffers': { type: 'boolean', describe: 'keep the stack of every buffer taken; report those never released at unmount' },
  'request-timeout': { type: 'number', default: 300, describe: 'seconds before an unanswered request is answered EIO (0: never)' },
  'metrics': { type: 'string', describe: 'serve Prometheus metrics at http://HOST:PORT/metrics (:PORT is 127.0.0.1:PORT); off by default' },
  'writeback-cache': { type: 'boolean', describe: 'let the kernel cache writes (native driver)' },
  'chunk-size': { type: 'string', describe: 'chunk size when this mount formats a new volume' },
  'cache-mb': { type: 'number', default: 64, describe: 'MiB of file data cached in memory' },
  'read-slabs-mb': { type: 'number', default: 256, describe: 'MiB of memory that file data read from a Redis store is read into and reused (the cache\'s data among it); reads beyond it allocate' },
  'write-buffer-mb': { type: 'number', default: 64, describe: 'MiB of write-back buffers before writes commit early' },
  'attr-timeout': { type: 'number', describe: 'seconds the kernel caches attributes (default 1 on a shared store, 3600 on a local or memory one; 0 with --driver libfuse; a directory\'s 1 at most)' },
  'entry-timeout': { type: 'number', describe: 'seconds the kernel caches names (default 1 on a shared store, 3600 on a local or memory one; 1 with --driver libfuse)' },
  'session-ttl': { type: 'number', default: 30, describe: 'seconds this mount counts as live after its last heartbeat: what a killed mount leaves (files unlinked while open) is reclaimed after it' },
  'debug': { type: 'boolean', describe: 'log every FUSE request' },
  ...STORE_OPTIONS,
} as const;

/**
 * Refuses a mountpoint kvfs cannot use. Reads the mount table first and makes no call on a path that is a
 * mount already: a FUSE mount whose daemon is stopped would not answer a stat.
 */
function checkMountpoint(mnt: string, nonempty: boolean): void {
  const m = mountAt(mnt);
  if (m) {
    if (isKvfsMount(m) && !daemonOf(m)) fail(`${mnt} is a kvfs mount whose daemon is gone; clean it up with: kvfs umount ${mnt}`);
    fail(`${mnt} is already mounted (${m.fsType} from ${m.source})`);
  }
  let st;
  try {
    st = statSync(mnt);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    fail(code === 'ENOENT' ? `mountpoint ${mnt} does not exist (create it with: mkdir -p ${mnt})` : `cannot use mountpoint ${mnt}: ${code}`);
  }
  if (!st!.isDirectory()) fail(`mountpoint ${mnt} is not a directory`);
  if (!nonempty && readdirSync(mnt).length > 0) fail(`mountpoint ${mnt} is not empty (use --nonempty to mount over its contents)`);
}

/** a number option within [min, max], else a one-line error naming the option */
function inRange(name: string, v: number | undefined, min: number, max: number): void {
  if (v === undefined) return;
  if (Number.isNaN(v)) fail(`bad --${name}: not a number (give a number from ${min} to ${max})`);
  if (!Number.isFinite(v) || v < min || v > max) fail(`bad --${name} ${v}: give a number from ${min} to ${max}`);
}

/** the daemon's log gets an event (src/log.ts); a terminal that went away (SIGHUP) never kills the daemon */
const log = (line: string) => daemonLog.info(line);

async function mount(argv: MountArgs): Promise<void> {
  inRange('buffer-pool-mb', argv.bufferPoolMb, 4, 65536);
  inRange('readers', argv.readers, 1, 64);
  if (argv.readers !== undefined && !Number.isInteger(argv.readers)) fail(`bad --readers ${argv.readers}: give a whole number`);
  inRange('spin-us', argv.spinUs, 0, 10000);
  inRange('cache-mb', argv.cacheMb, 0, 1 << 20);
  inRange('read-slabs-mb', argv.readSlabsMb, 32, 1 << 20);
  inRange('write-buffer-mb', argv.writeBufferMb, 1, 1 << 20);
  inRange('attr-timeout', argv.attrTimeout, 0, 86400);
  inRange('entry-timeout', argv.entryTimeout, 0, 86400);
  inRange('request-timeout', argv.requestTimeout, 0, 86400);
  inRange('session-ttl', argv.sessionTtl, 3, 86400);
  // what only a daemon needs loads here, not with every kvfs command (prom-client, the drivers, the core)
  const [{ parseListenAddress, startMetrics }, { countStoreCalls }, { Filesystem }] = await Promise.all([
    import('../src/diag/metrics.js'), import('../src/diag/store-calls.js'), import('../src/fs/filesystem.js'),
  ]);
  let metricsAt: { host: string; port: number } | undefined;
  try {
    metricsAt = argv.metrics === undefined ? undefined : parseListenAddress(argv.metrics);
  } catch (e) {
    fail((e as Error).message);
  }
  const url = argv.store ?? defaultStore();
  const autoFormat = argv.store === undefined || url.startsWith('memory:');
  const mnt = resolve(argv.mountpoint);
  const chunkSize = chunkSizeArg(argv.chunkSize);
  const source = canonicalStoreUrl(url);
  const storeDir = localStoreDir(url);
  if (storeDir) storeDirProblem(storeDir, mnt);
  if (argv.mkdir && !mountAt(mnt) && !existsSync(mnt)) mkdirSync(mnt, { recursive: true });
  checkMountpoint(mnt, !!argv.nonempty);
  const dev = fuseDeviceProblem();
  if (dev) fail(dev);
  // the daemon's record and control socket go there: a runtime directory others may enter is refused before
  // anything is mounted, not found out once the mount is serving
  try {
    ownRuntimeDir();
  } catch (e) {
    fail((e as Error).message);
  }
  if (!autoFormat) mustExist(url);
  if (argv.background) return background(mnt, cliArgs.filter((a) => a !== '--background' && a !== '--background=true'), argv.logFile);
  if (argv.logFile) {
    const r = native().redirectOutput(resolve(argv.logFile));
    if (r < 0) fail(`cannot write the log file ${argv.logFile}: ${errnoName(-r)}`);
  }
  for (const s of [process.stdout, process.stderr]) s.on('error', () => undefined);
  // the background log (a file) gets JSON lines, a terminal or a pipe readable ones; --debug: every request
  configureLog({ level: argv.debug ? 'debug' : undefined });

  // One daemon per local store: held until this process ends (the kernel drops it if it dies).
  if (storeDir) {
    mkdirSync(storeDir, { recursive: true });
    try {
      lockStoreDir(storeDir, { mountpoint: mnt, what: 'mount' });
    } catch (e) {
      fail((e as Error).message);
    }
  }
  // the store's calls, retries and errors, counted for kvfs stats
  const counted = countStoreCalls(await openStore(url, { ...storeOptions(argv), readSlabBytes: argv.readSlabsMb * 2 ** 20 }));
  const store = counted.store;
  let fs: Filesystem;
  try {
    if (argv.writebackCache && (await store.info()).shared) {
      fail(`--writeback-cache cannot be used with ${describeStore(url)}: other mounts share it, and the kernel's writeback ` +
        'cache keeps file sizes and times in this kernel, so they would not see each other\'s changes (close-to-open)');
    }
    try {
      await readVolume(store);
    } catch (e) {
      if (!(e instanceof StoreError && e.code === 'NOVOLUME')) throw e;
      if (!autoFormat) fail(noVolume(url));
      await formatVolume(store, { chunkSize });
      log(`formatted a new volume in ${describeStore(url)}`);
    }
    fs = await Filesystem.open(store, {
      blobCacheBytes: argv.cacheMb << 20, writeBufferBytes: argv.writeBufferMb << 20, sessionTtlMs: argv.sessionTtl * 1000, storeName: canonicalStoreUrl(url),
    });
  } catch (e) {
    await store.close().catch(() => undefined);
    throw e;
  }
  // The mount shows in the table before the Lifecycle below takes signals (the record, the control socket come
  // first): a SIGINT, SIGTERM or SIGHUP in between would end the daemon at once and leave a dead mount. From here
  // on they are held, and handed to the Lifecycle once it listens.
  const held: NodeJS.Signals[] = [];
  const hold = (sig: NodeJS.Signals) => void held.push(sig);
  for (const sig of STOP_SIGNALS) process.on(sig, hold);
  const mounting = argv.driver === 'libfuse'
    ? (await import('../src/fs/fuse/libfuse-driver.js')).mountLibfuse(fs, mnt, {
      allowOther: argv.allowOther, debug: argv.debug, attrTimeout: argv.attrTimeout, entryTimeout: argv.entryTimeout, source,
    })
    : (await import('../src/fs/fuse/native-driver.js')).mountNative(fs, mnt, {
      allowOther: argv.allowOther, attrTimeout: argv.attrTimeout, entryTimeout: argv.entryTimeout,
      poolBytes: argv.bufferPoolMb << 20, readers: argv.readers, writebackCache: argv.writebackCache, spinUs: argv.spinUs,
      storeIdle: () => counted.inFlight() === 0,
      debugPool: argv.debugBuffers, requestTimeout: argv.requestTimeout, source,
    });
  const handle: NativeMount | void = await mounting.catch(async (e) => {
    await fs.close().catch(() => undefined);
    await store.close().catch(() => undefined);
    return fail(`cannot mount ${mnt}: ${(e as Error).message}`);
  });
  const entry = mountAt(mnt);
  if (!entry) fail(`${mnt} left the mount table as soon as it was mounted`);
  // A SIGUSR1 that raced bin/kvfs.js's listener may have opened the inspector: close it before serving.
  if (inspector.url()) {
    inspector.close();
    log('closed the inspector that a SIGUSR1 opened while kvfs was starting');
  }

  const record: DaemonRecord = {
    pid: process.pid, mountpoint: mnt, store: source, dev: entry!.dev, driver: argv.driver,
    started: new Date().toISOString(), ...(argv.logFile ? { log: resolve(argv.logFile) } : {}),
  };
  const recordPath = writeRecord(record);
  // the control socket (kvfs stats, kvfs profile): what this daemon holds, per part
  const driverStats = () => ({ ...(handle?.stats.call(handle) ?? { fs: fs.stats() }), store: counted.stats() });
  // the pool's arena is made once, at the mount (the libfuse driver has none)
  const arenaBytes = (driverStats() as { pool?: { capacityBytes: number } }).pool?.capacityBytes ?? 0;
  const control = await startControl({
    record,
    stats: driverStats,
    volume: () => volumeLines(store, url),
    offHeap: () => {
      const f = fs.stats();
      return [
        { name: 'buffer pool arena', bytes: arenaBytes },
        { name: 'blob cache', bytes: f.blobCacheBytes },
        { name: 'write-back buffers', bytes: f.writeBackBytes },
        ...(store.heldBytes === undefined ? [] : [{ name: 'store log (writes not yet in LMDB)', bytes: store.heldBytes }]),
        // the blob cache's blobs are (mostly) in these slabs: only the rest is counted here
        ...(store.readBufferBytes === undefined ? [] : [{ name: 'store read slabs beside the blob cache', bytes: Math.max(0, store.readBufferBytes - f.blobCacheBytes) }]),
      ];
    },
  }).catch((e: unknown) => {
    log(`no control socket (kvfs stats and kvfs profile will not reach this daemon): ${(e as Error).message}`);
    return undefined;
  });
  // Prometheus metrics (--metrics): the figures of `kvfs stats`, read at each scrape
  const metrics = metricsAt && control && await startMetrics(metricsAt, () => control.stats() as DaemonStats).then((m) => {
    log(`metrics at ${m.url}`);
    return m;
  }, (e: unknown) => {
    log(`no metrics: ${(e as Error).message}`);
    return undefined;
  });
  new Lifecycle({
    mountpoint: mnt, entry: entry!, closed: handle?.closed,
    sync: () => fs.sync(),
    close: async () => {
      control?.profilers.close();
      await metrics?.close().catch(() => undefined);
      await control?.server.close().catch(() => undefined);
      let failed: unknown;
      await fs.sync().catch((e: unknown) => { failed = e; });
      await fs.close().catch((e: unknown) => { failed ??= e; });
      await store.close().catch((e: unknown) => { failed ??= e; });
      if (failed) throw failed;
    },
    log,
    exit: (code) => {
      if (code === 0) removeRecord(recordPath);
      else writeRecord({ ...record, failed: true });
      process.exit(code);
    },
  });
  for (const sig of STOP_SIGNALS) process.off(sig, hold);
  for (const sig of held) process.kill(process.pid, sig);
  if (logsJson()) log(`mounted ${describeStore(url)} at ${mnt}`);
  else console.log(`kvfs: mounted ${describeStore(url)} at ${mnt}`);
  printWarnings();
  process.send?.({ mounted: mnt, pid: process.pid });
}

/**
 * --background: the daemon is this CLI run again with `args` (a foreground mount), detached, logging to
 * logFile (else a new file under <data dir>/logs/, 0600); returns once it is mounted, or fails with the
 * daemon's own reason.
 */
async function background(mnt: string, args: string[], logFile?: string): Promise<void> {
  let log = logFile ? resolve(logFile) : undefined;
  if (!log) {
    const logDir = join(dataDir(), 'logs');
    mkdirSync(logDir, { recursive: true, mode: 0o700 });
    log = join(logDir, `mount-${Date.now()}.log`);
  }
  let fd: number;
  try {
    fd = openSync(log, 'a', 0o600);
  } catch (e) {
    return fail(`cannot write the log file ${log}: ${(e as NodeJS.ErrnoException).code}`);
  }
  const logStart = fstatSync(fd).size;
  const child = spawn(process.execPath, [process.argv[1]!, ...args],
    { detached: true, stdio: ['ignore', fd, fd, 'ipc'] });
  await new Promise<void>((res, rej) => {
    const timer = setTimeout(() => rej(new CliError(`the daemon did not mount ${mnt} within 30 s (log: ${log})`)), 30_000);
    child.on('message', () => { clearTimeout(timer); res(); });
    child.on('exit', (code) => {
      clearTimeout(timer);
      // the daemon's own one-line reason, when it gave one, is the answer
      const why = readFileSync(log!, 'utf8').slice(logStart).split('\n')
        .filter((l) => l.startsWith('kvfs: ') && !l.startsWith('kvfs: warning: ')).pop();
      rej(new CliError(why ? `${why.slice('kvfs: '.length)} (log: ${log})` : `the daemon exited with code ${code} before mounting (log: ${log})`));
    });
  });
  child.removeAllListeners('exit');
  child.disconnect();
  child.unref();
  console.log(`kvfs: mounted at ${mnt} (daemon pid ${child.pid}, log ${log})`);
}

// ------------------------------------------------------------------ umount, status

/** the mount table's entry for a path given by a user (also through a symlinked parent); never stats it */
function findMount(path: string): MountEntry | undefined {
  const p = resolve(path);
  const m = mountAt(p);
  if (m) return m;
  try {
    return mountAt(join(realpathSync(dirname(p)), basename(p)));
  } catch {
    return undefined;
  }
}

/** the kvfs mount at a path, or a one-line refusal */
function kvfsMountAt(path: string): MountEntry {
  const m = findMount(path);
  if (!m) fail(`${resolve(path)} is not mounted`);
  if (!isKvfsMount(m)) fail(`${m!.mountPoint} is not a kvfs mount (it is ${m!.fsType} from ${m!.source}); unmount it with umount(8)`);
  return m!;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Unmounts a kvfs mount without ever touching it: the daemon is found from its record, a stopped or gone
 * daemon means a lazy unmount (said), a busy mount is refused with who holds it. After a clean unmount it
 * waits (--wait seconds) for the daemon's last commit and says how it ended.
 */
async function umount(argv: { mountpoint: string; lazy?: boolean; wait: number }): Promise<void> {
  inRange('wait', argv.wait, 0, 86400);
  const m = kvfsMountAt(argv.mountpoint);
  const mnt = m.mountPoint;
  const d = daemonOf(m);
  let lazy = !!argv.lazy;
  let why: string | undefined;
  if (!d) [lazy, why] = [true, 'its daemon is gone (killed or crashed): what it had not committed is lost, the rest is in the store'];
  else if (isStopped(processState(d.pid))) {
    [lazy, why] = [true, `its daemon (pid ${d.pid}) is stopped (SIGSTOP): it serves the processes still inside once it continues (kill -CONT ${d.pid}), then commits and exits`];
  }
  try {
    await unmount(mnt, { lazy, timeoutMs: 10_000 });
  } catch (e) {
    if (!(e instanceof UnmountError)) throw e;
    if (e.busy) {
      fail(`${mnt} is busy${holdersOf(mnt)}: close what uses it and try again, ` +
        `or detach it now with: kvfs umount --lazy ${mnt}`);
    }
    if (lazy || !e.timedOut) fail(e.message);
    [lazy, why] = [true, `the unmount did not return within 10 s (daemon pid ${d!.pid} stuck?)`];
    await unmount(mnt, { lazy: true, timeoutMs: 10_000 }).catch((e2: Error) => fail(e2.message));
  }
  if (lazy) {
    console.log(`kvfs: detached ${mnt} (lazy unmount)${why ? `: ${why}` : d ? `: daemon pid ${d.pid} serves the processes still inside, then commits and exits` : ''}`);
    return;
  }
  // The daemon sees the session end, commits what it still holds, and exits.
  const until = Date.now() + argv.wait * 1000;
  while (isAlive(processState(d!.pid)) && Date.now() < until) await sleep(50);
  if (isAlive(processState(d!.pid))) {
    console.log(`kvfs: unmounted ${mnt}; daemon pid ${d!.pid} is still committing${d!.log ? ` (log: ${d!.log})` : ''}`);
  } else if (readRecord(m)?.failed) {
    fail(`unmounted ${mnt}, but daemon pid ${d!.pid} could not commit everything${d!.log ? ` (log: ${d!.log})` : ''}`);
  } else {
    console.log(`kvfs: unmounted ${mnt}`);
  }
}

/** the volume's record and usage, as `kvfs status` prints them (the daemon's `volume` command too) */
async function volumeLines(store: KvStore, url: string): Promise<string[]> {
  const vol = await readVolume(store).catch((e: unknown) => (e instanceof StoreError && e.code === 'NOVOLUME' ? fail(noVolume(url)) : Promise.reject(e)));
  const inodes = await store.incr(K.inodeCount, 0);
  const bytes = await store.incr(K.byteCount, 0);
  const info = await store.info();
  return [
    `store:          ${describeStore(url)}`,
    `volume:         ${vol.name}`,
    `format version: ${vol.formatVersion}`,
    `chunk size:     ${vol.chunkSize}`,
    `created:        ${new Date(vol.created).toISOString()}`,
    `inodes:         ${inodes}`,
    `bytes:          ${bytes}`,
    `capacity:       ${vol.capacity ?? 'none'}`,
    `inode limit:    ${vol.inodeCapacity ?? 'none'}`,
    ...(info.freeBytes !== undefined ? [`store free:     ${info.freeBytes}`] : []),
    ...(info.reusableBytes ? [`store spare:    ${info.reusableBytes} (deleted blob files kept for reuse, counted as free)`] : []),
  ];
}

const isStoreUrl = (s: string) => /^[A-Za-z][A-Za-z0-9+.-]*:/.test(s) && !s.startsWith('/');

async function status(argv: { store?: string } & StoreArgs): Promise<void> {
  let url = argv.store ?? defaultStore();
  const lines: string[] = [];
  if (argv.store !== undefined && !isStoreUrl(argv.store)) {
    // a mountpoint: what is mounted there, then the volume when its store can be read from here
    const m = findMount(argv.store);
    if (!m) fail(`${resolve(argv.store)} is neither a store URL (local:PATH, memory:, redis://...) nor a mounted kvfs volume`);
    if (!isKvfsMount(m)) fail(`${m!.mountPoint} is not a kvfs mount (it is ${m!.fsType} from ${m!.source})`);
    const d = daemonOf(m!);
    url = d?.store ?? m!.source;
    lines.push(
      `mountpoint:     ${m!.mountPoint}`,
      `daemon:         ${d ? `pid ${d.pid} (${d.driver} driver, since ${d.started})${isStopped(processState(d.pid)) ? ', STOPPED' : ''}` : 'gone (clean up with: kvfs umount ' + m!.mountPoint + ')'}`,
      ...(d?.log ? [`log:            ${d.log}`] : []),
    );
    // the volume and the daemon's memory, through its control socket (when it answers)
    const asked = d && await connectTo(m!).then(async (c) => {
      try {
        return {
          volume: (await c.request('volume')) as string[],
          memory: (await c.request('memory')) as { rss: number; parts: { name: string; bytes: number }[] },
        };
      } finally {
        c.close();
      }
    }, () => undefined).catch(() => undefined);
    if (asked) {
      lines.push(`memory:         RSS ${human(asked.memory.rss)}`);
      for (const p of asked.memory.parts) lines.push(`  ${(p.name + ':').padEnd(20)} ${human(p.bytes).padStart(10)}`);
      console.log([...lines, ...asked.volume].join('\n'));
      return;
    }
    if (url.startsWith('memory:')) {
      lines.push(`store:          ${describeStore(url)}: its volume lives in the daemon's memory only`);
      console.log(lines.join('\n'));
      return;
    }
  }
  mustExist(url);
  await withStore(url, argv, async (store) => {
    console.log([...lines, ...(await volumeLines(store, url))].join('\n'));
    printWarnings();
  });
}

/** runs a diagnostics command on the kvfs mount at path; its errors are one-line CLI errors */
async function diagMount(path: string, run: (m: MountEntry) => Promise<void>): Promise<void> {
  const m = findMount(path);
  if (!m) fail(`${resolve(path)} is not a mountpoint`);
  try {
    await run(m!);
  } catch (e) {
    fail((e as Error).message);
  }
}

/** --watch SECONDS: a positive number (a bare --watch is 2 s) */
function watchSeconds(v: unknown): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (Number.isNaN(n)) return 2;
  if (!(n > 0 && n <= 3600)) fail(`bad --watch ${String(v)}: give seconds, 0 < SECONDS <= 3600`);
  return n;
}

// ------------------------------------------------------------------ mount(8) and fstab

/** what `kvfs install-helper` writes, and how it knows a file is its own */
const HELPER_MARK = '# kvfs mount helper';
const HELPER_NAMES = ['mount.kvfs', 'mount.fuse.kvfs'];

function helperScript(): string {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  return [
    '#!/bin/sh',
    `${HELPER_MARK}, written by \`kvfs install-helper\` (\`kvfs install-helper --uninstall\` removes it).`,
    '# mount(8) runs it for `mount -t kvfs STORE DIR -o OPTIONS` and fstab lines of type kvfs.',
    `exec ${q(process.execPath)} ${q(resolve(process.argv[1]!))} mount-helper "$@"`,
    '',
  ].join('\n');
}

function installHelper(argv: { uninstall?: boolean; dir: string }): void {
  if (process.getuid?.() !== 0) fail('install-helper writes into ' + argv.dir + ': run it as root');
  const ours = (p: string) => { try { return readFileSync(p, 'utf8').includes(HELPER_MARK); } catch { return false; } };
  for (const name of HELPER_NAMES) {
    const p = join(argv.dir, name);
    if (existsSync(p) && !ours(p)) fail(`${p} exists and is not kvfs's helper: remove it first, or pass --dir`);
  }
  for (const name of HELPER_NAMES) {
    const p = join(argv.dir, name);
    if (argv.uninstall) {
      rmSync(p, { force: true });
    } else {
      writeFileSync(`${p}.tmp`, helperScript(), { mode: 0o755 });
      renameSync(`${p}.tmp`, p);
    }
  }
  console.log(argv.uninstall
    ? `kvfs: removed ${HELPER_NAMES.map((n) => join(argv.dir, n)).join(' and ')}`
    : `kvfs: installed ${HELPER_NAMES.map((n) => join(argv.dir, n)).join(' and ')}: mount -t kvfs STORE DIR -o allow_other,cache_mb=256 works, and fstab lines of type kvfs`);
}

/** mount(8)'s own options, which the helper takes and does nothing with (they are mount(8)'s or fstab's business) */
const MOUNT8_OPTIONS = new Set(['defaults', 'rw', 'auto', 'noauto', 'user', 'nouser', 'users', 'owner', 'group', '_netdev',
  'nofail', 'suid', 'nosuid', 'dev', 'nodev', 'exec', 'noexec', 'async', 'atime', 'noatime', 'relatime', 'norelatime',
  'strictatime', 'nodiratime', 'diratime', 'loud', 'silent']);

/**
 * `-o` options of mount(8) as mount command arguments: `name` -> --name, `name=value` -> --name value
 * (`_` for `-`); mount(8)'s own options are dropped; anything else is a one-line error naming it.
 */
export function helperArgs(options: string, sloppy = false): string[] {
  const args: string[] = [];
  for (const opt of options.split(',').filter(Boolean)) {
    const eq = opt.indexOf('=');
    const name = (eq < 0 ? opt : opt.slice(0, eq)).replace(/_/g, '-');
    const value = eq < 0 ? undefined : opt.slice(eq + 1);
    if (MOUNT8_OPTIONS.has(opt) || opt.startsWith('x-') || opt.startsWith('comment=')) continue;
    if (opt === 'ro') fail('read-only mounts are not supported yet: remove ro from the options');
    const spec = (MOUNT_OPTIONS as Record<string, { type: string }>)[name];
    if (!spec || name === 'background') {
      if (sloppy) continue;
      fail(`unknown mount option '${opt}' (kvfs takes: ${Object.keys(MOUNT_OPTIONS).filter((n) => n !== 'background').map((n) => n.replace(/-/g, '_')).join(', ')})`);
    }
    if (spec!.type === 'boolean') {
      if (value === undefined || value === 'true' || value === '1') args.push(`--${name}`);
      else if (value === 'false' || value === '0') args.push(`--no-${name}`);
      else fail(`mount option ${opt}: give ${name.replace(/-/g, '_')} alone, or =true / =false`);
    } else {
      if (value === undefined || value === '') fail(`mount option ${opt} needs a value: ${opt}=VALUE`);
      args.push(`--${name}`, value!);
    }
  }
  return args;
}

/** mount(8)'s call: mount.kvfs STORE DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]; mounts in the background */
async function mountHelper(argv: string[]): Promise<void> {
  const pos: string[] = [];
  let options = '';
  let sloppy = false;
  let fake = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '-o') options += ',' + (argv[++i] ?? '');
    else if (a.startsWith('-o')) options += ',' + a.slice(2);
    else if (a === '-t') i++;
    else if (a === '-N') fail('mount.kvfs does not mount into another namespace (-N)');
    else if (/^-[sfnvr]+$/.test(a)) { sloppy ||= a.includes('s'); fake ||= a.includes('f'); if (a.includes('r')) fail('read-only mounts are not supported yet (-r)'); }
    else if (a.startsWith('-')) fail(`mount.kvfs: unknown flag ${a}`);
    else pos.push(a);
  }
  if (pos.length !== 2) fail('usage: mount.kvfs STORE MOUNTPOINT [-o OPTIONS] (STORE "default" is the default store)');
  const [spec, dir] = pos as [string, string];
  if (fake) return;
  // `kvfs mount` itself, with its checks, in the background: mount(8) returns once the volume is mounted
  await main(['mount', ...(spec === 'default' ? [] : [spec]), resolve(dir), ...helperArgs(options, sloppy), '--background']);
}

// ------------------------------------------------------------------ the parser

/** the arguments of this run (after the node and script paths), which --background passes on to the daemon */
let cliArgs: string[] = [];

async function main(args: string[]): Promise<void> {
  cliArgs = args;
  // mount(8)'s helper call has its own argument shape (mount.kvfs SPEC DIR -o a,b=c)
  if (args[0] === 'mount-helper') return mountHelper(args.slice(1));
  await yargs(args)
    .scriptName('kvfs')
    .usage('$0 <command> [options]\n\nA FUSE filesystem that keeps every file as key-value objects in a store.\n' +
      'STORE is a URL: local:PATH (embedded LMDB in a directory), memory: (in the daemon\'s memory, for tests),\n' +
      'redis://HOST:PORT/VOLUME (one Redis server) or redis-cluster://HOST:PORT,.../VOLUME (a Redis Cluster or Kvrocks cluster;\n' +
      'rediss:// for TLS). The Redis password comes from KVFS_REDIS_PASSWORD or --password-file, never from the URL.')
    .command('format [store]', 'write a new, empty volume into a store', (y) => y.options(STORE_OPTIONS)
      .positional('store', { type: 'string', describe: 'store URL (default: the per-user default store)' })
      .option('name', { type: 'string', describe: 'volume name ([A-Za-z0-9_-])' })
      .option('chunk-size', { type: 'string', describe: 'chunk size, a power of two from 4K to 64M (default 256K)' })
      .option('capacity', { type: 'string', describe: 'the volume\'s quota of file data, e.g. 100G (default: none, the store\'s room)' })
      .option('inodes', { type: 'string', describe: 'the most files, directories and links the volume may hold (default: no limit)' })
      .example('$0 format local:/srv/kvfs', 'format an LMDB store in /srv/kvfs')
      .example('$0 format local:./data --chunk-size 1M', 'with 1 MiB chunks')
      .example('$0 format redis-cluster://10.0.0.1:7000/vol1', 'a volume named vol1 on a Redis Cluster')
      .example('$0 format local:/srv/kvfs --capacity 500G', 'with a quota: df shows 500G, writes past it get ENOSPC'),
    (a) => format(a as never))
    .command('gc <store>', 'collect a volume\'s garbage: purge and GC queues, orphans of gone mounts; --sweep: blobs a crash left unreferenced (safe beside live mounts)', (y) => y.options(STORE_OPTIONS)
      .positional('store', { type: 'string', describe: 'store URL' })
      .option('sweep', { type: 'boolean', describe: 'also find blobs nothing references (left by a crash) and delete them' })
      .option('dry-run', { type: 'boolean', describe: 'change nothing; report what would go' })
      .option('grace', { type: 'number', default: 60, describe: 'seconds a leaked blob must stay unreferenced before --sweep deletes it' })
      .example('$0 gc local:/srv/kvfs --sweep --dry-run', 'what a sweep would reclaim'),
    (a) => gc(a as never))
    .command('fsck <store>', 'check a volume\'s invariants (entries, link counts, chunk maps, blobs, counters); --repair fixes what it can. Exit 0: clean, 1: repaired, 4: problems left', (y) => y.options(STORE_OPTIONS)
      .positional('store', { type: 'string', describe: 'store URL' })
      .option('repair', { type: 'boolean', describe: 'fix what can be fixed (the volume must not be mounted), and say what was done' })
      .option('json', { type: 'boolean', describe: 'also print the report as one JSON line' }),
    (a) => fsckCmd(a as never))
    .command('load [source] [target]', 'load a local directory\'s contents into a volume, straight into the store (no FUSE): a job that resumes, can be canceled, and waits out a throttling store', (y) => y.options(STORE_OPTIONS)
      .positional('source', { type: 'string', describe: 'SRC_DIR (with --status, --cancel, --clear: STORE[:/PATH])' })
      .positional('target', { type: 'string', describe: 'STORE[:/PATH]: the store (default: the per-user default store) and the path in it (default /; made when missing); :/PATH alone names a path of the default store' })
      .option('jobs', { type: 'number', default: 16, describe: 'writes under way at most (lowered while the store throttles, raised when it recovers)' })
      .option('deadline', { type: 'number', default: 300, describe: 'seconds without a file written before the job fails (a store that stays down)' })
      .option('verify', { type: 'boolean', default: true, describe: 'read every file back and compare checksums (--no-verify skips it)' })
      .option('status', { type: 'boolean', describe: 'show the job of STORE[:/PATH], or every job of STORE' })
      .option('cancel', { type: 'boolean', describe: 'stop the job at its next safe point (with --force: at once)' })
      .option('force', { type: 'boolean', describe: 'with --cancel: stop at once and mark the job canceled' })
      .option('clear', { type: 'boolean', describe: 'remove an ended or canceled job and what it left unfinished' })
      .option('json', { type: 'boolean', describe: 'with --status: also print the jobs as JSON' })
      .example('$0 load ./dataset local:/srv/kvfs:/data', 'load ./dataset into /data of a local volume')
      .example('$0 load --status local:/srv/kvfs', 'every load job of the volume')
      .example('$0 load --cancel local:/srv/kvfs:/data', 'stop it at its next safe point'),
    (a) => loadCommand(a as never, {
      fail, defaultStore, onVolume: (url, what, busy, fn) => onVolume(url, a as never as StoreArgs, what, busy, fn),
    }))
    .command('config <store>', 'show or change a volume\'s quota (mounted or not: mounts take it within 5 s)', (y) => y.options(STORE_OPTIONS)
      .positional('store', { type: 'string', describe: 'store URL' })
      .option('capacity', { type: 'string', describe: 'quota of file data, e.g. 100G, or none' })
      .option('inodes', { type: 'string', describe: 'most inodes, or none' })
      .example('$0 config local:/srv/kvfs --capacity 1T', 'raise the quota to 1 TiB')
      .example('$0 config local:/srv/kvfs --capacity none', 'remove it'),
    (a) => config(a as never))
    .command('mount <first> [second]', 'mount a volume: kvfs mount [STORE] MOUNTPOINT (a bare mountpoint mounts the default store, formatting it on first use)', (y) => y.options(MOUNT_OPTIONS)
      .positional('first', { type: 'string', describe: 'STORE URL, or the MOUNTPOINT when it is the only argument' })
      .positional('second', { type: 'string', describe: 'MOUNTPOINT' })
      .example('$0 mount ./mnt --mkdir', 'mount the default volume at ./mnt, creating ./mnt')
      .example('$0 mount local:/srv/kvfs /mnt/kvfs --background', 'mount an LMDB volume and return')
      .example('$0 mount memory: /tmp/scratch', 'a throw-away volume in memory')
      .example('KVFS_REDIS_PASSWORD=... $0 mount redis-cluster://10.0.0.1:7000/vol1 /mnt/vol1', 'a volume on a Redis Cluster, shared with other mounts'),
    (a) => mount({ ...(a as never as MountArgs), ...(a.second === undefined
      ? { store: undefined, mountpoint: a.first as string } : { store: a.first as string, mountpoint: a.second }) }))
    .command(['umount <mountpoint>', 'unmount <mountpoint>'], 'unmount a kvfs mount: the daemon commits and exits (a mount whose daemon is stopped or gone is detached lazily)', (y) => y
      .positional('mountpoint', { type: 'string', demandOption: true })
      .option('lazy', { type: 'boolean', describe: 'detach now even if busy: the daemon serves the processes inside until the last leaves' })
      .option('wait', { type: 'number', default: 60, describe: 'seconds to wait for the daemon\'s last commit' })
      .example('$0 umount ./mnt', 'unmount ./mnt'),
    (a) => umount(a as never))
    .command('status [store]', 'show a volume\'s record and usage; given a mountpoint, what is mounted there', (y) => y.options(STORE_OPTIONS)
      .positional('store', { type: 'string', describe: 'store URL or mountpoint (default: the per-user default store)' })
      .example('$0 status local:/srv/kvfs', 'show that volume')
      .example('$0 status /mnt/kvfs', 'show the volume mounted there and its daemon'),
    (a) => status(a as never))
    .command('stats <mountpoint>', 'what a live mount is doing: requests per opcode (count, rate, latency), buffer pool, caches, memory', (y) => y
      .positional('mountpoint', { type: 'string', demandOption: true })
      .option('json', { type: 'boolean', describe: 'print the daemon\'s figures as one JSON object (a line per interval with --watch)' })
      .option('watch', { type: 'number', describe: 'print again every SECONDS (redrawn on a terminal, a line each otherwise)' })
      .example('$0 stats ./mnt', 'the figures of the mount at ./mnt')
      .example('$0 stats ./mnt --watch 1', 'every second'),
    (a) => diagMount(a.mountpoint as string, (m) => statsCommand(m, { json: a.json as boolean | undefined, watch: watchSeconds(a.watch) })))
    .command('profile <kind> [action] [mountpoint]', 'profile a live mount: heap (start|stop|dump) or cpu, in pprof\'s format', (y) => y
      .positional('kind', { choices: ['heap', 'cpu'] as const, demandOption: true })
      .positional('action', { type: 'string', describe: 'heap: start, stop or dump; cpu: the MOUNTPOINT' })
      .positional('mountpoint', { type: 'string' })
      .option('interval', { type: 'number', describe: 'heap start: a sample every BYTES allocated on average (default 524288)' })
      .option('allocations', { type: 'boolean', describe: 'heap start: keep objects the GC collected too (what was allocated, not only what is live)' })
      .option('output', { alias: 'o', type: 'string', describe: 'dump and cpu: the file to write (gzipped pprof, .pb.gz)' })
      .option('seconds', { type: 'number', default: 10, describe: 'cpu: how long to profile' })
      .example('$0 profile heap start ./mnt', 'start sampling the heap of the daemon of ./mnt')
      .example('$0 profile heap dump ./mnt -o heap.pb.gz', 'write what is sampled now (go tool pprof -top heap.pb.gz)')
      .example('$0 profile cpu ./mnt --seconds 30 -o cpu.pb.gz', 'a 30 s CPU profile'),
    (a) => {
      const cpu = a.kind === 'cpu';
      const mnt = cpu ? (a.action ?? a.mountpoint) : a.mountpoint;
      if (!mnt) fail(`kvfs profile ${a.kind}: name the MOUNTPOINT`);
      return diagMount(mnt!, (m) => profileCommand(m, {
        kind: a.kind as string, action: cpu ? undefined : (a.action as string), interval: a.interval as number | undefined,
        allocations: a.allocations as boolean | undefined,
        output: a.output as string | undefined, seconds: a.seconds as number,
      }));
    })
    .command('log-level <mountpoint> [level]', 'show or set a live mount\'s log level: error, warn, info, debug (every request), trace', (y) => y
      .positional('mountpoint', { type: 'string', demandOption: true })
      .positional('level', { type: 'string' })
      .example('$0 log-level ./mnt debug', 'log every request the daemon of ./mnt answers')
      .example('$0 log-level ./mnt info', 'back to the default'),
    (a) => diagMount(a.mountpoint as string, (m) => logLevelCommand(m, a.level as string | undefined)))
    .command('install-helper', 'put mount.kvfs where mount(8) finds it, for `mount -t kvfs` and /etc/fstab (root)', (y) => y
      .option('uninstall', { type: 'boolean', describe: 'remove the helper instead' })
      .option('dir', { type: 'string', default: '/usr/sbin', describe: 'where mount(8) looks for helpers' }),
    (a) => installHelper(a as never))
    .demandCommand(1, 'name a command: format, mount, umount, status, config, gc, fsck, stats, profile, log-level or install-helper')
    .strict()
    .help()
    .fail((msg, err) => {
      if (err) throw err;
      console.error(`kvfs: ${String(msg).replace(/\s*\n\s*/g, ' ')} (see kvfs --help)`);
      process.exit(2);
    })
    .parseAsync();
}

main(hideBin(process.argv)).catch((e: unknown) => {
  const msg = e instanceof CliError || e instanceof StoreError ? e.message : (e as Error)?.stack ?? String(e);
  console.error(`kvfs: ${msg}`);
  process.exit(1);
});
