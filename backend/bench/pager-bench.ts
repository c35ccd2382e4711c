/**
 * `elasticmem bench pager`: the per-touch cost of the pager against kernel swap and
 * against the bare userfaultfd floor, in one run.
 *
 *   1. pager: the workload (workloads/workload.c) fills a shared memfd (or, with
 *      memory 'private', private anonymous memory, as QEMU's default RAM), the pager
 *      attaches with the local cap and evicts down to it, then the workload runs its
 *      touches (timed inside the workload), verifies every page, and the pager detaches
 *      (and the workload verifies again after the drain);
 *   2. kernel-swap (optional): the same workload as private memory in a memory cgroup
 *      limited to the same cap, swapping to zram (kernel-swap.ts);
 *   3. floor: a bare C handler's single-fault latency (uffd-floor.ts), sampled before,
 *      between and after the phases, since it depends on how busy the CPUs are.
 *
 * `integrity` is "ok" only when every page of the pager run verified, before and after
 * detach, and no touch read a wrong page.
 */
import fs from 'node:fs';
import os from 'node:os';
import { Pager, allowedCpus } from '../../native/pager.ts';
import { findMemfdRegions } from '../../native/regions.ts';
import { ElasticmemError } from '../../native/errors.ts';
import type { PagerStatsRaw } from '../../native/index.ts';
import { openStore, parseStoreUri, redactUri } from '../../kvstore/index.ts';
import type { PageStore } from '../../kvstore/types.ts';
import { PAGE, formatSize } from '../size.ts';
import { buildBenchProgram, launchLineProcess, type LineProcess } from './workload-bin.ts';
import { setupKernelSwap } from './kernel-swap.ts';
import { sampleFloor, floorOf, median, type UffdFloor } from './uffd-floor.ts';
import { tlbShootdowns, countedBetween } from './interrupts.ts';

export const WORKLOADS = ['seq', 'random', 'zipf'] as const;
export type Workload = (typeof WORKLOADS)[number];
export const MEMFD_NAME = 'elasticmem-bench';

export interface Progress {
  phase: 'build' | 'fill' | 'evict' | 'warmup' | 'pager' | 'verify' | 'detach' | 'kernel-swap' | 'floor';
  done: number;
  total: number;
  /** With --repeats: which repeat (1-based) the phase belongs to. */
  repeat?: number;
}

export interface PagerBenchOptions {
  workload: Workload;
  sizeBytes: number;
  localBytes: number;
  /** Store URI (DESIGN.md): memory:, file:///..., redis://..., ... */
  store: string;
  baseline?: 'kernel-swap';
  policy?: 'refault' | 'fifo';
  /** Timed touches (default: a per-workload multiple of the page count, ~5-15 s here). */
  touches?: number;
  /** Untimed touches before the timed ones (default: one per page). */
  warmup?: number;
  seed?: number;
  prefetchMax?: number;
  evictBatch?: number;
  /** Repeats of each floor measurement (default 3). */
  floorRepeats?: number;
  /**
   * Pager runs (each followed by its kernel-swap run) to take the medians of (default 1):
   * one run of each varies by 10-20% here from one invocation to the next.
   */
  repeats?: number;
  /**
   * Put the workload, the pager's fault thread and the floor's two threads on this one
   * CPU (the evictor on the others): every fault is then served by local context
   * switches, not cross-CPU wake-ups, which on a VM decide most of a fault's latency.
   */
  pinCpu?: number;
  /**
   * The kind of memory the workload pages (default 'shared'): a shared memfd (QEMU with
   * memory-backend-memfd, the setup elasticmem recommends) or private anonymous memory
   * (QEMU's default RAM), which the pager drops by injected MADV_DONTNEED.
   */
  memory?: 'shared' | 'private';
  onProgress?: (p: Progress) => void;
  /** Aborting kills the workload; everything set up is undone before the promise settles. */
  signal?: AbortSignal;
}

/** What the workload itself measured for the timed touches. */
export interface WorkloadResult {
  touches: number;
  seconds: number;
  usPerTouch: number;
  touchUs: { p50: number; p99: number };
  /** Touches slower than 2 µs: these took a page fault (a resident touch is ~0.1 µs). */
  slowTouches: number;
  slowTouchUs: { p50: number; p99: number };
  readMismatches: number;
}

export interface Percentiles { p50: number; p99: number }

