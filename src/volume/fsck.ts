/**
 * Checking a volume's invariants without a mount (`kvfs fsck`), and repairing what can be repaired.
 *
 * What it checks (schema.ts states the invariants):
 *  - every directory entry lies in a directory that exists and names an inode that exists (`dangling-entry`);
 *  - nlink: a directory's is 2 plus its subdirectories, a file's the entries naming it (`nlink`); a directory's
 *    `children` is its entry count (`children`), and a subdirectory's `parent` the directory holding it (`parent`);
 *  - every inode but the root is named by an entry, or is an orphan (o/) of a mount, or is held open by a mount
 *    of a shared store (u/) (`unreachable`);
 *  - chunk entries belong to an inode that exists or waits for purge (`stray-chunk`), lie below the file's size
 *    unless a truncate is pending (`chunk-past-end`), and name blobs the store holds (`missing-blob`); a file's
 *    `stored` is the bytes its chunk entries hold (`stored`);
 *  - the counters: n/inodes is the number of inodes, n/bytes the bytes of every live and queued blob (`counter`).
 * Repairs (`repair`): a dangling entry is removed; an unreachable inode is linked into /lost+found as `#<ino>`; a
 * stray or past-the-end chunk entry is removed and its blobs queued for collection; a chunk entry naming a
 * missing blob is removed (that part of the file then reads as zeros: its data was lost already); nlink,
 * children, parent, stored and the counters are set to what was counted. Each repair is one commit that checks
 * what it read, so a volume that changes meanwhile (a live mount) is never damaged by it; run fsck on an
 * unmounted volume for a clean report.
 *
 * Memory: every collection is walked a page at a time (KvStore.keyPages); fsck keeps about 45 bytes per inode
 * (Table) and 8 per blob (a hash), whatever the volume's size.
 */
import type { KvStore } from '../backend/kv.js';
import { fsErr } from './errors.js';
import { isDir, S_IFDIR, Volume } from './inodes.js';
import {
  K, chunkIndexOf, decodeChunk, decodeDirent, decodeInode, encodeDirent, entryBlobs, entryStored, memberOf, nowTs,
  type ChunkEntry, type Inode,
} from './schema.js';
import { readVolume } from './format.js';
import { SortedNumbers, idHash, rankOf } from './numbers.js';
import { keyValuePages } from './scan.js';
import { transact } from './txn.js';
import { ROOT_INO, type Ino } from './types.js';

export type ProblemKind = 'dangling-entry' | 'nlink' | 'children' | 'parent' | 'unreachable' | 'stray-chunk' |
  'chunk-past-end' | 'missing-blob' | 'stored' | 'counter';

export interface Problem {
  kind: ProblemKind;
  /** what is wrong, in words */
  what: string;
  /** what --repair did (absent: not repaired) */
  repaired?: string;
}

export interface FsckReport {
  inodes: number;
  entries: number;
  chunks: number;
  problems: Problem[];
}

export interface FsckOptions {
  repair?: boolean;
  progress?(phase: string, done: number, total?: number): void;
}

const PAGE = 1024;
const LOST_FOUND = 'lost+found';
const NONE = -1;
/** a directory's file type (mode >> 12) */
const DIR = S_IFDIR >>> 12;

/**
 * What fsck knows of each inode it found, as columns indexed by the inode's rank among them (inos ascending):
 * what the inode record says that the walks need, and what the walks counted. 37 bytes an inode.
 */
class Table {
  readonly inos: Float64Array;
  /** the file type (mode >> 12) */
  readonly type: Uint8Array;
  /** chunks at or past this index lie past the file's size (ceil(size / chunk size), at most 2^32 - 1) */
  readonly firstPast: Uint32Array;
  /** pending truncates' first chunks, by rank (rare: a truncate not finished) */
  readonly truncFrom: Map<number, number>;
  /** counted: entries naming it, subdirectories, entries in it, bytes of its chunk entries */
  readonly links: Uint32Array;
  readonly subdirs: Uint32Array;
  readonly entries: Uint32Array;
  readonly chunkBytes: Float64Array;
  /** 1 + the rank of the directory an entry naming this directory was found in (0: not found) */
  readonly foundIn: Uint32Array;
  /** directories linked into a /lost+found that fsck made (not in the table): rank -> its ino */
  readonly adopted = new Map<number, Ino>();

