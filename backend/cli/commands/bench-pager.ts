/**
 * `elasticmem bench pager`: routed here by commands/bench.ts. Runs locally (no daemon):
 * it starts its own workload process and attaches the pager to it.
 */
import { parse, printJson, UsageError, type Command } from '../command.ts';
import { parseSize, formatSize } from '../../size.ts';
import { parseStoreUri } from '../../../kvstore/index.ts';
import { allowedCpus } from '../../../native/pager.ts';
import { runPagerBench, WORKLOADS, type PagerBenchOptions, type PagerBenchResult, type Progress, type Workload } from '../../bench/pager-bench.ts';

const usage = `usage: elasticmem bench pager --workload seq|random|zipf --size SIZE --local SIZE --store URI
                              [--baseline kernel-swap] [--policy refault|fifo] [--memory shared|private]
                              [--pin CPU] [--repeats N] [--json]

Measure what one page touch costs under the pager: a workload process fills SIZE of
memory, the pager attaches with a resident cap of --local and pages the rest to
the store, then the workload touches pages (timed from inside) and verifies every page.
Needs root. Also measures the bare userfaultfd fault latency (the floor) in the same run:
a bare C handler touching fresh pages one by one (anonymous and memfd), and the same
handler under this run's own touch loop (same page order and per-touch work).

  --workload W         seq (cyclic write+read scan), random (uniform), zipf (skew 0.99)
  --size SIZE          working set (K/M/G suffixes), e.g. 128M
  --local SIZE         resident cap, smaller than --size, e.g. 64M
  --store URI          page store: memory:, file:///path, redis://host:port, ...
  --baseline kernel-swap
                       also run the same workload as private memory in a memory cgroup
                       limited to --local, swapping to zram (sets up and removes both)
  --policy refault|fifo
                       the pager's replacement policy (default refault: by each
                       page's refault distance; fifo: FluidMem's/umap's, to compare)
  --memory shared|private
                       what the workload's memory is (default shared: a shared memfd,
                       as QEMU with memory-backend-memfd; private: anonymous memory,
                       QEMU's default RAM, which the pager drops by injection)
  --touches N          timed touches (default: 6/12/40 per page for seq/random/zipf)
  --warmup N           untimed touches first (default: one per page)
  --seed N             workload seed (default 42)
  --prefetch N         the pager's sequential prefetch limit in pages (default: the pager's)
  --evict-batch N      the pager's eviction batch in pages (default: the pager's)
  --floor-repeats N    samples of the uffd floor, spread over the run (default 3)
  --repeats N          N pager runs, each followed by its kernel-swap run; the figures
                       are medians (a single run varies 10-20% between invocations)
                       and each run is listed (default 1)
  --pin CPU            run the workload, the pager's fault thread and the floor on this
                       CPU (the evictor on the others): faults are then served by local
                       context switches, not cross-CPU wake-ups (slow on a VM). Without
                       it the workload and the floor run where the scheduler puts them
                       and the pager's fault thread follows the workload's CPU
  --json               one JSON object on stdout

examples:
  elasticmem bench pager --workload seq --size 128M --local 64M --store memory: --baseline kernel-swap
  elasticmem bench pager --workload zipf --size 128M --local 64M --store memory: --policy fifo --json
  elasticmem bench pager --workload zipf --size 128M --local 64M --store memory: --baseline kernel-swap --pin 0
  elasticmem bench pager --workload random --size 128M --local 64M --store memory: --baseline kernel-swap --pin 0 --repeats 5
`;

const OPTIONS = {
  workload: { type: 'string' },
  size: { type: 'string' },
  local: { type: 'string' },
  store: { type: 'string' },
  baseline: { type: 'string' },
  policy: { type: 'string' },
  memory: { type: 'string' },
  touches: { type: 'string' },
  warmup: { type: 'string' },
  seed: { type: 'string' },
  prefetch: { type: 'string' },
  'evict-batch': { type: 'string' },
  'floor-repeats': { type: 'string' },
  repeats: { type: 'string' },
  pin: { type: 'string' },
  json: { type: 'boolean' },
} as const;

function count(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v.trim())) throw new UsageError(`bench pager: --${name} must be a whole number, got '${v}'`);
  return Number(v);
}

function repeatsOf(v: string | undefined): number | undefined {
  const n = count(v, 'repeats');
  if (n !== undefined && (n < 1 || n > 20)) throw new UsageError(`bench pager: --repeats must be from 1 to 20, e.g. --repeats 5 (got ${n})`);
  return n;
}