/** One repeat: the pager run and the kernel-swap run right after it. */
export interface RepeatResult {
  usPerTouch: number;
  touchFaultUs: Percentiles;
  hitRate: number;
  integrity: 'ok' | 'corrupt';
  kernelSwapUsPerTouch?: number;
  kernelSwapTouchFaultUs?: Percentiles;
  ratioVsKernelSwap?: number;
}

export interface PagerBenchResult {
  workload: Workload;
  sizeBytes: number;
  localBytes: number;
  store: string;
  policy: 'refault' | 'fifo';
  /** The kind of memory paged: 'shared' (memfd) or 'private' (anonymous). */
  memory: 'shared' | 'private';
  touches: number;
  warmupTouches: number;
  seed: number;
  /** Pager runs behind the numbers (--repeats); with more than one, each figure is a median. */
  repeats: number;
  /** Every repeat, in order (only with --repeats 2 or more). */
  runs?: RepeatResult[];
  /** Median over the repeats; pager, touchFaultUs, hitRate and the integrity details are those of the median run. */
  usPerTouch: number;
  /** The median run's touches slower than 2 µs (those that faulted), as the kernel-swap side counts them. */
  slowTouches?: number;
  /** Median over the repeats; kernelSwap is the median run's detail. */
  kernelSwapUsPerTouch?: number;
  /** Median of each repeat's own ratio (its pager run against the kernel run right after it). */
  ratioVsKernelSwap?: number;
  uffdFloorUs: number;
  /** The floor for a shared memfd (uffdFloorUs is the anonymous one). */
  uffdFloorMemfdUs: number;
  /**
   * The like-for-like floor: the same bare handler under this run's own touch loop (the
   * workload binary in a floor-* mode: same page order, same per-touch work and timing,
   * same kind of memory as the pager run), so what it adds to a fault is not counted
   * against the pager. Median over the floor samples.
   */
  uffdFloorWorkloadUs: number;
  /** The CPU the workload, the fault thread and the floor ran on (--pin), if pinned. */
  pinCpu?: number;
  /** The pager's own fault latency (fault read to fault resolved), timed touches only. */
  faultLatencyUs: Percentiles;
  /** Faulting touches as the workload saw them (touch to return): same vantage as the floor. */
  touchFaultUs: Percentiles;
  /** touchFaultUs.p50 / uffdFloorUs (like for like with memory 'private': both anonymous). */
  p50VsFloor: number;
  /** touchFaultUs.p50 / uffdFloorMemfdUs (like for like with memory 'shared': both a memfd). */
  p50VsMemfdFloor: number;
  /** touchFaultUs.p50 / uffdFloorWorkloadUs: against a bare handler under the same touch loop. */
  p50VsWorkloadFloor: number;
  /** 1 - fetches / touches over the timed touches. */
  hitRate: number;
  integrity: 'ok' | 'corrupt';
  integrityDetail: { beforeDetach: string; afterDetach: string; readMismatches: number };
  pager: PagerPhaseStats;
  kernelSwap?: KernelSwapResult;
  uffdFloor: UffdFloor;
  machine: { kernel: string; cpus: number; date: string; cpuIdle: CpuIdle };
}

/** How this machine's idle CPUs wait: decides what a cross-CPU wake-up costs. */
export interface CpuIdle { driver: string; haltPollNs: number | null }

function cpuIdle(): CpuIdle {
  const read = (f: string) => { try { return fs.readFileSync(f, 'utf8').trim(); } catch { return ''; } };
  const poll = read('/sys/module/haltpoll/parameters/guest_halt_poll_ns');
  return { driver: read('/sys/devices/system/cpu/cpuidle/current_driver') || 'none', haltPollNs: poll === '' ? null : Number(poll) };
}

/** The pager's own counters over one phase (phaseStats): native counters and gauges, typed as native/index.ts declares them. */
export interface PagerPhaseStats extends Pick<
  PagerStatsRaw,
  | 'faults' | 'zeroFills' | 'fetches' | 'evictions' | 'cleanDrops' | 'storeWrites' | 'prefetched'
  | 'wpFaults' | 'discards' | 'evictAborts' | 'storeRetries' | 'capWaits' | 'capWaitUs' | 'evictBatches'
  | 'residentPages' | 'localCapPages' | 'remotePages' | 'totalPages' | 'faultCpu' | 'evictMode'
  | 'faultLatencyUs' | 'latencyHistogram'
