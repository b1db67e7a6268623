/**
 * Struct layouts as data: each kernel struct of <linux/fuse.h> is declared once (size, and offset and kind of each
 * field), and decoded or encoded from that declaration. The same declarations are compared with the C compiler's
 * sizeof/offsetof in the tests, so a layout mistake cannot hide in hand-written offsets.
 *
 * Byte order is little-endian (x86_64, aarch64): the protocol is host-endian and kvfs runs on little-endian hosts.
 *
 * Field kinds, and how 64-bit fields become JavaScript values:
 *   u16, u32, i32  numbers, exact.
 *   u64            a number. Exact up to 2^53 - 1; above that it is approximated, never below 2^53, so a value the
 *                  kernel sends beyond our range (an offset past any file, a fh we never handed out) still compares
 *                  as "too large" and never equals anything we issued. Encoding takes 0 ≤ n < 2^64.
 *   i64            a signed number (times in seconds), the same precision rule; encoding takes -2^63 ≤ n < 2^63.
 *   big            a bigint, exact: values the kernel makes up and we hand back (unique, lock owners, lock ranges,
 *                  poll handles, ioctl arguments).
 *   nodeid         a number that must be exact: decoding a value ≥ 2^53 throws BadNodeId (our inode numbers are
 *                  safe integers, so the kernel can only name them).
 *   struct         a nested struct or a flexible array: placed (checked against the compiler) but skipped by the
 *                  generic decoder and encoder; the owner of the layout handles it.
 */
import { BadNodeId } from './errors.js';

export type FieldKind = 'u16' | 'u32' | 'i32' | 'u64' | 'i64' | 'big' | 'nodeid' | 'struct';
export type FieldSpec = readonly [offset: number, kind: FieldKind];

export interface Layout<F extends Record<string, FieldSpec> = Record<string, FieldSpec>> {
  /** the C struct name, without `struct ` */
  readonly name: string;
  /** sizeof(struct name) */
  readonly size: number;
  readonly fields: F;
  /** the fields as [name, offset, kind], in declaration order (what decode and encode walk) */
  readonly list: readonly (readonly [string, number, FieldKind])[];
}

type ValueOf<K extends FieldKind> = K extends 'big' ? bigint : number;

/** The decoded value of a layout: one property per non-struct field, with the struct's field names. */
export type Fields<L extends Layout> = {
  -readonly [K in keyof L['fields'] as L['fields'][K][1] extends 'struct' ? never : K]: ValueOf<L['fields'][K][1]>;
};

/** Declares a layout; `const` keeps the field names and kinds in the type. */
export function layout<const F extends Record<string, FieldSpec>>(name: string, size: number, fields: F): Layout<F> {
  const list = Object.entries(fields).map(([k, [off, kind]]) => [k, off, kind] as const);
  return { name, size, fields, list };
}

const TWO32 = 0x1_0000_0000;
/** hi word below this: the u64 is at most 2^53 - 1 */
const SAFE_HI = 0x20_0000;

/** u64 at off as a number, approximated above 2^53 (see the file comment). */
export function readU64(dv: DataView, off: number): number {
  return dv.getUint32(off + 4, true) * TWO32 + dv.getUint32(off, true);
}

export function readI64(dv: DataView, off: number): number {
  return dv.getInt32(off + 4, true) * TWO32 + dv.getUint32(off, true);
}

/** u64 at off, which must be ≤ Number.MAX_SAFE_INTEGER; otherwise BadNodeId. */
export function readNodeId(dv: DataView, off: number): number {
  const hi = dv.getUint32(off + 4, true);
  if (hi >= SAFE_HI) throw new BadNodeId(dv.getBigUint64(off, true));
  return hi * TWO32 + dv.getUint32(off, true);
}

/** Writes 0 ≤ n < 2^64 (an integer); RangeError otherwise. */
export function writeU64(buf: Buffer, off: number, n: number): void {
  if (!(n >= 0 && n < 2 ** 64)) throw new RangeError(`u64 out of range: ${n}`);
  const hi = Math.floor(n / TWO32);
  buf.writeUInt32LE(n - hi * TWO32, off);
  buf.writeUInt32LE(hi, off + 4);
}

/** Writes -2^63 ≤ n < 2^63 (an integer) in two's complement; RangeError otherwise. */
export function writeI64(buf: Buffer, off: number, n: number): void {
  if (!(n >= -(2 ** 63) && n < 2 ** 63)) throw new RangeError(`i64 out of range: ${n}`);
  const hi = Math.floor(n / TWO32);
  buf.writeUInt32LE(n - hi * TWO32, off);
  buf.writeInt32LE(hi, off + 4);
}

/**
 * Decodes every non-struct field of `l` at `base`. The caller guarantees base + l.size ≤ dv.byteLength
 * (decoding is only reached after the body was checked to hold the struct). Throws only BadNodeId.
 */
export function decode<L extends Layout>(l: L, dv: DataView, base: number): Fields<L> {
  const out: Record<string, number | bigint> = {};
  for (const [name, off, kind] of l.list) {
    const at = base + off;
    switch (kind) {
      case 'u16': out[name] = dv.getUint16(at, true); break;
      case 'u32': out[name] = dv.getUint32(at, true); break;
      case 'i32': out[name] = dv.getInt32(at, true); break;
      case 'u64': out[name] = readU64(dv, at); break;
      case 'i64': out[name] = readI64(dv, at); break;
      case 'big': out[name] = dv.getBigUint64(at, true); break;
      case 'nodeid': out[name] = readNodeId(dv, at); break;
      case 'struct': break;
    }
  }
  return out as Fields<L>;
}

/**
 * Writes l.size bytes at `off`: zeroes first (padding, unused and nested fields included: pooled buffers hold old
 * bytes), then every non-struct field of `v`. Nested structs are written by the caller afterwards.
 * Throws RangeError when a value does not fit its field (or the buffer is too short).
 */
export function encode<L extends Layout>(l: L, buf: Buffer, off: number, v: Fields<L>): void {
  if (off < 0 || off + l.size > buf.length) throw new RangeError(`${l.name} does not fit at ${off} in ${buf.length}`);
  buf.fill(0, off, off + l.size);
  const vals = v as Record<string, number | bigint>;
  for (const [name, fo, kind] of l.list) {
    const at = off + fo;
    const x = vals[name];
    switch (kind) {
      case 'u16': buf.writeUInt16LE(x as number, at); break;
      case 'u32': buf.writeUInt32LE(x as number, at); break;
      case 'i32': buf.writeInt32LE(x as number, at); break;
      case 'u64': case 'nodeid': writeU64(buf, at, x as number); break;
      case 'i64': writeI64(buf, at, x as number); break;
      case 'big': buf.writeBigUInt64LE(x as bigint, at); break;
      case 'struct': break;
    }
  }
}
