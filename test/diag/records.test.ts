/**
 * sweepRecords (bin/daemons.ts): the records a killed daemon left in the runtime directory go once its process is
 * gone and its mountpoint is not mounted; every other record stays.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { sweepRecords } from '../../bin/daemons.js';

t.test('records of gone daemons whose mount is gone are swept, and only those', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kvfs-records-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // a pid that is gone: a child that ran and was reaped
  const dead = spawnSync('true').pid!;
  const rec = (name: string, pid: number, mountpoint: string) => {
    writeFileSync(join(dir, `mount-${name}.json`), JSON.stringify({ pid, mountpoint, store: 'memory:', dev: '0:1', driver: 'native', started: '' }));
    writeFileSync(join(dir, `mount-${name}.sock`), '');
  };
  rec('aa01', dead, '/nowhere/mounted');
  rec('aa02', process.pid, '/nowhere/either');
  rec('aa03', dead, '/');
  rec('aa04', dead, '/nowhere/mine');
  writeFileSync(join(dir, 'mount-aa05.json'), '{ half a reco');
  writeFileSync(join(dir, 'other.json'), JSON.stringify({ pid: dead, mountpoint: '/x' }));

  t.equal(sweepRecords(dir, join(dir, 'mount-aa04.json')), 1, 'one record swept');
  t.notOk(existsSync(join(dir, 'mount-aa01.json')), 'a gone daemon\'s record for an unmounted path goes');
  t.notOk(existsSync(join(dir, 'mount-aa01.sock')), 'and its socket');
  t.ok(existsSync(join(dir, 'mount-aa02.json')), 'a live daemon\'s record stays');
  t.ok(existsSync(join(dir, 'mount-aa03.json')), 'a gone daemon\'s record stays while its mountpoint is mounted (status reports it)');
  t.ok(existsSync(join(dir, 'mount-aa03.sock')));
  t.ok(existsSync(join(dir, 'mount-aa04.json')), 'the record being written stays');
  t.ok(existsSync(join(dir, 'mount-aa05.json')), 'a record that cannot be read stays');
  t.ok(existsSync(join(dir, 'other.json')), 'files that are not records stay');
  t.equal(sweepRecords(join(dir, 'missing'), ''), 0, 'a missing directory sweeps nothing');
});