> {
  prefetchMax?: number;
  evictBatch?: number;
  /** TLB-shootdown interrupts all CPUs received during the timed touches (host-wide; null: not counted here). */
  tlbShootdowns: number | null;
  secondsToCap: number;
  detachSeconds: number;
}

export interface KernelSwapResult {
  usPerTouch: number;
  touchFaultUs: Percentiles;
  slowTouches: number;
  swapIns: number;
  swapOuts: number;
  hitRate: number;
  limitBytes: number;
  /** The workload's own memory outside the paged region (code, page tables, its arrays): added to the limit. */
  overheadBytes: number;
  zramAlgorithm: string;
  integrity: 'ok' | 'corrupt';
  /** Runs repeated because the kernel OOM-killed the workload in its cgroup (see kernelSwapPhase). */
  oomRetries: number;
  /** TLB-shootdown interrupts all CPUs received during the timed touches (host-wide; null: not counted here). */
  tlbShootdowns: number | null;
}

const TOUCHES_PER_PAGE: Record<Workload, number> = { seq: 6, random: 12, zipf: 40 };

/** Bad input is refused here, before anything is built, started or connected. */
export function validatePagerBenchOptions(o: PagerBenchOptions): void {
  if (!(WORKLOADS as readonly string[]).includes(o.workload))
    throw new ElasticmemError(`unknown workload '${o.workload}': choose seq, random or zipf`, 'EM_BAD_ARG');
  const whole = (n: number) => Number.isSafeInteger(n) && n > 0 && n % PAGE === 0;
  if (!whole(o.sizeBytes)) throw new ElasticmemError(`--size must be a positive multiple of 4 KiB, e.g. 128M (got ${o.sizeBytes})`, 'EM_BAD_ARG');
  if (o.sizeBytes < 1024 * 1024) throw new ElasticmemError(`--size ${formatSize(o.sizeBytes)} is too small to measure anything: use at least 1M, e.g. 128M`, 'EM_BAD_ARG');
  if (!whole(o.localBytes)) throw new ElasticmemError(`--local must be a positive multiple of 4 KiB, e.g. 64M (got ${o.localBytes})`, 'EM_BAD_ARG');
  if (o.localBytes >= o.sizeBytes)
    throw new ElasticmemError(`--local (${formatSize(o.localBytes)}) must be smaller than --size (${formatSize(o.sizeBytes)}): otherwise nothing is paged; e.g. --size 128M --local 64M`, 'EM_BAD_ARG');
  parseStoreUri(o.store); // throws a clear error naming the supported schemes
  if (o.baseline !== undefined && o.baseline !== 'kernel-swap') throw new ElasticmemError(`unknown baseline '${o.baseline}': the only baseline is kernel-swap`, 'EM_BAD_ARG');
  if (o.policy !== undefined && o.policy !== 'refault' && o.policy !== 'fifo') throw new ElasticmemError(`unknown policy '${o.policy}': choose refault or fifo`, 'EM_BAD_ARG');
  for (const [k, v] of [['touches', o.touches], ['warmup', o.warmup], ['seed', o.seed], ['prefetch', o.prefetchMax], ['evict-batch', o.evictBatch]] as const) {
    if (v !== undefined && (!Number.isSafeInteger(v) || v < 0))
      throw new ElasticmemError(v > Number.MAX_SAFE_INTEGER ? `--${k} ${v} is too large` : `--${k} must be a whole number >= 0 (got ${v})`, 'EM_BAD_ARG');
  }
  if (o.floorRepeats !== undefined && (!Number.isSafeInteger(o.floorRepeats) || o.floorRepeats < 1 || o.floorRepeats > 20))
    throw new ElasticmemError(`--floor-repeats must be a whole number from 1 to 20, e.g. 3 (got ${o.floorRepeats})`, 'EM_BAD_ARG');
  if (o.touches === 0) throw new ElasticmemError('--touches must be at least 1', 'EM_BAD_ARG');
  if (o.repeats !== undefined && (!Number.isSafeInteger(o.repeats) || o.repeats < 1 || o.repeats > 20))
    throw new ElasticmemError(`--repeats must be a whole number from 1 to 20, e.g. 5 (got ${o.repeats})`, 'EM_BAD_ARG');
  if (o.evictBatch === 0) throw new ElasticmemError('--evict-batch must be at least 1', 'EM_BAD_ARG');
  if (o.pinCpu !== undefined) {
    const allowed = allowedCpus();
    if (!Number.isInteger(o.pinCpu) || !allowed.includes(o.pinCpu))
      throw new ElasticmemError(`--pin ${o.pinCpu} is not a CPU this process may use (${allowed.join(',')}): pick one of those`, 'EM_BAD_ARG');
  }
}

