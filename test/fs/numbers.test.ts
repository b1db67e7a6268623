/**
 * src/volume/numbers.ts: the compact sets that keep fsck's and gc's memory bounded.
 */
import t from 'tap';
import { SortedNumbers, idHash } from '../../src/volume/numbers.js';

t.test('SortedNumbers: members added in any order are found, others not; it grows past its first block', async (t) => {
  const s = new SortedNumbers();
  const xs: number[] = [];
  for (let i = 0; i < 5000; i++) xs.push(((i * 7919) % 5003) * 3 + 1); // a permutation, spread out
  for (const x of xs) s.add(x);
  t.equal(s.size, 5000);
  t.ok(xs.every((x) => s.has(x)), 'every member is found');
  t.notOk(s.has(0) || s.has(2) || s.has(3 * 5003 + 1) || s.has(-1), 'numbers never added are not');
  const sorted = [...s.sorted()];
  t.same(sorted, [...xs].sort((a, b) => a - b), 'sorted() is ascending');
  t.equal(s.indexOf(sorted[100]!), 100, 'indexOf is the rank');
  s.add(1); // after a search: still found, sorted again on the next search
  t.equal(s.size, 5001);
  t.same([...s.sorted()].slice(0, 2), [1, 1], 'duplicates are kept');
  t.ok(s.has(2 ** 53 - 1) === false, 'the largest safe integer is not a member');
  s.add(2 ** 53 - 1);
  t.ok(s.has(2 ** 53 - 1), 'until added');
});

t.test('SortedNumbers: added() gives the insertion order until a search sorts', async (t) => {
  const s = new SortedNumbers();
  for (const x of [5, 3, 9]) s.add(x);
  t.same([...s.added()], [5, 3, 9]);
  t.ok(s.has(3));
  t.same([...s.added()], [3, 5, 9]);
  t.equal(new SortedNumbers().has(0), false, 'an empty set holds nothing');
});

t.test('idHash: a 53-bit integer, the same for the same id, no collision among 200,000 blob ids', async (t) => {
  const seen = new Set<number>();
  for (let i = 0; i < 200_000; i++) {
    const h = idHash(`s${i % 7}-1796594512606.${i}`);
    if (!Number.isSafeInteger(h) || h < 0) t.fail(`idHash gave ${h}`);
    seen.add(h);
  }
  t.equal(seen.size, 200_000, 'every id its own hash');
  t.equal(idHash('abc'), idHash('abc'), 'deterministic');
  t.not(idHash('abc'), idHash('abd'), 'one character apart');
  t.not(idHash(''), idHash('\0'), 'the empty id and a NUL');
  t.not(idHash('\u{1F600}'), idHash('\u{1F601}'), 'astral characters');
});
