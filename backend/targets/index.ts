/** Turn what the user typed (libvirt name/UUID, pid:<PID>, qmp:<path>) into a Target. */
import { resolveLibvirt, libvirtDomainOfPid } from './libvirt.ts';
import { resolvePid, resolveQmp, type SilentVmId } from './qemu.ts';
import { ElasticmemError } from '../../native/errors.ts';
import type { Target } from './target.ts';

export type { Target, GrowResult } from './target.ts';

/**
 * `silentVmId` names a QEMU whose monitor does not answer (pid:/qmp: targets ask QEMU
 * for their VM id; libvirt knows it without asking).
 */
export async function resolveTarget(spec: string, silentVmId?: SilentVmId): Promise<Target> {
  if (typeof spec !== 'string' || spec.length === 0) throw new ElasticmemError('no VM given: name a libvirt domain, pid:<PID> or qmp:<socket>', 'VM_NOT_FOUND');
  if (spec.startsWith('pid:')) {
    // A libvirt QEMU is reached through libvirt: libvirt holds its monitor socket.
    const dom = /^\d+$/.test(spec.slice(4)) ? libvirtDomainOfPid(Number(spec.slice(4))) : null;
    return dom ? resolveLibvirt(dom) : resolvePid(spec.slice(4), silentVmId);
  }
  if (spec.startsWith('qmp:')) return resolveQmp(spec.slice(4), silentVmId);
  return resolveLibvirt(spec);
}
