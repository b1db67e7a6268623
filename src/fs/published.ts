/**
 * The core's side of the driver's read index (types.ts ReadIndex): which chunks of which files are published,
 * and the bytes each one pins.
 *
 * Rules:
 *  - Only committed blob bytes (or holes) are published, never write-back buffers; FileData publishes after a
 *    read found a chunk clean and retracts before it makes the chunk dirty, truncates, or takes another
 *    mount's version, synchronously with that change.
 *  - Published bytes are pinned here (the driver reads them from other threads) until retracted. Bytes that
 *    came from the blob cache are retracted when the cache drops them, so what is pinned never exceeds the
 *    cache's size; a memory store's values live in slabs that are never freed while mounted.
 *  - A file's entries go when its FileData goes (the last handle closed).
 *  - A file is marked clean (the driver answers its FLUSH, a close, at once) only when nothing of it is
 *    uncommitted; FileData marks it not clean before it acknowledges any write or truncate.
 *  - Attributes (the driver answers GETATTR): only directories of a single-mount volume, whose every change
 *    passes through this mount. Filesystem publishes a directory's attributes after a commit that changed it
 *    (before the change is acknowledged), retracts them after a commit that removed it or when the kernel
 *    forgets it, and publishes what a GETATTR read only when no directory changed while it read (`attrEpoch`):
 *    an answer read before a change never replaces the change's own.
 */
import type { Attr, Ino, ReadIndex } from './types.js';

interface Entry {
  data: Uint8Array | null;
  blobId: string | null;
  /** published as a file (publishFile): pins no memory */
  file?: boolean;
}

/**
 * Most chunks published as files at once: they pin no memory, but each costs the driver a table entry and its
 * path (~200 bytes), so the oldest are taken back past this (~13 MB: 16 GiB of 256 KiB chunks).
 */
const MAX_FILE_CHUNKS = 65536;

export class Published {
  private index: ReadIndex | undefined;
  private readonly files = new Map<Ino, Map<number, Entry>>();
  private readonly byBlob = new Map<string, { ino: Ino; idx: number }>();
  /** chunks published as files, oldest first ("ino/idx") */
  private readonly fileChunks = new Map<string, { ino: Ino; idx: number }>();

  /** files the driver may answer FLUSH for by itself */
  private readonly clean = new Set<Ino>();
  /** directories whose attributes the driver answers GETATTR with */
  private readonly attrs = new Set<Ino>();
  /** bumped by every change of a directory's published attributes (a GETATTR's read older than it is stale) */
  attrEpoch = 0;

  /** the driver's index (none: nothing is published) */
  attach(index: ReadIndex | undefined): void {
    for (const ino of [...this.files.keys()]) this.retractFile(ino);
    for (const ino of [...this.clean]) this.setClean(ino, false);
    for (const ino of [...this.attrs]) this.retractAttr(ino);
    this.index = index;
  }

  /** whether the driver can answer GETATTR (ReadIndex.publishAttr) */
  get takesAttrs(): boolean {
    return this.index?.publishAttr !== undefined;
  }

  /** the driver answers GETATTRs of attr.ino with attr (current: see the rules above) */
  publishAttr(attr: Attr): void {
    if (!this.index?.publishAttr) return;
    this.attrEpoch++;
    this.attrs.add(attr.ino);
    this.index.publishAttr(attr);
  }

  retractAttr(ino: Ino): void {
    this.attrEpoch++;
    if (!this.attrs.delete(ino)) return;
    this.index?.retractAttr?.(ino);
  }

  /** whether the file has nothing uncommitted (false: before any change is acknowledged) */
  setClean(ino: Ino, clean: boolean): void {
    if (!this.index || this.clean.has(ino) === clean) return;
    if (clean) this.clean.add(ino);
    else this.clean.delete(ino);
    this.index.setClean(ino, clean);
  }

  get active(): boolean {
    return this.index !== undefined;
  }

  /** chunks published now */
  get chunks(): number {
    let n = 0;
    for (const m of this.files.values()) n += m.size;
    return n;
  }

  publish(ino: Ino, size: number, chunkSize: number, idx: number, blobId: string | null, data: Uint8Array | null, mark = false): void {
    if (!this.index) return;
    const old = this.files.get(ino)?.get(idx);
    // Already published as it is: the driver's size is current (every size change goes through setSize or
    // a retract), so nothing to say again.
    if (old && old.blobId === blobId && old.data === data && !old.file && !mark) return;
    this.record(ino, idx, { data, blobId });
    this.index.publish(ino, size, chunkSize, idx, data, mark);
  }

  /** whether the driver can take files (ReadIndex.publishFile) */
  get takesFiles(): boolean {
    return this.index?.publishFile !== undefined;
  }

  /** chunk idx is the first `length` bytes of the file at `path` (a blob file); see ReadIndex.publishFile */
  publishFile(ino: Ino, size: number, chunkSize: number, idx: number, path: string, length: number, mark = false): void {
    if (!this.index?.publishFile) return;
    this.record(ino, idx, { data: null, blobId: null, file: true });
    this.index.publishFile(ino, size, chunkSize, idx, path, length, mark);
    if (this.fileChunks.size > MAX_FILE_CHUNKS) {
      const [, oldest] = this.fileChunks.entries().next().value!;
      this.retractChunk(oldest.ino, oldest.idx);
    }
  }

  /** what chunk idx is published as now, in place of what it was (whose bookkeeping goes) */
  private record(ino: Ino, idx: number, e: Entry): void {
    let m = this.files.get(ino);
    if (!m) this.files.set(ino, (m = new Map()));
    const old = m.get(idx);
    if (old) this.unindex(ino, idx, old);
    m.set(idx, e);
    if (e.blobId) this.byBlob.set(e.blobId, { ino, idx });
    if (e.file) this.fileChunks.set(`${ino}/${idx}`, { ino, idx });
  }

  /** drops a published chunk from the blob and file-chunk indexes */
  private unindex(ino: Ino, idx: number, e: Entry): void {
    if (e.blobId) this.byBlob.delete(e.blobId);
    if (e.file) this.fileChunks.delete(`${ino}/${idx}`);
  }

  has(ino: Ino, idx: number): boolean {
    return this.files.get(ino)?.has(idx) ?? false;
  }

  /** the file's size changed (a write grew it) */
  setSize(ino: Ino, size: number): void {
    if (this.files.has(ino)) this.index?.setSize(ino, size);
  }

  retractChunk(ino: Ino, idx: number): void {
    const m = this.files.get(ino);
    const e = m?.get(idx);
    if (!m || !e) return;
    // The last chunk takes the file with it, so the driver never keeps a size nobody updates.
    if (m.size === 1) return this.retractFile(ino);
    this.index?.retract(ino, idx);
    m.delete(idx);
    this.unindex(ino, idx, e);
  }

  retractFile(ino: Ino): void {
    const m = this.files.get(ino);
    if (!m) return;
    this.index?.retract(ino);
    for (const [idx, e] of m) this.unindex(ino, idx, e);
    this.files.delete(ino);
  }

  /** the blob cache dropped a blob: whatever published it is taken back */
  blobDropped(blobId: string): void {
    const at = this.byBlob.get(blobId);
    if (at) this.retractChunk(at.ino, at.idx);
  }
}
