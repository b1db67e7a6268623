/**
 * Errors a KV engine may raise. Each condition is one class-free code so callers switch on `code`, never on
 * message text. Adapters translate every engine error into one of these; anything else escaping an adapter is
 * a bug and becomes EIO at the filesystem boundary (logged with its stack).
 */
export type StoreErrorCode =
  | 'NOSPACE'      // the store is full (LMDB map/disk full, Redis maxmemory with noeviction)
  | 'UNAVAILABLE'  // the store cannot be reached, or did not answer within the deadline
  | 'THROTTLED'    // the store pushed back and retries ran out
  | 'CORRUPT'      // a stored value could not be decoded
  | 'CLOSED'       // the store was closed
  | 'CONFIG'       // the store is configured in a way kvfs cannot work with
  | 'NOVOLUME'     // no volume record where one was expected
  | 'VERSION'      // a volume of a format this build does not know
  | 'INVALID';     // a bad store URL or option

export class StoreError extends Error {
  readonly code: StoreErrorCode;
  /**
   * NOSPACE only, from engines that track it (FullEpisodes): the number of the episode of a full store this error
   * belongs to, unique in the process. The one place that logs store errors writes one line per episode.
   */
  episode?: number;
  constructor(code: StoreErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreError';
    this.code = code;
  }
}

let episodes = 0;

/**
 * The episodes of one store being full. An episode is a run of NOSPACE errors: it opens with the first one, and
 * ends when a write that grows the store, at least as large as the largest one refused in it, succeeds (space was
 * freed and such writes work again); the next NOSPACE opens a new one. Smaller writes that still fit (a heartbeat,
 * a new empty file) do not end it.
 */
export class FullEpisodes {
  #current: number | undefined;
  #largest = 0;

  /** a write of `need` bytes was refused for space: the number of its episode */
  refused(need: number): number {
    if (this.#current === undefined) {
      this.#current = ++episodes;
      this.#largest = 0;
    }
    this.#largest = Math.max(this.#largest, need);
    return this.#current;
  }

  /** a write that grows the store, of `need` bytes, succeeded */
  succeeded(need: number): void {
    if (this.#current !== undefined && need >= this.#largest) this.#current = undefined;
  }

  /** whether an episode is open */
  get full(): boolean {
    return this.#current !== undefined;
  }
}

export function isStoreError(e: unknown): e is StoreError {
  return e instanceof StoreError;
}
