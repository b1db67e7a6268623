#!/usr/bin/env node
// The kvfs command. The CLI itself is bin/cli.ts, compiled to dist/ by `npm install` (prepare) or `npm run build`.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
const cli = new URL('../dist/bin/cli.js', import.meta.url);
if (!existsSync(fileURLToPath(cli))) {
  console.error('kvfs: not built yet: run `npm install` (or `npm run build`) in ' + fileURLToPath(new URL('..', import.meta.url)));
  process.exit(1);
}
await import(cli.href);
