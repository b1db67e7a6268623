/**
 * Running real tools in child processes, for the real-mount tests.
 *
 * Contract: every tool runs in its own child process (never in the test process), in its own process group,
 * under a timeout; a timed-out tool is killed with its whole group and the result says so (`timedOut`), so a
 * filesystem that hangs turns into a failed assertion, not a hung test. Tools see LC_ALL=C (English messages)
 * and no NODE_OPTIONS (tap's TypeScript loader must not leak into the daemon or into tools).
 *
 * `runAs` runs a tool as another (unprivileged) user through runuser(1), creating the user if needed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';

export interface RunOptions {
  /** milliseconds before the tool's process group is killed (default 60 s) */
  timeout?: number;
  /** bytes written to the tool's stdin (stdin is closed afterwards; without input it is empty) */
  input?: string | Buffer;
  cwd?: string;
  /** variables added to (or, when undefined, removed from) the base environment */
  env?: Record<string, string | undefined>;
  /** run as this user (through runuser -u USER --) */
  user?: string;
}

export interface RunResult {
  /** the command line, for messages */
  cmd: string;
  /** exit code, null when killed by a signal */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  stdoutBuf: Buffer;
  timedOut: boolean;
}

/** Python used for scripted syscalls: the system one, so another user can run it too. */
export const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

/** PATH for tools: the system directories, so runuser'd tools find the same binaries. */
const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** children still running; killed (with their groups) if the test process goes away */
const live = new Set<ChildProcess>();

export function baseEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: 'C', LANG: 'C', PATH: `${SYSTEM_PATH}:${process.env.PATH ?? ''}` };
  delete env.NODE_OPTIONS;
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

function quote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

export function cmdline(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map(quote).join(' ');
}

/** A multi-line description of a result, for assertion messages. */
export function describe(r: RunResult): string {
  const clip = (s: string) => (s.length > 4000 ? `${s.slice(0, 2000)}\n...[${s.length - 4000} bytes]...\n${s.slice(-2000)}` : s);
  return [
    `$ ${r.cmd}`,
    `exit: ${r.code ?? 'signal ' + r.signal}${r.timedOut ? ' (TIMED OUT, killed)' : ''}`,
    r.stdout ? `stdout:\n${clip(r.stdout)}` : 'stdout: (empty)',
    r.stderr ? `stderr:\n${clip(r.stderr)}` : 'stderr: (empty)',
  ].join('\n');
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      /* gone */
    }
  }
}

export interface Started {
  child: ChildProcess;
  cmd: string;
  /** resolves once a line of stdout matches re (rejects on exit or timeout); returns the match */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** the final result (the run's timeout applies) */
  result: Promise<RunResult>;
  /** current output so far */
  output(): { stdout: string; stderr: string };
  /** writes to stdin / closes stdin */
  write(s: string): void;
  end(): void;
  kill(signal?: NodeJS.Signals): void;
}

/**
 * Starts a tool and returns at once. Use for tools that must stay alive while the test does something else
 * (a script holding a file open while the daemon is killed). stdin stays open until end().
 */
export function start(cmd: string, args: readonly string[], opts: RunOptions = {}): Started {
  const timeout = opts.timeout ?? 60_000;
  let file = cmd;
  let argv = [...args];
  if (opts.user !== undefined) {
    ensureUser(opts.user);
    file = 'runuser';
    argv = ['-u', opts.user, '--', cmd, ...args];
  }
  const shown = cmdline(opts.user !== undefined ? `[as ${opts.user}] ${cmd}` : cmd, args);
  const child = spawn(file, argv, {
    cwd: opts.cwd ?? (opts.user !== undefined ? '/' : undefined),
    env: baseEnv(opts.env),
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true, // own process group: a timeout kills the tool and everything it started
  });
  live.add(child);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let outLen = 0;
  let lineBuf = '';
  const lineWaiters: { re: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];
  const seenLines: string[] = [];
  child.stdout!.on('data', (b: Buffer) => {
    if (outLen < 256 * 1024 * 1024) {
      out.push(b);
      outLen += b.length;
    }
    lineBuf += b.toString('utf8');
    let i: number;
    while ((i = lineBuf.indexOf('\n')) >= 0) {
      const line = lineBuf.slice(0, i);
      lineBuf = lineBuf.slice(i + 1);
      seenLines.push(line);
      for (const w of [...lineWaiters]) {
        const m = line.match(w.re);
        if (m) {
          lineWaiters.splice(lineWaiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    }
  });
  child.stderr!.on('data', (b: Buffer) => err.push(b));
  child.stdin!.on('error', () => {
    /* the tool may exit without reading its input */
  });

  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup(child);
  }, timeout);

  const output = () => ({ stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });

  const result = new Promise<RunResult>((resolve) => {
    let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let done = false;
    const finish = () => {
      if (done || !exited) return;
      done = true;
      clearTimeout(timer);
      live.delete(child);
      const stdoutBuf = Buffer.concat(out);
      resolve({
        cmd: shown,
        code: exited.code,
        signal: exited.signal,
        stdout: stdoutBuf.toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        stdoutBuf,
        timedOut,
      });
    };
    child.on('error', (e) => {
      err.push(Buffer.from(`spawn error: ${e.message}\n`));
      exited = { code: 127, signal: null };
      finish();
    });
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      // A daemon started by the tool may keep our pipes open: do not wait for them for long.
      setTimeout(() => {
        child.stdout?.destroy();
        child.stderr?.destroy();
        finish();
      }, 2000).unref();
    });
    child.on('close', () => finish());
  });

