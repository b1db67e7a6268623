/**
 * Unit tests for the libfuse driver's time conversions (src/fs/fuse/libfuse-driver.ts): fuse-native's utimens
 * halves read as signed milliseconds, and the clamp to what fuse-native carries. Through a mount:
 * test/mount/libfuse-times.test.ts.
 */
import t from 'tap';
import { clampMs, TIME_MS_MAX, TIME_MS_MIN, utimensMs } from '../../../src/fs/fuse/libfuse-driver.js';

/** the two uint32 halves fuse-native hands over for C's (uint64_t)(tv_sec * 1000 + tv_nsec / 1e6) */
function halves(ms: bigint): [number, number] {
  const u = BigInt.asUintN(64, ms);
  return [Number(u & 0xffffffffn), Number(u >> 32n)];
}

t.test('utimensMs reads the halves as signed milliseconds and clamps', async (t) => {
  t.equal(utimensMs(...halves(981173106123n)), 981173106123, '2001-02-03 04:05:06.123 exactly');
  t.equal(utimensMs(...halves(0n)), 0, 'the epoch');
  t.equal(utimensMs(...halves(-315619200000n)), TIME_MS_MIN, '1960-01-01 (negative) clamps to 1970, not to the year 584556009');
  t.equal(utimensMs(...halves(-1n)), TIME_MS_MIN, 'one millisecond before 1970');
  t.equal(utimensMs(...halves(BigInt(TIME_MS_MAX))), TIME_MS_MAX, 'the largest time carried');
  t.equal(utimensMs(...halves(BigInt(TIME_MS_MAX) + 1n)), TIME_MS_MAX, 'beyond it clamps');
  t.equal(utimensMs(...halves(2n ** 62n)), TIME_MS_MAX, 'far beyond it clamps');
});

t.test('clampMs keeps times in [1970, 2^53-1 ms]', async (t) => {
  t.equal(clampMs(-315619200000), 0);
  t.equal(clampMs(1234), 1234);
  t.equal(clampMs(1e300), Number.MAX_SAFE_INTEGER);
  t.equal(TIME_MS_MAX, 2 ** 53 - 1);
});
