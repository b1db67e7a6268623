/**
 * The retry layer between the Redis adapter (redis.ts) and ioredis. Every store call runs through `withRetry`.
 *
 * Rules:
 *  1. Every call has a deadline (`deadlineMs`, default 10 s, `--store-timeout`). No call outlives it: each
 *     attempt races a timer set at the deadline, and the call then fails with UNAVAILABLE (the store did
 *     not answer) or THROTTLED (it answered "not now" until the end). Both are EIO to the caller.
 *  2. Transient errors are retried with exponential backoff and full jitter (a random sleep in
 *     [0, min(cap, base * 2^attempt)], never past the deadline):
 *       - cluster moves: MOVED and ASK storms past ioredis's own redirections, TRYAGAIN (a multi-key
 *         command during a slot migration), CLUSTERDOWN, MASTERDOWN, READONLY (a demoted master);
 *       - a busy or starting server: LOADING, BUSY (a script running long), NOREPLICAS;
 *       - connection loss, refused connections, command timeouts (write stalls), a cluster not ready.
 *  3. A full store is NOSPACE at once, never retried: Redis's `OOM command not allowed when used memory >
 *     'maxmemory'` and Kvrocks's `max-db-size` errors. The message names the limit and how to raise it.
 *  4. Authentication, permission and TLS certificate errors are CONFIG at once; errors our scripts raise (KVFS_*) map to
 *     their StoreError code; any other error is rethrown as it is (EIO, logged with its stack).
 *  5. Retrying must be safe: every operation the adapter retries is idempotent. Reads and blob writes are by
 *     nature (a blob key is written once with one value); metadata commits and counters carry a transaction
 *     id, recorded by the script that applies them, so a retry after an unknown outcome (a timeout, a lost
 *     connection) neither applies a change twice nor skips it: it finds its id and answers as the first did.
 *     Nothing is ever skipped because an earlier attempt "may still be running".
 */
import { StoreError } from './errors.js';

export interface RetryPolicy {
  /** the whole call's budget, ms */
  deadlineMs: number;
  /** first backoff bound, ms */
  baseMs: number;
  /** largest backoff bound, ms */
  capMs: number;
  /** the deadline to name in messages when deadlineMs is what is left of a larger one (ms) */
  reportMs?: number;
}

export const DEFAULT_RETRY: RetryPolicy = { deadlineMs: 10_000, baseMs: 10, capMs: 1_000 };

export type ErrorClass = 'transient' | 'throttled' | 'nospace' | 'auth' | 'tls' | 'fatal';

const THROTTLE_PREFIXES = ['TRYAGAIN', 'CLUSTERDOWN', 'MASTERDOWN', 'LOADING', 'BUSY', 'NOREPLICAS', 'READONLY', 'MOVED', 'ASK'];
const CONNECTION_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ECONNABORTED',
  'ERR_SOCKET_CLOSED', 'ENOTCONN',
]);
const TLS_CODES = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'CERT_HAS_EXPIRED',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_GET_ISSUER_CERT', 'CERT_NOT_YET_VALID', 'ERR_TLS_CERT_ALTNAME_INVALID',
  'ERR_SSL_WRONG_VERSION_NUMBER', 'CERT_UNTRUSTED', 'CERT_SIGNATURE_FAILURE',
]);
const CONNECTION_MESSAGES = [
  'Connection is closed', "Stream isn't writeable", "Cluster isn't ready", 'None of startup nodes is available',
  'Failed to refresh slots cache', 'Too many Cluster redirections', 'Command timed out', 'Reached the max retries',
  'connect ETIMEDOUT', 'Connection timeout', 'socket hang up', 'All nodes failed',
];

/** what kind of failure an error from ioredis (or our scripts) is */
export function classify(e: unknown): ErrorClass {
  if (e instanceof StoreError) return 'fatal';
  const err = e as { message?: unknown; code?: unknown; name?: unknown };
  const msg = typeof err?.message === 'string' ? err.message : '';
  if (/^OOM\b/.test(msg) || /max-db-size/i.test(msg)) return 'nospace';
  if (/^(WRONGPASS|NOAUTH|NOPERM)\b/.test(msg) || /invalid password|AUTH failed/i.test(msg)) return 'auth';
  if (typeof err?.code === 'string' && TLS_CODES.has(err.code)) return 'tls';
  if (THROTTLE_PREFIXES.some((p) => msg.startsWith(p + ' ') || msg === p)) return 'throttled';
  if (typeof err?.code === 'string' && CONNECTION_CODES.has(err.code)) return 'transient';
  if (err?.name === 'MaxRetriesPerRequestError' || err?.name === 'ClusterAllFailedError') return 'transient';
  if (CONNECTION_MESSAGES.some((m) => msg.includes(m))) return 'transient';
  return 'fatal';
}

