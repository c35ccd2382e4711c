/** /proc/PID/maps, parsed: which mapping holds a host address, and what backs it. */
import { readSmaps, type Mapping } from '../../native/regions.ts';

// (one parser of /proc/PID/maps, in native/regions.ts, which the native layer needs too)
export { parseMaps, readMaps, type Mapping } from '../../native/regions.ts';

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
