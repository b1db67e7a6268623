/**
 * Fuzz test of parseRequest: for every opcode, random bodies (random lengths around the opcode's struct, random
 * bytes, NULs sprinkled in, random extension lengths and node ids), plus wholly random headers. Every parse must
 * return a Request of that opcode or throw a WireParseError carrying the header's context; nothing else, ever.
 *
 *   KVFS_WIRE_SEED=1234   replay one seed (printed by every run)
 *   KVFS_WIRE_ROUNDS=N    bodies per opcode (default 2000)
 */
import t, { type Test } from 'tap';
import { OPCODE_TABLE, WireParseError, parseRequest } from '../../../src/fs/fuse/wire/index.js';
import { prng } from '../../helpers/prng.js';

const seed = Number(process.env.KVFS_WIRE_SEED ?? Math.floor(Math.random() * 2 ** 31));
const rounds = Number(process.env.KVFS_WIRE_ROUNDS ?? 2000);


const rand = prng(seed);
const int = (n: number) => Math.floor(rand() * n);

function randomBody(inSize: number): Uint8Array {
  const shape = int(4);
  const len = shape === 0 ? int(inSize + 8) : shape === 1 ? inSize + int(64) : shape === 2 ? int(512) : inSize + int(8);
  const b = new Uint8Array(len);
  const style = int(3);
  for (let i = 0; i < len; i++) {
    // plain random; small numbers (plausible counts and sizes); or printable text with NULs
    b[i] = style === 0 ? int(256) : style === 1 ? (rand() < 0.8 ? 0 : int(8)) : rand() < 0.1 ? 0 : 0x20 + int(0x60);
  }
  // sometimes a plausible u32 count/size right after the struct's first field
  if (len >= 4 && rand() < 0.3) new DataView(b.buffer).setUint32(0, int(4), true);
  return b;
}

function header(opcode: number, bodyLength: number): Uint8Array {
  const h = new Uint8Array(40);
  const dv = new DataView(h.buffer);
  dv.setUint32(0, rand() < 0.95 ? 40 + bodyLength : int(2 ** 32), true);
  dv.setUint32(4, opcode, true);
  dv.setBigUint64(8, BigInt(int(2 ** 32)) << BigInt(int(33)), true);
  dv.setBigUint64(16, rand() < 0.9 ? BigInt(int(1000)) : BigInt.asUintN(64, BigInt(int(2 ** 32)) << BigInt(int(40))), true);
  dv.setUint32(24, int(2 ** 32), true);
  dv.setUint32(28, int(2 ** 32), true);
  dv.setUint32(32, int(2 ** 32), true);
  dv.setUint16(36, rand() < 0.8 ? 0 : int(rand() < 0.5 ? 8 : 65536), true);
  return h;
}

/** parse and classify; any other throw fails the test with the input */
function attempt(t: Test, h: Uint8Array, b: Uint8Array, expectOp?: string): 'ok' | string {
  const setxattrExt = rand() < 0.5;
  try {
    const r = parseRequest(h, b, { setxattrExt });
    if (expectOp !== undefined && r.op !== expectOp) throw new Error(`parsed as ${r.op}, not ${expectOp}`);
    for (const v of Object.values(r)) {
      if (v instanceof Uint8Array && v.length > 0 && v.buffer === b.buffer) {
        if (v.byteOffset < b.byteOffset || v.byteOffset + v.length > b.byteOffset + b.length) {
          throw new Error('a view reaches outside the body');
        }
      }
    }
    return 'ok';
  } catch (e) {
    if (e instanceof WireParseError) {
      if (h.length >= 40 && (e.unique === undefined || e.opcode === undefined)) throw new Error(`${e.code} lacks context`);
      return e.code;
    }
    t.fail(`seed ${seed}: ${e instanceof Error ? e.stack : String(e)}`, {
      header: Buffer.from(h).toString('hex'), body: Buffer.from(b).toString('hex'),
    });
    return 'crash';
  }
}

t.comment(`seed ${seed} (KVFS_WIRE_SEED=${seed} to replay), ${rounds} bodies per opcode`);

t.test('random bodies for every opcode', async (t) => {
  for (const info of OPCODE_TABLE) {
    const outcomes = new Map<string, number>();
    for (let i = 0; i < rounds; i++) {
      const b = randomBody(info.inSize);
      const o = attempt(t, header(info.opcode, b.length), b, info.name);
      outcomes.set(o, (outcomes.get(o) ?? 0) + 1);
    }
    t.notOk(outcomes.has('crash'), `${info.kernel}: ${[...outcomes].map(([k, v]) => `${k} ${v}`).join(', ')}`);
  }
});

t.test('random headers and bodies', async (t) => {
  const outcomes = new Map<string, number>();
  for (let i = 0; i < rounds * 10; i++) {
    const h = new Uint8Array(int(4) === 0 ? int(48) : 40).map(() => int(256));
    const dv = new DataView(h.buffer);
    if (h.length >= 8 && rand() < 0.7) dv.setUint32(4, int(60), true);
    if (h.length >= 24 && rand() < 0.8) dv.setUint32(20, 0, true); // a plausible node id
    if (h.length >= 38 && rand() < 0.8) dv.setUint16(36, 0, true); // no extensions
    const b = new Uint8Array(int(200)).map(() => int(256));
    if (h.length >= 4 && rand() < 0.7) dv.setUint32(0, 40 + b.length, true);
    const o = attempt(t, h, b);
    outcomes.set(o, (outcomes.get(o) ?? 0) + 1);
  }
  t.notOk(outcomes.has('crash'), [...outcomes].map(([k, v]) => `${k} ${v}`).join(', '));
});
