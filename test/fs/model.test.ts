/**
 * Model-based test of the filesystem core (src/fs/filesystem.ts), without a mount.
 *
 * A seeded stream of random operations drives a Filesystem and, in lockstep, a small in-memory reference model
 * of a POSIX tree (inodes with type, mode, link count, data, symlink target and xattrs; directories as
 * name -> inode maps). Every result is compared: success or the FsError code, returned bytes, and attributes
 * (type, permission bits, nlink, size, rdev, inode identity across hard links, a plausible st_blocks).
 * The first difference fails the run with the seed and the operations that led to it.
 *
 * Most steps run one at a time. A few run several calls at once whose outcome does not depend on their order
 * (writes to disjoint ranges with a read and a flush; distinct new names in one directory), or whose outcome
 * must be one of the serial orders (a write and a truncate of one file). The write-back budget and the blob
 * cache size are drawn from the seed too. A seed replays the same steps as long as the engine's timing lets
 * the order-dependent step come out the same way (always, on the memory engine so far).
 *
 * The model is POSIX where the core's own contract is silent (for example, a write of no bytes changes
 * nothing); its choices where POSIX leaves room follow the core's (the order of error checks: name checks,
 * then the parent directory, then the entry; each such judgement is noted where the model makes it).
 *
 * The whole tree is compared by walking both sides every 1,000 steps and around each remount (close the
 * Filesystem, open the same store again; LMDB is closed and reopened too). After a remount the store itself is
 * checked: inodes, entries, chunk maps, blobs, queues and counters hold exactly what the model says.
 *
 *   KVFS_MODEL_SEED=1234      replay one seed (printed by every run)
 *   KVFS_MODEL_OPS=50000      operations of the memory run (default 10,000; the LMDB run does 30%)
 *   KVFS_MODEL_ENGINES=lmdb   run only these engines (comma-separated: memory, lmdb)
 *   KVFS_MODEL_OUTCOMES=1     print how often each operation ended in each way (coverage of the error paths)
 *   KVFS_MODEL_LOG=/tmp/ops   on a failure, write every operation of the run to this file
 *   KVFS_MODEL_AVOID=a,b      steer around known bugs to look for others (see AVOIDABLE)
 *
 * Below the model runs: minimal reproductions of what the runs found, one bug each.
 */
import t, { type Test } from 'tap';
import { constants } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KvStore } from '../../src/backend/kv.js';
import { MemoryStore } from '../../src/backend/memory.js';
import { openStore } from '../../src/backend/open-store.js';
import { RedisCluster, redisAvailable } from '../helpers/redis-cluster.js';
import { FsError } from '../../src/fs/errors.js';
import { Filesystem, type FsOptions } from '../../src/fs/filesystem.js';
import { K, decodeChunk, decodeDirent, decodeInode, entryBlobs, entryExtent, entryStored } from '../../src/volume/schema.js';
import {
  RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INO, XATTR_CREATE, XATTR_REPLACE, type Attr, type Ctx, type Fh, type Ino,
} from '../../src/fs/types.js';
import { formatVolume } from '../../src/volume/format.js';
import { prng } from '../helpers/prng.js';

const CTX: Ctx = { uid: 0, gid: 0, pid: 1 };
/** four pages: page-aligned writes smaller than a chunk become slices (file-data.ts) */
const CHUNK = 16384;
const PAGE = 4096;
/** files grow to about this size at most, so every write and truncate crosses chunk boundaries often */
const MAX_FILE = 20 * CHUNK;

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const S_ISGID = 0o2000;
const { O_RDONLY, O_WRONLY, O_RDWR, O_APPEND, O_TRUNC, O_EXCL, O_CREAT } = constants;

// ---------------------------------------------------------------------------------------------- randomness


class Rng {
  private readonly next: () => number;
  constructor(seed: number) { this.next = prng(seed); }
  /** an integer in [0, n) */
  int(n: number): number { return Math.floor(this.next() * n); }
  /** an integer in [lo, hi] */
  range(lo: number, hi: number): number { return lo + this.int(hi - lo + 1); }
  chance(p: number): boolean { return this.next() < p; }
  pick<T>(xs: readonly T[]): T { return xs[this.int(xs.length)]!; }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) b.writeUInt32LE(Math.floor(this.next() * 4294967296), i);
    for (; i < n; i++) b[i] = this.int(256);
    return b;
  }
  /** picks by weight: entries are [weight, value] */
  weighted<T>(xs: readonly (readonly [number, T])[]): T {
    const total = xs.reduce((s, [w]) => s + w, 0);
    let r = this.next() * total;
    for (const [w, v] of xs) if ((r -= w) < 0) return v;
    return xs[xs.length - 1]![1];
  }
}

// ---------------------------------------------------------------------------------------------- the model

/** One inode of the reference model. */
interface MNode {
  ino: Ino;
  /** S_IFMT bits */
  type: number;
  /** permission bits (0o7777) */
  perm: number;
  rdev: number;
  /** link count of a non-directory (a directory's is computed: 2 + subdirectories) */
  links: number;
  /** contents of a regular file (length = size) */
  data: Buffer;
  target?: string;
  xattrs: Map<string, Buffer>;
  /** directories: name -> ino */
  entries?: Map<string, Ino>;
  /** directories: the parent (the root's is itself) */
  parent?: Ino;
  /** file handles open on it */
  opens: number;
}

interface MHandle { ino: Ino; flags: number }

/** An expected error: what the model throws where the filesystem should fail with `code`. */
class MErr extends Error {
  constructor(readonly code: string) { super(code); }
}
const err = (code: string): never => { throw new MErr(code); };

class Model {
  readonly nodes = new Map<Ino, MNode>();
  readonly handles = new Map<Fh, MHandle>();
  /** inode numbers that existed once and are gone */
  readonly stale: Ino[] = [];
  /** nodes ever made, including the root (for the loose statfs check) */
  made = 1;

  constructor() {
    this.nodes.set(ROOT_INO, {
      ino: ROOT_INO, type: S_IFDIR, perm: 0o755, rdev: 0, links: 0, data: Buffer.alloc(0), xattrs: new Map(),
      entries: new Map(), parent: ROOT_INO, opens: 0,
    });
  }

  nlink(n: MNode): number {
    if (n.type !== S_IFDIR) return n.links;
    let subdirs = 0;
    for (const c of n.entries!.values()) if (this.nodes.get(c)!.type === S_IFDIR) subdirs++;
    return 2 + subdirs;
  }

  size(n: MNode): number {
    if (n.type === S_IFDIR) return 4096;
    if (n.type === S_IFLNK) return Buffer.byteLength(n.target!);
    return n.data.length;
  }

  dirs(): MNode[] { return [...this.nodes.values()].filter((n) => n.type === S_IFDIR); }

  /** every (parent, name) naming ino */
  linksOf(ino: Ino): [Ino, string][] {
    const out: [Ino, string][] = [];
    for (const d of this.dirs()) for (const [name, c] of d.entries!) if (c === ino) out.push([d.ino, name]);
    return out;
  }

  private forget(n: MNode): void {
    this.nodes.delete(n.ino);
    this.stale.push(n.ino);
  }

  // -------------------------------------------------------------------- checks shared by the operations

  static checkName(name: string): void {
    if (name.length === 0 || name.includes('/') || name.includes('\0')) err('EINVAL');
    if (Buffer.byteLength(name) > 255) err('ENAMETOOLONG');
  }

  node(ino: Ino): MNode {
    return this.nodes.get(ino) ?? err('ENOENT');
  }

  dir(ino: Ino): MNode {
    const n = this.node(ino);
    if (n.type !== S_IFDIR) err('ENOTDIR');
    return n;
  }

  handle(fh: Fh): MHandle {
    return this.handles.get(fh) ?? err('EBADF');
  }

  /** true when `ino` is `dir` or one of its ancestors */
  isAncestor(ino: Ino, dir: Ino): boolean {
    for (let cur = dir; ; cur = this.nodes.get(cur)!.parent!) {
      if (cur === ino) return true;
      if (cur === ROOT_INO) return false;
    }
  }

  /** drops one link of a non-directory; the inode goes when no link and no handle is left */
  private unlinkNode(n: MNode): void {
    n.links--;
    if (n.links === 0 && n.opens === 0) this.forget(n);
  }

  // -------------------------------------------------------------------- operations (check first, then change)

  /** validates a new entry; the caller then adds the node with `add` under the ino the filesystem chose */
  checkMake(parent: Ino, name: string): MNode {
    Model.checkName(name);
    const d = this.dir(parent);
    if (d.entries!.has(name)) err('EEXIST');
    return d;
  }

  add(parent: Ino, name: string, ino: Ino, type: number, perm: number, extra: Partial<MNode> = {}): MNode {
    const d = this.nodes.get(parent)!;
    if (type === S_IFDIR && d.perm & S_ISGID) perm |= S_ISGID;
    const n: MNode = {
      ino, type, perm, rdev: 0, links: type === S_IFDIR ? 0 : 1, data: Buffer.alloc(0), xattrs: new Map(),
      opens: 0, ...extra,
    };
    if (type === S_IFDIR) {
      n.entries = new Map();
      n.parent = parent;
    }
    this.nodes.set(ino, n);
    d.entries!.set(name, ino);
    this.made++;
    return n;
  }

  lookup(parent: Ino, name: string): MNode {
    if (name === '.' || name === '..') {
      const d = this.dir(parent);
      return this.nodes.get(name === '.' ? parent : d.parent!)!;
    }
    Model.checkName(name);
    const d = this.dir(parent);
    const c = d.entries!.get(name);
    return c === undefined ? err('ENOENT') : this.nodes.get(c)!;
  }

  link(ino: Ino, parent: Ino, name: string): MNode {
    Model.checkName(name);
    const n = this.node(ino);
    if (n.type === S_IFDIR) err('EPERM');
    if (n.links === 0) err('ENOENT');
    const d = this.dir(parent);
    if (d.entries!.has(name)) err('EEXIST');
    d.entries!.set(name, ino);
    n.links++;
    return n;
  }

  unlink(parent: Ino, name: string): void {
    Model.checkName(name);
    const d = this.dir(parent);
    const c = d.entries!.get(name) ?? err('ENOENT');
    const n = this.nodes.get(c)!;
    if (n.type === S_IFDIR) err('EISDIR');
    d.entries!.delete(name);
    this.unlinkNode(n);
  }

  rmdir(parent: Ino, name: string): void {
    if (name === '.') err('EINVAL');
    if (name === '..') err('ENOTEMPTY');
    Model.checkName(name);
    const d = this.dir(parent);
    const c = d.entries!.get(name) ?? err('ENOENT');
    const n = this.nodes.get(c)!;
    if (n.type !== S_IFDIR) err('ENOTDIR');
    if (n.entries!.size > 0) err('ENOTEMPTY');
    d.entries!.delete(name);
    this.forget(n);
  }

