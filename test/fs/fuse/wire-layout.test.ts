/**
 * Cross-checks the wire layer's tables against the kernel header itself.
 *
 * 1. A C program, generated from our tables and compiled with `cc` against <linux/fuse.h>, prints sizeof of every
 *    struct, offsetof / width / signedness of every field, and the value of every opcode and flag constant; each is
 *    compared with structs.ts, opcodes.ts, init-flags.ts and flags.ts. Skipped (with a message) without cc or the
 *    header.
 * 2. The header's text: every opcode of enum fuse_opcode and every INIT flag it defines is in our tables.
 * 3. The opcode table's own rules (sizes match the structs, which opcodes reply, names, trailing data).
 */
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ATTR_FLAGS, FATTR, FOPEN, FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, FUSE_ROOT_ID, INIT_FLAGS, IOCTL,
  OPCODE_TABLE, REQUEST_FLAGS, SIZES, STRUCTS, opcodeInfo, type FieldKind,
} from '../../../src/fs/fuse/wire/index.js';

const HEADER = '/usr/include/linux/fuse.h';
const WIDTH: Record<Exclude<FieldKind, 'struct'>, number> = { u16: 2, u32: 4, i32: 4, u64: 8, i64: 8, big: 8, nodeid: 8 };

/** every numeric constant we claim comes from the header, by its C name */
function constants(): Map<string, bigint> {
  const m = new Map<string, bigint>();
  for (const info of OPCODE_TABLE) m.set(info.kernel, BigInt(info.opcode));
  for (const [k, v] of Object.entries(INIT_FLAGS)) m.set(k, v);
  for (const group of [FATTR, FOPEN, REQUEST_FLAGS, IOCTL, ATTR_FLAGS, SIZES]) {
    for (const [k, v] of Object.entries(group)) m.set(k, BigInt(v));
  }
  m.set('FUSE_KERNEL_VERSION', BigInt(FUSE_KERNEL_VERSION));
  m.set('FUSE_ROOT_ID', BigInt(FUSE_ROOT_ID));
  return m;
}

function cProgram(): string {
  const lines = [
    '#include <stdio.h>',
    '#include <stddef.h>',
    '#include <stdint.h>',
    '#include <linux/fuse.h>',
    '#define FIELD(S, F) printf("field %s %s %zu %zu %d\\n", #S, #F, offsetof(struct S, F), \\',
    '  sizeof(((struct S *)0)->F), (__typeof__(((struct S *)0)->F))-1 < 0);',
    '#define PLACE(S, F) printf("place %s %s %zu\\n", #S, #F, offsetof(struct S, F));',
    'int main(void) {',
    '  printf("const FUSE_KERNEL_MINOR_VERSION %llu\\n", (unsigned long long)FUSE_KERNEL_MINOR_VERSION);',
  ];
  for (const l of Object.values(STRUCTS)) {
    lines.push(`  printf("sizeof ${l.name} %zu\\n", sizeof(struct ${l.name}));`);
    for (const [f, , kind] of l.list) lines.push(kind === 'struct' ? `  PLACE(${l.name}, ${f})` : `  FIELD(${l.name}, ${f})`);
  }
  for (const [name, v] of constants()) {
    // 32-bit flags are int expressions in the header ((1 << 31) is INT_MIN): compare their 32 bits
    const cast = v < 2n ** 32n ? '(uint32_t)' : '';
    lines.push(`  printf("const ${name} %llu\\n", (unsigned long long)${cast}(${name}));`);
  }
  lines.push('  return 0;', '}');
  return lines.join('\n');
}

function hasCc(): boolean {
  return spawnSync('cc', ['--version'], { stdio: 'ignore' }).status === 0;
}

const noHeader = existsSync(HEADER) ? false : `no ${HEADER} (install linux-libc-dev): cross-check skipped`;
const noCc = noHeader || (hasCc() ? false : 'no C compiler (cc): layout cross-check skipped');

