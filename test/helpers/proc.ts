/** Facts about a process from /proc, for tests. */
import fs from 'node:fs';

/**
 * True once the process's main thread sleeps in a userfaultfd fault (within `timeoutMs`):
 * QEMU's main thread, which executes monitor commands, then answers no monitor. (A fault
 * message is queued a moment before the thread is asleep in it: poll, do not read once.)
 */
export async function mainThreadWaitsOnUffd(pid: number, timeoutMs = 10_000): Promise<boolean> {
  for (const end = Date.now() + timeoutMs; Date.now() < end; await new Promise((r) => setTimeout(r, 5))) {
    if (/userfault/.test(fs.readFileSync(`/proc/${pid}/task/${pid}/wchan`, 'utf8'))) return true;
  }
  return false;
}
