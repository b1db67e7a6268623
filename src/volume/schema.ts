/**
 * The volume's key schema and value encodings. This file is the one place that names keys.
 *
 *   v                      volume record, JSON: { name, chunkSize, created, formatVersion, capacity?, inodeCapacity? }
 *   n/ino                  counter: highest inode number handed out (mounts take ranges of INO_BATCH)
 *   n/inodes               counter: live inodes
 *   n/bytes                counter: bytes held in live blobs
 *   i/<ino>                inode: attributes (binary, see encodeInode); `version` bumped on every change
 *   d/<ino>/<name>         directory entry of <name> in directory <ino>: type + child ino      collection d/<ino>/
 *   c/<ino>/<index>        chunk map: chunk <index> (8 hex digits) of file <ino> -> its blob and slices
 *                          (encodeChunk)                                                      collection c/<ino>/
 *   x/<ino>/<name>         extended attribute <name> of <ino>: its value                       collection x/<ino>/
 *   b/<blob id>            file data: a chunk's bytes, or a slice's, immutable (written once, then only deleted)
 *   g/<blob id>            GC queue: a blob no chunk map references any more; value: its length  collection g/
 *   p/<ino>                purge queue: an inode already removed whose chunks and xattrs remain  collection p/
 *   o/<ino>                orphan: nlink 0 but in use on a mount; value: the mount's session id collection o/
 *   s/<session>            a live mount: value: the time (ms) its heartbeat expires          collection s/
 *   u/<ino>                shared stores: how many mounts hold the file open (decimal; absent is 0)
 *   w/<session>/<ino>      shared stores: this mount holds the file open (empty value)   collection w/<session>/
 *   j/<target>             a bulk load's job (load-job.ts), JSON; <target> the volume path URI-encoded  collection j/
 *
 * Invariants:
 *  - every metadata change is one `commit` (src/volume/txn.ts); blobs are `put` before a commit references them.
 *  - a chunk's blob holds at most the bytes of the chunk that lie below the file's size: reads past a blob's
 *    end inside the file are zeros (holes), and extending a file never exposes old bytes.
 *  - while an inode's `truncFrom` is non-zero, chunk entries at or above it are stale and are deleted before
 *    any write may extend the file (pending truncate).
 *  - directories keep `children` (entry count) and `parent`, so emptiness and cycles are checked without scans.
 *  - shared stores: u/<ino> equals the number of w/<session>/<ino> records; an inode with nlink 0 stays while
 *    u/<ino> > 0, and the mount whose release (or whose reaping of a dead session) brings it to 0 purges it.
 */
import { StoreError } from '../backend/errors.js';
import type { Attr, Ino, Timespec } from './types.js';

/**
 * The volume format. 2: chunk map entries may carry slices (format 1 volumes are upgraded when mounted: their
 * entries are format 2 entries without slices; a kvfs of format 1 then refuses the volume).
 */
export const FORMAT_VERSION = 2;
export const INO_BATCH = 1024;

export const K = {
  volume: 'v',
  inoCounter: 'n/ino',
  inodeCount: 'n/inodes',
  byteCount: 'n/bytes',
  inode: (ino: Ino) => `i/${ino}`,
  dirPrefix: (ino: Ino) => `d/${ino}/`,
  dirent: (ino: Ino, name: string) => `d/${ino}/${name}`,
  chunkPrefix: (ino: Ino) => `c/${ino}/`,
  chunk: (ino: Ino, index: number) => `c/${ino}/${index.toString(16).padStart(8, '0')}`,
  xattrPrefix: (ino: Ino) => `x/${ino}/`,
  xattr: (ino: Ino, name: string) => `x/${ino}/${name}`,
  blob: (id: string) => `b/${id}`,
  gcPrefix: 'g/',
  gc: (id: string) => `g/${id}`,
  purgePrefix: 'p/',
  purge: (ino: Ino) => `p/${ino}`,
  orphanPrefix: 'o/',
  orphan: (ino: Ino) => `o/${ino}`,
  sessionPrefix: 's/',
  session: (id: string) => `s/${id}`,
  users: (ino: Ino) => `u/${ino}`,
  usePrefix: (session: string) => `w/${session}/`,
  use: (session: string, ino: Ino) => `w/${session}/${ino}`,
  jobPrefix: 'j/',
  job: (target: string) => `j/${target}`,
} as const;

/**
 * Keys other processes read and write beside a running daemon or loader (the volume record: kvfs config; session
 * records: gc; load jobs: kvfs load --cancel): a local store writes them straight to LMDB, never through its log
 * (LmdbStoreOptions.sharedKeys).
 */
export const SHARED_KEYS: readonly string[] = [K.volume, K.sessionPrefix, K.jobPrefix];

/** the chunk index encoded in a chunk key */
export function chunkIndexOf(key: string): number {
  return parseInt(key.slice(key.lastIndexOf('/') + 1), 16);
}

/** the last path part of a collection member's key */
export function memberOf(key: string, prefix: string): string {
  return key.slice(prefix.length);
}

