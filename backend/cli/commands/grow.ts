import { call } from '../client.ts';
import { parse, printJson, SOCKET_OPT, UsageError, JSON_HELP, SOCKET_HELP, type Command } from '../command.ts';
import { DIMM_ALIGN, dimmSizeMessage } from '../../targets/target.ts';
import { vmArg } from '../vm-arg.ts';
import { formatSize, parseSize } from '../../size.ts';

const usage = `usage: elasticmem grow <vm> SIZE [--dimm] [--no-wait] [--json] [--socket PATH]

Hot-add SIZE of guest-visible memory to an attached VM, paged under the same resident
cap as the rest of its RAM:

  virtio-mem (the default when the VM has such a device): its requested-size is raised
    by SIZE (libvirt: update-memory-device). The device's memory is under the pager
    from attach on. Waits (up to 60 s) until the guest has plugged it, unless --no-wait.
  a DIMM (--dimm, or when the VM has no virtio-mem device): a new pc-dimm backed like
    the guest's RAM (libvirt: attach-device --live), whose RAM block is put under the
    pager as soon as QEMU has mapped it. The guest onlines it through ACPI.

  SIZE             amount to add (K/M/G suffixes): a multiple of the virtio-mem block
                   size (2M), or of 128M for a DIMM
  --dimm           add a DIMM even if the VM has a virtio-mem device
  --no-wait        return once the request is made, without waiting for the guest
${JSON_HELP}
${SOCKET_HELP}

virtio-mem needs a device in the domain (see vm-configs/libvirt/memfd.xml) and the
guest's virtio_mem driver; a DIMM needs <maxMemory slots='N'> with room above the
VM's memory and a <numa> cell (plain QEMU: -m SIZE,slots=N,maxmem=MAX). Either way the
guest should online hot-added memory (auto_online_blocks=online).

examples:
  elasticmem grow web1 512M
  elasticmem grow web1 1G --dimm
  elasticmem grow qmp:/run/vm7/qmp.sock 1G --no-wait
`;

const cmd: Command = {
  name: 'grow',
  summary: 'hot-add guest-visible memory (virtio-mem or a DIMM)',
  usage,
  async run(args) {
    const { values, positionals, help } = parse('grow', args, { ...SOCKET_OPT, json: { type: 'boolean' }, 'no-wait': { type: 'boolean' }, dimm: { type: 'boolean' } }, { min: 2, max: 2, names: 'the VM and the SIZE to add (e.g. elasticmem grow web1 512M)' });
    if (help) { process.stdout.write(usage); return 0; }
    const vm = vmArg(positionals[0]!);
    const bytes = parseSize(positionals[1], 'SIZE');
    if (values.dimm && bytes % DIMM_ALIGN !== 0) throw new UsageError(dimmSizeMessage(bytes, vm), 'BAD_SIZE');
    const r = (await call('grow', { vm, size: positionals[1], wait: !values['no-wait'], ...(values.dimm ? { dimm: true } : {}) }, { socket: values.socket })) as Record<string, unknown>;
    if (values.json) printJson(r);
    else if (r.kind === 'dimm') process.stdout.write(`grew ${r.name}: DIMM of ${formatSize(r.requestedBytes as number)} added (${r.device}), paged under the same cap; guest RAM ${formatSize(r.guestRamBytes as number)}\n`);
    else process.stdout.write(`grew ${r.name}: virtio-mem ${r.device} requested ${formatSize(r.requestedBytes as number)}, guest plugged ${formatSize(r.pluggedBytes as number)}${r.complete ? '' : ' (still plugging)'}; guest RAM ${formatSize(r.guestRamBytes as number)}\n`);
    return 0;
  },
};
export default cmd;
