/** A process's start time, which with its pid names that one process for good. */
import fs from 'node:fs';

/** Start time in clock ticks since boot (field 22 of /proc/PID/stat), or null if the process is gone. */
export function startTimeOf(pid: number): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may contain spaces and parentheses: split after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(rest[19]);
  } catch {
    return null;
  }
}