  rename(parent: Ino, name: string, newParent: Ino, newName: string, flags: number): void {
    Model.checkName(name);
    Model.checkName(newName);
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) || (flags & RENAME_NOREPLACE && flags & RENAME_EXCHANGE)) {
      err('EINVAL');
    }
    const sd = this.dir(parent);
    const dd = this.dir(newParent);
    const src = sd.entries!.get(name) ?? err('ENOENT');
    const dst = dd.entries!.get(newName);
    if (flags & RENAME_NOREPLACE && dst !== undefined) err('EEXIST');
    if (flags & RENAME_EXCHANGE && dst === undefined) err('ENOENT');
    if (dst === src) return; // two names of one inode: nothing happens
    const n = this.nodes.get(src)!;
    const moving = parent !== newParent;
    // judgement call (as Linux): a directory moved below itself is EINVAL before the target is looked at
    if (n.type === S_IFDIR && moving && this.isAncestor(n.ino, newParent)) err('EINVAL');
    if (flags & RENAME_EXCHANGE) {
      const o = this.nodes.get(dst!)!;
      if (o.type === S_IFDIR && moving && this.isAncestor(o.ino, parent)) err('EINVAL');
      sd.entries!.set(name, o.ino);
      dd.entries!.set(newName, n.ino);
      if (n.type === S_IFDIR) n.parent = newParent;
      if (o.type === S_IFDIR) o.parent = parent;
      return;
    }
    if (dst !== undefined) {
      const v = this.nodes.get(dst)!;
      if (n.type === S_IFDIR) {
        if (v.type !== S_IFDIR) err('ENOTDIR');
        if (v.entries!.size > 0) err('ENOTEMPTY');
      } else if (v.type === S_IFDIR) {
        err('EISDIR');
      }
      dd.entries!.delete(newName);
      if (v.type === S_IFDIR) this.forget(v);
      else this.unlinkNode(v);
    }
    sd.entries!.delete(name);
    dd.entries!.set(newName, n.ino);
    if (n.type === S_IFDIR) n.parent = newParent;
  }

  truncate(ino: Ino, size: number): MNode {
    const n = this.node(ino);
    if (n.type === S_IFDIR) err('EISDIR');
    if (n.type !== S_IFREG) err('EINVAL');
    n.data = resize(n.data, size);
    return n;
  }

  open(ino: Ino, flags: number, fh: () => Fh): MNode {
    const n = this.node(ino);
    this.checkOpenable(n);
    this.opened(n, flags, fh());
    return n;
  }

  checkOpenable(n: MNode): void {
    if (n.type === S_IFDIR) err('EISDIR');
    if (n.type === S_IFLNK) err('ELOOP');
  }

  opened(n: MNode, flags: number, fh: Fh): void {
    if (flags & O_TRUNC && (flags & 3) !== O_RDONLY) n.data = Buffer.alloc(0);
    n.opens++;
    this.handles.set(fh, { ino: n.ino, flags });
  }

  read(fh: Fh, off: number, len: number): Buffer {
    const h = this.handle(fh);
    if ((h.flags & 3) === O_WRONLY) err('EBADF');
    const n = this.nodes.get(h.ino)!;
    return n.data.subarray(Math.min(off, n.data.length), Math.min(off + len, n.data.length));
  }

  write(fh: Fh, off: number, data: Buffer): number {
    const h = this.handle(fh);
    if ((h.flags & 3) === O_RDONLY) err('EBADF');
    const n = this.nodes.get(h.ino)!;
    const at = h.flags & O_APPEND ? n.data.length : off;
    // POSIX: a write of no bytes to a regular file "shall return zero and have no other results"
    if (data.length && at + data.length > n.data.length) n.data = resize(n.data, at + data.length);
    data.copy(n.data, at);
    return data.length;
  }

  release(fh: Fh): void {
    const h = this.handle(fh);
    this.handles.delete(fh);
    const n = this.nodes.get(h.ino)!;
    n.opens--;
    if (n.opens === 0 && n.links === 0) this.forget(n);
  }

  setxattr(ino: Ino, name: string, value: Buffer, flags: number): void {
    if (!name.length || Buffer.byteLength(name) > 255) err('ERANGE');
    if (value.length > 65536) err('E2BIG');
    if (!xattrStored(name)) err('EOPNOTSUPP');
    const n = this.node(ino);
    const exists = n.xattrs.has(name);
    if (flags & XATTR_CREATE && exists) err('EEXIST');
    if (flags & XATTR_REPLACE && !exists) err('ENODATA');
    n.xattrs.set(name, Buffer.from(value));
  }

  getxattr(ino: Ino, name: string): Buffer {
    if (!xattrStored(name)) err('EOPNOTSUPP');
    return this.node(ino).xattrs.get(name) ?? err('ENODATA');
  }

  removexattr(ino: Ino, name: string): void {
    if (!xattrStored(name)) err('EOPNOTSUPP');
    const n = this.node(ino);
    if (!n.xattrs.delete(name)) err('ENODATA');
  }

  /** a remount: every handle is gone, and with them the inodes that only handles kept */
  remounted(): void {
    this.handles.clear();
    for (const n of [...this.nodes.values()]) {
      n.opens = 0;
      if (n.type !== S_IFDIR && n.links === 0) this.forget(n);
    }
  }
}

function resize(b: Buffer, size: number): Buffer {
  if (size === b.length) return b;
  if (size < b.length) return Buffer.from(b.subarray(0, size));
  const out = Buffer.alloc(size);
  b.copy(out);
  return out;
}

// ---------------------------------------------------------------------------------------------- comparing

type Outcome<T> = { ok: true; v: T } | { ok: false; code: string };

async function real<T>(f: () => Promise<T>): Promise<Outcome<T>> {
  try {
    return { ok: true, v: await f() };
  } catch (e) {
    if (e instanceof FsError) return { ok: false, code: e.code };
    throw e; // anything else is a bug of its own: the run stops with its stack
  }
}

function modeled<T>(f: () => T): Outcome<T> {
  try {
    return { ok: true, v: f() };
  } catch (e) {
    if (e instanceof MErr) return { ok: false, code: e.code };
    throw e;
  }
}

class Mismatch extends Error {}

const show = (o: Outcome<unknown>): string => (o.ok ? 'success' : o.code);
const fmtMode = (m: number): string => `0o${m.toString(8)}`;

function describeBytes(b: Uint8Array): string {
  return `${b.length} bytes ${Buffer.from(b.subarray(0, 16)).toString('hex')}${b.length > 16 ? '...' : ''}`;
}

/** where two byte strings first differ, for messages */
function firstDiff(a: Uint8Array, b: Uint8Array): string {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) {
      let j = i;
      while (j < n && a[j] !== b[j]) j++;
      return `differ from byte ${i} (chunk ${Math.floor(i / CHUNK)}, +${i % CHUNK}) for ${j - i} bytes: ` +
        `got ${Buffer.from(a.subarray(i, Math.min(i + 8, a.length))).toString('hex')}, ` +
        `want ${Buffer.from(b.subarray(i, Math.min(i + 8, b.length))).toString('hex')}`;
    }
  }
  return a.length === b.length ? 'equal' : `lengths differ: got ${a.length}, want ${b.length}`;
}

function attrProblems(m: Model, a: Attr, n: MNode): string[] {
  const p: string[] = [];
  const want = (what: string, got: unknown, exp: unknown) => { if (got !== exp) p.push(`${what} ${String(got)}, want ${String(exp)}`); };
  want('ino', a.ino, n.ino);
  if ((a.mode & S_IFMT) !== n.type) p.push(`type ${fmtMode(a.mode & S_IFMT)}, want ${fmtMode(n.type)}`);
  if ((a.mode & 0o7777) !== n.perm) p.push(`mode bits ${fmtMode(a.mode & 0o7777)}, want ${fmtMode(n.perm)}`);
  want('nlink', a.nlink, m.nlink(n));
  want('size', a.size, m.size(n));
  want('rdev', a.rdev, n.rdev);
  want('uid', a.uid, 0);
  want('gid', a.gid, 0);
  // st_blocks: 512-byte units of stored data; never more than whole chunks covering the size, each with slices
  // of half a chunk at most over it (compaction's bound, file-data.ts)
  const maxBlocks = n.type === S_IFDIR ? Infinity : Math.ceil(m.size(n) / CHUNK) * (1.5 * CHUNK / 512);
  if (!Number.isInteger(a.blocks) || a.blocks < 0 || a.blocks > maxBlocks) p.push(`blocks ${a.blocks} implausible for size ${a.size}`);
  return p;
}

// ---------------------------------------------------------------------------------------------- whole-tree snapshots

interface Desc {
  ino: Ino;
  mode: number;
  nlink: number;
  size: number;
  rdev: number;
  /** hex of a regular file's contents, or the symlink target, or a directory's '..' */
  body: string;
  xattrs: string;
}

async function snapshotReal(fs: Filesystem): Promise<Map<string, Desc>> {
  const out = new Map<string, Desc>();
  const walk = async (ino: Ino, path: string): Promise<void> => {
    const dh = await fs.opendir(ino);
    const list = await fs.readdir(dh, 0);
    await fs.releasedir(dh);
    for (const e of list) {
      if (e.name === '.' || e.name === '..') continue;
      const a = await fs.lookup(ino, e.name);
      const p = `${path}/${e.name}`;
      if (a.ino !== e.ino || (a.mode & S_IFMT) !== e.type) {
        throw new Mismatch(`readdir of ${path} says ${e.name} is ino ${e.ino} type ${fmtMode(e.type)}, lookup says ino ${a.ino} mode ${fmtMode(a.mode)}`);
      }
      let body = '';
      if ((a.mode & S_IFMT) === S_IFREG) {
        const fh = await fs.open(a.ino, O_RDONLY);
        const data = await fs.read(fh, 0, a.size + CHUNK);
        await fs.release(fh);
        body = data.toString('hex');
      } else if ((a.mode & S_IFMT) === S_IFLNK) {
        body = await fs.readlink(a.ino);
      } else if ((a.mode & S_IFMT) === S_IFDIR) {
        body = `..=${(await fs.lookup(a.ino, '..')).ino}`;
      }
      const names = (await fs.listxattr(a.ino)).sort();
      const xs: string[] = [];
      for (const x of names) xs.push(`${x}=${(await fs.getxattr(a.ino, x)).toString('hex')}`);
      out.set(p, { ino: a.ino, mode: a.mode, nlink: a.nlink, size: a.size, rdev: a.rdev, body, xattrs: xs.join(',') });
      if ((a.mode & S_IFMT) === S_IFDIR) await walk(a.ino, p);
    }
  };
  await walk(ROOT_INO, '');
  const root = await fs.getattr(ROOT_INO);
  const rx: string[] = [];
  for (const x of (await fs.listxattr(ROOT_INO)).sort()) rx.push(`${x}=${(await fs.getxattr(ROOT_INO, x)).toString('hex')}`);
  out.set('/', { ino: root.ino, mode: root.mode, nlink: root.nlink, size: root.size, rdev: root.rdev, body: `..=${ROOT_INO}`, xattrs: rx.join(',') });
  return out;
}

function snapshotModel(m: Model): Map<string, Desc> {
  const out = new Map<string, Desc>();
  const desc = (n: MNode): Desc => ({
    ino: n.ino, mode: n.type | n.perm, nlink: m.nlink(n), size: m.size(n), rdev: n.rdev,
    body: n.type === S_IFREG ? n.data.toString('hex') : n.type === S_IFLNK ? n.target! : n.type === S_IFDIR ? `..=${n.parent}` : '',
    xattrs: [...n.xattrs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => `${k}=${v.toString('hex')}`).join(','),
  });
  const walk = (d: MNode, path: string): void => {
    for (const [name, c] of d.entries!) {
      const n = m.nodes.get(c)!;
      out.set(`${path}/${name}`, desc(n));
      if (n.type === S_IFDIR) walk(n, `${path}/${name}`);
    }
  };
  walk(m.nodes.get(ROOT_INO)!, '');
  out.set('/', desc(m.nodes.get(ROOT_INO)!));
  return out;
}

function treeDiff(got: Map<string, Desc>, want: Map<string, Desc>): string[] {
  const p: string[] = [];
  for (const k of want.keys()) if (!got.has(k)) p.push(`missing ${k}`);
  for (const k of got.keys()) if (!want.has(k)) p.push(`unexpected ${k}`);
  for (const [k, w] of want) {
    const g = got.get(k);
    if (!g) continue;
    for (const f of ['ino', 'mode', 'nlink', 'size', 'rdev', 'xattrs'] as const) {
      if (g[f] !== w[f]) p.push(`${k}: ${f} ${String(g[f])}, want ${String(w[f])}`);
    }
    if (g.body !== w.body) {
      const isData = (w.mode & S_IFMT) === S_IFREG;
      p.push(`${k}: ${isData ? `data ${firstDiff(Buffer.from(g.body, 'hex'), Buffer.from(w.body, 'hex'))}` : `body '${g.body}', want '${w.body}'`}`);
    }
  }
  return p;
}