/** Command line -> options; every mistake is a UsageError naming the option. */
export function optionsFromArgs(values: Record<string, string | boolean | undefined>): PagerBenchOptions {
  const need = (k: string, example: string): string => {
    const v = values[k];
    if (typeof v !== 'string' || v === '') throw new UsageError(`bench pager: --${k} is required, e.g. --${k} ${example}`);
    return v;
  };
  const workload = need('workload', 'seq');
  if (!(WORKLOADS as readonly string[]).includes(workload)) throw new UsageError(`bench pager: unknown workload '${workload}': choose seq, random or zipf`);
  const size = (k: string, example: string) => {
    try {
      return parseSize(need(k, example), `--${k}`);
    } catch (e) {
      if (e instanceof UsageError) throw e;
      throw new UsageError(`bench pager: ${(e as Error).message}`);
    }
  };
  const sizeBytes = size('size', '128M');
  const localBytes = size('local', '64M');
  if (localBytes >= sizeBytes)
    throw new UsageError(`bench pager: --local (${formatSize(localBytes)}) must be smaller than --size (${formatSize(sizeBytes)}), or nothing is paged; e.g. --size 128M --local 64M`);
  const store = need('store', 'memory:');
  try {
    parseStoreUri(store);
  } catch (e) {
    throw new UsageError(`bench pager: --store: ${(e as Error).message}`);
  }
  const baseline = values.baseline as string | undefined;
  if (baseline !== undefined && baseline !== 'kernel-swap') throw new UsageError(`bench pager: unknown baseline '${baseline}': the only baseline is kernel-swap`);
  const policy = values.policy as string | undefined;
  if (policy === 'slru') throw new UsageError("bench pager: policy 'slru' was replaced by 'refault' (the default); use --policy refault or leave it out");
  if (policy !== undefined && policy !== 'refault' && policy !== 'fifo') throw new UsageError(`bench pager: unknown policy '${policy}': choose refault or fifo`);
  const memory = values.memory as string | undefined;
  if (memory !== undefined && memory !== 'shared' && memory !== 'private') throw new UsageError(`bench pager: unknown --memory '${memory}': choose shared (a memfd, the default) or private (anonymous)`);
  const pinCpu = count(values.pin as string | undefined, 'pin');
  if (pinCpu !== undefined && !allowedCpus().includes(pinCpu))
    throw new UsageError(`bench pager: --pin ${pinCpu} is not a CPU this process may use (${allowedCpus().join(',')}): pick one of those`);
  return {
    workload: workload as Workload,
    sizeBytes,
    localBytes,
    store,
    baseline: baseline as 'kernel-swap' | undefined,
    policy: policy as 'refault' | 'fifo' | undefined,
    memory: memory as 'shared' | 'private' | undefined,
    touches: count(values.touches as string | undefined, 'touches'),
    warmup: count(values.warmup as string | undefined, 'warmup'),
    seed: count(values.seed as string | undefined, 'seed'),
    prefetchMax: count(values.prefetch as string | undefined, 'prefetch'),
    evictBatch: count(values['evict-batch'] as string | undefined, 'evict-batch'),
    floorRepeats: count(values['floor-repeats'] as string | undefined, 'floor-repeats'),
    repeats: repeatsOf(values.repeats as string | undefined),
    pinCpu,
  };
}

/** A one-line progress bar on a terminal, redrawn in place at most ~10 times a second. */
function progressBar(): { update(p: Progress): void; done(): void } {
  let last = 0;
  let shown = false;
  const width = 30;
  return {
    update(p) {
      const now = Date.now();
      if (now - last < 100 && p.done < p.total) return;
      last = now;
      const f = p.total > 0 ? Math.min(1, Math.max(0, p.done / p.total)) : 0;
      const bar = '#'.repeat(Math.round(f * width)).padEnd(width, '.');
      const label = p.repeat ? `${p.phase} #${p.repeat}` : p.phase;
      process.stderr.write(`\r\x1b[2K${label.padEnd(15)} [${bar}] ${(f * 100).toFixed(0).padStart(3)}%`);
      shown = true;
    },
    done() {
      if (shown) process.stderr.write('\r\x1b[2K');
    },
  };
}

const f1 = (x: number | undefined) => (x === undefined ? '-' : x < 10 ? x.toFixed(2) : x.toFixed(1));
const pct = (x: number | undefined) => (x === undefined ? '-' : `${(x * 100).toFixed(1)}%`);

