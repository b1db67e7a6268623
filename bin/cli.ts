/**
 * The kvfs command line: format, mount, umount, status. It wires the parts together; nothing imports it.
 * Every failure is one line on stderr starting with `kvfs: ` and a non-zero exit (1; 2 for usage errors).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { StoreError } from '../src/backend/errors.js';
import type { KvStore } from '../src/backend/kv.js';
import { describeStore, openStore, type OpenStoreOptions } from '../src/backend/open-store.js';
import { isRedisUrl, parseRedisUrl } from '../src/backend/redis-url.js';
import { Filesystem } from '../src/fs/filesystem.js';
import { mountLibfuse } from '../src/fs/fuse/libfuse-driver.js';
import { mountNative, type NativeMount } from '../src/fs/fuse/native-driver.js';
import { isDeadMount, mountAt, unmount } from '../src/fs/fuse/mount-table.js';
import { K } from '../src/fs/schema.js';
import { chunkSizeProblem, formatVolume, readVolume } from '../src/fs/volume.js';
import { fuseDeviceProblem } from '../src/native.js';

class CliError extends Error {}
const fail = (msg: string): never => { throw new CliError(msg); };

/** where the default volume lives: $KVFS_DATA_DIR, else $XDG_DATA_HOME/kvfs, else ~/.local/share/kvfs */
function dataDir(): string {
  if (process.env.KVFS_DATA_DIR) return resolve(process.env.KVFS_DATA_DIR);
  const xdg = process.env.XDG_DATA_HOME || join(homedir(), '.local', 'share');
  return join(xdg, 'kvfs');
}

const defaultStore = () => `local:${join(dataDir(), 'default')}`;

/** "256K", "1M", "65536" -> bytes; undefined for anything else */
function parseSize(s: string | number): number | undefined {
  const m = /^(\d+)\s*([kmg]i?b?)?$/i.exec(String(s).trim());
  if (!m) return undefined;
  const unit = (m[2] ?? '').toLowerCase()[0];
  return Number(m[1]) * (unit === 'k' ? 1024 : unit === 'm' ? 1 << 20 : unit === 'g' ? 1 << 30 : 1);
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
    warn: (m) => warnings.push(m),
  };
}

/** the one-line error for a store that holds no volume */
const noVolume = (url: string) => `${describeStore(url)} holds no kvfs volume; create one with: kvfs format ${url}`;

const withStoreOptions = <T>(y: Argv<T>) => y
  .option('store-timeout', { type: 'number', default: 10, describe: 'seconds a store call may take, retries included, before it fails (EIO)' })
  .option('password-file', { type: 'string', describe: 'file whose first line is the Redis password (or set KVFS_REDIS_PASSWORD)' })
  .option('tls-ca', { type: 'string', describe: 'CA certificate file for rediss:// URLs' })
  .option('tls-cert', { type: 'string', describe: 'client certificate file for rediss:// URLs' })
  .option('tls-key', { type: 'string', describe: 'client key file for rediss:// URLs' });