// ---------------------------------------------------------------------------------------------- the store itself

/** every key under prefix, of every collection (the store's maintenance listing), with its value */
async function scanAll(store: KvStore, prefix: string): Promise<[string, Uint8Array][]> {
  const keys = await store.keys(prefix);
  const values = await store.getMany(keys);
  return keys.map((k, i) => [k, values[i]!] as [string, Uint8Array]);
}

/**
 * After a remount and a finished clean-up, the store holds exactly the model: one inode record per live inode
 * (with the right counts), one entry per name, chunk entries only below each file's size whose lengths add up to
 * the inode's `stored`, one blob per chunk entry and no other, empty queues, and exact counters.
 */
async function storeProblems(store: KvStore, m: Model): Promise<string[]> {
  const p: string[] = [];
  const inodes = new Map((await scanAll(store, 'i/')).map(([k, v]) => [Number(k.slice(2)), v] as const));
  for (const ino of m.nodes.keys()) if (!inodes.has(ino)) p.push(`inode ${ino} has no record`);
  for (const ino of inodes.keys()) if (!m.nodes.has(ino)) p.push(`inode record i/${ino} of no live inode (leak)`);
  const stored = new Map<Ino, number>();
  for (const [ino, raw] of inodes) {
    const n = m.nodes.get(ino);
    if (!n) continue;
    const r = decodeInode(ino, raw);
    if (r.nlink !== m.nlink(n)) p.push(`i/${ino}: nlink ${r.nlink}, want ${m.nlink(n)}`);
    if (r.size !== m.size(n)) p.push(`i/${ino}: size ${r.size}, want ${m.size(n)}`);
    if (r.mode !== (n.type | n.perm)) p.push(`i/${ino}: mode ${fmtMode(r.mode)}, want ${fmtMode(n.type | n.perm)}`);
    if (r.truncFrom !== 0) p.push(`i/${ino}: truncate still pending (truncFrom ${r.truncFrom})`);
    if (n.type === S_IFDIR) {
      if (r.children !== n.entries!.size) p.push(`i/${ino}: children ${r.children}, want ${n.entries!.size}`);
      if (r.parent !== n.parent) p.push(`i/${ino}: parent ${r.parent}, want ${n.parent}`);
    }
    stored.set(ino, r.stored);
  }
  const wantEntries = new Set<string>();
  for (const d of m.dirs()) for (const [name, c] of d.entries!) wantEntries.add(`${d.ino}/${name}=${c}:${m.nodes.get(c)!.type}`);
  const gotEntries = new Set((await scanAll(store, 'd/')).map(([k, v]) => {
    const e = decodeDirent(v);
    return `${k.slice(2)}=${e.ino}:${e.type}`;
  }));
  for (const e of wantEntries) if (!gotEntries.has(e)) p.push(`entry d/${e} missing`);
  for (const e of gotEntries) if (!wantEntries.has(e)) p.push(`entry d/${e} unexpected`);

  const blobs = new Map((await scanAll(store, 'b/')).map(([k, v]) => [k.slice(2), v.length] as const));
  const referenced = new Set<string>();
  const sums = new Map<Ino, number>();
  for (const [k, v] of await scanAll(store, 'c/')) {
    const [inoS, idxS] = k.slice(2).split('/') as [string, string];
    const ino = Number(inoS);
    const idx = parseInt(idxS, 16);
    const c = decodeChunk(v);
    const n = m.nodes.get(ino);
    if (!n) { p.push(`chunk ${k} of no live inode (leak)`); continue; }
    const limit = Math.min(CHUNK, m.size(n) - idx * CHUNK);
    const extent = entryExtent(c);
    if (extent <= 0 || extent > limit) p.push(`chunk ${k}: holds ${extent} bytes, but at most ${limit} bytes of the chunk lie below size ${m.size(n)}`);
    if ((c.slices?.length ?? 0) > 32) p.push(`chunk ${k}: ${c.slices!.length} slices (compaction keeps at most 32)`);
    for (const b of entryBlobs(c)) {
      if (referenced.has(b.blobId)) p.push(`blob ${b.blobId} referenced twice`);
      referenced.add(b.blobId);
      if (!blobs.has(b.blobId)) p.push(`chunk ${k}: blob ${b.blobId} missing (dangling)`);
      else if (blobs.get(b.blobId) !== b.length) p.push(`chunk ${k}: blob ${b.blobId} holds ${blobs.get(b.blobId)} bytes, entry says ${b.length}`);
    }
    sums.set(ino, (sums.get(ino) ?? 0) + entryStored(c));
  }
  for (const [ino, s] of stored) if ((sums.get(ino) ?? 0) !== s) p.push(`i/${ino}: stored ${s}, chunk entries add up to ${sums.get(ino) ?? 0}`);
  let blobBytes = 0;
  for (const [id, len] of blobs) {
    blobBytes += len;
    if (!referenced.has(id)) p.push(`blob ${id} (${len} bytes) referenced by no chunk (leak)`);
  }
  const wantX = new Set<string>();
  for (const n of m.nodes.values()) for (const [k, v] of n.xattrs) wantX.add(`${n.ino}/${k}=${v.toString('hex')}`);
  const gotX = new Set((await scanAll(store, 'x/')).map(([k, v]) => `${k.slice(2)}=${Buffer.from(v).toString('hex')}`));
  for (const x of wantX) if (!gotX.has(x)) p.push(`xattr x/${x} missing`);
  for (const x of gotX) if (!wantX.has(x)) p.push(`xattr x/${x} unexpected`);
  for (const q of ['g/', 'p/', 'o/']) {
    const left = await scanAll(store, q);
    if (left.length) p.push(`queue ${q} not empty after clean-up: ${left.slice(0, 3).map(([k]) => k).join(' ')}${left.length > 3 ? ' ...' : ''}`);
  }
  const bytes = await store.incr(K.byteCount, 0);
  if (bytes !== blobBytes) p.push(`counter n/bytes ${bytes}, blobs hold ${blobBytes}`);
  const count = await store.incr(K.inodeCount, 0);
  if (count !== m.nodes.size) p.push(`counter n/inodes ${count}, live inodes ${m.nodes.size}`);
  return p;
}

// ---------------------------------------------------------------------------------------------- the driver

interface RunOptions {
  seed: number;
  ops: number;
  store: KvStore;
  /** closes the store and opens it again (LMDB); absent: the same store object is reused */
  reopenStore?: (store: KvStore) => Promise<KvStore>;
}

interface RunResult { ops: number; counts: Record<string, number>; outcomes: Record<string, number>; remounts: number; ms: number }

/**
 * Known bugs the run can steer around (KVFS_MODEL_AVOID), so that one bug does not hide the next:
 *  - unlink-dirty: every handle is flushed before an unlink or rename, since unlinking an open file drops its
 *    write-back data (see 'unlinking an open file keeps its unflushed data' below).
 *  - write-races: writes that run at once with others stay below the file's size (and below a concurrent
 *    truncate's new size), and no flush or fsync runs with them: a commit that overlaps a write extending the
 *    file loses the bytes past the old size ('a flush during a write ...', 'a write that commits early ...'
 *    below), and a truncate during a write that loads a chunk brings truncated bytes back ('a truncate
 *    during a write ...' below).
 *  - empty-write: no writes of zero bytes, since they extend the file ('a write of no bytes ...' below).
 */
const AVOIDABLE = ['unlink-dirty', 'write-races', 'empty-write'] as const;
const AVOID = new Set((process.env.KVFS_MODEL_AVOID ?? '').split(',').filter((x) => x));
for (const a of AVOID) if (!(AVOIDABLE as readonly string[]).includes(a)) throw new Error(`KVFS_MODEL_AVOID: unknown ${a}`);

const NAMES = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'];
/** the model's own rule: user., trusted. and security. names are stored, but SELinux labels */
const xattrStored = (name: string) => /^(user|trusted|security)\./.test(name) && name !== 'security.selinux';

const XNAMES = ['user.a', 'user.b', 'user.cc', 'trusted.t', 'security.s', 'security.selinux'];

class Runner {
  readonly m = new Model();
  readonly r: Rng;
  fs!: Filesystem;
  store: KvStore;
  readonly log: string[] = [];
  readonly counts: Record<string, number> = {};
  /** how often each operation ended in each way, e.g. 'rename ENOTEMPTY' */
  readonly outcomes: Record<string, number> = {};
  released: Fh[] = [];
  remounts = 0;
  opIndex = 0;

  /**
   * Write-back budget and blob cache, drawn from the seed: a tiny budget makes nearly every write commit at
   * once (under the writes of other calls too); no cache makes every read go to the store.
   */
  readonly fsOptions: FsOptions;

  constructor(readonly o: RunOptions) {
    this.r = new Rng(o.seed);
    this.store = o.store;
    this.fsOptions = {
      writeBufferBytes: this.r.pick([4 * CHUNK, 1 << 20, 64 << 20]),
      blobCacheBytes: this.r.pick([0, 16 * CHUNK, 64 << 20]),
    };
  }

  note(s: string): void {
    this.log.push(`#${this.opIndex} ${s}`);
  }

  fail(msg: string): never {
    throw new Mismatch(`seed ${this.o.seed}, op #${this.opIndex}: ${msg}`);
  }

  /** compares outcomes: both fail with the same code, or both succeed (then `same` compares values) */
  expect<A, B>(what: string, want: Outcome<A>, got: Outcome<B>, same?: (w: A, g: B) => string[]): void {
    const tally = `${what} ${show(got)}`;
    this.outcomes[tally] = (this.outcomes[tally] ?? 0) + 1;
    if (want.ok !== got.ok || (!want.ok && !got.ok && want.code !== got.code)) {
      this.fail(`${what}: got ${show(got)}, want ${show(want)}`);
    }
    if (want.ok && got.ok && same) {
      const p = same(want.v, got.v);
      if (p.length) this.fail(`${what}: ${p.join('; ')}`);
    }
  }

  attrOf = (n: MNode, a: Attr): string[] => attrProblems(this.m, a, n);

  // -------------------------------------------------------------------- picking targets

  dirIno(): Ino { return this.r.pick(this.m.dirs()).ino; }

  /** mostly a live directory; sometimes a non-directory (ENOTDIR) or a gone inode (ENOENT) */
  parentIno(): Ino {
    const x = this.r.int(100);
    if (x < 88) return this.dirIno();
    if (x < 95) {
      const others = [...this.m.nodes.values()].filter((n) => n.type !== S_IFDIR);
      if (others.length) return this.r.pick(others).ino;
      return this.dirIno();
    }
    return this.goneIno();
  }

  goneIno(): Ino {
    return this.m.stale.length && this.r.chance(0.8) ? this.r.pick(this.m.stale) : 900_000_000 + this.r.int(1000);
  }

  /** any inode: mostly live, sometimes gone */
  anyIno(): Ino {
    if (this.r.chance(0.05)) return this.goneIno();
    return this.r.pick([...this.m.nodes.keys()]);
  }

  fileIno(): Ino | undefined {
    const files = [...this.m.nodes.values()].filter((n) => n.type === S_IFREG);
    return files.length ? this.r.pick(files).ino : undefined;
  }

  name(): string {
    const x = this.r.int(1000);
    if (x < 940) return this.r.pick(NAMES);
    if (x < 955) return 'N'.repeat(255); // the longest valid name
    if (x < 970) return 'N'.repeat(256); // ENAMETOOLONG
    if (x < 978) return 'é'.repeat(128); // 128 characters, 256 bytes: ENAMETOOLONG
    if (x < 985) return 'sp ace é';
    if (x < 992) return this.r.pick(['', 'x/y', 'nul\0']); // EINVAL
    return this.r.pick(NAMES) + this.r.pick(NAMES);
  }

