/**
 * Finding every guest-RAM block of a QEMU and where it lives in QEMU's address space.
 *
 * QEMU knows its RAM blocks (`x-query-ramblock`), which of them are memory backends
 * (`query-memdev`), which backends sit behind hot-pluggable devices
 * (`query-memory-devices`: virtio-mem, DIMMs) and where each block appears in guest
 * physical memory (`info mtree -f`). It does not say at which host address a block is
 * mapped, except through the HMP command `gpa2hva`, which we use: the block's host
 * base is gpa2hva(gpa of its first byte) minus that byte's offset in the block. The
 * mapping that holds the host range, in /proc/PID/maps, tells how it is backed: a shared
 * memfd or private anonymous memory (both supported), or something we refuse
 * (hugetlbfs, a file, anonymous shared memory).
 */
import { ElasticmemError } from '../../native/errors.ts';
import type { RegionSpec } from '../../native/index.ts';
import { backingOf, readMaps, readUffdRegistered, type Mapping } from './procmaps.ts';

/** What ramblock discovery needs from a QEMU monitor (QMP socket or libvirt passthrough). */
export interface Monitor {
  qmp<T = unknown>(cmd: string, args?: Record<string, unknown>): Promise<T>;
  hmp(commandLine: string): Promise<string>;
}

export interface RamBlockInfo { name: string; pageSize: number; used: number; total: number }

export function parseRamblocks(text: string): RamBlockInfo[] {
  const out: RamBlockInfo[] = [];
  const unit: Record<string, number> = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 };
  for (const line of text.split('\n')) {
    const m = /^\s*(\S+)\s+(\d+)\s*(B|KiB|MiB|GiB)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s*$/i.exec(line);
    if (!m) continue;
    out.push({ name: m[1]!, pageSize: Number(m[2]) * (unit[m[3]!] ?? 1), used: Number(BigInt('0x' + m[5])), total: Number(BigInt('0x' + m[6])) });
  }
  return out;
}

/** First guest-physical address of each RAM memory region in the system flat view, with the region offset. */
export function parseMtreeRam(text: string): Map<string, { gpa: bigint; offset: bigint }> {
  const out = new Map<string, { gpa: bigint; offset: bigint }>();
  let inSystem = false;
  for (const line of text.split('\n')) {
    if (/^FlatView/.test(line)) { inSystem = false; continue; }
    if (/Root memory region: system\b/.test(line)) { inSystem = true; continue; }
    if (!inSystem) continue;
    const m = /^\s*([0-9a-f]+)-([0-9a-f]+)\s+\(prio\s+-?\d+,\s*ram\):\s+(\S+)(?:\s+@([0-9a-f]+))?/.exec(line);
    if (!m) continue;
    const name = m[3]!;
    const gpa = BigInt('0x' + m[1]);
    const offset = m[4] ? BigInt('0x' + m[4]) : 0n;
    const prev = out.get(name);
    if (!prev || gpa - offset < prev.gpa - prev.offset || (gpa - offset === prev.gpa - prev.offset && offset < prev.offset)) out.set(name, { gpa, offset });
  }
  return out;
}

interface MemdevInfo { id?: string; size: number; share?: boolean }
export interface MemoryDevice { type: string; data: { id?: string; memdev?: string; memaddr?: number; size?: number; 'max-size'?: number; 'requested-size'?: number; 'block-size'?: number } }

export interface GuestMemory {
  regions: RegionSpec[];
  /** Guest-visible RAM now: boot RAM plus what memory devices have plugged. */
  guestRamBytes: number;
  /** Bytes under the pager (boot RAM and the full backends of memory devices). */
  managedBytes: number;
  memoryDevices: MemoryDevice[];
  /** 'memfd', 'anon' or 'mixed' for messages. */
  backing: string;
  /**
   * Memory backends QEMU has that no guest address uses yet (an object-add whose
   * device_add has not come): not paged; the daemon looks again later (ram-watch).
   * Only from QMP discovery.
   */
  unplaced?: string[];
}

/** Memory devices whose backend the guest does not use as RAM: persistent memory, SGX. */
const NOT_RAM_DEVICES = new Set(['nvdimm', 'virtio-pmem', 'sgx-epc']);

/** Guest RAM the memory devices have plugged (not nvdimm and the like). */
export function pluggedBytes(devices: MemoryDevice[]): number {
  return devices.reduce((s, d) => s + (NOT_RAM_DEVICES.has(d.type) ? 0 : d.data.size ?? 0), 0);
}

/**
 * `m` with QEMU's memory devices as they are now: its guest RAM is its boot RAM (what
 * the devices it knew do not explain) plus what these have plugged. Guest RAM and the
 * device list always change together, so a grow whose blocks the guest plugs later
 * (grow --no-wait) is counted right by the next look.
 */
export function withDevices(m: GuestMemory, devices: MemoryDevice[]): void {
  const boot = m.guestRamBytes - pluggedBytes(m.memoryDevices);
  m.memoryDevices = devices;
  m.guestRamBytes = boot + pluggedBytes(devices);
}

const lastComponent = (s: string) => s.slice(s.lastIndexOf('/') + 1);

