/**
 * Guest memory that grows while a VM is attached: `elasticmem grow` (virtio-mem or a
 * DIMM), and RAM added behind the daemon's back (libvirt's device-added event; for
 * pid:/qmp: QEMUs a new large mapping, ram-watch.ts). New RAM blocks go under the VM's
 * pager within the same cap.
 */
import { ElasticmemError } from '../../native/errors.ts';
import type { RegionSpec } from '../../native/index.ts';
import type { Target } from '../targets/index.ts';
import { withDevices, type MemoryDevice } from '../targets/ramblocks.ts';
import { DIMM_ALIGN, dimmSizeMessage } from '../targets/target.ts';
import { exactSize, formatSize } from '../size.ts';
import type { Session } from './session.ts';
import { log } from './log.ts';
import { unpagedLargeMappings } from './ram-watch.ts';

/** RAM blocks for a log line: "name size kind, ...". */
export function describeBlocks(regions: RegionSpec[]): string {
  return regions.map((r) => `${r.name} ${formatSize(r.length)} ${r.kind}`).join(', ');
}

/** What growing a VM needs of the daemon. */
export interface GrowthHost {
  /** Write the state file (it records each VM's guest RAM: a take-over checks caps against it). */
  saveState(): void;
  /** The daemon is stopping: start nothing new. */
  closing(): boolean;
}

/**
 * Grow the guest-visible memory of an attached VM by `bytes`: raise a virtio-mem
 * device's requested size (its backend is under the pager since attach), or add a DIMM
 * (when asked for, or when there is no virtio-mem device to raise) and page it.
 */
