import { closeSync, fdatasync, openSync, readdirSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';

/**
 * The write-ahead log of a local (LMDB) store (lmdb.ts): every metadata write is one record appended to a log
 * file (one write() call, so a write that resolved is in the page cache and survives kill -9), and `sync` is one
 * fdatasync of the log, where an LMDB commit would write and sync B-tree pages. LMDB takes the records later, many
 * in one transaction (a checkpoint); then the log file that held them is deleted.
 *
 * Files: DIR/log.<n>, n counting up; records are appended to the newest. A checkpoint starts a new file (`rotate`)
 * and deletes the older ones (`drop`) once LMDB holds their records durably.
 *
 * Format: a header (MAGIC, then the boot id of the machine that wrote the file, 36 bytes), then records:
 * [u32 length of body][u32 crc32 of body][body]; a body is [u8 type][...]: WRITES [u32 count] then per write
 * [u16 key bytes][key][u32 value bytes, DELETED for a delete][value], or SYNCED (empty): everything before it in
 * every log file was made durable (sync writes it, then fdatasyncs).
 *
 * Replay (`recover`): records in file order until the first one that is short or fails its crc (a torn tail). After
 * a kill of the process the page cache held every record written, so all of them are replayed. After a machine
 * crash (the files name another boot) records after the last SYNCED were never promised and may have reached the
 * disk in any order (a later page before an earlier one): replay stops at the last SYNCED, so the store comes back
 * exactly as of its last completed sync. Records hold the values a write left, not the operations (a counter's new
 * value, not its delta), so replaying a record LMDB already holds changes nothing: a replay over a checkpoint that
 * was under way is safe.
 */
export interface LogWrite {
  key: string;
  /** the value the key took; null: deleted */
  value: Buffer | null;
}

const MAGIC = Buffer.from('kvfs-log-1\n');
const BOOT_ID_BYTES = 36;
const HEADER_BYTES = MAGIC.length + BOOT_ID_BYTES;
const RECORD_HEAD = 8;
const WRITES = 1;
const SYNCED = 2;
const DELETED = 0xffffffff;
const FILE = /^log\.(\d+)$/;

/** the running kernel's boot id (a machine crash or a reboot changes it) */
export function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim().padEnd(BOOT_ID_BYTES).slice(0, BOOT_ID_BYTES);
  } catch {
    return 'unknown'.padEnd(BOOT_ID_BYTES);
  }
}

/** the log files in dir, oldest first */
function logFiles(dir: string): { n: number; path: string }[] {
  return readdirSync(dir)
    .flatMap((f) => {
      const m = FILE.exec(f);
      return m ? [{ n: Number(m[1]), path: join(dir, f) }] : [];
    })
    .sort((a, b) => a.n - b.n);
}

export interface Recovered {
  /** the writes to replay, in order */
  writes: LogWrite[];
  /** the files they came from (delete them once LMDB holds the writes durably) */
  files: string[];
  /** the next file number */
  next: number;
  /** records dropped: after a torn record, or after the last sync of a crashed machine */
  dropped: number;
}

