/**
 * The FUSE session loop: raw requests in, exactly one reply out for every request that takes one.
 *
 * Contract:
 *  - Each request is parsed at once (src/fs/fuse/wire); a parse error is answered with its errno (unknown
 *    opcode: ENOSYS). Inline bodies are valid only during `handle`, so WRITE data and SETXATTR values that sit
 *    inline are copied before the handler runs; pool bodies are released when the reply is sent.
 *  - The handler for the opcode (the ops table) returns a Reply value or throws; a throw is answered with
 *    `toErrno` of what was thrown. A request whose opcode has no handler gets ENOSYS. Whatever happens, a
 *    request gets one reply and only one (FORGET, BATCH_FORGET and INTERRUPT get none).
 *  - INTERRUPT aborts the AbortSignal handed to the handler of the named request; handlers that wait (for a
 *    buffer, a lock) give up with EINTR, the others finish normally.
 *  - A reply that cannot be encoded (a value out of range) is answered EIO, with the error logged.
 *  - A handler that has not answered within `requestTimeout` seconds is answered EIO (logged with its
 *    opcode), so no caller waits forever on a request that was lost; its late result is dropped.
 *  - Early writes (RawRequest.answered: the reader thread answered the WRITE when it queued it) are applied in
 *    order per inode, and every later request about that inode waits until they are: a READ, FLUSH, FSYNC,
 *    SETATTR ... sees what the caller was told is written. One that fails is logged, and its errno answers the
 *    file's next FLUSH (close) or FSYNC in place of success, as the kernel's own writeback reports errors.
 */
import { Latencies, type LatencySummary } from '../../diag/latency.js';
import { log, logEnabled } from '../../log.js';
import { toErrno } from '../errors.js';
import type { Attr, StatFs } from '../types.js';
import {
  OUT_HEADER_SIZE, REPLY, fuseAttr, notifyInvalInode, parseRequest, opcodeInfo, wireErrno,
  type InitOut, type OpName, type ParseOptions, type Request, type RequestOf,
} from './wire/index.js';
import { WireParseError } from './wire/errors.js';
import type { RawRequest } from './native-channel.js';

export type Reply =
  | { t: 'empty' }
  | { t: 'entry'; attr: Attr }
  /** LOOKUP found nothing: a negative entry (nodeid 0) the kernel caches for the entry timeout */
  | { t: 'noEntry' }
  | { t: 'attr'; attr: Attr }
  | { t: 'open'; fh: number; flags?: number }
  | { t: 'create'; attr: Attr; fh: number; flags?: number }
  | { t: 'write'; size: number }
  | { t: 'statfs'; st: StatFs }
  | { t: 'xattrSize'; size: number }
  | { t: 'bytes'; data: Uint8Array; release?: () => void }
  | { t: 'init'; out: InitOut }
  | { t: 'lseek'; offset: number }
  | { t: 'none' };

export interface OpContext {
  /** aborted when the kernel interrupts the request */
  signal: AbortSignal;
}

export type OpHandler<K extends OpName> = (req: RequestOf<K>, cx: OpContext) => Promise<Reply> | Reply;
export type OpTable = { [K in OpName]?: OpHandler<K> };

export interface Transport {
  /** writes (or copies) the reply's bytes before it returns: the session reuses its buffers for the next reply */
  reply(reader: number, header: Uint8Array, body?: Uint8Array, data?: Uint8Array): number;
  done(req: RawRequest): void;
  /** an early write (RawRequest.answered) of ino was applied, or failed */
  endWrite?(ino: number): void;
}

export interface SessionOptions {
  entryTimeout: number;
  attrTimeout: number;
  /** seconds after which an unanswered request is answered EIO (default 300; 0: never) */
  requestTimeout?: number;
  /** shared with the bridge, which sets what INIT agreed */
  parseOptions?: ParseOptions;
  log?: (msg: string) => void;
}

export interface SessionStats {
  requests: number;
  /** requests taken, by opcode name (what the native readers answered themselves is not counted here) */
  byOp: Record<string, number>;
  inFlight: number;
  errors: number;
  parseErrors: number;
  replyFailures: number;
  /** time from a request's arrival in JavaScript to its answer, per opcode (microseconds) */
  latency: Record<string, LatencySummary>;
}

