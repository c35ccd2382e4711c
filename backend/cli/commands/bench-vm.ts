/**
 * `elasticmem bench vm`: the test guest's workload at 100%, 50% and 25% local memory
 * for each store, timed by the guest (backend/bench/vm-bench.ts does the work; this
 * file parses the command line, draws the progress bar and the summary table).
 */
import { parse, printJson, EXIT_FAIL, UsageError, type Command } from '../command.ts';
import { progressBar } from '../render.ts';
import { formatSize, PAGE } from '../../size.ts';
import { Cleanup, DEFAULT_STORES, parseStores, runVmBench, checkOptions, type VmBenchOptions, type VmBenchResult, type Progress } from '../../bench/vm-bench.ts';
import type { AccessPattern } from '../../vm/guest.ts';

const usage = `usage: elasticmem bench vm [--stores LIST] [--size-mib N] [--guest-mib N] [--pattern P]
                          [--write F] [--fractions LIST] [--passes N] [--warmup N]
                          [--max-warmup N] [--pause-ms N] [--pass-timeout S] [--seed N] [--json]

Boots the test guest under libvirt (TCG here, KVM where /dev/kvm exists) and runs its
workload: fill N MiB with a verifiable pattern, then verify every page and rewrite a
fraction of them, pass after pass. Each pass is timed by the guest itself. Measured:
not attached (baseline), then for each store a fresh attach at 100%, 50% and 25% of
the guest's footprint (pages resident at the 100% attach), a detach after each.
Every pass checks every page: the run fails if the guest ever reports corrupt != 0.
A real elasticmem daemon on a private socket does the paging. Needs root.

  --stores LIST     comma-separated (default ${DEFAULT_STORES}). Names the bench
                    provides itself: memory (embedded), file (LMDB in a temporary
                    folder), redis (its own redis-server on 127.0.0.1), memcached (its
                    own memcached on 127.0.0.1). Or full URIs of stores you run:
                    redis://10.0.0.5:6379, file:///var/lib/em, memcached://h:11211 ...
  --size-mib N      workload size in MiB (default 96)
  --guest-mib N     guest RAM in MiB (default max(256, size + 160 rounded up to 32))
  --pattern P       seq | random | zipf (default random)
  --write F         fraction of pages rewritten per pass, 0..1 (default 0.25)
  --fractions LIST  local fractions of the footprint, starting at 1 (default 1,0.5,0.25)
  --passes N        timed passes per phase (default 5)
  --warmup N        passes discarded after each attach, at least (default 1)
  --max-warmup N    more warm-up passes while the pager's faults per pass still
                    change by more than 15% (the replacement policy learning the
                    working set), up to N in all (default 6, or --warmup if more)
  --pause-ms N      guest pause between passes (default 50)
  --pass-timeout S  give up when one pass takes longer than S seconds (default 300)
  --seed N          workload seed (default 7)
  --json            print every measurement as one JSON object on stdout
                    (the summary table then goes to stderr)

The default run (4 stores, 96 MiB, 3 fractions, 5 timed passes) takes about
5-10 minutes on 2 cores under TCG. Progress is shown on stderr.

examples:
  elasticmem bench vm
  elasticmem bench vm --stores memory: --size-mib 32 --passes 2
  elasticmem bench vm --stores memory:,redis://10.0.0.5:6379 --json > docs/results/vm.json
`;

function num(v: string | undefined, def: number, what: string, int = true): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || (int && !Number.isInteger(n))) throw new UsageError(`bench vm: ${what} must be ${int ? 'an integer' : 'a number'}, got '${v}'`);
  return n;
}

/** Progress bar on stderr: redrawn in place on a terminal, one line per step otherwise. */
function progressPrinter(): { update: (p: Progress) => void; end: () => void } {
  const tty = process.stderr.isTTY;
  const t0 = Date.now();
  let lastLabel = '';
  return {
    update(p) {
      const secs = Math.round((Date.now() - t0) / 1000);
      const line = `${progressBar(p.done, p.total, 30)} ${String(Math.round((100 * p.done) / Math.max(1, p.total))).padStart(3)}% ${String(secs).padStart(4)}s  ${p.label}`;
      if (tty) process.stderr.write(`\r\x1b[2K${line.slice(0, (process.stderr.columns ?? 120) - 1)}`);
      else if (p.label !== lastLabel) process.stderr.write(line + '\n');
      lastLabel = p.label;
    },
    end() { if (tty) process.stderr.write('\n'); },
  };
}

const fmtMs = (x: number) => (Number.isFinite(x) ? (x >= 100 ? x.toFixed(0) : x.toFixed(1)) : '-');

