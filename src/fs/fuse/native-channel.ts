/**
 * The JavaScript half of the native channel (native/channel.h): it keeps the reader threads stocked with
 * pool buffers, takes batches of requests on each wake, and sends replies with one writev.
 *
 * Contract:
 *  - Requests are delivered in batches, in the order the readers queued them. A delivered request's header
 *    (and an inline body) are views into the batch area and are valid only during the `onRequest` call; a
 *    body in a pool buffer stays valid until `done(req)` is called for it, exactly once per request.
 *  - Stocking: every class is kept stocked up to its target (at most half the class, so READ replies always
 *    find buffers); a class a reader waits for is stocked at once.
 *    Stocked and in-flight buffers are held in the pool, so the pool's capacity bounds them all; when the
 *    pool is empty, stocking waits in the pool's FIFO and the readers wait with it (backpressure).
 *  - `onClosed` runs once, when every reader has stopped (the filesystem was unmounted) and all requests
 *    were delivered.
 */
import { BufferPool } from '../../bufferpool/buffer-pool.js';
import { check, native, type NativeChannelHandle } from '../../native.js';
import type { Attr, ReadIndex } from '../types.js';
import { STRUCTS } from './wire/structs.js';

export interface RawRequest {
  /** the reader (device fd) that must carry the reply */
  reader: number;
  /** the 40-byte fuse_in_header */
  header: Buffer;
  /** the body (length = header.len - 40) */
  body: Buffer;
  /** the pool buffer holding the body, when it is not inline */
  poolBuffer?: Buffer;
  /**
   * A WRITE the reader thread answered already (early writes, native/channel.h): it is applied without a reply,
   * a failure is reported at the file's next FLUSH or FSYNC, and `endWrite` is called once it is applied.
   */
  answered?: boolean;
}

/** while waits on the CPU mostly see nothing come, one chance in this many waits */
const SPIN_PROBE = 16;

export interface ChannelStats {
  requests: number;
  inlineRequests: number;
  poolWaits: number;
  wakes: number;
  maxQueue: number;
  batches: number;
  stocked: number;
  /** READs the reader threads answered from the read index, and READs they had to pass on */
  fastReads: number;
  fastReadMisses: number;
  publishedFiles: number;
  publishedChunks: number;
  /** hints of sequential readers reaching a read-ahead mark */
  readAheadMarks: number;
  /** FLUSHes (closes) of files with nothing uncommitted, answered by the reader threads */
  fastFlushes: number;
  /** READs answered by reading published blob files, and those whose file could not be read (sent to JS) */
  fileReads: number;
  fileReadMisses: number;
  /** of fileReads, those answered with a spliced reply (the file's pages into the device, one copy) */
  splicedReads: number;
  /** directories whose GETATTR the reader threads answer, and GETATTRs they answered */
  publishedAttrs: number;
  fastGetattrs: number;
  /** WRITEs the reader threads answered before JavaScript applied them */
  earlyWrites: number;
  /** waits on the CPU for a next request once all were answered (spinUs), and those that saw one come */
  spins: number;
  spinHits: number;
}

/** buffers kept stocked in the class a 4 KiB WRITE lands in (see the constructor) */
const SMALL_WRITE_STOCK = 128;
const BATCH = 256;
/** requests JS takes on before it stops polling; the rest wait in the readers' queue, then in the kernel */
const MAX_IN_FLIGHT = 1024;

export class NativeChannel implements ReadIndex {
  private readonly ch: NativeChannelHandle;
  private readonly recordSize: number;
  private readonly hintOpcode: number;
  private readonly answeredFlag: number;
  private readonly onReadHint: ((ino: number, idx: number) => void) | undefined;
  private readonly batchArea: Buffer;
  private readonly status = new Uint32Array(2);
  private readonly classSizes: number[];
  private readonly stocked: Map<number, Buffer>[];
  private readonly acquiring: number[];
  private readonly targets: number[];
  private readonly abort = new AbortController();
  private closed = false;
  private batches = 0;
  /** delivered and not yet done */
  private inFlight = 0;
  private repoll: NodeJS.Immediate | undefined;
  private spinCheck: NodeJS.Immediate | undefined;
  private readonly spinUs: number;
  private readonly spinWhen: () => boolean;
  private spins = 0;
  /** a moving share of waits that saw a request come (1: all) */
  private spinScore = 1;
  private spinSkipped = 0;
  private spinHits = 0;
  private trimTimer: NodeJS.Timeout | undefined;

