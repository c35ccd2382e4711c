/** A process's start time, which with its pid names that one process for good. */
import fs from 'node:fs';
import { constants as os } from 'node:os';
import { ElasticmemError } from './errors.ts';

/** Fields after the command name of /proc/PID/stat (comm may hold spaces and parentheses). */
function statFields(pid: number): string[] | null {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') return null;
    // EMFILE, ENOMEM...: says nothing about the process; never to be taken for "gone".
    throw new ElasticmemError(`cannot read /proc/${pid}/stat: ${(e as Error).message}`, 'EM_SYSCALL', os.errno[code as keyof typeof os.errno] ?? 0, 'open');
  }
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/**
 * Start time in clock ticks since boot (field 22 of /proc/PID/stat), or null if the
 * process is gone. Throws when /proc cannot be read for another reason.
 */
export function startTimeOf(pid: number): number | null {
  const f = statFields(pid);
  return f ? Number(f[19]) : null;
}

/**
 * Has this exact process (pid and start time) ended: not there, a zombie, or another
 * process under its pid? A /proc read that fails for another reason (EMFILE, ENOMEM)
 * answers no: what is kept for a live process (its lock, its records, its pager) must
 * never be dropped on a guess.
 */
export function processEnded(pid: number, startTime: number): boolean {
  let f: string[] | null;
  try {
    f = statFields(pid);
  } catch {
    return false;
  }
  return f === null || f[0] === 'Z' || f[0] === 'X' || Number(f[19]) !== startTime;
}
