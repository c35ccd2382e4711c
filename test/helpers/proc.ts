/** Facts about a process from /proc, for tests. */
import fs from 'node:fs';
import { cmdlineOf } from '../../backend/targets/proc.ts';

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

/** The fields of /proc/PID/stat after "(comm)" (state first; comm may hold spaces), or null once it is gone. */
function statFields(pid: number): string[] | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** Children of `pid` whose command line contains every one of `words` (their pids). */
export function childrenMatching(pid: number, words: string[]): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const fields = statFields(Number(e));
    if (!fields || Number(fields[1]) !== pid) continue;  // gone meanwhile, or another parent's
    const cmd = cmdlineOf(Number(e));
    if (words.every((w) => cmd.includes(w))) out.push(Number(e));
  }
  return out;
}

/** The pids of `pids` still alive (not even a zombie) after up to `timeoutMs`. */
export async function stillAlive(pids: number[], timeoutMs: number): Promise<number[]> {
  const alive = () => pids.filter((p) => {
    const fields = statFields(p);
    return fields !== null && fields[0] !== 'Z';
  });
  for (const end = Date.now() + timeoutMs; Date.now() < end && alive().length; await new Promise((r) => setTimeout(r, 50)));
  return alive();
}