/** reads every log file in dir (see above); boot: this boot's id (tests pass another) */
export function recover(dir: string, boot = bootId()): Recovered {
  const files = logFiles(dir);
  type Rec = { writes: LogWrite[] | undefined; crashed: boolean };
  const recs: Rec[] = [];
  let dropped = 0;
  for (const f of files) {
    const data = readFileSync(f.path);
    if (data.length < HEADER_BYTES || !data.subarray(0, MAGIC.length).equals(MAGIC)) continue; // never got its header
    const crashed = data.toString('latin1', MAGIC.length, HEADER_BYTES) !== boot;
    let at = HEADER_BYTES;
    while (at + RECORD_HEAD <= data.length) {
      const len = data.readUInt32LE(at);
      const body = data.subarray(at + RECORD_HEAD, at + RECORD_HEAD + len);
      if (len === 0 || body.length < len || crc32(body) !== data.readUInt32LE(at + 4)) break;
      recs.push({ writes: body[0] === WRITES ? decodeWrites(body) : undefined, crashed });
      at += RECORD_HEAD + len;
    }
    if (at + RECORD_HEAD <= data.length && data.readUInt32LE(at) !== 0) dropped++;
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

/** the log this process appends to (it holds the store's log lock: one writer) */
export class WriteLog {
  #dir: string;
  #n: number;
  #fd: number;
  #pos = HEADER_BYTES;
  /** files written since their last fdatasync (the current one, and older ones not yet dropped) */
  #unsynced = new Map<number, string>();
  /** files older than the current one, not yet dropped */
  #older: { n: number; fd: number; path: string }[] = [];
  #path: string;
  #buf = Buffer.allocUnsafe(64 << 10);
  readonly #boot = bootId();

  /** starts file log.<next> in dir */
  constructor(dir: string, next: number) {
    this.#dir = dir;
    this.#n = next;
    this.#path = join(dir, `log.${next}`);
    this.#fd = this.#create(this.#path);
  }

  /** bytes in the current file */
  get size(): number {
    return this.#pos;
  }

  /** a new log file with its header (the current file stays current until the caller switches) */
  #create(path: string): number {
    const fd = openSync(path, 'wx', 0o600);
    try {
      const head = Buffer.concat([MAGIC, Buffer.from(this.#boot, 'latin1')]);
      writeSync(fd, head, 0, head.length, 0);
    } catch (e) {
      closeSync(fd);
      unlinkSync(path);
      throw e;
    }
    this.#unsynced.set(fd, path);
    return fd;
  }

  /** appends one record of writes (applied together at replay) with one write() call */
  append(writes: readonly LogWrite[]): void {
    let len = 5;
    for (const w of writes) len += 6 + Buffer.byteLength(w.key) + (w.value?.length ?? 0);
    const total = RECORD_HEAD + len;
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
    b.writeUInt32LE(len, 0);
    b.writeUInt32LE(crc32(b.subarray(RECORD_HEAD, RECORD_HEAD + len)), 4);
    const total = RECORD_HEAD + len;
    let done = 0;
    while (done < total) done += writeSync(this.#fd, b, done, total - done, this.#pos + done);
    this.#pos += total;
    this.#unsynced.set(this.#fd, this.#path);
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
    try {
      await Promise.all(files.map(([fd]) => new Promise<void>((res, rej) => fdatasync(fd, (e) => (e ? rej(e) : res())))));
    } catch (e) {
      for (const [fd, path] of files) this.#unsynced.set(fd, path);
      throw e;
    }
  }

  /**
   * Starts a new file; records appended from now on go there. Returns a token for `drop`: the files before it can
   * be deleted once LMDB holds their records durably.
   */
  rotate(): number {
    const path = join(this.#dir, `log.${this.#n + 1}`);
    const fd = this.#create(path);
    this.#older.push({ n: this.#n, fd: this.#fd, path: this.#path });
    this.#n++;
    this.#fd = fd;
    this.#path = path;
    this.#pos = HEADER_BYTES;
    return this.#n - 1;
  }

  /** deletes the file that `rotate` returned `upTo` for, and those before it */
  drop(upTo: number): void {
    while (this.#older.length && this.#older[0]!.n <= upTo) {
      const f = this.#older.shift()!;
      this.#unsynced.delete(f.fd);
      closeSync(f.fd);
      unlinkSync(f.path);
    }
  }

  /** closes the current file and deletes every file: LMDB holds every record (the caller checkpointed) */
  close(): void {
    this.drop(Infinity);
    closeSync(this.#fd);
    unlinkSync(this.#path);
  }
}

/** deletes log files replayed into LMDB */
export function removeFiles(files: readonly string[]): void {
  for (const f of files) unlinkSync(f);
}

/**
 * Writes a log holds that LMDB does not yet: key -> value (null: deleted), and per collection the keys of it
 * (scan merges them with LMDB's range). Values are never changed once set (kv.ts: callers never modify them).
 */
export class Overlay {
  readonly values = new Map<string, Buffer | null>();
  readonly #byCollection = new Map<string, Set<string>>();
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
      if (!keys) this.#byCollection.set(coll, (keys = new Set()));
      keys.add(key);
    }
    this.values.set(key, value);
    this.bytes += value?.length ?? 0;
  }

  /** the keys held of one collection (a prefix ending in '/') */
  collection(prefix: string): ReadonlySet<string> | undefined {
    return this.#byCollection.get(prefix);
  }
}
