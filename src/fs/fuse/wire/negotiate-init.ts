/**
 * negotiateInit: the answer to the kernel's INIT, as a pure function.
 *
 * - Refuses (InitRefused, answered EPROTO) a major other than 7 or a minor below 31 (Linux 5.4), the oldest
 *   protocol kvfs is written against. (The header asks userspace to answer a *newer* major with its own and wait
 *   for a second INIT; Linux has only ever spoken 7, so kvfs refuses instead.)
 * - The minor is the smaller of the kernel's and ours (FUSE_KERNEL_MINOR_VERSION); both sides speak that one.
 * - Flags are the kernel's offer intersected with `wanted.flags`, plus the two that are mechanics of this reply
 *   rather than behaviour: FUSE_MAX_PAGES (so max_pages is read) and FUSE_INIT_EXT (so flags2 is read), each only
 *   when offered. Bits 32..63 go to flags2, and only with FUSE_INIT_EXT.
 * - max_write 1 MiB and max_pages 256 (1 MiB of 4 KiB pages: one READ or WRITE moves up to 1 MiB, matching the
 *   buffer pool's largest class); time_gran 1 (nanosecond timestamps); max_readahead is the kernel's, or less if
 *   wanted; max_background / congestion_threshold 0 keep the kernel's defaults; map_alignment 0 (no DAX).
 */
import { FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION } from './flags.js';
import { INIT_FLAGS } from './init-flags.js';
import type { InitOut } from './reply-bodies.js';
import type { OpFields } from './request.js';

export const MIN_KERNEL_MINOR = 31;
export const MAX_WRITE = 1 << 20;
export const MAX_PAGES = 256;
export const TIME_GRAN_NS = 1;
const EPROTO = 71;
const LOW32 = 0xffff_ffffn;

export interface InitWanted {
  /** capabilities kvfs would use (INIT_FLAGS bits) */
  flags: bigint;
  /** upper bound for readahead, bytes (default: what the kernel offers) */
  maxReadahead?: number;
  /** background requests the kernel may have in flight (u16; 0 = kernel default) */
  maxBackground?: number;
  /** when the kernel marks the mount congested (u16; 0 = kernel default) */
  congestionThreshold?: number;
  /** the largest WRITE the session can take whole, bytes (default MAX_WRITE; a multiple of 4 KiB) */
  maxWrite?: number;
}

export interface InitResult {
  /** the reply body (REPLY.init) */
  out: InitOut;
  /** the minor both sides now speak */
  minor: number;
  /** the agreed capabilities, 64 bits */
  flags: bigint;
}

/** The kernel speaks a protocol we do not: answer errno and stop the session. */
export class InitRefused extends Error {
  readonly code = 'FUSE_INIT_REFUSED';
  readonly errno = EPROTO;
  constructor(message: string) {
    super(message);
    this.name = 'InitRefused';
  }
}

function u16(name: string, v: number | undefined): number {
  const n = v ?? 0;
  if (!Number.isInteger(n) || n < 0 || n > 0xffff) throw new RangeError(`${name} must be 0..65535, got ${v}`);
  return n;
}

export function negotiateInit(req: OpFields['INIT'], wanted: InitWanted): InitResult {
  if (req.major !== FUSE_KERNEL_VERSION) {
    throw new InitRefused(`kernel speaks FUSE ${req.major}.${req.minor}; kvfs speaks major ${FUSE_KERNEL_VERSION} only`);
  }
  if (req.minor < MIN_KERNEL_MINOR) {
    throw new InitRefused(
      `kernel speaks FUSE 7.${req.minor}; kvfs needs 7.${MIN_KERNEL_MINOR} or newer (Linux 5.4 or later)`,
    );
  }
  const minor = Math.min(req.minor, FUSE_KERNEL_MINOR_VERSION);
  const mechanics = INIT_FLAGS.FUSE_MAX_PAGES | INIT_FLAGS.FUSE_INIT_EXT;
  let flags = req.flags & (wanted.flags | mechanics);
  if ((flags & INIT_FLAGS.FUSE_INIT_EXT) === 0n) flags &= LOW32;
  const maxWrite = wanted.maxWrite ?? MAX_WRITE;
  if (!Number.isInteger(maxWrite) || maxWrite < 4096 || maxWrite > MAX_WRITE || maxWrite % 4096) {
    throw new RangeError(`maxWrite must be a multiple of 4096 from 4096 to ${MAX_WRITE}, got ${maxWrite}`);
  }
  const readahead = Math.min(req.max_readahead, wanted.maxReadahead ?? req.max_readahead);
  return {
    minor,
    flags,
    out: {
      major: FUSE_KERNEL_VERSION,
      minor,
      max_readahead: Math.max(0, Math.floor(readahead)),
      flags: Number(flags & LOW32),
      max_background: u16('maxBackground', wanted.maxBackground),
      congestion_threshold: u16('congestionThreshold', wanted.congestionThreshold),
      max_write: maxWrite,
      time_gran: TIME_GRAN_NS,
      max_pages: Math.min(MAX_PAGES, Math.ceil(maxWrite / 4096)),
      map_alignment: 0,
      flags2: Number(flags >> 32n),
    },
  };
}