export interface VolumeRecord {
  name: string;
  chunkSize: number;
  created: number;
  formatVersion: number;
  /** the volume's quota in bytes of file data (absent: none; the store's own room is the limit) */
  capacity?: number;
  /** the most inodes the volume may hold (absent: no limit of its own) */
  inodeCapacity?: number;
}

export function encodeVolume(v: VolumeRecord): Uint8Array {
  return Buffer.from(JSON.stringify(v));
}

export function decodeVolume(b: Uint8Array): VolumeRecord {
  try {
    const v = JSON.parse(Buffer.from(b).toString('utf8')) as VolumeRecord;
    if (typeof v.chunkSize !== 'number' || typeof v.formatVersion !== 'number') throw new Error('fields missing');
    for (const f of ['capacity', 'inodeCapacity'] as const) {
      if (v[f] !== undefined && !(Number.isSafeInteger(v[f]) && v[f]! > 0)) throw new Error(`bad ${f} ${JSON.stringify(v[f])}`);
    }
    return v;
  } catch (e) {
    throw new StoreError('CORRUPT', `the volume record cannot be read: ${(e as Error).message}`);
  }
}

/** An inode as stored: the attributes plus bookkeeping that never reaches the kernel. */
export interface Inode extends Omit<Attr, 'blocks'> {
  version: number;
  /** directories: the parent directory's inode (the root is its own parent) */
  parent: Ino;
  /** directories: number of entries */
  children: number;
  /** regular files: bytes stored in blobs (for st_blocks) */
  stored: number;
  /** pending truncate: chunk entries at or above this index are stale (0 = none) */
  truncFrom: number;
  /** symlinks: the target */
  target?: string;
}

// Binary layout: u8 layout version, u8 field count, then count float64 fields (exact for safe integers),
// then the symlink target in UTF-8. New fields are appended; a reader ignores fields it does not know.
const FIELDS = ['version', 'mode', 'nlink', 'uid', 'gid', 'rdev', 'size', 'atimeS', 'atimeNs', 'mtimeS',
  'mtimeNs', 'ctimeS', 'ctimeNs', 'parent', 'children', 'stored', 'truncFrom'] as const;
const INODE_LAYOUT = 1;

export function encodeInode(n: Inode): Uint8Array {
  const target = n.target !== undefined ? Buffer.from(n.target, 'utf8') : undefined;
  const head = 2 + FIELDS.length * 8;
  const b = Buffer.allocUnsafe(head + (target?.length ?? 0));
  b[0] = INODE_LAYOUT;
  b[1] = FIELDS.length;
  const vals = [n.version, n.mode, n.nlink, n.uid, n.gid, n.rdev, n.size, n.atime.sec, n.atime.nsec,
    n.mtime.sec, n.mtime.nsec, n.ctime.sec, n.ctime.nsec, n.parent, n.children, n.stored, n.truncFrom];
  for (let i = 0; i < vals.length; i++) b.writeDoubleLE(vals[i], 2 + i * 8);
  if (target) target.copy(b, head);
  return b;
}

export function decodeInode(ino: Ino, raw: Uint8Array): Inode {
  const b = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  if (b.length < 2 || b[0] !== INODE_LAYOUT || b.length < 2 + b[1] * 8 || b[1] < FIELDS.length) {
    throw new StoreError('CORRUPT', `inode ${ino} cannot be decoded`);
  }
  const f = (i: number) => b.readDoubleLE(2 + i * 8);
  const head = 2 + b[1] * 8;
  const mode = f(1);
  const n: Inode = {
    ino, version: f(0), mode, nlink: f(2), uid: f(3), gid: f(4), rdev: f(5), size: f(6),
    atime: { sec: f(7), nsec: f(8) }, mtime: { sec: f(9), nsec: f(10) }, ctime: { sec: f(11), nsec: f(12) },
    parent: f(13), children: f(14), stored: f(15), truncFrom: f(16),
  };
  if ((mode & 0o170000) === 0o120000) n.target = b.subarray(head).toString('utf8');
  return n;
}

/** A directory entry's value: u8 file type (mode >> 12), then the child inode as float64. */
export function encodeDirent(ino: Ino, mode: number): Uint8Array {
  const b = Buffer.allocUnsafe(9);
  b[0] = (mode >>> 12) & 0xf;
  b.writeDoubleLE(ino, 1);
  return b;
}

export function decodeDirent(raw: Uint8Array): { ino: Ino; type: number } {
  const b = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  if (b.length !== 9) throw new StoreError('CORRUPT', 'a directory entry cannot be decoded');
  return { type: b[0] << 12, ino: b.readDoubleLE(1) };
}

/** Bytes [off, off + len) of a chunk, written later than what lies under them: a blob of exactly len bytes. */
export interface Slice { off: number; len: number; blobId: string }

/** the largest chunk a volume may have (format.ts MAX_CHUNK_SIZE): a slice past it is no slice of a chunk */
const LARGEST_CHUNK = 64 * 1024 * 1024;

