/** What the daemon needs from an attachable VM, whatever kind of handle names it. */
import type { Monitor, GuestMemory } from './ramblocks.ts';
import { exactSize, formatSize } from '../size.ts';

/** x86 memory hot-add granularity (one Linux memory block): a DIMM is a multiple of it. */
export const DIMM_ALIGN = 128 << 20;

/** Why `bytes` cannot be a DIMM, and the size that would do (checked by the CLI and the daemon). */
export function dimmSizeMessage(bytes: number, spec: string): string {
  return `a DIMM is added in multiples of 128M on x86; ${formatSize(bytes)} is not one (e.g. grow ${spec} ${exactSize(Math.ceil(bytes / DIMM_ALIGN) * DIMM_ALIGN)} --dimm)`;
}

export type TargetKind = 'libvirt' | 'pid' | 'qmp';

export interface GrowResult {
  device: string;
  requestedBytes: number;
  pluggedBytes: number;
  guestRamBytes: number;
  /** True when the guest plugged the whole request before the wait ended. */
  complete: boolean;
}

export interface Target {
  readonly kind: TargetKind;
  /** What to type to name it again (libvirt domain name, pid:N, qmp:/path). */
  readonly spec: string;
  /** Display name in logs and lists. */
  readonly name: string;
  /** Stable id: store keys are per vmId. libvirt UUID, QEMU -uuid, or pid+start time. */
  readonly vmId: string;
  readonly pid: number;
  /** Process start time (clock ticks since boot): with pid, identifies this QEMU process. */
  readonly startTime: number;
  /** Other names that designate the same VM (UUID, pid:N). */
  readonly aliases: string[];
  /** A monitor connection; close it when done (QMP sockets serve one client at a time). */
  openMonitor(): Promise<Monitor & { close(): void }>;
  /** Set the hot-plug device's requested size (virtio-mem). */
  setRequestedSize(device: string, bytes: number): Promise<void>;
  /**
   * Hot-add a DIMM of `bytes` (a multiple of 128 MiB on x86), backed like the guest's
   * RAM (memfd shared, or private); resolves once QEMU has it. Errors say what is
   * missing (slots, maxMemory room, a NUMA cell).
   */
  addDimm(bytes: number, backing: 'memfd' | 'anon'): Promise<void>;
  discover(): Promise<GuestMemory>;
}