  constructor(
    fds: number[],
    private readonly pool: BufferPool,
    private readonly onRequest: (req: RawRequest) => void,
    private readonly onClosed: () => void,
    arena: ArrayBuffer,
    opts: { pipeSize: number; stockTargets?: number[]; onReadHint?: (ino: number, idx: number) => void; spinUs?: number;
      spinWhen?: () => boolean },
  ) {
    const n = native();
    this.recordSize = n.recordSize;
    this.hintOpcode = n.hintOpcode;
    this.answeredFlag = n.answeredFlag;
    this.onReadHint = opts.onReadHint;
    this.spinUs = opts.spinUs ?? 0;
    this.spinWhen = opts.spinWhen ?? (() => true);
    this.batchArea = Buffer.alloc(BATCH * this.recordSize);
    this.classSizes = pool.stats().classes.map((c) => c.size);
    this.stocked = this.classSizes.map(() => new Map());
    this.acquiring = this.classSizes.map(() => 0);
    // Stock at most half of a class: the rest serves READ replies, which must never wait for buffers that
    // only an incoming request of that size would free.
    // The class a 4 KiB WRITE lands in (its body is the data and fuse_write_in) is stocked deep: an early answer
    // needs a stocked buffer, and only JavaScript tops the stock up, so while it commits (milliseconds) a random
    // writer's next WRITEs are answered early only as far as the stock goes (with 2, a third of rand-write-4k's
    // WRITEs waited for JavaScript: writes p99 0.9 ms; with 32, about one WRITE in each 64 between two fsyncs
    // still did, for 1.5 ms on average). With the default pool the cap (half the class) makes it 76.
    const counts = pool.stats().classes.map((c) => c.count);
    const smallWrite = this.classSizes.findIndex((size) => size >= 4096 + STRUCTS.fuse_write_in.size);
    this.targets = (opts.stockTargets ?? this.classSizes.map((_, i) => (i === 0 ? 8 : i === smallWrite ? SMALL_WRITE_STOCK : 2)))
      .map((want, i) => Math.min(want, Math.floor(counts[i] / 2)));
    this.ch = new n.NativeChannel(fds, arena, this.classSizes, opts.pipeSize, () => this.wake());
  }

  start(): void {
    check(this.ch.start(), 'starting the FUSE reader threads');
    this.classSizes.forEach((_, i) => this.topUp(i));
  }

  /**
   * The read index (native/read-index.h): READs of published chunks are answered by the reader threads.
   * The caller keeps published bytes alive and unchanged until it retracts them; retract returns once no
   * reader still uses them.
   */
  enableFastReads(on: boolean): void {
    this.ch.enableFastReads(on);
  }

  /**
   * Early writes (native/channel.h): the readers answer a WRITE once it is queued; the session applies it
   * without a reply, reports a failure at the file's next FLUSH or FSYNC, and calls endWrite.
   */
  enableEarlyWrites(on: boolean): void {
    this.ch.enableEarlyWrites(on);
  }

  /**
   * Spliced replies (native/channel.cc SpliceReply): a READ the readers answer from one published blob file goes
   * from the file's pages into the device in one copy, not read into a buffer and written from it (two). On by
   * default; off to compare.
   */
  enableSpliceReads(on: boolean): void {
    this.ch.enableSpliceReads(on);
  }

  /** an answered WRITE of ino was applied: the readers may serve the file again once none is pending */
  endWrite(ino: number): void {
    this.ch.endWrite(ino);
  }

  publish(ino: number, size: number, chunkSize: number, idx: number, data: Uint8Array | null, mark = false): void {
    check(this.ch.publish(ino, size, chunkSize, idx, data, mark), 'publishing file data to the FUSE readers');
  }