  /** a name in dir `parent`: an existing one most of the time */
  existingName(parent: Ino): string {
    const d = this.m.nodes.get(parent);
    if (d?.entries?.size && this.r.chance(0.75)) return this.r.pick([...d.entries.keys()]);
    return this.name();
  }

  perm(): number {
    return this.r.chance(0.8) ? this.r.pick([0o644, 0o755, 0o600, 0o700, 0o444]) : this.r.int(0o10000);
  }

  openFlags(): number {
    let f = this.r.pick([O_RDONLY, O_WRONLY, O_RDWR, O_RDWR, O_RDWR]);
    if (this.r.chance(0.15)) f |= O_APPEND;
    if (f !== O_RDONLY && this.r.chance(0.08)) f |= O_TRUNC;
    return f;
  }

  /** a random open handle; `mode` O_RDONLY/O_WRONLY asks (most of the time) for one that may read/write */
  handleFh(mode?: number): Fh | undefined {
    if (!this.m.handles.size) return undefined;
    const all = [...this.m.handles];
    const fit = mode === undefined ? [] : all.filter(([, h]) => (h.flags & 3) !== (mode === O_RDONLY ? O_WRONLY : O_RDONLY));
    return (fit.length && this.r.chance(0.92) ? this.r.pick(fit) : this.r.pick(all))[0];
  }

  /** offsets that favour chunk boundaries, the end of file, and holes past it */
  offset(size: number): number {
    const x = this.r.int(100);
    if (x < 30) return this.r.int(size + CHUNK);
    if (x < 50) return Math.max(0, this.r.int(MAX_FILE / CHUNK) * CHUNK + this.r.range(-80, 80));
    if (x < 65) return this.r.int(MAX_FILE / PAGE) * PAGE; // page-aligned: slices
    if (x < 80) return size + this.r.range(CHUNK, 3 * CHUNK); // past EOF: leaves a hole
    if (x < 90) return size;
    return 0;
  }

  length(): number {
    const x = this.r.int(100);
    if (x < 30) return this.r.range(1, 300);
    if (x < 50) return this.r.range(1, 2 * CHUNK);
    if (x < 65) return this.r.range(1, 3) * PAGE;
    if (x < 80) return CHUNK;
    if (x < 97 || AVOID.has('empty-write')) return this.r.range(2 * CHUNK, 3 * CHUNK + 100);
    return 0;
  }

  // -------------------------------------------------------------------- operations

  async mkdir(): Promise<void> {
    const parent = this.parentIno();
    const name = this.name();
    const perm = this.perm();
    this.note(`mkdir(${parent}, ${JSON.stringify(name)}, ${fmtMode(perm)})`);
    const got = await real(() => this.fs.mkdir(parent, name, perm, CTX));
    const want = modeled(() => this.m.checkMake(parent, name));
    this.expect('mkdir', want, got);
    if (got.ok) {
      const n = this.m.add(parent, name, got.v.ino, S_IFDIR, perm & 0o7777);
      this.expect('mkdir attr', { ok: true, v: n }, got, this.attrOf);
    }
  }

  async mknod(): Promise<void> {
    const parent = this.parentIno();
    const name = this.name();
    const kind = this.r.pick([S_IFIFO, S_IFCHR, S_IFREG, 0, S_IFDIR]);
    const perm = this.perm();
    const rdev = kind === S_IFCHR ? this.r.range(1, 0xffff) : 0;
    const mode = kind | perm;
    this.note(`mknod(${parent}, ${JSON.stringify(name)}, ${fmtMode(mode)}, ${rdev})`);
    const got = await real(() => this.fs.mknod(parent, name, mode, rdev, CTX));
    const want = modeled(() => {
      if (kind === S_IFDIR) err('EINVAL');
      return this.m.checkMake(parent, name);
    });
    this.expect('mknod', want, got);
    if (got.ok) {
      const n = this.m.add(parent, name, got.v.ino, kind || S_IFREG, perm, { rdev });
      this.expect('mknod attr', { ok: true, v: n }, got, this.attrOf);
    }
  }

  async symlink(): Promise<void> {
    const parent = this.parentIno();
    const name = this.name();
    const target = this.r.weighted([[85, this.r.pick(NAMES) + '/../' + this.r.pick(NAMES)], [5, 'é'.repeat(this.r.range(1, 50))],
      [4, 'T'.repeat(4095)], [3, 'T'.repeat(4096)], [3, '']] as const);
    this.note(`symlink(${parent}, ${JSON.stringify(name)}, target of ${Buffer.byteLength(target)} bytes)`);
    const got = await real(() => this.fs.symlink(parent, name, target, CTX));
    const want = modeled(() => {
      if (target === '') err('ENOENT');
      if (Buffer.byteLength(target) > 4095) err('ENAMETOOLONG');
      return this.m.checkMake(parent, name);
    });
    this.expect('symlink', want, got);
    if (got.ok) {
      const n = this.m.add(parent, name, got.v.ino, S_IFLNK, 0o777, { target });
      this.expect('symlink attr', { ok: true, v: n }, got, this.attrOf);
    }
  }

  async readlink(): Promise<void> {
    const links = [...this.m.nodes.values()].filter((n) => n.type === S_IFLNK);
    const ino = links.length && this.r.chance(0.7) ? this.r.pick(links).ino : this.anyIno();
    this.note(`readlink(${ino})`);
    const got = await real(() => this.fs.readlink(ino));
    const want = modeled(() => {
      const n = this.m.node(ino);
      return n.type === S_IFLNK ? n.target! : err('EINVAL');
    });
    this.expect('readlink', want, got, (w, g) => (w === g ? [] : [`target '${g}', want '${w}'`]));
  }

  async create(): Promise<void> {
    if (this.m.handles.size >= 12) return this.release();
    const parent = this.parentIno();
    const name = this.r.chance(0.3) ? this.existingName(parent) : this.name();
    const perm = this.perm() & 0o777;
    const flags = this.openFlags() | O_CREAT | (this.r.chance(0.4) ? O_EXCL : 0);
    this.note(`create(${parent}, ${JSON.stringify(name)}, ${fmtMode(perm)}, flags ${flags.toString(16)})`);
    const got = await real(() => this.fs.create(parent, name, perm, flags, CTX));
    // judgement call (the core's): without O_EXCL an existing name is looked up, and a directory is EISDIR
    let fresh = false;
    const want = modeled(() => {
      try {
        this.m.checkMake(parent, name);
        fresh = true;
        return undefined;
      } catch (e) {
        if (!(e instanceof MErr) || e.code !== 'EEXIST' || flags & O_EXCL) throw e;
        const n = this.m.lookup(parent, name);
        if (n.type === S_IFDIR) err('EISDIR');
        this.m.checkOpenable(n);
        return n;
      }
    });
    this.expect('create', want, got);
    if (got.ok && want.ok) {
      const n = fresh ? this.m.add(parent, name, got.v.attr.ino, S_IFREG, perm) : want.v!;
      this.m.opened(n, flags, got.v.fh);
      this.expect('create attr', { ok: true, v: n }, { ok: true, v: got.v.attr }, this.attrOf);
    }
  }

  async open(): Promise<void> {
    if (this.m.handles.size >= 12) return this.release();
    const f = this.fileIno();
    const ino = f !== undefined && this.r.chance(0.85) ? f : this.anyIno();
    const flags = this.openFlags();
    this.note(`open(${ino}, flags ${flags.toString(16)})`);
    const got = await real(() => this.fs.open(ino, flags));
    const want = modeled(() => {
      const n = this.m.node(ino);
      this.m.checkOpenable(n);
      return n;
    });
    this.expect('open', want, got);
    if (got.ok && want.ok) this.m.opened(want.v, flags, got.v);
  }

  async release(): Promise<void> {
    const fh = this.handleFh();
    if (fh === undefined) return;
    this.note(`release(${fh}) of ino ${this.m.handles.get(fh)!.ino}`);
    const got = await real(() => this.fs.release(fh));
    const want = modeled(() => this.m.release(fh));
    this.expect('release', want, got);
    this.released.push(fh);
  }

  async flushOrFsync(): Promise<void> {
    const fh = this.handleFh();
    if (fh === undefined) return;
    const sync = this.r.chance(0.5);
    this.note(`${sync ? 'fsync' : 'flush'}(${fh})`);
    const got = await real(() => (sync ? this.fs.fsync(fh, this.r.chance(0.5)) : this.fs.flush(fh)));
    this.expect(sync ? 'fsync' : 'flush', modeled(() => this.m.handle(fh)), got);
  }

  /** operations on handles that were released: EBADF */
  async badHandle(): Promise<void> {
    const fh = this.released.length ? this.r.pick(this.released) : 999_999;
    if (this.m.handles.has(fh)) return;
    const which = this.r.pick(['read', 'write', 'flush', 'release', 'readdir'] as const);
    this.note(`${which} on released handle ${fh}`);
    const got = await real(async () => {
      if (which === 'read') return void (await this.fs.read(fh, 0, 10));
      if (which === 'write') return void (await this.fs.write(fh, 0, Buffer.from('x')));
      if (which === 'flush') return this.fs.flush(fh);
      if (which === 'readdir') return void (await this.fs.readdir(fh, 0));
      return this.fs.release(fh);
    });
    this.expect(which, { ok: false, code: 'EBADF' }, got);
  }

  async write(): Promise<void> {
    const fh = this.handleFh(O_WRONLY);
    if (fh === undefined) return this.create();
    const h = this.m.handles.get(fh)!;
    const size = this.m.nodes.get(h.ino)!.data.length;
    let off = this.offset(size);
    let len = this.length();
    const end = (h.flags & O_APPEND ? size : off) + len;
    if (end > MAX_FILE) {
      if (h.flags & O_APPEND) len = Math.min(len, this.r.range(0, 200));
      else off = this.r.int(Math.max(1, MAX_FILE - len));
    }
    const data = this.r.bytes(len);
    this.note(`write(${fh} ino ${h.ino}${h.flags & O_APPEND ? ' append' : ''}, off ${off}, len ${len}) size was ${size}`);
    const got = await real(() => this.fs.write(fh, off, data));
    const want = modeled(() => this.m.write(fh, off, data));
    this.expect('write', want, got, (w, g) => (w === g ? [] : [`returned ${g}, want ${w}`]));
  }

  async read(): Promise<void> {
    const fh = this.handleFh(O_RDONLY);
    if (fh === undefined) return this.open();
    const h = this.m.handles.get(fh)!;
    const size = this.m.nodes.get(h.ino)!.data.length;
    const off = this.r.chance(0.1) ? this.r.int(size + 1) : this.offset(size);
    const len = this.r.chance(0.2) ? size + CHUNK : this.length();
    // now and then into the caller's buffer (garbage-filled; sometimes too short: EINVAL)
    const into = this.r.chance(0.2) ? Buffer.alloc(Math.max(0, len + this.r.range(-2, 100) * (this.r.chance(0.9) ? 1 : -1)), 0xee) : undefined;
    this.note(`read(${fh} ino ${h.ino}, off ${off}, len ${len}${into ? `, into ${into.length} bytes` : ''}) size ${size}`);
    const got = await real(() => this.fs.read(fh, off, len, into));
    const want = modeled(() => {
      const b = Buffer.from(this.m.read(fh, off, len));
      return into && into.length < len ? err('EINVAL') : b;
    });
    this.expect(into ? 'read into' : 'read', want, got, (w, g) => {
      if (!w.equals(g)) return [`data ${firstDiff(g, w)}`];
      if (into && g.length && (g.buffer !== into.buffer || g.byteOffset !== into.byteOffset)) return ['the data is not in the given buffer'];
      return [];
    });
  }

