/**
 * Typed parse errors of the wire layer. Each is a class with a stable `code` and the errno the session answers
 * with. Every error raised after the 40-byte header was read carries the request's `unique` and `opcode`
 * (set by parseRequest), so the session can reply; `replyWanted` says whether it should (false when the header
 * itself is unreadable, or the opcode never gets a reply, such as FORGET).
 *
 * parseRequest throws nothing but these, for any input bytes.
 */
const EIO = 5;
const EINVAL = 22;
const ENOSYS = 38;

export type WireErrorCode =
  | 'FUSE_SHORT_HEADER'
  | 'FUSE_LENGTH_MISMATCH'
  | 'FUSE_SHORT_BODY'
  | 'FUSE_UNKNOWN_OPCODE'
  | 'FUSE_BAD_NAME'
  | 'FUSE_BAD_NODEID';

export abstract class WireParseError extends Error {
  abstract readonly code: WireErrorCode;
  /** the positive errno to answer with */
  abstract readonly errno: number;
  /** the request's unique, once the header was read */
  unique: bigint | undefined;
  /** the request's opcode, once the header was read */
  opcode: number | undefined;
  /** whether the session should answer `errno` (set by parseRequest with the header's context) */
  replyWanted = false;

  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** Fewer than 40 bytes of fuse_in_header: nothing can be answered (no unique). */
export class ShortHeader extends WireParseError {
  readonly code = 'FUSE_SHORT_HEADER';
  readonly errno = EIO;
  constructor(readonly got: number) {
    super(`fuse_in_header needs 40 bytes, got ${got}`);
  }
}

/** fuse_in_header.len is not 40 + the body's length. */
export class LengthMismatch extends WireParseError {
  readonly code = 'FUSE_LENGTH_MISMATCH';
  readonly errno = EIO;
  constructor(readonly len: number, readonly bodyLength: number) {
    super(`fuse_in_header.len ${len} but 40 + ${bodyLength} bytes were given`);
  }
}

/** The body is shorter than the opcode's struct, a name lacks its NUL, or trailing data is cut short. */
export class ShortBody extends WireParseError {
  readonly code = 'FUSE_SHORT_BODY';
  readonly errno = EIO;
  constructor(what: string, readonly need: number, readonly got: number) {
    super(`${what}: need ${need} bytes, got ${got}`);
  }
}

/** An opcode we do not know (new kernels send some without negotiation, e.g. FUSE_STATX): answered ENOSYS. */
export class UnknownOpcode extends WireParseError {
  readonly code = 'FUSE_UNKNOWN_OPCODE';
  readonly errno = ENOSYS;
  constructor(opcode: number) {
    super(`unknown FUSE opcode ${opcode}`);
    this.opcode = opcode;
  }
}

/** A name that is not valid UTF-8: answered EINVAL (kvfs keeps names as strings). */
export class BadName extends WireParseError {
  readonly code = 'FUSE_BAD_NAME';
  readonly errno = EINVAL;
  /** a copy of the offending bytes (the body is a pooled buffer) */
  readonly bytes: Uint8Array;
  constructor(bytes: Uint8Array) {
    super(`name is not valid UTF-8 (${bytes.length} bytes)`);
    this.bytes = bytes.slice();
  }
}

/** A node id ≥ 2^53: never one of ours (inode numbers are safe integers). */
export class BadNodeId extends WireParseError {
  readonly code = 'FUSE_BAD_NODEID';
  readonly errno = EIO;
  constructor(readonly nodeid: bigint) {
    super(`node id ${nodeid} is beyond 2^53`);
  }
}