  return {
    child,
    cmd: shown,
    output,
    result,
    waitFor(re, timeoutMs = timeout) {
      for (const line of seenLines) {
        const m = line.match(re);
        if (m) return Promise.resolve(m);
      }
      return new Promise<RegExpMatchArray>((resolve, reject) => {
        const w = { re, resolve: (m: RegExpMatchArray) => (clearTimeout(tm), resolve(m)) };
        lineWaiters.push(w);
        const tm = setTimeout(() => {
          lineWaiters.splice(lineWaiters.indexOf(w), 1);
          const o = output();
          reject(new Error(`no stdout line matching ${re} within ${timeoutMs} ms from: ${shown}\nstdout:\n${o.stdout}\nstderr:\n${o.stderr}`));
        }, timeoutMs);
        void result.then((r) => {
          if (lineWaiters.includes(w)) {
            lineWaiters.splice(lineWaiters.indexOf(w), 1);
            clearTimeout(tm);
            reject(new Error(`tool exited before printing a line matching ${re}:\n${describe(r)}`));
          }
        });
      });
    },
    write(s) {
      child.stdin!.write(s);
    },
    end() {
      child.stdin!.end();
    },
    kill(signal = 'SIGKILL') {
      killGroup(child, signal);
    },
  };
}

/** Runs a tool to completion (or timeout) and returns its exit status and output. Never throws. */
export function run(cmd: string, args: readonly string[] = [], opts: RunOptions = {}): Promise<RunResult> {
  const s = start(cmd, args, opts);
  if (opts.input !== undefined) s.child.stdin!.end(opts.input);
  else s.end();
  return s.result;
}

/** Runs a tool as another user (created with useradd if missing). */
export function runAs(user: string, cmd: string, args: readonly string[] = [], opts: RunOptions = {}): Promise<RunResult> {
  return run(cmd, args, { ...opts, user });
}

/** Runs a bash script (with pipefail); extra args are $1, $2, ... */
export function bash(script: string, args: readonly string[] = [], opts: RunOptions = {}): Promise<RunResult> {
  return run('bash', ['-o', 'pipefail', '-c', script, 'bash', ...args], opts);
}

/** The default unprivileged test user. */
export const TEST_USER = 'kvfs-test-user';

/** Makes sure a local user exists; returns its uid and gid. */
export function ensureUser(user: string = TEST_USER): { uid: number; gid: number } {
  const probe = () => {
    const u = spawnSync('id', ['-u', user], { encoding: 'utf8' });
    const g = spawnSync('id', ['-g', user], { encoding: 'utf8' });
    return u.status === 0 && g.status === 0 ? { uid: Number(u.stdout.trim()), gid: Number(g.stdout.trim()) } : undefined;
  };
  const found = probe();
  if (found) return found;
  // test files run in parallel: another one's useradd may hold /etc/passwd's lock (exit 1) or have just made the
  // user (exit 9), so a failed useradd is tried again while the user is still missing
  let why = '';
  for (let attempt = 0; attempt < 20; attempt++) {
    if (attempt > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 250);
    const r = spawnSync('useradd', ['--system', '--no-create-home', '--user-group', '--shell', '/usr/sbin/nologin', user], {
      encoding: 'utf8',
    });
    const made = probe();
    if (made) return made;
    why = `useradd exit ${r.status}: ${r.stderr}`;
  }
  throw new Error(`cannot create test user ${user}: ${why}`);
}

/** Synchronously kills every tool still running (process 'exit' hook). */
export function killAllTools(): void {
  for (const c of live) killGroup(c);
  live.clear();
}

export function isInstalled(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${quote(tool)}`], { env: baseEnv() }).status === 0;
}

const endHooks = new Set<() => void>();

/**
 * Runs fn synchronously when this test process exits or is ended by SIGINT, SIGTERM, SIGHUP or SIGALRM (the
 * signal is raised again afterwards, for tap's own handlers or the default action). Adding fn twice is one hook.
 */
export function atProcessEnd(fn: () => void): void {
  if (endHooks.size === 0) {
    const runAll = () => { for (const f of endHooks) f(); };
    process.on('exit', runAll);
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGALRM'] as const) {
      const onSignal = () => {
        runAll();
        process.removeListener(sig, onSignal);
        process.kill(process.pid, sig);
      };
      process.on(sig, onSignal);
    }
  }
  endHooks.add(fn);
}

/**
 * A detached shell that waits until this test process is gone, then runs `body` with `args` as $1...: the
 * cleanup of last resort when the process dies without its hooks (SIGKILL). Kill it (process group) once
 * the cleanup is no longer needed.
 */
export function startWatchdog(name: string, body: string, args: readonly string[]): ChildProcess {
  const script = `tp=$1; shift\nwhile kill -0 "$tp" 2>/dev/null; do sleep 1; done\n${body}\nexit 0`;
  const w = spawn('sh', ['-c', script, name, String(process.pid), ...args], { detached: true, stdio: 'ignore' });
  w.on('error', () => {
    /* no watchdog: the exit hooks still apply */
  });
  w.unref();
  return w;
}

/** polls cond every 50 ms: true once it holds, false when ms passed first */
export async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}