export async function runPagerBench(opts: PagerBenchOptions): Promise<PagerBenchResult> {
  validatePagerBenchOptions(opts);
  if (process.getuid?.() !== 0) throw new ElasticmemError('bench pager needs root (it attaches to a process with ptrace and userfaultfd)', 'EM_BENCH_NEEDS_ROOT');
  const pages = opts.sizeBytes / PAGE;
  const touches = opts.touches ?? TOUCHES_PER_PAGE[opts.workload] * pages;
  const warmup = opts.warmup ?? pages;
  const seed = opts.seed ?? 42;
  const policy = opts.policy ?? 'refault';
  const progress = opts.onProgress ?? (() => {});
  opts.signal?.throwIfAborted();

  progress({ phase: 'build', done: 0, total: 1 });
  const bin = buildBenchProgram('workload');
  buildBenchProgram('uffd-floor');
  // (the floor-* modes run the same loop with no warm-up: every page faults on its first touch)
  const args = (mode: 'memfd' | 'anon' | 'floor-memfd' | 'floor-anon', warm = warmup) =>
    [mode, String(opts.sizeBytes), opts.workload, String(touches), String(warm), String(seed), String(process.pid)];

  // The floor depends on how busy the CPUs are (whether the faulting thread and the
  // handler get one each), so its samples are spread over the run: before the pager
  // phase, between the phases, and at the end.
  const repeats = opts.floorRepeats ?? 3;
  const samples: Awaited<ReturnType<typeof sampleFloor>>[] = [];
  const workloadFloors: number[] = [];
  const floorKind = opts.memory === 'private' ? 'anon' : 'memfd';
  const floorSample = async () => {
    opts.signal?.throwIfAborted();
    progress({ phase: 'floor', done: samples.length, total: repeats });
    samples.push(await sampleFloor(4000, opts.pinCpu));
    workloadFloors.push(await workloadFloorPhase(bin, args(`floor-${floorKind}`, 0), opts));
  };
  const runCount = opts.repeats ?? 1;
  const pagerRuns: Awaited<ReturnType<typeof pagerPhase>>[] = [];
  const kernelRuns: KernelSwapResult[] = [];
  const store = await openStore(opts.store); // an unreachable store fails before anything runs
  try {
    for (let i = 1; i <= runCount; i++) {
      const tagged = runCount > 1 ? (p: Progress) => progress({ ...p, repeat: i }) : progress;
      if (i === 1 && repeats >= 2) await floorSample();
      pagerRuns.push(await pagerPhase(bin, args(opts.memory === 'private' ? 'anon' : 'memfd'), store, opts, policy, touches, tagged));
      if (i === 1 && repeats >= 3) await floorSample();
      if (opts.baseline === 'kernel-swap') kernelRuns.push(await kernelSwapPhase(bin, args('anon'), opts, touches, tagged));
    }
  } finally {
    await store.close().catch(() => {});
  }
  while (samples.length < repeats) await floorSample();
  const floor = { ...floorOf(samples), workloadUs: workloadFloors };
  const workloadFloor = median(workloadFloors);

  const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;
  const okOf = (r: (typeof pagerRuns)[number]) =>
    r.integrity.before.startsWith('integrity ok') && r.integrity.after.startsWith('integrity ok') && r.wl.readMismatches === 0;
  const hitOf = (r: (typeof pagerRuns)[number]) => round(1 - r.stats.fetches / touches, 4);
  // The median run (by time per touch) stands for all of them in the detailed fields.
  const medianRun = <T,>(runs: T[], key: (r: T) => number): T => [...runs].sort((a, b) => key(a) - key(b))[Math.floor((runs.length - 1) / 2)]!;
  const pagerPart = medianRun(pagerRuns, (r) => r.wl.usPerTouch);
  const kernel = kernelRuns.length ? medianRun(kernelRuns, (k) => k.usPerTouch) : undefined;
  const pairRatios = kernelRuns.map((k, i) => pagerRuns[i]!.wl.usPerTouch / k.usPerTouch);
  const runs: RepeatResult[] = pagerRuns.map((r, i) => ({
    usPerTouch: r.wl.usPerTouch,
    touchFaultUs: r.wl.slowTouchUs,
    hitRate: hitOf(r),
    integrity: okOf(r) ? 'ok' : 'corrupt',
    ...(kernelRuns[i] ? { kernelSwapUsPerTouch: kernelRuns[i]!.usPerTouch, kernelSwapTouchFaultUs: kernelRuns[i]!.touchFaultUs, ratioVsKernelSwap: round(pairRatios[i]!) } : {}),
  }));

  const { wl, stats, integrity } = pagerPart;
  const ok = pagerRuns.every(okOf);
  const result: PagerBenchResult = {
    workload: opts.workload,
    sizeBytes: opts.sizeBytes,
    localBytes: opts.localBytes,
    store: redactUri(opts.store.trim()),
    policy,
    memory: opts.memory ?? 'shared',
    touches,
    warmupTouches: warmup,
    seed,
    repeats: runCount,
    ...(runCount > 1 ? { runs } : {}),
    usPerTouch: wl.usPerTouch,
    slowTouches: wl.slowTouches,
    ...(kernel ? { kernelSwapUsPerTouch: kernel.usPerTouch, ratioVsKernelSwap: round(medianRun(pairRatios, (x) => x)) } : {}),
    uffdFloorUs: floor.floorUs,
    uffdFloorMemfdUs: floor.memfdFloorUs,
    uffdFloorWorkloadUs: workloadFloor,
    ...(opts.pinCpu !== undefined ? { pinCpu: opts.pinCpu } : {}),
    faultLatencyUs: { p50: stats.faultLatencyUs.p50, p99: stats.faultLatencyUs.p99 },
    touchFaultUs: wl.slowTouchUs,
    p50VsFloor: floor.floorUs > 0 ? round(wl.slowTouchUs.p50 / floor.floorUs) : 0,
    p50VsMemfdFloor: floor.memfdFloorUs > 0 ? round(wl.slowTouchUs.p50 / floor.memfdFloorUs) : 0,
    p50VsWorkloadFloor: workloadFloor > 0 ? round(wl.slowTouchUs.p50 / workloadFloor) : 0,
    hitRate: hitOf(pagerPart),
    integrity: ok ? 'ok' : 'corrupt',
    integrityDetail: { beforeDetach: integrity.before, afterDetach: integrity.after, readMismatches: wl.readMismatches },
    pager: stats,
    ...(kernel ? { kernelSwap: { ...kernel, integrity: kernelRuns.every((k) => k.integrity === 'ok') ? 'ok' as const : 'corrupt' as const } } : {}),
    uffdFloor: floor,
    machine: { kernel: os.release(), cpus: os.cpus().length, date: new Date().toISOString(), cpuIdle: cpuIdle() },
  };
  return result;
}

