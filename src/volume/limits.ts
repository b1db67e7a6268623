/**
 * A volume's quota (VolumeRecord.capacity: bytes of file data; inodeCapacity: inodes), as every writer of the
 * volume enforces it: a mount before it commits data or makes an inode, and the tools that write without one.
 *
 * Contract:
 *  - Usage is the volume's counters (n/bytes: bytes in live blobs; n/inodes), which the caller passes as it knows
 *    them: a mount adds what it has not flushed yet, and other mounts' changes reach it within their counters'
 *    flush interval, so on a volume with several mounts the quota holds to within what they wrote meanwhile.
 *  - A write that would take the bytes past the capacity (or an inode past the inode limit) is NOSPACE (ENOSPC to
 *    callers), naming the quota, the usage and the command that raises it; each run of refusals is one episode
 *    (FullEpisodes), which the one place that logs store errors logs once. Deletes are never refused, and the
 *    space they free counts again once their blobs are collected (queues.ts).
 *  - A rewrite needs room for its new blob until the old one is collected, so a volume at its capacity may refuse
 *    a rewrite of the same size for a moment.
 *  - The record is read again every VOLUME_REFRESH_MS (`kvfs config` changes it under live mounts).
 */
import { FullEpisodes, StoreError } from '../backend/errors.js';
import type { VolumeRecord } from './schema.js';

/** how often a mount reads the volume record again, for limits changed by `kvfs config` */
export const VOLUME_REFRESH_MS = 5000;

/** bytes as people read them: 1.5 GiB */
export function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}

export class Limits {
  private readonly bytesFull = new FullEpisodes();
  private readonly inodesFull = new FullEpisodes();

  /** `store`: how users name the store, for the command in messages */
  constructor(private record: Pick<VolumeRecord, 'capacity' | 'inodeCapacity'>, private readonly store: string) {}

  update(record: Pick<VolumeRecord, 'capacity' | 'inodeCapacity'>): void {
    this.record = record;
  }

  get capacity(): number | undefined {
    return this.record.capacity;
  }

  get inodeCapacity(): number | undefined {
    return this.record.inodeCapacity;
  }

  /** NOSPACE when `bytes` more of file data would take the volume, holding `used`, past its capacity */
  admitBytes(used: number, bytes: number): void {
    const cap = this.record.capacity;
    if (cap === undefined || bytes <= 0) return;
    if (used + bytes <= cap) {
      this.bytesFull.succeeded(bytes);
      return;
    }
    const e = new StoreError('NOSPACE', `the volume's capacity of ${humanBytes(cap)} is reached (${humanBytes(Math.max(0, used))} used, ` +
      `${humanBytes(bytes)} more asked): delete files, or raise it with \`kvfs config ${this.store} --capacity SIZE\``);
    e.episode = this.bytesFull.refused(bytes);
    throw e;
  }

  /** NOSPACE when one more inode would take the volume, holding `count`, past its inode limit */
  admitInode(count: number): void {
    const cap = this.record.inodeCapacity;
    if (cap === undefined) return;
    if (count + 1 <= cap) {
      this.inodesFull.succeeded(1);
      return;
    }
    const e = new StoreError('NOSPACE', `the volume's limit of ${cap} inodes is reached (${count} in use): delete files, ` +
      `or raise it with \`kvfs config ${this.store} --inodes N\``);
    e.episode = this.inodesFull.refused(1);
    throw e;
  }
}
