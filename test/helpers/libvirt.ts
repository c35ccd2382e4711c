/**
 * Real libvirt for tests. Starting virtlogd/libvirtd, the domain templates, booting and
 * destroying the test guest live in backend/vm/libvirt.ts (shared with `elasticmem demo`
 * and `bench vm`) and are re-exported here; bootDomain(t, ...) ties the domain to
 * t.teardown, so it is destroyed and undefined when the test ends, failed tests included.
 */
import type { ExecutionContext } from 'ava';
import { bootDomain as boot, type BootOptions, type BootedDomain } from '../../backend/vm/libvirt.ts';

export {
  LIBVIRT_URI, TEMPLATE_DIR, VIRTIO_MEM_ALIAS, virsh, ensureLibvirtd, destroyDomain, fillTemplate, setVirtioMemRequested,
  type BootOptions, type BootedDomain,
} from '../../backend/vm/libvirt.ts';

/**
 * Defines and starts a domain running the test guest; t.teardown destroys and
 * undefines it and deletes its files, whether the test passed or not.
 */
export function bootDomain(t: Pick<ExecutionContext, 'teardown'>, opts: BootOptions): Promise<BootedDomain> {
  return boot(opts, (fn) => t.teardown(fn as () => void));
}