/**
 * A Slice, made in one place with its numbers as small integers (a chunk's offsets fit): objects of one shape whose
 * fields keep one representation, so the loads of the write path stay fast (slices made by spreading, with a length
 * that was sometimes a double, took a dozen hidden classes, and each load of off and len a lookup in the runtime).
 */
export function makeSlice(off: number, len: number, blobId: string): Slice {
  // (a slice lies inside its chunk: at most LARGEST_CHUNK, well within a small integer)
  return { off: off | 0, len: len | 0, blobId };
}

/**
 * A chunk map entry: a base blob of `length` bytes (blobId '' and length 0: none, zeros), and slices laid over it
 * in order, later over earlier. Past the base and the slices, the chunk reads as zeros.
 */
export interface ChunkEntry { length: number; blobId: string; slices?: Slice[] }

/** "<length>:<blob id>" and, per slice, ";<off>+<len>:<blob id>" (blob ids hold none of ';', '+', ':'). */
export function encodeChunk(length: number, blobId: string, slices?: readonly Slice[]): Uint8Array {
  let s = `${length}:${blobId}`;
  if (slices) for (const x of slices) s += `;${x.off}+${x.len}:${x.blobId}`;
  return Buffer.from(s);
}

/** the encoding of an entry (encodeChunk's `raw`) with these slices added after its own (a copy: raw is unchanged) */
export function appendSlices(raw: Uint8Array, slices: readonly Slice[]): Uint8Array {
  let s = '';
  for (const x of slices) s += `;${x.off}+${x.len}:${x.blobId}`;
  const tail = Buffer.from(s);
  const out = Buffer.allocUnsafe(raw.length + tail.length);
  out.set(raw);
  out.set(tail, raw.length);
  return out;
}

export function encodeEntry(e: ChunkEntry): Uint8Array {
  return encodeChunk(e.length, e.blobId, e.slices);
}

export function decodeChunk(raw: Uint8Array): ChunkEntry {
  const s = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('latin1');
  const parts = s.split(';');
  const bad = () => new StoreError('CORRUPT', `a chunk map entry cannot be decoded: ${JSON.stringify(s.slice(0, 80))}`);
  const i = parts[0]!.indexOf(':');
  const length = Number(parts[0]!.slice(0, i));
  const blobId = parts[0]!.slice(i + 1);
  if (i < 1 || !Number.isSafeInteger(length) || length < 0 || (blobId === '') !== (length === 0)) throw bad();
  if (parts.length === 1) {
    if (blobId === '') throw bad();
    return { length, blobId };
  }
  const slices: Slice[] = [];
  for (const p of parts.slice(1)) {
    const m = /^(\d+)\+(\d+):(.+)$/.exec(p);
    const off = Number(m?.[1]);
    const len = Number(m?.[2]);
    if (!m || !Number.isSafeInteger(off) || !Number.isSafeInteger(len) || len < 1) throw bad();
    if (off + len > LARGEST_CHUNK) throw bad();
    slices.push(makeSlice(off, len, m[3]!));
  }
  return { length, blobId, slices };
}

/** the bytes of the chunk an entry defines: past them it reads as zeros */
export function entryExtent(e: ChunkEntry): number {
  let n = e.length;
  for (const x of e.slices ?? []) n = Math.max(n, x.off + x.len);
  return n;
}

/** every blob an entry names, with its length (what the store holds for it) */
export function entryBlobs(e: ChunkEntry): { blobId: string; length: number }[] {
  const out = e.blobId ? [{ blobId: e.blobId, length: e.length }] : [];
  for (const x of e.slices ?? []) out.push({ blobId: x.blobId, length: x.len });
  return out;
}

/** bytes the store holds for an entry (st_blocks, n/bytes) */
export function entryStored(e: ChunkEntry): number {
  let n = e.length;
  for (const x of e.slices ?? []) n += x.len;
  return n;
}

/** one id for what an entry holds: its base blob's id, or (with slices) the whole entry's text */
export function entryKey(e: ChunkEntry): string {
  return e.slices?.length ? Buffer.from(encodeEntry(e)).toString('latin1') : e.blobId;
}

/** whether an entryKey names bytes combined from several blobs (no blob of the store holds them as they are) */
export function isCombinedKey(key: string): boolean {
  return key.includes(';');
}

let lastNs = 0n;

/** the wall clock with nanoseconds from the monotonic clock; never goes backwards within a process */
export function nowTs(): Timespec {
  let ns = BigInt(Date.now()) * 1_000_000n + (process.hrtime.bigint() % 1_000_000n);
  if (ns <= lastNs) ns = lastNs + 1n;
  lastNs = ns;
  return { sec: Number(ns / 1_000_000_000n), nsec: Number(ns % 1_000_000_000n) };
}

export function toAttr(n: Inode): Attr {
  return {
    ino: n.ino, mode: n.mode, nlink: n.nlink, uid: n.uid, gid: n.gid, rdev: n.rdev, size: n.size,
    blocks: Math.ceil(n.stored / 512), atime: n.atime, mtime: n.mtime, ctime: n.ctime,
  };
}
