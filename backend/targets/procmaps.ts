/** /proc/PID/maps, parsed: which mapping holds a host address, and what backs it. */
import fs from 'node:fs';
import { readSmaps } from '../../native/regions.ts';

export interface Mapping {
  lo: bigint;
  hi: bigint;
  /** lo-hi exactly as the kernel prints it: also the name of the /proc/PID/map_files entry. */
  range: string;
  perms: string;
  offset: bigint;
  dev: string;
  inode: number;
  path: string;
}

export function parseMaps(text: string): Mapping[] {
  const out: Mapping[] = [];
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+)\s+(\S{4})\s+([0-9a-f]+)\s+(\S+)\s+(\d+)\s*(.*)$/.exec(line);
    if (!m) continue;
    out.push({
      lo: BigInt('0x' + m[1]), hi: BigInt('0x' + m[2]), range: `${m[1]}-${m[2]}`, perms: m[3]!,
      offset: BigInt('0x' + m[4]), dev: m[5]!, inode: Number(m[6]), path: m[7]!.trim(),
    });
  }
  return out;
}

export function readMaps(pid: number): Mapping[] {
  return parseMaps(fs.readFileSync(`/proc/${pid}/maps`, 'utf8'));
}

export type Backing = 'memfd' | 'anon' | 'anon-shared' | 'hugetlb' | 'file';

export function backingOf(m: Mapping): Backing {
  const shared = m.perms[3] === 's';
  if (m.path.startsWith('/memfd:')) {
    if (/hugetlb/.test(m.path)) return 'hugetlb';
    return shared ? 'memfd' : 'file';
  }
  if (m.path.startsWith('/anon_hugepage')) return 'hugetlb';
  if (m.path === '' ) return shared ? 'anon-shared' : 'anon';
  if (m.path.startsWith('/dev/zero') || m.path.startsWith('/SYSV')) return 'anon-shared';
  if (m.path.startsWith('/dev/hugepages') || m.path.includes('hugetlbfs')) return 'hugetlb';
  return 'file';
}

/**
 * The ranges of pid's address space registered with a userfaultfd for missing pages
 * (smaps VmFlags `um`), sorted. Only a monitor that registered them, or a target that
 * still holds the uffd of one that died, has any.
 */
export function readUffdRegistered(pid: number): { lo: bigint; hi: bigint }[] {
  return readSmaps(pid)
    .filter((m) => m.vmFlags.includes('um'))
    .map(({ lo, hi }) => ({ lo, hi }))
    .sort((x, y) => (x.lo < y.lo ? -1 : 1));
}
