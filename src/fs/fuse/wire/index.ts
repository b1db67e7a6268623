/**
 * The FUSE wire layer: bytes and errnos, nothing of the filesystem or the store.
 *   opcodes.ts        the opcode table            request.ts        parseRequest and the Request union
 *   structs.ts        kernel struct layouts       errors.ts         typed parse errors
 *   reply.ts          headers, errors, raw bytes  reply-bodies.ts   fixed reply structs (REPLY.*)
 *   dirent-packer.ts  READDIR / READDIRPLUS       negotiate-init.ts the INIT answer
 *   init-flags.ts     INIT capability bits        flags.ts          the other constant groups
 */
export * from './opcodes.js';
export * from './structs.js';
export * from './errors.js';
export * from './request.js';
export * from './reply.js';
export * from './reply-bodies.js';
export * from './dirent-packer.js';
export * from './negotiate-init.js';
export * from './init-flags.js';
export * from './flags.js';
export { type Fields, type Layout, type FieldKind } from './layout.js';
