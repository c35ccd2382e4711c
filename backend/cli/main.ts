/**
 * `elasticmem` command dispatcher: one command per file in commands/, each with its own
 * usage text. Exit codes: 0 success, 1 the operation failed, 2 the command line was wrong.
 */
import type { ElasticmemError } from '../../native/errors.ts';
import { BAD_INPUT_CODES, EXIT_FAIL, EXIT_USAGE, UsageError, commandOf, printJson, type Command } from './command.ts';
import { DaemonError } from './client.ts';
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
    'Sizes take K, M, G, T suffixes, binary (512M = 512MiB = 512MB): 512M, 1.5G.',
    'Commands talk to the daemon over /run/elasticmem/elasticmem.sock (root only);',
    '--socket PATH to change.',
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
      // help bench pager = bench pager --help
      if (rest.length > 1) return report(c, await runCommand(c, [...rest.slice(1), '--help']), false);
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
    const message = name.startsWith('-')
      ? `'${name}' comes before the command: options go after it (elasticmem <command> ${name} ...)`
      : `unknown command '${name}'; commands: ${COMMANDS.map((c) => c.name).join(', ')}, help`;
    if (wantsJson(rest)) printJson({ error: { code: 'USAGE', message } });
    process.stderr.write(`elasticmem: ${message}\n`);
    return EXIT_USAGE;
  }
  return report(cmd, await runCommand(cmd, rest), wantsJson(rest));
}

/** --json among the options (not after `--`, where it would be an argument). */
function wantsJson(args: string[]): boolean {
  const end = args.indexOf('--');
  return (end < 0 ? args : args.slice(0, end)).includes('--json');
}

async function runCommand(cmd: Command, args: string[]): Promise<number | Error> {
  try {
    return await cmd.run(args);
  } catch (e) {
    return e instanceof Error ? e : new Error(String(e));
  }
}

/**
 * A failed command: the message (with its code) on stderr; with --json also
 * {"error": {code, message}} on stdout, so a script reading stdout gets one JSON
 * object either way. Exit 2 when the command line was wrong, 1 when the operation failed.
 */
function report(cmd: Command, r: number | Error, json: boolean): number {
  if (typeof r === 'number') return r;
  const err = r as ElasticmemError;
  const name = commandOf(err) ?? cmd.name;
  const badInput = err instanceof UsageError || (!(err instanceof DaemonError) && BAD_INPUT_CODES.has(err.code));
  if (json) printJson({ error: { code: err.code ?? 'EM_ERROR', message: err.message } });
  if (err instanceof UsageError && err.code === 'USAGE') process.stderr.write(`elasticmem: ${err.message}\n(see: elasticmem ${name} --help)\n`);
  else process.stderr.write(`elasticmem ${name}: error: ${err.message}${err.code ? ` [${err.code}]` : ''}\n${badInput ? `(see: elasticmem ${name} --help)\n` : ''}`);
  return badInput ? EXIT_USAGE : EXIT_FAIL;
}