/**
 * One request in flight. Its AbortController is made only when a handler asks for the signal (most never
 * do): an interrupt of a request nobody listens for has nothing to abort.
 */
class InFlight implements OpContext {
  private ac: AbortController | undefined;
  private aborted = false;
  constructor(readonly since: number, readonly op: string, readonly raw: RawRequest) {}
  get signal(): AbortSignal {
    if (!this.ac) {
      this.ac = new AbortController();
      if (this.aborted) this.ac.abort();
    }
    return this.ac.signal;
  }
  abort(): void {
    this.aborted = true;
    this.ac?.abort();
  }
}

const NO_REQUEST = new InFlight(0, 'none', undefined as unknown as RawRequest);

/** attributes for an entry the kernel does not take as a lookup (nodeid 0): only ino and type say anything */
export function placeholderAttr(ino: number, mode: number, nlink: number): Attr {
  const t = { sec: 0, nsec: 0 };
  return { ino, mode, nlink, uid: 0, gid: 0, rdev: 0, size: 0, blocks: 0, atime: t, mtime: t, ctime: t };
}
const NO_ATTR = placeholderAttr(0, 0, 0);

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;

/**
 * The longest the kernel may cache a directory's attributes, whatever --attr-timeout says. A GETATTR answered
 * just before a change in the directory can reach the kernel's cache after the change's own invalidation
 * (fuse_dir_changed does not order itself against a reply in flight), leaving it an older mtime and nlink:
 * the kernel asks again within this time. The GETATTRs that costs are answered by the reader threads.
 */
const DIR_ATTR_SECONDS = 1;

/** inodes whose failed early write waits for a FLUSH or FSYNC to report it, at most (the oldest go first) */
const MAX_DEFERRED = 4096;

/** the second inode a request is about: the destination of COPY_FILE_RANGE (0: none) */
function nodeOut(req: Request): number {
  return req.op === 'COPY_FILE_RANGE' ? Number(req.nodeid_out) : 0;
}

function seconds(t: number): [number, number] {
  const s = Math.floor(t);
  return [s, Math.round((t - s) * 1e9)];
}

export class Session {
  private readonly inflight = new Map<bigint, InFlight>();
  private readonly watchdog: NodeJS.Timeout | undefined;
  private readonly entryValid: [number, number];
  private readonly attrValid: [number, number];
  private readonly dirAttrValid: [number, number];
  private readonly attrScratch = Buffer.alloc(REPLY.attr.size);
  readonly parseOptions: ParseOptions;
  private readonly stat: Omit<SessionStats, 'byOp' | 'latency'> = { requests: 0, inFlight: 0, errors: 0, parseErrors: 0, replyFailures: 0 };
  private readonly byOp = new Map<string, number>();
  private readonly latency = new Latencies();
  private readonly scratch = new Map<number, { buf: Buffer; dv: DataView }>();
  private readonly log: (msg: string) => void;
  /** per inode, the early writes not yet applied (the tail of their chain) */
  private readonly writing = new Map<number, Promise<void>>();
  /** per inode, the errno of an early write that failed, for its next FLUSH or FSYNC */
  private readonly deferred = new Map<number, number>();

  constructor(private readonly transport: Transport, private readonly ops: OpTable, opts: SessionOptions) {
    this.entryValid = seconds(opts.entryTimeout);
    this.attrValid = seconds(opts.attrTimeout);
    this.dirAttrValid = seconds(Math.min(opts.attrTimeout, DIR_ATTR_SECONDS));
    this.parseOptions = opts.parseOptions ?? {};
    this.log = opts.log ?? ((m) => log.warn(m));
    const limitMs = (opts.requestTimeout ?? 300) * 1000;
    if (limitMs > 0) {
      this.watchdog = setInterval(() => this.expire(limitMs), Math.min(limitMs, 5000));
      this.watchdog.unref?.();
    }
  }

