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

/** Children of `pid` whose command line contains every one of `words` (their pids). */
export function childrenMatching(pid: number, words: string[]): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      // stat: "pid (comm) state ppid ...", comm may hold spaces: parse after the last ')'
      const stat = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid !== pid) continue;
      const cmd = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      if (words.every((w) => cmd.includes(w))) out.push(Number(e));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** The pids of `pids` still alive (not even a zombie) after up to `timeoutMs`. */
export async function stillAlive(pids: number[], timeoutMs: number): Promise<number[]> {
  const alive = () => pids.filter((p) => {
    try {
      const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
    } catch {
      return false;
    }
  });
  for (const end = Date.now() + timeoutMs; Date.now() < end && alive().length; await new Promise((r) => setTimeout(r, 50)));
  return alive();
}
