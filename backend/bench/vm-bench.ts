/**
 * `elasticmem bench vm`: the test guest's own workload (vm-configs/guest/workload.c)
 * under libvirt, unattached and then attached at 100%, 50% and 25% local memory for
 * each store, timed by the guest itself (`ELASTICMEM-WORKLOAD ... ms=` lines).
 *
 * Everything goes through the product as an operator would use it: a real
 * `elasticmem daemon` on a private socket, attach / stats / detach over the control
 * protocol. The guest boot and console parsing are the ones the tests and the demo use
 * (backend/vm/libvirt.ts, backend/vm/guest.ts); redis-server and memcached, when
 * asked for by name, are started on loopback by test/helpers/servers.ts.
 *
 * "Local fraction" is a fraction of the guest's footprint on the host: the pages
 * resident when it is attached at 100% (kernel + workload + whatever the guest touched),
 * which is what the cap limits. The cap of each phase is that footprint times the
 * fraction. Each phase is a fresh attach (so its counters and latency percentiles
 * are its own) followed by a detach that drains every page back.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ElasticmemError } from '../../native/errors.ts';
import { parseStoreUri } from '../../kvstore/uri.ts';
import { call } from '../cli/client.ts';
import type { PublicStats } from '../stats/stream.ts';
import { PAGE } from '../size.ts';
import type { AccessPattern, WorkloadPass } from '../vm/guest.ts';

const BIN = fileURLToPath(new URL('../../bin/elasticmem.js', import.meta.url));
const MiB = 1024 * 1024;

/** A store to measure: what the user asked for and the URI the daemon is given. */
export interface StoreChoice {
  /** As given on the command line (`memory:`, `redis`, `redis://10.0.0.5:6379`...). */
  spec: string;
  /** Started by the bench ('redis', 'memcached', 'file' in a temporary folder) or given. */
  own: boolean;
  kind: 'memory' | 'file' | 'redis' | 'memcached' | 'given';
  uri?: string;
}

export interface VmBenchOptions {
  stores: StoreChoice[];
  /** Workload size (MiB): what the guest fills and verifies every pass. */
  sizeMiB: number;
  /** Guest boot RAM (MiB). */
  guestMiB: number;
  pattern: AccessPattern;
  /** Fraction of pages rewritten per pass. */
  write: number;
  seed: number;
  /** Local fractions of the footprint, descending; 1 means "everything fits". */
  fractions: number[];
  /** Passes discarded after each attach (eviction down to the cap happens in these). */
  warmup: number;
  /** Warm-up stops early once a pass faults about as much as the one before; never beyond this. */
  maxWarmup: number;
  /** Passes timed per phase. */
  passes: number;
  /** Guest sleep between passes (ms): lets the console and the host breathe. */
  pauseMs: number;
  /** Longest wait for one pass before the bench gives up (ms). */
  passTimeoutMs: number;
  onProgress?: (p: Progress) => void;
}

export interface Progress {
  /** Passes done / planned (the unit of the progress bar). */
  done: number;
  total: number;
  label: string;
}

export interface PhaseResult {
  fraction: number;
  localBytes: number;
  /** Timed passes (guest-reported ms). */
  passesMs: number[];
  medianMs: number;
  minMs: number;
  maxMs: number;
  /** Unattached passes timed right before this phase's attach (its paired baseline). */
  baselineMs: number[];
  baselineMedianMs: number;
  /** medianMs / baselineMedianMs. */
  slowdown: number;
  /** minMs / min of the paired baseline: the least disturbed pass of each, for a loaded host. */
  slowdownOfMin: number;
  attachMs: number;
  /** From attach until resident pages were at or below the cap (eviction of the excess). */
  settleMs: number;
  detachMs: number;
  corrupt: number;
  /** Counters of this attach (a fresh session per phase), from `stats --json` at the end of the phase. */
  stats: Pick<PublicStats, 'faults' | 'zeroFills' | 'fetches' | 'evictions' | 'cleanDrops' | 'storeWrites' | 'prefetched' | 'residentPages' | 'localCapPages' | 'remotePages' | 'faultLatencyUs' | 'storeState'> & Record<string, unknown>;
  /** Passes run before timing (see maxWarmup) and the pager faults during each. */
  warmupPasses: number;
  warmupFaultsByPass: number[];
  /** Pager faults during each timed pass (stats read after each pass: ±100 ms of alignment). */
  faultsByPass: number[];
  /** Pager counters over the timed passes only, per pass (stats read just before and just after them). */
  faultsPerPass: number;
  fetchesPerPass: number;
  evictionsPerPass: number;
}