function explainUnsupported(kind: string, block: string, m: Mapping): string {
  switch (kind) {
    case 'hugetlb': return `RAM block '${block}' is backed by huge pages (${m.path}); elasticmem pages 4 KiB guest RAM only. Use <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking> without <hugepages/>, or libvirt's default private memory`;
    case 'file': return `RAM block '${block}' is backed by a file (${m.path}, memory-backend-file); elasticmem supports a shared memfd (<source type='memfd'/> with <access mode='shared'/>) or private anonymous memory (libvirt's default)`;
    case 'anon-shared': return `RAM block '${block}' is shared anonymous memory (memory-backend-ram,share=on); elasticmem cannot drop pages of it. Use a memfd backend (memory-backend-memfd,share=on) or private memory`;
    default: return `RAM block '${block}' has an unsupported backing (${m.path || 'anonymous'} ${m.perms})`;
  }
}

/** Discover the guest-RAM regions of QEMU process `pid`, ordered stably (store keys are per region index). */
/**
 * The store key part of a RAM block: a hash of its name (FNV-1a, folded to 21 bits so
 * page keys stay exact JavaScript numbers). A block keeps its keys whatever order the
 * blocks are listed in, so a daemon that takes over after memory was hot-added finds
 * every page.
 */
export function regionKeyId(name: string): number {
  let h = 0x811c9dc5;
  for (const b of Buffer.from(name, 'utf8')) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return (h ^ (h >>> 21)) & 0x1fffff;
}

function assignKeyIds(regions: RegionSpec[], pid: number): void {
  const seen = new Map<number, string>();
  for (const r of regions) {
    r.keyId = regionKeyId(r.name);
    const other = seen.get(r.keyId);
    if (other !== undefined) {
      throw new ElasticmemError(`RAM blocks '${other}' and '${r.name}' of QEMU pid ${pid} hash to the same store key id; rename one of their memory backends (the id of its memory-backend object)`, 'EM_ATTACH_NO_REGION');
    }
    seen.set(r.keyId, r.name);
  }
}

/**
 * The region spec of a RAM block of `used` bytes at host address `base` in QEMU pid's
 * address space, checked against its mappings: every byte mapped, one backing, a
 * supported one. memfd regions get the map_files path the pager opens the memfd by.
 */
function placeBlock(pid: number, maps: Mapping[], name: string, base: bigint, used: number): RegionSpec {
  const end = base + BigInt(used);
  // The block may span several VMAs (madvise and uffd registration split them); all
  // must be contiguous and of the same backing.
  const covering = maps.filter((m) => m.hi > base && m.lo < end).sort((x, y) => (x.lo < y.lo ? -1 : 1));
  if (covering.length === 0 || covering[0]!.lo > base || covering[covering.length - 1]!.hi < end) {
    throw new ElasticmemError(`RAM block '${name}' at 0x${base.toString(16)} (+${used}) is not fully mapped in /proc/${pid}/maps`, 'EM_ATTACH_NO_REGION');
  }
  const first = covering[0]!;
  const kind = backingOf(first);
  for (let i = 0; i < covering.length; i++) {
    const m = covering[i]!;
    if (i > 0 && m.lo !== covering[i - 1]!.hi) throw new ElasticmemError(`RAM block '${name}' has a hole in its mapping at 0x${m.lo.toString(16)}`, 'EM_ATTACH_NO_REGION');
    if (backingOf(m) !== kind || (kind === 'memfd' && m.inode !== first.inode)) throw new ElasticmemError(`RAM block '${name}' is mapped from more than one backing`, 'UNSUPPORTED_MEMORY');
  }
  if (kind !== 'memfd' && kind !== 'anon') throw new ElasticmemError(explainUnsupported(kind, name, first), 'UNSUPPORTED_MEMORY');
  const spec: RegionSpec = { start: '0x' + base.toString(16), length: used, kind, name };
  if (kind === 'memfd') {
    spec.filePath = `/proc/${pid}/map_files/${first.range}`;
    spec.fileOffset = Number(first.offset + (base - first.lo));
  }
  return spec;
}

/**
 * What a take-over needs to remember of a VM's RAM without asking QEMU: QEMU answers its
 * monitor from its main thread, and with no monitor serving the userfaultfd that thread
 * may be waiting on a page (device emulation, a dump), so QMP cannot be relied on at the
 * moment a take-over is needed most. The record is written by the daemon while attached.
 */
export interface GuestMemoryRecord {
  regions: { name: string; start: string; length: number; kind: string }[];
  guestRamBytes: number;
  memoryDevices: MemoryDevice[];
}

export function recordOf(m: GuestMemory): GuestMemoryRecord {
  return {
    regions: m.regions.map((r) => ({ name: r.name, start: r.start, length: r.length, kind: r.kind })),
    guestRamBytes: m.guestRamBytes,
    memoryDevices: m.memoryDevices,
  };
}

/**
 * Guest memory from a record, checked against the process as it is now: each block must
 * still be mapped with the same backing and registered with a userfaultfd over its whole
 * range (smaps VmFlags `um`), i.e. be exactly what the dead monitor paged. Throws otherwise
 * (then QMP is the only source left).
 */
