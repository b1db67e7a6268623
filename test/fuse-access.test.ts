/**
 * Unit tests for src/fuse-access.ts: reading /etc/fuse.conf as fusermount3 does, the allow_other refusal, the
 * mount source and its escaping inside a -o list. (A real second uid mounting: test/mount/non-root.test.ts.)
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { allowOtherProblem, escapeOptionValue, mountSource, userAllowOther } from '../src/fuse-access.js';

const dir = mkdtempSync('/tmp/kvfs-test-fuseconf-');
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const conf = (name: string, text: string) => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};

t.test('user_allow_other counts only on a line of its own, outside a comment', async (t) => {
  t.equal(userAllowOther(conf('on', '# comment\nuser_allow_other\n')), true, 'a line of its own');
  t.equal(userAllowOther(conf('spaced', '  user_allow_other   # why\nmount_max = 1000\n')), true, 'blanks and a trailing comment');
  t.equal(userAllowOther(conf('debian', '# user_allow_other - Using the allow_other mount option\n#user_allow_other\n')), false,
    "Debian 12's shipped file (commented out)");
  t.equal(userAllowOther(conf('other', 'user_allow_other_not\nmount_max = 10\n')), false, 'another word');
  t.equal(userAllowOther(join(dir, 'missing')), false, 'no file');
});

t.test('allowOtherProblem names the file and the line to add, and is silent for root', async (t) => {
  const off = conf('off', '#user_allow_other\n');
  const p = allowOtherProblem(off);
  if (process.getuid?.() === 0) {
    t.equal(p, undefined, 'root may always use allow_other');
  } else {
    t.match(p, /user_allow_other/);
    t.match(p, off);
  }
  t.equal(allowOtherProblem(conf('on2', 'user_allow_other\n')), undefined, 'allowed by the file');
});

t.test('escapeOptionValue: a backslash before each comma and backslash', async (t) => {
  t.equal(escapeOptionValue('redis-cluster://h:1,h:2/vol'), 'redis-cluster://h:1\\,h:2/vol');
  t.equal(escapeOptionValue('local:/tmp/a b\\c'), 'local:/tmp/a b\\\\c', 'space kept, backslash doubled');
  t.equal(escapeOptionValue('memory:'), 'memory:');
});

t.test('mountSource: the given source, kvfs by default, cut to a byte budget on a character boundary', async (t) => {
  t.equal(mountSource(undefined), 'kvfs');
  t.equal(mountSource(''), 'kvfs');
  t.equal(mountSource('local:/srv/kvfs'), 'local:/srv/kvfs');
  const long = `local:/${'d'.repeat(2000)}`;
  const cut = mountSource(long, 100);
  t.equal(Buffer.byteLength(cut), 100, 'exactly the budget');
  t.ok(cut.startsWith('local:/ddd') && cut.endsWith('...'), cut);
  const utf = mountSource(`local:/${'é'.repeat(100)}`, 50);
  t.ok(Buffer.byteLength(utf) <= 50, 'within the budget');
  t.notMatch(utf, /\uFFFD/, 'no character cut in half');
});
