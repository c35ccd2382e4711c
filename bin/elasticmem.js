#!/usr/bin/env node
// The `elasticmem` command. Registers tsx so the TypeScript sources run directly
// (no compile step), then hands over to the CLI dispatcher.
import { fileURLToPath } from 'node:url';

let register;
try {
  ({ register } = await import('tsx/esm/api'));
} catch (e) {
  // A clone on which the set-up has not run yet: say so instead of a module-resolution trace.
  if (e?.code !== 'ERR_MODULE_NOT_FOUND') throw e;
  const repo = fileURLToPath(new URL('..', import.meta.url)).replace(/\/$/, '');  // (decoded: a path may hold spaces)
  process.stderr.write(
    `elasticmem: its Node.js dependencies are not installed (${e.message.split('\n')[0]})\n` +
      `  run the set-up first: cd ${repo} && npm run setup\n`,
  );
  process.exit(2);
}

register();
const { main } = await import('../backend/cli/main.ts');
const code = await main(process.argv.slice(2));
process.exitCode = code;
