/**
 * The kernel-swap baseline of `bench pager`: the same workload as private anonymous
 * memory in a memory cgroup (v1) limited to the same local cap, swapping to a zram
 * device. What the Linux kernel itself achieves with the fastest swap it has here.
 *
 * Set-up is idempotent and always undone: each run gets its own cgroup and its own
 * zram device (hot-added when the kernel allows it), recorded in a state file so a run
 * that was killed is cleaned up by the next one. Cleanup: swapoff, reset (and remove)
 * the zram device, remove the cgroup, unmount the memory hierarchy if we mounted it.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { ElasticmemError } from '../../native/errors.ts';
import { pidAlive as alive } from '../proc/alive.ts';

const run = promisify(execFile);
const STATE_DIR = '/run/elasticmem/bench-kernel-swap';
const PRIVATE_MOUNT = '/run/elasticmem/memcg-v1';

interface StateEntry {
  owner: number;
  cgroupDir?: string;
  zram?: { index: number; hotAdded: boolean; swapon: boolean };
  mounted?: string;
}

export interface KernelSwapEnv {
  cgroupDir: string;
  zramDevice: string;
  zramAlgorithm: string;
  limitBytes: number;
  swapBytes: number;
  /** Kernel swap counters (pswpin/pswpout from /proc/vmstat: global, but nothing else swaps here). */
  swapCounters(): { swapIns: number; swapOuts: number };
  /** Cgroup memory counters: resident anonymous bytes and bytes in swap. */
  usage(): { residentBytes: number; swapBytes: number };
  cleanup(): Promise<void>;
}

// One state file per owner process: concurrent runs never rewrite each other's record.
const stateFile = (owner: number) => path.join(STATE_DIR, `${owner}.json`);
function readState(): StateEntry[] {
  let names: string[] = [];
  try {
    names = fs.readdirSync(STATE_DIR).filter((n) => /^\d+\.json$/.test(n));
  } catch {
    return [];
  }
  const out: StateEntry[] = [];
  for (const n of names) {
    try {
      out.push(JSON.parse(fs.readFileSync(path.join(STATE_DIR, n), 'utf8')) as StateEntry);
    } catch {
      /* half-written by a killed run: nothing was set up after it */
    }
  }
  return out;
}
function updateState(owner: number, fn: (e: StateEntry) => void): void {
  let e: StateEntry = { owner };
  try {
    e = JSON.parse(fs.readFileSync(stateFile(owner), 'utf8')) as StateEntry;
  } catch {
    /* first record */
  }
  fn(e);
  fs.mkdirSync(STATE_DIR, { recursive: true, mode: 0o700 });
  fs.writeFileSync(stateFile(owner) + '.tmp', JSON.stringify(e));
  fs.renameSync(stateFile(owner) + '.tmp', stateFile(owner));
}
function dropState(owner: number): void {
  fs.rmSync(stateFile(owner), { force: true });
}

/** Where the v1 memory controller is mounted, or undefined. */
function memcgV1Mount(): string | undefined {
  for (const line of fs.readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const [, dir, type, opts] = line.split(' ');
    if (type === 'cgroup' && opts?.split(',').includes('memory')) return dir;
  }
  return undefined;
}

async function ensureMemcgV1(owner: number): Promise<string> {
  const existing = memcgV1Mount();
  if (existing) return existing;
  const row = fs.readFileSync('/proc/cgroups', 'utf8').split('\n').find((l) => l.startsWith('memory\t'));
  if (!row || row.split('\t')[3] !== '1')
    throw new ElasticmemError('the kernel has no memory cgroup controller enabled (see /proc/cgroups): the kernel-swap baseline needs it', 'EM_BENCH_NO_MEMCG');
  fs.mkdirSync(PRIVATE_MOUNT, { recursive: true });
  try {
    await run('mount', ['-t', 'cgroup', '-o', 'memory', 'em-memcg', PRIVATE_MOUNT]);
  } catch (e) {
    throw new ElasticmemError(
      `cannot mount the v1 memory cgroup controller at ${PRIVATE_MOUNT} (${(e as Error).message.trim()}); it is probably bound to cgroup v2: boot with cgroup_no_v1= unset or run the baseline on a host with cgroup v1 memory`,
      'EM_BENCH_NO_MEMCG',
    );
  }
  updateState(owner, (s) => { s.mounted = PRIVATE_MOUNT; });
  return PRIVATE_MOUNT;
}