  async truncate(): Promise<void> {
    let ino: Ino;
    const fh = this.handleFh();
    if (fh !== undefined && this.r.chance(0.6)) ino = this.m.handles.get(fh)!.ino;
    else ino = this.r.chance(0.8) ? (this.fileIno() ?? this.anyIno()) : this.anyIno();
    const size = this.m.nodes.get(ino)?.data.length ?? 0;
    const x = this.r.int(100);
    const to = x < 40 ? this.r.int(size + 1) : x < 55 ? 0 : x < 80 ? Math.max(0, this.r.int(MAX_FILE / CHUNK) * CHUNK + this.r.range(-3, 3))
      : Math.min(MAX_FILE, size + this.r.range(1, 3 * CHUNK));
    const withMode = this.r.chance(0.1);
    const perm = this.perm();
    this.note(`setattr(${ino}, {size: ${to}${withMode ? `, mode: ${fmtMode(perm)}` : ''}}) size was ${size}`);
    const got = await real(() => this.fs.setattr(ino, withMode ? { size: to, mode: perm } : { size: to }, CTX));
    const want = modeled(() => {
      const n = this.m.truncate(ino, to);
      if (withMode) n.perm = perm & 0o7777;
      return n;
    });
    this.expect('truncate', want, got, this.attrOf);
  }

  async chmod(): Promise<void> {
    const ino = this.anyIno();
    const perm = this.r.chance(0.2) ? this.r.int(0o10000) | S_ISGID : this.perm();
    this.note(`setattr(${ino}, {mode: ${fmtMode(perm)}})`);
    const got = await real(() => this.fs.setattr(ino, { mode: perm }, CTX));
    const want = modeled(() => {
      const n = this.m.node(ino);
      n.perm = perm & 0o7777;
      return n;
    });
    this.expect('chmod', want, got, this.attrOf);
  }

  async link(): Promise<void> {
    const nondirs = [...this.m.nodes.values()].filter((n) => n.type !== S_IFDIR);
    const ino = nondirs.length && this.r.chance(0.85) ? this.r.pick(nondirs).ino : this.anyIno();
    const parent = this.parentIno();
    const name = this.name();
    this.note(`link(${ino}, ${parent}, ${JSON.stringify(name)})`);
    const got = await real(() => this.fs.link(ino, parent, name));
    const want = modeled(() => this.m.link(ino, parent, name));
    this.expect('link', want, got, this.attrOf);
  }

  /** KVFS_MODEL_AVOID=unlink-dirty: commit every open file before a name may go */
  async avoidUnlinkDirty(): Promise<void> {
    if (!AVOID.has('unlink-dirty')) return;
    for (const fh of this.m.handles.keys()) await this.fs.flush(fh);
  }

  async unlink(): Promise<void> {
    await this.avoidUnlinkDirty();
    const parent = this.parentIno();
    const name = this.existingName(parent);
    this.note(`unlink(${parent}, ${JSON.stringify(name)})`);
    const got = await real(() => this.fs.unlink(parent, name));
    this.expect('unlink', modeled(() => this.m.unlink(parent, name)), got);
  }

  /** unlinks every name of a file that is open, so reads and writes go on through handles alone */
  async unlinkOpen(): Promise<void> {
    const fh = this.handleFh();
    if (fh === undefined) return this.create();
    const ino = this.m.handles.get(fh)!.ino;
    await this.avoidUnlinkDirty();
    for (const [parent, name] of this.m.linksOf(ino)) {
      this.note(`unlink(${parent}, ${JSON.stringify(name)}) of open ino ${ino}`);
      const got = await real(() => this.fs.unlink(parent, name));
      this.expect('unlink of an open file', modeled(() => this.m.unlink(parent, name)), got);
    }
    this.note(`getattr(${ino}) of unlinked open file`);
    const got = await real(() => this.fs.getattr(ino));
    this.expect('getattr of an unlinked open file', modeled(() => this.m.node(ino)), got, this.attrOf);
  }

  async rmdir(): Promise<void> {
    let parent = this.parentIno();
    let name = this.r.chance(0.03) ? this.r.pick(['.', '..']) : this.existingName(parent);
    const empty = this.m.dirs().filter((d) => d.ino !== ROOT_INO && d.entries!.size === 0);
    if (empty.length && this.r.chance(0.4)) {
      // an empty directory anywhere, so that removals keep up with creations
      [parent, name] = this.m.linksOf(this.r.pick(empty).ino)[0]!;
    }
    this.note(`rmdir(${parent}, ${JSON.stringify(name)})`);
    const got = await real(() => this.fs.rmdir(parent, name));
    this.expect('rmdir', modeled(() => this.m.rmdir(parent, name)), got);
  }

  async rename(): Promise<void> {
    await this.avoidUnlinkDirty();
    const parent = this.parentIno();
    const name = this.existingName(parent);
    let newParent = this.r.chance(0.4) ? parent : this.parentIno();
    // now and then aim a directory at its own subtree (EINVAL), or at an ancestor
    const src = this.m.nodes.get(parent)?.entries?.get(name);
    if (src !== undefined && this.m.nodes.get(src)!.type === S_IFDIR && this.r.chance(0.2)) {
      const below = this.m.dirs().filter((d) => d.ino !== src && this.m.isAncestor(src, d.ino));
      if (below.length) newParent = this.r.pick(below).ino;
    }
    const newName = this.r.chance(0.5) ? this.existingName(newParent) : this.name();
    const flags = this.r.weighted([[70, 0], [12, RENAME_NOREPLACE], [15, RENAME_EXCHANGE], [3, this.r.pick([3, 4])]] as const);
    this.note(`rename(${parent}, ${JSON.stringify(name)}, ${newParent}, ${JSON.stringify(newName)}, flags ${flags})`);
    const got = await real(() => this.fs.rename(parent, name, newParent, newName, flags));
    const kind = flags === 0 ? 'rename' : flags === RENAME_NOREPLACE ? 'rename NOREPLACE' : flags === RENAME_EXCHANGE ? 'rename EXCHANGE' : 'rename bad flags';
    this.expect(kind, modeled(() => this.m.rename(parent, name, newParent, newName, flags)), got);
  }

  async lookup(): Promise<void> {
    const parent = this.parentIno();
    const name = this.r.chance(0.05) ? this.r.pick(['.', '..']) : this.existingName(parent);
    this.note(`lookup(${parent}, ${JSON.stringify(name)})`);
    const got = await real(() => this.fs.lookup(parent, name));
    this.expect('lookup', modeled(() => this.m.lookup(parent, name)), got, this.attrOf);
  }

  async getattr(): Promise<void> {
    const fh = this.handleFh();
    const ino = fh !== undefined && this.r.chance(0.3) ? this.m.handles.get(fh)!.ino : this.anyIno();
    this.note(`getattr(${ino})`);
    const got = await real(() => this.fs.getattr(ino));
    this.expect('getattr', modeled(() => this.m.node(ino)), got, this.attrOf);
  }

  async readdir(): Promise<void> {
    const ino = this.r.chance(0.9) ? this.dirIno() : this.anyIno();
    await this.readdirOf(ino, this.r.chance(0.3), this.r.chance(0.3) ? this.r.range(1, 4) : Infinity);
  }

  /** lists a directory (in pages of `page` entries) and compares the listing as a set */
  async readdirOf(ino: Ino, plus: boolean, page: number): Promise<void> {
    this.note(`readdir(${ino}${plus ? ', plus' : ''}${page < Infinity ? `, pages of ${page}` : ''})`);
    const got = await real(async () => {
      const fh = await this.fs.opendir(ino);
      const all = [];
      for (let off = 0; ;) {
        const part = await this.fs.readdir(fh, off, plus, page);
        if (!part.length) break;
        all.push(...part);
        off = part[part.length - 1]!.next;
      }
      await this.fs.releasedir(fh);
      return all;
    });
    const want = modeled(() => {
      const d = this.m.dir(ino);
      return [['.', ino], ['..', d.parent!], ...d.entries!] as [string, Ino][];
    });
    this.expect('readdir', want, got, (w, g) => {
      const key = (name: string, i: Ino, type: number) => `${JSON.stringify(name)}:${i}:${fmtMode(type)}`;
      const ws = w.map(([name, i]) => key(name, i, this.m.nodes.get(i)!.type)).sort();
      const gs = g.map((e) => key(e.name, e.ino, e.type)).sort();
      if (ws.join('|') !== gs.join('|')) return [`entries [${gs.join(' ')}], want [${ws.join(' ')}]`];
      const p: string[] = [];
      if (plus) {
        for (const e of g) {
          if (!e.attr) p.push(`readdirplus: no attr for ${e.name}`);
          else p.push(...this.attrOf(this.m.nodes.get(e.ino)!, e.attr).map((x) => `${e.name}: ${x}`));
        }
      }
      return p;
    });
  }

  async xattr(): Promise<void> {
    const withX = [...this.m.nodes.values()].filter((n) => n.xattrs.size);
    const ino = withX.length && this.r.chance(0.5) ? this.r.pick(withX).ino : this.anyIno();
    const own = [...(this.m.nodes.get(ino)?.xattrs.keys() ?? [])];
    const name = this.r.weighted([[90, own.length && this.r.chance(0.6) ? this.r.pick(own) : this.r.pick(XNAMES)], [3, 'other.ns'], [2, ''], [3, 'user.' + 'x'.repeat(250)],
      [2, 'user.' + 'x'.repeat(251)]] as const);
    const op = this.r.weighted([[35, 'set'], [30, 'get'], [15, 'list'], [20, 'remove']] as const);
    if (op === 'set') {
      const len = this.r.weighted([[90, this.r.int(64)], [5, 65536], [5, 65537]] as const);
      const value = this.r.bytes(len);
      const flags = this.r.weighted([[50, 0], [25, XATTR_CREATE], [25, XATTR_REPLACE]] as const);
      this.note(`setxattr(${ino}, ${JSON.stringify(name.slice(0, 20))}(${name.length}), ${len} bytes, flags ${flags})`);
      const got = await real(() => this.fs.setxattr(ino, name, value, flags));
      this.expect('setxattr', modeled(() => this.m.setxattr(ino, name, value, flags)), got);
    } else if (op === 'get') {
      this.note(`getxattr(${ino}, ${JSON.stringify(name.slice(0, 20))})`);
      const got = await real(() => this.fs.getxattr(ino, name));
      this.expect('getxattr', modeled(() => this.m.getxattr(ino, name)), got, (w, g) => (w.equals(g) ? [] : [`value ${describeBytes(g)}, want ${describeBytes(w)}`]));
    } else if (op === 'list') {
      this.note(`listxattr(${ino})`);
      const got = await real(() => this.fs.listxattr(ino));
      this.expect('listxattr', modeled(() => [...this.m.node(ino).xattrs.keys()]), got, (w, g) => {
        const a = [...g].sort().join(',');
        const b = [...w].sort().join(',');
        return a === b ? [] : [`names [${a}], want [${b}]`];
      });
    } else {
      this.note(`removexattr(${ino}, ${JSON.stringify(name.slice(0, 20))})`);
      const got = await real(() => this.fs.removexattr(ino, name));
      this.expect('removexattr', modeled(() => this.m.removexattr(ino, name)), got);
    }
  }

