/**
 * Request latencies (src/diag/latency.ts): the summary of known values (count, exact sum and max, percentiles as
 * quarter-octave upper bounds capped at max), its cumulative counts at the octave bounds LATENCY_BOUNDS_US, exact
 * at the bounds themselves and against a brute-force count of random values, and requests past the last bound.
 */
import t from 'tap';
import { LATENCY_BOUNDS_US, Latencies } from '../../src/diag/latency.js';

/** how many of `us` are at most each bound: what summary().buckets must say */
const countUpTo = (us: number[]) => LATENCY_BOUNDS_US.map((le) => us.filter((v) => v <= le).length);

t.test('the bounds: 2^0 .. 2^25 us', async (t) => {
  t.equal(LATENCY_BOUNDS_US.length, 26);
  t.same(LATENCY_BOUNDS_US.slice(0, 4), [1, 2, 4, 8]);
  t.equal(LATENCY_BOUNDS_US[25], 33_554_432, 'the last is 2^25 us, about 33.6 s');
  t.ok(LATENCY_BOUNDS_US.every((b, k) => b === 2 ** k), 'each is 2^k');
  t.ok(Object.isFrozen(LATENCY_BOUNDS_US), 'not to be changed by a caller');
});

t.test('known values: count, sum, max, cumulative buckets, p50 and p99', async (t) => {
  const l = new Latencies();
  for (const us of [1, 3, 3, 100, 5000]) l.record('READ', us);
  const s = l.summary();
  t.same(Object.keys(s), ['READ'], 'one opcode');
  const r = s.READ!;
  t.equal(r.count, 5);
  t.equal(r.sum, 5107, 'the sum is exact');
  t.equal(r.max, 5000);
  t.equal(r.buckets.length, LATENCY_BOUNDS_US.length, 'one count per bound');
  const at = (le: number) => r.buckets[LATENCY_BOUNDS_US.indexOf(le)];
  t.equal(at(1), 1, 'le 1 us: the 1');
  t.equal(at(2), 1, 'le 2 us: 3 is not within');
  t.equal(at(4), 3, 'le 4 us: 1, 3, 3');
  t.equal(at(64), 3, 'le 64 us: 100 is not within');
  t.equal(at(128), 4, 'le 128 us: and 100');
  t.equal(at(4096), 4, 'le 4096 us: 5000 is not within');
  t.equal(at(8192), 5, 'le 8192 us: all five');
  t.equal(r.buckets[25], 5, 'the last bound: all five');
  t.same(r.buckets, [1, 1, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5], 'every bound');
  // the median is the third value (3 us), in the bucket up to 2^(7/4) = 3.36 us; the 99th is the fifth
  // (5000 us), whose bucket reaches 2^(50/4) = 5793 us, capped at the max
  t.equal(r.p50, 3.4, 'p50: the upper bound of the bucket of 3 us, rounded to 0.1');
  t.equal(r.p99, 5000, 'p99: capped at max');
});

t.test('opcodes apart; sum rounded to 0.1', async (t) => {
  const l = new Latencies();
  l.record('LOOKUP', 10.04);
  l.record('LOOKUP', 10.04);
  l.record('WRITE', 0.5);
  const s = l.summary();
  t.same(Object.keys(s).sort(), ['LOOKUP', 'WRITE']);
  t.equal(s.LOOKUP!.sum, 20.1, '20.08 rounds to 20.1');
  t.equal(s.LOOKUP!.count, 2);
  t.same(s.LOOKUP!.buckets.slice(0, 5), [0, 0, 0, 0, 2], 'le 16 us holds both');
  t.equal(s.WRITE!.sum, 0.5);
  t.ok(s.WRITE!.buckets.every((n) => n === 1), 'under 1 us counts at every bound');
  t.same(new Latencies().summary(), {}, 'nothing recorded: no opcode');
});

t.test('a value on a bound counts at that bound, a little above it does not', async (t) => {
  const l = new Latencies();
  const on = LATENCY_BOUNDS_US.slice();
  const above = LATENCY_BOUNDS_US.map((b) => b * 1.01);
  for (const us of [...on, ...above]) l.record('GETATTR', us);
  const r = l.summary().GETATTR!;
  t.same(r.buckets, countUpTo([...on, ...above]), 'exactly the values at most each bound');
  t.same(r.buckets, LATENCY_BOUNDS_US.map((_, k) => 2 * k + 1), 'k+1 bounds and k values above them');
});

t.test('past the last bound: in count only', async (t) => {
  const l = new Latencies();
  for (const us of [50, 40e6, 7200e6]) l.record('FSYNC', us);
  const r = l.summary().FSYNC!;
  t.equal(r.count, 3);
  t.equal(r.buckets[25], 1, 'only the 50 us request is within 2^25 us');
  t.equal(r.sum, 7_240_000_050);
  t.equal(r.max, 7200e6, 'the max is exact even past the histogram');
});

t.test('random values: the buckets match a brute-force count', async (t) => {
  let seed = 0x2545f491;
  const random = () => ((seed = (Math.imul(seed, 1_103_515_245) + 12_345) >>> 0) / 2 ** 32);
  const values = Array.from({ length: 5000 }, () => 2 ** (random() * 27) * (random() < 0.5 ? 1 : random()));
  const l = new Latencies();
  for (const us of values) l.record('READ', us);
  const r = l.summary().READ!;
  t.equal(r.count, values.length);
  t.same(r.buckets, countUpTo(values), 'cumulative counts at every bound');
  t.ok(Math.abs(r.sum - values.reduce((a, b) => a + b, 0)) <= 0.05, 'the sum, to 0.1');
  t.ok(r.buckets.every((n, i) => i === 0 || n >= r.buckets[i - 1]!), 'never decreasing');
});
