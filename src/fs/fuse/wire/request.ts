/**
 * parseRequest: one request from /dev/fuse (the 40-byte fuse_in_header and the body the reader sized by its `len`)
 * to a typed Request: `header` (fuse_in_header's fields), `ext` (the extension bytes counted by total_extlen, empty
 * unless security contexts or similar were negotiated), and the opcode's decoded fields, discriminated by `op`.
 *
 * Contract:
 * - Throws only WireParseError subclasses (errors.ts), for any input bytes.
 * - Views, not copies: `data`, `value` and `ext` point into `body`; they are valid while the caller holds the body's
 *   buffer (a pooled buffer must not be released before the handler is done with them). Names are copied (strings).
 * - Names are UTF-8 (BadName otherwise), decoded exactly: a leading U+FEFF is kept, not taken for a BOM.
 * - 64-bit fields follow layout.ts: node ids exact (BadNodeId past 2^53), handles/offsets/lengths numbers
 *   (approximated past 2^53, never below), unique, lock owners, lock ranges and poll handles bigints.
 * - Bytes after what an opcode carries (and before the extensions) are ignored.
 * - SETXATTR: fuse_setxattr_in is 16 bytes only once FUSE_SETXATTR_EXT was negotiated, 8 before; the session says
 *   which with `opts.setxattrExt` (setxattr_flags is 0 in the short form).
 */
import { decode, type Fields } from './layout.js';
import { BadName, LengthMismatch, ShortBody, ShortHeader, UnknownOpcode, WireParseError } from './errors.js';
import { opcodeInfo, type OpName } from './opcodes.js';
import { STRUCTS, type StructName } from './structs.js';
import { INIT_FLAGS } from './init-flags.js';

type F<N extends StructName> = Fields<(typeof STRUCTS)[N]>;

export const IN_HEADER_SIZE = 40;

export type InHeader = F<'fuse_in_header'>;
export type FileLock = F<'fuse_file_lock'>;
export type ForgetOne = F<'fuse_forget_one'>;
export type RemoveMappingOne = F<'fuse_removemapping_one'>;

/** The decoded fields of each opcode (besides `op`, `header`, `ext`). */
export interface OpFields extends Record<OpName, object> {
  LOOKUP: { name: string };
  FORGET: F<'fuse_forget_in'>;
  GETATTR: F<'fuse_getattr_in'>;
  SETATTR: F<'fuse_setattr_in'>;
  READLINK: {};
  /** name: the new entry in header.nodeid; target: what the link points to */
  SYMLINK: { name: string; target: string };
  MKNOD: F<'fuse_mknod_in'> & { name: string };
  MKDIR: F<'fuse_mkdir_in'> & { name: string };
  UNLINK: { name: string };
  RMDIR: { name: string };
  /** oldname in header.nodeid moves to newname in newdir */
  RENAME: F<'fuse_rename_in'> & { oldname: string; newname: string };
  /** a new name in header.nodeid for the inode oldnodeid */
  LINK: F<'fuse_link_in'> & { name: string };
  OPEN: F<'fuse_open_in'>;
  READ: F<'fuse_read_in'>;
  /** data: exactly `size` bytes, a view into the body */
  WRITE: F<'fuse_write_in'> & { data: Uint8Array };
  STATFS: {};
  RELEASE: F<'fuse_release_in'>;
  FSYNC: F<'fuse_fsync_in'>;
  /** value: exactly `size` bytes, a view into the body */
  SETXATTR: F<'fuse_setxattr_in'> & { name: string; value: Uint8Array };
  /** size 0: a size query (answer fuse_getxattr_out); otherwise the value must fit in size bytes (else ERANGE) */
  GETXATTR: F<'fuse_getxattr_in'> & { name: string };
  LISTXATTR: F<'fuse_getxattr_in'>;
  REMOVEXATTR: { name: string };
  FLUSH: F<'fuse_flush_in'>;
  /** flags: the kernel's 64 capability bits (flags | flags2 << 32; flags2 only when FUSE_INIT_EXT is set) */
  INIT: { major: number; minor: number; max_readahead: number; flags: bigint };
  OPENDIR: F<'fuse_open_in'>;
  READDIR: F<'fuse_read_in'>;
  RELEASEDIR: F<'fuse_release_in'>;
  FSYNCDIR: F<'fuse_fsync_in'>;
  GETLK: F<'fuse_lk_in'> & { lk: FileLock };
  SETLK: F<'fuse_lk_in'> & { lk: FileLock };
  SETLKW: F<'fuse_lk_in'> & { lk: FileLock };
  ACCESS: F<'fuse_access_in'>;
  CREATE: F<'fuse_create_in'> & { name: string };
  /** unique: the request to interrupt */
  INTERRUPT: F<'fuse_interrupt_in'>;
  BMAP: F<'fuse_bmap_in'>;
  DESTROY: {};
  /** data: in_size bytes of ioctl input, a view into the body */
  IOCTL: F<'fuse_ioctl_in'> & { data: Uint8Array };
  POLL: F<'fuse_poll_in'>;
  /** the answer to a NOTIFY_RETRIEVE: header.unique is the notify_unique; data: size bytes */
  NOTIFY_REPLY: F<'fuse_notify_retrieve_in'> & { data: Uint8Array };
  BATCH_FORGET: { items: ForgetOne[] };
  FALLOCATE: F<'fuse_fallocate_in'>;
  READDIRPLUS: F<'fuse_read_in'>;
  RENAME2: F<'fuse_rename2_in'> & { oldname: string; newname: string };
  LSEEK: F<'fuse_lseek_in'>;
  COPY_FILE_RANGE: F<'fuse_copy_file_range_in'>;
  SETUPMAPPING: F<'fuse_setupmapping_in'>;
  REMOVEMAPPING: { items: RemoveMappingOne[] };
  SYNCFS: {};
  /** name: what the VFS gave the unnamed dentry ("/"); the file has no name in the directory */
  TMPFILE: F<'fuse_create_in'> & { name: string };
}