  /**
   * Data operations at once on one file, whose outcome does not depend on their order: writes to disjoint
   * ranges (through one or two handles), a flush or fsync, and a read of a range no write touches.
   */
  async concurrentData(): Promise<void> {
    const plain = [...this.m.handles].filter(([, h]) => (h.flags & 3) !== O_RDONLY && !(h.flags & O_APPEND));
    if (!plain.length) return this.create();
    const [fh, h] = this.r.pick(plain);
    const others = plain.filter(([f, o]) => o.ino === h.ino && f !== fh).map(([f]) => f);
    const n = this.m.nodes.get(h.ino)!;
    const size = n.data.length;
    const k = this.r.range(2, 4);
    const writes: { fh: Fh; off: number; data: Buffer }[] = [];
    // with write-races avoided, writes stay below the current size (commits that run meanwhile, the
    // budget's included, then lose nothing); otherwise they go anywhere up to MAX_FILE
    const span = AVOID.has('write-races') ? size : MAX_FILE;
    const slot = Math.floor(span / k);
    if (slot < 2) return;
    for (let i = 0; i < k; i++) {
      const len = this.r.range(1, Math.min(slot - 1, this.r.pick([100, CHUNK, 2 * CHUNK])));
      const lo = i * slot;
      const off = lo + this.r.int(slot - len);
      writes.push({ fh: others.length && this.r.chance(0.4) ? this.r.pick(others) : fh, off, data: this.r.bytes(len) });
    }
    // a read inside the current size that overlaps no write, through a handle that may read
    const readers = [...this.m.handles].filter(([, o]) => o.ino === h.ino && (o.flags & 3) !== O_WRONLY).map(([f]) => f);
    const rfh = readers.length ? this.r.pick(readers) : undefined;
    let read: { off: number; len: number } | undefined;
    for (let tries = 0; tries < 8 && size > 0 && !read && rfh !== undefined; tries++) {
      const off = this.r.int(size);
      const len = this.r.range(1, Math.min(size - off, 2 * CHUNK));
      if (writes.every((w) => off + len <= w.off || off >= w.off + w.data.length)) read = { off, len };
    }
    let sync = this.r.pick(['flush', 'fsync', 'none'] as const);
    if (AVOID.has('write-races')) sync = 'none';
    this.note(`at once on ino ${h.ino} (size ${size}): ${writes.map((w) => `write(${w.fh}, off ${w.off}, len ${w.data.length})`).join(', ')}` +
      `${read ? `, read(${rfh}, off ${read.off}, len ${read.len})` : ''}${sync !== 'none' ? `, ${sync}(${fh})` : ''}`);
    const want = read ? Buffer.from(this.m.read(rfh!, read.off, read.len)) : undefined;
    const jobs: Promise<unknown>[] = writes.map((w) => real(() => this.fs.write(w.fh, w.off, w.data)));
    if (read) jobs.push(real(() => this.fs.read(rfh!, read.off, read.len)));
    if (sync === 'flush') jobs.push(real(() => this.fs.flush(fh)));
    if (sync === 'fsync') jobs.push(real(() => this.fs.fsync(fh)));
    const outs = await Promise.all(jobs) as Outcome<unknown>[];
    writes.forEach((w, i) => {
      const m = modeled(() => this.m.write(w.fh, w.off, w.data));
      this.expect('concurrent write', m, outs[i] as Outcome<number>, (a, b) => (a === b ? [] : [`returned ${b}, want ${a}`]));
    });
    if (read) {
      this.expect('read during writes', { ok: true, v: want! }, outs[writes.length] as Outcome<Buffer>,
        (a, b) => (a.equals(b) ? [] : [`data ${firstDiff(b, a)}`]));
    }
    if (sync !== 'none') this.expect(`${sync} during writes`, { ok: true, v: undefined }, outs[outs.length - 1]!);
    // and the file as a whole
    if (rfh === undefined) return;
    const all = await real(() => this.fs.read(rfh, 0, MAX_FILE + 4 * CHUNK));
    this.expect('read after concurrent writes', modeled(() => Buffer.from(this.m.read(rfh, 0, MAX_FILE + 4 * CHUNK))), all,
      (a, b) => (a.equals(b) ? [] : [`data ${firstDiff(b, a)}`]));
  }

  /**
   * A write and a truncate of one file at once: the file must end as one of the two orders leaves it
   * (write then truncate, or truncate then write), in size and in every byte.
   */
  async concurrentTruncate(): Promise<void> {
    const plain = [...this.m.handles].filter(([, h]) => (h.flags & 3) !== O_RDONLY && !(h.flags & O_APPEND) &&
      this.m.nodes.get(h.ino)!.type === S_IFREG);
    if (!plain.length) return this.create();
    const [fh, h] = this.r.pick(plain);
    const n = this.m.nodes.get(h.ino)!;
    const size = n.data.length;
    let to = this.r.chance(0.5) ? this.r.int(size + 1) : this.r.int(MAX_FILE);
    let off = this.offset(size);
    let len = this.r.range(1, 3 * CHUNK);
    if (AVOID.has('write-races')) {
      // below both sizes the two orders agree, and the truncate's commit meets no extending write
      const below = Math.min(size, to);
      if (below < 2) return;
      off = this.r.int(below - 1);
      len = this.r.range(1, below - off);
    }
    if (off + len > MAX_FILE) off = Math.max(0, MAX_FILE - len);
    to = Math.min(to, MAX_FILE);
    const data = this.r.bytes(len);
    this.note(`at once on ino ${h.ino} (size ${size}): write(${fh}, off ${off}, len ${len}), setattr(${h.ino}, {size: ${to}})`);
    const [w, tr] = await Promise.all([
      real(() => this.fs.write(fh, off, data)),
      real(() => this.fs.setattr(h.ino, { size: to }, CTX)),
    ]);
    this.expect('write during truncate', { ok: true, v: len }, w, (a, b) => (a === b ? [] : [`returned ${b}, want ${a}`]));
    this.expect('truncate during write', { ok: true, v: undefined }, tr);
    const put = (b: Buffer) => {
      const out = off + len > b.length ? resize(b, off + len) : Buffer.from(b);
      data.copy(out, off);
      return out;
    };
    const writeFirst = resize(put(n.data), to);
    const truncFirst = put(resize(n.data, to));
    const fresh = await real(async () => {
      const rfh = await this.fs.open(h.ino, O_RDONLY);
      try {
        return await this.fs.read(rfh, 0, MAX_FILE + 4 * CHUNK);
      } finally {
        await this.fs.release(rfh);
      }
    });
    if (!fresh.ok) this.fail(`read after write and truncate at once: ${fresh.code}`);
    if (fresh.v.equals(writeFirst)) n.data = writeFirst;
    else if (fresh.v.equals(truncFirst)) n.data = truncFirst;
    else {
      this.fail(`write and truncate at once left neither order's result: against write-then-truncate ` +
        `${firstDiff(fresh.v, writeFirst)}; against truncate-then-write ${firstDiff(fresh.v, truncFirst)}`);
    }
    const a = await real(() => this.fs.getattr(h.ino));
    this.expect('getattr after write and truncate at once', { ok: true, v: n }, a, this.attrOf);
  }

  /** new entries with distinct names in one directory at once (plus a link and a rename there): all succeed */
  async concurrentNames(): Promise<void> {
    const d = this.r.pick(this.m.dirs());
    const free = ['c0', 'c1', 'c2', 'c3', 'c4', 'c5', ...NAMES].filter((x) => !d.entries!.has(x));
    const k = Math.min(free.length, this.r.range(2, 5));
    if (k < 2) return;
    const jobs: { label: string; run: () => Promise<unknown>; apply: (v: unknown) => void }[] = [];
    for (let i = 0; i < k; i++) {
      const name = free.splice(this.r.int(free.length), 1)[0]!;
      const kind = this.r.pick(['mkdir', 'create', 'mknod', 'symlink', 'link', 'rename'] as const);
      const perm = this.perm() & 0o777;
      if (kind === 'mkdir') {
        jobs.push({ label: `mkdir(${d.ino}, ${name})`, run: () => this.fs.mkdir(d.ino, name, perm, CTX),
          apply: (a) => this.m.add(d.ino, name, (a as Attr).ino, S_IFDIR, perm) });
      } else if (kind === 'create' && this.m.handles.size < 12) {
        jobs.push({ label: `create(${d.ino}, ${name})`, run: () => this.fs.create(d.ino, name, perm, O_RDWR | O_CREAT | O_EXCL, CTX),
          apply: (v) => {
            const { attr, fh } = v as { attr: Attr; fh: Fh };
            this.m.opened(this.m.add(d.ino, name, attr.ino, S_IFREG, perm), O_RDWR, fh);
          } });
      } else if (kind === 'link') {
        const files = [...this.m.nodes.values()].filter((n) => n.type !== S_IFDIR && n.links > 0);
        if (!files.length) continue;
        const f = this.r.pick(files);
        jobs.push({ label: `link(${f.ino}, ${d.ino}, ${name})`, run: () => this.fs.link(f.ino, d.ino, name),
          apply: () => this.m.link(f.ino, d.ino, name) });
      } else if (kind === 'rename') {
        const from = [...d.entries!.keys()].filter((x) => !jobs.some((j) => j.label.includes(`"${x}"`)));
        if (!from.length || jobs.some((j) => j.label.startsWith('rename'))) continue;
        const old = this.r.pick(from);
        jobs.push({ label: `rename(${d.ino}, "${old}", ${name})`, run: () => this.fs.rename(d.ino, old, d.ino, name),
          apply: () => this.m.rename(d.ino, old, d.ino, name, 0) });
      } else if (kind === 'symlink') {
        jobs.push({ label: `symlink(${d.ino}, ${name})`, run: () => this.fs.symlink(d.ino, name, 'target', CTX),
          apply: (a) => this.m.add(d.ino, name, (a as Attr).ino, S_IFLNK, 0o777, { target: 'target' }) });
      } else {
        jobs.push({ label: `mknod(${d.ino}, ${name})`, run: () => this.fs.mknod(d.ino, name, S_IFIFO | perm, 0, CTX),
          apply: (a) => this.m.add(d.ino, name, (a as Attr).ino, S_IFIFO, perm) });
      }
    }
    // a rename must not take a name another job adds, nor move a name a link job reads: links name inodes, fine
    this.note(`at once in dir ${d.ino}: ${jobs.map((j) => j.label).join(', ')}`);
    const outs = await Promise.all(jobs.map((j) => real(j.run)));
    outs.forEach((o, i) => {
      this.expect(`concurrent ${jobs[i]!.label.slice(0, jobs[i]!.label.indexOf('('))}`, { ok: true, v: undefined }, o);
      if (o.ok) jobs[i]!.apply(o.v);
    });
    // the directory as a whole: its listing, its link count, its entries' attributes
    const got = await real(() => this.fs.getattr(d.ino));
    this.expect('directory after concurrent changes', { ok: true, v: d }, got, this.attrOf);
    await this.readdirOf(d.ino, true, Infinity);
  }

  async statfs(): Promise<void> {
    this.note('statfs()');
    const s = await this.fs.statfs();
    const used = s.files - s.ffree;
    // loose: the counter moves asynchronously, but it never counts fewer than the root nor more than ever made
    if (used < 1 || used > this.m.made) this.fail(`statfs: ${used} inodes in use, ${this.m.nodes.size} live, ${this.m.made} ever made`);
    if (s.namemax !== 255 || s.bsize <= 0) this.fail(`statfs: namemax ${s.namemax}, bsize ${s.bsize}`);
  }

  /** closes the Filesystem (leaving handles open: close commits their files), opens it again, compares all */
  async remount(): Promise<void> {
    this.note(`remount with ${this.m.handles.size} handles open`);
    await this.compareTree('before remount');
    // release some handles first, keep the others open across close()
    for (const fh of [...this.m.handles.keys()]) {
      if (this.r.chance(0.5)) {
        const got = await real(() => this.fs.release(fh));
        this.expect('release before remount', modeled(() => this.m.release(fh)), got);
      }
    }
    await this.fs.close();
    if (this.o.reopenStore) this.store = await this.o.reopenStore(this.store);
    this.fs = await Filesystem.open(this.store, this.fsOptions);
    this.m.remounted();
    this.released = [];
    this.remounts++;
    await this.compareTree('after remount');
    await this.fs.janitor.run();
    const p = await storeProblems(this.store, this.m);
    if (p.length) this.fail(`store after remount: ${p.slice(0, 12).join('; ')}${p.length > 12 ? ` (and ${p.length - 12} more)` : ''}`);
  }

