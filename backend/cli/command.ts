/** The shape of one CLI command (one file per command in commands/), and shared helpers. */
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
  constructor(message: string) { super(message, 'USAGE'); }
}

type Options = NonNullable<ParseArgsConfig['options']>;

export const SOCKET_OPT = { socket: { type: 'string' } } as const satisfies Options;

/**
 * parseArgs with our conventions: --help everywhere, unknown options and wrong
 * positional counts are UsageErrors that name the problem.
 */
export function parse<O extends Options>(cmd: string, args: string[], options: O, positionals: { min: number; max: number; names: string }) {
  let parsed;
  try {
    parsed = parseArgs({ args, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError(`${cmd}: ${(e as Error).message.replace(/\. To specify a positional argument.*$/, '')}`);
  }
  const help = !!(parsed.values as Record<string, unknown>).help;
  if (!help) {
    const n = parsed.positionals.length;
    if (n < positionals.min) throw new UsageError(`${cmd}: missing ${positionals.names}`);
    if (n > positionals.max) throw new UsageError(`${cmd}: unexpected argument '${parsed.positionals[positionals.max]}'`);
  }
  return { values: parsed.values as { [K in keyof O]?: O[K] extends { type: 'boolean' } ? boolean : string } & { help?: boolean }, positionals: parsed.positionals, help };
}

export function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v) + '\n');
}
