/**
 * Blob reads for the Redis engine (redis.ts) on connections of their own, one per master, beside ioredis.
 *
 * Why: a blob of a chunk (256 KiB) fetched through ioredis allocates twice its size: the socket's reads (a fresh
 * 64 KiB Buffer each) and the reply decoder's concatenation of them. On a sequential read that is hundreds of MB/s
 * of short-lived external memory, and V8 starts a full mark-compact every 64 MiB of it (measured: one every 35 ms,
 * 19% of the daemon's CPU, with the socket writes of one GET each another 14%). Here the socket reads into one
 * buffer per connection that lives as long as it (net's `onread`), a reply's bytes are copied once into memory the
 * store hands out (`alloc`: its reused slabs, slab-store.ts), and the GETs issued in one turn of the event loop
 * leave in one write.
 *
 * Rules:
 *  1. Only GET of blob keys, on plain TCP (a TLS store reads through ioredis). The master a key lives on is the one
 *     ioredis's slot table names now (a plain server: its one address).
 *  2. Every outcome that is not a value or a nil is handed back as a miss (MISS from `tryGet`: the caller reads
 *     through ioredis): an error reply (MOVED, ASK, TRYAGAIN, LOADING, ...), a connection that fails, closes, or
 *     takes longer than STALL_MS with a reply owed, no slot table yet, a closed reader. ioredis then follows
 *     redirections, refreshes its slot table and applies the retry layer's deadline (redis-retry.ts), so the
 *     answers and errors a caller sees are those of the ioredis path, and a GET (idempotent) sent twice is harmless.
 *  3. A connection with a reply owed longer than STALL_MS is destroyed, its owed GETs handed back (rule 2); the
 *     next GET for that master opens a new one. A master that failed us is not tried again for RETRY_MS.
 *  4. Credentials: the username and password of the store, sent with AUTH before the first GET; a refusal hands
 *     every GET on the connection back and closes the reader: from then on every read goes through ioredis.
 */
import net from 'node:net';
import calculateSlot from 'cluster-key-slot';

/** a connection with a reply owed this long is given up (rule 3) */
const STALL_MS = 2_000;
/** a master whose connection failed is read through ioredis this long */
const RETRY_MS = 1_000;
/** bytes each connection reads at a time into its own buffer */
const READ_BUFFER = 256 << 10;

/** what tryGet hands back when it cannot answer: the caller reads through ioredis (rule 2) */
export const MISS = Symbol('miss');
export type BlobReply = Buffer | undefined | typeof MISS;

interface Owed {
  /** null: AUTH's reply (not a caller's) */
  settle: ((v: BlobReply) => void) | null;
}

export interface BlobReaderOptions {
  username?: string;
  password?: string;
  /** the master's "host:port" for a key, or undefined when not known now */
  masterOf(key: string): string | undefined;
  /** memory for a value of len bytes (contents undefined) */
  alloc(len: number): Buffer;
}

/** the master for a key in a cluster, from ioredis's slot table (its first node key is the master) */
export function slotMaster(slots: readonly (readonly string[] | undefined)[], key: string): string | undefined {
  return slots[calculateSlot(key)]?.[0];
}

class Conn {
  readonly #socket: net.Socket;
  readonly #owed: Owed[] = [];
  #head = 0;
  /** the pending header line, when a read ended inside it */
  #line = '';
  /** the value being read, and how many of its bytes are still to come */
  #body: Buffer | undefined;
  #bodyLeft = 0;
  /** bytes of CRLF after a value still to skip */
  #skip = 0;
  #corked = false;
  #since = 0;
  dead = false;
  /** the server refused AUTH: the reader stops (rule 4) */
  authRefused = false;

  readonly #alloc: (len: number) => Buffer;