  /**
   * Tells the kernel to drop its cached attributes of an inode (another mount changed it). ENOENT (the
   * kernel does not hold the inode) is not an error.
   */
  notifyInvalInode(ino: number): void {
    const n = this.transport.reply(0, notifyInvalInode(ino));
    if (n < 0 && n !== -2) this.log(`invalidating inode ${ino} in the kernel failed (errno ${-n})`);
  }

  /** stops the watchdog (the session ended) */
  close(): void {
    clearInterval(this.watchdog);
  }

  /** answers EIO to every request older than limitMs; their handlers' late results are dropped */
  private expire(limitMs: number): void {
    const now = performance.now();
    for (const [unique, f] of this.inflight) {
      if (now - f.since < limitMs) continue;
      this.inflight.delete(unique);
      f.abort();
      this.stat.replyFailures++;
      this.log(`a ${f.op} request got no answer within ${limitMs / 1000} s: answering EIO`);
      this.send(f.raw, this.error(unique, 5));
    }
  }

  stats(): SessionStats {
    return { ...this.stat, byOp: Object.fromEntries(this.byOp), inFlight: this.inflight.size, latency: this.latency.summary() };
  }

  /** takes one raw request (called synchronously by the channel for each request of a batch) */
  handle(raw: RawRequest): void {
    this.stat.requests++;
    let req: Request;
    try {
      req = parseRequest(raw.header, raw.body, this.parseOptions);
    } catch (e) {
      this.stat.parseErrors++;
      const pe = e instanceof WireParseError ? e : undefined;
      if (pe?.unique !== undefined && pe.replyWanted !== false) {
        this.send(raw, this.error(pe.unique, pe.errno));
      } else {
        this.log(`a request could not be parsed and gets no reply: ${(e as Error).message}`);
      }
      this.transport.done(raw);
      return;
    }
    if (!raw.poolBuffer) this.ownInlineData(req);
    this.byOp.set(req.op, (this.byOp.get(req.op) ?? 0) + 1);
    const info = opcodeInfo(req.header.opcode)!;
    const unique = req.header.unique;
    if (req.op === 'INTERRUPT') {
      this.inflight.get(req.unique)?.abort();
      this.transport.done(raw);
      return;
    }
    const handler = this.ops[req.op] as OpHandler<OpName> | undefined;
    if (!handler) {
      if (info.replies) this.send(raw, this.error(unique, 38 /* ENOSYS */));
      this.transport.done(raw);
      return;
    }
    if (raw.answered) return this.applyEarly(raw, req, handler);
    const cx = info.replies ? new InFlight(performance.now(), req.op, raw) : NO_REQUEST;
    if (info.replies) this.inflight.set(unique, cx);
    const started = performance.now();
    let out: Promise<Reply>;
    const ino = Number(req.header.nodeid);
    const gate = this.writing.size ? this.writing.get(ino) ?? this.writing.get(nodeOut(req)) : undefined;
    if (gate) {
      out = gate.then(() => handler(req as RequestOf<OpName>, cx));
    } else {
      try {
        out = Promise.resolve(handler(req as RequestOf<OpName>, cx));
      } catch (e) {
        out = Promise.reject(e);
      }
    }
    out.then(
      (r) => {
        this.answered(req, started);
        const late = (req.op === 'FLUSH' || req.op === 'FSYNC') && this.takeDeferred(ino);
        if (late) this.fail(raw, req, late, info.replies);
        else this.finish(raw, req, r, info.replies);
      },
      (e) => {
        const errno = e instanceof WireParseError ? e.errno : toErrno(e);
        this.answered(req, started, errno);
        if (req.op === 'FLUSH' || req.op === 'FSYNC') this.takeDeferred(ino);
        this.fail(raw, req, errno, info.replies);
      },
    );
  }

