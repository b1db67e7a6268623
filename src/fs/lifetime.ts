/**
 * How long a mount keeps inodes, and its session in the store.
 *
 * Contract:
 *  - An inode is in use here while it is open here or known to the kernel (lookup count above 0). One whose
 *    last link goes while in use stays, named by an orphan record (o/<ino>, with this mount's session), and is
 *    removed when the last use ends (`reapOrphanBatch`); the orphans the kernel forgets are removed in batches
 *    (`queueReap`), so `rm -r` costs one commit per batch, not one per file.
 *  - The session record (s/<session>) lives while the mount does (a heartbeat renews it); orphans of sessions
 *    that expired (a mount killed, a machine lost) are removed by any live mount (`reapOrphans`).
 *  - Shared stores: u/<ino> counts the mounts holding ino open (w/<session>/<ino> each); an inode with no links
 *    stays while any holds it, and the mount whose release brings the count to 0 removes it. The open files of
 *    expired sessions are released by the live mounts (`reapSessions`).
 */
import { log } from '../log.js';
import type { KvStore } from '../backend/kv.js';
import { DELETE_BATCH } from '../volume/queues.js';
import type { Drop, Volume } from '../volume/inodes.js';
import { K, decodeInode, type Inode } from '../volume/schema.js';
import { SESSION_TTL_MS, Sessions } from '../volume/sessions.js';
import { transact, type Txn } from '../volume/txn.js';
import type { Ino } from './types.js';

/** how long the orphans the kernel forgets gather before one commit removes them (queueReap) */
const REAP_DELAY_MS = 20;

export interface LifetimeContext {
  store: KvStore;
  vol: Volume;
  session: string;
  /** how long this mount's session record lives without a heartbeat (default SESSION_TTL_MS) */
  sessionTtlMs?: number;
  shared: boolean;
  /** handles this mount holds open on ino */
  openRefs(ino: Ino): number;
  /** the file ino, open here, lost its last link (its data is then never committed again) */
  unlinkedWhileOpen(ino: Ino): void;
  /** the kernel forgot ino: what the driver answers for it by itself goes */
  forgotten(ino: Ino): void;
}

export class Lifetime {
  /** lookup counts of the kernel (native driver): inodes it may still name in a request */
  private readonly kernelRefs = new Map<Ino, number>();
  /** inodes of this mount with no links left, kept while in use */
  private readonly orphans = new Set<Ino>();
  /** orphans the kernel forgot, waiting for queueReap's batch */
  private readonly reapQueue: Ino[] = [];
  private beat: NodeJS.Timeout | undefined;
  private reaper: NodeJS.Timeout | undefined;

  private readonly sessions: Sessions;

  constructor(private readonly cx: LifetimeContext) {
    this.sessions = new Sessions({
      store: cx.store, vol: cx.vol, session: cx.session, shared: cx.shared, ttlMs: cx.sessionTtlMs,
      inUse: (ino) => this.inUse(ino), kept: (ino) => this.orphans.add(ino),
    });
  }

  /** registers the session with a heartbeat and removes the orphans that ended mounts left */
  async start(): Promise<void> {
    await this.sessions.heartbeat();
    const ttl = this.cx.sessionTtlMs ?? SESSION_TTL_MS;
    this.beat = setInterval(() => void this.sessions.heartbeat().catch(() => undefined), ttl / 3);
    this.beat.unref?.();
    // Mounts that ended without cleaning up (killed, machine lost) leave orphans: each live mount looks for
    // them once per session lifetime, so they go even when no new mount starts.
    this.reaper = setInterval(() => void this.reapOrphans().catch(() => undefined), ttl);
    this.reaper.unref?.();
    await this.reapOrphans();
  }

  /** stops the timers, removes the orphans waiting for a batch, and (shared stores) releases this mount's open files */
  async stop(): Promise<void> {
    clearInterval(this.beat);
    clearInterval(this.reaper);
    await this.reapOrphanBatch(this.reapQueue.splice(0)).catch(() => undefined);
    if (this.cx.shared) await this.sessions.releaseSession(this.cx.session).catch(() => undefined);
  }

  /** the session record goes (orphans still in use here go with it: the next mount reaps them) */
  async end(): Promise<void> {
    await this.cx.store.del([K.session(this.cx.session)]).catch(() => undefined);
  }

