/** Daemon log: one line per event on stderr, always naming the VM it concerns. */
export type LogFn = (vm: string, event: string, detail?: string) => void;

export const log: LogFn = (vm, event, detail) => {
  const line = `${new Date().toISOString()} elasticmem [${vm}] ${event}${detail ? `: ${detail}` : ''}\n`;
  process.stderr.write(line);
};
