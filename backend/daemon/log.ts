/**
 * Daemon log: one line per event on stderr, always naming the VM it concerns. Store
 * passwords never reach it: every line is scrubbed against the store URIs the daemon
 * was given (secrets.ts), whatever message it quotes.
 */
import { scrubKnown } from './secrets.ts';

export type LogFn = (vm: string, event: string, detail?: string) => void;

export const log: LogFn = (vm, event, detail) => {
  const line = `${new Date().toISOString()} elasticmem [${vm}] ${event}${detail ? `: ${detail}` : ''}\n`;
  process.stderr.write(scrubKnown(line));
};