  /** true while this mount must keep an inode: open here, or known to the kernel (lookup count > 0) */
  inUse(ino: Ino): boolean {
    return this.cx.openRefs(ino) > 0 || (this.kernelRefs.get(ino) ?? 0) > 0;
  }

  /**
   * The mount's Drop (inodes.ts): an inode whose last link went is removed now, or, while it is in use here
   * (open, or still known to the kernel, which may yet open it through a dentry it holds), when the last use
   * ends; on a shared store, while another mount holds it open, it stays (nlink 0) until the last release.
   */
  readonly drop: Drop = async (tx: Txn, n: Inode) => {
    if (!this.inUse(n.ino) && (await this.sessions.openElsewhere(tx, n.ino))) {
      this.cx.vol.put(tx, n);
      return;
    }
    if (this.inUse(n.ino)) {
      tx.set(K.orphan(n.ino), Buffer.from(this.cx.session));
      this.cx.vol.put(tx, n);
      tx.after.push(() => {
        this.orphans.add(n.ino);
        this.cx.unlinkedWhileOpen(n.ino);
      });
    } else {
      await this.cx.vol.removeInode(tx, n.ino);
    }
  };

  /** shared stores: this mount holds ino open from this commit on (see releaseUse) */
  takeUse(tx: Txn, ino: Ino): Promise<void> {
    return this.sessions.takeUse(tx, ino);
  }

  /** shared stores: one fewer mount holds ino open (sessions.ts) */
  releaseUse(session: string, ino: Ino): Promise<void> {
    return this.sessions.releaseUse(session, ino);
  }

  /** removes the orphans whose mount is gone (sessions.ts) */
  async reapOrphans(): Promise<void> {
    await this.sessions.reapOrphans();
  }

  /** removes the orphans of this mount among inos that nothing uses any more, in one commit */
  async reapOrphanBatch(inos: Ino[]): Promise<void> {
    const gone = inos.filter((ino) => this.orphans.has(ino) && !this.inUse(ino));
    if (!gone.length) return;
    for (const ino of gone) this.orphans.delete(ino);
    await transact(this.cx.store, async (tx) => {
      for (const ino of gone) {
        tx.del(K.orphan(ino));
        const raw = await tx.get(K.inode(ino));
        // on a shared store, another mount that holds it open removes it at its release (releaseUse)
        if (raw && decodeInode(ino, raw).nlink === 0 && !(await this.sessions.openElsewhere(tx, ino))) await this.cx.vol.removeInode(tx, ino);
      }
    });
  }

  /**
   * Orphans the kernel forgot, removed together REAP_DELAY_MS after the first of them: the FORGETs of `rm -r`
   * (one per unlinked file, as the kernel drops each inode) cost one commit per batch, not one per file.
   */
  private queueReap(ino: Ino): void {
    if (!this.orphans.has(ino)) return;
    this.reapQueue.push(ino);
    if (this.reapQueue.length > 1) return;
    setTimeout(() => {
      const batch = this.reapQueue.splice(0, this.reapQueue.length);
      for (let i = 0; i < batch.length; i += DELETE_BATCH) {
        const part = batch.slice(i, i + DELETE_BATCH);
        this.reapOrphanBatch(part).catch((e) => {
          // put back, so that a later reap (or the next mount) removes them
          for (const ino of part) this.orphans.add(ino);
          log.error(`removing ${part.length} unlinked inode(s) failed (it is retried at the next mount): ${(e as Error)?.message ?? String(e)}`);
        });
      }
    }, REAP_DELAY_MS).unref?.();
  }

  /** the kernel learned of an inode (an entry reply): it may use it until it forgets it */
  remember(ino: Ino): void {
    this.kernelRefs.set(ino, (this.kernelRefs.get(ino) ?? 0) + 1);
  }

  /** the kernel forgot n lookups of an inode; at zero this mount drops it (and removes it, when unlinked) */
  forget(ino: Ino, n: number): void {
    const left = (this.kernelRefs.get(ino) ?? 0) - n;
    if (left > 0) {
      this.kernelRefs.set(ino, left);
      return;
    }
    this.kernelRefs.delete(ino);
    this.cx.forgotten(ino);
    this.queueReap(ino);
  }

  /** inodes the kernel currently holds */
  get kernelInodes(): number {
    return this.kernelRefs.size;
  }
}
