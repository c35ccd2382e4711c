#!/usr/bin/env node
// The `elasticmem` command. Registers tsx so the TypeScript sources run directly
// (no compile step), then hands over to the CLI dispatcher.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../backend/cli/main.ts');
const code = await main(process.argv.slice(2));
process.exitCode = code;
