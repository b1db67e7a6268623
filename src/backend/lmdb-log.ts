import { closeSync, fdatasync, fsync, fsyncSync, ftruncateSync, openSync, readdirSync, readFileSync, renameSync, statfsSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { keyCompare } from './kv-rules.js';

/**
 * The write-ahead log of a local (LMDB) store (lmdb.ts): every metadata write is one record appended to a log
 * file (one write() call, so a write that resolved is in the page cache and survives kill -9), and `sync` is one
 * fdatasync of the log, where an LMDB commit would write and sync B-tree pages. LMDB takes the records later, many
 * in one transaction (a checkpoint); then the log file that held them is let go.
 *
 * Files: DIR/log.<n>, n counting up; records are appended to the newest. A checkpoint starts a new file (`rotate`),
 * as does a full one, and lets the older ones go (`drop`) once LMDB holds their records durably. Files are
 * SEGMENT_BYTES long, written whole (zeros) once when made and then reused (renamed to their next number): a record
 * overwrites blocks the filesystem already holds, so an fdatasync writes those blocks and nothing else (appending
 * would allocate blocks, and on ext4 every fdatasync would then wait for a journal commit, with whatever else the
 * machine has pending in it).
 *
 * Format: a header (MAGIC, the boot id of the machine that wrote it, 36 bytes, the file's number, u32), then
 * records: [u32 length of body][u32 crc32 of number and body][u32 the file's number][body]; a body is [u8 type]...:
 * WRITES [u32 count] then per write [u16 key bytes][key][u32 value bytes, DELETED for a delete][value], or SYNCED
 * (empty): everything before it in every log file was made durable (sync writes it, then fdatasyncs). A reused file
 * still holds records of its earlier number past the new ones: they name another number and end the replay there.
 *
 * Replay (`recover`): records in file order until the first one that is short, names another file, or fails its
 * crc (a torn tail). After a kill of the process the page cache held every record written, so all of them are
 * replayed. After a machine crash (the files name another boot) records after the last SYNCED were never promised
 * and may have reached the disk in any order (a later page before an earlier one): replay stops at the last
 * SYNCED, so the store comes back exactly as of its last completed sync. Records hold the values a write left, not
 * the operations (a counter's new value, not its delta), so replaying a record LMDB already holds changes nothing:
 * a replay over a checkpoint that was under way is safe.
 */
export interface LogWrite {
  key: string;
  /** the value the key took; null: deleted */
  value: Buffer | null;
}

const MAGIC = Buffer.from('kvfs-log-2\n');
const BOOT_ID_BYTES = 36;
const HEADER_BYTES = MAGIC.length + BOOT_ID_BYTES + 4;
const RECORD_HEAD = 12;
const WRITES = 1;
const SYNCED = 2;
const DELETED = 0xffffffff;
const FILE = /^log\.(\d+)$/;
const SPARE = /^log-spare\.(\d+)$/;
/**
 * a log file's length (a record larger than what is left of it goes on past it): 8 MiB, or a 32nd of the free space
 * of a small filesystem (at least 64 KiB)
 */
const SEGMENT_BYTES = 8 << 20;
function segmentBytes(dir: string): number {
  try {
    const st = statfsSync(dir);
    return Math.max(64 << 10, Math.min(SEGMENT_BYTES, Math.floor((st.bavail * st.bsize) / 32 / 65536) * 65536));
  } catch {
    return SEGMENT_BYTES;
  }
}
/** files kept for reuse */
const SPARES = 2;

/** the running kernel's boot id (a machine crash or a reboot changes it) */
export function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim().padEnd(BOOT_ID_BYTES).slice(0, BOOT_ID_BYTES);
  } catch {
    return 'unknown'.padEnd(BOOT_ID_BYTES);
  }
}

