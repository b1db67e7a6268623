/**
 * Extended attributes: x/<ino>/<name> records, each change one commit that also sets the inode's ctime.
 *
 * The user., trusted. and security. namespaces are stored, but security.selinux. Others (system.posix_acl_*: no
 * ACLs) and SELinux labels (the kernel labels a FUSE mount itself, never through the filesystem's xattrs) are
 * EOPNOTSUPP to set, get and remove, not merely unset: tools such as `ls -l` then stop asking for the whole
 * device instead of asking once per file.
 */
import { fsErr } from './errors.js';
import type { KeyedMutex } from './keyed-mutex.js';
import { XATTR_NAME_MAX, XATTR_SIZE_MAX, xattrStored, type Volume } from '../volume/inodes.js';
import { K, memberOf, nowTs } from '../volume/schema.js';
import { scanPages } from '../volume/scan.js';
import { transact, type Txn } from '../volume/txn.js';
import { XATTR_CREATE, XATTR_REPLACE, type Ino } from './types.js';

export { xattrStored } from '../volume/inodes.js';

export class Xattrs {
  constructor(private readonly vol: Volume, private readonly locks: KeyedMutex) {}

  async set(ino: Ino, name: string, value: Uint8Array, flags = 0): Promise<void> {
    if (!name.length || Buffer.byteLength(name) > XATTR_NAME_MAX) throw fsErr('ERANGE');
    if (value.length > XATTR_SIZE_MAX) throw fsErr('E2BIG');
    if (!xattrStored(name)) throw fsErr('EOPNOTSUPP');
    await this.change(ino, async (tx) => {
      const exists = (await tx.get(K.xattr(ino, name))) !== undefined;
      if (flags & XATTR_CREATE && exists) throw fsErr('EEXIST');
      if (flags & XATTR_REPLACE && !exists) throw fsErr('ENODATA');
      tx.set(K.xattr(ino, name), value);
    });
  }

  async get(ino: Ino, name: string): Promise<Buffer> {
    if (!xattrStored(name)) throw fsErr('EOPNOTSUPP');
    await this.vol.inode(this.vol.store, ino);
    const v = await this.vol.store.get(K.xattr(ino, name));
    if (!v) throw fsErr('ENODATA');
    return Buffer.from(v);
  }

  async list(ino: Ino): Promise<string[]> {
    await this.vol.inode(this.vol.store, ino);
    const prefix = K.xattrPrefix(ino);
    const names: string[] = [];
    for await (const page of scanPages(this.vol.store, prefix)) for (const [k] of page) names.push(memberOf(k, prefix));
    return names;
  }

  async remove(ino: Ino, name: string): Promise<void> {
    if (!xattrStored(name)) throw fsErr('EOPNOTSUPP');
    await this.change(ino, async (tx) => {
      if ((await tx.get(K.xattr(ino, name))) === undefined) throw fsErr('ENODATA');
      tx.del(K.xattr(ino, name));
    });
  }

  /** one change of ino's xattrs, in one commit with the inode's new ctime */
  private change(ino: Ino, fn: (tx: Txn) => Promise<void>): Promise<void> {
    return this.locks.with([ino], () => transact(this.vol.store, async (tx) => {
      const node = await this.vol.inode(tx, ino);
      await fn(tx);
      node.ctime = nowTs();
      this.vol.put(tx, node);
    }));
  }
}
