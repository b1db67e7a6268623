/** Little-endian byte builders for golden wire fixtures (each returns an array of byte values). */
export const u16 = (n: number) => [n & 0xff, (n >>> 8) & 0xff];
export const u32 = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
export const u64 = (n: number | bigint) => {
  let v = BigInt.asUintN(64, BigInt(n));
  const out: number[] = [];
  for (let i = 0; i < 8; i++, v >>= 8n) out.push(Number(v & 0xffn));
  return out;
};
export const zero = (n: number) => new Array<number>(n).fill(0);
/** a string's UTF-8 bytes */
export const utf8 = (s: string) => [...Buffer.from(s, 'utf8')];
/** a string's UTF-8 bytes and a NUL */
export const cstr = (s: string) => [...utf8(s), 0];