  publishFile(ino: number, size: number, chunkSize: number, idx: number, path: string, length: number, mark = false): void {
    check(this.ch.publishFile(ino, size, chunkSize, idx, path, length, mark), 'publishing a file\'s chunk to the FUSE readers');
  }

  /**
   * How the session answers a GETATTR (its fuse_attr_out, valid until the next call: the addon copies it), set
   * by the driver; no attributes are published without.
   */
  attrBody: ((attr: Attr) => Uint8Array) | undefined;

  publishAttr(attr: Attr): void {
    if (this.attrBody) check(this.ch.publishAttr(attr.ino, this.attrBody(attr)), 'publishing attributes to the FUSE readers');
  }

  retractAttr(ino: number): void {
    this.ch.retractAttr(ino);
  }

  setSize(ino: number, size: number): void {
    this.ch.setSize(ino, size);
  }

  setClean(ino: number, clean: boolean): void {
    this.ch.setClean(ino, clean);
  }

  retract(ino: number, idx?: number): void {
    this.ch.retract(ino, idx ?? -1);
  }

  /** one reply, written at once (header, then up to two body parts); false when the kernel refused it */
  reply(reader: number, header: Uint8Array, body?: Uint8Array, data?: Uint8Array): number {
    return this.ch.reply(reader, header, body, data);
  }

  /** the request is finished: its pool buffer goes back, and the stock is topped up */
  done(req: RawRequest): void {
    if (req.poolBuffer) {
      const b = req.poolBuffer;
      req.poolBuffer = undefined;
      this.pool.release(b);
    }
    // Below the cap again with requests left in the queue (the readers do not wake us for those): poll.
    if (this.inFlight-- === MAX_IN_FLIGHT && !this.repoll) this.schedule();
    else if (this.inFlight === 0 && !req.answered && this.spinUs > 0 && !this.spinCheck) this.spinCheck = setImmediate(this.spinNow);
  }

  /**
   * With every request answered, waits up to spinUs on the CPU for the next one before the event loop sleeps
   * (a setImmediate: it runs after the I/O callbacks and microtasks of this turn). A caller that waits for each
   * answer (unlink after unlink, fsync loops) sends its next request within tens of microseconds, and this
   * thread is then already awake to take it: the reader thread's wake-up of a sleeping event loop is saved.
   * Only after a request this thread answered (a WRITE the reader answered early leaves its writer running:
   * a stream of them keeps coming without a wait, and a spin would only take a CPU from the writer and the
   * reader), and only when nothing else is under way (spinWhen: no store call): a completion of a store call
   * (a blob write on libuv's threads, a network reply) would wait behind the spin, and a throughput job would
   * pay for it.
   */
  private readonly spinNow = (): void => {
    this.spinCheck = undefined;
    if (this.inFlight !== 0 || this.closed || !this.spinWhen()) return;
    // While most waits see nothing come (a caller that does not wait for each answer, or one that thinks between
    // calls), only every SPIN_PROBE-th chance waits, to notice when they would pay again.
    if (this.spinScore < 0.5 && ++this.spinSkipped % SPIN_PROBE !== 0) return;
    this.spins++;
    const hit = this.ch.spin(this.spinUs);
    this.spinScore = this.spinScore * 0.875 + (hit ? 0.125 : 0);
    if (hit) {
      this.spinHits++;
      this.wake();
    }
  }

  private schedule(): void {
    this.repoll = setImmediate(() => {
      this.repoll = undefined;
      this.wake();
    });
  }

  /** stops the readers (after the kernel ended the session) and gives every stocked buffer back */
  stop(): void {
    clearTimeout(this.trimTimer);
    this.abort.abort();
    this.ch.stop();
    const back = this.ch.unstock();
    for (let i = 0; i < back.length; i += 2) {
      const buf = this.stocked[back[i]].get(back[i + 1]);
      if (buf) {
        this.stocked[back[i]].delete(back[i + 1]);
        this.pool.release(buf);
      }
    }
  }

  stats(): ChannelStats {
    return { ...this.ch.stats(), batches: this.batches, spins: this.spins, spinHits: this.spinHits, stocked: this.stocked.reduce((n, m) => n + m.size, 0) };
  }