async function acquireZram(owner: number): Promise<{ index: number; hotAdded: boolean }> {
  const ctl = '/sys/class/zram-control/hot_add';
  const busy = new Set(
    fs.readFileSync('/proc/swaps', 'utf8').split('\n').slice(1).map((l) => l.split(/\s+/)[0]).filter(Boolean),
  );
  if (fs.existsSync(ctl)) {
    const index = Number(fs.readFileSync(ctl, 'utf8').trim());
    if (Number.isInteger(index)) {
      updateState(owner, (s) => { s.zram = { index, hotAdded: true, swapon: false }; });
      return { index, hotAdded: true };
    }
  }
  // No hot-add: borrow an unused, unconfigured device.
  for (const name of fs.readdirSync('/sys/block').filter((n) => /^zram\d+$/.test(n))) {
    const size = Number(fs.readFileSync(`/sys/block/${name}/disksize`, 'utf8'));
    if (size === 0 && !busy.has(`/dev/${name}`)) {
      const index = Number(name.slice(4));
      updateState(owner, (s) => { s.zram = { index, hotAdded: false, swapon: false }; });
      return { index, hotAdded: false };
    }
  }
  throw new ElasticmemError('no free zram device: the kernel has no zram (CONFIG_ZRAM; modprobe zram) or every device is in use', 'EM_BENCH_NO_ZRAM');
}

/** /dev/zramN: devtmpfs normally creates it; create it from sysfs when it does not. */
async function deviceNode(index: number): Promise<string> {
  const dev = `/dev/zram${index}`;
  for (let i = 0; i < 50 && !fs.existsSync(dev); i++) await new Promise((r) => setTimeout(r, 20));
  if (!fs.existsSync(dev)) {
    const [maj, min] = fs.readFileSync(`/sys/block/zram${index}/dev`, 'utf8').trim().split(':');
    await run('mknod', [dev, 'b', maj!, min!]);
  }
  return dev;
}

