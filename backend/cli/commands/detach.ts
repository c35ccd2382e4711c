import { call } from '../client.ts';
import { parse, printJson, SOCKET_OPT, type Command, JSON_HELP, SOCKET_HELP } from '../command.ts';
import { vmArg } from '../vm-arg.ts';
import { progressBar } from '../render.ts';

const usage = `usage: elasticmem detach <vm> [--json] [--socket PATH]

Drain every page of the VM back from the store into its RAM, stop paging it and leave
it running whole, then delete its pages from the store. A progress bar is shown on
stderr. For a VM whose QEMU crashed, detach deletes the pages that were kept for it.

Detach before live-migrating a VM: an attached range excludes QEMU's own postcopy.

${JSON_HELP}
${SOCKET_HELP}

examples:
  elasticmem detach web1
  elasticmem detach pid:4242 --json
`;

const cmd: Command = {
  name: 'detach',
  summary: 'drain a VM back into its RAM and stop managing it',
  usage,
  async run(args) {
    const { values, positionals, help } = parse('detach', args, { ...SOCKET_OPT, json: { type: 'boolean' } }, { min: 1, max: 1, names: 'the VM to detach (e.g. elasticmem detach web1)' });
    if (help) { process.stdout.write(usage); return 0; }
    const tty = process.stderr.isTTY;
    let last = -1;
    let shown = false;
    const r = (await call('detach', { vm: vmArg(positionals[0]!) }, {
      socket: values.socket,
      onStream: (d) => {
        const p = (d as { progress?: { done: number; total: number } }).progress;
        if (!p) return;
        const pct = p.total ? Math.floor((100 * p.done) / p.total) : 100;
        if (tty) { shown = true; process.stderr.write(`\r${progressBar(p.done, p.total, 30)} ${pct}% ${p.done}/${p.total} pages`); }
        else if (last < 0 || pct >= last + 10 || p.done === p.total) { process.stderr.write(`drain ${pct}% ${p.done}/${p.total} pages\n`); last = pct; }
      },
    }).finally(() => { if (shown) process.stderr.write('\n'); })) as Record<string, unknown>;  // (an error goes on its own line)
    if (values.json) printJson(r);
    else process.stdout.write(r.drained ? `detached ${r.name}: every page is back (${r.ms} ms)\n` : `detached ${r.name}: QEMU was gone, its stored pages were deleted\n`);
    if (r.storedPagesLeft)
      process.stderr.write(`warning: the obsolete copies of ${r.name}'s pages could not be deleted from its store (${r.storedPagesLeft}); they take space there until the next attach of this VM deletes them, or delete the VM's keys (id ${r.vm}) in the store\n`);
    return 0;
  },
};
export default cmd;
