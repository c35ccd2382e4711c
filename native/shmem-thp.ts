/**
 * Whether a memfd region of a target can hold transparent huge pages, which the pager
 * must refuse: it evicts memfd RAM 4 KiB at a time by punching holes, and punching
 * 4 KiB out of a huge shmem folio that cannot be split at that moment (a pipe, a
 * reader or a pin holds a reference) zeroes the range and leaves it in the page
 * cache: the guest then reads zeros without a fault (measured on 6.18 with
 * shmem_enabled=advise and QEMU's MADV_HUGEPAGE: the spliced copy read zeros too).
 * Debian's default (shmem_enabled=never, every size never or inherit) is safe.
 */
import fs from 'node:fs';
import type { RegionSpec } from './index.ts';
import { readSmaps, type SmapsEntry } from './regions.ts';

const SYSFS = '/sys/kernel/mm/transparent_hugepage';

function selected(file: string): string | null {
  try {
    return /\[([a-z_]+)\]/.exec(fs.readFileSync(file, 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

/**
 * The shmem THP settings: the global one and each size's (`inherit` follows the global
 * one). EM_TEST_THP_SYSFS (tests only) reads a stand-in for the sysfs folder: a test
 * must not switch the host's setting, which would reach every other memfd user.
 */
export function shmemThpPolicy(root = process.env.EM_TEST_THP_SYSFS || SYSFS): { global: string | null; sizes: Record<string, string> } {
  const sizes: Record<string, string> = {};
  let dirs: string[] = [];
  try { dirs = fs.readdirSync(root).filter((d) => d.startsWith('hugepages-')); } catch { /* no THP at all */ }
  for (const d of dirs) {
    const v = selected(`${root}/${d}/shmem_enabled`);
    if (v) sizes[d.slice('hugepages-'.length)] = v;
  }
  return { global: selected(`${root}/shmem_enabled`), sizes };
}

export interface Vma { lo: bigint; hi: bigint; thpEligible: boolean; pmdMappedKb: number; hg: boolean }
export type ShmemThpPolicy = ReturnType<typeof shmemThpPolicy>;

/** The region's mappings as the decision needs them ([] when smaps cannot be read). */
function vmasOf(pid: number, lo: bigint, hi: bigint): Vma[] {
  let entries: SmapsEntry[];
  try { entries = readSmaps(pid); } catch { return []; }
  const kb = (v: string | undefined) => parseInt(v ?? '0', 10) || 0;
  return entries
    .filter((e) => e.lo < hi && lo < e.hi)
    .map((e) => ({
      lo: e.lo,
      hi: e.hi,
      thpEligible: e.fields.get('THPeligible') === '1',
      pmdMappedKb: kb(e.fields.get('ShmemPmdMapped')) + kb(e.fields.get('FilePmdMapped')),
      hg: e.vmFlags.includes('hg'),
    }));
}

/**
 * Why huge pages may back this memfd region, or null when they cannot: huge pages
 * mapped there already, or a setting under which the kernel would allocate them
 * (`always`, `within_size`, `force`, or `advise` where QEMU asked with MADV_HUGEPAGE).
 */
export function shmemThpRisk(pid: number, region: RegionSpec, policy = shmemThpPolicy()): string | null {
  if (region.kind !== 'memfd') return null;
  const lo = BigInt(region.start), hi = lo + BigInt(region.length);
  return riskOf(vmasOf(pid, lo, hi), policy);
}

/** The decision, over the region's mappings (smaps) and the settings. */
export function riskOf(vmas: Vma[], policy: ShmemThpPolicy): string | null {
  const mapped = vmas.reduce((n, v) => n + v.pmdMappedKb, 0);
  if (mapped > 0) return `${mapped} KiB of it are mapped as huge pages already`;
  const hg = vmas.some((v) => v.hg);
  const risky = (v: string | null | undefined) => v === 'always' || v === 'within_size' || v === 'force' || (v === 'advise' && hg);
  if (policy.global === 'force') return 'shmem_enabled is force';
  for (const [size, v] of Object.entries(policy.sizes)) {
    const eff = v === 'inherit' ? policy.global : v;
    if (risky(eff)) return `hugepages-${size}/shmem_enabled is ${v}${v === 'inherit' ? ` (shmem_enabled ${policy.global})` : ''}${eff === 'advise' ? ' and QEMU asked for huge pages there (MADV_HUGEPAGE)' : ''}`;
  }
  if (risky(policy.global) && Object.keys(policy.sizes).length === 0) return `shmem_enabled is ${policy.global}`;
  if (vmas.some((v) => v.thpEligible)) return 'the kernel reports it eligible for huge pages (THPeligible in smaps)';
  return null;
}

/** The error text for a region at risk. */
export function shmemThpMessage(region: RegionSpec, why: string): string {
  return `guest RAM '${region.name}' is a memfd that can hold transparent huge pages (${why}): elasticmem evicts 4 KiB pages by punching holes, and a hole punched in a huge page can read back as zeros. Run: echo never > /sys/kernel/mm/transparent_hugepage/shmem_enabled (and set any hugepages-*/shmem_enabled that is not never or inherit to never), then restart the VM so its RAM is allocated in 4 KiB pages`;
}