export interface StoreResult {
  store: string;
  uri: string;
  ownServer: boolean;
  /** Pages resident at the first store's 100% attach: the guest's footprint on the host; caps are fractions of it. */
  footprintPages: number;
  phases: PhaseResult[];
  error?: string;
}

export interface VmBenchResult {
  bench: 'vm';
  version: 1;
  date: string;
  host: { hostname: string; cpus: number; cpuModel: string; kernel: string; accel: 'kvm' | 'tcg'; qemu: string; loadAvg1: { start: number; end: number } };
  guest: { memMiB: number; template: 'memfd'; workload: { sizeMiB: number; pages: number; pattern: AccessPattern; write: number; seed: number; pauseMs: number } };
  method: { fractions: number[]; warmupPasses: number; maxWarmupPasses: number; timedPasses: number; fractionOf: 'footprint'; timing: 'guest-reported pass ms' };
  /** Every unattached pass of the run (the paired baselines of all phases and a final one). */
  baseline: { passesMs: number[]; medianMs: number; minMs: number; maxMs: number };
  stores: StoreResult[];
  /** Sum of corrupt pages over every pass the guest ran (must be 0). */
  corrupt: number;
  guestPasses: number;
  durationS: number;
}

export const DEFAULT_STORES = 'memory:,file,redis,memcached';