  async compareTree(when: string): Promise<void> {
    const got = await snapshotReal(this.fs);
    const p = treeDiff(got, snapshotModel(this.m));
    if (p.length) this.fail(`whole tree ${when}: ${p.slice(0, 12).join('; ')}${p.length > 12 ? ` (and ${p.length - 12} more)` : ''}`);
  }

  readonly table: readonly (readonly [number, string, () => Promise<void>])[] = [
    [22, 'write', () => this.write()],
    [14, 'read', () => this.read()],
    [6, 'open', () => this.open()],
    [7, 'create', () => this.create()],
    [5, 'release', () => this.release()],
    [4, 'flush/fsync', () => this.flushOrFsync()],
    [6, 'truncate', () => this.truncate()],
    [2, 'chmod', () => this.chmod()],
    [5, 'mkdir', () => this.mkdir()],
    [2, 'mknod', () => this.mknod()],
    [2, 'symlink', () => this.symlink()],
    [2, 'readlink', () => this.readlink()],
    [4, 'link', () => this.link()],
    [5, 'unlink', () => this.unlink()],
    [2, 'unlink open', () => this.unlinkOpen()],
    [4, 'rmdir', () => this.rmdir()],
    [8, 'rename', () => this.rename()],
    [7, 'xattr', () => this.xattr()],
    [5, 'lookup', () => this.lookup()],
    [4, 'getattr', () => this.getattr()],
    [3, 'readdir', () => this.readdir()],
    [1, 'statfs', () => this.statfs()],
    [1, 'bad handle', () => this.badHandle()],
    [3, 'concurrent data', () => this.concurrentData()],
    [2, 'concurrent names', () => this.concurrentNames()],
    [2, 'concurrent truncate', () => this.concurrentTruncate()],
  ];

  async run(): Promise<RunResult> {
    const t0 = performance.now();
    this.fs = await Filesystem.open(this.store, this.fsOptions);
    const remountAt = new Set([Math.floor(this.o.ops / 3), Math.floor((2 * this.o.ops) / 3)]);
    for (this.opIndex = 0; this.opIndex < this.o.ops; this.opIndex++) {
      const [, label, fn] = this.r.weighted(this.table.map((e) => [e[0], e] as const));
      this.counts[label] = (this.counts[label] ?? 0) + 1;
      await fn();
      if (remountAt.has(this.opIndex)) await this.remount();
      else if (this.opIndex % 1000 === 999) await this.compareTree('during the run');
    }
    await this.remount();
    await this.fs.close();
    return { ops: this.o.ops, counts: this.counts, outcomes: this.outcomes, remounts: this.remounts, ms: performance.now() - t0 };
  }
}

async function runModel(t: Test, engine: string, o: RunOptions): Promise<void> {
  const runner = new Runner(o);
  t.comment(`${engine}: seed ${o.seed} (replay with KVFS_MODEL_SEED=${o.seed}), ${o.ops} operations, ` +
    `write-back budget ${runner.fsOptions.writeBufferBytes}, blob cache ${runner.fsOptions.blobCacheBytes}` +
    (AVOID.size ? `, avoiding ${[...AVOID].join(', ')}` : ''));
  try {
    const res = await runner.run();
    t.pass(`${res.ops} operations and ${res.remounts} remounts matched the model in ${(res.ms / 1000).toFixed(1)} s`);
    t.comment(`${engine}: ${Object.entries(res.counts).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    if (process.env.KVFS_MODEL_OUTCOMES) {
      t.comment(`${engine} outcomes: ${Object.entries(res.outcomes).sort().map(([k, v]) => `${k}: ${v}`).join(', ')}`);
    }
  } catch (e) {
    const lastOps = runner.log.slice(-40);
    if (e instanceof Mismatch) t.fail(e.message, { lastOps });
    else t.fail(`seed ${o.seed}, op #${runner.opIndex}: unexpected error`, { error: (e as Error)?.stack ?? String(e), lastOps });
    if (process.env.KVFS_MODEL_LOG) {
      await writeFile(process.env.KVFS_MODEL_LOG, runner.log.join('\n') + '\n');
      t.comment(`every operation of the run: ${process.env.KVFS_MODEL_LOG}`);
    }
  }
}

const envSeed = process.env.KVFS_MODEL_SEED;
const seed = envSeed !== undefined && envSeed !== '' ? Number(envSeed) >>> 0 : Math.floor(Math.random() * 2 ** 32);
const opsMemory = Number(process.env.KVFS_MODEL_OPS ?? 10_000);
const engines = (process.env.KVFS_MODEL_ENGINES ?? 'memory,lmdb,redis').split(',');

if (engines.includes('memory')) {
  t.test('model: memory engine', async (t) => {
    const store = new MemoryStore();
    await formatVolume(store, { chunkSize: CHUNK, uid: 0, gid: 0 });
    await runModel(t, 'memory', { seed, ops: opsMemory, store });
  });
}

/**
 * The model on a store opened by URL and formatted, reopened by URL when the run asks (a remount). The store is
 * closed at teardown, then `cleanup` runs.
 */
async function runModelAt(t: Test, engine: string, url: string, cleanup?: () => Promise<unknown>): Promise<void> {
  let store = await openStore(url);
  t.teardown(async () => {
    await store.close().catch(() => undefined);
    await cleanup?.();
  });
  await formatVolume(store, { chunkSize: CHUNK, uid: 0, gid: 0 });
  await runModel(t, engine, {
    seed, ops: Math.max(1, Math.round(opsMemory * 0.3)), store,
    reopenStore: async (s) => {
      await s.close();
      store = await openStore(url);
      return store;
    },
  });
}

if (engines.includes('lmdb')) {
  t.test('model: LMDB engine', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'kvfs-model-'));
    await runModelAt(t, 'lmdb', `local:${dir}`, () => rm(dir, { recursive: true, force: true }));
  });
}

if (engines.includes('redis')) {
  t.test('model: Redis Cluster engine', { skip: redisAvailable() }, async (t) => {
    const cluster = process.env.KVFS_TEST_REDIS_URL ? undefined : await RedisCluster.start(t);
    await runModelAt(t, 'redis', process.env.KVFS_TEST_REDIS_URL ?? cluster!.url(`model${seed}`));
  });
}

// ---------------------------------------------------------------------------------------------- focused cases
// Minimal reproductions of what the model runs found (and a few things found around them), one bug each.

async function freshFs<S extends MemoryStore = MemoryStore>(t: Test, chunkSize = CHUNK, store = new MemoryStore() as S): Promise<{ fs: Filesystem; store: S }> {
  await formatVolume(store, { chunkSize, uid: 0, gid: 0 });
  const fs = await Filesystem.open(store);
  t.teardown(() => fs.close());
  return { fs, store };
}

t.test('unlinking an open file keeps its unflushed data (readable through the handle until release)', async (t) => {
  const { fs } = await freshFs(t);
  const { attr, fh } = await fs.create(ROOT_INO, 'f', 0o644, O_RDWR, CTX);
  await fs.write(fh, 0, Buffer.from('hello'));
  await fs.unlink(ROOT_INO, 'f');
  t.equal((await fs.read(fh, 0, 10)).toString(), 'hello', 'written before the unlink, not yet flushed');
  await fs.write(fh, 5, Buffer.from(' world'));
  t.equal((await fs.read(fh, 0, 20)).toString(), 'hello world', 'written after the unlink');
  t.equal((await fs.getattr(attr.ino)).nlink, 0);
  await fs.release(fh);
  await t.rejects(fs.getattr(attr.ino), { code: 'ENOENT' }, 'gone after the last release');
});

t.test('renaming over an open file keeps the victim\'s unflushed data for its handle', async (t) => {
  const { fs } = await freshFs(t);
  const { fh } = await fs.create(ROOT_INO, 'victim', 0o644, O_RDWR, CTX);
  await fs.write(fh, 0, Buffer.from('victim data'));
  await fs.mknod(ROOT_INO, 'other', S_IFREG | 0o644, 0, CTX);
  await fs.rename(ROOT_INO, 'other', ROOT_INO, 'victim');
  t.equal((await fs.read(fh, 0, 20)).toString(), 'victim data');
  await fs.release(fh);
});

t.test('a flush during a write that extends the file keeps the written bytes', async (t) => {
  const { fs } = await freshFs(t);
  const { attr, fh } = await fs.create(ROOT_INO, 'f', 0o644, O_RDWR, CTX);
  const data = Buffer.alloc(3 * CHUNK, 0x61);
  // the flush runs while the write is between its chunks: the file's size is not yet raised, so the commit
  // stores the chunks already written as holes and drops their buffers
  await Promise.all([fs.write(fh, 0, data), fs.flush(fh)]);
  t.equal((await fs.getattr(attr.ino)).size, data.length);
  const back = await fs.read(fh, 0, data.length);
  t.ok(back.equals(data), `read back what was written (${firstDiff(back, data)})`);
  await fs.release(fh);
});

t.test('a write that commits early (budget spent) during another extending write keeps both', async (t) => {
  const store = new MemoryStore();
  await formatVolume(store, { chunkSize: CHUNK, uid: 0, gid: 0 });
  const fs = await Filesystem.open(store, { writeBufferBytes: 2 * CHUNK });
  t.teardown(() => fs.close());
  const { fh } = await fs.create(ROOT_INO, 'f', 0o644, O_RDWR, CTX);
  await fs.write(fh, 0, Buffer.alloc(CHUNK, 0x30));
  await fs.flush(fh);
  // a extends the file chunk by chunk; b rewrites chunk 0, finds the budget spent and commits, while the
  // file's size still says one chunk
  const a = Buffer.alloc(8 * CHUNK, 0x61);
  const b = Buffer.alloc(CHUNK, 0x62);
  await Promise.all([fs.write(fh, 4 * CHUNK, a), fs.write(fh, 0, b)]);
  const want = Buffer.alloc(12 * CHUNK);
  b.copy(want, 0);
  a.copy(want, 4 * CHUNK);
  const back = await fs.read(fh, 0, want.length + 10);
  t.ok(back.equals(want), `read back both writes (${firstDiff(back, want)})`);
  await fs.release(fh);
});

t.test('a truncate during a write does not bring truncated bytes back', async (t) => {
  const store = new MemoryStore();
  await formatVolume(store, { chunkSize: CHUNK, uid: 0, gid: 0 });
  const fs = await Filesystem.open(store, { blobCacheBytes: 0 });
  t.teardown(() => fs.close());
  const { attr, fh } = await fs.create(ROOT_INO, 'f', 0o644, O_RDWR, CTX);
  const old = Buffer.alloc(4 * CHUNK + 1000, 0x61);
  await fs.write(fh, 0, old);
  await fs.fsync(fh);
  // The write appends inside chunk 4, so it first loads that chunk's committed (old) bytes; the truncate
  // runs while the blob is fetched, and the loaded chunk is adopted afterwards: 'a' bytes past 100 return.
  const tail = Buffer.alloc(10, 0x62);
  await Promise.all([fs.write(fh, old.length, tail), fs.setattr(attr.ino, { size: 100 }, CTX)]);
  const writeFirst = Buffer.alloc(100, 0x61);
  const truncFirst = Buffer.alloc(old.length + tail.length);
  truncFirst.fill(0x61, 0, 100);
  tail.copy(truncFirst, old.length);
  const back = await fs.read(fh, 0, 10 * CHUNK);
  t.ok(back.equals(writeFirst) || back.equals(truncFirst),
    `the file is what one order or the other leaves (against truncate-then-write: ${firstDiff(back, truncFirst)})`);
  await fs.release(fh);
});

