/**
 * The CLI contract, good paths: the foreground daemon's ready line and clean exit on SIGINT/SIGTERM, `kvfs umount`
 * of a live mount, --background, a bare `kvfs mount MNT` (default volume in KVFS_DATA_DIR), `kvfs format` options
 * and `kvfs status` figures, and every accepted chunk size carrying data correctly.
 */
import t from 'tap';
import type { Test } from 'tap';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expectExit } from '../helpers/assert.js';
import {
  bash,
  describe,
  guardMount,
  isKvfsEntry,
  isMounted,
  kvfs,
  mountKvfs,
  mountsAt,
  run,
  tempDir,
  driverArgs as driverArgsFor,
  testDriver,
  waitFor,
} from '../helpers/mount.js';
import { bytes } from '../helpers/tree.js';

t.setTimeout(170_000);

const driver = testDriver();
const driverArgs = driverArgsFor(driver);

/** the status figure on the line whose label matches re ("inodes: 12" -> 12) */
function figure(status: string, re: RegExp): number | undefined {
  const line = status.split('\n').find((l) => re.test(l));
  const m = line?.match(/:\s*(-?\d+)/);
  return m ? Number(m[1]) : undefined;
}

t.test('foreground: prints the ready line; SIGINT unmounts and exits 0', async (t) => {
  const m = await mountKvfs(t, { driver });
  const ready = await waitFor(() => m.output().stdout.includes(` at ${m.mnt}`), 5000);
  const line = m.output().stdout.split('\n').find((l) => l.startsWith('kvfs: mounted ')) ?? '';
  t.ok(ready, 'a ready line on stdout', { stdout: m.output().stdout });
  t.match(line, new RegExp(`^kvfs: mounted .+ at ${m.mnt.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`), 'kvfs: mounted <STORE> at <MNT>');
  const e = mountsAt(m.mnt)[0];
  t.ok(e && isKvfsEntry(e), 'listed as kvfs in /proc/self/mountinfo', { entry: e });
  const ex = await m.unmount({ signal: 'SIGINT' });
  t.same(ex, { code: 0, signal: null }, 'exit 0 after SIGINT', { stderr: m.output().stderr });
  t.notOk(isMounted(m.mnt), 'unmounted');
});

t.test('foreground: SIGTERM unmounts and exits 0', async (t) => {
  const m = await mountKvfs(t, { driver });
  const ex = await m.unmount({ signal: 'SIGTERM' });
  t.same(ex, { code: 0, signal: null }, 'exit 0 after SIGTERM', { stderr: m.output().stderr });
});

t.test('kvfs umount of a live foreground mount: the daemon exits and the mount is gone', async (t) => {
  const m = await mountKvfs(t, { driver });
  const ex = await m.unmount({ via: 'cli' });
  t.pass(`daemon exited (${ex.code ?? ex.signal})`);
  t.notOk(isMounted(m.mnt), 'unmounted');
  expectExit(t, await run('ls', ['-A', m.mnt]), 'the mountpoint is a plain directory again');
});

t.test('--background: exits 0 once mounted; kvfs umount stops the daemon', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const mnt = tempDir(t, 'kvfs-test-');
  let pid: number | undefined;
  guardMount(t, mnt, () => pid);
  const r = await kvfs(['mount', 'memory:', mnt, '--background', ...driverArgs], { dataDir, timeout: 40_000 });
  expectExit(t, r, 'kvfs mount --background');
  t.ok(isMounted(mnt), 'mounted when the command returns');
  const out = `${r.stdout}\n${r.stderr}`;
  for (const n of out.match(/\b\d{2,}\b/g) ?? []) {
    try {
      if (readFileSync(`/proc/${n}/cmdline`, 'utf8').includes('kvfs')) pid = Number(n);
    } catch {
      /* not a pid */
    }
  }
  t.ok(pid, 'the output names the pid of a running kvfs daemon', { output: out });
  expectExit(t, await bash('printf bg > "$1"/f && cat "$1"/f', [mnt]), 'the mount works');
  const um = await kvfs(['umount', mnt], { dataDir });
  expectExit(t, um, 'kvfs umount');
  t.notOk(isMounted(mnt), 'unmounted');
  if (pid) t.ok(await waitFor(() => !existsSync(`/proc/${pid}`), 10_000), `daemon ${pid} exited`);
});

t.test('a bare `kvfs mount MNT` formats local:$KVFS_DATA_DIR/default on first use and keeps it', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const m = await mountKvfs(t, { store: null, dataDir, driver });
  t.ok(existsSync(join(dataDir, 'default')), 'the default store was created in KVFS_DATA_DIR');
  expectExit(t, await bash('printf kept > "$1"/f', [m.mnt]), 'write a file');
  t.equal((await m.unmount()).code, 0, 'unmount');
  await m.remount();
  t.equal((await run('cat', [`${m.mnt}/f`])).stdout, 'kept', 'the second bare mount sees the same volume');
  t.equal((await m.unmount()).code, 0, 'unmount again');
  const st = await kvfs(['status'], { dataDir });
  expectExit(t, st, 'bare kvfs status (the default store)');
  t.ok((figure(st.stdout, /inode/i) ?? 0) >= 2, 'it counts the root and the file', { status: st.stdout });
});

