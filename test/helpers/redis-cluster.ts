/**
 * Real Redis servers for the Redis backend tests: Debian's redis-server (7.x) on loopback ports, one temp dir
 * each, and cleanup in every outcome.
 *
 * Contract:
 *  - `RedisCluster.start(t, opts)` starts `masters * (1 + replicas)` cluster-mode servers, waits until each
 *    answers PING, runs `redis-cli --cluster create`, and resolves once the cluster is settled (`waitOk`): every
 *    live node reports cluster_state:ok, knows every other live node as healthy (no fail, pfail, handshake or
 *    noaddr flag), all live nodes agree on the slot map and on who replicates whom, and every replica's link to
 *    a live master is up. `RedisServer.start(t, opts)` starts one plain server and resolves once it answers PING.
 *  - Everything listens on 127.0.0.1 only. Ports come from a random base in 20000..29000; each port and its
 *    cluster bus port (port + 10000) is checked free by binding it. A start that still loses a port race
 *    (EADDRINUSE in a node's log) is retried on fresh ports.
 *  - Each server has its own dir ROOT/PORT under a fresh mkdtemp(os.tmpdir()/kvfs-redis-XXXXXX), holding
 *    redis.log and nodes.conf. No persistence (`save ''`, `appendonly no`), maxmemory-policy noeviction unless
 *    told, `repl-diskless-sync-delay 0` (a replica syncs at once instead of after 5 s), and
 *    `enable-debug-command local` (DEBUG SLEEP and friends, for timeout tests).
 *  - Cleanup in every outcome: `stop()` SIGKILLs every server, removes ROOT and is idempotent; `start` registers
 *    it as `t.teardown` when t is given. A process 'exit' / SIGINT / SIGTERM / SIGHUP / SIGALRM hook does the
 *    same synchronously, and a detached watchdog per start does it if the test process dies by SIGKILL.
 *  - A failed start stops everything it started and rejects with the tail of the failing node's log (or of
 *    redis-cli's output, for `--cluster create`).
 *  - The password (`password`: requirepass and masterauth) reaches redis-server on stdin, redis-cli through
 *    REDISCLI_AUTH and MIGRATE over a socket: never argv, never a message (every message is redacted).
 *  - The harness's own commands (readiness, topology, resharding) go over a minimal RESP2 client in this file,
 *    not through the client library under test. `cli()` is the real redis-cli, for tests to drive by hand.
 *  - Cluster topology is read from CLUSTER NODES of live nodes; a node's slots at the moment it was killed come
 *    from its own nodes.conf (redis rewrites it, fsynced, on every config change).
 *  - Timing (redis 7.0): a master reports cluster_state:ok no sooner than 2 s after it started (a fixed
 *    writable delay), and `--cluster create` polls for the join once a second, so a cluster takes 2-4 s to
 *    come up. `--cluster create` refuses fewer than 3 masters. A failover takes about node timeout + 2 s.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestLike } from './mount.js';
import { atProcessEnd, baseEnv, describe, run, startWatchdog } from './run.js';

export interface RedisOptions {
  /** requirepass, and masterauth so replicas can sync */
  password?: string;
  /** redis `maxmemory` (bytes, or "64mb") */
  maxmemory?: string | number;
  /** redis `maxmemory-policy`; default noeviction */
  maxmemoryPolicy?: string;
  /** more redis-server arguments, e.g. ['--cluster-require-full-coverage', 'no'] */
  extra?: string[];
}

export interface ClusterOptions extends RedisOptions {
  /** default 3 */
  masters?: number;
  /** replicas per master; default 0 */
  replicas?: number;
  /** cluster-node-timeout; default 2000 */
  nodeTimeoutMs?: number;
}

export interface RedisNodeHandle {
  port: number;
  pid: number;
  dir: string;
  /** false once the process exited or was sent SIGKILL */
  alive: boolean;
}

const REDIS_HOST = '127.0.0.1';
const SLOTS = 16384;
const PORT_MIN = 20000;
const PORT_SPAN = 9000;
const BUS_OFFSET = 10000;

