/**
 * Direct access to a store, below the filesystem, for the tests that need a store in a state the CLI cannot
 * produce (a volume of a newer format version, an LMDB store without a volume). Each call runs in a separate
 * node process and uses the project's own compiled modules (dist/src), so it follows the schema as written.
 */
import { join } from 'node:path';
import { REPO } from './mount.js';
import { run, start, type RunResult } from './run.js';

function script(body: string): string {
  const dist = (p: string) => JSON.stringify('file://' + join(REPO, 'dist', 'src', p));
  return `
import { openStore } from ${dist('backend/open-store.js')};
import { K, decodeChunk, decodeDirent, decodeInode, decodeVolume, encodeChunk, encodeDirent, encodeInode, encodeVolume, entryBlobs, FORMAT_VERSION } from ${dist('volume/schema.js')};
const url = process.argv[1];
const store = await openStore(url);
try {
${body}
} finally {
  await store.close();
}`;
}

function node(body: string, url: string): Promise<RunResult> {
  return run(process.execPath, ['--input-type=module', '-e', script(body), url], { cwd: REPO, timeout: 30_000 });
}

/** rewrites the volume record with formatVersion = this build's FORMAT_VERSION + 1; prints the new version */
export function bumpFormatVersion(url: string): Promise<RunResult> {
  return node(
    `  const raw = await store.get(K.volume);
  if (!raw) throw new Error('no volume record');
  const v = decodeVolume(raw);
  v.formatVersion = FORMAT_VERSION + 1;
  await store.put(K.volume, encodeVolume(v));
  await store.sync();
  console.log(v.formatVersion);`,
    url,
  );
}

/** prints the volume record as JSON, or "none" */
export function readVolumeRecord(url: string): Promise<RunResult> {
  return node(
    `  const raw = await store.get(K.volume);
  console.log(raw ? JSON.stringify(decodeVolume(raw)) : 'none');`,
    url,
  );
}

/** opens (and so creates) the store and closes it without writing a volume */
export function createEmptyStore(url: string): Promise<RunResult> {
  return node(`  await store.sync();`, url);
}

/**
 * Audits the blobs of a store directly (no mount may run on it): prints JSON { blobs, named, queued, unreferenced,
 * unreferencedBytes }, where named are the blobs chunk maps name, queued those in the GC queue, and
 * unreferenced those neither names.
 */
export function auditBlobs(url: string): Promise<RunResult> {
  return node(
    `  const named = new Set();
  for (const k of await store.keys('c/')) {
    const v = await store.get(k);
    if (v) for (const b of entryBlobs(decodeChunk(v))) named.add(b.blobId);
  }
  const queued = new Set((await store.keys('g/')).map((k) => k.slice(2)));
  const blobs = (await store.keys('b/')).map((k) => k.slice(2));
  let unreferenced = 0, unreferencedBytes = 0;
  for (const id of blobs) {
    if (named.has(id) || queued.has(id)) continue;
    unreferenced++;
    unreferencedBytes += (await store.get('b/' + id))?.length ?? 0;
  }
  console.log(JSON.stringify({ blobs: blobs.length, named: named.size, queued: queued.size, unreferenced, unreferencedBytes }));`,
    url,
  );
}

/**
 * Runs `body` against the store (no mount may run on it), with `store` and the schema's K, encode* and decode*
 * in scope; what it prints is the result's stdout. For planting damage a mount cannot make.
 */
export function onStore(url: string, body: string): Promise<RunResult> {
  return node(body, url);
}

/**
 * Holds the write lock of the LMDB environment in directory `dir` from another process (LMDB's own lock, shared
 * by every process that opens the environment) for `ms` milliseconds: a daemon's next write transaction waits for
 * it, as a Redis master's writes wait under CLIENT PAUSE WRITE. Resolves once the lock is held; `done` once it is
 * released.
 */
export async function holdLmdbWriteLock(dir: string, ms: number): Promise<{ done: Promise<RunResult> }> {
  const body = `
import { open } from 'lmdb';
const db = open({ path: process.argv[1], noSubdir: false, encoding: 'binary' });
db.transactionSync(() => {
  console.log('held');
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Number(process.argv[2]));
});
await db.close();`;
  const s = start(process.execPath, ['--input-type=module', '-e', body, dir, String(ms)], { cwd: REPO, timeout: ms + 30_000 });
  s.end();
  await s.waitFor(/^held$/, 20_000);
  return { done: s.result };
}