async function withStore<T>(url: string, args: StoreArgs, fn: (s: KvStore) => Promise<T>): Promise<T> {
  const store = await openStore(url, storeOptions(args));
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

// ------------------------------------------------------------------ format

async function format(argv: { store?: string; name?: string; chunkSize?: string } & StoreArgs): Promise<void> {
  const url = argv.store ?? defaultStore();
  // a Redis volume is named by its URL
  const name = argv.name ?? (isRedisUrl(url) ? parseRedisUrl(url).volume : undefined);
  const chunkSize = chunkSizeArg(argv.chunkSize);
  if (argv.name !== undefined && !/^[A-Za-z0-9_-]{1,64}$/.test(argv.name)) {
    fail(`bad volume name '${argv.name}': use 1 to 64 of A-Z a-z 0-9 _ -`);
  }
  await withStore(url, argv, async (store) => {
    const vol = await formatVolume(store, { name, chunkSize });
    console.log(`kvfs: formatted ${describeStore(url)}: volume '${vol.name}', chunk size ${vol.chunkSize}`);
    printWarnings();
  });
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
  writeBufferMb: number;
  attrTimeout?: number;
  entryTimeout: number;
  bufferPoolMb: number;
  readers: number;
  writebackCache?: boolean;
  debugBuffers?: boolean;
  requestTimeout: number;
}

function checkMountpoint(mnt: string, nonempty: boolean): void {
  if (isDeadMount(mnt)) fail(`${mnt} is a mount whose daemon is gone; clean it up with: kvfs umount ${mnt}`);
  let st;
  try {
    st = statSync(mnt);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    fail(code === 'ENOENT' ? `mountpoint ${mnt} does not exist (create it with: mkdir -p ${mnt})` : `cannot use mountpoint ${mnt}: ${code}`);
  }
  if (!st!.isDirectory()) fail(`mountpoint ${mnt} is not a directory`);
  const m = mountAt(mnt);
  if (m) fail(`${mnt} is already mounted (${m.fsType} from ${m.source})`);
  if (!nonempty && readdirSync(mnt).length > 0) fail(`mountpoint ${mnt} is not empty (use --nonempty to mount over its contents)`);
}

/** a number option within [min, max], else a one-line error naming the option */
function inRange(name: string, v: number | undefined, min: number, max: number): void {
  if (v === undefined) return;
  if (Number.isNaN(v)) fail(`bad --${name}: not a number (give a number from ${min} to ${max})`);
  if (!Number.isFinite(v) || v < min || v > max) fail(`bad --${name} ${v}: give a number from ${min} to ${max}`);
}

async function mount(argv: MountArgs): Promise<void> {
  inRange('buffer-pool-mb', argv.bufferPoolMb, 4, 65536);
  inRange('readers', argv.readers, 1, 64);
  if (argv.readers !== undefined && !Number.isInteger(argv.readers)) fail(`bad --readers ${argv.readers}: give a whole number`);
  inRange('cache-mb', argv.cacheMb, 0, 1 << 20);
  inRange('write-buffer-mb', argv.writeBufferMb, 1, 1 << 20);
  inRange('attr-timeout', argv.attrTimeout, 0, 86400);
  inRange('entry-timeout', argv.entryTimeout, 0, 86400);
  inRange('request-timeout', argv.requestTimeout, 0, 86400);
  const url = argv.store ?? defaultStore();
  const autoFormat = argv.store === undefined || url.startsWith('memory:');
  const mnt = resolve(argv.mountpoint);
  const chunkSize = chunkSizeArg(argv.chunkSize);
  if (argv.mkdir && !existsSync(mnt)) mkdirSync(mnt, { recursive: true });
  checkMountpoint(mnt, !!argv.nonempty);
  const dev = fuseDeviceProblem();
  if (dev) fail(dev);
  if (!autoFormat) mustExist(url);
  if (argv.background) return background(mnt);

  const store = await openStore(url, storeOptions(argv));
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
      console.error(`kvfs: formatted a new volume in ${describeStore(url)}`);
    }
    fs = await Filesystem.open(store, { blobCacheBytes: argv.cacheMb << 20, writeBufferBytes: argv.writeBufferMb << 20 });
  } catch (e) {
    await store.close().catch(() => undefined);
    throw e;
  }
  const mounting = argv.driver === 'libfuse'
    ? mountLibfuse(fs, mnt, {
      allowOther: argv.allowOther, debug: argv.debug, attrTimeout: argv.attrTimeout, entryTimeout: argv.entryTimeout,
    })
    : mountNative(fs, mnt, {
      allowOther: argv.allowOther, attrTimeout: argv.attrTimeout, entryTimeout: argv.entryTimeout,
      poolBytes: argv.bufferPoolMb << 20, readers: argv.readers, writebackCache: argv.writebackCache,
      debugPool: argv.debugBuffers, requestTimeout: argv.requestTimeout,
    });
  const handle = await mounting.catch(async (e) => {
    await fs.close().catch(() => undefined);
    await store.close().catch(() => undefined);
    return fail(`cannot mount ${mnt}: ${(e as Error).message}`);
  });

  // Opt-in, for the benches until `kvfs status MNT` exists: KVFS_STATS_FILE gets the native driver's
  // stats() as JSON every 100 ms (written to FILE.tmp, then renamed over FILE).
  const statsFile = process.env.KVFS_STATS_FILE;
  const stats = (handle as Partial<NativeMount>).stats;
  const statsTimer = statsFile && stats ? setInterval(() => {
    try {
      writeFileSync(`${statsFile}.tmp`, JSON.stringify(stats.call(handle)));
      renameSync(`${statsFile}.tmp`, statsFile);
    } catch { /* a stale file tells the reader */ }
  }, 100) : undefined;

  let stopping = false;
  const stop = async (why: string) => {
    if (stopping) return;
    stopping = true;
    clearInterval(watch);
    clearInterval(statsTimer);
    console.error(`kvfs: ${why}: unmounting ${mnt}`);
    if (mountAt(mnt)) await handle.unmount().catch((e) => console.error(`kvfs: ${(e as Error).message}`));
    await fs.close().catch((e) => console.error(`kvfs: ${(e as Error).message}`));
    await store.close().catch(() => undefined);
    process.exit(0);
  };
  // Unmounted from outside (kvfs umount, fusermount -u, umount): shut down cleanly.
  const watch = setInterval(() => { if (!mountAt(mnt)) void stop('unmounted'); }, 500);
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  console.log(`kvfs: mounted ${describeStore(url)} at ${mnt}`);
  printWarnings();
  process.send?.({ mounted: mnt, pid: process.pid });
}

