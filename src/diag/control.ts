/**
 * The control channel of a live daemon: a Unix socket in its owner's runtime directory (bin/daemons.ts: 0700,
 * the owner's alone), the socket itself 0600, and the peer's uid checked at accept (SO_PEERCRED): the daemon's
 * own uid and root are served, anyone else gets one error line and the door shut.
 *
 * Protocol (CONTROL_VERSION 1): JSON lines. A request is one object `{"v":1,"id":ID,"cmd":"NAME",...args}`
 * (`v` may be left out; another version is refused); the answer, in request order on that connection, is
 * `{"v":1,"id":ID,"ok":true,"result":...}` or `{"v":1,"id":ID,"ok":false,"error":"MESSAGE"}`. A line that is not
 * JSON, not an object, names no command or an unknown one, or fails its command, gets an error answer and the
 * connection stays usable; a line over MAX_LINE bytes is answered with an error and the connection closed. A
 * command's failure never reaches the daemon: each runs in its own promise, and a slow one holds up only its
 * own connection.
 */
import { lstatSync, rmSync, chmodSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { native } from '../native.js';

export const CONTROL_VERSION = 1;
/** the longest request line a daemon reads */
export const MAX_LINE = 64 * 1024;
/** connections served at once; more are refused (a local client stuck open cannot pile up sockets) */
const MAX_CONNECTIONS = 32;

export type ControlArgs = Record<string, unknown>;
/** a command: its args (the request without v, id and cmd) in, a JSON-able result out; a throw is its error */
export type ControlCommand = (args: ControlArgs) => unknown;

/** an error a command throws for its caller: the message goes back as it is */
export class ControlError extends Error {}

export class ControlServer {
  private readonly sockets = new Set<Socket>();

  private constructor(readonly path: string, private readonly server: Server) {}

  /**
   * Listens at `path` (a stale socket of a dead daemon there is removed first) for `commands`, serving the uids
   * in `allow` (the daemon's own and root).
   */
  static async listen(path: string, commands: Record<string, ControlCommand>, allow: readonly number[]): Promise<ControlServer> {
    try {
      if (lstatSync(path).isSocket()) rmSync(path);
    } catch { /* none there */ }
    const server = createServer();
    const self = new ControlServer(path, server);
    server.on('connection', (sock) => self.serve(sock, commands, allow));
    server.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => { server.off('error', reject); resolve(); });
    });
    chmodSync(path, 0o600);
    server.unref();
    return self;
  }

  /** stops listening, ends every connection and removes the socket */
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    rmSync(this.path, { force: true });
  }

  private serve(sock: Socket, commands: Record<string, ControlCommand>, allow: readonly number[]): void {
    sock.on('error', () => undefined);
    sock.unref();
    const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1;
    const uid = fd >= 0 ? native().peerUid(fd) : -1;
    if (!allow.includes(uid) || this.sockets.size >= MAX_CONNECTIONS) {
      const why = uid < 0 ? 'the peer could not be identified' : !allow.includes(uid)
        ? `uid ${uid} may not use this mount's control socket (only uid ${allow.join(' and ')})`
        : `too many control connections (${MAX_CONNECTIONS})`;
      // one answer, then the end; what the peer sends meanwhile is read and dropped (closing at once would make
      // its write fail with EPIPE before it reads why)
      sock.resume();
      sock.end(JSON.stringify({ v: CONTROL_VERSION, ok: false, error: why }) + '\n');
      setTimeout(() => sock.destroy(), 2000).unref();
      return;
    }
    this.sockets.add(sock);
    sock.on('close', () => this.sockets.delete(sock));
    let buf = '';
    let queue: Promise<void> = Promise.resolve();
    const answer = (line: string) => {
      queue = queue.then(async () => {
        const out = await runLine(line, commands);
        if (!sock.destroyed) sock.write(JSON.stringify(out) + '\n');
      });
    };
    let over = false;
    const tooLong = () => {
      over = true;
      buf = '';
      sock.resume();
      queue = queue.then(() => {
        sock.end(JSON.stringify({ v: CONTROL_VERSION, ok: false, error: `request line over ${MAX_LINE} bytes: connection closed` }) + '\n');
        setTimeout(() => sock.destroy(), 2000).unref();
      });
    };
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      if (over) return;
      buf += chunk;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        if (nl > MAX_LINE) return tooLong();
        answer(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
      if (buf.length > MAX_LINE) tooLong();
    });
  }
}

