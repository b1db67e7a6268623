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
 * Memory: fsck keeps a small record per inode and the names of the volume's chunk and blob keys
 * (KvStore.keys is not paged): about 200 bytes per inode.
 */
import type { KvStore } from '../backend/kv.js';
import { fsErr } from './errors.js';
import { isDir, Volume } from './inodes.js';
import {
  K, chunkIndexOf, decodeChunk, decodeDirent, decodeInode, encodeDirent, entryBlobs, entryStored, memberOf, nowTs,
  type ChunkEntry, type Inode,
} from './schema.js';
import { readVolume } from './format.js';
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

interface Node {
  mode: number;
  nlink: number;
  children: number;
  parent: Ino;
  size: number;
  stored: number;
  truncFrom: number;
  /** counted: entries naming it, subdirectories, entries in it, bytes of its chunk entries */
  links: number;
  subdirs: number;
  entries: number;
  chunkBytes: number;
  /** the directory an entry of this directory inode was found in (directories) */
  foundIn?: Ino;
}

/** reads keys' values a page at a time */
async function* values(store: KvStore, keys: string[]): AsyncGenerator<[string, Uint8Array | undefined]> {
  for (let i = 0; i < keys.length; i += PAGE) {
    const part = keys.slice(i, i + PAGE);
    const vals = await store.getMany(part);
    for (let j = 0; j < part.length; j++) yield [part[j]!, vals[j]];
  }
}

