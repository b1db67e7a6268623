#!/usr/bin/env node
// The kvfs command. The CLI itself is bin/cli.ts, compiled to dist/ by `npm install` (prepare) or `npm run build`.

// SIGUSR1 would start Node's inspector on 127.0.0.1:9229, where any local user could run code as this process
// (root, for most mounts). A listener of our own replaces that hook; it is installed before anything else
// loads, and bin/cli.ts closes an inspector that a signal raced open before this line.
process.on('SIGUSR1', () => console.error('kvfs: SIGUSR1 ignored: the inspector is disabled (it would let any local user run code as this daemon)'));

const { existsSync } = await import('node:fs');
const { fileURLToPath } = await import('node:url');
const cli = new URL('../dist/bin/cli.js', import.meta.url);
if (!existsSync(fileURLToPath(cli))) {
  console.error('kvfs: not built yet: run `npm install` (or `npm run build`) in ' + fileURLToPath(new URL('..', import.meta.url)));
  process.exit(1);
}
await import(cli.href);