/**
 * A memory store whose next get of one key answers only when the test says (the value read before the hold),
 * and whose next commit is made only when the test says.
 */
class HoldingStore extends MemoryStore {
  private hold: { key: string; reached: (release: () => void) => void } | undefined;
  private holdCommit: ((release: () => void) => void) | undefined;
  /** resolves, with the function that lets the answer go, once the get was asked and its value read */
  holdNextGet(key: string): Promise<() => void> {
    return new Promise((reached) => { this.hold = { key, reached }; });
  }
  /** resolves, with the function that lets it go on, once the next commit was asked (and not yet made) */
  holdNextCommit(): Promise<() => void> {
    return new Promise((reached) => { this.holdCommit = reached; });
  }
  override async get(key: string): Promise<Uint8Array | undefined> {
    const v = await super.get(key);
    const h = this.hold;
    if (h && key === h.key) {
      this.hold = undefined;
      await new Promise<void>((release) => h.reached(release));
    }
    return v;
  }
  override async commit(...args: Parameters<MemoryStore['commit']>): ReturnType<MemoryStore['commit']> {
    const h = this.holdCommit;
    if (h) {
      this.holdCommit = undefined;
      await new Promise<void>((release) => h(release));
    }
    return super.commit(...args);
  }
}

/** a HoldingStore volume with a file of `chunks` chunks of 'a' committed, closed and opened again (nothing cached) */
async function committedFile(t: Test, chunks: number) {
  const { fs, store } = await freshFs(t, CHUNK, new HoldingStore());
  const { attr, fh } = await fs.create(ROOT_INO, 'f', 0o644, O_RDWR, CTX);
  await fs.write(fh, 0, Buffer.alloc(chunks * CHUNK, 0x61));
  await fs.release(fh);
  return { fs, store, ino: attr.ino, fh: await fs.open(attr.ino, O_RDWR) };
}

t.test('a chunk map read that straddles a truncate does not bring the truncated chunk back later', async (t) => {
  // A read of a cold chunk asks the store for its chunk map entry; a shrinking truncate runs and finishes
  // before the answer arrives. The answer (the entry as it was before the truncate) must not be kept: when the
  // file grows again, the chunk is a hole and reads as zeros. Found by test/mount/fast-read.test.ts (a
  // concurrent O_DIRECT reader beside the fuzzer's truncates), where the stale entry was also published.
  const { fs, store, ino, fh: fh2 } = await committedFile(t, 6);
  const held = store.holdNextGet(K.chunk(ino, 5));
  const reading = fs.read(fh2, 5 * CHUNK, CHUNK);
  const release = await held;
  await fs.setattr(ino, { size: 100 }, CTX);
  release();
  await reading;
  await fs.setattr(ino, { size: 6 * CHUNK }, CTX);
  const back = await fs.read(fh2, 5 * CHUNK, CHUNK);
  t.ok(back.equals(Buffer.alloc(CHUNK)), `the grown chunk reads as zeros (${firstDiff(back, Buffer.alloc(CHUNK))})`);
  await fs.release(fh2);
});

t.test('a chunk map read during a truncate to 0 does not keep the entries the truncate deletes', async (t) => {
  // A truncate to 0 leaves no in-memory bound that hides the stale entries (truncFrom 0 is "none") while its
  // commit runs and before it deletes them: a read of the map then finds one, and must not keep it.
  const { fs, store, ino, fh: fh2 } = await committedFile(t, 2);
  const held = store.holdNextGet(K.chunk(ino, 0));
  const reading = fs.read(fh2, 0, CHUNK);
  const releaseGet = await held;
  const commitHeld = store.holdNextCommit();
  const truncating = fs.setattr(ino, { size: 0 }, CTX);
  const releaseCommit = await commitHeld;
  releaseGet();
  await reading.catch(() => undefined);
  releaseCommit();
  await truncating;
  await fs.setattr(ino, { size: CHUNK }, CTX);
  const back = await fs.read(fh2, 0, CHUNK);
  t.ok(back.equals(Buffer.alloc(CHUNK)), `the grown chunk reads as zeros (${firstDiff(back, Buffer.alloc(CHUNK))})`);
  await fs.release(fh2);
});

t.test('a chunk map read that straddles a commit of the same chunk does not bring the old bytes back', async (t) => {
  // As above with a write and fsync of the chunk instead of a truncate: the old entry must not be kept.
  const { fs, store, ino, fh: fh2 } = await committedFile(t, 3);
  const held = store.holdNextGet(K.chunk(ino, 2));
  const reading = fs.read(fh2, 2 * CHUNK, CHUNK);
  const release = await held;
  const fresh = Buffer.alloc(CHUNK, 0x62);
  await fs.write(fh2, 2 * CHUNK, fresh);
  await fs.fsync(fh2);
  release();
  await reading;
  const back = await fs.read(fh2, 2 * CHUNK, CHUNK);
  t.ok(back.equals(fresh), `the chunk reads as written (${firstDiff(back, fresh)})`);
  await fs.release(fh2);
});

t.test('a write of no bytes does not change the size (POSIX write(2))', async (t) => {
  const { fs } = await freshFs(t);
  const { attr, fh } = await fs.create(ROOT_INO, 'f', 0o644, O_RDWR, CTX);
  await fs.write(fh, 0, Buffer.from('abc'));
  t.equal(await fs.write(fh, 1000, Buffer.alloc(0)), 0);
  t.equal((await fs.getattr(attr.ino)).size, 3);
  await fs.release(fh);
});

t.test('operations fail by rejecting, never by throwing synchronously', async (t) => {
  // a driver that writes fs.mknod(...).then(reply, replyError) must not see an exception instead
  const { fs } = await freshFs(t);
  const calls: [string, () => Promise<unknown>][] = [
    ['mknod of a directory', () => fs.mknod(ROOT_INO, 'x', S_IFDIR | 0o755, 0, CTX)],
    ['symlink with an empty target', () => fs.symlink(ROOT_INO, 'y', '', CTX)],
    ['symlink with a target too long', () => fs.symlink(ROOT_INO, 'y', 'x'.repeat(5000), CTX)],
  ];
  for (const [what, call] of calls) {
    let p: Promise<unknown> | undefined;
    try {
      p = call();
    } catch (e) {
      t.fail(`${what}: threw ${(e as FsError).code} synchronously`);
      continue;
    }
    await t.rejects(p, FsError, `${what}: rejects`);
  }
});

t.test('a second mount does not remove files the first mount holds open after unlink', async (t) => {
  // Filesystem.open reaps every orphan record in the store, including those of a mount that is still running
  const store = new MemoryStore();
  await formatVolume(store, { chunkSize: CHUNK, uid: 0, gid: 0 });
  const one = await Filesystem.open(store);
  t.teardown(() => one.close());
  const { attr, fh } = await one.create(ROOT_INO, 'f', 0o644, O_RDWR, CTX);
  const data = Buffer.alloc(3 * CHUNK, 0x61);
  await one.write(fh, 0, data);
  await one.fsync(fh);
  await one.unlink(ROOT_INO, 'f');
  const two = await Filesystem.open(new MemoryStore(store));
  t.teardown(() => two.close());
  await two.janitor.run();
  const still = await real(() => one.getattr(attr.ino));
  t.equal(show(still), 'success', 'the inode is still there for the first mount');
  const back = await one.read(fh, 0, data.length).catch((e: Error) => Buffer.from(`error ${(e as FsError).code ?? e.message}`));
  t.ok(back.equals(data), `the first mount still reads its data (${firstDiff(back, data)})`);
  await one.release(fh);
});

t.test('model: a short run with every known bug avoided and a fixed seed (smoke test)', async (t) => {
  // keeps the model's own machinery covered even while the full runs fail on a known bug
  if (AVOID.size) {
    t.comment('skipped: KVFS_MODEL_AVOID is set');
    return;
  }
  const store = new MemoryStore();
  await formatVolume(store, { chunkSize: CHUNK, uid: 0, gid: 0 });
  for (const a of AVOIDABLE) AVOID.add(a);
  try {
    await runModel(t, 'memory (known bugs avoided)', { seed: 42, ops: 2000, store });
  } finally {
    AVOID.clear();
  }
});

t.test('unlinked files the kernel forgets are removed in batches: few commits, nothing left behind', async (t) => {
  // rm -r of many small files: each unlink is one commit; the kernel's FORGETs, the orphans' removal and the
  // purge of their chunk entries are batched, not one commit (or two) per file
  class CountingStore extends MemoryStore {
    commits = 0;
    override async commit(...args: Parameters<MemoryStore['commit']>): ReturnType<MemoryStore['commit']> {
      this.commits++;
      return super.commit(...args);
    }
  }
  const { fs, store } = await freshFs(t, CHUNK, new CountingStore());
  const N = 300;
  const inos: Ino[] = [];
  for (let i = 0; i < N; i++) {
    const { attr, fh } = await fs.create(ROOT_INO, `f${i}`, 0o644, O_RDWR, CTX);
    fs.remember(attr.ino); // the kernel knows it, as after a CREATE reply
    await fs.write(fh, 0, Buffer.alloc(5000, i & 0xff));
    await fs.release(fh);
    inos.push(attr.ino);
  }
  store.commits = 0;
  for (let i = 0; i < N; i++) await fs.unlink(ROOT_INO, `f${i}`);
  t.equal(store.commits, N, 'one commit per unlink');
  t.equal((await store.keys(K.orphanPrefix)).length, N, 'the kernel still knows them: orphans until it forgets them');
  store.commits = 0;
  for (const ino of inos) fs.forget(ino, 1);
  await new Promise((r) => setTimeout(r, 100));
  await fs.janitor.run();
  t.ok(store.commits <= 12, `the ${N} FORGETs, removals, purges and blob collection took ${store.commits} commits`);
  for (const prefix of [K.orphanPrefix, K.purgePrefix, K.gcPrefix, K.chunkPrefix(inos[0]!)]) {
    t.same(await store.keys(prefix), [], `nothing left under ${prefix}`);
  }
  t.equal((await store.keys('i/')).length, 1, 'only the root inode is left');
  t.same((await store.keys('b/')).length, 0, 'every blob collected');
});

t.test('removal: a file of one chunk goes in its unlink\'s commit, its blob to the GC queue; a larger one through the purge queue', async (t) => {
  const { fs, store } = await freshFs(t, CHUNK);
  const make = async (name: string, bytes: number) => {
    const { attr, fh } = await fs.create(ROOT_INO, name, 0o644, O_RDWR, CTX);
    await fs.write(fh, 0, Buffer.alloc(bytes, 0x5a));
    await fs.release(fh);
    return attr.ino;
  };
  const small = await make('small', CHUNK - 100);
  const large = await make('large', 2 * CHUNK + 10);
  await fs.unlink(ROOT_INO, 'small');
  t.same(await store.keys(K.purgePrefix), [], 'the small file queued no purge');
  t.same(await store.keys(K.chunkPrefix(small)), [], 'its chunk entry went in the same commit');
  // (the janitor, woken 20 ms after the commit, may have collected it already)
  const queued = (await store.keys(K.gcPrefix)).length;
  t.ok(queued === 1 || (await store.keys('b/')).length === 3, 'its blob went to the GC queue');
  t.notOk(await store.get(K.inode(small)), 'and its inode is gone');
  await fs.unlink(ROOT_INO, 'large');
  t.same(await store.keys(K.purgePrefix), [K.purge(large)], 'the file of three chunks went to the purge queue');
  await fs.janitor.run();
  for (const prefix of [K.purgePrefix, K.gcPrefix, K.chunkPrefix(large)]) t.same(await store.keys(prefix), [], `nothing left under ${prefix}`);
  t.same(await store.keys('b/'), [], 'every blob collected');
});