/** the files in dir whose names match re, by their number */
function numbered(dir: string, re: RegExp): { n: number; path: string }[] {
  return readdirSync(dir)
    .flatMap((f) => {
      const m = re.exec(f);
      return m ? [{ n: Number(m[1]), path: join(dir, f) }] : [];
    })
    .sort((a, b) => a.n - b.n);
}

export interface Recovered {
  /** the writes to replay, in order */
  writes: LogWrite[];
  /** the files they came from (a new WriteLog takes them to reuse once LMDB holds the writes durably) */
  files: string[];
  /** the next file number */
  next: number;
  /** records dropped: after a torn record, or after the last sync of a crashed machine */
  dropped: number;
}

const crcOf = (b: Buffer, at: number, len: number) => crc32(b.subarray(at + 8, at + RECORD_HEAD + len));

/** reads every log file in dir (see above); boot: this boot's id (tests pass another) */
export function recover(dir: string, boot = bootId()): Recovered {
  const files = numbered(dir, FILE);
  type Rec = { writes: LogWrite[] | undefined; crashed: boolean };
  const recs: Rec[] = [];
  let dropped = 0;
  for (const f of files) {
    const data = readFileSync(f.path);
    // a file that never got its header, or reused and not yet renumbered
    if (data.length < HEADER_BYTES || !data.subarray(0, MAGIC.length).equals(MAGIC) || data.readUInt32LE(HEADER_BYTES - 4) !== f.n) continue;
    const crashed = data.toString('latin1', MAGIC.length, MAGIC.length + BOOT_ID_BYTES) !== boot;
    let at = HEADER_BYTES;
    while (at + RECORD_HEAD <= data.length) {
      const len = data.readUInt32LE(at);
      if (len === 0 || at + RECORD_HEAD + len > data.length || data.readUInt32LE(at + 8) !== f.n || crcOf(data, at, len) !== data.readUInt32LE(at + 4)) break;
      const body = data.subarray(at + RECORD_HEAD, at + RECORD_HEAD + len);
      recs.push({ writes: body[0] === WRITES ? decodeWrites(body) : undefined, crashed });
      at += RECORD_HEAD + len;
    }
    // a torn record of this file (not the zeros after the last one, nor an older record of a reused file)
    if (at + RECORD_HEAD <= data.length && data.readUInt32LE(at) !== 0 && data.readUInt32LE(at + 8) === f.n) dropped++;
  }
  // after a machine crash: only what the last SYNCED covers
  let end = recs.length;
  if (recs.some((r) => r.crashed)) {
    end = 0;
    recs.forEach((r, i) => { if (!r.writes) end = i; });
  }
  const writes: LogWrite[] = [];
  recs.forEach((r, i) => {
    if (!r.writes) return;
    if (i < end) writes.push(...r.writes);
    else dropped++;
  });
  return { writes, files: files.map((f) => f.path), next: (files.at(-1)?.n ?? 0) + 1, dropped };
}

function decodeWrites(body: Buffer): LogWrite[] {
  const count = body.readUInt32LE(1);
  const out: LogWrite[] = [];
  let at = 5;
  for (let i = 0; i < count; i++) {
    const klen = body.readUInt16LE(at);
    const key = body.toString('utf8', at + 2, at + 2 + klen);
    at += 2 + klen;
    const vlen = body.readUInt32LE(at);
    at += 4;
    if (vlen === DELETED) {
      out.push({ key, value: null });
    } else {
      out.push({ key, value: Buffer.from(body.subarray(at, at + vlen)) });
      at += vlen;
    }
  }
  return out;
}

interface LogFile { n: number; fd: number; path: string }

/** the log this process appends to (it holds the store's log lock: one writer) */
export class WriteLog {
  readonly #dir: string;
  #cur: LogFile;
  #pos = HEADER_BYTES;
  /** descriptors of files written since their last fdatasync (the current one, and older ones not yet dropped) */
  readonly #unsynced = new Set<number>();
  /** syncs under way, and descriptors of files let go meanwhile (closed when none is: a sync may be using them) */
  #syncs = 0;
  readonly #closeLater: number[] = [];
  /** files older than the current one, not yet dropped */
  readonly #older: LogFile[] = [];
  /** files to reuse (their paths) */
  readonly #spares: string[] = [];
  #spareN = 0;
  /** the directory, and whether a name in it changed since its last fsync */
  readonly #dirFd: number;
  #dirDirty = false;
  #buf = Buffer.allocUnsafe(64 << 10);
  readonly #boot = bootId();
  readonly #segment: number;