export function memoryFromRecord(pid: number, rec: GuestMemoryRecord): GuestMemory {
  const maps = readMaps(pid);
  const registered = readUffdRegistered(pid);
  const regions = rec.regions.map((r) => {
    const spec = placeBlock(pid, maps, r.name, BigInt(r.start), r.length);
    if (spec.kind !== r.kind) throw new ElasticmemError(`RAM block '${r.name}' is ${spec.kind} now, ${r.kind} when recorded`, 'RAM_CHANGED');
    if (!covers(registered, BigInt(r.start), BigInt(r.start) + BigInt(r.length))) {
      throw new ElasticmemError(`RAM block '${r.name}' at ${r.start} is not registered with a userfaultfd over its whole range`, 'RAM_CHANGED');
    }
    return spec;
  });
  return guestMemoryOf(regions, pid, rec.guestRamBytes, rec.memoryDevices);
}

/** GuestMemory of placed regions (their store key ids assigned here). */
function guestMemoryOf(regions: RegionSpec[], pid: number, guestRamBytes: number, memoryDevices: MemoryDevice[]): GuestMemory {
  assignKeyIds(regions, pid);
  const kinds = new Set(regions.map((r) => r.kind));
  return {
    regions,
    guestRamBytes,
    managedBytes: regions.reduce((s, r) => s + r.length, 0),
    memoryDevices,
    backing: kinds.size === 1 ? [...kinds][0]! : 'mixed',
  };
}

/** Whether sorted, possibly adjacent ranges cover [lo, hi) without a gap. */
function covers(ranges: { lo: bigint; hi: bigint }[], lo: bigint, hi: bigint): boolean {
  let at = lo;
  for (const r of ranges) {
    if (r.hi <= at) continue;
    if (r.lo > at) return false;
    at = r.hi;
    if (at >= hi) return true;
  }
  return at >= hi;
}

export async function discoverGuestMemory(pid: number, mon: Monitor): Promise<GuestMemory> {
  const rbText = await mon.qmp<{ 'human-readable-text': string } | string>('x-query-ramblock');
  const blocks = parseRamblocks(typeof rbText === 'string' ? rbText : rbText['human-readable-text']);
  const memdevs = await mon.qmp<MemdevInfo[]>('query-memdev');
  const devices = await mon.qmp<MemoryDevice[]>('query-memory-devices');
  const mtree = parseMtreeRam(await mon.hmp('info mtree -f'));
  const memdevIds = new Set(memdevs.map((d) => d.id).filter((x): x is string => !!x));
  const deviceMemdevs = new Set(devices.map((d) => (d.data.memdev ? lastComponent(d.data.memdev) : '')).filter(Boolean));
  const notRam = new Set(devices.filter((d) => NOT_RAM_DEVICES.has(d.type) && d.data.memdev).map((d) => lastComponent(d.data.memdev!)));
  // (a backend no device uses and no guest address maps: its RAM block has no name yet)
  const unplaced = [...memdevIds].filter((id) => !notRam.has(id) && !deviceMemdevs.has(id) && !mtree.has(id) && !blocks.some((b) => lastComponent(b.name) === id));

  const guestBlocks = blocks.filter((b) => (memdevIds.has(lastComponent(b.name)) && !notRam.has(lastComponent(b.name))) || b.name === 'pc.ram');
  if (guestBlocks.length === 0) throw new ElasticmemError(`QEMU pid ${pid} reports no guest RAM block (ramblocks: ${blocks.map((b) => b.name).join(', ')})`, 'EM_ATTACH_NO_REGION');

  const maps = readMaps(pid);
  const regions: RegionSpec[] = [];
  let bootBytes = 0;
  for (const b of guestBlocks) {
    const mrName = lastComponent(b.name);
    if (b.pageSize !== 4096) {
      throw new ElasticmemError(`RAM block '${b.name}' uses ${b.pageSize / 1024} KiB pages (huge pages); elasticmem pages 4 KiB guest RAM only. Remove <hugepages/> from the domain's memoryBacking`, 'UNSUPPORTED_MEMORY');
    }
    const where = mtree.get(mrName);
    if (!where) throw new ElasticmemError(`RAM block '${b.name}' is not mapped into guest memory (info mtree); cannot place it`, 'EM_ATTACH_NO_REGION');
    const out = await mon.hmp(`gpa2hva 0x${where.gpa.toString(16)}`);
    const hm = /is 0x([0-9a-f]+)/i.exec(out);
    if (!hm) throw new ElasticmemError(`gpa2hva 0x${where.gpa.toString(16)} for '${b.name}' failed: ${out.trim()}`, 'EM_ATTACH_NO_REGION');
    regions.push(placeBlock(pid, maps, b.name, BigInt('0x' + hm[1]) - where.offset, b.used));
    if (!deviceMemdevs.has(mrName)) bootBytes += b.used;
  }
  regions.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
  return { ...guestMemoryOf(regions, pid, bootBytes + pluggedBytes(devices), devices), unplaced };
}