export type OpOf<K extends OpName> = { op: K } & OpFields[K];
export type Op = { [K in OpName]: OpOf<K> }[OpName];

export interface RequestBase {
  header: InHeader;
  /** extension records (total_extlen * 8 bytes at the end of the body), a view; empty when none */
  ext: Uint8Array;
}
export type Request = RequestBase & Op;
export type RequestOf<K extends OpName> = RequestBase & OpOf<K>;

export interface ParseOptions {
  /** FUSE_SETXATTR_EXT was negotiated: fuse_setxattr_in is 16 bytes, not 8 */
  setxattrExt?: boolean;
}

/** what a decoder sees: the body without extensions */
interface Payload {
  bytes: Uint8Array;
  dv: DataView;
  opts: ParseOptions;
}

type Decoder<K extends OpName> = (p: Payload) => OpFields[K];

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function need(p: Payload, n: number, what: string): void {
  if (p.bytes.length < n) throw new ShortBody(what, n, p.bytes.length);
}

/** The fixed struct at the start of the body. */
function struct<N extends StructName>(p: Payload, name: N): F<N> {
  const l = STRUCTS[name];
  need(p, l.size, name);
  return decode(l, p.dv, 0) as F<N>;
}

/** `count` NUL-terminated UTF-8 names from `start`; returns them and the offset after the last NUL. */
function names(p: Payload, start: number, count: number): { names: string[]; end: number } {
  const out: string[] = [];
  let at = start;
  for (let i = 0; i < count; i++) {
    const nul = at <= p.bytes.length ? p.bytes.indexOf(0, at) : -1;
    if (nul < 0) throw new ShortBody(`name ${i + 1} of ${count} (no NUL)`, p.bytes.length + 1, p.bytes.length);
    const raw = p.bytes.subarray(at, nul);
    try {
      out.push(utf8.decode(raw));
    } catch {
      throw new BadName(raw);
    }
    at = nul + 1;
  }
  return { names: out, end: at };
}

function name1(p: Payload, start: number): string {
  return names(p, start, 1).names[0]!;
}

function names2(p: Payload, start: number): [string, string] {
  const n = names(p, start, 2).names;
  return [n[0]!, n[1]!];
}

