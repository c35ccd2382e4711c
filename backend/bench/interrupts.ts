/**
 * TLB-shootdown interrupts, from /proc/interrupts: a CPU that unmaps pages another CPU
 * may still have cached sends it an interrupt to flush them. The pager's hole punches
 * of scattered memfd pages each need one (the kernel's own reclaim and one injected
 * MADV_DONTNEED batch theirs), and on a VM each stops the guest's CPU for some µs, so
 * the benchmarks count them over the timed touches.
 */
import fs from 'node:fs';

/** Shootdowns received so far by all CPUs together; null where the kernel does not count them (no "TLB:" row: not x86). */
export function tlbShootdowns(text = readInterrupts()): number | null {
  const row = text.split('\n').find((l) => /^\s*TLB:/.test(l));
  if (!row) return null;
  const counts = row.replace(/^\s*TLB:/, '').trim().split(/\s+/).filter((f) => /^\d+$/.test(f)).map(Number);
  return counts.reduce((a, b) => a + b, 0);
}

function readInterrupts(): string {
  try {
    return fs.readFileSync('/proc/interrupts', 'utf8');
  } catch {
    return '';
  }
}

/** b - a, or null when either is unknown. */
export function countedBetween(a: number | null, b: number | null): number | null {
  return a === null || b === null ? null : b - a;
}