export async function growVm(host: GrowthHost, s: Session, bytes: number, wait: boolean, dimm: boolean): Promise<unknown> {
  const target = s.target as Target;
  return s.serial(async () => {
    if (s.state !== 'attached') throw new ElasticmemError(`VM '${s.name}' is ${s.state}; cannot grow it now`, 'VM_BUSY');
    const mon = await target.openMonitor();
    let dev: { id: string; requested: number; max: number; block: number; plugged: number };
    try {
      const devs = await mon.qmp<{ type: string; data: Record<string, number | string | undefined> }[]>('query-memory-devices');
      const vm = devs.filter((d) => d.type === 'virtio-mem');
      // A DIMM when asked for, or when there is no virtio-mem device to raise.
      if (dimm || vm.length === 0) {
        mon.close();
        return await growByDimm(host, s, target, bytes);
      }
      const cands = vm.map((d) => ({ id: String(d.data.id ?? ''), requested: Number(d.data['requested-size'] ?? 0), max: Number(d.data['max-size'] ?? 0), block: Number(d.data['block-size'] ?? 2 << 20), plugged: Number(d.data.size ?? 0) }));
      const room = cands.find((d) => d.max - d.requested >= bytes);
      if (!room) {
        const most = Math.max(...cands.map((d) => d.max - d.requested));
        throw new ElasticmemError(`cannot grow VM '${s.name}' by ${formatSize(bytes)}: its virtio-mem device has ${formatSize(most)} left (max-size ${formatSize(cands[0]!.max)}); grow by at most ${exactSize(most)}, or add a DIMM with --dimm`, 'GROW_TOO_LARGE');
      }
      if (bytes % room.block !== 0) throw new ElasticmemError(`grow size ${formatSize(bytes)} is not a multiple of the virtio-mem block size ${exactSize(room.block)}`, 'BAD_SIZE');
      if (!room.id) throw new ElasticmemError(`the virtio-mem device of '${s.name}' has no id; cannot address it`, 'NO_HOTPLUG_DEVICE');
      dev = room;
    } finally {
      mon.close();
    }
    const newReq = dev.requested + bytes;
    await target.setRequestedSize!(dev.id, newReq);
    log(s.name, 'grow requested', `virtio-mem ${dev.id} requested-size ${formatSize(dev.requested)} -> ${formatSize(newReq)} (its backend has been under the pager since attach)`);
    // Wait for the guest driver to plug the blocks (it does so within seconds).
    let plugged = dev.plugged;
    const deadline = Date.now() + (wait ? 60_000 : 0);
    for (;;) {
      const m = await target.openMonitor();
      try {
        const devs = await m.qmp<MemoryDevice[]>('query-memory-devices');
        plugged = Number(devs.find((d) => d.data.id === dev.id)?.data.size ?? plugged);
        withDevices(s.memory!, devs);
      } finally { m.close(); }
      if (plugged >= newReq || Date.now() >= deadline || host.closing()) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    host.saveState();  // (the record of its RAM: a take-over checks caps against it)
    log(s.name, plugged >= newReq ? 'grown' : 'grow pending', `guest plugged ${formatSize(plugged)} of ${formatSize(newReq)}; guest RAM now ${formatSize(s.memory!.guestRamBytes)}`);
    return { name: s.name, device: dev.id, requestedBytes: newReq, pluggedBytes: plugged, guestRamBytes: s.memory!.guestRamBytes, complete: plugged >= newReq };
  });
}

/**
 * Hot-add a DIMM and put its RAM block under the VM's pager (same cap). QEMU maps the
 * DIMM's backend when it is added; the pager registers it at once, adopting pages the
 * guest may already have touched.
 */
async function growByDimm(host: GrowthHost, s: Session, target: Target, bytes: number): Promise<unknown> {
  if (bytes % DIMM_ALIGN !== 0) throw new ElasticmemError(dimmSizeMessage(bytes, s.target.spec), 'BAD_SIZE');
  await target.addDimm(bytes, s.memory!.backing === 'anon' ? 'anon' : 'memfd');
  const { fresh } = await pageNewRam(host, s, target);
  if (fresh.length === 0) throw new ElasticmemError(`QEMU added the DIMM to '${s.name}' but no new RAM block appeared in x-query-ramblock; its memory is not under the pager`, 'GROW_FAILED');
  log(s.name, 'grown', `DIMM added (${describeBlocks(fresh)}), under the pager within the same cap; guest RAM now ${formatSize(s.memory!.guestRamBytes)}`);
  return { name: s.name, device: fresh.map((r) => r.name).join(','), kind: 'dimm', requestedBytes: bytes, pluggedBytes: bytes, guestRamBytes: s.memory!.guestRamBytes, complete: true };
}

/**
 * RAM blocks QEMU has now that the pager does not (hot-added DIMMs): put under the
 * pager, same cap. Returns them (none: nothing new), and the backends no guest address
 * uses yet (unplaced: their device_add may follow). Runs inside s.serial.
 */
async function pageNewRam(host: GrowthHost, s: Session, target: Target): Promise<{ fresh: RegionSpec[]; unplaced: string[] }> {
  const known = new Map(s.memory!.regions.map((r) => [r.name, r]));
  const mem = await target.discover();
  // A block the pager has must still be there, at the same place: RAM that was
  // unplugged (or replaced under the same name) cannot be followed while attached.
  const now = new Map(mem.regions.map((r) => [r.name, r]));
  for (const [name, r] of known) {
    const n = now.get(name);
    if (!n || BigInt(n.start) !== BigInt(r.start) || n.length !== r.length) {
      throw new ElasticmemError(`RAM block '${name}' of '${s.name}' was ${n ? 'replaced' : 'removed'} while attached; the pager cannot follow that: detach and attach the VM again`, 'RAM_CHANGED');
    }
  }
  const fresh = mem.regions.filter((r) => !known.has(r.name));
  if (fresh.length === 0) {
    // Nothing new to page; guest RAM may still have changed (virtio-mem plugged more
    // while no daemon watched, after a take-over from the record).
    if (mem.guestRamBytes !== s.memory!.guestRamBytes) {
      s.memory!.guestRamBytes = mem.guestRamBytes;
      s.memory!.memoryDevices = mem.memoryDevices;
      host.saveState();
    }
    return { fresh: [], unplaced: mem.unplaced ?? [] };
  }
  // One block at a time: when one cannot be put under the pager, those before it are,
  // and must be in the record (a take-over registers what the record lists).
  const added: RegionSpec[] = [];
  try {
    for (const r of fresh) {
      s.pager!.addRegions([r]);
      added.push(r);
    }
  } catch (e) {
    if (added.length) {
      const regions = [...s.memory!.regions, ...added];
      s.memory = { ...mem, regions, managedBytes: regions.reduce((n, r) => n + r.length, 0) };
      host.saveState();
    }
    const failed = fresh.slice(added.length).map((r) => r.name).join(', ');
    throw new ElasticmemError(`new memory of '${s.name}' (${failed}) could not be put under the pager (${(e as Error).message}); it is not capped until the VM is detached and attached again`, (e as ElasticmemError).code ?? 'GROW_FAILED');
  }
  s.memory = mem;
  host.saveState();
  return { fresh, unplaced: mem.unplaced ?? [] };
}

/** Back-off between tries to page RAM found by ram-watch.ts: doubling, from and up to. */
const RAM_RETRY_FIRST_MS = 2000;
const RAM_RETRY_MAX_MS = 60_000;

/**
 * A pid:/qmp: QEMU has no event stream the daemon can hold (ram-watch.ts): a new
 * large mapping outside the paged RAM is the sign of a DIMM added behind our back.
 * Handled once paged (or found not to be RAM); a try that failed for a reason that may
 * pass (QMP busy with another client) is repeated, backing off, so the DIMM does not
 * stay outside the cap after one bad moment.
 */
export function checkRamMappings(host: GrowthHost, s: Session): void {
  const w = s.ramWatch;
  if (s.target.kind === 'libvirt' || s.state !== 'attached' || !s.pager || !s.memory || w.busy || Date.now() < w.retryAt) return;
  let now: string;
  try {
    now = unpagedLargeMappings(s.target.pid, s.memory.regions);
  } catch {
    return;  // QEMU is gone: its exit is handled on its own
  }
  if (now === w.seen) return;
  if (!now) { w.seen = now; return; }
  w.busy = true;
  const backoff = Math.min(RAM_RETRY_MAX_MS, w.backoffMs ? w.backoffMs * 2 : RAM_RETRY_FIRST_MS);
  void pageAddedRam(host, s, 'QEMU mapped new memory', 'QEMU mapped new memory', backoff).then((done) => {
    if (done) {
      // The mappings as seen before this try: one that appeared during it (another
      // client's DIMM) differs at the next look and is discovered then. (A DIMM paged
      // now leaves the unpaged mappings: one more look at QMP, which finds nothing new.)
      w.seen = now;
      w.backoffMs = 0; w.retryAt = 0;
    } else {
      w.backoffMs = backoff;
      w.retryAt = Date.now() + backoff;
    }
  }).finally(() => { w.busy = false; });
}

/** Errors after which paging new RAM is not tried again by itself: retrying cannot help. */
const FINAL_GROWTH_ERRORS = new Set(['RAM_CHANGED', 'UNSUPPORTED_MEMORY', 'EM_BAD_REGION', 'EM_SHMEM_THP']);

/**
 * Put RAM blocks added behind our back under the VM's pager (same cap), and say so:
 * `source` heads the log line, `after` names the cause in an error. Resolves true when
 * handled (paged, nothing new, or an error retrying cannot mend), false when a retry
 * may succeed (the caller's, in `retryInMs`, said in the log line).
 */
export function pageAddedRam(host: GrowthHost, s: Session, source: string, after: string, retryInMs?: number): Promise<boolean> {
  if (host.closing()) return Promise.resolve(true);
  return s.serial(async () => {
    if (s.state !== 'attached' || !s.pager) return true;
    try {
      const { fresh, unplaced } = await pageNewRam(host, s, s.target as Target);
      if (fresh.length) log(s.name, 'memory added', `${source}: ${describeBlocks(fresh)} under the pager within the same cap; guest RAM now ${formatSize(s.memory!.guestRamBytes)}`);
      if (unplaced.length && retryInMs !== undefined) {
        // A backend whose device is not there yet (object-add, then device_add): its
        // mapping will not change when the device comes, so look again until it has.
        if (s.ramWatch.backoffMs === 0) log(s.name, 'memory pending', `QEMU has memory backend ${unplaced.join(', ')} that no guest address uses yet; paged once a device uses it (looking again, less often over time)`);
        return false;
      }
      return true;
    } catch (e) {
      const final = FINAL_GROWTH_ERRORS.has((e as ElasticmemError).code);
      const again = retryInMs !== undefined && !final ? `; trying again in ${Math.round(retryInMs / 1000)} s` : '';
      log(s.name, 'error', `after ${after}: ${s.scrub((e as Error).message)}${again}`);
      return final;
    }
  }).catch(() => true);
}
