/**
 * Redis store URLs and credentials.
 *
 *   redis://[USER@]HOST[:PORT]/VOLUME                  one server (default port 6379)
 *   redis-cluster://[USER@]HOST:PORT[,HOST:PORT...]/VOLUME   a Redis Cluster (or Kvrocks in cluster mode);
 *                                                       the listed nodes are seeds, the rest is discovered
 *   rediss://, rediss-cluster://                        the same over TLS
 *
 * VOLUME is 1-64 characters of [A-Za-z0-9_-]: it becomes the hash tag `{VOLUME}` of every metadata key.
 * The password never comes from the URL or argv (every user can read a process's argv): it comes from the
 * environment variable KVFS_REDIS_PASSWORD, or the file named by --password-file or KVFS_REDIS_PASSWORD_FILE
 * (its first line). TLS files: --tls-ca, --tls-cert, --tls-key (or KVFS_REDIS_TLS_CA/_CERT/_KEY).
 * No message made here contains a password.
 */
import { readFileSync } from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import { StoreError } from './errors.js';

export interface RedisNodeAddr { host: string; port: number }

export interface RedisTarget {
  cluster: boolean;
  tls: boolean;
  nodes: RedisNodeAddr[];
  username?: string;
  volume: string;
  /** the URL as given, safe to print (it never holds a password: those are refused) */
  label: string;
}

export interface RedisAuthOptions {
  /** a file whose first line is the password */
  passwordFile?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  /** environment to read KVFS_REDIS_* from (default process.env) */
  env?: NodeJS.ProcessEnv;
}

export const VOLUME_NAME = /^[A-Za-z0-9_-]{1,64}$/;

export function isRedisUrl(url: string): boolean {
  return /^rediss?(-cluster)?:\/\//i.test(url);
}

/** parses a redis URL (above); throws StoreError INVALID with a message that says what is wrong */
export function parseRedisUrl(url: string): RedisTarget {
  const m = /^(rediss?)(-cluster)?:\/\/(.*)$/is.exec(url);
  if (!m) throw new StoreError('INVALID', `'${mask(url)}' is not a redis URL (expected redis://HOST:PORT/VOLUME or redis-cluster://HOST:PORT,.../VOLUME)`);
  const tls = m[1]!.toLowerCase() === 'rediss';
  const cluster = m[2] !== undefined;
  const scheme = `${m[1]!.toLowerCase()}${cluster ? '-cluster' : ''}://`;
  let rest = m[3]!;
  const slash = rest.indexOf('/');
  const authority = slash < 0 ? rest : rest.slice(0, slash);
  const path = slash < 0 ? '' : rest.slice(slash + 1);
  let hosts = authority;
  let username: string | undefined;
  const at = authority.lastIndexOf('@');
  if (at >= 0) {
    const userinfo = authority.slice(0, at);
    hosts = authority.slice(at + 1);
    if (userinfo.includes(':')) {
      throw new StoreError('INVALID',
        `'${mask(url)}' carries a password: put it in KVFS_REDIS_PASSWORD or a file (--password-file), never in the URL (every user can read a command line)`);
    }
    username = decodeURIComponent(userinfo);
    if (username === '') username = undefined;
  }
  const example = cluster ? 'redis-cluster://127.0.0.1:7000,127.0.0.1:7001/myvol' : 'redis://127.0.0.1:6379/myvol';
  if (hosts === '') throw new StoreError('INVALID', `'${url}' names no host (expected e.g. ${example})`);
  const nodes = hosts.split(',').map((h) => parseHostPort(h, url, example));
  if (!cluster && nodes.length > 1) {
    throw new StoreError('INVALID', `'${url}' lists ${nodes.length} hosts: several nodes make a cluster URL (${scheme.replace('://', '-cluster://')}...)`);
  }
  const volume = decodeURIComponent(path.replace(/\/$/, ''));
  if (volume === '') throw new StoreError('INVALID', `'${url}' names no volume (expected e.g. ${example})`);
  if (!VOLUME_NAME.test(volume)) {
    throw new StoreError('INVALID', `volume name '${volume}' in '${url}' must be 1-64 characters of A-Z a-z 0-9 _ - (it becomes a Redis hash tag)`);
  }
  return { cluster, tls, nodes, username, volume, label: url };
}

function parseHostPort(s: string, url: string, example: string): RedisNodeAddr {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?$/.exec(s);
  if (!m) throw new StoreError('INVALID', `'${s}' in '${url}' is not HOST or HOST:PORT (expected e.g. ${example})`);
  const port = m[2] === undefined ? 6379 : Number(m[2]);
  if (port < 1 || port > 65535) throw new StoreError('INVALID', `port ${m[2]} in '${url}' is not between 1 and 65535`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

/** a URL with any password replaced by *** (for messages about URLs we refuse) */
export function mask(url: string): string {
  return url.replace(/^([a-z-]+:\/\/[^/@:]*):[^@/]*@/i, '$1:***@');
}

/** the password to use, or undefined; reads the file named by the options or the environment */
export function redisPassword(opts: RedisAuthOptions): string | undefined {
  const env = opts.env ?? process.env;
  const file = opts.passwordFile ?? env.KVFS_REDIS_PASSWORD_FILE;
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new StoreError('INVALID', `cannot read the Redis password file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const line = text.split(/\r?\n/)[0] ?? '';
    if (line === '') throw new StoreError('INVALID', `the Redis password file ${file} is empty (the password is its first line)`);
    return line;
  }
  const p = env.KVFS_REDIS_PASSWORD;
  return p === undefined || p === '' ? undefined : p;
}

/** TLS options for a rediss URL, from files; undefined for a plain URL (and then TLS files are refused) */
export function redisTls(target: RedisTarget, opts: RedisAuthOptions): ConnectionOptions | undefined {
  const env = opts.env ?? process.env;
  const files = {
    ca: opts.tlsCa ?? env.KVFS_REDIS_TLS_CA,
    cert: opts.tlsCert ?? env.KVFS_REDIS_TLS_CERT,
    key: opts.tlsKey ?? env.KVFS_REDIS_TLS_KEY,
  };
  if (!target.tls) {
    if (opts.tlsCa || opts.tlsCert || opts.tlsKey) {
      throw new StoreError('INVALID', `TLS files were given for '${target.label}', which is not a TLS URL (use rediss:// or rediss-cluster://)`);
    }
    return undefined;
  }
  if ((files.cert === undefined) !== (files.key === undefined)) {
    throw new StoreError('INVALID', 'a TLS client certificate needs both --tls-cert and --tls-key');
  }
  const read = (what: string, f: string | undefined) => {
    if (f === undefined) return undefined;
    try {
      return readFileSync(f);
    } catch (e) {
      throw new StoreError('INVALID', `cannot read the TLS ${what} file ${f}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  };
  return { ca: read('CA', files.ca), cert: read('certificate', files.cert), key: read('key', files.key) };
}