// ---------------------------------------------------------------------------- phases

/** The workload's CPUs: the pinned one, if any (both the pager's and the kernel's run). */
const pinned = (opts: PagerBenchOptions): number[] | undefined => (opts.pinCpu === undefined ? undefined : [opts.pinCpu]);

/** Kill the workload when the caller aborts; the pending read then fails and cleanup runs. */
function killOnAbort(proc: LineProcess, signal?: AbortSignal): () => void {
  if (!signal) return () => {};
  const onAbort = () => { void proc.kill(); };
  signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

interface Driven { wl: WorkloadResult; integrity: string }

/**
 * go -> warm -> run -> progress... -> result -> verify -> integrity. `aroundRun` hooks
 * snapshot counters right before the timed touches start and right after they end
 * (the workload waits on stdin in between, so nothing else happens in the target).
 */
async function drive(proc: LineProcess, hooks: { beforeRun(): void; afterRun(): void }, onProgress: (done: number, total: number) => void, phase: string): Promise<Driven> {
  const LINE_TIMEOUT = 180_000;
  proc.send('go');
  const warm = await proc.next(LINE_TIMEOUT, `${phase}: end of warm-up`);
  if (!warm.includes('"warm"')) throw new ElasticmemError(`${phase}: workload said '${warm}' instead of finishing its warm-up`, 'EM_BENCH_WORKLOAD');
  hooks.beforeRun();
  proc.send('run');
  let wl: WorkloadResult | undefined;
  while (!wl) {
    const line = await proc.next(LINE_TIMEOUT, `${phase}: touch progress`);
    const v = JSON.parse(line) as Partial<WorkloadResult> & { progress?: number; total?: number };
    if (v.progress !== undefined) onProgress(v.progress, v.total ?? 0);
    else if (v.touches !== undefined) wl = v as WorkloadResult;
  }
  hooks.afterRun();
  proc.send('verify');
  const integrity = await proc.next(LINE_TIMEOUT, `${phase}: verification`);
  return { wl, integrity };
}

/**
 * The like-for-like floor (uffdFloorWorkloadUs): the workload binary in a floor-* mode,
 * its region paged by its own bare handler from empty (`args` without warm-up, so the
 * timed touches fault on every page's first touch). Returns its faulting touches' p50.
 */
async function workloadFloorPhase(bin: string, args: string[], opts: PagerBenchOptions): Promise<number> {
  const proc = await launchLineProcess(bin, args, { cpus: pinned(opts) });
  const unhook = killOnAbort(proc, opts.signal);
  try {
    const { wl, integrity } = await drive(proc, { beforeRun() {}, afterRun() {} }, () => {}, 'uffd floor under the workload');
    if (!integrity.startsWith('integrity ok') || wl.readMismatches !== 0)
      throw new ElasticmemError(`the uffd floor under the workload read wrong pages (${integrity}, ${wl.readMismatches} mismatches)`, 'EM_BENCH_FLOOR');
    return wl.slowTouchUs.p50;
  } finally {
    unhook();
    await proc.kill();
  }
}

async function pagerPhase(bin: string, args: string[], store: PageStore, opts: PagerBenchOptions, policy: 'refault' | 'fifo', touches: number, progress: (p: Progress) => void) {
  progress({ phase: 'fill', done: 0, total: 1 });
  const proc = await launchLineProcess(bin, args, { cpus: pinned(opts) });
  const unhook = killOnAbort(proc, opts.signal);
  let pager: Pager | undefined;
  const vmId = `bench-${proc.pid}`;
  try {
    // Private memory has no name to find it by: the workload's ready line says where it is.
    const ready = JSON.parse(proc.first) as { mode: string; start: string; length: number };
    const regions = ready.mode === 'anon'
      ? [{ start: ready.start, length: ready.length, kind: 'anon' as const, name: 'bench-private' }]
      : findMemfdRegions(proc.pid, MEMFD_NAME);
    const capPages = opts.localBytes / PAGE;
    const t0 = Date.now();
    const others = allowedCpus().filter((c) => c !== opts.pinCpu);
    const cpus = opts.pinCpu === undefined ? {} : { faultCpus: [opts.pinCpu], ...(others.length ? { evictCpus: others } : {}) };
    pager = await Pager.attach({ pid: proc.pid, vmId, regions, capPages, store, policy, prefetchMax: opts.prefetchMax, evictBatch: opts.evictBatch, ...cpus });
    const p = pager;
    const total = p.stats().totalPages;
    // Start from the steady state the cap defines: everything above it is in the store.
    for (;;) {
      const s = p.stats();
      progress({ phase: 'evict', done: Math.min(total - s.residentPages, total - capPages), total: total - capPages });
      if (s.residentPages <= capPages) break;
      if (Date.now() - t0 > 300_000) throw new ElasticmemError(`the pager did not evict down to the cap within 300 s (resident ${s.residentPages}, cap ${capPages})`, 'EM_BENCH_TIMEOUT');
      opts.signal?.throwIfAborted();
      await new Promise((r) => setTimeout(r, 20));
    }
    const secondsToCap = (Date.now() - t0) / 1000;
    let s0!: PagerStatsRaw;
    let s1!: PagerStatsRaw;
    let tlb0: number | null = null;
    let tlb1: number | null = null;
    progress({ phase: 'warmup', done: 0, total: 1 });
    const d = await drive(proc, {
      beforeRun: () => { s0 = p.stats(); tlb0 = tlbShootdowns(); },
      afterRun: () => { s1 = p.stats(); tlb1 = tlbShootdowns(); },
    }, (done, tot) => progress({ phase: 'pager', done, total: tot }), 'pager run');
    progress({ phase: 'detach', done: 0, total: 1 });
    const td = Date.now();
    p.on('progress', (e: { done?: number; total?: number }) => progress({ phase: 'detach', done: e.done ?? 0, total: e.total ?? 1 }));
    await p.detach();
    const detachSeconds = (Date.now() - td) / 1000;
    // Invariant 6 for free: after the drain every page must still be right.
    progress({ phase: 'verify', done: 0, total: 1 });
    proc.send('verify');
    const after = await proc.next(180_000, 'verification after detach');
    proc.send('exit');
    return {
      wl: d.wl,
      integrity: { before: d.integrity, after },
      stats: phaseStats(s0, s1, opts, countedBetween(tlb0, tlb1), secondsToCap, detachSeconds),
      touches,
    };
  } finally {
    unhook();
    if (pager && !pager.isClosed) pager.abandon();
    await proc.kill();
    // The run's pages, on success (obsolete after the drain) and on failure alike.
    await store.dropVm(vmId).catch(() => {});
  }
}

/** The kernel OOM-killed the baseline workload in its cgroup (reclaim found nothing to swap in time). */
class MemcgOom extends ElasticmemError {
  constructor(limitBytes: number) {
    super(`the kernel OOM-killed the kernel-swap baseline workload in its memory cgroup (limit ${formatSize(limitBytes)}) three times: its reclaim could not keep up at this cap; try a larger --local`, 'EM_BENCH_MEMCG_OOM');
  }
}

/**
 * With a small cap, memcg reclaim occasionally gives up and OOM-kills the workload
 * although swap has room (the kernel's, not ours): retry such a run from scratch, at
 * most three times, and say how often it happened.
 */
async function kernelSwapPhase(bin: string, args: string[], opts: PagerBenchOptions, touches: number, progress: (p: Progress) => void): Promise<KernelSwapResult> {
  for (let attempt = 1; ; attempt++) {
    try {
      return { ...(await kernelSwapAttempt(bin, args, opts, touches, progress)), oomRetries: attempt - 1 };
    } catch (e) {
      if (!(e instanceof MemcgOom) || attempt >= 3) throw e;
    }
  }
}

async function kernelSwapAttempt(bin: string, args: string[], opts: PagerBenchOptions, touches: number, progress: (p: Progress) => void): Promise<Omit<KernelSwapResult, 'oomRetries'>> {
  opts.signal?.throwIfAborted();
  progress({ phase: 'kernel-swap', done: 0, total: 1 });
  // Unlimited while the workload fills its memory: its own overhead (code, page tables,
  // arrays) is then measured, and the limit set to the cap plus exactly that, so the
  // paged memory gets the same local budget as under the pager.
  const env = await setupKernelSwap({ limitBytes: opts.sizeBytes * 4, swapBytes: Math.max(2 * opts.sizeBytes, 64 * 1024 * 1024) });
  let proc: LineProcess | undefined;
  let unhook = () => {};
  let limitBytes = opts.sizeBytes * 4;
  const oomKills = () => Number(/oom_kill (\d+)/.exec(fs.readFileSync(`${env.cgroupDir}/memory.oom_control`, 'utf8'))?.[1] ?? 0);
  try {
    proc = await launchLineProcess(bin, args, { cgroupDir: env.cgroupDir, cpus: pinned(opts) });
    unhook = killOnAbort(proc, opts.signal);
    const usageBytes = Number(fs.readFileSync(`${env.cgroupDir}/memory.usage_in_bytes`, 'utf8'));
    const overheadBytes = Math.max(0, usageBytes - opts.sizeBytes);
    limitBytes = opts.localBytes + overheadBytes;
    // Writing the limit reclaims down to it at once: swap-out happens here, untimed, like
    // the pager's eviction down to the cap.
    fs.writeFileSync(`${env.cgroupDir}/memory.limit_in_bytes`, String(limitBytes));
    let c0 = env.swapCounters();
    let c1 = c0;
    let tlb0: number | null = null;
    let tlb1: number | null = null;
    const d = await drive(proc, {
      beforeRun: () => { c0 = env.swapCounters(); tlb0 = tlbShootdowns(); },
      afterRun: () => { c1 = env.swapCounters(); tlb1 = tlbShootdowns(); },
    }, (done, tot) => progress({ phase: 'kernel-swap', done, total: tot }), 'kernel-swap run');
    proc.send('exit');
    const swapIns = c1.swapIns - c0.swapIns;
    return {
      usPerTouch: d.wl.usPerTouch,
      touchFaultUs: d.wl.slowTouchUs,
      slowTouches: d.wl.slowTouches,
      swapIns,
      swapOuts: c1.swapOuts - c0.swapOuts,
      // pswpin is host-wide and also counts the workload's own arrays coming back: clamp.
      hitRate: Math.max(0, Math.round((1 - swapIns / touches) * 1e4) / 1e4),
      limitBytes,
      overheadBytes,
      zramAlgorithm: env.zramAlgorithm,
      integrity: d.integrity.startsWith('integrity ok') && d.wl.readMismatches === 0 ? 'ok' : 'corrupt',
      tlbShootdowns: countedBetween(tlb0, tlb1),
    };
  } catch (e) {
    if (!opts.signal?.aborted && oomKills() > 0) throw new MemcgOom(limitBytes);
    throw e;
  } finally {
    unhook();
    await proc?.kill();
    await env.cleanup();
  }
}

/** Counters over the timed touches only (s1 - s0); gauges at the end of them. */
function phaseStats(s0: PagerStatsRaw, s1: PagerStatsRaw, opts: PagerBenchOptions, tlb: number | null, secondsToCap: number, detachSeconds: number): PagerPhaseStats {
  const d = (k: keyof PagerStatsRaw) => (s1[k] as number) - (s0[k] as number);
  const hist = histogramDelta(s0.latencyHistogram, s1.latencyHistogram);
  const lat = percentilesOf(hist);
  return {
    faults: d('faults'),
    zeroFills: d('zeroFills'),
    fetches: d('fetches'),
    evictions: d('evictions'),
    cleanDrops: d('cleanDrops'),
    storeWrites: d('storeWrites'),
    prefetched: d('prefetched'),
    wpFaults: d('wpFaults'),
    discards: d('discards'),
    evictAborts: d('evictAborts'),
    storeRetries: d('storeRetries'),
    capWaits: d('capWaits'),
    capWaitUs: d('capWaitUs'),
    evictBatches: d('evictBatches'),
    residentPages: s1.residentPages,
    localCapPages: s1.localCapPages,
    remotePages: s1.remotePages,
    totalPages: s1.totalPages,
    faultCpu: s1.faultCpu,
    evictMode: s1.evictMode,
    faultLatencyUs: lat,
    latencyHistogram: hist,
    ...(opts.prefetchMax !== undefined ? { prefetchMax: opts.prefetchMax } : {}),
    ...(opts.evictBatch !== undefined ? { evictBatch: opts.evictBatch } : {}),
    tlbShootdowns: tlb,
    secondsToCap,
    detachSeconds,
  };
}

/** Bucket-wise difference of two cumulative histograms (bounds lists may differ in length: trailing empty buckets are trimmed). */
export function histogramDelta(a: { boundsUs: number[]; counts: number[] }, b: { boundsUs: number[]; counts: number[] }): { boundsUs: number[]; counts: number[] } {
  const before = new Map(a.boundsUs.map((u, i) => [u, a.counts[i] ?? 0]));
  const boundsUs: number[] = [];
  const counts: number[] = [];
  b.boundsUs.forEach((u, i) => {
    boundsUs.push(u);
    counts.push((b.counts[i] ?? 0) - (before.get(u) ?? 0));
  });
  while (counts.length && counts[counts.length - 1] === 0) { counts.pop(); boundsUs.pop(); }
  return { boundsUs, counts };
}

export function percentilesOf(h: { boundsUs: number[]; counts: number[] }): PagerPhaseStats['faultLatencyUs'] {
  const count = h.counts.reduce((x, y) => x + y, 0);
  const pct = (q: number) => {
    if (!count) return 0;
    const want = Math.max(1, Math.ceil(q * count));
    let acc = 0;
    for (let i = 0; i < h.counts.length; i++) {
      acc += h.counts[i]!;
      if (acc >= want) return h.boundsUs[i]!;
    }
    return h.boundsUs[h.boundsUs.length - 1] ?? 0;
  };
  return { p50: pct(0.5), p90: pct(0.9), p99: pct(0.99), max: count ? h.boundsUs[h.boundsUs.length - 1]! : 0, count };
}
