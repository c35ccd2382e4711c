/**
 * libvirt through `virsh -c qemu:///system`.
 *
 * Why virsh and not a binding: the `libvirt` npm package does not build on Node 20,
 * `@unraid/libvirt` has no device update and no events, and a binding of our own would
 * be one more native module to build. virsh ships with libvirtd (libvirt-clients), speaks
 * the same stable C API, and gives us everything we need: domstate, domuuid/domname,
 * dumpxml, update-memory-device, event, and qemu-monitor-command (QMP and HMP through
 * libvirt's own monitor connection, which libvirt holds exclusively).
 */
import { ElasticmemError } from '../../native/errors.ts';
import { exec } from './exec.ts';

export const LIBVIRT_URI = process.env.ELASTICMEM_LIBVIRT_URI ?? 'qemu:///system';

export async function virsh(args: string[], timeoutMs = 30_000): Promise<string> {
  const r = await exec('virsh', ['-q', '-c', LIBVIRT_URI, ...args], timeoutMs);
  if (r.code === 0) return r.stdout;
  if (r.timedOut && args[0] === 'qemu-monitor-command') {
    // QEMU answers its monitor from its main thread; that thread may be waiting on a page
    // of guest RAM that only a monitor can bring back (or on a long command before ours).
    const cmd = args.includes('--hmp') ? args[args.length - 1] : (/"execute":"([^"]+)"/.exec(args[args.length - 1] ?? '')?.[1] ?? '');
    throw new ElasticmemError(`QEMU's monitor of '${args[1]}' did not answer ${cmd} within ${timeoutMs / 1000} s: QEMU's main thread is busy or waiting (on guest RAM no monitor pages in, or on an earlier monitor command); retry when it answers \`virsh qemu-monitor-command ${args[1]} --hmp info status\``, 'QMP_TIMEOUT');
  }
  const msg = (r.stderr || r.stdout).trim().replace(/^error:\s*/gm, '').replace(/\n+/g, '; ');
  if (/failed to get domain|Domain not found|no domain with matching/i.test(msg)) {
    throw new ElasticmemError(`no libvirt domain '${args[args.length - 1] ?? ''}' on ${LIBVIRT_URI} (${msg}); check \`virsh -c ${LIBVIRT_URI} list --all\``, 'VM_NOT_FOUND');
  }
  if (/failed to connect to the hypervisor|Failed to connect socket/i.test(msg)) {
    throw new ElasticmemError(`libvirt is not reachable at ${LIBVIRT_URI} (${msg}); start libvirtd`, 'LIBVIRT_UNREACHABLE');
  }
  if (/domain is not running/i.test(msg)) throw new ElasticmemError(msg, 'VM_NOT_RUNNING');
  throw new ElasticmemError(`virsh ${args[0]} failed: ${msg}`, 'LIBVIRT_ERROR');
}
