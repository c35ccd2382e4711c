import type { Command } from '../command.ts';
const usage = `usage: elasticmem demo\n`;
const cmd: Command = { name: 'demo', summary: 'boot the test guest and show attach, resize, grow, detach', usage, async run() { process.stderr.write('demo: not written yet\n'); return 1; } };
export default cmd;
