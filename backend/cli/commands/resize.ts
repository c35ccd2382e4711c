import { call } from '../client.ts';
import { parse, printJson, SOCKET_OPT, UsageError, type Command, JSON_HELP, SOCKET_HELP } from '../command.ts';
import { vmArg } from '../vm-arg.ts';
import { formatSize, parseSize } from '../../size.ts';
import { progressBar } from '../render.ts';

const usage = `usage: elasticmem resize <vm> --local SIZE [--json] [--socket PATH]

Change how much of an attached VM's RAM stays resident, while it runs. Shrinking
evicts pages to the store at once (followed with a progress bar for up to 30 s);
growing lets more pages stay.

  --local SIZE     new resident cap (K/M/G suffixes), at most the guest's RAM
${JSON_HELP}
${SOCKET_HELP}

examples:
  elasticmem resize web1 --local 256M
  elasticmem resize pid:4242 --local 2G
`;

const cmd: Command = {
  name: 'resize',
  summary: 'change the resident cap of an attached VM',
  usage,
  async run(args) {
    const { values, positionals, help } = parse('resize', args, { ...SOCKET_OPT, local: { type: 'string' }, json: { type: 'boolean' } }, { min: 1, max: 1, names: 'the VM to resize (e.g. elasticmem resize web1 --local 256M)' });
    if (help) { process.stdout.write(usage); return 0; }
    if (values.local === undefined) {
      throw new UsageError('resize: --local SIZE is required, e.g. --local 256M');
    }
    parseSize(values.local, '--local');
    const tty = process.stderr.isTTY;
    let shown = false;
    const r = (await call('resize', { vm: vmArg(positionals[0]!), local: values.local }, {
      socket: values.socket,
      onStream: (d) => {
        const p = (d as { progress?: { done: number; total: number } }).progress;
        if (!p || !tty) return;
        shown = true;
        process.stderr.write(`\revicting ${progressBar(p.done, p.total, 30)} ${p.done}/${p.total} pages`);
      },
    }).finally(() => { if (shown) process.stderr.write('\n'); })) as Record<string, unknown>;  // (an error goes on its own line)
    if (values.json) printJson(r);
    else process.stdout.write(`resized ${r.name}: local ${formatSize(r.previousLocalBytes as number)} -> ${formatSize(r.localBytes as number)}${r.reachedCap ? '' : ' (still evicting down to the new cap)'}\n`);
    return 0;
  },
};
export default cmd;
