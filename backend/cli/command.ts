/** The shape of one CLI command (one file per command in commands/), and shared helpers. */
import path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ElasticmemError } from '../../native/errors.ts';

export interface Command {
  name: string;
  summary: string;
  /** Full help: usage line, options, examples. */
  usage: string;
  run(args: string[]): Promise<number>;
}

export const EXIT_OK = 0;
export const EXIT_FAIL = 1;
export const EXIT_USAGE = 2;

/** Raised for command-line mistakes: printed with a pointer to --help, exit 2. */
export class UsageError extends ElasticmemError {
  constructor(message: string, code = 'USAGE') { super(message, code); }
}

/**
 * Codes of errors that mean the command line was wrong (a size, a store URI, a key
 * file, an option's value) when the CLI raises them itself, before asking the daemon:
 * exit 2 like a UsageError. The same codes answered by the daemon stay failures (1).
 */
export const BAD_INPUT_CODES: ReadonlySet<string> = new Set(['USAGE', 'BAD_SIZE', 'BAD_STORE_URI', 'BAD_STORE_KEY', 'BAD_TLS_CA', 'BAD_VM', 'EM_BAD_ARG', 'BAD_ARG', 'BAD_SOCKET', 'BAD_CONFIG']);

/** An error raised by a sub-command (bench pager, ...): which command's --help to point to. */
export function commandOf(e: unknown): string | undefined {
  return (e as { command?: string } | null)?.command;
}
export function tagCommand(e: unknown, command: string): unknown {
  if (e && typeof e === 'object' && !commandOf(e)) (e as { command?: string }).command = command;
  return e;
}

type Options = NonNullable<ParseArgsConfig['options']>;

export const SOCKET_OPT = { socket: { type: 'string' } } as const satisfies Options;

/** Help lines of the options the daemon's commands share. */
export const JSON_HELP = `  --json           print the result as one JSON object on stdout (on failure:
                   {"error": {"code", "message"}}, and the exit code says which)`;
export const SOCKET_HELP = '  --socket PATH    daemon control socket (default /run/elasticmem/elasticmem.sock)';

/**
 * parseArgs with our conventions: --help everywhere, unknown options and wrong
 * positional counts are UsageErrors that name the problem.
 */
export function parse<O extends Options>(cmd: string, args: string[], options: O, positionals: { min: number; max: number; names: string }) {
  args = joinNegativeValues(options, args);
  let parsed;
  try {
    parsed = parseArgs({ args, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true, tokens: true });
  } catch (e) {
    throw new UsageError(`${cmd}: ${parseArgsMessage((e as Error).message, args)}`);
  }
  // A value given twice would silently be the last one (--store a --store b): say so. An
  // empty one ('--store-key ""' from an unset variable) would read as not given.
  const given = new Map<string, string>();
  for (const tok of parsed.tokens ?? []) {
    if (tok.kind !== 'option' || tok.value === undefined) continue;
    const prev = given.get(tok.name);
    if (prev !== undefined) throw new UsageError(`${cmd}: --${tok.name} given twice (${JSON.stringify(prev)}, ${JSON.stringify(tok.value)}): give it once`);
    if (tok.value.trim() === '') throw new UsageError(`${cmd}: --${tok.name} needs a value, not an empty string`);
    given.set(tok.name, tok.value);
  }
  const sock = (parsed.values as Record<string, unknown>).socket;
  if (typeof sock === 'string') (parsed.values as Record<string, unknown>).socket = socketPath(cmd, sock);
  const help = !!(parsed.values as Record<string, unknown>).help;
  if (!help) {
    const n = parsed.positionals.length;
    if (n < positionals.min) throw new UsageError(`${cmd}: missing ${positionals.names}`);
    if (n > positionals.max) throw new UsageError(`${cmd}: unexpected argument '${parsed.positionals[positionals.max]}'`);
  }
  return { values: parsed.values as { [K in keyof O]?: O[K] extends { type: 'boolean' } ? boolean : string } & { help?: boolean }, positionals: parsed.positionals, help };
}

/**
 * --socket: a Unix socket path, absolute (the daemon may run elsewhere). Node would take
 * an all-digit value for a TCP port: a daemon would listen on the network.
 */
function socketPath(cmd: string, value: string): string {
  if (/^\d+$/.test(value.trim())) throw new UsageError(`--socket ${value}: give the path of a Unix socket, e.g. /run/elasticmem/elasticmem.sock (a number is not one)`, 'BAD_SOCKET');
  return path.resolve(value);
}

/** parseArgs' message, told the way a user of this command needs it. */
function parseArgsMessage(message: string, args: string[]): string {
  // `--local --socket X`: the value was forgotten (parseArgs suggests '--local=-XYZ').
  const ambiguous = /^Option '(--[^' ]+)' argument is ambiguous/.exec(message);
  if (ambiguous) return `${ambiguous[1]} needs a value before the next option (e.g. ${ambiguous[1]} VALUE)`;
  // `grow web1 -5M`: a negative number where an argument goes, not an option.
  const dashDigit = /^Unknown option '-(\d)/.exec(message);
  if (dashDigit) {
    const arg = args.find((a) => a.startsWith(`-${dashDigit[1]}`)) ?? `-${dashDigit[1]}`;
    return `'${arg}' cannot be negative: give a positive value`;
  }
  return message.replace(/\. To specify a positional argument.*$/, '');
}

/**
 * `--local -5M`: parseArgs would take -5M for an option and refuse it as ambiguous. A
 * value that looks like a negative number is the string option's value (whose own
 * check then says why it is wrong).
 */
function joinNegativeValues(options: Options, args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const next = args[i + 1];
    if (next !== undefined && /^-\d/.test(next) && isStringOption(options, a)) {
      out.push(`${a}=${next}`);
      i++;
    } else {
      out.push(a);
    }
  }
  return out;
}

function isStringOption(options: Options, arg: string): boolean {
  const m = /^--([^=]+)$/.exec(arg);
  return !!m && options[m[1]!]?.type === 'string';
}

export function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v) + '\n');
}
