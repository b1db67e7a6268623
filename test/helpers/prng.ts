/** mulberry32, the one seeded PRNG of the tests: prngU32 gives 32-bit integers, prng fractions in [0, 1). */
export function prngU32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), a | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return (x ^ (x >>> 14)) >>> 0;
  };
}

export function prng(seed: number): () => number {
  const next = prngU32(seed);
  return () => next() / 2 ** 32;
}
