import { Observable } from 'rxjs';
import { call } from '../client.ts';
import { parse, printJson, SOCKET_OPT, type Command, JSON_HELP, SOCKET_HELP } from '../command.ts';
import { vmArg } from '../vm-arg.ts';
import { WatchView, renderWatchLine } from '../render.ts';
import type { PublicStats, StatsSample } from '../../stats/stream.ts';
import { formatSize, PAGE } from '../../size.ts';

const usage = `usage: elasticmem stats <vm> [--json] [--watch] [--socket PATH]

Counters of an attached VM's pager.

  --json           one JSON object: faults, zeroFills, fetches, evictions,
                   cleanDrops, storeWrites, prefetched, residentPages, localCapPages,
                   remotePages, faultLatencyUs {p50, p99}, storeState, storeError,
                   faultCpu (the CPU the fault thread runs on, -1 when not on one),
                   evictMode ("splice": the embedded store, dirty pages passed by a
                   pipe; "write-protect"), ... (on failure: {"error": {code, message}})
  --watch          live view refreshed every second: rates per second (with a
                   sparkline of the last minute), resident pages against the cap,
                   fault latency (with --json: one JSON sample per line, {t, stats:
                   {the counters above}, rates: {per second}})
${SOCKET_HELP}

examples:
  elasticmem stats web1
  elasticmem stats web1 --json | jq .faultLatencyUs
  elasticmem stats web1 --watch
`;

function renderOnce(s: PublicStats): string {
  return [
    `${s.name} (${s.vm})  store ${s.store}  store state ${s.storeState}${s.storeError ? ` (${s.storeError})` : ''}`,
    `  resident ${formatSize(s.residentPages * PAGE)} of cap ${formatSize(s.localCapPages * PAGE)}, remote ${formatSize(s.remotePages * PAGE)}`,
    `  faults ${s.faults}  zeroFills ${s.zeroFills}  fetches ${s.fetches}  prefetched ${s.prefetched}`,
    `  evictions ${s.evictions}  cleanDrops ${s.cleanDrops}  storeWrites ${s.storeWrites}  (evicting by ${s.evictMode})`,
    `  fault latency p50 ${s.faultLatencyUs.p50} us, p99 ${s.faultLatencyUs.p99} us${s.faultCpu >= 0 ? `, fault thread on CPU ${s.faultCpu}` : ''}`,
    '',
  ].join('\n');
}

const cmd: Command = {
  name: 'stats',
  summary: 'show pager counters of a VM (--watch for a live view)',
  usage,
  async run(args) {
    const { values, positionals, help } = parse('stats', args, { ...SOCKET_OPT, json: { type: 'boolean' }, watch: { type: 'boolean' } }, { min: 1, max: 1, names: 'the VM (e.g. elasticmem stats web1)' });
    if (help) { process.stdout.write(usage); return 0; }
    const vm = vmArg(positionals[0]!);
    if (!values.watch) {
      const s = (await call('stats', { vm }, { socket: values.socket })) as PublicStats;
      if (values.json) printJson(s); else process.stdout.write(renderOnce(s));
      return 0;
    }
    // The daemon streams rxjs samples of the native counters; we render each one.
    const abort = new AbortController();
    const onSig = () => abort.abort();
    process.once('SIGINT', onSig);
    let end: { ended?: string; why?: string } = {};
    const samples = new Observable<StatsSample>((sub) => {
      call('watch', { vm }, { socket: values.socket, signal: abort.signal, onStream: (d) => sub.next(d as StatsSample) })
        .then((r) => { end = (r ?? {}) as typeof end; sub.complete(); }, (e) => sub.error(e));
    });
    const tty = process.stdout.isTTY;
    const view = new WatchView();
    await new Promise<void>((resolve, reject) => {
      samples.subscribe({
        next: (s) => process.stdout.write(values.json ? JSON.stringify(s) + '\n' : tty ? view.render(s) : renderWatchLine(s)),
        complete: () => resolve(),
        error: (e) => reject(e),
      });
    }).finally(() => process.off('SIGINT', onSig));
    // The VM's paging ended under the watch (detached elsewhere, QEMU gone): say so, and
    // not with the exit status of a Ctrl-C.
    if (end.ended === 'vm') {
      process.stderr.write(`${tty && !values.json ? '\n' : ''}elasticmem stats: VM '${positionals[0]}' is no longer paged: ${end.why ?? 'it ended'}\n`);
      return 1;
    }
    return 0;
  },
};
export default cmd;