export async function fsck(store: KvStore, opts: FsckOptions = {}): Promise<FsckReport> {
  const progress = opts.progress ?? (() => undefined);
  const repair = !!opts.repair;
  const record = await readVolume(store);
  const cs = record.chunkSize;
  const vol = new Volume(store);
  const problems: Problem[] = [];
  const nodes = new Map<Ino, Node>();

  // inodes
  const inodeKeys = await store.keys('i/');
  let n = 0;
  for await (const [key, raw] of values(store, inodeKeys)) {
    if (!raw) continue;
    const ino = Number(memberOf(key, 'i/'));
    const i = decodeInode(ino, raw);
    nodes.set(ino, {
      mode: i.mode, nlink: i.nlink, children: i.children, parent: i.parent, size: i.size, stored: i.stored,
      truncFrom: i.truncFrom, links: 0, subdirs: 0, entries: 0, chunkBytes: 0,
    });
    if (++n % PAGE === 0) progress('inodes', n, inodeKeys.length);
  }

  // directory entries
  const entryKeys = await store.keys('d/');
  let entries = 0;
  for await (const [key, raw] of values(store, entryKeys)) {
    if (!raw) continue;
    entries++;
    const dirIno = Number(key.slice(2, key.indexOf('/', 2)));
    const name = key.slice(key.indexOf('/', 2) + 1);
    const e = decodeDirent(raw);
    const dir = nodes.get(dirIno);
    const child = nodes.get(e.ino);
    if (!dir || !child) {
      const p: Problem = { kind: 'dangling-entry', what: `entry '${name}' in directory ${dirIno} names ${!dir ? 'a directory' : 'an inode'} that does not exist (inode ${!dir ? dirIno : e.ino})` };
      if (repair && await commitIf(store, [[key, raw]], () => [[key, null]])) {
        p.repaired = 'entry removed';
      } else if (dir) {
        // still there: the directory's counts include it
        dir.entries++;
        if (isDir(e.type)) dir.subdirs++;
      }
      problems.push(p);
      continue;
    }
    dir.entries++;
    child.links++;
    if (isDir(child.mode)) {
      dir.subdirs++;
      child.foundIn = dirIno;
    }
    if (entries % PAGE === 0) progress('entries', entries, entryKeys.length);
  }

  // orphans and pending purges
  const orphans = new Set((await store.keys(K.orphanPrefix)).map((k) => Number(memberOf(k, K.orphanPrefix))));
  const purging = new Set((await store.keys(K.purgePrefix)).map((k) => Number(memberOf(k, K.purgePrefix))));
  // shared stores: inodes with no links that other mounts still hold open (u/<ino>)
  const held = new Set((await store.keys('u/')).map((k) => Number(memberOf(k, 'u/'))));

  // chunk entries and blobs
  const blobs = new Set((await store.keys('b/')).map((k) => memberOf(k, 'b/')));
  const chunkKeys = await store.keys('c/');
  let bytes = 0;
  let chunks = 0;
  for await (const [key, raw] of values(store, chunkKeys)) {
    if (!raw) continue;
    chunks++;
    const ino = Number(key.slice(2, key.indexOf('/', 2)));
    const idx = chunkIndexOf(key);
    const e: ChunkEntry = decodeChunk(raw);
    const node = nodes.get(ino);
    if (!node) {
      if (purging.has(ino)) {
        bytes += entryStored(e); // the purge queues its blobs
        continue;
      }
      problems.push(await dropChunk(store, key, raw, e, repair, 'stray-chunk', `chunk ${idx} of inode ${ino}, which does not exist`));
      continue;
    }
    if (idx * cs >= node.size && !(node.truncFrom && idx >= node.truncFrom)) {
      problems.push(await dropChunk(store, key, raw, e, repair, 'chunk-past-end', `chunk ${idx} of inode ${ino} lies past its size ${node.size}`));
      continue;
    }
    const missing = entryBlobs(e).filter((b) => !blobs.has(b.blobId));
    if (missing.length) {
      problems.push(await dropChunk(store, key, raw, e, repair, 'missing-blob',
        `chunk ${idx} of inode ${ino} names ${missing.length} blob(s) the store does not hold (${missing.map((b) => b.blobId).join(', ')}): its bytes are lost`, true));
      continue;
    }
    node.chunkBytes += entryStored(e);
    bytes += entryStored(e);
    if (chunks % PAGE === 0) progress('chunks', chunks, chunkKeys.length);
  }
  for await (const [, v] of values(store, await store.keys(K.gcPrefix))) if (v) bytes += Number(Buffer.from(v).toString()) || 0;

  // unreachable inodes: linked into /lost+found
  for (const [ino, node] of nodes) {
    if (ino === ROOT_INO || node.links > 0 || orphans.has(ino) || held.has(ino)) continue;
    const p: Problem = { kind: 'unreachable', what: `inode ${ino} (${isDir(node.mode) ? 'a directory' : 'a file'}) is named by no entry and is no mount's orphan` };
    if (repair) {
      const lf = await lostFound(store, vol, nodes);
      await transact(store, async (tx) => {
        const dir = await vol.dirInode(tx, lf);
        const name = `#${ino}`;
        if (await vol.entry(tx, lf, name)) return;
        tx.set(K.dirent(lf, name), encodeDirent(ino, node.mode));
        dir.children++;
        if (isDir(node.mode)) dir.nlink++;
        vol.touchDir(tx, dir, nowTs());
      });
      node.links++;
      // what the commit stored, and what is now counted
      const lfNode = nodes.get(lf)!;
      lfNode.children++;
      lfNode.entries++;
      if (isDir(node.mode)) {
        lfNode.nlink++;
        lfNode.subdirs++;
        node.foundIn = lf;
      }
      p.repaired = `linked as /${LOST_FOUND}/#${ino}`;
    }
    problems.push(p);
  }

  // the counts each inode keeps
  for (const [ino, node] of nodes) {
    const want: Partial<Inode> = {};
    const dir = isDir(node.mode);
    const nlink = dir ? 2 + node.subdirs : node.links;
    if (node.nlink !== nlink && !(node.nlink === 0 && (orphans.has(ino) || held.has(ino)))) {
      want.nlink = nlink;
      problems.push({ kind: 'nlink', what: `inode ${ino} has nlink ${node.nlink}, ${dir ? 'its subdirectories make' : 'its entries make'} ${nlink}` });
    }
    if (dir && node.children !== node.entries) {
      want.children = node.entries;
      problems.push({ kind: 'children', what: `directory ${ino} counts ${node.children} entries, it holds ${node.entries}` });
    }
    if (dir && ino !== ROOT_INO && node.foundIn !== undefined && node.parent !== node.foundIn) {
      want.parent = node.foundIn;
      problems.push({ kind: 'parent', what: `directory ${ino} names ${node.parent} as its parent, it lies in ${node.foundIn}` });
    }
    if (!dir && node.stored !== node.chunkBytes) {
      want.stored = node.chunkBytes;
      problems.push({ kind: 'stored', what: `inode ${ino} says it stores ${node.stored} bytes, its chunk entries hold ${node.chunkBytes}` });
    }
    if (repair && Object.keys(want).length) {
      const fixed = await transact(store, async (tx) => {
        const raw = await tx.get(K.inode(ino));
        if (!raw) return false;
        const i = decodeInode(ino, raw);
        Object.assign(i, want);
        vol.put(tx, i);
        return true;
      });
      if (fixed) {
        const at = problems.length - Object.keys(want).length;
        for (const p of problems.slice(at)) p.repaired = 'set to what was counted';
      }
    }
  }

  // the counters
  for (const [key, counted, what] of [[K.inodeCount, nodes.size, 'inodes'], [K.byteCount, bytes, 'bytes']] as const) {
    const stored = await store.incr(key, 0);
    if (stored === counted) continue;
    const p: Problem = { kind: 'counter', what: `the volume counts ${stored} ${what}, it holds ${counted}` };
    if (repair) {
      await store.incr(key, counted - stored);
      p.repaired = `set to ${counted}`;
    }
    problems.push(p);
  }
  return { inodes: nodes.size, entries, chunks, problems };
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

/** the inode of /lost+found, made when missing */
async function lostFound(store: KvStore, vol: Volume, nodes: Map<Ino, Node>): Promise<Ino> {
  const found = await vol.entry(store, ROOT_INO, LOST_FOUND);
  if (found) {
    if (!isDir(found.type)) throw fsErr('ENOTDIR', `/${LOST_FOUND} is not a directory: move it away and run fsck --repair again`);
    return found.ino;
  }
  const ino = (await store.incr(K.inoCounter, 1));
  const node = await transact(store, (tx) => vol.addNode(tx, ROOT_INO, LOST_FOUND, (_dir, t) => ({
    ino, version: 0, mode: 0o40700, nlink: 2, uid: 0, gid: 0, rdev: 0, size: 4096, atime: t, mtime: t, ctime: t,
    parent: ROOT_INO, children: 0, stored: 0, truncFrom: 0,
  })));
  await store.incr(K.inodeCount, 1);
  nodes.set(ino, { mode: node.mode, nlink: 2, children: 0, parent: ROOT_INO, size: 4096, stored: 0, truncFrom: 0, links: 1, subdirs: 0, entries: 0, chunkBytes: 0, foundIn: ROOT_INO });
  const root = nodes.get(ROOT_INO);
  if (root) {
    root.entries++;
    root.subdirs++;
    root.children++;
    root.nlink++;
  }
  return ino;
}