/** undefined when redis-server and redis-cli (7 or later) are runnable; else why not (tests skip with it) */
export function redisAvailable(): string | undefined {
  for (const tool of ['redis-server', 'redis-cli']) {
    const r = spawnSync(tool, ['--version'], { env: baseEnv(), encoding: 'utf8', timeout: 10_000 });
    if (r.error) return `${tool} is not runnable (${r.error.message}); install Debian's redis-server package`;
    if (r.status !== 0) return `${tool} --version exited ${r.status}: ${r.stderr.trim()}`;
    const m = /(?:v=|redis-cli )(\d+)\./.exec(r.stdout);
    if (!m || Number(m[1]) < 7) return `${tool} is older than 7.0 (${r.stdout.trim()}); the harness needs redis 7`;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// a minimal RESP2 client

type RespReply = string | number | null | RespReply[] | RespError;

/** an error reply from the server (top-level ones reject `call`) */
class RespError extends Error {
  readonly code = 'REDIS_ERROR_REPLY';
}

interface Pending {
  resolve(v: RespReply): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

/** one connection; replies arrive in order, so calls may overlap (pipelining) */
class Resp {
  private buf: Buffer = Buffer.alloc(0);
  private readonly pending: Pending[] = [];
  private failure: Error | undefined;

  private constructor(
    readonly port: number,
    private readonly sock: Socket,
  ) {
    sock.on('data', (d: Buffer) => this.onData(d));
    sock.on('error', (e) => this.fail(new Error(`127.0.0.1:${port}: ${e.message}`)));
    sock.on('close', () => this.fail(new Error(`127.0.0.1:${port}: connection closed`)));
  }

  get broken(): boolean {
    return this.failure !== undefined;
  }

  static open(port: number, password: string | undefined, timeoutMs: number): Promise<Resp> {
    return new Promise((resolve, reject) => {
      const sock = connect({ host: REDIS_HOST, port });
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error(`127.0.0.1:${port}: no connection within ${timeoutMs} ms`));
      }, timeoutMs);
      sock.once('error', (e) => {
        clearTimeout(timer);
        reject(new Error(`127.0.0.1:${port}: ${e.message}`));
      });
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.removeAllListeners('error');
        sock.setNoDelay(true);
        const c = new Resp(port, sock);
        if (password === undefined) return resolve(c);
        c.call(['AUTH', password], timeoutMs).then(
          () => resolve(c),
          (e: Error) => {
            c.close();
            reject(e);
          },
        );
      });
    });
  }

  /** sends one command; rejects on an error reply (RespError), a broken connection or the timeout */
  call(args: readonly (string | number)[], timeoutMs = 10_000): Promise<RespReply> {
    if (this.failure) return Promise.reject(this.failure);
    const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
    for (const a of args) {
      const b = Buffer.from(String(a));
      parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
    }
    return new Promise<RespReply>((resolve, reject) => {
      const timer = setTimeout(
        () => this.fail(new Error(`127.0.0.1:${this.port}: no reply to ${commandName(args)} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.pending.push({
        resolve: (v) => (v instanceof RespError ? reject(new RespError(`${commandName(args)}: ${v.message}`)) : resolve(v)),
        reject,
        timer,
      });
      this.sock.write(Buffer.concat(parts));
    });
  }

  close(): void {
    this.fail(new Error(`127.0.0.1:${this.port}: connection closed by the harness`));
  }

  private fail(e: Error): void {
    if (!this.failure) this.failure = e;
    this.sock.destroy();
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      p.reject(this.failure);
    }
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    for (;;) {
      const r = parseReply(this.buf, 0);
      if (!r) return;
      this.buf = this.buf.subarray(r.end);
      const p = this.pending.shift();
      if (!p) return this.fail(new Error(`127.0.0.1:${this.port}: a reply nobody asked for`));
      clearTimeout(p.timer);
      p.resolve(r.value);
    }
  }
}

/** parses one RESP2 reply at pos; undefined when the buffer does not hold all of it yet */
function parseReply(b: Buffer, pos: number): { value: RespReply; end: number } | undefined {
  const nl = b.indexOf('\r\n', pos);
  if (nl < 0) return undefined;
  const line = b.toString('utf8', pos + 1, nl);
  switch (String.fromCharCode(b[pos]!)) {
    case '+':
      return { value: line, end: nl + 2 };
    case '-':
      return { value: new RespError(line), end: nl + 2 };
    case ':':
      return { value: Number(line), end: nl + 2 };
    case '$': {
      const n = Number(line);
      if (n < 0) return { value: null, end: nl + 2 };
      if (b.length < nl + 2 + n + 2) return undefined;
      return { value: b.toString('utf8', nl + 2, nl + 2 + n), end: nl + 2 + n + 2 };
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return { value: null, end: nl + 2 };
      const out: RespReply[] = [];
      let at = nl + 2;
      for (let i = 0; i < n; i++) {
        const r = parseReply(b, at);
        if (!r) return undefined;
        out.push(r.value);
        at = r.end;
      }
      return { value: out, end: at };
    }
    default:
      throw new Error(`not a RESP2 reply: ${JSON.stringify(b.toString('utf8', pos, Math.min(b.length, pos + 40)))}`);
  }
}

/** the command's name for messages (never its arguments: MIGRATE carries the password) */
function commandName(args: readonly (string | number)[]): string {
  const name = String(args[0]).toUpperCase();
  return /^(CLUSTER|CONFIG|CLIENT|DEBUG)$/.test(name) && args.length > 1 ? `${name} ${String(args[1]).toUpperCase()}` : name;
}

// ---------------------------------------------------------------------------------------------------------------
// CLUSTER NODES

interface NodeLine {
  id: string;
  port: number;
  /** the line of the node that wrote it (flag myself, not kept in flags) */
  self: boolean;
  flags: string[];
  /** the master's id, for a replica */
  masterId: string | undefined;
  /** inclusive ranges, ascending */
  slots: [number, number][];
}

function parseClusterNodes(text: string): NodeLine[] {
  const out: NodeLine[] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(' ');
    if (f.length < 8 || f[0] === 'vars') continue;
    const slots: [number, number][] = [];
    for (const s of f.slice(8)) {
      if (s.startsWith('[')) continue; // [slot->-id] / [slot-<-id]: this node's own migrating / importing state
      const [a, b] = s.split('-');
      slots.push([Number(a), Number(b ?? a)]);
    }
    slots.sort((x, y) => x[0] - y[0]);
    out.push({
      id: f[0]!,
      port: Number(/:(\d+)@/.exec(f[1]!)?.[1] ?? 0),
      self: f[2]!.split(',').includes('myself'),
      flags: f[2]!.split(',').filter((x) => x !== 'myself'),
      masterId: f[3] === '-' ? undefined : f[3],
      slots,
    });
  }
  return out;
}

const isMaster = (l: NodeLine) => l.flags.includes('master');
const inRanges = (slot: number, r: [number, number][]) => r.some(([a, b]) => slot >= a && slot <= b);

function toRanges(slots: readonly number[]): [number, number][] {
  const out: [number, number][] = [];
  for (const s of [...new Set(slots)].sort((a, b) => a - b)) {
    const last = out[out.length - 1];
    if (last && last[1] === s - 1) last[1] = s;
    else out.push([s, s]);
  }
  return out;
}

/** the slot map and roles as one comparable string */
function canonical(lines: NodeLine[], liveIds: Set<string>): string {
  const owners = lines
    .filter((l) => l.slots.length)
    .map((l) => `${l.slots.map(([a, b]) => (a === b ? a : `${a}-${b}`)).join(',')}=${l.id}`)
    .sort();
  const roles = lines
    .filter((l) => liveIds.has(l.id))
    .map((l) => `${l.id}:${isMaster(l) ? 'master' : `replica-of-${l.masterId}`}`)
    .sort();
  return `${owners.join(' ')} | ${roles.join(' ')}`;
}

function infoField(info: string, field: string): string | undefined {
  return new RegExp(`^${field}:(.*?)\\r?$`, 'm').exec(info)?.[1];
}

// ---------------------------------------------------------------------------------------------------------------
// processes, cleanup

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let tm: NodeJS.Timeout;
  return Promise.race([p, new Promise<undefined>((r) => (tm = setTimeout(() => r(undefined), ms)))]).finally(() =>
    clearTimeout(tm),
  );
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen({ host: REDIS_HOST, port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

/**
 * n consecutive ports from a random base, each (and, for a cluster, its bus port) free right now. Tests that
 * give a server another port of its own (--tls-port) take it here too, so it never meets a bus port.
 */
export async function pickPorts(n: number, bus: boolean): Promise<number[]> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const base = PORT_MIN + Math.floor(Math.random() * (PORT_SPAN - n));
    const ports = Array.from({ length: n }, (_, i) => base + i);
    let free = true;
    for (const p of ports) {
      if (!(await portFree(p)) || (bus && !(await portFree(p + BUS_OFFSET)))) {
        free = false;
        break;
      }
    }
    if (free) return ports;
  }
  throw new Error(`redis harness: found no ${n} free consecutive ports in ${PORT_MIN}..${PORT_MIN + PORT_SPAN} after 100 tries`);
}

/** a config line for redis-server's stdin: the value in double quotes, every byte hex-escaped */
function configLine(name: string, value: string): string {
  return `${name} "${[...Buffer.from(value)].map((x) => `\\x${x.toString(16).padStart(2, '0')}`).join('')}"\n`;
}

class Node implements RedisNodeHandle {
  readonly pid: number;
  /** CLUSTER MYID, once known */
  id = '';
  exit: string | undefined;
  readonly exited: Promise<void>;
  private sigkilled = false;
  /** SIGSTOPped: alive but not answering */
  paused = false;
  private readonly output: Buffer[] = [];

  constructor(
    readonly port: number,
    readonly dir: string,
    readonly child: ChildProcess,
  ) {
    this.pid = child.pid ?? -1;
    this.exited = new Promise<void>((resolve) => {
      child.on('exit', (code, signal) => {
        this.exit = signal ? `signal ${signal}` : `exit ${code}`;
        resolve();
      });
      child.on('error', (e) => {
        this.output.push(Buffer.from(`spawn error: ${e.message}\n`));
        this.exit = 'spawn error';
        resolve();
      });
    });
    const keep = (b: Buffer) => {
      this.output.push(b);
      if (this.output.length > 64) this.output.shift();
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
  }

  get alive(): boolean {
    return this.exit === undefined && !this.sigkilled;
  }

  /** alive and not stopped: something that can answer */
  get up(): boolean {
    return this.alive && !this.paused;
  }

  signal(sig: NodeJS.Signals): void {
    if (!this.alive || this.pid <= 0) return; // never kill(-1): a server that failed to spawn has no pid
    try {
      process.kill(this.pid, sig);
    } catch {
      return;
    }
    if (sig === 'SIGKILL') this.sigkilled = true;
    if (sig === 'SIGSTOP') this.paused = true;
    if (sig === 'SIGCONT') this.paused = false;
  }

  /** the end of redis.log and of what the process printed (config errors go to stderr) */
  logTail(lines = 25): string {
    let log = '';
    try {
      log = readFileSync(join(this.dir, 'redis.log'), 'utf8');
    } catch {
      log = '(no redis.log)';
    }
    const out = Buffer.concat(this.output).toString('utf8').trim();
    const last = (s: string) => s.trimEnd().split('\n').slice(-lines).join('\n');
    return `--- 127.0.0.1:${this.port} (${this.exit ?? 'running'}) redis.log ---\n${last(log)}` +
      (out ? `\n--- its stdout/stderr ---\n${last(out)}` : '');
  }
}

/** every start not yet stopped, for the synchronous exit hook */
const registry = new Set<Fleet>();

function emergencyCleanup(): void {
  for (const f of registry) f.killSync();
  registry.clear();
}

/** a watchdog (run.ts) that kills the servers and removes ROOT if the test process is SIGKILLed */
function redisWatchdog(root: string, pids: number[]): ChildProcess {
  return startWatchdog('kvfs-redis-watchdog', `
    root=$1; shift
    for p in "$@"; do
      if tr '\\0' ' ' < /proc/"$p"/cmdline 2>/dev/null | grep -q redis-server; then kill -9 "$p"; fi
    done
    case "$root" in */kvfs-redis-?*) rm -rf "$root" ;; esac`,
  [root, ...pids.map(String)]);
}

class StartError extends Error {
  constructor(
    message: string,
    /** lost a port race: worth another try on fresh ports */
    readonly portClash: boolean,
  ) {
    super(message);
  }
}

/** the servers of one start: processes, dirs, connections, cleanup */
class Fleet {
  readonly nodes: Node[] = [];
  readonly root: string;
  private watchdog: ChildProcess | undefined;
  private readonly conns = new Map<number, Promise<Resp>>();
  private stopping: Promise<void> | undefined;

  constructor(readonly password: string | undefined) {
    atProcessEnd(emergencyCleanup);
    this.root = mkdtempSync(join(tmpdir(), 'kvfs-redis-'));
    registry.add(this);
  }

  /** removes the password from a message */
  redact(s: string): string {
    return this.password ? s.split(this.password).join('***') : s;
  }

  /** spawns one server per port (returns at once; see `waitPing`) */
  spawn(ports: number[], opts: RedisOptions, cluster: { nodeTimeoutMs: number } | undefined): void {
    for (const port of ports) {
      const dir = join(this.root, String(port));
      mkdirSync(dir);
      const args = [
        '-', // config from stdin: the password, which must not show in argv
        '--port', String(port),
        '--bind', REDIS_HOST,
        '--dir', dir,
        '--save', '',
        '--appendonly', 'no',
        '--daemonize', 'no',
        '--logfile', join(dir, 'redis.log'),
        '--maxmemory-policy', opts.maxmemoryPolicy ?? 'noeviction',
        '--repl-diskless-sync-delay', '0',
        '--enable-debug-command', 'local',
      ];
      if (opts.maxmemory !== undefined) args.push('--maxmemory', String(opts.maxmemory));
      if (cluster) {
        args.push(
          '--cluster-enabled', 'yes',
          '--cluster-config-file', join(dir, 'nodes.conf'),
          '--cluster-node-timeout', String(cluster.nodeTimeoutMs),
          '--cluster-announce-ip', REDIS_HOST,
        );
      }
      args.push(...(opts.extra ?? []));
      const child = spawn('redis-server', args, { cwd: dir, env: baseEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
      child.stdin!.on('error', () => {
        /* a server that dies at once does not read its config */
      });
      child.stdin!.end(
        this.password === undefined ? '' : configLine('requirepass', this.password) + configLine('masterauth', this.password),
      );
      this.nodes.push(new Node(port, dir, child));
    }
    this.watchdog = redisWatchdog(this.root, this.nodes.filter((n) => n.pid > 0).map((n) => n.pid));
  }

  /** resolves once every node answers PING; rejects (StartError) when one exits first or the time is up */
  async waitPing(timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    await Promise.all(
      this.nodes.map(async (n) => {
        let last = '';
        for (;;) {
          if (n.exit !== undefined) {
            const tail = n.logTail();
            throw new StartError(
              this.redact(`redis-server on 127.0.0.1:${n.port} exited at start (${n.exit}):\n${tail}`),
              /Address already in use|Could not create server TCP listening socket/.test(tail),
            );
          }
          try {
            if ((await this.call(n.port, ['PING'], 1000)) === 'PONG') return;
          } catch (e) {
            last = (e as Error).message;
          }
          if (Date.now() > deadline) {
            throw new StartError(
              this.redact(`redis-server on 127.0.0.1:${n.port} did not answer PING within ${timeoutMs} ms (${last}):\n${n.logTail()}`),
              false,
            );
          }
          await sleep(20);
        }
      }),
    );
  }

  node(port: number): Node {
    const n = this.nodes.find((x) => x.port === port);
    if (!n) throw new Error(`no redis node of this harness listens on ${port} (ports: ${this.nodes.map((x) => x.port).join(', ')})`);
    return n;
  }

  /** one command over the pooled connection to port; an error reply rejects with RespError */
  async call(port: number, args: readonly (string | number)[], timeoutMs = 10_000): Promise<RespReply> {
    let c = this.conns.get(port);
    if (c) {
      const open = await c.catch(() => undefined);
      if (!open || open.broken) c = undefined;
    }
    if (!c) {
      c = Resp.open(port, this.password, Math.min(timeoutMs, 5000));
      this.conns.set(port, c);
      const opening = c;
      opening.catch(() => {
        if (this.conns.get(port) === opening) this.conns.delete(port);
      });
    }
    try {
      return await (await c).call(args, timeoutMs);
    } catch (e) {
      if (e instanceof RespError) throw new RespError(this.redact(`127.0.0.1:${port}: ${e.message}`));
      throw new Error(this.redact((e as Error).message));
    }
  }

  dropConnection(port: number): void {
    const c = this.conns.get(port);
    this.conns.delete(port);
    void c?.then((x) => x.close(), () => undefined);
  }

  /** redis-cli -h 127.0.0.1 -p PORT ARGS; the password through REDISCLI_AUTH */
  async cli(port: number, args: readonly string[]): Promise<string> {
    const r = await run('redis-cli', ['-e', '-h', REDIS_HOST, '-p', String(port), ...args], {
      env: { REDISCLI_AUTH: this.password },
      timeout: 30_000,
    });
    if (r.code !== 0 || r.timedOut) throw new Error(this.redact(`redis-cli failed\n${describe(r)}`));
    return r.stdout.trim();
  }

  private killWatchdog(): void {
    if (this.watchdog?.pid === undefined) return;
    try {
      process.kill(-this.watchdog.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }

  /** synchronous: SIGKILL everything, remove ROOT (the exit hook) */
  killSync(): void {
    for (const n of this.nodes) n.signal('SIGKILL');
    this.killWatchdog();
    try {
      rmSync(this.root, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      for (const port of [...this.conns.keys()]) this.dropConnection(port);
      for (const n of this.nodes) n.signal('SIGKILL');
      const slow = await withTimeout(Promise.all(this.nodes.map((n) => n.exited)), 10_000);
      if (!slow) console.error(`kvfs-test: redis-server(s) survived SIGKILL for 10 s: ${this.nodes.filter((n) => !n.exit).map((n) => n.pid).join(' ')}`);
      this.killWatchdog();
      rmSync(this.root, { recursive: true, force: true });
      registry.delete(this);
    })();
    return this.stopping;
  }
}

/** start with retries on port clashes; a failed attempt is stopped before the next */
async function startFleet<T>(
  password: string | undefined,
  attempt: (f: Fleet) => Promise<T>,
): Promise<{ fleet: Fleet; value: T }> {
  for (let i = 1; ; i++) {
    const fleet = new Fleet(password);
    try {
      return { fleet, value: await attempt(fleet) };
    } catch (e) {
      await fleet.stop();
      if (e instanceof StartError && e.portClash && i < 5) continue;
      throw e;
    }
  }
}

async function poll(timeoutMs: number, what: string, check: () => Promise<string | undefined>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let problem = 'not checked yet';
  for (;;) {
    try {
      const p = await check();
      if (p === undefined) return;
      problem = p;
    } catch (e) {
      problem = (e as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not reached within ${timeoutMs} ms: ${problem}`);
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// the cluster

interface View {
  node: Node;
  info: string;
  lines: NodeLine[];
}

export class RedisCluster {
  /** every server started, in port order (`masters()` tells which serve slots now) */
  readonly nodes: RedisNodeHandle[];
  private readonly seedPorts: number[];

  private constructor(
    private readonly fleet: Fleet,
    seedPorts: number[],
  ) {
    this.nodes = fleet.nodes;
    this.seedPorts = seedPorts;
  }

  static async start(t: TestLike | undefined, opts: ClusterOptions = {}): Promise<RedisCluster> {
    const masters = opts.masters ?? 3;
    const replicas = opts.replicas ?? 0;
    const nodeTimeoutMs = opts.nodeTimeoutMs ?? 2000;
    if (masters < 1) throw new Error(`a cluster needs a master (masters: ${masters})`);
    const { fleet, value } = await startFleet(opts.password, async (fleet) => {
      t?.teardown(() => fleet.stop());
      const ports = await pickPorts(masters * (1 + replicas), true);
      fleet.spawn(ports, opts, { nodeTimeoutMs });
      await fleet.waitPing();
      const r = await run(
        'redis-cli',
        ['--cluster', 'create', ...ports.map((p) => `${REDIS_HOST}:${p}`), '--cluster-replicas', String(replicas), '--cluster-yes'],
        { env: { REDISCLI_AUTH: opts.password }, timeout: 60_000 },
      );
      const plain = (s: string) => s.replace(/\x1b\[[0-9;]*m/g, '');
      if (r.code !== 0 || r.timedOut) {
        throw new StartError(
          fleet.redact(`redis-cli --cluster create failed\n${plain(describe(r))}\n${fleet.nodes.map((n) => n.logTail(8)).join('\n')}`),
          false,
        );
      }
      const c = new RedisCluster(fleet, []);
      try {
        await c.waitOk(30_000);
      } catch (e) {
        throw new StartError(
          fleet.redact(`the cluster did not settle after --cluster create: ${(e as Error).message}\n` +
            fleet.nodes.map((n) => n.logTail(8)).join('\n')),
          false,
        );
      }
      return (await c.masters()).map((m) => m.port);
    });
    return new RedisCluster(fleet, value);
  }

  /** the masters at start, as the URL's seed list: "127.0.0.1:p1,127.0.0.1:p2,..." */
  seeds(): string {
    return this.seedPorts.map((p) => `${REDIS_HOST}:${p}`).join(',');
  }

  /** redis-cluster://SEEDS/VOLUME (no password: the backend takes it from KVFS_REDIS_PASSWORD) */
  url(volume: string): string {
    return `redis-cluster://${this.seeds()}/${volume}`;
  }

  /** redis-cli -e -h 127.0.0.1 -p PORT ARGS: stdout trimmed; rejects (with the output) on an error reply or exit */
  cli(port: number, ...args: string[]): Promise<string> {
    return this.fleet.cli(port, args);
  }

  /** non-failed masters (slotless ones too) in the view of a live node, by first slot then port */
  async masters(): Promise<{ id: string; port: number; slots: [number, number][] }[]> {
    const v = await this.someView();
    return v.lines
      .filter((l) => isMaster(l) && !l.flags.includes('fail') && !l.flags.includes('handshake') && !l.flags.includes('noaddr'))
      .map((l) => ({ id: l.id, port: l.port, slots: l.slots }))
      .sort((a, b) => (a.slots[0]?.[0] ?? SLOTS) - (b.slots[0]?.[0] ?? SLOTS) || a.port - b.port);
  }

  /** the port of the master serving slot (in the view of a live node); rejects when no node does */
  async slotOwner(slot: number): Promise<number> {
    const v = await this.someView();
    const owner = v.lines.find((l) => inRanges(slot, l.slots));
    if (!owner) throw new Error(`slot ${slot} is not served (in the view of 127.0.0.1:${v.node.port})`);
    return owner.port;
  }

  /**
   * Moves slots from one master to another while clients go on using them, the way redis-cli reshards: per slot,
   * SETSLOT IMPORTING on the target, MIGRATING on the source, MIGRATE keys in batches until none is left, then
   * SETSLOT NODE on the target, the source and every other master. Resolves once every live node agrees.
   * On a failure it rejects naming the slot and the step, and leaves that slot IMPORTING / MIGRATING.
   */
  async migrateSlots(fromPort: number, toPort: number, slots: number[], opts: { batch?: number } = {}): Promise<void> {
    const batch = opts.batch ?? 100;
    const f = this.fleet;
    const from = this.upNode(fromPort);
    const to = this.upNode(toPort);
    const fromId = await this.myId(from);
    const toId = await this.myId(to);
    const others = (await this.view(from)).lines
      .filter((l) => isMaster(l) && l.id !== fromId && l.id !== toId && f.nodes.some((n) => n.up && n.port === l.port))
      .map((l) => l.port);
    const auth = f.password === undefined ? [] : ['AUTH2', 'default', f.password];
    for (const slot of slots) {
      const step = async <T>(what: string, p: Promise<T>): Promise<T> => {
        try {
          return await p;
        } catch (e) {
          throw new Error(`migrateSlots ${fromPort} -> ${toPort}, slot ${slot}, ${what}: ${(e as Error).message}`);
        }
      };
      await step('IMPORTING on the target', f.call(toPort, ['CLUSTER', 'SETSLOT', slot, 'IMPORTING', fromId]));
      await step('MIGRATING on the source', f.call(fromPort, ['CLUSTER', 'SETSLOT', slot, 'MIGRATING', toId]));
      for (let ioErrors = 0; ; ) {
        const keys = (await step('GETKEYSINSLOT', f.call(fromPort, ['CLUSTER', 'GETKEYSINSLOT', slot, batch]))) as string[];
        if (!keys.length) break;
        try {
          await f.call(fromPort, ['MIGRATE', REDIS_HOST, toPort, '', 0, 10_000, ...auth, 'KEYS', ...keys], 30_000);
        } catch (e) {
          // IOERR: the target did not answer in time; the keys are still on the source, so try again
          if (!(e instanceof RespError && /IOERR/.test(e.message)) || ++ioErrors > 5) {
            throw new Error(`migrateSlots ${fromPort} -> ${toPort}, slot ${slot}, MIGRATE: ${(e as Error).message}`);
          }
        }
      }
      await step('NODE on the target', f.call(toPort, ['CLUSTER', 'SETSLOT', slot, 'NODE', toId]));
      await step('NODE on the source', f.call(fromPort, ['CLUSTER', 'SETSLOT', slot, 'NODE', toId]));
      for (const p of others) await step(`NODE on ${p}`, f.call(p, ['CLUSTER', 'SETSLOT', slot, 'NODE', toId]));
    }
    const moved = toRanges(slots);
    await poll(15_000, `every live node sees ${toPort} serving the migrated slots`, async () => {
      for (const v of await this.views()) {
        for (const [a, b] of moved) {
          for (let s = a; s <= b; s++) {
            const owner = v.lines.find((l) => inRanges(s, l.slots));
            if (owner?.id !== toId) return `127.0.0.1:${v.node.port} sees slot ${s} served by ${owner?.port ?? 'nobody'}`;
          }
        }
      }
      return undefined;
    });
  }

  /** sends signal (default SIGKILL) to the server on port; a no-op for a dead one */
  kill(port: number, signal: NodeJS.Signals = 'SIGKILL'): void {
    const n = this.fleet.node(port);
    n.signal(signal);
    if (!n.up) this.fleet.dropConnection(port);
  }

  /**
   * After `kill(deadPort)`: resolves with the port of the node that now serves what deadPort served (its
   * promoted replica) once the cluster is settled again (`waitOk`). Rejects when deadPort's process has not
   * exited within the timeout, or served no slots.
   */
  async waitFailover(deadPort: number, timeoutMs = 30_000): Promise<number> {
    const dead = this.fleet.node(deadPort);
    const start = Date.now();
    await withTimeout(dead.exited, timeoutMs);
    if (dead.exit === undefined) throw new Error(`waitFailover(${deadPort}): that node is still alive; kill() it first`);
    const self = parseClusterNodes(readFileSync(join(dead.dir, 'nodes.conf'), 'utf8')).find((l) => l.self);
    const slot = self?.slots[0]?.[0];
    if (slot === undefined) throw new Error(`waitFailover(${deadPort}): its nodes.conf shows no slots: nothing to fail over`);
    let promoted = 0;
    await poll(Math.max(1000, timeoutMs - (Date.now() - start)), `a replica of 127.0.0.1:${deadPort} takes over slot ${slot}`, async () => {
      const views = await this.views();
      const owners = new Set(views.map((v) => v.lines.find((l) => inRanges(slot, l.slots))?.port ?? 0));
      const [owner] = owners;
      if (owners.size !== 1 || owner === deadPort || owner === 0) {
        return `slot ${slot} owners seen: ${[...owners].map((p) => p || 'nobody').join(', ')}`;
      }
      promoted = owner!;
      return undefined;
    });
    await this.waitOk(Math.max(1000, timeoutMs - (Date.now() - start)));
    return promoted;
  }

  /**
   * Resolves once every live node reports cluster_state:ok, sees every other live node as healthy, all agree on
   * the slot map and the roles, and every replica of a live master has its link up.
   */
  async waitOk(timeoutMs = 20_000): Promise<void> {
    await poll(timeoutMs, 'cluster settled', async () => {
      const views = await this.views();
      const ids = this.liveIds();
      let first: string | undefined;
      for (const v of views) {
        const at = `127.0.0.1:${v.node.port}`;
        const state = infoField(v.info, 'cluster_state');
        if (state !== 'ok') return `${at} reports cluster_state:${state}`;
        for (const id of ids) {
          const l = v.lines.find((x) => x.id === id);
          if (!l) return `${at} does not know ${id}`;
          const bad = l.flags.filter((x) => /^(fail\??|handshake|noaddr)$/.test(x));
          if (bad.length) return `${at} flags 127.0.0.1:${l.port} ${bad.join(',')}`;
        }
        if (v.lines.some((l) => l.flags.includes('handshake'))) return `${at} is still in a handshake`;
        const c = canonical(v.lines, ids);
        if (first === undefined) first = c;
        else if (c !== first) return `${at} disagrees on slots or roles: ${c} vs ${first}`;
        const me = v.lines.find((l) => l.id === v.node.id);
        if (me && !isMaster(me) && me.masterId && ids.has(me.masterId)) {
          const repl = (await this.fleet.call(v.node.port, ['INFO', 'replication'])) as string;
          const link = infoField(repl, 'master_link_status');
          if (link !== 'up') return `${at} replica link to its master is ${link}`;
        }
      }
      return undefined;
    });
  }

  /**
   * Leaves slots unserved: CLUSTER DELSLOTS on the owner, then on every other live node that still maps them
   * (replicas keep a slot mapped after its owner dropped it). With the default cluster-require-full-coverage
   * the whole cluster then reports cluster_state:fail (CLUSTERDOWN); start it with
   * `extra: ['--cluster-require-full-coverage', 'no']` to keep the other slots served.
   */
  async delSlots(slots: number[]): Promise<void> {
    for (const s of slots) if (!Number.isInteger(s) || s < 0 || s >= SLOTS) throw new Error(`delSlots: ${s} is not a slot`);
    const mapped = (v: View) => slots.filter((s) => v.lines.some((l) => inRanges(s, l.slots)));
    const byOwner = new Map<number, number[]>();
    for (const s of slots) {
      const owner = await this.slotOwner(s).catch(() => undefined);
      if (owner !== undefined) byOwner.set(owner, [...(byOwner.get(owner) ?? []), s]);
    }
    for (const [port, own] of byOwner) await this.fleet.call(port, ['CLUSTER', 'DELSLOTS', ...own]);
    await poll(15_000, `every live node sees slots ${toRanges(slots).map(([a, b]) => `${a}-${b}`).join(',')} unserved`, async () => {
      const views = await this.views();
      const left = views.filter((v) => mapped(v).length);
      for (const v of left) {
        // one by one: DELSLOTS fails as a whole if any slot is already unassigned there
        for (const s of mapped(v)) await this.fleet.call(v.node.port, ['CLUSTER', 'DELSLOTS', s]).catch(() => undefined);
      }
      return left.length ? `still mapped on ${left.map((v) => v.node.port).join(', ')}` : undefined;
    });
  }

  /** kills every server and removes the dirs; idempotent */
  stop(): Promise<void> {
    return this.fleet.stop();
  }

  private liveIds(): Set<string> {
    return new Set(this.fleet.nodes.filter((n) => n.up && n.id).map((n) => n.id));
  }

  private upNode(port: number): Node {
    const n = this.fleet.node(port);
    if (!n.up) throw new Error(`127.0.0.1:${port} is not running (${n.exit ?? (n.paused ? 'stopped' : 'killed')})`);
    return n;
  }

  private async myId(n: Node): Promise<string> {
    if (!n.id) n.id = (await this.fleet.call(n.port, ['CLUSTER', 'MYID'])) as string;
    return n.id;
  }

  private async view(n: Node): Promise<View> {
    await this.myId(n);
    const [info, nodes] = await Promise.all([
      this.fleet.call(n.port, ['CLUSTER', 'INFO']),
      this.fleet.call(n.port, ['CLUSTER', 'NODES']),
    ]);
    return { node: n, info: info as string, lines: parseClusterNodes(nodes as string) };
  }

  private views(): Promise<View[]> {
    const up = this.fleet.nodes.filter((n) => n.up);
    if (!up.length) throw new Error('no redis node of the cluster is running');
    return Promise.all(up.map((n) => this.view(n)));
  }

  /** the view of the first node that answers */
  private async someView(): Promise<View> {
    let last: Error | undefined;
    for (const n of this.fleet.nodes.filter((x) => x.up)) {
      try {
        return await this.view(n);
      } catch (e) {
        last = e as Error;
      }
    }
    throw new Error(`no redis node of the cluster answers${last ? `: ${last.message}` : ''}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// a plain server

export class RedisServer {
  readonly port: number;
  readonly pid: number;
  readonly dir: string;

  private constructor(private readonly fleet: Fleet) {
    const n = fleet.nodes[0]!;
    this.port = n.port;
    this.pid = n.pid;
    this.dir = n.dir;
  }

  static async start(t: TestLike | undefined, opts: RedisOptions = {}): Promise<RedisServer> {
    const { fleet } = await startFleet(opts.password, async (fleet) => {
      t?.teardown(() => fleet.stop());
      fleet.spawn(await pickPorts(1, false), opts, undefined);
      await fleet.waitPing();
    });
    return new RedisServer(fleet);
  }

  get alive(): boolean {
    return this.fleet.nodes[0]!.alive;
  }

  /** redis://127.0.0.1:PORT/VOLUME (no password: the backend takes it from KVFS_REDIS_PASSWORD) */
  url(volume: string): string {
    return `redis://${REDIS_HOST}:${this.port}/${volume}`;
  }

  /** redis-cli -e -h 127.0.0.1 -p PORT ARGS: stdout trimmed; rejects (with the output) on an error reply or exit */
  cli(...args: string[]): Promise<string> {
    return this.fleet.cli(this.port, args);
  }

  /** sends signal (default SIGKILL); a no-op once dead */
  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.fleet.nodes[0]!.signal(signal);
    if (!this.fleet.nodes[0]!.up) this.fleet.dropConnection(this.port);
  }

  /** kills the server and removes its dir; idempotent */
  stop(): Promise<void> {
    return this.fleet.stop();
  }
}
