/**
 * The mount's source names the store, on both drivers, as root: `findmnt` and `df` show the store URL, also one
 * with a space and a comma (fusermount3 and libfuse split their -o list at commas: the drivers escape them),
 * and the type stays fuse.kvfs. As an ordinary user: test/mount/non-root.test.ts.
 */
import t from 'tap';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { expectExit } from '../helpers/assert.js';
import { kvfs, mountKvfs, mountsAt, run, tempDir } from '../helpers/mount.js';

t.setTimeout(120_000);

for (const driver of ['default', 'libfuse']) {
  t.test(`driver ${driver}: findmnt and df name the store`, async (t) => {
    const dataDir = tempDir(t, 'kvfs-test-data-');
    const parent = join(dataDir, 'a b,c');
    mkdirSync(parent);
    const store = `local:${parent}/vol,1`;
    expectExit(t, await kvfs(['format', store], { dataDir }), `format ${store}`);
    const m = await mountKvfs(t, { driver, store, dataDir });
    const [e] = mountsAt(m.mnt);
    t.equal(e?.fstype, 'fuse.kvfs', 'type fuse.kvfs');
    t.equal(e?.source, store, 'mountinfo has the store URL as the source');
    t.equal((await run('findmnt', ['-n', '-o', 'SOURCE', m.mnt])).stdout.trim(), store, 'findmnt -o SOURCE');
    t.equal((await run('df', ['--output=source', m.mnt])).stdout.trim().split('\n')[1], store, 'df');
    t.equal((await m.unmount()).code, 0, 'unmount');

    const mem = await mountKvfs(t, { driver, store: 'memory:' });
    t.equal((await run('findmnt', ['-n', '-o', 'SOURCE', mem.mnt])).stdout.trim(), 'memory:', 'memory: as it is');
    t.equal((await mem.unmount()).code, 0, 'unmount');
  });
}
