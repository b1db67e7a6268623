/**
 * Mounts' sessions in a volume, below any mount: the session records (s/<session>, kept alive by a heartbeat),
 * the orphans a session leaves (o/<ino>: inodes with no links that it still used), and on shared stores the
 * count of mounts holding each inode open (u/<ino>, one w/<session>/<ino> each).
 *
 * Contract:
 *  - A session is live while its record's expiry lies ahead; a mount renews it every third of its TTL (ttlMs,
 *    SESSION_TTL_MS unless the mount chose another). The record holds the expiry, so mounts with other TTLs agree.
 *  - The orphans of sessions that are not live are removed by whoever reaps (any mount, or `kvfs gc`); on a
 *    shared store a dead session's open files are released first, and the inode goes with the last holder.
 *  - `inUse(ino)` says whether the caller itself still needs an inode (a mount: open, or known to its kernel);
 *    such an inode becomes the caller's own orphan (`kept`) instead of being removed. Without a mount: never.
 */
import type { KvStore } from '../backend/kv.js';
import type { Volume } from './inodes.js';
import { K, decodeInode, memberOf } from './schema.js';
import { scanPages } from './scan.js';
import { transact, type Txn } from './txn.js';
import type { Ino } from './types.js';

/** a mount's session record lives this long without a heartbeat (the default of `kvfs mount --session-ttl`) */
export const SESSION_TTL_MS = 30_000;
/** the page size of the scans of sessions, orphans and open files */
const PAGE = 256;

export interface SessionsContext {
  store: KvStore;
  vol: Volume;
  /** the caller's own session id (its orphans are its own business) */
  session: string;
  /** how long the caller's record lives without a heartbeat (default SESSION_TTL_MS) */
  ttlMs?: number;
  shared: boolean;
  /**
   * a session without a record counts as live: a local store served by a live daemon, whose newest writes (a new
   * session's record among them) other processes see only after its log's next checkpoint (src/backend/lmdb.ts)
   */
  unknownLive?: boolean;
  inUse(ino: Ino): boolean;
  /** ino became the caller's orphan (it was in use when its last link or holder went) */
  kept(ino: Ino): void;
}

export class Sessions {
  constructor(private readonly cx: SessionsContext) {}

  /** renews the caller's session record */
  async heartbeat(): Promise<void> {
    await this.cx.store.put(K.session(this.cx.session), Buffer.from(String(Date.now() + (this.cx.ttlMs ?? SESSION_TTL_MS))));
  }

  /** whether session sid is live (its record's expiry lies ahead) */
  async isLive(sid: string): Promise<boolean> {
    return this.liveBy(await this.cx.store.get(K.session(sid)));
  }

  /** whether a session whose record holds beat (undefined: none) is live */
  private liveBy(beat: Uint8Array | undefined): boolean {
    return beat ? Number(Buffer.from(beat).toString()) > Date.now() : !!this.cx.unknownLive;
  }

  /** whether another mount of a shared store holds ino open (its u/<ino> count), as read inside tx */
  async openElsewhere(tx: Txn, ino: Ino): Promise<boolean> {
    return this.cx.shared && (await this.usersOf(tx, ino)) > 0;
  }

  /** shared stores: how many mounts hold ino open (u/<ino>), as read inside tx */
  private async usersOf(tx: Txn, ino: Ino): Promise<number> {
    const raw = await tx.get(K.users(ino));
    return raw ? Number(Buffer.from(raw).toString()) || 0 : 0;
  }

  /** shared stores: this mount holds ino open from this commit on (see releaseUse) */
  async takeUse(tx: Txn, ino: Ino): Promise<void> {
    tx.set(K.users(ino), Buffer.from(String((await this.usersOf(tx, ino)) + 1)));
    tx.set(K.use(this.cx.session, ino), Buffer.alloc(0));
  }

  /**
   * Shared stores: one fewer mount (`session`) holds ino open. The mount that brings the count to 0 removes an
   * inode with no links left, unless this mount's kernel still knows it (then it becomes this mount's orphan).
   */
  async releaseUse(session: string, ino: Ino): Promise<void> {
    await transact(this.cx.store, async (tx) => {
      if ((await tx.get(K.use(session, ino))) === undefined) return;
      const left = (await this.usersOf(tx, ino)) - 1;
      if (left > 0) tx.set(K.users(ino), Buffer.from(String(left)));
      else tx.del(K.users(ino));
      tx.del(K.use(session, ino));
      const raw = left > 0 ? undefined : await tx.get(K.inode(ino));
      if (!raw || decodeInode(ino, raw).nlink !== 0) return;
      if (this.cx.inUse(ino)) {
        tx.set(K.orphan(ino), Buffer.from(this.cx.session));
        tx.after.push(() => this.cx.kept(ino));
      } else {
        tx.del(K.orphan(ino));
        await this.cx.vol.removeInode(tx, ino);
      }
    });
  }

  /**
   * Orphans whose mount is gone (no live session) are removed; those of live mounts are left alone. Returns how
   * many orphans went, and (shared stores) how many dead sessions were released.
   */
  async reapOrphans(): Promise<{ orphans: number; sessions: number }> {
    const sessions = this.cx.shared ? await this.reapSessions() : 0;
    let orphans = 0;
    for await (const page of scanPages(this.cx.store, K.orphanPrefix, PAGE)) {
      for (const [key, owner] of page) {
        const sid = Buffer.from(owner).toString();
        const beat = await this.cx.store.get(K.session(sid));
        if (sid === this.cx.session || this.liveBy(beat)) continue;
        const ino = Number(memberOf(key, K.orphanPrefix));
        orphans++;
        await transact(this.cx.store, async (tx) => {
          tx.del(key);
          const raw = await tx.get(K.inode(ino));
          // on a shared store, a mount that still holds it open removes it at its release
          if (raw && decodeInode(ino, raw).nlink === 0 && !(await this.openElsewhere(tx, ino))) this.cx.vol.queuePurge(tx, ino);
        });
        // (on a shared store reapSessions removes dead sessions, after releasing their open files)
        if (beat && !this.cx.shared) await this.cx.store.del([K.session(sid)]);
      }
    }
    return { orphans, sessions };
  }

  /** Shared stores: releases every file a session holds open (w/<session>/). */
  async releaseSession(sid: string): Promise<void> {
    for await (const page of scanPages(this.cx.store, K.usePrefix(sid), PAGE)) {
      for (const [u] of page) await this.releaseUse(sid, Number(memberOf(u, K.usePrefix(sid))));
    }
  }

  /** Shared stores: the open files of mounts whose session expired (killed, machine lost) are released. */
  private async reapSessions(): Promise<number> {
    let n = 0;
    for await (const page of scanPages(this.cx.store, K.sessionPrefix, PAGE)) {
      for (const [key, beat] of page) {
        const sid = memberOf(key, K.sessionPrefix);
        if (sid === this.cx.session || Number(Buffer.from(beat).toString()) > Date.now()) continue;
        await this.releaseSession(sid);
        // its orphans (o/) go in reapOrphans, which finds no live session for them
        await this.cx.store.del([key]);
        n++;
      }
    }
    return n;
  }

}