/** Parse `--stores`: comma-separated names (bench-managed) or full URIs. */
export function parseStores(list: string): StoreChoice[] {
  const items = list.split(',').map((s) => s.trim()).filter(Boolean);
  if (!items.length) throw new ElasticmemError(`--stores: empty list; e.g. --stores ${DEFAULT_STORES}`, 'BAD_ARG');
  const out: StoreChoice[] = [];
  // A memcached URI with several servers contains commas: glue host:port tails back on.
  for (let i = 0; i < items.length; i++) {
    let it = items[i]!;
    while (/^(memcached|redis\+cluster|rediss\+cluster|aerospike):\/\//i.test(it) && i + 1 < items.length && /^[\w.-]+:\d+(\/.*)?$/.test(items[i + 1]!)) it += ',' + items[++i];
    const bare = it.replace(/:$/, '').toLowerCase();
    if (bare === 'memory') out.push({ spec: 'memory:', own: false, kind: 'memory', uri: 'memory:' });
    else if (bare === 'file') out.push({ spec: 'file', own: true, kind: 'file' });
    else if (bare === 'redis') out.push({ spec: 'redis', own: true, kind: 'redis' });
    else if (bare === 'memcached') out.push({ spec: 'memcached', own: true, kind: 'memcached' });
    else {
      try {
        parseStoreUri(it);
      } catch (e) {
        throw new ElasticmemError(`--stores: ${(e as Error).message}. Or name a store the bench starts itself: memory, file, redis, memcached`, 'BAD_ARG');
      }
      out.push({ spec: it, own: false, kind: 'given', uri: it });
    }
  }
  const seen = new Set<string>();
  for (const s of out) {
    if (seen.has(s.spec)) throw new ElasticmemError(`--stores: '${s.spec}' is listed twice`, 'BAD_ARG');
    seen.add(s.spec);
  }
  return out;
}

export function checkOptions(o: VmBenchOptions): void {
  const bad = (m: string) => new ElasticmemError(m, 'BAD_ARG');
  if (!Number.isInteger(o.sizeMiB) || o.sizeMiB < 4) throw bad(`--size-mib must be an integer >= 4, got ${o.sizeMiB}`);
  if (!Number.isInteger(o.guestMiB) || o.guestMiB < 128) throw bad(`--guest-mib must be an integer >= 128 (the guest kernel needs ~100 MiB), got ${o.guestMiB}`);
  if (o.sizeMiB > o.guestMiB - 96) throw bad(`--size-mib ${o.sizeMiB} does not fit a ${o.guestMiB} MiB guest (keep 96 MiB for its kernel): raise --guest-mib to at least ${o.sizeMiB + 96}`);
  if (!['seq', 'random', 'zipf'].includes(o.pattern)) throw bad(`--pattern must be seq, random or zipf, got '${o.pattern}'`);
  if (!(o.write >= 0 && o.write <= 1)) throw bad(`--write must be within 0..1, got ${o.write}`);
  if (!o.fractions.length || o.fractions.some((f) => !(f > 0 && f <= 1))) throw bad(`--fractions must be numbers in (0, 1], e.g. 1,0.5,0.25; got ${o.fractions.join(',')}`);
  if (o.fractions[0] !== 1 || o.fractions.some((f, i) => i > 0 && f >= o.fractions[i - 1]!)) throw bad(`--fractions must start with 1 and decrease (the 100% phase measures the footprint the others are fractions of), e.g. 1,0.5,0.25; got ${o.fractions.join(',')}`);
  if (!Number.isInteger(o.passes) || o.passes < 1) throw bad(`--passes must be an integer >= 1, got ${o.passes}`);
  if (!Number.isInteger(o.warmup) || o.warmup < 1) throw bad(`--warmup must be an integer >= 1 (the pass running at attach time is never timed), got ${o.warmup}`);
  if (!Number.isInteger(o.maxWarmup) || o.maxWarmup < o.warmup) throw bad(`--max-warmup must be an integer >= --warmup (${o.warmup}), got ${o.maxWarmup}`);
  if (!Number.isInteger(o.pauseMs) || o.pauseMs < 0 || o.pauseMs > 60_000) throw bad(`--pause-ms must be an integer from 0 to 60000, got ${o.pauseMs}`);
  if (!(o.passTimeoutMs > 0)) throw bad(`--pass-timeout must be a positive number of seconds, e.g. 300 (got ${o.passTimeoutMs / 1000})`);
  if (!Number.isSafeInteger(o.seed) || o.seed < 0) throw bad(`--seed must be a whole number >= 0, got ${o.seed}`);
  if (!o.stores.length) throw bad('no store to measure');
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n === 0 ? NaN : n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
};

/** Cleanups run in reverse order of registration, each at most once, errors reported, never thrown. */
export class Cleanup {
  private fns: (() => unknown)[] = [];
  private running: Promise<void> | null = null;
  teardown(fn: () => unknown): void { this.fns.push(fn); }
  /** Single flight: a signal handler and a finally block calling run() wait for the same pass. */
  run(): Promise<void> {
    this.running ??= (async () => {
      while (this.fns.length) {
        const f = this.fns.pop()!;
        try { await f(); } catch (e) { process.stderr.write(`bench vm cleanup: ${(e as Error).message}\n`); }
      }
      this.running = null;
    })();
    return this.running;
  }
}

/** The accelerator QEMU really runs with (from its command line), not what /dev/kvm suggests. */
function accelOf(pid: number): 'kvm' | 'tcg' {
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const i = argv.indexOf('-accel');
    if (i >= 0) return argv[i + 1]?.startsWith('kvm') ? 'kvm' : 'tcg';
    const m = argv.find((a) => /accel=/.test(a));
    return m && /accel=kvm/.test(m) ? 'kvm' : 'tcg';
  } catch {
    return 'tcg';
  }
}

function hostInfo(qemuPid: number): Omit<VmBenchResult['host'], 'loadAvg1'> {
  let qemu = 'unknown';
  try {
    const out = execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8', timeout: 10_000 });
    qemu = /version ([^\s,]+)/.exec(out)?.[1] ?? qemu;
  } catch { /* reported as unknown */ }
  return {
    hostname: os.hostname(),
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model.trim() ?? 'unknown',
    kernel: os.release(),
    accel: accelOf(qemuPid),
    qemu,
  };
}