  /** columns read in any order (truncFrom by position in that order): sorted by ino into the table */
  constructor(inos: SortedNumbers, cols: { type: Grow<Uint8Array>; firstPast: Grow<Uint32Array> }, truncFrom: Map<number, number>) {
    const n = inos.size;
    const raw = inos.added();
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    order.sort((a, b) => raw[a]! - raw[b]!);
    const gather = <T extends Float64Array | Uint32Array | Uint8Array>(src: T, make: (n: number) => T): T => {
      const out = make(n);
      for (let i = 0; i < n; i++) out[i] = src[order[i]!]!;
      return out;
    };
    this.inos = gather(raw, (k) => new Float64Array(k));
    this.type = gather(cols.type.view(), (k) => new Uint8Array(k));
    this.firstPast = gather(cols.firstPast.view(), (k) => new Uint32Array(k));
    this.truncFrom = new Map();
    if (truncFrom.size) for (let i = 0; i < n; i++) if (truncFrom.has(order[i]!)) this.truncFrom.set(i, truncFrom.get(order[i]!)!);
    this.links = new Uint32Array(n);
    this.subdirs = new Uint32Array(n);
    this.entries = new Uint32Array(n);
    this.chunkBytes = new Float64Array(n);
    this.foundIn = new Uint32Array(n);
  }

  get size(): number {
    return this.inos.length;
  }

  /** the rank of ino, or -1 when fsck did not find it */
  at(ino: Ino): number {
    return rankOf(this.inos, ino);
  }
}

