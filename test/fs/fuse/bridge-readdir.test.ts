/**
 * Listing big directories through the session and the bridge (src/fs/fuse/session.ts, fs-bridge.ts) over the
 * filesystem core on a memory store, without a mount: requests are built as bytes the way the kernel sends them,
 * replies are decoded by hand (plain DataView reads, independent of the packer under test).
 *
 * What it asserts:
 *  - Paged with the kernel's request sizes, READDIR and READDIRPLUS return every entry exactly once ("." and ".."
 *    included) and end with an empty reply; READDIRPLUS carries each file's mode, size and nlink, and nodeid 0
 *    for "." and "..".
 *  - Each READDIRPLUS reply reads no more inodes than the reply can hold records of the smallest size
 *    (fuse_direntplus + a 1-byte name, 160 bytes), plus the directory's own inode when the listing starts: a
 *    listing reads each inode about once, so its cost grows linearly with the directory. (Before this bound,
 *    each reply read the inodes of every entry from its offset to the end: 3,000 entries in 4 KiB replies read
 *    about 180,000 inodes.)
 *  - READDIR reads no inode but the directory's.
 */
import t from 'tap';
import { BufferPool } from '../../../src/bufferpool/buffer-pool.js';
import { MemoryStore } from '../../../src/backend/memory.js';
import { Filesystem } from '../../../src/fs/filesystem.js';
import { fsBridge } from '../../../src/fs/fuse/fs-bridge.js';
import { Session } from '../../../src/fs/fuse/session.js';
import type { RawRequest } from '../../../src/fs/fuse/native-channel.js';
import { ROOT_INO, type Ctx } from '../../../src/fs/types.js';
import { formatVolume } from '../../../src/volume/format.js';
import { u16, u32, u64, zero } from '../../helpers/bytes.js';

const OPENDIR = 27;
const READDIR = 28;
const RELEASEDIR = 29;
const READDIRPLUS = 44;
/** sizeof(fuse_direntplus) + 1 name byte, aligned to 8 */
const SMALLEST_PLUS_RECORD = 160;
const FILES = 3000;
const MODES = [0o100644, 0o100600, 0o100755, 0o100640];
const ctx: Ctx = { uid: 0, gid: 0, pid: 1 };

/** a memory store that counts the inode records (keys i/<ino>) read through get and getMany */
class CountingStore extends MemoryStore {
  inodeReads = 0;
  override async get(key: string): Promise<Uint8Array | undefined> {
    if (key.startsWith('i/')) this.inodeReads++;
    return super.get(key);
  }
  override async getMany(keys: readonly string[]): Promise<(Uint8Array | undefined)[]> {
    for (const k of keys) if (k.startsWith('i/')) this.inodeReads++;
    return super.getMany(keys);
  }
}

/** a fuse_in_header, 40 bytes */
function header(opcode: number, unique: number, nodeid: number, bodyLength: number): Buffer {
  return Buffer.from([
    ...u32(40 + bodyLength), ...u32(opcode), ...u64(unique), ...u64(nodeid),
    ...u32(0), ...u32(0), ...u32(1), ...u16(0), ...u16(0), // uid, gid, pid, total_extlen, padding
  ]);
}

/** fuse_read_in: fh, offset, size, read_flags, lock_owner, flags, padding */
const readIn = (fh: bigint, offset: bigint, size: number) => [...u64(fh), ...u64(offset), ...u32(size), ...u32(0), ...u64(0), ...u32(0), ...u32(0)];

interface Entry { name: string; ino: number; off: bigint; type: number; nodeid?: number; mode?: number; size?: number; nlink?: number }

/** fuse_dirent records: ino u64, off u64, namelen u32, type u32, name, padded to 8 */
function decodeDirents(b: Buffer, plus: boolean): Entry[] {
  const out: Entry[] = [];
  for (let at = 0; at < b.length;) {
    const d = plus ? at + 128 : at; // fuse_direntplus: fuse_entry_out (128 bytes), then the dirent
    const namelen = b.readUInt32LE(d + 16);
    const e: Entry = {
      ino: Number(b.readBigUInt64LE(d)), off: b.readBigUInt64LE(d + 8), type: b.readUInt32LE(d + 20),
      name: b.toString('utf8', d + 24, d + 24 + namelen),
    };
    if (plus) {
      // fuse_entry_out: nodeid at 0; fuse_attr at 40: size at +8, mode at +60, nlink at +64
      e.nodeid = Number(b.readBigUInt64LE(at));
      e.size = Number(b.readBigUInt64LE(at + 48));
      e.mode = b.readUInt32LE(at + 100);
      e.nlink = b.readUInt32LE(at + 104);
    }
    out.push(e);
    at = d + ((24 + namelen + 7) & ~7);
  }
  return out;
}