/** `size` bytes at `start`, a view */
function tail(p: Payload, start: number, size: number, what: string): Uint8Array {
  need(p, start + size, what);
  return p.bytes.subarray(start, start + size);
}

function lockReq(p: Payload): F<'fuse_lk_in'> & { lk: FileLock } {
  const s = struct(p, 'fuse_lk_in');
  const lk = decode(STRUCTS.fuse_file_lock, p.dv, STRUCTS.fuse_lk_in.fields.lk[0]);
  return { ...s, lk };
}

/** Entries of `one` after a `head`-byte struct whose u32 `count` is at offset 0. */
function entries<N extends 'fuse_forget_one' | 'fuse_removemapping_one'>(p: Payload, head: number, one: N): F<N>[] {
  need(p, head, 'entry count');
  const count = p.dv.getUint32(0, true);
  const l = STRUCTS[one];
  need(p, head + count * l.size, `${count} × ${one}`);
  const out: F<N>[] = new Array(count);
  for (let i = 0; i < count; i++) out[i] = decode(l, p.dv, head + i * l.size) as F<N>;
  return out;
}

const INIT_EXT = INIT_FLAGS.FUSE_INIT_EXT;

const DECODERS: { [K in OpName]: Decoder<K> } = {
  LOOKUP: (p) => ({ name: name1(p, 0) }),
  FORGET: (p) => struct(p, 'fuse_forget_in'),
  GETATTR: (p) => struct(p, 'fuse_getattr_in'),
  SETATTR: (p) => struct(p, 'fuse_setattr_in'),
  READLINK: () => ({}),
  SYMLINK: (p) => {
    const [name, target] = names2(p, 0);
    return { name, target };
  },
  MKNOD: (p) => ({ ...struct(p, 'fuse_mknod_in'), name: name1(p, 16) }),
  MKDIR: (p) => ({ ...struct(p, 'fuse_mkdir_in'), name: name1(p, 8) }),
  UNLINK: (p) => ({ name: name1(p, 0) }),
  RMDIR: (p) => ({ name: name1(p, 0) }),
  RENAME: (p) => {
    const s = struct(p, 'fuse_rename_in');
    const [oldname, newname] = names2(p, 8);
    return { ...s, oldname, newname };
  },
  LINK: (p) => ({ ...struct(p, 'fuse_link_in'), name: name1(p, 8) }),
  OPEN: (p) => struct(p, 'fuse_open_in'),
  READ: (p) => struct(p, 'fuse_read_in'),
  WRITE: (p) => {
    const s = struct(p, 'fuse_write_in');
    return { ...s, data: tail(p, 40, s.size, 'WRITE data') };
  },
  STATFS: () => ({}),
  RELEASE: (p) => struct(p, 'fuse_release_in'),
  FSYNC: (p) => struct(p, 'fuse_fsync_in'),
  SETXATTR: (p) => {
    const ext = p.opts.setxattrExt === true;
    const head = ext ? 16 : 8;
    need(p, head, ext ? 'fuse_setxattr_in' : 'fuse_setxattr_in (FUSE_COMPAT_SETXATTR_IN_SIZE)');
    const size = p.dv.getUint32(0, true);
    const flags = p.dv.getUint32(4, true);
    const setxattr_flags = ext ? p.dv.getUint32(8, true) : 0;
    const n = names(p, head, 1);
    return { size, flags, setxattr_flags, name: n.names[0]!, value: tail(p, n.end, size, 'SETXATTR value') };
  },
  GETXATTR: (p) => ({ ...struct(p, 'fuse_getxattr_in'), name: name1(p, 8) }),
  LISTXATTR: (p) => struct(p, 'fuse_getxattr_in'),
  REMOVEXATTR: (p) => ({ name: name1(p, 0) }),
  FLUSH: (p) => struct(p, 'fuse_flush_in'),
  INIT: (p) => {
    need(p, 16, 'fuse_init_in (before 7.36)');
    const { dv } = p;
    const lo = dv.getUint32(12, true);
    let flags = BigInt(lo);
    if (p.bytes.length >= 20 && (flags & INIT_EXT) !== 0n) flags |= BigInt(dv.getUint32(16, true)) << 32n;
    return { major: dv.getUint32(0, true), minor: dv.getUint32(4, true), max_readahead: dv.getUint32(8, true), flags };
  },
  OPENDIR: (p) => struct(p, 'fuse_open_in'),
  READDIR: (p) => struct(p, 'fuse_read_in'),
  RELEASEDIR: (p) => struct(p, 'fuse_release_in'),
  FSYNCDIR: (p) => struct(p, 'fuse_fsync_in'),
  GETLK: lockReq,
  SETLK: lockReq,
  SETLKW: lockReq,
  ACCESS: (p) => struct(p, 'fuse_access_in'),
  CREATE: (p) => ({ ...struct(p, 'fuse_create_in'), name: name1(p, 16) }),
  INTERRUPT: (p) => struct(p, 'fuse_interrupt_in'),
  BMAP: (p) => struct(p, 'fuse_bmap_in'),
  DESTROY: () => ({}),
  IOCTL: (p) => {
    const s = struct(p, 'fuse_ioctl_in');
    return { ...s, data: tail(p, 32, s.in_size, 'IOCTL input') };
  },
  POLL: (p) => struct(p, 'fuse_poll_in'),
  NOTIFY_REPLY: (p) => {
    const s = struct(p, 'fuse_notify_retrieve_in');
    return { ...s, data: tail(p, 40, s.size, 'NOTIFY_REPLY data') };
  },
  BATCH_FORGET: (p) => ({ items: entries(p, 8, 'fuse_forget_one') }),
  FALLOCATE: (p) => struct(p, 'fuse_fallocate_in'),
  READDIRPLUS: (p) => struct(p, 'fuse_read_in'),
  RENAME2: (p) => {
    const s = struct(p, 'fuse_rename2_in');
    const [oldname, newname] = names2(p, 16);
    return { ...s, oldname, newname };
  },
  LSEEK: (p) => struct(p, 'fuse_lseek_in'),
  COPY_FILE_RANGE: (p) => struct(p, 'fuse_copy_file_range_in'),
  SETUPMAPPING: (p) => struct(p, 'fuse_setupmapping_in'),
  REMOVEMAPPING: (p) => ({ items: entries(p, 4, 'fuse_removemapping_one') }),
  SYNCFS: () => ({}),
  TMPFILE: (p) => ({ ...struct(p, 'fuse_create_in'), name: name1(p, 16) }),
};

