/**
 * Path to inode resolution for path-based drivers (libfuse's high-level API hands us paths, the core speaks
 * inodes). Resolved paths are cached; the driver tells the index about every namespace change this mount
 * makes (`forget`, `forgetTree`), and entries expire after `ttlMs` so that other mounts' changes are seen.
 */
import { LRUCache } from 'lru-cache';
import type { Filesystem } from '../filesystem.js';
import { ROOT_INO, type Ino } from '../types.js';

export class PathIndex {
  private readonly cache: LRUCache<string, Ino>;

  constructor(private readonly fs: Filesystem, ttlMs: number, max = 100_000) {
    this.cache = new LRUCache<string, Ino>({ max, ttl: ttlMs > 0 ? ttlMs : undefined, ttlAutopurge: false });
  }

  /** the inode at an absolute path (ENOENT / ENOTDIR from the core when it does not resolve) */
  async resolve(path: string): Promise<Ino> {
    if (path === '/' || path === '') return ROOT_INO;
    const hit = this.cache.get(path);
    if (hit !== undefined) return hit;
    const cut = path.lastIndexOf('/');
    const parent = await this.resolve(path.slice(0, cut) || '/');
    const attr = await this.fs.lookup(parent, path.slice(cut + 1));
    this.cache.set(path, attr.ino);
    return attr.ino;
  }

  /** the parent directory's inode and the last name of a path */
  async parentOf(path: string): Promise<[Ino, string]> {
    const cut = path.lastIndexOf('/');
    return [await this.resolve(path.slice(0, cut) || '/'), path.slice(cut + 1)];
  }

  remember(path: string, ino: Ino): void {
    this.cache.set(path, ino);
  }

  forget(path: string): void {
    this.cache.delete(path);
  }

  /** forgets a path and everything below it (a directory renamed or removed) */
  forgetTree(path: string): void {
    this.cache.delete(path);
    const prefix = path.endsWith('/') ? path : path + '/';
    for (const k of this.cache.keys()) if (k.startsWith(prefix)) this.cache.delete(k);
  }
}
