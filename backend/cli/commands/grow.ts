import { call } from '../client.ts';
import { parse, printJson, SOCKET_OPT, type Command } from '../command.ts';
import { formatSize, parseSize } from '../../size.ts';

const usage = `usage: elasticmem grow <vm> SIZE [--no-wait] [--json] [--socket PATH]

Hot-add SIZE of guest-visible memory to an attached VM through its virtio-mem device
(requested-size is raised by SIZE; libvirt: update-memory-device). The device's memory
is under the pager from attach on, so the new memory obeys the same resident cap.
Waits (up to 60 s) until the guest has plugged it, unless --no-wait.

  SIZE        amount to add (K/M/G suffixes), a multiple of the device block size (2M)

The VM needs a virtio-mem device (see vm-configs/libvirt/memfd.xml) and, in the guest,
the virtio_mem driver with memory auto-onlining.

examples:
  elasticmem grow web1 512M
  elasticmem grow qmp:/run/vm7/qmp.sock 1G --no-wait
`;

const cmd: Command = {
  name: 'grow',
  summary: 'hot-add guest-visible memory (virtio-mem)',
  usage,
  async run(args) {
    const { values, positionals, help } = parse('grow', args, { ...SOCKET_OPT, json: { type: 'boolean' }, 'no-wait': { type: 'boolean' } }, { min: 2, max: 2, names: 'the VM and the SIZE to add (e.g. elasticmem grow web1 512M)' });
    if (help) { process.stdout.write(usage); return 0; }
    parseSize(positionals[1], 'SIZE');
    const r = (await call('grow', { vm: positionals[0], size: positionals[1], wait: !values['no-wait'] }, { socket: values.socket })) as Record<string, unknown>;
    if (values.json) printJson(r);
    else process.stdout.write(`grew ${r.name}: virtio-mem ${r.device} requested ${formatSize(r.requestedBytes as number)}, guest plugged ${formatSize(r.pluggedBytes as number)}${r.complete ? '' : ' (still plugging)'}; guest RAM ${formatSize(r.guestRamBytes as number)}\n`);
    return 0;
  },
};
export default cmd;
