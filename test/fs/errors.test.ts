/**
 * The one errno map's logging of a full store (FullLog in src/fs/errors.ts): pure.
 */
import t from 'tap';
import { constants } from 'node:os';
import { StoreError } from '../../src/backend/errors.js';
import { FullLog, toErrno } from '../../src/fs/errors.js';

t.test('FullLog: one line per episode, again a minute later while it lasts', async (t) => {
  const log = new FullLog(60_000);
  t.ok(log.shouldLog(1, 0), 'the first error of episode 1');
  t.notOk(log.shouldLog(1, 1_000), 'more of episode 1');
  t.notOk(log.shouldLog(1, 59_999), 'still within the minute');
  t.ok(log.shouldLog(1, 60_000), 'a minute later, again');
  t.ok(log.shouldLog(2, 60_001), 'episode 2 at once');
  t.notOk(log.shouldLog(1, 200_000), 'an error of an earlier episode arriving late: no line');
  t.notOk(log.shouldLog(2, 100_000), 'episode 2 within its minute');
});

t.test('FullLog: errors of engines that track no episodes: a line a minute', async (t) => {
  const log = new FullLog(60_000);
  t.ok(log.shouldLog(undefined, 0));
  t.notOk(log.shouldLog(undefined, 30_000));
  t.ok(log.shouldLog(3, 30_001), 'a tracked episode is not held back by them');
  t.ok(log.shouldLog(undefined, 60_000));
});

t.test('toErrno: NOSPACE is ENOSPC, logged once for its episode', async (t) => {
  const lines: string[] = [];
  const orig = console.error;
  console.error = (...a: unknown[]) => void lines.push(a.join(' '));
  t.teardown(() => { console.error = orig; });
  const full = (episode: number) => Object.assign(new StoreError('NOSPACE', 'the store is full: test'), { episode });
  const ep = 1_000_000 + Math.floor(Math.random() * 1000); // above any episode this process numbered
  t.equal(toErrno(full(ep)), constants.errno.ENOSPC);
  t.equal(toErrno(full(ep)), constants.errno.ENOSPC);
  t.equal(toErrno(full(ep + 1)), constants.errno.ENOSPC);
  console.error = orig;
  t.same(lines, ['kvfs: store full: the store is full: test', 'kvfs: store full: the store is full: test'], 'one line per episode');
});
