#!/usr/bin/env node
// Installs the Debian packages kvfs needs that this machine lacks, and checks /dev/fuse.
// Usage: node scripts/system-deps.mjs runtime|test|bench
//   runtime  mounting: libfuse.so.2 (fuse-native's prebuilt), fusermount3, and the toolchain that the root
//            package's `install` script (node-gyp rebuild of native/) needs
//   test     runtime + fio, redis-server, mount/umount
//   bench    test + libfuse3-dev, pkg-config, gcc, libc6-dev (warm-memory.c, ceiling/fuse-ceiling.c),
//            python3 (run-fio.sh), rclone (the bench's `rclone mount` target)
// Contract: silent and fast (one dpkg-query) when everything is present. Missing packages as root: one
// `apt-get install` (after `apt-get update` only when the package lists are absent or the install fails).
// Missing packages as another user: one message naming the packages and the command, exit 1.
// KVFS_SKIP_SYSTEM_DEPS=1 skips everything (packaging, non-Debian hosts that provide the pieces otherwise).
// Only Node built-ins here: it runs as `preinstall`, before node_modules exists.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';

/** One requirement: satisfied when any of `alternatives` is installed; installs the first one apt knows. */
const req = (why, ...alternatives) => ({ why, alternatives });

const TIERS = {
  runtime: [
    // Debian 13 renamed libfuse2 to libfuse2t64 (64-bit time_t transition).
    req('libfuse.so.2 for fuse-native', 'libfuse2', 'libfuse2t64'),
    req('fusermount3 for mount/unmount', 'fuse3'),
    req('C++ compiler for native/', 'g++'),
    req('make for node-gyp', 'make'),
    req('python3 for node-gyp', 'python3'),
  ],
  test: [
    req('fio for I/O tests', 'fio'),
    req('redis-server for the Redis backend tests', 'redis-server'),
    req('mount/umount', 'mount'),
    req('util-linux (findmnt)', 'util-linux'),
    req('getfattr and setfattr for the xattr tests', 'attr'),
  ],
  bench: [
    req('libfuse3 headers for the C ceiling', 'libfuse3-dev'),
    req('pkg-config for the C ceiling', 'pkg-config'),
    req('C compiler for warm-memory and the ceiling', 'gcc'),
    req('C library headers', 'libc6-dev'),
    req('rclone for the bench\'s rclone mount target', 'rclone'),
    req('GNU time for peak RSS (bench:volume-tools)', 'time'),
  ],
};
const ORDER = ['runtime', 'test', 'bench'];

const log = (msg) => process.stderr.write(`kvfs system-deps: ${msg}\n`);

function main() {
  const tier = process.argv[2] ?? 'runtime';
  if (!ORDER.includes(tier)) {
    log(`unknown tier "${tier}"; usage: node scripts/system-deps.mjs ${ORDER.join('|')}`);
    return 2;
  }
  if (process.env.KVFS_SKIP_SYSTEM_DEPS === '1') return 0;
  const reqs = ORDER.slice(0, ORDER.indexOf(tier) + 1).flatMap((t) => TIERS[t]);

  let rc = checkDevFuse(tier);
  const installed = queryInstalled(reqs.flatMap((r) => r.alternatives));
  if (installed === null) {
    log(`dpkg-query not found (not Debian?); make sure these are installed: ${reqs.map((r) => r.why).join('; ')}`);
    return rc;
  }
  const missing = reqs.filter((r) => !r.alternatives.some((p) => installed.has(p)));
  if (missing.length === 0) return rc;

  const names = missing.map((r) => r.alternatives[0]);
  const aptCmd = `DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${names.join(' ')}`;
  if (process.getuid?.() !== 0) {
    log(`missing Debian packages for "${tier}": ${names.join(', ')}`);
    log(`install them as root:  sudo apt-get update && sudo ${aptCmd}`);
    return 1;
  }
  log(`installing missing Debian packages for "${tier}": ${names.join(' ')}`);
  if (!install(missing)) {
    log(`installing ${names.join(' ')} failed; try by hand: apt-get update && ${aptCmd}`);
    return 1;
  }
  return rc;
}

/** Returns the set of installed package names among `pkgs`, or null when dpkg-query is unavailable. */
function queryInstalled(pkgs) {
  // Unknown packages make dpkg-query exit 1 and say so on stderr; the known ones still print.
  const r = spawnSync('dpkg-query', ['-W', '-f=${Package}\t${Status}\n', ...pkgs], { encoding: 'utf8' });
  if (r.error) return null;
  const out = new Set();
  for (const line of r.stdout.split('\n')) {
    const [name, status] = line.split('\t');
    if (status?.trim().endsWith(' installed') && status.startsWith('install ')) out.add(name.split(':')[0]);
  }
  return out;
}

function aptListsPresent() {
  try {
    return readdirSync('/var/lib/apt/lists').some((f) => f.includes('_Packages'));
  } catch {
    return false;
  }
}

function apt(args) {
  const r = spawnSync('apt-get', ['-q', '-o', 'DPkg::Lock::Timeout=120', ...args], {
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
  });
  return r.status === 0;
}

/** Chooses, per requirement, the first alternative apt has a candidate for. */
function pick(r) {
  if (r.alternatives.length === 1) return r.alternatives[0];
  for (const p of r.alternatives) {
    const q = spawnSync('apt-cache', ['policy', p], { encoding: 'utf8' });
    const cand = /Candidate:\s*(\S+)/.exec(q.stdout ?? '')?.[1];
    if (cand && cand !== '(none)') return p;
  }
  return r.alternatives[0];
}

function install(missing) {
  let updated = false;
  if (!aptListsPresent()) {
    if (!apt(['update'])) return false;
    updated = true;
  }
  const tryInstall = () => apt(['install', '-y', '--no-install-recommends', ...missing.map(pick)]);
  if (tryInstall()) return true;
  if (updated || !apt(['update'])) return false;
  return tryInstall();
}

/** /dev/fuse is needed to mount; without it only `runtime` (npm install) goes on, with a warning. */
function checkDevFuse(tier) {
  let ok = false;
  try {
    ok = statSync('/dev/fuse').isCharacterDevice();
  } catch {
    ok = false;
  }
  if (ok) return 0;
  const how = existsSync('/.dockerenv') || existsSync('/run/.containerenv')
    ? 'this looks like a container: start it with --device /dev/fuse (and --cap-add SYS_ADMIN)'
    : 'load the module: modprobe fuse';
  if (tier === 'runtime') {
    log(`warning: /dev/fuse is missing, so kvfs cannot mount here; ${how}`);
    return 0;
  }
  log(`/dev/fuse is missing: the ${tier} tier needs FUSE mounts; ${how}`);
  return 1;
}

process.exitCode = main();