  /**
   * Applies an early write after the inode's earlier ones. No reply: a failure is kept for the file's next
   * FLUSH or FSYNC (the first one wins) and logged.
   */
  private applyEarly(raw: RawRequest, req: Request, handler: OpHandler<OpName>): void {
    const ino = Number(req.header.nodeid);
    const started = performance.now();
    const prev = this.writing.get(ino);
    const run = (prev ?? Promise.resolve()).then(() => handler(req as RequestOf<OpName>, NO_REQUEST));
    const tail = run.then(
      () => this.answered(req, started),
      (e) => {
        const errno = e instanceof WireParseError ? e.errno : toErrno(e);
        this.answered(req, started, errno);
        this.stat.errors++;
        if (!this.deferred.has(ino)) {
          this.log(`a write to inode ${ino} failed after it was acknowledged (errno ${errno}): the file's next ` +
            `fsync or close reports it: ${(e as Error)?.message ?? e}`);
          if (this.deferred.size >= MAX_DEFERRED) this.deferred.delete(this.deferred.keys().next().value!);
          this.deferred.set(ino, errno);
        }
      },
    ).finally(() => {
      if (this.writing.get(ino) === tail) this.writing.delete(ino);
      this.transport.endWrite?.(ino);
      this.transport.done(raw);
    });
    this.writing.set(ino, tail);
  }

  private takeDeferred(ino: number): number | undefined {
    const errno = this.deferred.get(ino);
    if (errno !== undefined) this.deferred.delete(ino);
    return errno;
  }

  /**
   * A request's handler is done (with `errno` when it failed): its latency is recorded, and at log level debug
   * (--debug) it gets one line.
   */
  private answered(req: Request, started: number, errno?: number): void {
    const us = (performance.now() - started) * 1000;
    this.latency.record(req.op, us);
    if (!logEnabled('debug')) return;
    const name = (req as { name?: unknown }).name;
    log.debug(`${req.op} ${req.header.nodeid}${typeof name === 'string' ? ` ${JSON.stringify(name)}` : ''}` +
      `${errno === undefined ? '' : ` -> errno ${errno}`} in ${Math.round(us)} us`,
    { op: req.op, unique: String(req.header.unique), nodeid: Number(req.header.nodeid), us: Math.round(us) });
  }

  /** inline bodies are overwritten by the next batch: copy the parts a handler keeps past this call */
  private ownInlineData(req: Request): void {
    if (req.op === 'WRITE') req.data = Buffer.from(req.data);
    else if (req.op === 'SETXATTR') req.value = Buffer.from(req.value);
  }

  private finish(raw: RawRequest, req: Request, r: Reply, replies: boolean): void {
    const unique = req.header.unique;
    // Expired (answered EIO by the watchdog): drop the late result.
    const expired = replies && !this.inflight.delete(unique);
    try {
      if (!replies || r.t === 'none' || expired) {
        if (r.t === 'bytes') r.release?.();
        return;
      }
      this.sendReply(raw, unique, r);
    } catch (e) {
      this.stat.replyFailures++;
      this.log(`a ${req.op} reply could not be encoded, answering EIO: ${(e as Error).stack}`);
      this.send(raw, this.error(unique, 5));
    } finally {
      this.transport.done(raw);
    }
  }

  private fail(raw: RawRequest, req: Request, errno: number, replies: boolean): void {
    const unique = req.header.unique;
    const expired = replies && !this.inflight.delete(unique);
    this.stat.errors++;
    if (replies && !expired) this.send(raw, this.error(unique, errno));
    this.transport.done(raw);
  }

  private send(raw: RawRequest, header: Uint8Array, body?: Uint8Array, data?: Uint8Array): void {
    const n = this.transport.reply(raw.reader, header, body, data);
    if (n < 0) {
      this.stat.replyFailures++;
      this.log(`writing a reply to the device failed (errno ${-n})`);
    }
  }

