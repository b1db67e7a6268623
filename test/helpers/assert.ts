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
