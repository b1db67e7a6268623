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
  constructor(code: StoreErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreError';
    this.code = code;
  }
}

export function isStoreError(e: unknown): e is StoreError {
  return e instanceof StoreError;
}