  private sendReply(raw: RawRequest, unique: bigint, r: Exclude<Reply, { t: 'none' }>): void {
    switch (r.t) {
      case 'empty':
        return this.send(raw, this.header(unique, 0));
      case 'bytes':
        try {
          return this.send(raw, this.header(unique, r.data.length), r.data);
        } finally {
          r.release?.();
        }
      case 'entry':
        return this.fixed(raw, unique, REPLY.entry, this.entryOut(r.attr));
      case 'noEntry':
        return this.fixed(raw, unique, REPLY.entry, { ...this.entryOut(NO_ATTR), nodeid: 0 });
      case 'attr':
        return this.fixed(raw, unique, REPLY.attr, this.attrOut(r.attr));
      case 'open':
        return this.fixed(raw, unique, REPLY.open, { fh: r.fh, open_flags: r.flags ?? 0 });
      case 'create':
        return this.fixed(raw, unique, REPLY.create, {
          entry: this.entryOut(r.attr), open: { fh: r.fh, open_flags: r.flags ?? 0 },
        });
      case 'write':
        return this.fixed(raw, unique, REPLY.write, { size: r.size });
      case 'statfs':
        return this.fixed(raw, unique, REPLY.statfs, r.st);
      case 'xattrSize':
        return this.fixed(raw, unique, REPLY.getxattr, { size: r.size });
      case 'init':
        return this.fixed(raw, unique, REPLY.init, r.out);
      case 'lseek':
        return this.fixed(raw, unique, REPLY.lseek, { offset: r.offset });
    }
  }

  /**
   * The buffer of `size` bytes replies of that size are written into, kept for the session: the transport
   * writes (or copies) a reply before `reply` returns, so the next reply may reuse it, and answering allocates
   * nothing. The header goes through a DataView: Buffer's writeBigUInt64LE makes BigInts of every unique.
   */
  private scratchOf(size: number): { buf: Buffer; dv: DataView } {
    let s = this.scratch.get(size);
    if (!s) {
      const buf = Buffer.alloc(size);
      s = { buf, dv: new DataView(buf.buffer, buf.byteOffset, size) };
      this.scratch.set(size, s);
    }
    return s;
  }

  /** a fuse_out_header (len, error, unique) at the start of a scratch buffer of `size` bytes */
  private headed(size: number, unique: bigint, len: number, error = 0): Buffer {
    const { buf, dv } = this.scratchOf(size);
    dv.setUint32(0, len, true);
    dv.setInt32(4, error, true);
    dv.setBigUint64(8, unique, true);
    return buf;
  }

  private header(unique: bigint, bodyLength: number): Buffer {
    return this.headed(OUT_HEADER_SIZE, unique, OUT_HEADER_SIZE + bodyLength);
  }

  /** an error reply (errno > 0) */
  private error(unique: bigint, errno: number): Buffer {
    return this.headed(OUT_HEADER_SIZE, unique, OUT_HEADER_SIZE, -wireErrno(errno));
  }

  private fixed<T>(raw: RawRequest, unique: bigint, body: { size: number; write(b: Buffer, off: number, v: T): void }, v: T): void {
    const b = this.headed(OUT_HEADER_SIZE + body.size, unique, OUT_HEADER_SIZE + body.size);
    body.write(b, OUT_HEADER_SIZE, v);
    this.send(raw, b);
  }

  private attrOut(attr: Attr) {
    const [s, ns] = this.attrValidFor(attr);
    return { attr_valid: s, attr_valid_nsec: ns, attr };
  }

  /** how long the kernel may cache attr: directories at most DIR_ATTR_SECONDS */
  private attrValidFor(attr: Attr): [number, number] {
    return (attr.mode & S_IFMT) === S_IFDIR ? this.dirAttrValid : this.attrValid;
  }

  /**
   * The body of this session's GETATTR reply for attr (fuse_attr_out), for a driver that answers GETATTR itself.
   * One buffer, reused: valid until the next call (the driver copies it at once).
   */
  attrBody(attr: Attr): Buffer {
    REPLY.attr.write(this.attrScratch, 0, this.attrOut(attr));
    return this.attrScratch;
  }

  entryOut(attr: Attr) {
    const [s, ns] = this.attrValidFor(attr);
    return {
      nodeid: attr.ino, generation: 0,
      entry_valid: this.entryValid[0], entry_valid_nsec: this.entryValid[1],
      attr_valid: s, attr_valid_nsec: ns,
      attr: fuseAttr(attr, (attr.mode & S_IFMT) === S_IFREG ? 1 << 20 : 4096),
    };
  }
}
