/** Turn what the user typed (libvirt name/UUID, pid:<PID>, qmp:<path>) into a Target. */
import { resolveLibvirt, libvirtDomainOfPid } from './libvirt.ts';
import { resolvePid, resolveQmp, type SilentVmId } from './qemu.ts';
import { ElasticmemError } from '../../native/errors.ts';
import type { Target } from './target.ts';

export type { Target, GrowResult } from './target.ts';

/**
 * The VM `spec` names. For a take-over: silentVmId names a QEMU whose monitor does not
 * answer (pid:/qmp: targets ask QEMU for their VM id; libvirt knows it without
 * asking), leftUffd says a QEMU holds a userfaultfd a monitor that died left it (then its
 * run state does not matter: it waits for a monitor).
 */
export async function resolveTarget(spec: string, silentVmId?: SilentVmId, leftUffd?: (pid: number) => boolean): Promise<Target> {
  if (typeof spec !== 'string' || spec.length === 0) throw new ElasticmemError('no VM given: name a libvirt domain, pid:<PID> or qmp:<socket>', 'VM_NOT_FOUND');
  if (spec.startsWith('pid:')) {
    // A libvirt QEMU is reached through libvirt: libvirt holds its monitor socket.
    const dom = /^\d+$/.test(spec.slice(4)) ? libvirtDomainOfPid(Number(spec.slice(4))) : null;
    return dom ? resolveLibvirt(dom, leftUffd) : resolvePid(spec.slice(4), silentVmId, leftUffd);
  }
  if (spec.startsWith('qmp:')) return resolveQmp(spec.slice(4), silentVmId, leftUffd);
  return resolveLibvirt(spec, leftUffd);
}