/** a typed array that grows by doubling, for columns filled in one walk */
class Grow<T extends Uint8Array | Uint32Array> {
  #a: T;
  #n = 0;
  constructor(private readonly make: (n: number) => T, expected: number) {
    this.#a = make(Math.max(16, Math.ceil(expected)));
  }
  push(x: number): void {
    if (this.#n === this.#a.length) {
      const grown = this.make(Math.max(1024, this.#a.length * 2));
      grown.set(this.#a);
      this.#a = grown;
    }
    this.#a[this.#n++] = x;
  }
  view(): T {
    return this.#a.subarray(0, this.#n) as T;
  }
  /** lets the memory go */
  clear(): void {
    this.#a = this.make(0);
    this.#n = 0;
  }
}

/** a number of the members of a collection (o/, p/, u/: inos) */
async function inoSet(store: KvStore, prefix: string): Promise<SortedNumbers> {
  const set = new SortedNumbers();
  for await (const page of store.keyPages(prefix, PAGE)) for (const k of page) set.add(Number(memberOf(k, prefix)));
  set.sorted();
  return set;
}

export async function fsck(store: KvStore, opts: FsckOptions = {}): Promise<FsckReport> {
  const progress = opts.progress ?? (() => undefined);
  const repair = !!opts.repair;
  const record = await readVolume(store);
  const cs = record.chunkSize;
  const vol = new Volume(store);
  const problems: Problem[] = [];
  const expected = await store.incr(K.inodeCount, 0); // for progress, and for room (a wrong counter costs doublings)

  // inodes: what the other walks need of each
  // room for what the counter says, and a little more: no doubling of a million-member column
  const room = Math.min(Math.max(expected, 0) * 1.01 + 1024, 1 << 22);
  const found = new SortedNumbers(room);
  const cols = { type: new Grow((n) => new Uint8Array(n), room), firstPast: new Grow((n) => new Uint32Array(n), room) };
  const truncFrom = new Map<number, number>();
  for await (const page of keyValuePages(store, 'i/', PAGE)) {
    for (const [key, raw] of page) {
      const i = decodeInode(Number(memberOf(key, 'i/')), raw);
      found.add(i.ino);
      cols.type.push(i.mode >>> 12);
      cols.firstPast.push(Math.min(Math.ceil(i.size / cs), 0xffffffff));
      if (i.truncFrom) truncFrom.set(found.size - 1, i.truncFrom);
    }
    progress('inodes', found.size, expected);
  }
  const t = new Table(found, cols, truncFrom);
  found.clear();
  cols.type.clear();
  cols.firstPast.clear();

  // directory entries
  let entries = 0;
  for await (const page of keyValuePages(store, 'd/', PAGE)) {
    for (const [key, raw] of page) {
      entries++;
      const dirIno = Number(key.slice(2, key.indexOf('/', 2)));
      const name = key.slice(key.indexOf('/', 2) + 1);
      const e = decodeDirent(raw);
      const dir = t.at(dirIno);
      const child = t.at(e.ino);
      if (dir < 0 || child < 0) {
        const p: Problem = { kind: 'dangling-entry', what: `entry '${name}' in directory ${dirIno} names ${dir < 0 ? 'a directory' : 'an inode'} that does not exist (inode ${dir < 0 ? dirIno : e.ino})` };
        if (repair && await commitIf(store, [[key, raw]], () => [[key, null]])) {
          p.repaired = 'entry removed';
        } else if (dir >= 0) {
          // still there: the directory's counts include it
          t.entries[dir]!++;
          if (isDir(e.type)) t.subdirs[dir]!++;
        }
        problems.push(p);
        continue;
      }
      t.entries[dir]!++;
      t.links[child]!++;
      if (t.type[child] === DIR) {
        t.subdirs[dir]!++;
        t.foundIn[child] = dir + 1;
      }
    }
    progress('entries', entries);
  }

  // orphans and pending purges; shared stores: inodes with no links that mounts still hold open (u/<ino>)
  const orphans = await inoSet(store, K.orphanPrefix);
  const purging = await inoSet(store, K.purgePrefix);
  const held = await inoSet(store, 'u/');

  // chunk entries and blobs (blob ids as 53-bit hashes: a missing blob whose hash a present one shares, odds
  // n / 2^53, goes unreported)
  const blobs = new SortedNumbers(room); // a blob a file, as a guess
  for await (const page of store.keyPages('b/', PAGE)) for (const k of page) blobs.add(idHash(memberOf(k, 'b/')));
  blobs.sorted();
  let bytes = 0;
  let chunks = 0;
  for await (const page of keyValuePages(store, 'c/', PAGE)) {
    for (const [key, raw] of page) {
      chunks++;
      const ino = Number(key.slice(2, key.indexOf('/', 2)));
      const idx = chunkIndexOf(key);
      const e: ChunkEntry = decodeChunk(raw);
      const at = t.at(ino);
      if (at < 0) {
        if (purging.has(ino)) {
          bytes += entryStored(e); // the purge queues its blobs
          continue;
        }
        problems.push(await dropChunk(store, key, raw, e, repair, 'stray-chunk', `chunk ${idx} of inode ${ino}, which does not exist`));
        continue;
      }
      const trunc = t.truncFrom.get(at);
      if (idx >= t.firstPast[at]! && !(trunc && idx >= trunc)) {
        problems.push(await dropChunk(store, key, raw, e, repair, 'chunk-past-end', `chunk ${idx} of inode ${ino} lies past its size`));
        continue;
      }
      const missing = entryBlobs(e).filter((b) => !blobs.has(idHash(b.blobId)));
      if (missing.length) {
        problems.push(await dropChunk(store, key, raw, e, repair, 'missing-blob',
          `chunk ${idx} of inode ${ino} names ${missing.length} blob(s) the store does not hold (${missing.map((b) => b.blobId).join(', ')}): its bytes are lost`, true));
        continue;
      }
      t.chunkBytes[at] += entryStored(e);
      bytes += entryStored(e);
    }
    progress('chunks', chunks);
  }
  for await (const page of keyValuePages(store, K.gcPrefix, PAGE)) for (const [, v] of page) bytes += Number(Buffer.from(v).toString()) || 0;

  // unreachable inodes: linked into /lost+found
  let lf: { ino: Ino; at: number } | undefined;
  let made = 0;
  for (let at = 0; at < t.size; at++) {
    const ino = t.inos[at]!;
    if (ino === ROOT_INO || t.links[at]! > 0 || orphans.has(ino) || held.has(ino)) continue;
    const dir = t.type[at] === DIR;
    const p: Problem = { kind: 'unreachable', what: `inode ${ino} (${dir ? 'a directory' : 'a file'}) is named by no entry and is no mount's orphan` };
    if (repair) {
      if (!lf) {
        const got = await lostFound(store, vol, t);
        lf = got.lf;
        made += got.made;
      }
      const into = lf.ino;
      await transact(store, async (tx) => {
        const d = await vol.dirInode(tx, into);
        const name = `#${ino}`;
        if (await vol.entry(tx, into, name)) return;
        tx.set(K.dirent(into, name), encodeDirent(ino, t.type[at]! << 12));
        d.children++;
        if (dir) d.nlink++;
        vol.touchDir(tx, d, nowTs());
      });
      // what is now counted (a /lost+found fsck made itself is not in the table: it was made right)
      t.links[at]!++;
      if (dir && lf.at >= 0) t.foundIn[at] = lf.at + 1;
      else if (dir) t.adopted.set(at, into);
      if (lf.at >= 0) {
        t.entries[lf.at]!++;
        if (dir) t.subdirs[lf.at]!++;
      }
      p.repaired = `linked as /${LOST_FOUND}/#${ino}`;
    }
    problems.push(p);
  }

  // the counts each inode keeps, read again (an inode made since the first walk is not checked)
  let checked = 0;
  for await (const page of keyValuePages(store, 'i/', PAGE)) {
    for (const [key, raw] of page) {
      const ino = Number(memberOf(key, 'i/'));
      const at = t.at(ino);
      if (at < 0) continue;
      const node = decodeInode(ino, raw);
      const want: Partial<Inode> = {};
      const before = problems.length;
      const dir = isDir(node.mode);
      const nlink = dir ? 2 + t.subdirs[at]! : t.links[at]!;
      if (node.nlink !== nlink && !(node.nlink === 0 && (orphans.has(ino) || held.has(ino)))) {
        want.nlink = nlink;
        problems.push({ kind: 'nlink', what: `inode ${ino} has nlink ${node.nlink}, ${dir ? 'its subdirectories make' : 'its entries make'} ${nlink}` });
      }
      if (dir && node.children !== t.entries[at]) {
        want.children = t.entries[at]!;
        problems.push({ kind: 'children', what: `directory ${ino} counts ${node.children} entries, it holds ${t.entries[at]}` });
      }
      const foundIn = t.foundIn[at] ? t.inos[t.foundIn[at]! - 1]! : t.adopted.get(at) ?? NONE;
      if (dir && ino !== ROOT_INO && foundIn !== NONE && node.parent !== foundIn) {
        want.parent = foundIn;
        problems.push({ kind: 'parent', what: `directory ${ino} names ${node.parent} as its parent, it lies in ${foundIn}` });
      }
      if (!dir && node.stored !== t.chunkBytes[at]) {
        want.stored = t.chunkBytes[at]!;
        problems.push({ kind: 'stored', what: `inode ${ino} says it stores ${node.stored} bytes, its chunk entries hold ${t.chunkBytes[at]}` });
      }
      if (repair && problems.length > before) {
        const fixed = await transact(store, async (tx) => {
          const cur = await tx.get(K.inode(ino));
          if (!cur) return false;
          const i = decodeInode(ino, cur);
          Object.assign(i, want);
          vol.put(tx, i);
          return true;
        });
        if (fixed) for (const p of problems.slice(before)) p.repaired = 'set to what was counted';
      }
    }
    progress('counts', (checked += page.length), expected);
  }

  // the counters
  const inodes = t.size + made;
  for (const [key, counted, what] of [[K.inodeCount, inodes, 'inodes'], [K.byteCount, bytes, 'bytes']] as const) {
    const stored = await store.incr(key, 0);
    if (stored === counted) continue;
    const p: Problem = { kind: 'counter', what: `the volume counts ${stored} ${what}, it holds ${counted}` };
    if (repair) {
      await store.incr(key, counted - stored);
      p.repaired = `set to ${counted}`;
    }
    problems.push(p);
  }
  return { inodes, entries, chunks, problems };
}

/** applies writes when the keys still hold what was read (one commit); false when they changed */
async function commitIf(store: KvStore, read: [string, Uint8Array][], writes: () => [string, Uint8Array | null][]): Promise<boolean> {
  return store.commit(read.map(([key, value]) => ({ key, value })), writes().map(([key, value]) => ({ key, value })));
}

/** a chunk entry that must go: removed (its blobs queued for collection, unless they are gone) when repairing */
async function dropChunk(store: KvStore, key: string, raw: Uint8Array, e: ChunkEntry, repair: boolean, kind: ProblemKind,
  what: string, blobsGone = false): Promise<Problem> {
  const p: Problem = { kind, what };
  if (!repair) return p;
  const queue: [string, Uint8Array][] = blobsGone ? [] : entryBlobs(e).map((b) => [K.gc(b.blobId), Buffer.from(String(b.length))]);
  if (await commitIf(store, [[key, raw]], () => [[key, null], ...queue])) {
    p.repaired = blobsGone ? 'entry removed (that part of the file reads as zeros)' : 'entry removed, its blobs queued for collection';
  }
  return p;
}

/** the inode of /lost+found and its rank in the table (-1: made here), made when missing (`made`: 1) */
async function lostFound(store: KvStore, vol: Volume, t: Table): Promise<{ lf: { ino: Ino; at: number }; made: number }> {
  const found = await vol.entry(store, ROOT_INO, LOST_FOUND);
  if (found) {
    if (!isDir(found.type)) throw fsErr('ENOTDIR', `/${LOST_FOUND} is not a directory: move it away and run fsck --repair again`);
    return { lf: { ino: found.ino, at: t.at(found.ino) }, made: 0 };
  }
  const ino = (await store.incr(K.inoCounter, 1));
  await transact(store, (tx) => vol.addNode(tx, ROOT_INO, LOST_FOUND, (_dir, ts) => ({
    ino, version: 0, mode: 0o40700, nlink: 2, uid: 0, gid: 0, rdev: 0, size: 4096, atime: ts, mtime: ts, ctime: ts,
    parent: ROOT_INO, children: 0, stored: 0, truncFrom: 0,
  })));
  await store.incr(K.inodeCount, 1);
  // the root's new entry and subdirectory, as counted
  const root = t.at(ROOT_INO);
  if (root >= 0) {
    t.entries[root]!++;
    t.subdirs[root]!++;
  }
  return { lf: { ino, at: -1 }, made: 1 };
}