/** Start `elasticmem daemon` on a private socket; stopped (SIGTERM, then SIGKILL) at cleanup. */
async function startDaemon(cl: Cleanup, dir: string): Promise<{ socket: string; log: () => string; proc: ChildProcess }> {
  const socket = path.join(dir, 'run', 'em.sock');
  const config = path.join(dir, 'config.yaml');
  // Small guests: allow caps below the default 16M minimum (25% of a small footprint).
  fs.writeFileSync(config, 'limits:\n  minLocal: 4M\n');
  const proc = spawn(process.execPath, [BIN, 'daemon', '--socket', socket, '--state', path.join(dir, 'state.json'), '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const keep = (d: Buffer) => { log = (log + d.toString()).slice(-20_000); };
  proc.stdout!.on('data', keep);
  proc.stderr!.on('data', keep);
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  cl.teardown(async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    // The guest is gone or about to be: nothing of the daemon's is worth waiting long for.
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(t);
  });
  for (let i = 0; ; i++) {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new ElasticmemError(`the elasticmem daemon exited before listening:\n${log}`, 'BENCH_DAEMON');
    try {
      await call('ping', {}, { socket });
      break;
    } catch {
      if (i > 300) throw new ElasticmemError(`the elasticmem daemon did not answer on ${socket} within 30 s:\n${log}`, 'BENCH_DAEMON');
      await sleep(100);
    }
  }
  return { socket, log: () => log, proc };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Start the servers the user named without an address; fill in every choice's URI. */
async function provideStores(cl: Cleanup, stores: StoreChoice[], dir: string): Promise<void> {
  const servers = await import('../../test/helpers/servers.ts');
  for (const s of stores) {
    if (s.kind === 'file') {
      const d = path.join(dir, 'file-store');
      fs.mkdirSync(d, { recursive: true });
      s.uri = `file://${d}`;
    } else if (s.kind === 'redis') {
      s.uri = (await servers.startRedis(cl)).uri;
    } else if (s.kind === 'memcached') {
      s.uri = (await servers.startMemcached(cl, { count: 1 })).uri;
    }
  }
}

/** Plan the progress units: passes. */
function plannedPasses(o: VmBenchOptions): number {
  // (each baseline waits out one settling pass first: baselinePasses)
  return o.passes + 1 + o.warmup + o.stores.length * o.fractions.length * (o.warmup + 2 * o.passes + 1);
}

export async function runVmBench(o: VmBenchOptions, cl: Cleanup): Promise<VmBenchResult> {
  checkOptions(o);
  if (process.getuid?.() !== 0) throw new ElasticmemError('bench vm needs root (libvirt qemu:///system, ptrace, userfaultfd); run it with sudo', 'NOT_ROOT');
  const t0 = Date.now();
  const { bootDomain, ensureLibvirtd } = await import('../vm/libvirt.ts');
  const { guestImage } = await import('../vm/guest.ts');
  try { guestImage(); } catch (e) { throw new ElasticmemError((e as Error).message, 'BENCH_SETUP'); }

  let total = plannedPasses(o);
  let done = 0;
  const progress = (label: string, add = 0) => { done += add; o.onProgress?.({ done: Math.min(done, total), total, label }); };

  // The pid in the name tells whose folder it is (a test can tell a leftover from a concurrent run).
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `elasticmem-bench-vm-${process.pid}-`));
  cl.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  progress('starting stores and the daemon');
  await provideStores(cl, o.stores, dir);
  const daemon = await startDaemon(cl, dir);
  const rpc = (op: 'attach' | 'detach' | 'stats', args: Record<string, unknown>) => call(op, args, { socket: daemon.socket });

  progress(`booting the test guest (${o.guestMiB} MiB, workload ${o.sizeMiB} MiB ${o.pattern})`);
  await ensureLibvirtd();
  const workload = { sizeMiB: o.sizeMiB, pattern: o.pattern, write: o.write, seed: o.seed, passes: 0, pauseMs: o.pauseMs };
  const dom = await bootDomain({ memMiB: o.guestMiB, maxMemMiB: o.guestMiB + 128, template: 'memfd', workload }, (fn) => cl.teardown(fn));
  const con = dom.console;

  /** Wait for `n` more passes after `from`, reporting each; returns them. */
  const passesAfter = async (from: number, n: number, label: string): Promise<WorkloadPass[]> => {
    for (let k = 1; k <= n; k++) {
      await con.waitForPasses(from + k, o.passTimeoutMs).catch((e: Error) => {
        throw new ElasticmemError(`${label}: the guest did not finish a pass within ${o.passTimeoutMs / 1000} s (${e.message.split('\n')[0]}); daemon log:\n${daemon.log().slice(-3000)}`, 'BENCH_TIMEOUT');
      });
      progress(label, 1);
    }
    return con.passes.slice(from, from + n);
  };

  /** Passes reported so far. Polls first: the reader only sees what it has read. */
  const seenPasses = () => { con.poll(); return con.passes.length; };

  /**
   * `n` unattached passes for a baseline, after the one in progress: that one began
   * earlier, maybe still attached or while a detach drained pages back.
   */
  const baselinePasses = async (n: number, label: string): Promise<WorkloadPass[]> => {
    const from = seenPasses();
    await passesAfter(from, 1, `${label} (settling)`);
    return passesAfter(from + 1, n, label);
  };

  // The first pass includes the fill; warm-up passes settle the guest.
  const boot = seenPasses();
  await passesAfter(boot, o.warmup, 'guest warm-up (not attached)');
  const loadBefore = os.loadavg()[0]!;
  /** Every unattached pass timed, in order (each phase is paired with the ones right before it). */
  const unattached: number[] = [];

  const stores: StoreResult[] = [];
  let footprintPages = 0;
  for (const s of o.stores) {
    const r: StoreResult = { store: s.spec, uri: s.uri!, ownServer: s.own, footprintPages: 0, phases: [] };
    stores.push(r);
    let attached = false;
    try {
      for (const f of o.fractions) {
        const label = `${s.spec} at ${Math.round(f * 100)}% local`;
        // 100%: the cap is the whole guest RAM (nothing evicted); the footprint is read from it.
        const capBytes = f === 1 ? o.guestMiB * MiB : Math.max(4 * MiB, Math.round(f * footprintPages) * PAGE);
        // The paired baseline: this guest, unattached, right before this phase. Other load
        // on the host drifts over minutes; a baseline taken next to each phase cancels it.
        const paired = (await baselinePasses(o.passes, `${label}: baseline, not attached`)).map((p) => p.ms);
        unattached.push(...paired);
        progress(`${label}: attaching`);
        const ta = Date.now();
        await rpc('attach', { vm: dom.name, local: String(capBytes), store: s.uri! });
        attached = true;
        const attachMs = Date.now() - ta;
        // One footprint for every store (measured at the first 100% attach), so all stores get the same caps.
        if (footprintPages === 0) footprintPages = ((await rpc('stats', { vm: dom.name })) as PublicStats).residentPages;
        r.footprintPages = footprintPages;
        // Eviction down to the cap runs in the background: time nothing until it is done.
        progress(`${label}: evicting down to the cap`);
        const settleMs = await settle(() => rpc('stats', { vm: dom.name }) as Promise<PublicStats>, o.passTimeoutMs, label);
        const mark = seenPasses();
        const stats = () => rpc('stats', { vm: dom.name }) as Promise<PublicStats>;
        // Warm up until the replacement policy has settled on the working set: at least
        // --warmup passes, then until a pass faults about as much as the one before
        // (at most --max-warmup passes). Right after eviction it chose its victims with
        // no access history, so the first passes fault more than the steady state.
        const warmupFaults: number[] = [];
        let last = (await stats()).faults;
        for (;;) {
          if (warmupFaults.length >= o.warmup) total++; // a pass beyond the plan
          await passesAfter(seenPasses(), 1, `${label}: warm-up`);
          const now = (await stats()).faults;
          warmupFaults.push(now - last);
          last = now;
          if (warmupFaults.length >= o.warmup && (warmupFaults.length >= o.maxWarmup || steady(warmupFaults, o.sizeMiB * 256))) break;
        }
        const s0 = await stats();
        const faultsByPass: number[] = [];
        const timed: WorkloadPass[] = [];
        for (let k = 0; k < o.passes; k++) {
          timed.push(...(await passesAfter(seenPasses(), 1, label)));
          const now = (await stats()).faults;
          faultsByPass.push(now - last);
          last = now;
        }
        const st = await stats();
        progress(`${label}: detaching`);
        const td = Date.now();
        await rpc('detach', { vm: dom.name });
        attached = false;
        const ms = timed.map((p) => p.ms);
        r.phases.push({
          fraction: f,
          localBytes: capBytes,
          passesMs: ms,
          medianMs: median(ms),
          minMs: Math.min(...ms),
          maxMs: Math.max(...ms),
          baselineMs: paired,
          baselineMedianMs: median(paired),
          slowdown: +(median(ms) / median(paired)).toFixed(3),
          slowdownOfMin: +(Math.min(...ms) / Math.min(...paired)).toFixed(3),
          attachMs,
          settleMs,
          detachMs: Date.now() - td,
          corrupt: con.passes.slice(mark).reduce((a, p) => a + p.corrupt, 0),
          stats: pickStats(st),
          warmupPasses: warmupFaults.length,
          warmupFaultsByPass: warmupFaults,
          faultsByPass,
          faultsPerPass: Math.round((st.faults - s0.faults) / o.passes),
          fetchesPerPass: Math.round((st.fetches - s0.fetches) / o.passes),
          evictionsPerPass: Math.round((st.evictions - s0.evictions) / o.passes),
        });
      }
    } catch (e) {
      r.error = (e as Error).message;
      if (attached) {
        try {
          await rpc('detach', { vm: dom.name });
        } catch (d) {
          // The guest may be wedged on a dead store: measuring the next store on it would be meaningless.
          throw new ElasticmemError(`${s.spec}: ${r.error}; detach failed too: ${(d as Error).message}`, 'BENCH_FAILED');
        }
      }
      progress(`${s.spec}: FAILED (${r.error.split('\n')[0]})`);
    }
  }

  const after = (await baselinePasses(o.passes, 'baseline: not attached')).map((p) => p.ms);
  unattached.push(...after);

  con.poll();
  const corrupt = con.passes.reduce((a, p) => a + p.corrupt, 0) + (/ELASTICMEM-CORRUPT/.test(con.text()) && con.passes.every((p) => p.corrupt === 0) ? 1 : 0);
  return {
    bench: 'vm',
    version: 1,
    date: new Date().toISOString(),
    host: { ...hostInfo(dom.pid), loadAvg1: { start: loadBefore, end: os.loadavg()[0]! } },
    guest: { memMiB: o.guestMiB, template: 'memfd', workload: { sizeMiB: o.sizeMiB, pages: (o.sizeMiB * MiB) / PAGE, pattern: o.pattern, write: o.write, seed: o.seed, pauseMs: o.pauseMs } },
    method: { fractions: o.fractions, warmupPasses: o.warmup, maxWarmupPasses: o.maxWarmup, timedPasses: o.passes, fractionOf: 'footprint', timing: 'guest-reported pass ms' },
    baseline: { passesMs: unattached, medianMs: median(unattached), minMs: Math.min(...unattached), maxMs: Math.max(...unattached) },
    stores,
    corrupt,
    guestPasses: seenPasses(),
    durationS: Math.round((Date.now() - t0) / 1000),
  };
}

