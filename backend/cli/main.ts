/**
 * `elasticmem` command dispatcher: one command per file in commands/, each with its own
 * usage text. Exit codes: 0 success, 1 the operation failed, 2 the command line was wrong.
 */
import { ElasticmemError } from '../../native/errors.ts';
import { EXIT_FAIL, EXIT_USAGE, UsageError, type Command } from './command.ts';
import attach from './commands/attach.ts';
import resize from './commands/resize.ts';
import grow from './commands/grow.ts';
import detach from './commands/detach.ts';
import list from './commands/list.ts';
import stats from './commands/stats.ts';
import daemon from './commands/daemon.ts';
import bench from './commands/bench.ts';
import demo from './commands/demo.ts';

export const COMMANDS: Command[] = [daemon, attach, resize, grow, detach, list, stats, bench, demo];

export function overview(): string {
  const w = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    'elasticmem - elastic memory for unmodified QEMU/libvirt VMs',
    '',
    'usage: elasticmem <command> [options]      (elasticmem <command> --help for details)',
    '',
    'commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`),
    `  ${'help'.padEnd(w)}  show this text, or: elasticmem help <command>`,
    '',
    'VMs are named by libvirt domain name or UUID, pid:<PID>, or qmp:<socket path>.',
    'Sizes take K, M, G suffixes (binary): 512M, 2G. Commands talk to the daemon over',
    '/run/elasticmem/elasticmem.sock (root only); --socket PATH to change.',
    '',
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === 'help' || name === '--help' || name === '-h') {
    const topic = name === 'help' ? rest[0] : undefined;
    if (topic) {
      const c = COMMANDS.find((x) => x.name === topic);
      if (!c) { process.stderr.write(`elasticmem: no such command '${topic}'\n\n${overview()}`); return EXIT_USAGE; }
      process.stdout.write(c.usage);
      return 0;
    }
    if (!name) { process.stderr.write(overview()); return EXIT_USAGE; }
    process.stdout.write(overview());
    return 0;
  }
  if (name === '--version' || name === 'version') { process.stdout.write('elasticmem 0.1.0\n'); return 0; }
  const cmd = COMMANDS.find((c) => c.name === name);
  if (!cmd) {
    process.stderr.write(`elasticmem: unknown command '${name}'; commands: ${COMMANDS.map((c) => c.name).join(', ')}, help\n`);
    return EXIT_USAGE;
  }
  try {
    return await cmd.run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`elasticmem: ${e.message}\n(see: elasticmem ${cmd.name} --help)\n`);
      return EXIT_USAGE;
    }
    const err = e as ElasticmemError;
    process.stderr.write(`elasticmem ${cmd.name}: error: ${err.message}${err.code ? ` [${err.code}]` : ''}\n`);
    return EXIT_FAIL;
  }
}