  /** starts file log.<next> in dir; `reuse`: files replayed into LMDB (kept as spares, or deleted) */
  constructor(dir: string, next: number, reuse: readonly string[] = []) {
    this.#dir = dir;
    this.#segment = segmentBytes(dir);
    this.#dirFd = openSync(dir, 'r');
    for (const f of numbered(dir, SPARE)) {
      this.#spares.push(f.path);
      this.#spareN = Math.max(this.#spareN, f.n + 1);
    }
    for (const path of reuse) this.#letGo(path);
    this.#cur = this.#take(next);
  }

  /** file n, made from a spare or written whole (zeros) and synced; with its header; not yet current */
  #take(n: number): LogFile {
    const path = join(this.#dir, `log.${n}`);
    const spare = this.#spares.pop();
    let fd: number;
    if (spare !== undefined) {
      renameSync(spare, path);
      fd = openSync(path, 'r+');
    } else {
      fd = openSync(path, 'wx', 0o600);
      try {
        const zeros = Buffer.alloc(Math.min(1 << 20, this.#segment));
        for (let at = 0; at < this.#segment; at += zeros.length) writeAll(fd, zeros, zeros.length, at);
        fsyncSync(fd);
      } catch {
        // no room for a whole file: records are appended (each sync then allocates)
        try {
          ftruncateSync(fd, 0);
        } catch { /* written over below */ }
      }
    }
    try {
      const head = Buffer.alloc(HEADER_BYTES);
      MAGIC.copy(head);
      head.write(this.#boot, MAGIC.length, 'latin1');
      head.writeUInt32LE(n, HEADER_BYTES - 4);
      writeAll(fd, head, head.length, 0);
      // the first record slot: zero, so that an older record there ends a replay at once
      writeAll(fd, Buffer.alloc(RECORD_HEAD), RECORD_HEAD, HEADER_BYTES);
    } catch (e) {
      closeSync(fd);
      unlinkSync(path);
      throw e;
    }
    this.#unsynced.add(fd);
    this.#dirDirty = true;
    return { n, fd, path };
  }

  /** a file LMDB holds every record of: kept to reuse, or deleted */
  #letGo(path: string): void {
    this.#dirDirty = true;
    if (this.#spares.length < SPARES) {
      const spare = join(this.#dir, `log-spare.${this.#spareN++}`);
      renameSync(path, spare);
      this.#spares.push(spare);
    } else {
      unlinkSync(path);
    }
  }

  /** appends one record of writes (applied together at replay) with one write() call */
  append(writes: readonly LogWrite[]): void {
    const total = recordBytes(writes);
    const len = total - RECORD_HEAD;
    if (this.#buf.length < total) this.#buf = Buffer.allocUnsafe(Math.max(total, this.#buf.length * 2));
    const b = this.#buf;
    let at = RECORD_HEAD;
    b[at] = WRITES;
    b.writeUInt32LE(writes.length, at + 1);
    at += 5;
    for (const w of writes) {
      const klen = b.write(w.key, at + 2, 'utf8');
      b.writeUInt16LE(klen, at);
      at += 2 + klen;
      if (w.value === null) {
        b.writeUInt32LE(DELETED, at);
        at += 4;
      } else {
        b.writeUInt32LE(w.value.length, at);
        w.value.copy(b, at + 4);
        at += 4 + w.value.length;
      }
    }
    this.#write(b, len);
  }

  #write(b: Buffer, len: number): void {
    const total = RECORD_HEAD + len;
    // a full file: the next one (a record larger than a file goes on past its end)
    if (this.#pos + total + RECORD_HEAD > this.#segment && this.#pos > HEADER_BYTES) this.rotate();
    b.writeUInt32LE(len, 0);
    b.writeUInt32LE(this.#cur.n, 8);
    b.writeUInt32LE(crcOf(b, 0, len), 4);
    // the slot after the record: zero, so that a replay ends there and not at an older record of a reused file
    const end = b.length >= total + 4 ? total + 4 : total;
    if (end > total) b.writeUInt32LE(0, total);
    writeAll(this.#cur.fd, b, end, this.#pos);
    this.#pos += total;
    this.#unsynced.add(this.#cur.fd);
  }

  /**
   * Makes every record appended so far durable: a SYNCED record, then an fdatasync of each file written since its
   * last one (the caller syncs the blob files first: a record must not reach the disk before the blobs it names).
   */
  async sync(): Promise<void> {
    const b = this.#buf;
    b[RECORD_HEAD] = SYNCED;
    this.#write(b, 1);
    const files = [...this.#unsynced];
    this.#unsynced.clear();
    this.#syncs++;
    try {
      await Promise.all(files.map((fd) => new Promise<void>((res, rej) => fdatasync(fd, (e) => (e ? rej(e) : res())))));
    } catch (e) {
      // to sync again: the files still in use (one let go meanwhile has its records in LMDB)
      for (const fd of files) if (fd === this.#cur.fd || this.#older.some((f) => f.fd === fd)) this.#unsynced.add(fd);
      throw e;
    } finally {
      if (--this.#syncs === 0) for (const fd of this.#closeLater.splice(0)) closeSync(fd);
    }
    await this.syncDir();
  }

  /**
   * Makes the files' names durable (an fsync of the directory) when one changed since the last: a file renamed
   * into use must keep its name with the records a sync promised, and a file let go must not come back after a
   * machine crash and be replayed over newer state (a checkpoint calls this after `drop`, before the next).
   */
  async syncDir(): Promise<void> {
    if (!this.#dirDirty) return;
    this.#dirDirty = false;
    try {
      await new Promise<void>((res, rej) => fsync(this.#dirFd, (e) => (e ? rej(e) : res())));
    } catch (e) {
      this.#dirDirty = true;
      throw e;
    }
  }

  /**
   * Starts a new file; records appended from now on go there. Returns a token for `drop`: the files up to it can
   * be let go once LMDB holds their records durably.
   */
  rotate(): number {
    const next = this.#take(this.#cur.n + 1);
    this.#older.push(this.#cur);
    this.#cur = next;
    this.#pos = HEADER_BYTES;
    return this.#cur.n - 1;
  }

  /** lets go of the file that `rotate` returned `upTo` for, and those before it */
  drop(upTo: number): void {
    while (this.#older.length && this.#older[0]!.n <= upTo) {
      const f = this.#older.shift()!;
      this.#unsynced.delete(f.fd);
      // a sync under way may be about to fdatasync it: closing it now would sync another file with its number, or fail
      if (this.#syncs) this.#closeLater.push(f.fd);
      else closeSync(f.fd);
      this.#letGo(f.path);
    }
  }

  /** closes and deletes every file, spares too: LMDB holds every record (the caller checkpointed) */
  close(): void {
    this.drop(Infinity);
    unlinkSync(this.#cur.path);
    for (const f of this.#spares.splice(0)) unlinkSync(f);
    // (a background sync may still be using them)
    for (const fd of [this.#cur.fd, this.#dirFd]) {
      if (this.#syncs) this.#closeLater.push(fd);
      else closeSync(fd);
    }
  }
}

/** bytes of the record that holds these writes (its head, type, count, and per write its key and value) */
export function recordBytes(writes: readonly { key: string; value: Uint8Array | null }[]): number {
  let n = RECORD_HEAD + 5;
  for (const w of writes) n += 6 + Buffer.byteLength(w.key) + (w.value?.length ?? 0);
  return n;
}

/** writes all of b[0, len) at pos */
function writeAll(fd: number, b: Buffer, len: number, pos: number): void {
  let done = 0;
  while (done < len) done += writeSync(fd, b, done, len - done, pos + done);
}

/**
 * Writes a log holds that LMDB does not yet: key -> value (null: deleted), and per collection the keys of it
 * (scan merges them with LMDB's range). Values are never changed once set (kv.ts: callers never modify them).
 */
export class Overlay {
  readonly values = new Map<string, Buffer | null>();
  /** per collection its keys (Keys: sorted when a scan asks for them) */
  readonly #byCollection = new Map<string, Keys>();
  /** bytes of keys and values held */
  bytes = 0;
  /** bytes of LMDB pages the writes held may take (lmdb-space.ts needOf), counted by the store */
  need = 0;

  get size(): number {
    return this.values.size;
  }

  set(key: string, value: Buffer | null): void {
    const old = this.values.get(key);
    if (old !== undefined) this.bytes -= old?.length ?? 0;
    else {
      this.bytes += key.length + 48;
      const coll = key.slice(0, key.lastIndexOf('/') + 1);
      let keys = this.#byCollection.get(coll);
      if (!keys) this.#byCollection.set(coll, (keys = new Keys()));
      keys.add(key);
    }
    this.values.set(key, value);
    this.bytes += value?.length ?? 0;
  }

  /** forgets key (a key made and deleted again while held, that nothing below holds: no tombstone needed) */
  forget(key: string): void {
    const old = this.values.get(key);
    if (old === undefined) return;
    this.values.delete(key);
    this.bytes -= key.length + 48 + (old?.length ?? 0);
    this.#byCollection.get(key.slice(0, key.lastIndexOf('/') + 1))!.remove(key);
  }

  /** the keys held of one collection (a prefix ending in '/'), in byte order */
  collection(prefix: string): readonly string[] | undefined {
    return this.#byCollection.get(prefix)?.sorted();
  }
}

/**
 * The keys of one collection: a part in byte order and the keys added since (a set: removed in O(1)), sorted and
 * merged in when a scan asks (`sorted`). Writes far outnumber scans (a directory of 20,000 names takes a tombstone
 * per unlink and is scanned only by readdir; small blobs come and go by the thousand and are scanned by no one),
 * so an add costs a push, not an insertion into the middle of a large array. A key removed from the sorted part is
 * spliced out (O(n), as an insertion was).
 */
class Keys {
  #sorted: string[] = [];
  #pending = new Set<string>();

  add(key: string): void {
    const s = this.#sorted;
    // in order already (counters, queues named in order, a directory filled in name order): no pending part
    if (!this.#pending.size && (!s.length || keyCompare(s[s.length - 1]!, key) < 0)) s.push(key);
    else this.#pending.add(key);
  }

  remove(key: string): void {
    if (this.#pending.delete(key)) return;
    const s = this.#sorted;
    const at = firstAfter(s, key) - 1;
    if (s[at] === key) s.splice(at, 1);
  }

  sorted(): readonly string[] {
    if (!this.#pending.size) return this.#sorted;
    const add = [...this.#pending].sort(keyCompare);
    const old = this.#sorted;
    const out: string[] = new Array(old.length + add.length);
    let i = 0;
    let j = 0;
    let k = 0;
    while (i < old.length && j < add.length) out[k++] = keyCompare(old[i]!, add[j]!) < 0 ? old[i++]! : add[j++]!;
    while (i < old.length) out[k++] = old[i++]!;
    while (j < add.length) out[k++] = add[j++]!;
    this.#sorted = out;
    this.#pending.clear();
    return out;
  }
}

/** the index of the first of sorted keys that comes after key (keys.length when none does) */
export function firstAfter(keys: readonly string[], key: string | undefined): number {
  if (key === undefined) return 0;
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keyCompare(keys[mid]!, key) <= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