/** --background: the same command without it, detached, logging to a file; returns once it is mounted */
async function background(mnt: string): Promise<void> {
  const logDir = join(dataDir(), 'logs');
  mkdirSync(logDir, { recursive: true });
  const log = join(logDir, `mount-${Date.now()}.log`);
  const fd = openSync(log, 'a');
  const args = process.argv.slice(1).filter((a) => a !== '--background' && a !== '--background=true');
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', fd, fd, 'ipc'] });
  await new Promise<void>((res, rej) => {
    const timer = setTimeout(() => rej(new CliError(`the daemon did not mount ${mnt} within 30 s (log: ${log})`)), 30_000);
    child.on('message', () => { clearTimeout(timer); res(); });
    child.on('exit', (code) => {
      clearTimeout(timer);
      // the daemon's own one-line reason, when it gave one, is the answer
      const why = readFileSync(log, 'utf8').split('\n').filter((l) => l.startsWith('kvfs: ') && !l.startsWith('kvfs: warning: ')).pop();
      rej(new CliError(why ? `${why.slice('kvfs: '.length)} (log: ${log})` : `the daemon exited with code ${code} before mounting (log: ${log})`));
    });
  });
  child.removeAllListeners('exit');
  child.disconnect();
  child.unref();
  console.log(`kvfs: mounted at ${mnt} (daemon pid ${child.pid}, log ${log})`);
}

// ------------------------------------------------------------------ umount, status

async function umount(argv: { mountpoint: string; lazy?: boolean }): Promise<void> {
  const mnt = resolve(argv.mountpoint);
  if (!mountAt(mnt)) fail(`${mnt} is not mounted`);
  try {
    await unmount(mnt, { lazy: argv.lazy });
  } catch (e) {
    fail((e as Error).message.replace(/\n/g, ' '));
  }
  console.log(`kvfs: unmounted ${mnt}`);
}

async function status(argv: { store?: string } & StoreArgs): Promise<void> {
  const url = argv.store ?? defaultStore();
  mustExist(url);
  await withStore(url, argv, async (store) => {
    const vol = await readVolume(store).catch((e: unknown) => (e instanceof StoreError && e.code === 'NOVOLUME' ? fail(noVolume(url)) : Promise.reject(e)));
    const inodes = await store.incr(K.inodeCount, 0);
    const bytes = await store.incr(K.byteCount, 0);
    const info = await store.info();
    console.log([
      `store:          ${describeStore(url)}`,
      `volume:         ${vol.name}`,
      `format version: ${vol.formatVersion}`,
      `chunk size:     ${vol.chunkSize}`,
      `created:        ${new Date(vol.created).toISOString()}`,
      `inodes:         ${inodes}`,
      `bytes:          ${bytes}`,
      ...(info.freeBytes !== undefined ? [`store free:     ${info.freeBytes}`] : []),
    ].join('\n'));
    printWarnings();
  });
}

// ------------------------------------------------------------------ the parser

