/**
 * New guest RAM in a QEMU the daemon reaches by pid or QMP socket. libvirt announces a
 * hot-added DIMM as a device event; a plain QEMU announces it only on its QMP socket,
 * which serves one client at a time, so the daemon cannot keep it open to listen. What
 * shows the DIMM without QMP: QEMU maps the DIMM's memory backend, a new mapping of at
 * least a DIMM's size (128 MiB on x86) in /proc/PID/maps. The daemon reads the maps
 * once a second (a few hundred lines) and asks QMP which RAM blocks exist only when
 * such a mapping appears.
 */
import type { RegionSpec } from '../../native/index.ts';
import { readMaps } from '../targets/procmaps.ts';

/** x86 memory hot-add granularity (a Linux memory block): no DIMM is smaller. */
export const DIMM_MIN_BYTES = 128 << 20;

/**
 * Mappings of process `pid` of at least DIMM_MIN_BYTES that overlap none of `regions`
 * (the RAM the pager has), as one string to compare with the last look ('' when none).
 * Other large mappings (QEMU's TCG code buffer) stay in it unchanged from look to look.
 * Throws when /proc/PID/maps cannot be read (QEMU gone).
 */
export function unpagedLargeMappings(pid: number, regions: Pick<RegionSpec, 'start' | 'length'>[]): string {
  const ram = regions.map((r) => ({ lo: BigInt(r.start), hi: BigInt(r.start) + BigInt(r.length) }));
  return readMaps(pid)
    .filter((m) => m.hi - m.lo >= BigInt(DIMM_MIN_BYTES) && !ram.some((r) => r.lo < m.hi && m.lo < r.hi))
    .map((m) => m.range)
    .join(' ');
}