t.test('struct layouts and constants against the C compiler', { skip: noCc }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kvfs-wire-layout-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'layout.c'), cProgram());
  execFileSync('cc', ['-std=gnu11', '-o', join(dir, 'layout'), join(dir, 'layout.c')], { stdio: 'pipe' });
  const out = execFileSync(join(dir, 'layout'), { encoding: 'utf8' }).trim().split('\n');

  const consts = constants();
  let checked = 0;
  for (const line of out) {
    const [what, a, b, c, d, e] = line.split(' ');
    if (what === 'sizeof') {
      t.equal(STRUCTS[a as keyof typeof STRUCTS].size, Number(b), `sizeof(struct ${a})`);
    } else if (what === 'field' || what === 'place') {
      const [off, kind] = (STRUCTS[a as keyof typeof STRUCTS].fields as Record<string, readonly [number, FieldKind]>)[b!]!;
      t.equal(off, Number(c), `offsetof(${a}, ${b})`);
      if (what === 'field' && kind !== 'struct') {
        t.equal(WIDTH[kind], Number(d), `sizeof ${a}.${b} matches kind ${kind}`);
        // i64: the header says uint64_t for times, the kernel reads them as time64_t; decoding signed is deliberate
        if (kind !== 'i64') t.equal(kind === 'i32', e === '1', `signedness of ${a}.${b}`);
      }
    } else if (what === 'const') {
      if (a === 'FUSE_KERNEL_MINOR_VERSION') {
        t.ok(Number(b) >= FUSE_KERNEL_MINOR_VERSION, `the header (7.${b}) is at least ours (7.${FUSE_KERNEL_MINOR_VERSION})`);
      } else {
        t.equal(consts.get(a!), BigInt(b!), `${a}`);
      }
    } else {
      t.fail(`unexpected line ${line}`);
    }
    checked++;
  }
  const fields = Object.values(STRUCTS).reduce((n, l) => n + l.list.length, 0);
  t.equal(checked, 1 + Object.keys(STRUCTS).length + fields + consts.size, 'every struct, field and constant was printed');
});

t.test('the header has no opcode or INIT flag we lack', { skip: noHeader }, async (t) => {
  const text = readFileSync(HEADER, 'utf8');
  const enumBody = /enum fuse_opcode \{([\s\S]*?)\};/.exec(text)?.[1] ?? '';
  const ops = [...enumBody.matchAll(/\b(FUSE_\w+)\s*=\s*(\d+)/g)].filter(([, n]) => !n!.endsWith('_RESERVED'));
  t.ok(ops.length >= 49, `the enum lists ${ops.length} FUSE_ opcodes`);
  for (const [, name, value] of ops) t.equal(opcodeInfo(Number(value))?.kernel, name, `${name} = ${value} is in the table`);
  const initFlags = [...text.matchAll(/#define\s+(FUSE_\w+)\s+\(1(?:ULL)?\s*<<\s*(\d+)\)/g)]
    .map(([, name]) => name!)
    .filter((name) => {
      const i = text.indexOf('INIT request/reply flags');
      const j = text.indexOf('CUSE INIT request/reply flags');
      const at = text.indexOf(`#define ${name}`);
      return at > i && at < j;
    });
  t.ok(initFlags.length >= 35, `${initFlags.length} INIT flags in the header`);
  for (const name of initFlags) t.ok(name in INIT_FLAGS, `${name} is in INIT_FLAGS`);
});

t.test('the opcode table keeps its own rules', async (t) => {
  const seen = new Set<number>();
  for (const info of OPCODE_TABLE) {
    t.notOk(seen.has(info.opcode), `${info.kernel}: one row`);
    seen.add(info.opcode);
    t.equal(info.kernel, `FUSE_${info.name}`);
    t.equal(info.inSize, info.inStruct ? STRUCTS[info.inStruct].size : 0, `${info.kernel}: inSize is sizeof(${info.inStruct})`);
    t.equal(info.replies, info.reply !== 'none', `${info.kernel}: replies`);
  }
  t.equal(OPCODE_TABLE.length, 49, 'FUSE_LOOKUP … FUSE_TMPFILE: 51 values, 7 and 19 unused');
  const noReply = OPCODE_TABLE.filter((i) => !i.replies).map((i) => i.name).sort();
  t.strictSame(noReply, ['BATCH_FORGET', 'FORGET', 'INTERRUPT', 'NOTIFY_REPLY']);
  const names = Object.fromEntries(OPCODE_TABLE.filter((i) => i.names > 0).map((i) => [i.name, i.names]));
  t.strictSame(names, {
    LOOKUP: 1, SYMLINK: 2, MKNOD: 1, MKDIR: 1, UNLINK: 1, RMDIR: 1, RENAME: 2, LINK: 1, SETXATTR: 1, GETXATTR: 1,
    REMOVEXATTR: 1, CREATE: 1, RENAME2: 2, TMPFILE: 1,
  });
  const trailing = OPCODE_TABLE.filter((i) => i.trailing).map((i) => i.name).sort();
  t.strictSame(trailing, ['BATCH_FORGET', 'IOCTL', 'NOTIFY_REPLY', 'REMOVEMAPPING', 'SETXATTR', 'WRITE']);
  t.equal(opcodeInfo(26)?.compatInSize, 16, 'INIT: 16 bytes before 7.36');
  t.equal(opcodeInfo(21)?.compatInSize, 8, 'SETXATTR: 8 bytes without FUSE_SETXATTR_EXT');
  t.equal(opcodeInfo(4096), undefined, 'CUSE_INIT is not ours');
});
