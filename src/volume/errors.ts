/**
 * The POSIX outcome of a volume operation: FsError carries a POSIX code name (ENOENT, ...). Store outcomes are
 * StoreError (src/backend/errors.ts); src/fs/errors.ts maps both to errnos at a driver's boundary.
 */
import { constants } from 'node:os';

export type Errno = keyof typeof constants.errno;

export class FsError extends Error {
  readonly code: Errno;
  constructor(code: Errno, message?: string) {
    // An FsError is an answer (ENOENT for every lookup of a new name), never logged: no stack to capture.
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message ?? code);
    Error.stackTraceLimit = limit;
    this.name = 'FsError';
    this.code = code;
  }
}

/** shorthand: throw fsErr('ENOENT') */
export function fsErr(code: Errno, message?: string): FsError {
  return new FsError(code, message);
}

export function errnoOf(code: Errno): number {
  return constants.errno[code];
}