export function renderTable(r: PagerBenchResult): string {
  const k = r.kernelSwap;
  const rows: string[][] = [
    ['', 'µs/touch', 'vs kernel', 'fault p50 / p99 µs', 'hit rate', 'integrity'],
    ['elasticmem pager', f1(r.usPerTouch), r.ratioVsKernelSwap !== undefined ? `${r.ratioVsKernelSwap.toFixed(2)}x` : '-', `${f1(r.touchFaultUs.p50)} / ${f1(r.touchFaultUs.p99)}`, pct(r.hitRate), r.integrity],
  ];
  if (k) rows.push([`kernel swap (zram ${k.zramAlgorithm})`, f1(k.usPerTouch), '1.00x', `${f1(k.touchFaultUs.p50)} / ${f1(k.touchFaultUs.p99)}`, pct(k.hitRate), k.integrity]);
  const fl = r.uffdFloor.anon;
  const p99 = fl.map((s) => s.roundTripUs.p99).sort((a, b) => a - b)[Math.floor(fl.length / 2)];
  rows.push(['uffd floor (bare C handler)', '-', '-', `${f1(r.uffdFloorUs)} / ${f1(p99)}`, '-', '-']);
  const mf = r.uffdFloor.memfd;
  const mp99 = mf.map((s) => s.roundTripUs.p99).sort((a, b) => a - b)[Math.floor(mf.length / 2)];
  rows.push(['uffd floor, shared memfd', '-', '-', `${f1(r.uffdFloorMemfdUs)} / ${f1(mp99)}`, '-', '-']);
  rows.push([`uffd floor, this touch loop (${r.memory === 'private' ? 'anon' : 'memfd'})`, '-', '-', `${f1(r.uffdFloorWorkloadUs)} / -`, '-', '-']);
  const w = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  const line = (row: string[]) => '  ' + row.map((cell, c) => (c === 0 ? cell.padEnd(w[c]!) : cell.padStart(w[c]!))).join('   ');
  const p = r.pager;
  return [
    `bench pager: ${r.workload}, ${formatSize(r.sizeBytes)} working set, ${formatSize(r.localBytes)} local, ${r.memory} memory, store ${r.store}, policy ${r.policy}, ${r.touches} timed touches${r.pinCpu !== undefined ? `, pinned to CPU ${r.pinCpu}` : ''}${r.repeats > 1 ? `; medians of ${r.repeats} runs` : ''}`,
    '',
    ...rows.map(line),
    '',
    r.runs ? `  each run, pager / kernel µs per touch: ${r.runs.map((x) => `${f1(x.usPerTouch)}${x.kernelSwapUsPerTouch !== undefined ? ` / ${f1(x.kernelSwapUsPerTouch)} (${x.ratioVsKernelSwap!.toFixed(2)}x)` : ''}`).join(', ')}` : '',
    `  fault p50/p99: faulting touches as the workload saw them (> 2 µs). p50 vs floor: ${r.p50VsFloor.toFixed(2)}x (vs the memfd floor: ${r.p50VsMemfdFloor.toFixed(2)}x; vs the floor under this touch loop: ${r.p50VsWorkloadFloor.toFixed(2)}x)`,
    `  pager's own fault latency (read to resolved): p50 ${f1(r.faultLatencyUs.p50)} µs, p99 ${f1(r.faultLatencyUs.p99)} µs`,
    `  pager during the timed touches: faults ${p.faults}, fetches ${p.fetches}, prefetched ${p.prefetched}, evictions ${p.evictions},`,
    `    clean drops ${p.cleanDrops}, store writes ${p.storeWrites}, wp faults ${p.wpFaults}, evict aborts ${p.evictAborts}`,
    k ? `  kernel swap during the timed touches: swap-ins ${k.swapIns}, swap-outs ${k.swapOuts}, cgroup limit ${formatSize(k.limitBytes)} (cap + ${Math.round(k.overheadBytes / 1024)} KiB of the workload's own memory)${k.oomRetries ? `, repeated ${k.oomRetries}x after a memcg OOM kill` : ''}` : '',
    p.tlbShootdowns !== null ? `  TLB shootdowns during the timed touches (all CPUs): pager ${p.tlbShootdowns}${k && k.tlbShootdowns !== null ? `, kernel swap ${k.tlbShootdowns}` : ''}` : '',
    `  integrity: ${r.integrityDetail.beforeDetach}; after detach: ${r.integrityDetail.afterDetach}`,
    '',
  ].filter((l, i, a) => l !== '' || a[i - 1] !== '').join('\n');
}

const cmd: Command = {
  name: 'bench-pager',
  summary: 'per-touch cost of the pager against kernel swap and the uffd floor',
  usage,
  async run(args) {
    const { values, help } = parse('bench pager', args, OPTIONS, { min: 0, max: 0, names: '' });
    if (help) {
      process.stdout.write(usage);
      return 0;
    }
    const opts = optionsFromArgs(values);
    const bar = !values.json && process.stderr.isTTY ? progressBar() : undefined;
    const ac = new AbortController();
    // Ctrl-C: kill the workload, undo the kernel-swap set-up, detach; then exit 130.
    const onSignal = () => ac.abort(new Error('interrupted'));
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    try {
      const result = await runPagerBench({ ...opts, signal: ac.signal, onProgress: bar ? (p) => bar.update(p) : undefined });
      bar?.done();
      if (values.json) printJson(result);
      else process.stdout.write(renderTable(result));
      return result.integrity === 'ok' && (result.kernelSwap?.integrity ?? 'ok') === 'ok' ? 0 : 1;
    } catch (e) {
      bar?.done();
      if (ac.signal.aborted) {
        process.stderr.write('elasticmem bench pager: interrupted; workload stopped and set-up undone\n');
        return 130;
      }
      throw e;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  },
};
export default cmd;
