/**
 * Deterministic test data: seeded pseudo-random bytes and a generated directory tree on local disk.
 *
 * The same seed always gives the same bytes, so a mismatch is reproducible. The tree has nested directories
 * (one chain 12 levels deep), files of 0 bytes, small, around and across the 256 KiB chunk boundary and over
 * 1 MiB, a few file symlinks (relative, never dangling, never into a loop) and one hard-linked pair.
 */
import { createHash } from 'node:crypto';
import {
  existsSync, linkSync, lstatSync, lutimesSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, utimesSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { prngU32 } from './prng.js';


/** `size` seeded pseudo-random bytes */
export function bytes(size: number, seed: number): Buffer {
  const next = prngU32(seed);
  const words = new Uint32Array(Math.ceil(size / 4));
  for (let i = 0; i < words.length; i++) words[i] = next();
  return Buffer.from(words.buffer, 0, size);
}

export interface TreeSpec {
  /** regular files to create (at least); default 2000 */
  files?: number;
  seed?: number;
  /** include the large files (> 256 KiB, > 1 MiB); default true */
  large?: boolean;
  /** include symlinks and a hard link; default true */
  links?: boolean;
}

export interface Tree {
  root: string;
  files: number;
  dirs: number;
  bytes: number;
  /** relative paths of the regular files, with sizes */
  list: { path: string; size: number }[];
}

const KiB = 1024;
const MiB = 1024 * KiB;

/** sizes that matter to a chunked store with 256 KiB chunks (and to a 4 KiB page cache) */
export const EDGE_SIZES = [0, 1, 4095, 4096, 4097, 256 * KiB - 1, 256 * KiB, 256 * KiB + 1, 300_000, MiB + 7, 2.5 * MiB];

/** Writes the tree under root (which must exist and be empty). */
export function makeTree(root: string, spec: TreeSpec = {}): Tree {
  const total = spec.files ?? 2000;
  const seed = spec.seed ?? 42;
  const next = prngU32(seed);
  const list: { path: string; size: number }[] = [];
  let dirs = 0;
  let sum = 0;
  const file = (rel: string, size: number) => {
    writeFileSync(join(root, rel), bytes(size, seed * 1_000_003 + list.length));
    list.push({ path: rel, size });
    sum += size;
  };
  const dir = (rel: string) => {
    mkdirSync(join(root, rel), { recursive: true });
    dirs++;
  };

  // 5 x 4 x 5 = 100 leaf directories, plus the levels above them
  const leaves: string[] = [];
  for (let a = 0; a < 5; a++) {
    dir(`d${a}`);
    for (let b = 0; b < 4; b++) {
      dir(`d${a}/e${b}`);
      for (let c = 0; c < 5; c++) {
        dir(`d${a}/e${b}/f${c}`);
        leaves.push(`d${a}/e${b}/f${c}`);
      }
    }
  }
  // a deep chain and an empty directory
  let deep = 'deep';
  dir(deep);
  for (let i = 1; i < 12; i++) {
    deep += `/level${i}`;
    dir(deep);
  }
  dir('empty-dir');
  file(`${deep}/bottom.txt`, 123);

  if (spec.large ?? true) {
    dir('large');
    EDGE_SIZES.forEach((s, i) => file(`large/edge-${i}-${s}.bin`, s));
  }

  const places = ['', ...leaves.flatMap((l) => [l, l.split('/').slice(0, 2).join('/')])];
  let n = 0;
  while (list.length < total) {
    const r = next() % 100;
    const size = r < 10 ? 0 : r < 75 ? next() % 4096 : r < 97 ? 4096 + (next() % (60 * KiB)) : 64 * KiB + (next() % (200 * KiB));
    const place = places[next() % places.length]!;
    file(join(place, `file-${n++}${r % 3 === 0 ? '.txt' : ''}`), size);
  }

  if (spec.links ?? true) {
    dir('links');
    file('links/target.txt', 5000);
    symlinkSync('target.txt', join(root, 'links/to-target'));
    symlinkSync('../d0/e0/f0', join(root, 'links/to-dir'));
    symlinkSync(`../${list[list.length - 1]!.path}`, join(root, 'links/to-last'));
    linkSync(join(root, 'links/target.txt'), join(root, 'links/hardlink.txt'));
  }
  // Fixed past timestamps (whole seconds, children before their directory), so a copy that fails to restore
  // times cannot pass by being made in the same second.
  let k = 0;
  const stamp = (rel: string) => {
    const abs = join(root, rel);
    const st = lstatSync(abs);
    if (st.isDirectory()) for (const n of readdirSync(abs).sort()) stamp(rel ? `${rel}/${n}` : n);
    const when = 1_500_000_000 + ((k++ * 7919) % 100_000_000);
    if (st.isSymbolicLink()) lutimesSync(abs, when, when);
    else utimesSync(abs, when, when);
  };
  stamp('');
  return { root, files: list.length, dirs, bytes: sum, list };
}

/**
 * A text snapshot of everything under path (names, types, modes, sizes, mtimes, sha256 of file contents), to
 * show that a failed command created or changed nothing. '(absent)' when path does not exist. Local disk only.
 */
export function snapshotDir(path: string): string {
  if (!existsSync(path)) return '(absent)';
  const lines: string[] = [];
  const walk = (rel: string) => {
    const abs = rel ? join(path, rel) : path;
    const st = lstatSync(abs);
    const kind = st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : st.isFile() ? 'f' : 'o';
    const extra = kind === 'f' ? createHash('sha256').update(readFileSync(abs)).digest('hex') : kind === 'l' ? readlinkSync(abs) : '';
    lines.push(`${rel || '.'}|${kind}|${(st.mode & 0o7777).toString(8)}|${kind === 'd' ? '' : st.size}|${st.mtimeMs}|${extra}`);
    if (kind === 'd') for (const n of readdirSync(abs).sort()) walk(rel ? `${rel}/${n}` : n);
  };
  walk('');
  return lines.join('\n');
}