t.test('format --name --chunk-size and status: name, chunk size, format version, counts', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const url = `local:${join(tempDir(t, 'kvfs-test-store-'), 'vol')}`;
  expectExit(t, await kvfs(['format', url, '--name', 'vol1', '--chunk-size', '1M'], { dataDir }), 'format');
  const s0 = await kvfs(['status', url], { dataDir });
  expectExit(t, s0, 'status');
  t.match(s0.stdout, /vol1/, 'names the volume', { status: s0.stdout });
  t.equal(figure(s0.stdout, /chunk/i), 1048576, 'chunk size 1048576', { status: s0.stdout });
  t.ok((figure(s0.stdout, /version/i) ?? 0) >= 1, 'a format version', { status: s0.stdout });
  const inodes0 = figure(s0.stdout, /inode/i);
  const bytes0 = figure(s0.stdout, /^\s*bytes|byte count|bytes used/i);
  t.equal(inodes0, 1, 'a new volume has one inode (the root)', { status: s0.stdout });
  t.equal(bytes0, 0, 'and no bytes', { status: s0.stdout });

  const m = await mountKvfs(t, { store: url, dataDir, driver });
  const src = tempDir(t, 'kvfs-test-src-');
  let total = 0;
  for (let i = 0; i < 10; i++) {
    const b = bytes(1000 + i * 50_000, 100 + i);
    total += b.length;
    writeFileSync(join(src, `f${i}`), b);
  }
  expectExit(t, await bash('mkdir "$2"/dir && cp "$1"/* "$2"/dir/', [src, m.mnt]), 'copy 10 files in');
  t.equal((await m.unmount()).code, 0, 'unmount');
  const s1 = await kvfs(['status', url], { dataDir });
  expectExit(t, s1, 'status after writing');
  t.equal(figure(s1.stdout, /inode/i), 12, 'inodes: root + dir + 10 files', { status: s1.stdout });
  t.equal(figure(s1.stdout, /^\s*bytes|byte count|bytes used/i), total, `bytes: the ${total} bytes written`, { status: s1.stdout });
});

t.test('every accepted chunk size formats, and data round-trips at the extremes', async (t) => {
  const dataDir = tempDir(t, 'kvfs-test-data-');
  const base = tempDir(t, 'kvfs-test-store-');
  const sizes: [string, number][] = [
    ['4096', 4096],
    ['4K', 4096],
    ['256K', 262144],
    ['1M', 1048576],
    ['64M', 67108864],
    ['67108864', 67108864],
  ];
  for (const [i, [arg, n]] of sizes.entries()) {
    const url = `local:${join(base, `v${i}`)}`;
    expectExit(t, await kvfs(['format', url, '--chunk-size', arg], { dataDir }), `format --chunk-size ${arg}`);
    const st = await kvfs(['status', url], { dataDir });
    t.equal(figure(st.stdout, /chunk/i), n, `--chunk-size ${arg}: status shows ${n}`, { status: st.stdout });
  }
  for (const i of [0, 4]) {
    const url = `local:${join(base, `v${i}`)}`;
    await t.test(`chunk size ${sizes[i]![1]}: files across many chunk boundaries`, async (t: Test) => {
      const m = await mountKvfs(t, { store: url, dataDir, driver });
      const src = tempDir(t, 'kvfs-test-src-');
      const data = bytes(300_001, 77 + i);
      writeFileSync(join(src, 'f'), data);
      expectExit(t, await run('cp', [join(src, 'f'), `${m.mnt}/f`]), 'cp in');
      const cmp = await run('cmp', [join(src, 'f'), `${m.mnt}/f`]);
      t.equal(cmp.code, 0, 'reads back the same', { command: describe(cmp) });
      expectExit(t, await bash('printf XY | dd of="$1" bs=1 seek=8191 conv=notrunc status=none', [`${m.mnt}/f`]), 'patch across a 4K boundary');
      data.write('XY', 8191, 'latin1');
      writeFileSync(join(src, 'f'), data);
      t.equal((await m.unmount()).code, 0, 'unmount');
      await m.remount();
      const cmp2 = await run('cmp', [join(src, 'f'), `${m.mnt}/f`]);
      t.equal(cmp2.code, 0, 'after remount', { command: describe(cmp2) });
      t.equal((await m.unmount()).code, 0, 'unmount');
    });
  }
});
