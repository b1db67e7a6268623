/**
 * Assertions over tool results: the failure message carries the exact command line and its output.
 */
import type { Test } from 'tap';
import { describe, type RunResult } from './run.js';

/** asserts a tool exited with `code` (default 0); the diagnostic shows the command, exit status and output */
export function expectExit(t: Test, r: RunResult, what: string, code = 0): boolean {
  return t.equal(r.code, code, `${what} (exit ${code}): ${r.cmd}`, { command: describe(r) });
}

/** asserts a tool failed (non-zero exit, not a timeout) */
export function expectFail(t: Test, r: RunResult, what: string): boolean {
  return t.ok(r.code !== 0 && r.code !== null && !r.timedOut, `${what} fails: ${r.cmd}`, { command: describe(r) });
}

/**
 * The CLI's error contract: non-zero exit, and stderr is exactly one line that starts with "kvfs: ".
 */
export function expectCliError(t: Test, r: RunResult, what: string, pattern?: RegExp): void {
  t.ok(r.code !== 0 && r.code !== null && !r.timedOut, `${what}: non-zero exit`, { command: describe(r) });
  const err = r.stderr.replace(/\n$/, '');
  t.match(err, /^kvfs: /, `${what}: stderr starts with "kvfs: "`, { command: describe(r) });
  t.notOk(err.includes('\n'), `${what}: stderr is one line`, { command: describe(r) });
  if (pattern) t.match(err, pattern, `${what}: message says what is wrong`, { command: describe(r) });
}

/**
 * Asserts two texts are equal line for line; on failure the diagnostic shows only the differing lines (at most
 * 12 of each side) instead of a full diff of thousands of lines.
 */
export function sameLines(t: Test, actual: string, expected: string, what: string, opts: object = {}): boolean {
  if (actual === expected) return t.pass(what, opts);
  const a = actual.split('\n');
  const e = expected.split('\n');
  const inA = new Set(a);
  const inE = new Set(e);
  const missing = e.filter((l) => !inA.has(l));
  const extra = a.filter((l) => !inE.has(l));
  return t.fail(what, {
    ...opts,
    expectedLines: e.length,
    actualLines: a.length,
    missing: missing.slice(0, 12),
    unexpected: extra.slice(0, 12),
    ...(missing.length > 12 || extra.length > 12 ? { more: `${missing.length} missing, ${extra.length} unexpected in all` } : {}),
  });
}

/** Asserts two byte strings are equal; on failure shows both lengths and the first differing offset. */
export function sameBytes(t: Test, actual: string | Buffer | undefined, expected: string | Buffer, what: string): boolean {
  const a = typeof actual === 'string' ? Buffer.from(actual, 'latin1') : actual;
  const e = typeof expected === 'string' ? Buffer.from(expected, 'latin1') : expected;
  if (a && a.equals(e)) return t.pass(what);
  let i = 0;
  while (a && i < a.length && i < e.length && a[i] === e[i]) i++;
  return t.fail(what, {
    expectedLength: e.length,
    actualLength: a?.length ?? 'none',
    firstDifferenceAt: a ? i : 'none',
    expectedHere: e.subarray(i, i + 16).toString('hex'),
    actualHere: a ? a.subarray(i, i + 16).toString('hex') : actual,
  });
}