/** a short text of an error for messages: its first line, without anything secret (we never put one there) */
export function errorText(e: unknown): string {
  const msg = (e as { message?: unknown })?.message;
  return (typeof msg === 'string' ? msg : String(e)).split('\n')[0]!.slice(0, 300);
}

export interface RetryHooks {
  /** the message of NOSPACE: names the limit and the knob */
  nospace(e: unknown): string;
  /** the message of an authentication failure */
  auth(e: unknown): string;
  /** maps script errors (KVFS_*) and other known replies to a StoreError; undefined leaves e as it is */
  known?(e: unknown): StoreError | undefined;
  /** called once per retried failure (for stats) */
  onRetry?(cls: ErrorClass): void;
  /** true once the store is closed: stop at once */
  closed(): boolean;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Runs `attempt` until it succeeds, fails for good, or the deadline passes (rules above). `what` names the
 * call in messages (e.g. "get of i/5"). `attempt` must be idempotent (rule 5).
 */
export async function withRetry<T>(
  what: string, policy: RetryPolicy, hooks: RetryHooks, attempt: () => Promise<T>,
): Promise<T> {
  const deadline = Date.now() + policy.deadlineMs;
  let last: unknown;
  let lastCls: ErrorClass = 'transient';
  for (let n = 0; ; n++) {
    if (hooks.closed()) throw new StoreError('CLOSED', 'the Redis store is closed');
    const left = deadline - Date.now();
    if (left <= 0) break;
    let timer: NodeJS.Timeout | undefined;
    try {
      const p = attempt();
      // An attempt still running at the deadline is abandoned; its late outcome is ignored (rule 5 makes
      // that safe) and rejections of it are swallowed.
      p.catch(() => undefined);
      return await Promise.race([
        p,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(Object.assign(new Error('Command timed out'), { kvfsDeadline: true })), left);
        }),
      ]);
    } catch (e) {
      const known = hooks.known?.(e);
      if (known) throw known;
      const cls = classify(e);
      if (cls === 'fatal') throw e;
      if (cls === 'nospace') throw new StoreError('NOSPACE', hooks.nospace(e), { cause: e });
      if (cls === 'auth') throw new StoreError('CONFIG', hooks.auth(e), { cause: e });
      if (cls === 'tls') {
        throw new StoreError('CONFIG', `${what}: the TLS handshake failed (${(e as { code?: string }).code}: ${errorText(e)}); ` +
          'give the CA that signed the server\'s certificate with --tls-ca (or KVFS_REDIS_TLS_CA)', { cause: e });
      }
      // The deadline cutting the last attempt short says less than what the attempts before it met (a refused
      // connection, a failover): the message keeps that.
      if (!(e as { kvfsDeadline?: boolean }).kvfsDeadline || last === undefined) {
        last = e;
        lastCls = cls;
      }
      hooks.onRetry?.(cls);
    } finally {
      clearTimeout(timer);
    }
    const bound = Math.min(policy.capMs, policy.baseMs * 2 ** Math.min(n, 20));
    const pause = Math.min(Math.random() * bound, deadline - Date.now());
    if (pause > 0) await sleep(pause);
  }
  const ms = policy.reportMs ?? policy.deadlineMs;
  const secs = (ms / 1000).toFixed(ms % 1000 ? 1 : 0);
  const why = last === undefined ? 'no attempt finished' : errorText(last);
  if (lastCls === 'throttled') {
    throw new StoreError('THROTTLED', `${what}: the Redis store kept pushing back for ${secs} s (${why})`, { cause: last });
  }
  throw new StoreError('UNAVAILABLE', `${what}: the Redis store did not answer within ${secs} s (${why})`, { cause: last });
}