  /**
   * Takes what the readers queued: at most a few batches per turn of the event loop (then it comes back with
   * setImmediate, so timers and I/O completions run in between), and never past MAX_IN_FLIGHT requests.
   */
  private wake(): void {
    if (this.closed) return;
    this.batches++;
    let needs = 0;
    for (let round = 0; ; round++) {
      const max = Math.min(BATCH, MAX_IN_FLIGHT - this.inFlight);
      if (max <= 0) break;
      const n = this.ch.poll(this.batchArea, max, this.status);
      needs |= this.status[1];
      this.inFlight += n;
      for (let i = 0; i < n; i++) this.deliver(i);
      if (n < max) break;
      if (round === 3) {
        if (!this.repoll) this.schedule();
        break;
      }
    }
    for (let c = 0; needs; c++, needs >>>= 1) if (needs & 1) this.topUp(c, true);
    if (this.status[0] && !this.closed) {
      this.closed = true;
      this.onClosed();
    }
  }

  private deliver(i: number): void {
    const at = i * this.recordSize;
    const rec = this.batchArea;
    if (rec.readUInt32LE(at + 4) === this.hintOpcode) {
      // not a request: a fast read used a marked chunk (native/read-index.h)
      this.inFlight--;
      this.onReadHint?.(Number(rec.readBigUInt64LE(at + 16)), Number(rec.readBigUInt64LE(at + 56)));
      return;
    }
    const tagged = rec.readUInt32LE(at + 40);
    const answered = (tagged & this.answeredFlag) !== 0;
    const reader = answered ? tagged & ~this.answeredFlag : tagged;
    const bodyLen = rec.readUInt32LE(at + 44);
    const where = rec.readUInt32LE(at + 48);
    const cls = rec.readUInt32LE(at + 52);
    const header = rec.subarray(at, at + 40);
    let body: Buffer;
    let poolBuffer: Buffer | undefined;
    if (where === 0xffffffff) {
      body = rec.subarray(at + 56, at + 56 + bodyLen);
    } else {
      poolBuffer = this.stocked[cls].get(where);
      if (!poolBuffer) throw new Error(`native channel: a request arrived in an unknown buffer (class ${cls}, offset ${where})`);
      this.stocked[cls].delete(where);
      body = poolBuffer.subarray(0, bodyLen);
      this.topUp(cls);
    }
    this.onRequest(answered ? { reader, header, body, poolBuffer, answered } : { reader, header, body, poolBuffer });
  }

  /**
   * Gives back what a class holds beyond its target (buffers stocked in a hurry for a waiting reader), so
   * that the stock never keeps READ replies from the buffers they need.
   */
  private trim(): void {
    if (this.trimTimer) return;
    this.trimTimer = setTimeout(() => {
      this.trimTimer = undefined;
      for (let k = 0; k < this.classSizes.length; k++) {
        while (!this.closed && this.stocked[k].size > this.targets[k]) {
          const off = this.ch.unstockOne(k);
          if (off < 0) break;
          const buf = this.stocked[k].get(off)!;
          this.stocked[k].delete(off);
          this.pool.release(buf);
        }
      }
    }, 10);
  }

  /** keeps class c stocked up to its target (at least one when a reader waits for it) */
  private topUp(c: number, urgent = false): void {
    const want = Math.max(this.targets[c], urgent ? 1 : 0);
    while (!this.closed && this.stocked[c].size + this.acquiring[c] < want) {
      this.acquiring[c]++;
      this.pool.acquire(this.classSizes[c], this.abort.signal).then((buf) => {
        this.acquiring[c]--;
        const real = this.classSizes.indexOf(buf.length);
        // The pool may answer with a larger class when c is empty. That serves a reader waiting now
        // (urgent), but is not kept beyond the larger class's own target: stock never grows past it.
        if (this.closed || (real !== c && !urgent && this.stocked[real].size >= this.targets[real])) {
          this.pool.release(buf);
          return;
        }
        this.stocked[real].set(buf.byteOffset, buf);
        check(this.ch.stock(real, buf.byteOffset), 'stocking the FUSE readers');
        if (real !== c) this.trim();
      }, () => {
        this.acquiring[c]--;
      });
    }
  }
}
