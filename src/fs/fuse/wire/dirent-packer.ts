/**
 * Directory listings for READDIR (fuse_dirent records) and READDIRPLUS (fuse_direntplus records), packed into at
 * most `size` bytes (the request's fuse_read_in.size).
 *
 * Record: the struct, then the name's UTF-8 bytes (namelen of them, no NUL), zero-padded to a multiple of 8
 * (FUSE_DIRENT_ALIGN). `off` is the cookie the kernel sends back as fuse_read_in.offset to continue after this
 * entry. `type` is given as st_mode type bits (S_IFDIR …) and written as the DT_* value ((mode & S_IFMT) >> 12).
 *
 * add() writes the whole record and returns true, or writes nothing and returns false when the record does not fit
 * in what is left: the listing is then complete for this request. fits(name) asks the same without writing. Names must be non-empty and contain no '/'
 * (the kernel fails the whole listing with EIO otherwise), so add() throws RangeError for them.
 *
 * READDIRPLUS: each record with a non-zero entry nodeid counts as a LOOKUP of that inode (the kernel will FORGET it
 * later), except the names "." and ".."; a nodeid of 0 sends the name without attributes and counts nothing.
 */
import type { EntryOut } from './reply-bodies.js';
import { writeEntryOut } from './reply-bodies.js';
import { encode } from './layout.js';
import { STRUCTS } from './structs.js';

export interface Dirent {
  ino: number;
  /** cookie of the entry after this one */
  off: number;
  /** st_mode type bits (S_IFMT part); other bits are ignored */
  type: number;
  name: string;
}

const DIRENT = STRUCTS.fuse_dirent;
const PLUS = STRUCTS.fuse_direntplus;
const S_IFMT = 0o170000;

/** FUSE_DIRENT_ALIGN */
export function direntAlign(n: number): number {
  return (n + 7) & ~7;
}

class Packer {
  protected pos = 0;
  /** records written */
  count = 0;
  readonly buf: Buffer;

  /**
   * Packs into buf[offset, offset + size); allocates `size` bytes when no buffer is given.
   */
  constructor(readonly size: number, buf?: Buffer, readonly offset = 0) {
    this.buf = buf ?? Buffer.allocUnsafe(size);
    if (offset < 0 || offset + size > this.buf.length) throw new RangeError(`${size} bytes at ${offset} exceed the buffer`);
  }

  /** bytes written so far */
  get length(): number {
    return this.pos;
  }

  /** the packed records, a view of the buffer */
  bytes(): Buffer {
    return this.buf.subarray(this.offset, this.offset + this.pos);
  }

  /** Whether a record for `name` still fits (READDIRPLUS: ask before fetching the entry's attributes). */
  fits(name: string): boolean {
    return this.pos + direntAlign(this.headSize + Buffer.byteLength(name, 'utf8')) <= this.size;
  }

  /** the fixed part of a record: fuse_dirent, or fuse_direntplus */
  protected get headSize(): number {
    return DIRENT.size;
  }

  /** Writes struct fields via `head` and the name; false (nothing written) if the record does not fit. */
  protected put(d: Dirent, headSize: number, head: (at: number) => void): boolean {
    if (d.name.length === 0 || d.name.includes('/')) throw new RangeError(`bad directory entry name ${JSON.stringify(d.name)}`);
    const namelen = Buffer.byteLength(d.name, 'utf8');
    const rec = direntAlign(headSize + namelen);
    if (this.pos + rec > this.size) return false;
    const at = this.offset + this.pos;
    head(at);
    encode(DIRENT, this.buf, at + headSize - DIRENT.size, {
      ino: d.ino, off: d.off, namelen, type: (d.type & S_IFMT) >>> 12,
    });
    this.buf.write(d.name, at + headSize, namelen, 'utf8');
    this.buf.fill(0, at + headSize + namelen, at + rec);
    this.pos += rec;
    this.count++;
    return true;
  }
}

/** fuse_dirent records for READDIR */
export class DirentPacker extends Packer {
  /** the record size of a name of `nameBytes` UTF-8 bytes */
  static recordSize(nameBytes: number): number {
    return direntAlign(DIRENT.size + nameBytes);
  }

  add(d: Dirent): boolean {
    return this.put(d, this.headSize, () => {});
  }
}

/** fuse_direntplus records for READDIRPLUS: the entry (as a LOOKUP reply) then the dirent */
export class DirentPlusPacker extends Packer {
  static recordSize(nameBytes: number): number {
    return direntAlign(PLUS.size + nameBytes);
  }

  protected override get headSize(): number {
    return PLUS.size;
  }

  add(d: Dirent, entry: EntryOut): boolean {
    return this.put(d, this.headSize, (at) => writeEntryOut(this.buf, at + PLUS.fields.entry_out[0], entry));
  }
}
