/**
 * Creating and opening a volume: the volume record and the root directory, written in one commit.
 */
import type { KvStore } from '../backend/kv.js';
import { StoreError } from '../backend/errors.js';
import {
  FORMAT_VERSION, K, decodeVolume, encodeInode, encodeVolume, nowTs, type VolumeRecord,
} from './schema.js';
import { ROOT_INO } from './types.js';

export const DEFAULT_CHUNK_SIZE = 256 * 1024;
export const MIN_CHUNK_SIZE = 4096;
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024;

export interface FormatOptions {
  name?: string;
  chunkSize?: number;
  /** owner of the root directory */
  uid?: number;
  gid?: number;
  /** a quota: bytes of file data, and inodes (limits.ts) */
  capacity?: number;
  inodeCapacity?: number;
}

/** Checks a chunk size; returns an error message, or undefined when it is good. */
export function chunkSizeProblem(n: number): string | undefined {
  if (!Number.isInteger(n) || n < MIN_CHUNK_SIZE || n > MAX_CHUNK_SIZE || (n & (n - 1)) !== 0) {
    return `bad chunk size ${n}: it must be a power of two from ${MIN_CHUNK_SIZE} (4K) to ${MAX_CHUNK_SIZE} (64M)`;
  }
  return undefined;
}

export function checkVolumeName(name: string): void {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(name)) {
    throw new StoreError('INVALID', `bad volume name '${name}': use 1 to 64 of A-Z a-z 0-9 _ -`);
  }
}

/**
 * Writes a new volume. Refuses (INVALID) when the store already holds one, so formatting never damages data.
 */
export async function formatVolume(store: KvStore, opts: FormatOptions = {}): Promise<VolumeRecord> {
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  const problem = chunkSizeProblem(chunkSize);
  if (problem) throw new StoreError('INVALID', problem);
  const name = opts.name ?? 'kvfs';
  checkVolumeName(name);
  const limits = checkLimits({ capacity: opts.capacity, inodeCapacity: opts.inodeCapacity });
  const vol: VolumeRecord = { name, chunkSize, created: Date.now(), formatVersion: FORMAT_VERSION, ...limits };
  const t = nowTs();
  const root = encodeInode({
    ino: ROOT_INO, version: 1, mode: 0o40755, nlink: 2, uid: opts.uid ?? process.getuid?.() ?? 0,
    gid: opts.gid ?? process.getgid?.() ?? 0, rdev: 0, size: 4096, atime: t, mtime: t, ctime: t,
    parent: ROOT_INO, children: 0, stored: 0, truncFrom: 0,
  });
  const ok = await store.commit(
    [{ key: K.volume, value: undefined }, { key: K.inode(ROOT_INO), value: undefined }],
    [
      { key: K.volume, value: encodeVolume(vol) },
      { key: K.inode(ROOT_INO), value: root },
    ],
  );
  if (!ok) throw new StoreError('INVALID', 'the store already holds a volume; refusing to format over it');
  // Counters are only ever changed by incr (their stored form is the engine's). The inode allocator never
  // hands out the root's number, so a crash before this line leaves a usable volume.
  await store.incr(K.inodeCount, 1);
  return vol;
}

/** Reads the volume record; NOVOLUME when there is none, VERSION when it is newer than this build. */
export async function readVolume(store: KvStore): Promise<VolumeRecord> {
  const raw = await store.get(K.volume);
  if (!raw) throw new StoreError('NOVOLUME', 'the store holds no kvfs volume (run `kvfs format STORE` first)');
  const vol = decodeVolume(raw);
  if (vol.formatVersion > FORMAT_VERSION) {
    throw new StoreError('VERSION',
      `the volume has format version ${vol.formatVersion}, newer than this kvfs understands (${FORMAT_VERSION}); upgrade kvfs`);
  }
  return vol;
}

/**
 * Brings a volume of an older format to this one before a mount writes anything (format 1 -> 2: chunk map
 * entries may then carry slices, which a kvfs of format 1 cannot read; it refuses the volume from then on).
 * Every older format's records are valid in this one, so the record is all that changes. A concurrent
 * upgrade by another mount is fine: the record is checked and the commit retried.
 */
export async function upgradeVolume(store: KvStore, vol: VolumeRecord): Promise<VolumeRecord> {
  for (let attempt = 0; vol.formatVersion < FORMAT_VERSION; attempt++) {
    if (attempt === 5) throw new StoreError('THROTTLED', 'the volume record kept changing while this mount upgraded it');
    const raw = await store.get(K.volume);
    if (!raw) throw new StoreError('NOVOLUME', 'the volume record went away while this mount upgraded it');
    const cur = decodeVolume(raw);
    if (cur.formatVersion >= FORMAT_VERSION) return readVolume(store);
    const next = { ...cur, formatVersion: FORMAT_VERSION };
    if (await store.commit([{ key: K.volume, value: raw }], [{ key: K.volume, value: encodeVolume(next) }])) return next;
  }
  return vol;
}

/** the smallest quota a volume takes: one chunk of the largest size, and the root and a few files */
export const MIN_CAPACITY = 1 << 20;
export const MIN_INODES = 16;

/** a change of a volume's limits: a number sets one, null removes it, absent keeps it */
export interface LimitsChange {
  capacity?: number | null;
  inodeCapacity?: number | null;
}

/** checks limits (INVALID with what is wrong) and returns those set, without the removed ones */
function checkLimits(l: LimitsChange): { capacity?: number; inodeCapacity?: number } {
  const out: { capacity?: number; inodeCapacity?: number } = {};
  if (l.capacity != null) {
    if (!Number.isSafeInteger(l.capacity) || l.capacity < MIN_CAPACITY) {
      throw new StoreError('INVALID', `bad capacity ${l.capacity}: a volume's capacity is at least ${MIN_CAPACITY} bytes (1M)`);
    }
    out.capacity = l.capacity;
  }
  if (l.inodeCapacity != null) {
    if (!Number.isSafeInteger(l.inodeCapacity) || l.inodeCapacity < MIN_INODES) {
      throw new StoreError('INVALID', `bad inode limit ${l.inodeCapacity}: a volume holds at least ${MIN_INODES} inodes`);
    }
    out.inodeCapacity = l.inodeCapacity;
  }
  return out;
}

/**
 * Sets or removes a volume's quota (capacity in bytes, inodes). Mounts take the new limits within
 * VOLUME_REFRESH_MS (limits.ts); what the volume already holds beyond a lowered limit stays, and only new data
 * is refused. Returns the new record.
 */
export async function configureVolume(store: KvStore, change: LimitsChange): Promise<VolumeRecord> {
  const set = checkLimits(change);
  for (let attempt = 0; ; attempt++) {
    if (attempt === 5) throw new StoreError('THROTTLED', 'the volume record kept changing while it was configured');
    const raw = await store.get(K.volume);
    if (!raw) throw new StoreError('NOVOLUME', 'the store holds no kvfs volume (run `kvfs format STORE` first)');
    const next: VolumeRecord = { ...decodeVolume(raw) };
    for (const f of ['capacity', 'inodeCapacity'] as const) {
      if (change[f] === null) delete next[f];
      else if (set[f] !== undefined) next[f] = set[f];
    }
    if (await store.commit([{ key: K.volume, value: raw }], [{ key: K.volume, value: encodeVolume(next) }])) return next;
  }
}