async function main(): Promise<void> {
  await yargs(hideBin(process.argv))
    .scriptName('kvfs')
    .usage('$0 <command> [options]\n\nA FUSE filesystem that keeps every file as key-value objects in a store.\n' +
      'STORE is a URL: local:PATH (embedded LMDB in a directory), memory: (in the daemon\'s memory, for tests),\n' +
      'redis://HOST:PORT/VOLUME (one Redis server) or redis-cluster://HOST:PORT,.../VOLUME (a Redis Cluster or Kvrocks cluster;\n' +
      'rediss:// for TLS). The Redis password comes from KVFS_REDIS_PASSWORD or --password-file, never from the URL.')
    .command('format [store]', 'write a new, empty volume into a store', (y) => withStoreOptions(y)
      .positional('store', { type: 'string', describe: 'store URL (default: the per-user default store)' })
      .option('name', { type: 'string', describe: 'volume name ([A-Za-z0-9_-])' })
      .option('chunk-size', { type: 'string', describe: 'chunk size, a power of two from 4K to 64M (default 256K)' })
      .example('$0 format local:/srv/kvfs', 'format an LMDB store in /srv/kvfs')
      .example('$0 format local:./data --chunk-size 1M', 'with 1 MiB chunks')
      .example('$0 format redis-cluster://10.0.0.1:7000/vol1', 'a volume named vol1 on a Redis Cluster'),
    (a) => format(a as never))
    .command('mount <first> [second]', 'mount a volume: kvfs mount [STORE] MOUNTPOINT (a bare mountpoint mounts the default store, formatting it on first use)', (y) => withStoreOptions(y)
      .positional('first', { type: 'string', describe: 'STORE URL, or the MOUNTPOINT when it is the only argument' })
      .positional('second', { type: 'string', describe: 'MOUNTPOINT' })
      .option('background', { type: 'boolean', describe: 'return once mounted; the daemon keeps running' })
      .option('allow-other', { type: 'boolean', describe: 'let other users in (modes and owners then decide)' })
      .option('nonempty', { type: 'boolean', describe: 'mount over a non-empty directory' })
      .option('mkdir', { type: 'boolean', describe: 'create the mountpoint when it does not exist' })
      .option('driver', { type: 'string', default: 'native', choices: ['native', 'libfuse'], describe: 'FUSE driver: kvfs\'s own channel to /dev/fuse, or libfuse 2 through fuse-native' })
      .option('buffer-pool-mb', { type: 'number', default: 64, describe: 'MiB of request and reply buffers (native driver); requests wait when they are in use' })
      .option('readers', { type: 'number', default: 2, describe: 'reader threads on /dev/fuse (native driver)' })
      .option('debug-buffers', { type: 'boolean', describe: 'keep the stack of every buffer taken; report those never released at unmount' })
      .option('request-timeout', { type: 'number', default: 300, describe: 'seconds before an unanswered request is answered EIO (0: never)' })
      .option('writeback-cache', { type: 'boolean', describe: 'let the kernel cache writes (native driver)' })
      .option('chunk-size', { type: 'string', describe: 'chunk size when this mount formats a new volume' })
      .option('cache-mb', { type: 'number', default: 64, describe: 'MiB of file data cached in memory' })
      .option('write-buffer-mb', { type: 'number', default: 64, describe: 'MiB of write-back buffers before writes commit early' })
      .option('attr-timeout', { type: 'number', describe: 'seconds the kernel caches attributes (default 1; 0 with --driver libfuse)' })
      .option('entry-timeout', { type: 'number', default: 1, describe: 'seconds the kernel caches names' })
      .option('debug', { type: 'boolean', describe: 'log every FUSE request' })
      .example('$0 mount ./mnt --mkdir', 'mount the default volume at ./mnt, creating ./mnt')
      .example('$0 mount local:/srv/kvfs /mnt/kvfs --background', 'mount an LMDB volume and return')
      .example('$0 mount memory: /tmp/scratch', 'a throw-away volume in memory')
      .example('KVFS_REDIS_PASSWORD=... $0 mount redis-cluster://10.0.0.1:7000/vol1 /mnt/vol1', 'a volume on a Redis Cluster, shared with other mounts'),
    (a) => mount({ ...(a as never as MountArgs), ...(a.second === undefined
      ? { store: undefined, mountpoint: a.first as string } : { store: a.first as string, mountpoint: a.second }) }))
    .command(['umount <mountpoint>', 'unmount <mountpoint>'], 'unmount (also a mount whose daemon died)', (y) => y
      .positional('mountpoint', { type: 'string', demandOption: true })
      .option('lazy', { type: 'boolean', describe: 'detach now even if busy' })
      .example('$0 umount ./mnt', 'unmount ./mnt'),
    (a) => umount(a as never))
    .command('status [store]', 'show a volume\'s record and usage', (y) => withStoreOptions(y)
      .positional('store', { type: 'string', describe: 'store URL (default: the per-user default store)' })
      .example('$0 status local:/srv/kvfs', 'show that volume'),
    (a) => status(a as never))
    .demandCommand(1, 'name a command: format, mount, umount or status')
    .strict()
    .help()
    .fail((msg, err) => {
      if (err) throw err;
      console.error(`kvfs: ${String(msg).replace(/\s*\n\s*/g, ' ')} (see kvfs --help)`);
      process.exit(2);
    })
    .parseAsync();
}

main().catch((e: unknown) => {
  const msg = e instanceof CliError || e instanceof StoreError ? e.message : (e as Error)?.stack ?? String(e);
  console.error(`kvfs: ${msg}`);
  process.exit(1);
});

