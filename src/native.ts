/**
 * The one place that loads kvfs's native addon (build/Release/kvfs_native.node, built by `npm install`).
 * Native functions return a result or -errno; this file turns -errno into errors.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { existsSync } from 'node:fs';
import { constants } from 'node:os';

interface Addon {
  probeFuseDevice(): number;
}

/** the package root: the nearest folder above this file (src/ or dist/src/) that has binding.gyp */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'binding.gyp')) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
}

const root = packageRoot();
let addon: Addon | undefined;

/** the addon; throws a clear error when it was not built */
export function native(): Addon {
  if (!addon) {
    const require = createRequire(import.meta.url);
    try {
      addon = require(join(root, 'build', 'Release', 'kvfs_native.node')) as Addon;
    } catch (e) {
      throw new Error(`kvfs's native addon is not built (run \`npm install\` or \`npm run build\` in ${root}): ${(e as Error).message}`);
    }
  }
  return addon;
}

/** the name of an errno number, e.g. 2 -> ENOENT */
export function errnoName(n: number): string {
  const e = Object.entries(constants.errno).find(([, v]) => v === n);
  return e ? e[0] : `errno ${n}`;
}

/** undefined when /dev/fuse can serve a mount, else the reason */
export function fuseDeviceProblem(): string | undefined {
  const r = native().probeFuseDevice();
  if (r >= 0) return undefined;
  const name = errnoName(-r);
  if (name === 'ENOENT') return '/dev/fuse does not exist (load the fuse module: modprobe fuse)';
  if (name === 'EACCES' || name === 'EPERM') return `/dev/fuse cannot be opened (${name}): run as root or add the user to the fuse group`;
  return `/dev/fuse cannot be opened (${name})`;
}