/** the answer to one request line */
async function runLine(line: string, commands: Record<string, ControlCommand>): Promise<object> {
  let req: unknown;
  try {
    req = JSON.parse(line);
  } catch (e) {
    return { v: CONTROL_VERSION, ok: false, error: `malformed request (not JSON): ${(e as Error).message}` };
  }
  if (typeof req !== 'object' || req === null || Array.isArray(req)) {
    return { v: CONTROL_VERSION, ok: false, error: 'malformed request: a JSON object {"cmd": ...} is expected' };
  }
  const { v, id, cmd, ...args } = req as { v?: unknown; id?: unknown; cmd?: unknown };
  const fail = (error: string) => ({ v: CONTROL_VERSION, ...(id !== undefined ? { id } : {}), ok: false, error });
  if (v !== undefined && v !== CONTROL_VERSION) return fail(`protocol version ${JSON.stringify(v)} is not supported (this daemon speaks ${CONTROL_VERSION})`);
  if (typeof cmd !== 'string') return fail('malformed request: no "cmd" string');
  const run = Object.hasOwn(commands, cmd) ? commands[cmd] : undefined;
  if (!run) return fail(`unknown command '${cmd.slice(0, 64)}' (known: ${Object.keys(commands).join(', ')})`);
  try {
    const result = await run(args);
    return { v: CONTROL_VERSION, ...(id !== undefined ? { id } : {}), ok: true, result: result ?? null };
  } catch (e) {
    return fail(e instanceof ControlError ? e.message : `${cmd} failed: ${(e as Error)?.message ?? String(e)}`);
  }
}

/** a connection to a daemon's control socket: requests one at a time, each with a deadline */
export class ControlClient {
  private buf = '';
  private waiting: { resolve: (line: string) => void; reject: (e: Error) => void } | undefined;
  private ended: Error | undefined;
  private nextId = 1;

  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      this.buf += chunk;
      this.deliver();
    });
    const end = (e?: Error) => {
      // a refusal is one error line and the end: the line goes to the request that waits, else the end does
      this.ended ??= e ?? new Error('the daemon closed the control connection');
      this.deliver();
      this.failWaiting();
    };
    sock.on('error', (e) => end(e));
    sock.on('close', () => end());
  }

  /** hands the next complete line to the request that waits, when both are there */
  private deliver(): void {
    const nl = this.buf.indexOf('\n');
    const w = this.waiting;
    if (nl < 0 || !w) return;
    const line = this.buf.slice(0, nl);
    this.buf = this.buf.slice(nl + 1);
    this.waiting = undefined;
    w.resolve(line);
  }

  /** the connection ended: a request still waiting fails with why */
  private failWaiting(): void {
    const w = this.waiting;
    if (!w || !this.ended) return;
    this.waiting = undefined;
    w.reject(this.ended);
  }

  static connect(path: string, timeoutMs = 5000): Promise<ControlClient> {
    return new Promise((resolve, reject) => {
      const sock = createConnection(path);
      const timer = setTimeout(() => { sock.destroy(); reject(new Error(`no answer from the control socket ${path} within ${timeoutMs} ms`)); }, timeoutMs);
      sock.once('connect', () => { clearTimeout(timer); resolve(new ControlClient(sock)); });
      sock.once('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new Error(`cannot reach the daemon's control socket ${path}: ${e.code ?? e.message}`));
      });
    });
  }

  /** sends cmd with args; the result, or an Error with the daemon's message */
  async request(cmd: string, args: ControlArgs = {}, timeoutMs = 10_000): Promise<unknown> {
    if (this.waiting) throw new Error('one control request at a time');
    const id = this.nextId++;
    const line = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        reject(new Error(`the daemon did not answer '${cmd}' within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting = {
        resolve: (l) => { clearTimeout(timer); resolve(l); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
      if (!this.ended) this.sock.write(JSON.stringify({ v: CONTROL_VERSION, id, cmd, ...args }) + '\n');
      this.deliver();
      this.failWaiting();
    });
    let out: { ok?: boolean; result?: unknown; error?: string };
    try {
      out = JSON.parse(line);
    } catch {
      throw new Error(`the daemon answered '${cmd}' with something that is not JSON: ${line.slice(0, 200)}`);
    }
    if (!out.ok) throw new Error(out.error ?? `the daemon refused '${cmd}'`);
    return out.result;
  }

  close(): void {
    this.sock.destroy();
  }
}