/**
 * Steady when the last two passes' fault counts differ by at most 15% (or by at most 2%
 * of the workload's pages: small counts are noise, including the ±100 ms alignment of
 * the stats reads with the guest's passes).
 */
export function steady(faults: number[], workloadPages: number): boolean {
  if (faults.length < 2) return false;
  const a = faults[faults.length - 2]!;
  const b = faults[faults.length - 1]!;
  return Math.abs(b - a) <= Math.max(0.15 * Math.max(a, b), 0.02 * workloadPages);
}

/** Poll stats until resident <= cap; returns how long it took. */
async function settle(read: () => Promise<PublicStats>, timeoutMs: number, label: string): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    const st = await read();
    if (st.residentPages <= st.localCapPages) return Date.now() - t0;
    if (st.storeState !== 'ok') throw new ElasticmemError(`${label}: store ${st.storeState}: ${st.storeError}`, 'BENCH_STORE');
    if (Date.now() - t0 > timeoutMs) throw new ElasticmemError(`${label}: ${st.residentPages} pages still resident over a cap of ${st.localCapPages} after ${timeoutMs / 1000} s`, 'BENCH_TIMEOUT');
    await sleep(100);
  }
}

function pickStats(s: PublicStats): PhaseResult['stats'] {
  const keys = ['faults', 'zeroFills', 'fetches', 'evictions', 'cleanDrops', 'storeWrites', 'prefetched', 'residentPages', 'localCapPages', 'remotePages', 'totalPages', 'wpFaults', 'discards', 'evictAborts', 'storeRetries', 'lostPages', 'storeState'] as const;
  const out: Record<string, unknown> = { faultLatencyUs: { ...s.faultLatencyUs } };
  for (const k of keys) if (k in s) out[k] = s[k];
  return out as PhaseResult['stats'];
}
