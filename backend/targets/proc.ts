/** Facts about a process from /proc. */
import fs from 'node:fs';

// (the pager's lock files name processes by it too, below this layer)
import { processEnded } from '../../native/proc-start.ts';
export { startTimeOf } from '../../native/proc-start.ts';

/**
 * Is this exact process (pid and start time) still alive and not a zombie? Only a
 * process that is not there (or another one under its pid) counts as gone: a read that
 * fails for another reason (EMFILE, ENOMEM) says nothing, and taking a live QEMU for
 * dead would abandon its pager and leave the guest waiting on its userfaultfd.
 */
export function processAlive(pid: number, startTime: number): boolean {
  return !processEnded(pid, startTime);
}

export function cmdlineOf(pid: number): string[] {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((s) => s.length > 0);
  } catch {
    return [];
  }
}

export function isQemu(pid: number): boolean {
  const argv0 = cmdlineOf(pid)[0] ?? '';
  let comm = '';
  try { comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim(); } catch { /* gone */ }
  return /qemu/.test(argv0.slice(argv0.lastIndexOf('/') + 1)) || /qemu/.test(comm);
}