t.test('a big directory listed through the bridge', async (t) => {
  const store = new CountingStore();
  await formatVolume(store, { uid: 0, gid: 0 });
  const fs = await Filesystem.open(store);
  t.teardown(() => fs.close());
  const dir = (await fs.mkdir(ROOT_INO, 'big', 0o755, ctx)).ino;
  const want = new Map<string, { ino: number; mode: number; size: number }>();
  for (let i = 0; i < FILES; i++) {
    const name = `file-${i}`;
    const mode = MODES[i % MODES.length]!;
    const a = await fs.mknod(dir, name, mode, 0, ctx);
    const size = i % 7 === 0 ? i * 1000 : 0;
    if (size) await fs.setattr(a.ino, { size });
    want.set(name, { ino: a.ino, mode, size });
  }

  // the session and the bridge, with a transport that hands each reply to whoever waits for its unique
  const waiting = new Map<bigint, (reply: Buffer) => void>();
  let session: Session;
  session = new Session({
    reply: (_reader, hdr, body, data) => {
      const r = Buffer.concat([hdr, ...(body ? [body] : []), ...(data ? [data] : [])]);
      const unique = r.readBigUInt64LE(8);
      waiting.get(unique)?.(r);
      waiting.delete(unique);
      return r.length;
    },
    done: () => {},
  }, fsBridge(fs, new BufferPool({ classes: [{ size: 4096, count: 2 }] }), {
    maxWrite: 1 << 20, parseOptions: {}, entryOut: (a) => session.entryOut(a),
  }), { entryTimeout: 1, attrTimeout: 1 });
  t.teardown(() => session.close());
  let unique = 100;
  /** sends one request; resolves with the reply's error and body */
  const call = (opcode: number, nodeid: number, body: number[]): Promise<{ error: number; body: Buffer }> => {
    const u = unique++;
    const p = new Promise<Buffer>((resolve) => waiting.set(BigInt(u), resolve));
    const raw: RawRequest = { reader: 0, header: header(opcode, u, nodeid, body.length), body: Buffer.from(body) };
    session.handle(raw);
    return p.then((r) => ({ error: r.readInt32LE(4), body: r.subarray(16) }));
  };

  for (const [plus, size] of [[true, 4096], [true, 32768], [true, 131072], [false, 4096], [false, 32768]] as const) {
    t.test(`${plus ? 'READDIRPLUS' : 'READDIR'} in replies of ${size} bytes`, async (t) => {
      const open = await call(OPENDIR, dir, zero(8));
      t.equal(open.error, 0, 'OPENDIR');
      const fh = open.body.readBigUInt64LE(0);
      const seen: Entry[] = [];
      const perReply: number[] = [];
      const oversize: number[] = [];
      let replies = 0;
      for (let off = 0n; ;) {
        const before = store.inodeReads;
        const r = await call(plus ? READDIRPLUS : READDIR, dir, readIn(fh, off, size));
        perReply.push(store.inodeReads - before);
        if (r.error !== 0) {
          t.fail(`reply ${replies}: error ${r.error}`);
          break;
        }
        if (r.body.length > size) oversize.push(r.body.length);
        const got = decodeDirents(r.body, plus);
        if (!got.length) break;
        seen.push(...got);
        off = got[got.length - 1]!.off;
        if (++replies > FILES) {
          t.fail('the listing does not end');
          break;
        }
      }
      t.equal((await call(RELEASEDIR, dir, [...u64(fh), ...zero(16)])).error, 0, 'RELEASEDIR');

      t.same(oversize, [], `every one of the ${replies} replies fits in the ${size} bytes asked for`);
      const names = seen.map((e) => e.name);
      t.equal(new Set(names).size, names.length, 'no entry twice');
      t.same([...names].sort(), ['.', '..', ...want.keys()].sort(), `every one of the ${FILES} entries, "." and ".."`);
      const bad: string[] = [];
      for (const e of seen) {
        if (e.name === '.' || e.name === '..') {
          if (e.ino !== (e.name === '.' ? dir : ROOT_INO) || e.type !== 4 || (plus && e.nodeid !== 0)) bad.push(`${e.name}: ${JSON.stringify(e)}`);
          continue;
        }
        const w = want.get(e.name)!;
        if (e.ino !== w.ino || e.type !== 8) bad.push(`${e.name}: ino ${e.ino} type ${e.type}, want ${w.ino} and 8 (DT_REG)`);
        if (plus && (e.nodeid !== w.ino || e.mode !== w.mode || e.size !== w.size || e.nlink !== 1)) {
          bad.push(`${e.name}: nodeid ${e.nodeid} mode ${e.mode?.toString(8)} size ${e.size} nlink ${e.nlink}, ` +
            `want ${w.ino}, ${w.mode.toString(8)}, ${w.size}, 1`);
        }
      }
      t.same(bad.slice(0, 10), [], `every entry's ino and type${plus ? ', mode, size and nlink' : ''} (${bad.length} wrong)`);

      const bound = plus ? Math.floor(size / SMALLEST_PLUS_RECORD) + 1 : 1;
      const over = perReply.map((n, i) => [i, n] as const).filter(([, n]) => n > bound);
      t.same(over.slice(0, 5), [], `no reply reads more than ${bound} inodes (reply, inodes read): most ${Math.max(...perReply)}`);
      const total = perReply.reduce((a, b) => a + b, 0);
      t.ok(total <= (plus ? 2 * (FILES + 2) : replies + 1), `the listing read ${total} inodes in all for ${FILES} entries`);
    });
  }
});
