/**
 * The space figures statfs reports for a volume: the volume's own usage against what its store can hold.
 *
 *  - total (f_blocks): the store's capacity (KvEngineInfo.capacityBytes), no more than `limit` when one is given
 *    (a capacity of the volume's own, kept in its record: none has one yet).
 *  - used (f_blocks - f_bfree): the bytes of the volume's files, its byte counter (K.byteCount), in whole blocks.
 *    So `df` shows what the volume holds, and it drops as deleted files are collected.
 *  - free (f_bfree): total - used.
 *  - available (f_bavail): free, and no more than what the store says it can still take (freeBytes): a store
 *    that holds several volumes (Redis), or keeps room for its own bookkeeping (LMDB), has less room than
 *    total - used.
 *  - A store that cannot tell its capacity: total = used + available, with available its freeBytes, or
 *    UNKNOWN_FREE when it cannot tell that either (a Redis server without maxmemory).
 * Invariants: available <= free <= total, and used = total - free is never negative.
 */
import type { KvEngineInfo } from '../backend/kv.js';

/** the block size statfs reports */
export const STATFS_BLOCK = 4096;
/** what statfs calls available when the store cannot tell: 1 TiB */
export const UNKNOWN_FREE = 2 ** 40;

export interface VolumeSpace {
  /** f_blocks */
  blocks: number;
  /** f_bfree */
  bfree: number;
  /** f_bavail */
  bavail: number;
}

/** the figures for a volume whose files hold `used` bytes, in a store that says `store` of itself */
export function volumeSpace(used: number, store: Pick<KvEngineInfo, 'capacityBytes' | 'freeBytes'>, limit?: number): VolumeSpace {
  const usedBlocks = Math.ceil(Math.max(0, used) / STATFS_BLOCK);
  const storeFree = store.freeBytes === undefined ? undefined : Math.max(0, store.freeBytes);
  const caps = [store.capacityBytes, limit].filter((c): c is number => c !== undefined);
  const total = caps.length ? Math.min(...caps) : usedBlocks * STATFS_BLOCK + (storeFree ?? UNKNOWN_FREE);
  const blocks = Math.max(usedBlocks, Math.floor(total / STATFS_BLOCK));
  const bfree = blocks - usedBlocks;
  const bavail = storeFree === undefined ? bfree : Math.min(bfree, Math.floor(storeFree / STATFS_BLOCK));
  return { blocks, bfree, bavail };
}
