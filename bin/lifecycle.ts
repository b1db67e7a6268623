/**
 * A mounted daemon's life after mounting: signals, unmounting, and the last commit.
 *
 *   serving --SIGINT/SIGTERM/SIGHUP--> stopping: commit everything, then unmount (not lazily)
 *   stopping --kernel says busy--> busy: keeps serving, says who holds the mount, retries every RETRY_MS
 *   stopping/busy --the signal again, or `kvfs umount --lazy`--> detached: unmounted lazily, still serving the
 *                                     processes inside until the last one leaves
 *   any --the mount left the table (kvfs umount, fusermount -u, umount -l)--> detached
 *   detached --the kernel ended the connection--> closing: commit, close the store, remove the record, exit
 *
 * Exit status: 0 when everything was committed, 1 when the last commit failed (said in the log). A commit that
 * fails at a signal keeps the mount serving (nothing is lost while the daemon lives) and is retried; the signal
 * again detaches anyway. SIGUSR1 never opens Node's inspector (bin/kvfs.js ignores it before anything loads).
 */
import { fuseDeviceFds, mountAt, unmount, UnmountError, type MountEntry } from '../src/fs/fuse/mount-table.js';
import { holdersOf } from './daemons.js';

/** the signals that stop a mounted daemon */
export const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

const RETRY_MS = 2000;
const POLL_MS = 250;

export interface LifeParts {
  mountpoint: string;
  /** the mount as the table showed it once mounted (its dev tells it from a later mount on the same path) */
  entry: MountEntry;
  /** resolves when the driver saw the kernel end the session (native driver); absent: watch its /dev/fuse fds */
  closed?: Promise<void>;
  /** commits every open file's writes and makes the store durable */
  sync(): Promise<void>;
  /** the last commit and closing of the volume and store; rejects when something could not be committed */
  close(): Promise<void>;
  log(line: string): void;
  /** called after close(), with the exit status */
  exit(code: number): void;
}

type State = 'serving' | 'stopping' | 'busy' | 'detached' | 'closing';

export class Lifecycle {
  private state: State = 'serving';
  private retry?: NodeJS.Timeout;
  private readonly poll: NodeJS.Timeout;
  private saidBusy = false;
  /** without `closed`: the session's /dev/fuse descriptors, which the driver closes when the session ends */
  private readonly fuseFds: number[];

  constructor(private readonly p: LifeParts) {
    this.fuseFds = p.closed ? [] : fuseDeviceFds();
    for (const sig of STOP_SIGNALS) process.on(sig, () => this.signal(sig));
    // The mount can leave the table from outside at any time; a stopped connection (native) ends the session.
    this.poll = setInterval(() => this.watch(), POLL_MS);
    void p.closed?.then(() => this.finish());
  }

  get current(): State {
    return this.state;
  }

  private signal(sig: string): void {
    switch (this.state) {
      case 'serving':
        this.state = 'stopping';
        this.p.log(`${sig}: committing and unmounting ${this.p.mountpoint}`);
        void this.stop();
        return;
      case 'stopping':
      case 'busy':
        this.p.log(`${sig} again: unmounting ${this.p.mountpoint} lazily; serving the processes still inside until the last one leaves`);
        void this.detach();
        return;
      default:
        this.p.log(`${sig}: already ${this.state === 'closing' ? 'closing' : 'detached, waiting for the last user to leave'}`);
    }
  }

  /** commit, then unmount; on busy or a failed commit keep serving and try again */
  private async stop(): Promise<void> {
    clearTimeout(this.retry);
    if (this.state !== 'stopping' && this.state !== 'busy') return;
    try {
      await this.p.sync();
    } catch (e) {
      this.p.log(`cannot commit before unmounting: ${(e as Error).message}; still serving ${this.p.mountpoint}, ` +
        `trying again in ${RETRY_MS / 1000} s (the signal again unmounts anyway)`);
      this.retry = setTimeout(() => void this.stop(), RETRY_MS);
      return;
    }
    if (this.state !== 'stopping' && this.state !== 'busy') return;
    try {
      await unmount(this.p.mountpoint);
      this.detached();
    } catch (e) {
      if (!mountAt(this.p.mountpoint)) return this.detached();
      if (this.state !== 'stopping' && this.state !== 'busy') return;
      const busy = e instanceof UnmountError && e.busy;
      if (!this.saidBusy || !busy) {
        this.p.log(busy
          ? `cannot unmount ${this.p.mountpoint}: it is busy${holdersOf(this.p.mountpoint)}; ` +
            `still serving it and trying again every ${RETRY_MS / 1000} s. To detach it now: send the signal again, ` +
            `or run kvfs umount --lazy ${this.p.mountpoint}`
          : `${(e as Error).message}; still serving, trying again in ${RETRY_MS / 1000} s`);
        this.saidBusy ||= busy;
      }
      this.state = 'busy';
      this.retry = setTimeout(() => void this.stop(), RETRY_MS);
    }
  }

  private async detach(): Promise<void> {
    clearTimeout(this.retry);
    try {
      await unmount(this.p.mountpoint, { lazy: true });
    } catch (e) {
      if (mountAt(this.p.mountpoint)) {
        this.p.log(`${(e as Error).message}`);
        return;
      }
    }
    this.detached();
  }

  /** the mount is out of the table; the session goes on until the kernel ends it */
  private detached(): void {
    if (this.state === 'detached' || this.state === 'closing') return;
    clearTimeout(this.retry);
    this.state = 'detached';
    this.watch();
  }

  private watch(): void {
    if (this.state === 'closing') return;
    if (this.state !== 'detached') {
      if (mountAt(this.p.mountpoint)?.dev === this.p.entry.dev) return;
      if (this.state !== 'stopping') this.p.log(`${this.p.mountpoint} was unmounted`);
      this.detached();
      return;
    }
    // Native driver: `closed` says when the session ends; otherwise the driver closing its descriptors does.
    if (this.p.closed) return;
    const open = new Set(fuseDeviceFds());
    if (!this.fuseFds.some((fd) => open.has(fd))) void this.finish();
  }

  /** the session is over (unmounted, and a lazily detached mount's last user gone): the last commit, then exit */
  private async finish(): Promise<void> {
    const why = `unmounted ${this.p.mountpoint}`;
    if (this.state === 'closing') return;
    this.state = 'closing';
    clearTimeout(this.retry);
    clearInterval(this.poll);
    let code = 0;
    try {
      await this.p.close();
      this.p.log(`${why}: everything committed; stopped`);
    } catch (e) {
      code = 1;
      this.p.log(`${why}, but the last commit failed: ${(e as Error).message}; what was written since the last ` +
        'successful fsync or close may be lost');
    }
    this.p.exit(code);
  }
}