/** the extensions of a request that has none */
const NO_EXT = new Uint8Array(0);

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** See the file comment. `header` holds at least 40 bytes (only the first 40 are read). */
export function parseRequest(header: Uint8Array, body: Uint8Array, opts: ParseOptions = {}): Request {
  if (header.length < IN_HEADER_SIZE) throw new ShortHeader(header.length);
  const hdv = new DataView(header.buffer, header.byteOffset, IN_HEADER_SIZE);
  try {
    const h = decode(STRUCTS.fuse_in_header, hdv, 0);
    if (h.len !== IN_HEADER_SIZE + body.length) throw new LengthMismatch(h.len, body.length);
    const info = opcodeInfo(h.opcode);
    if (info === undefined) throw new UnknownOpcode(h.opcode);
    const extLen = h.total_extlen * 8;
    if (extLen > body.length) throw new ShortBody('extensions (total_extlen)', extLen, body.length);
    // most requests carry no extensions: then no views are made (the request path allocates as little as it can)
    const bytes = extLen ? body.subarray(0, body.length - extLen) : body;
    const fields = (DECODERS[info.name] as Decoder<OpName>)({ bytes, dv: view(bytes), opts });
    return { header: h, ext: extLen ? body.subarray(body.length - extLen) : NO_EXT, op: info.name, ...fields } as Request;
  } catch (e) {
    if (e instanceof WireParseError) {
      const opcode = hdv.getUint32(4, true);
      e.unique = hdv.getBigUint64(8, true);
      e.opcode = opcode;
      e.replyWanted = opcodeInfo(opcode)?.replies ?? true;
    }
    throw e;
  }
}
