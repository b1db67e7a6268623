/**
 * The filesystem's one error type and the one map from every error to an errno.
 *
 * FsError carries a POSIX code name (ENOENT, ...). Below src/fs, code throws FsError for POSIX outcomes and
 * StoreError (src/backend/errors.ts) for store outcomes. At the boundary (a FUSE driver), `toErrno` turns any
 * thrown value into a positive errno; unknown errors are logged with their stack and become EIO.
 */
import { log } from '../log.js';
import { constants } from 'node:os';
import { StoreError } from '../backend/errors.js';

export { FsError, fsErr, errnoOf, type Errno } from '../volume/errors.js';
import { FsError } from '../volume/errors.js';

let logUnknown: (e: unknown) => void = (e) => {
  log.error(`unexpected error, answering EIO: ${e instanceof Error ? e.stack : String(e)}`);
};

/** where unknown errors are reported (the daemon's logger) */
export function setUnknownErrorLogger(fn: (e: unknown) => void): void {
  logUnknown = fn;
}

/**
 * Which NOSPACE errors are logged: the first of each episode of a full store (StoreError.episode; episodes are
 * numbered in the order they open, and an error of an episode older than the last one logged is not logged), and
 * again at most once every `repeatMs` while the episode lasts. Errors of engines that track no episodes (no
 * `episode`): a line at most every `repeatMs`.
 */
export class FullLog {
  #episode = 0;
  #at = -Infinity;
  #untrackedAt = -Infinity;
  constructor(private readonly repeatMs = 60_000) {}

  shouldLog(episode: number | undefined, now: number): boolean {
    if (episode === undefined) {
      if (now - this.#untrackedAt < this.repeatMs) return false;
      this.#untrackedAt = now;
      return true;
    }
    if (episode < this.#episode || (episode === this.#episode && now - this.#at < this.repeatMs)) return false;
    this.#episode = episode;
    this.#at = now;
    return true;
  }
}

const fullLog = new FullLog();

/** Every error a caller can see passes through here: a positive errno. */
export function toErrno(e: unknown): number {
  if (e instanceof FsError) return constants.errno[e.code];
  if (e instanceof StoreError) {
    switch (e.code) {
      case 'NOSPACE':
        // A full store is ENOSPC to the caller; the log line names the limit and what frees space: one line per
        // episode (StoreError.episode), repeated at most once a minute while it lasts.
        if (fullLog.shouldLog(e.episode, Date.now())) log.error(`store full: ${e.message}`);
        return constants.errno.ENOSPC;
      case 'UNAVAILABLE':
      case 'THROTTLED':
        // The store did not answer within the deadline: EIO, the caller may retry later.
        log.error(`store unavailable: ${e.message}`);
        return constants.errno.EIO;
      case 'CLOSED':
        return constants.errno.ENOTCONN;
      case 'CORRUPT':
      case 'CONFIG':
      case 'NOVOLUME':
      case 'VERSION':
      case 'INVALID':
        log.error(`store error ${e.code}: ${e.message}`);
        return constants.errno.EIO;
    }
  }
  logUnknown(e);
  return constants.errno.EIO;
}
