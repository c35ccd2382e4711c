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

/** Each thread of `pid` with its wait channel ("tid:wchan"), for messages. */
function threadWaits(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  let tids: string[] = [];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      out.set(Number(tid), fs.readFileSync(`/proc/${pid}/task/${tid}/wchan`, 'utf8'));
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}

/**
 * True once at least `n` threads of `pid` sleep in a userfaultfd fault in 20 samples in a
 * row (5 ms apart) within `timeoutMs`: they wait for a monitor, not merely run slowly.
 */
export async function threadsWaitOnUffd(pid: number, n: number, timeoutMs = 10_000): Promise<boolean> {
  let inARow = 0;
  for (const end = Date.now() + timeoutMs; Date.now() < end; await new Promise((r) => setTimeout(r, 5))) {
    const waiting = [...threadWaits(pid).values()].filter((w) => /userfault/.test(w)).length;
    inARow = waiting >= n ? inARow + 1 : 0;
    if (inARow >= 20) return true;
  }
  return false;
}

/**
 * Waits until QEMU's monitor is stuck behind a userfaultfd fault: its main thread (which
 * executes monitor commands) sleeps in a fault itself, or sleeps on a lock (QEMU's big
 * lock, held by a vCPU thread that faulted while emulating a device) while another of its
 * threads sleeps in a fault, in 20 samples in a row. `detail` says which, or, after
 * `timeoutMs`, what every thread was waiting on.
 */
export async function qemuMonitorStuckOnUffd(pid: number, timeoutMs = 30_000): Promise<{ stuck: boolean; detail: string }> {
  let inARow = 0;
  let last = new Map<number, string>();
  for (const end = Date.now() + timeoutMs; Date.now() < end; await new Promise((r) => setTimeout(r, 5))) {
    last = threadWaits(pid);
    const main = last.get(pid) ?? '';
    const faulting = [...last].filter(([, w]) => /userfault/.test(w)).map(([tid]) => tid);
    let how = '';
    if (/userfault/.test(main)) how = 'the main thread waits in a userfaultfd fault';
    else if (/futex/.test(main) && faulting.length) how = `the main thread waits on a lock while thread ${faulting.join(', ')} waits in a userfaultfd fault`;
    inARow = how ? inARow + 1 : 0;
    if (inARow >= 20) return { stuck: true, detail: how };
  }
  return { stuck: false, detail: `after ${timeoutMs} ms, threads and their wait channels: ${[...last].map(([tid, w]) => `${tid}:${w || '-'}`).join(' ')}` };
}

/**
 * Pages of `pid`'s mapping that starts at `start` (hex) present in its page tables
 * (smaps' Rss): what the target still holds in host memory, whatever the pager counts.
 */
export function mappedPages(pid: number, start: string): number {
  const head = `${BigInt(start).toString(16)}-`;
  const lines = fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n');
  const at = lines.findIndex((l) => l.startsWith(head));
  if (at < 0) throw new Error(`process ${pid} has no mapping at ${start}`);
  for (let i = at + 1; i < lines.length && !/^[0-9a-f]+-/.test(lines[i]!); i++) {
    const m = /^Rss:\s+(\d+) kB/.exec(lines[i]!);
    if (m) return Number(m[1]) / 4;
  }
  throw new Error(`no Rss for the mapping at ${start} of process ${pid}`);
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
