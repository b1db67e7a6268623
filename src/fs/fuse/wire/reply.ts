/**
 * Reply encoding: fuse_out_header {len, error, unique} and the body after it.
 *
 * Two forms of each: write into a caller's Buffer at an offset and return the bytes written (for pooled buffers),
 * or allocate (convenience). For one writev of header + body, `outHeader` encodes the header alone.
 *
 * What the kernel checks (fs/fuse/dev.c), and so what callers must keep:
 * - exactly one reply per request that replies (opcodes.ts); none for FORGET, BATCH_FORGET, INTERRUPT, NOTIFY_REPLY;
 * - an error reply is the header alone (16 bytes) with error = -errno, 1 ≤ errno ≤ 511; anything else is EINVAL
 *   to the write and the request stays unanswered, so replyError turns an out-of-range errno into EIO;
 * - a success body is never longer than the kernel asked for (READ: ≤ size; fixed structs: exactly their size).
 */
import { encode } from './layout.js';
import type { ReplyBody } from './reply-bodies.js';
import { STRUCTS } from './structs.js';

export const OUT_HEADER_SIZE = 16;
const EIO = 5;
/** the kernel refuses errors at or beyond -ERESTARTSYS (512) */
const ERRNO_MAX = 511;

/** A valid errno for the wire: integers 1..511 pass, anything else becomes EIO. */
export function wireErrno(errno: number): number {
  return Number.isInteger(errno) && errno >= 1 && errno <= ERRNO_MAX ? errno : EIO;
}

/**
 * fuse_out_header at off. `len` is the whole reply's length (this header included); `error` is 0 or -errno.
 * Returns 16.
 */
export function writeOutHeader(buf: Buffer, off: number, unique: bigint, len: number, error = 0): number {
  encode(STRUCTS.fuse_out_header, buf, off, { len, error, unique });
  return OUT_HEADER_SIZE;
}

/** A success header for a body of bodyLength bytes sent after it (writev). */
export function outHeader(unique: bigint, bodyLength: number): Buffer {
  const buf = Buffer.allocUnsafe(OUT_HEADER_SIZE);
  writeOutHeader(buf, 0, unique, OUT_HEADER_SIZE + bodyLength);
  return buf;
}

/** An error reply (header only) at off; errno is positive (see wireErrno). Returns 16. */
export function writeError(buf: Buffer, off: number, unique: bigint, errno: number): number {
  return writeOutHeader(buf, off, unique, OUT_HEADER_SIZE, -wireErrno(errno));
}

/** FUSE_NOTIFY_INVAL_INODE (error field 2, unique 0): the kernel drops the inode's cached attributes (off -1: no pages) */
export const FUSE_NOTIFY_INVAL_INODE = 2;
export function notifyInvalInode(ino: number | bigint): Buffer {
  const buf = Buffer.alloc(OUT_HEADER_SIZE + 24);
  writeOutHeader(buf, 0, 0n, buf.length, FUSE_NOTIFY_INVAL_INODE);
  buf.writeBigUInt64LE(BigInt(ino), OUT_HEADER_SIZE); // fuse_notify_inval_inode_out.ino
  buf.writeBigInt64LE(-1n, OUT_HEADER_SIZE + 8); //       .off: -1 = attributes only
  buf.writeBigInt64LE(0n, OUT_HEADER_SIZE + 16); //       .len
  return buf;
}

export function replyError(unique: bigint, errno: number): Buffer {
  const buf = Buffer.allocUnsafe(OUT_HEADER_SIZE);
  writeError(buf, 0, unique, errno);
  return buf;
}

/** Success with an empty body: the opcodes whose reply kind is 'empty' (UNLINK, RENAME, RELEASE, FSYNC …). */
export function replyOk(unique: bigint): Buffer {
  return outHeader(unique, 0);
}

/** Header + fixed body at off; returns the reply's length. */
export function writeReply<T>(buf: Buffer, off: number, unique: bigint, body: ReplyBody<T>, v: T): number {
  const len = OUT_HEADER_SIZE + body.size;
  if (off < 0 || off + len > buf.length) throw new RangeError(`reply of ${len} bytes does not fit at ${off}`);
  writeOutHeader(buf, off, unique, len);
  body.write(buf, off + OUT_HEADER_SIZE, v);
  return len;
}

/** Header + fixed body, allocated. */
export function encodeReply<T>(unique: bigint, body: ReplyBody<T>, v: T): Buffer {
  const buf = Buffer.allocUnsafe(OUT_HEADER_SIZE + body.size);
  writeReply(buf, 0, unique, body, v);
  return buf;
}

/**
 * Header + raw bytes (READ data, READLINK target, GETXATTR value, LISTXATTR names, packed dirents), copied into
 * one allocation. To avoid the copy, send outHeader(unique, data.length) and data with one writev.
 */
export function replyBytes(unique: bigint, data: Uint8Array): Buffer {
  const buf = Buffer.allocUnsafe(OUT_HEADER_SIZE + data.length);
  writeOutHeader(buf, 0, unique, buf.length);
  buf.set(data, OUT_HEADER_SIZE);
  return buf;
}