/** The one-screen summary. */
export function summaryTable(r: VmBenchResult): string {
  const w = r.guest.workload;
  const b = r.baseline;
  const lines = [
    `elasticmem bench vm   ${r.date.slice(0, 16).replace('T', ' ')} UTC   ${r.host.cpus} cpus, ${r.host.accel}, kernel ${r.host.kernel}, QEMU ${r.host.qemu}, load ${r.host.loadAvg1.start.toFixed(1)}-${r.host.loadAvg1.end.toFixed(1)}`,
    `guest ${r.guest.memMiB} MiB (memfd), workload ${w.sizeMiB} MiB ${w.pattern} write=${w.write}; pass times reported by the guest, median of ${r.method.timedPasses};`,
    `slowdown = pass time / pass time unattached just before (paired baseline); unattached over the run: median ${fmtMs(b.medianMs)} ms, ${b.minMs}-${b.maxMs} ms`,
    '',
    `${'store'.padEnd(10)} ${'local'.padStart(5)} ${'cap'.padStart(6)} ${'pass ms'.padStart(8)} ${'base ms'.padStart(8)} ${'slowdown'.padStart(8)} ${'faults/pass'.padStart(11)} ${'fetch/pass'.padStart(10)} ${'p50 us'.padStart(6)} ${'p99 us'.padStart(6)} ${'corrupt'.padStart(7)}`,
  ];
  for (const s of r.stores) {
    if (!s.phases.length) lines.push(`${s.store.slice(0, 10).padEnd(10)} FAILED: ${s.error?.split('\n')[0]}`);
    s.phases.forEach((p, i) => {
      lines.push([
        (i === 0 ? s.store.slice(0, 10) : '').padEnd(10),
        `${Math.round(p.fraction * 100)}%`.padStart(5),
        formatSize(Math.round(p.localBytes / PAGE) * PAGE).padStart(6),
        fmtMs(p.medianMs).padStart(8),
        fmtMs(p.baselineMedianMs).padStart(8),
        `${p.slowdown.toFixed(2)}x`.padStart(8),
        String(p.faultsPerPass).padStart(11),
        String(p.fetchesPerPass).padStart(10),
        String(p.stats.faultLatencyUs.p50).padStart(6),
        String(p.stats.faultLatencyUs.p99).padStart(6),
        String(p.corrupt).padStart(7),
      ].join(' '));
    });
    if (s.phases.length && s.error) lines.push(`${''.padEnd(10)} stopped: ${s.error.split('\n')[0]}`);
  }
  lines.push('');
  const fp = r.stores.find((s) => s.footprintPages)?.footprintPages ?? 0;
  lines.push(`caps are fractions of the footprint (pages resident at the first 100% attach): ${formatSize(fp * PAGE)}`);
  lines.push(`stores: ${r.stores.map((s) => `${s.store} = ${s.uri}${s.ownServer ? (s.uri.startsWith('file:') ? ' (temporary)' : ' (started by the bench)') : ''}`).join(', ')}`);
  lines.push(`guest verdict: ${r.guestPasses} passes, corrupt=${r.corrupt}   (${r.durationS} s)`, '');
  return lines.join('\n');
}

const cmd: Command = {
  name: 'bench vm',
  summary: 'the test guest at 100%, 50%, 25% local memory per store',
  usage,
  async run(args) {
    const { values, help } = parse('bench vm', args, {
      stores: { type: 'string' }, 'size-mib': { type: 'string' }, 'guest-mib': { type: 'string' }, pattern: { type: 'string' },
      write: { type: 'string' }, fractions: { type: 'string' }, passes: { type: 'string' }, warmup: { type: 'string' }, 'max-warmup': { type: 'string' },
      'pause-ms': { type: 'string' }, 'pass-timeout': { type: 'string' }, seed: { type: 'string' }, json: { type: 'boolean' },
    }, { min: 0, max: 0, names: '' });
    if (help) { process.stdout.write(usage); return 0; }
    const sizeMiB = num(values['size-mib'], 96, '--size-mib');
    const opts: VmBenchOptions = {
      stores: [],
      sizeMiB,
      guestMiB: num(values['guest-mib'], Math.max(256, Math.ceil((sizeMiB + 160) / 32) * 32), '--guest-mib'),
      pattern: (values.pattern ?? 'random') as AccessPattern,
      write: num(values.write, 0.25, '--write', false),
      seed: num(values.seed, 7, '--seed'),
      fractions: (values.fractions ?? '1,0.5,0.25').split(',').map((x) => num(x, NaN, '--fractions', false)),
      passes: num(values.passes, 5, '--passes'),
      warmup: num(values.warmup, 1, '--warmup'),
      maxWarmup: num(values['max-warmup'], Math.max(6, num(values.warmup, 1, '--warmup')), '--max-warmup'),
      pauseMs: num(values['pause-ms'], 50, '--pause-ms'),
      passTimeoutMs: num(values['pass-timeout'], 300, '--pass-timeout') * 1000,
    };
    try {
      opts.stores = parseStores(values.stores ?? DEFAULT_STORES);
      checkOptions(opts);
    } catch (e) {
      throw new UsageError(`bench vm: ${(e as Error).message}`);
    }
    const bar = progressPrinter();
    opts.onProgress = bar.update;
    const cl = new Cleanup();
    // Ctrl-C / kill: remove the guest, the daemon and the servers before leaving.
    const onSignal = (sig: NodeJS.Signals) => {
      bar.end();
      process.stderr.write(`bench vm: ${sig}, cleaning up\n`);
      void cl.run().finally(() => process.exit(130));
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    let result: VmBenchResult;
    try {
      result = await runVmBench(opts, cl);
    } finally {
      bar.end();
      await cl.run();
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    if (values.json) printJson(result);
    (values.json ? process.stderr : process.stdout).write(summaryTable(result));
    const failed = result.stores.filter((s) => s.error);
    if (result.corrupt !== 0) { process.stderr.write(`bench vm: the guest found ${result.corrupt} corrupt pages\n`); return EXIT_FAIL; }
    if (failed.length) { process.stderr.write(`bench vm: ${failed.map((s) => s.store).join(', ')} failed (see above)\n`); return EXIT_FAIL; }
    return 0;
  },
};
export default cmd;