async function releaseEntry(e: StateEntry): Promise<string[]> {
  const problems: string[] = [];
  if (e.cgroupDir && fs.existsSync(e.cgroupDir)) {
    // Anything still in the cgroup is a workload of this run: it must go before rmdir.
    for (let i = 0; i < 100; i++) {
      const pids = fs.readFileSync(path.join(e.cgroupDir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
      if (!pids.length) break;
      for (const p of pids) {
        try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    try {
      fs.rmdirSync(e.cgroupDir);
    } catch (err) {
      problems.push(`cgroup ${e.cgroupDir}: ${(err as Error).message}`);
    }
  }
  if (e.zram) {
    const dev = `/dev/zram${e.zram.index}`;
    const swaps = fs.readFileSync('/proc/swaps', 'utf8');
    if (swaps.split('\n').some((l) => l.split(/\s+/)[0] === dev)) {
      try {
        await run('swapoff', [dev]);
      } catch (err) {
        problems.push(`swapoff ${dev}: ${(err as Error).message.trim()}`);
      }
    }
    try {
      fs.writeFileSync(`/sys/block/zram${e.zram.index}/reset`, '1');
      if (e.zram.hotAdded) fs.writeFileSync('/sys/class/zram-control/hot_remove', String(e.zram.index));
    } catch (err) {
      if (fs.existsSync(`/sys/block/zram${e.zram.index}`)) problems.push(`zram${e.zram.index}: ${(err as Error).message}`);
    }
  }
  if (e.mounted) {
    try {
      await run('umount', [e.mounted]);
    } catch (err) {
      problems.push(`umount ${e.mounted}: ${(err as Error).message.trim()}`);
    }
  }
  return problems;
}

/** Undo what killed runs left behind (their owner pid is gone). */
export async function sweepStaleKernelSwap(): Promise<void> {
  for (const e of readState()) {
    if (e.owner === process.pid || alive(e.owner)) continue;
    if ((await releaseEntry(e)).length === 0) dropState(e.owner);
  }
}

export interface KernelSwapOptions {
  /** The resident cap: memory.limit_in_bytes. */
  limitBytes: number;
  /** zram disk size (at least twice the workload). */
  swapBytes: number;
}

export async function setupKernelSwap(opts: KernelSwapOptions): Promise<KernelSwapEnv> {
  if (process.getuid?.() !== 0) throw new ElasticmemError('the kernel-swap baseline needs root (memory cgroup, swapon)', 'EM_BENCH_NEEDS_ROOT');
  await sweepStaleKernelSwap();
  const owner = process.pid;
  let entry: StateEntry = { owner };
  const undo = async (): Promise<void> => {
    entry = readState().find((x) => x.owner === owner) ?? entry;
    const problems = await releaseEntry(entry);
    // (kept while something is left: the next run's sweep tries again once this one ended)
    if (!problems.length) dropState(owner);
    if (problems.length) throw new ElasticmemError(`kernel-swap baseline cleanup incomplete: ${problems.join('; ')}`, 'EM_BENCH_CLEANUP');
  };
  try {
    const mount = await ensureMemcgV1(owner);
    const cgroupDir = path.join(mount, `elasticmem-bench-${owner}`);
    updateState(owner, (s) => { s.cgroupDir = cgroupDir; });
    fs.mkdirSync(cgroupDir, { recursive: true });
    fs.writeFileSync(path.join(cgroupDir, 'memory.limit_in_bytes'), String(opts.limitBytes));
    // The kernel default; set explicitly so a host-wide tweak does not skew the baseline.
    try { fs.writeFileSync(path.join(cgroupDir, 'memory.swappiness'), '60'); } catch { /* not on every kernel */ }

    const z = await acquireZram(owner);
    const sys = `/sys/block/zram${z.index}`;
    const algo = /\[([^\]]+)\]/.exec(fs.readFileSync(`${sys}/comp_algorithm`, 'utf8'))?.[1] ?? 'unknown';
    fs.writeFileSync(`${sys}/disksize`, String(opts.swapBytes));
    const dev = await deviceNode(z.index);
    await run('mkswap', [dev]);
    await run('swapon', ['-p', '32767', dev]);
    updateState(owner, (s) => { if (s.zram) s.zram.swapon = true; });

    const vmstat = (): Record<string, number> =>
      Object.fromEntries(fs.readFileSync('/proc/vmstat', 'utf8').split('\n').filter(Boolean).map((l) => { const [k, v] = l.split(' '); return [k!, Number(v)]; }));
    const memStat = (): Record<string, number> =>
      Object.fromEntries(fs.readFileSync(path.join(cgroupDir, 'memory.stat'), 'utf8').split('\n').filter(Boolean).map((l) => { const [k, v] = l.split(' '); return [k!, Number(v)]; }));
    return {
      cgroupDir,
      zramDevice: dev,
      zramAlgorithm: algo,
      limitBytes: opts.limitBytes,
      swapBytes: opts.swapBytes,
      swapCounters: () => { const v = vmstat(); return { swapIns: v.pswpin ?? 0, swapOuts: v.pswpout ?? 0 }; },
      usage: () => { const m = memStat(); return { residentBytes: m.rss ?? m.total_rss ?? 0, swapBytes: m.swap ?? m.total_swap ?? 0 }; },
      cleanup: undo,
    };
  } catch (e) {
    await undo().catch(() => {});
    if (e instanceof ElasticmemError) throw e;
    throw new ElasticmemError(`cannot set up the kernel-swap baseline: ${(e as Error).message.trim()}`, 'EM_BENCH_KERNEL_SWAP');
  }
}
