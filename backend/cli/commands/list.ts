import { call } from '../client.ts';
import { parse, printJson, SOCKET_OPT, type Command, JSON_HELP, SOCKET_HELP } from '../command.ts';
import { formatSize, PAGE } from '../../size.ts';

const usage = `usage: elasticmem list [--json] [--socket PATH]

List the VMs the daemon manages: state, store, resident cap, resident and remote pages.

${JSON_HELP}
${SOCKET_HELP}

examples:
  elasticmem list
  elasticmem list --json | jq '.vms[].name'
`;

const cmd: Command = {
  name: 'list',
  summary: 'list attached VMs',
  usage,
  async run(args) {
    const { values, help } = parse('list', args, { ...SOCKET_OPT, json: { type: 'boolean' } }, { min: 0, max: 0, names: '' });
    if (help) { process.stdout.write(usage); return 0; }
    const r = (await call('list', {}, { socket: values.socket })) as { vms: Record<string, unknown>[] };
    if (values.json) { printJson(r); return 0; }
    if (r.vms.length === 0) { process.stdout.write('no VMs attached\n'); return 0; }
    const rows = [['NAME', 'STATE', 'LOCAL', 'RESIDENT', 'REMOTE', 'GUEST RAM', 'STORE']];
    for (const v of r.vms) {
      const pg = (n: unknown) => (typeof n === 'number' ? formatSize(n * PAGE) : '-');
      rows.push([String(v.name), String(v.state) + (v.storeState && v.storeState !== 'ok' ? `/store ${v.storeState}` : ''), formatSize(v.localBytes as number), pg(v.residentPages), pg(v.remotePages), typeof v.guestRamBytes === 'number' ? formatSize(v.guestRamBytes) : '-', String(v.store)]);
    }
    const w = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
    for (const row of rows) process.stdout.write(row.map((c, i) => c.padEnd(w[i]!)).join('  ').trimEnd() + '\n');
    for (const v of r.vms) if (v.note) process.stdout.write(`  ${v.name}: ${v.note}\n`);
    return 0;
  },
};
export default cmd;