  constructor(host: string, port: number, opts: BlobReaderOptions, readonly onDead: (c: Conn) => void) {
    this.#alloc = opts.alloc;
    this.#socket = net.connect({
      host, port, noDelay: true,
      onread: { buffer: Buffer.allocUnsafeSlow(READ_BUFFER), callback: (n: number, b: Uint8Array) => this.#read(b, n) },
    });
    this.#socket.on('error', () => this.fail());
    this.#socket.on('close', () => this.fail());
    if (opts.password !== undefined) {
      this.#send(opts.username !== undefined ? ['AUTH', opts.username, opts.password] : ['AUTH', opts.password], { settle: null });
    }
  }

  get owed(): number {
    return this.#owed.length - this.#head;
  }

  /** when the oldest reply owed was asked for (0: none owed) */
  get waitingSince(): number {
    return this.owed ? this.#since : 0;
  }

  get(key: string): Promise<BlobReply> {
    return new Promise((settle) => this.#send(['GET', key], { settle }));
  }

  #send(args: string[], o: Owed): void {
    if (this.dead) {
      o.settle?.(MISS);
      return;
    }
    if (!this.owed) this.#since = Date.now();
    this.#owed.push(o);
    let cmd = `*${args.length}\r\n`;
    for (const a of args) cmd += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
    if (!this.#corked) {
      this.#corked = true;
      this.#socket.cork();
      process.nextTick(() => {
        this.#corked = false;
        this.#socket.uncork();
      });
    }
    this.#socket.write(cmd);
  }

  #settle(v: BlobReply | Error): void {
    const o = this.#owed[this.#head];
    this.#owed[this.#head++] = undefined as unknown as Owed;
    if (this.#head === this.#owed.length) {
      this.#owed.length = 0;
      this.#head = 0;
    } else if (this.#head > 1024) {
      this.#owed.splice(0, this.#head);
      this.#head = 0;
    }
    this.#since = Date.now();
    if (!o) {
      this.fail();
      return;
    }
    if (o.settle === null) {
      if (v instanceof Error) {
        this.authRefused = true;
        this.fail();
      }
      return;
    }
    o.settle(v instanceof Error ? MISS : v);
  }

  /** RESP2 replies to GET (a bulk string or nil) and AUTH (a status); anything else is an error (rule 2) */
  #read(buf: Uint8Array, n: number): boolean {
    const b = Buffer.from(buf.buffer, buf.byteOffset, n);
    let i = 0;
    while (i < n && !this.dead) {
      if (this.#body) {
        const take = Math.min(n - i, this.#bodyLeft);
        b.copy(this.#body, this.#body.length - this.#bodyLeft, i, i + take);
        this.#bodyLeft -= take;
        i += take;
        if (this.#bodyLeft === 0) {
          const v = this.#body;
          this.#body = undefined;
          this.#skip = 2;
          this.#settle(v);
        }
        continue;
      }
      if (this.#skip) {
        const s = Math.min(this.#skip, n - i);
        this.#skip -= s;
        i += s;
        continue;
      }
      const nl = b.indexOf(10, i);
      if (nl < 0) {
        this.#line += b.toString('latin1', i, n);
        if (this.#line.length > 4096) this.fail();
        break;
      }
      const line = (this.#line + b.toString('latin1', i, nl)).replace(/\r$/, '');
      this.#line = '';
      i = nl + 1;
      const kind = line[0];
      if (kind === '$') {
        const len = Number(line.slice(1));
        if (!Number.isSafeInteger(len) || len < -1) this.fail();
        else if (len === -1) this.#settle(undefined);
        else if (len === 0) {
          this.#skip = 2;
          this.#settle(Buffer.alloc(0));
        } else {
          this.#body = this.#alloc(len);
          this.#bodyLeft = len;
        }
      } else if (kind === '+') {
        this.#settle(undefined);
      } else {
        this.#settle(new Error(line.slice(1)));
      }
    }
    return true;
  }

  /** destroys the connection and hands every owed GET back (rule 2) */
  fail(): void {
    if (this.dead) return;
    this.dead = true;
    this.#socket.destroy();
    const owed = this.#owed.slice(this.#head);
    this.#owed.length = 0;
    this.#head = 0;
    for (const o of owed) o?.settle?.(MISS);
    this.onDead(this);
  }
}

export class BlobReader {
  readonly #conns = new Map<string, Conn>();
  readonly #failedAt = new Map<string, number>();
  readonly #opts: BlobReaderOptions;
  readonly #watch: NodeJS.Timeout;
  #closed = false;
  /** GETs answered here, and handed back to ioredis (for stats and tests) */
  served = 0;
  handedBack = 0;

  constructor(opts: BlobReaderOptions) {
    this.#opts = opts;
    this.#watch = setInterval(() => this.#checkStalls(), STALL_MS / 4);
    this.#watch.unref();
  }

  /** the blob's value, undefined when absent, or MISS: read it through ioredis (rule 2) */
  async tryGet(key: string): Promise<BlobReply> {
    const c = this.#conn(key);
    const v = c ? await c.get(key) : MISS;
    if (v === MISS) this.handedBack++;
    else this.served++;
    return v;
  }

  #conn(key: string): Conn | undefined {
    if (this.#closed) return undefined;
    const node = this.#opts.masterOf(key);
    if (node === undefined) return undefined;
    let c = this.#conns.get(node);
    if (c && !c.dead) return c;
    const failed = this.#failedAt.get(node);
    if (failed !== undefined && Date.now() - failed < RETRY_MS) return undefined;
    const colon = node.lastIndexOf(':');
    const port = Number(node.slice(colon + 1));
    if (colon <= 0 || !Number.isInteger(port)) return undefined;
    c = new Conn(node.slice(0, colon), port, this.#opts, (dead) => {
      if (this.#conns.get(node) === dead) this.#conns.delete(node);
      if (dead.authRefused) this.close();
      if (!this.#closed) this.#failedAt.set(node, Date.now());
    });
    this.#conns.set(node, c);
    return c;
  }

  #checkStalls(): void {
    const now = Date.now();
    for (const c of this.#conns.values()) {
      const since = c.waitingSince;
      if (since && now - since > STALL_MS) c.fail();
    }
  }

  /** connections open now (tests) */
  get connections(): number {
    return this.#conns.size;
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#watch);
    for (const c of [...this.#conns.values()]) c.fail();
    this.#conns.clear();
  }
}
