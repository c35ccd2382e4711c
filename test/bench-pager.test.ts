/**
 * `elasticmem bench pager` through the real CLI (bin/elasticmem.js): a small run with
 * the kernel-swap baseline must report every JSON field with plausible numbers, verify
 * every page, and leave no cgroup, zram device or process behind. Bad input is refused
 * with exit code 2 before anything is started.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const bin = path.join(root, 'bin', 'elasticmem.js');

interface Run { code: number | null; stdout: string; stderr: string }

function cli(t: { teardown(fn: () => void): void }, args: string[], timeoutMs = 90_000): Promise<Run> {
  const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd: root });
  // SIGTERM lets the bench undo its set-up (workload, pager, cgroup, zram) itself.
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM'); });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGTERM'); reject(new Error(`elasticmem ${args.join(' ')}: no exit within ${timeoutMs} ms; stderr: ${stderr}`)); }, timeoutMs);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

const benchCgroups = () => {
  try {
    return fs.readdirSync('/sys/fs/cgroup/memory').filter((n) => n.startsWith('elasticmem-bench-'));
  } catch {
    return [];
  }
};
const swaps = () => fs.readFileSync('/proc/swaps', 'utf8').split('\n').slice(1).filter(Boolean).map((l) => l.split(/\s+/)[0]);

test.serial('a page that does not verify makes the run corrupt and the command fail (TEST-ONLY damage by the workload)', async (t) => {
  const child = spawn(process.execPath, [bin, 'bench', 'pager', '--workload', 'random', '--size', '8M', '--local', '4M', '--store', 'memory:', '--touches', '2000', '--floor-repeats', '1', '--json'], { stdio: ['ignore', 'pipe', 'pipe'], cwd: root, env: { ...process.env, EM_BENCH_TEST_CORRUPT: '7' } });
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM'); });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  t.is(code, 1, stderr);
  const j = JSON.parse(stdout.trim());
  t.is(j.integrity, 'corrupt');
  t.regex(j.integrityDetail.beforeDetach, /^integrity corrupt=1 firstbad=7$/);
});

test.serial('a small bench pager run reports every field, verifies every page and cleans up', async (t) => {
  const swapsBefore = swaps();
  // pinned to CPU 0: the workload, the fault thread and the floor share it
  const r = await cli(t, ['bench', 'pager', '--workload', 'random', '--size', '32M', '--local', '8M', '--store', 'memory:', '--baseline', 'kernel-swap', '--touches', '20000', '--floor-repeats', '1', '--pin', '0', '--json']);
  t.is(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.is(lines.length, 1, 'one JSON object on stdout');
  const j = JSON.parse(lines[0]!);
  t.log(JSON.stringify({ usPerTouch: j.usPerTouch, kernelSwapUsPerTouch: j.kernelSwapUsPerTouch, uffdFloorUs: j.uffdFloorUs, faultLatencyUs: j.faultLatencyUs, hitRate: j.hitRate }));
  t.is(j.workload, 'random');
  t.is(j.sizeBytes, 32 * 2 ** 20);
  t.is(j.localBytes, 8 * 2 ** 20);
  t.is(j.store, 'memory:');
  t.is(j.policy, 'refault');
  t.is(j.memory, 'shared');
  t.is(j.touches, 20000);
  t.is(j.integrity, 'ok');
  t.regex(j.integrityDetail.beforeDetach, /^integrity ok pages=8192$/);
  t.regex(j.integrityDetail.afterDetach, /^integrity ok pages=8192$/);
  for (const k of ['usPerTouch', 'kernelSwapUsPerTouch', 'ratioVsKernelSwap', 'uffdFloorUs', 'p50VsFloor', 'uffdFloorMemfdUs', 'p50VsMemfdFloor', 'uffdFloorWorkloadUs', 'p50VsWorkloadFloor']) t.true(j[k] > 0, `${k} = ${j[k]}`);
  // The floor under the run's own touch loop is a real fault latency (> 2 µs: a faulting touch).
  t.true(j.uffdFloorWorkloadUs > 2 && Math.abs(j.p50VsWorkloadFloor - j.touchFaultUs.p50 / j.uffdFloorWorkloadUs) < 0.01, `${j.uffdFloorWorkloadUs}`);
  t.is(j.pinCpu, 0);
  t.is(j.repeats, 1);
  t.is(j.runs, undefined, 'one run: no per-run list');
  t.true(typeof j.machine.cpuIdle.driver === 'string');
  t.true(j.faultLatencyUs.p50 > 0 && j.faultLatencyUs.p99 >= j.faultLatencyUs.p50, JSON.stringify(j.faultLatencyUs));
  t.true(Math.abs(j.ratioVsKernelSwap - j.usPerTouch / j.kernelSwapUsPerTouch) < 0.01);
  // Uniform random over 4x the cap: about 3 of 4 touches miss, under both pagers.
  t.true(j.pager.fetches > 20000 * 0.5 && j.pager.fetches <= 20000, `fetches ${j.pager.fetches}`);
  t.true(j.pager.evictions > 0 && j.pager.faults >= j.pager.fetches);
  t.true(Number.isInteger(j.pager.capWaits) && Number.isInteger(j.pager.capWaitUs), 'back-pressure counters reported');
  t.true(j.hitRate > 0 && j.hitRate < 0.5, `hit rate ${j.hitRate}`);
  t.true(j.pager.residentPages <= j.pager.localCapPages + 4 * 256, `resident ${j.pager.residentPages}`);
  t.is(j.pager.latencyHistogram.counts.reduce((a: number, b: number) => a + b, 0), j.pager.faultLatencyUs.count);
  // Each punch of a scattered memfd victim still mapped on the workload's CPU interrupts it.
  t.true(Number.isInteger(j.pager.tlbShootdowns) && j.pager.tlbShootdowns > 0, `pager TLB shootdowns ${j.pager.tlbShootdowns}`);
  t.true(Number.isInteger(j.kernelSwap.tlbShootdowns) && j.kernelSwap.tlbShootdowns >= 0, `kernel TLB shootdowns ${j.kernelSwap.tlbShootdowns}`);
  t.is(j.kernelSwap.integrity, 'ok');
  t.true(j.kernelSwap.swapIns > 20000 * 0.5, `kernel swap-ins ${j.kernelSwap.swapIns}`);
  t.true(j.kernelSwap.limitBytes >= 8 * 2 ** 20 && j.kernelSwap.limitBytes < 12 * 2 ** 20);
  t.true(j.uffdFloor.anon.length === 1 && j.uffdFloor.memfd.length === 1 && j.uffdFloor.workloadUs.length === 1);
  // Nothing left behind.
  t.deepEqual(benchCgroups(), []);
  t.deepEqual(swaps(), swapsBefore);
  t.false(fs.readFileSync('/proc/self/mountinfo', 'utf8').includes('memcg-v1'));
});

test.serial('--memory private: the workload pages private anonymous memory (QEMU\'s default RAM), dropped by injection; every page verifies', async (t) => {
  const r = await cli(t, ['bench', 'pager', '--workload', 'random', '--size', '16M', '--local', '4M', '--store', 'memory:', '--memory', 'private', '--touches', '8000', '--floor-repeats', '1', '--pin', '0', '--json']);
  t.is(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  t.log(JSON.stringify({ usPerTouch: j.usPerTouch, touchFaultUs: j.touchFaultUs, p50VsFloor: j.p50VsFloor, hitRate: j.hitRate }));
  t.is(j.memory, 'private');
  t.is(j.integrity, 'ok');
  t.regex(j.integrityDetail.afterDetach, /^integrity ok pages=4096$/);
  t.true(j.pager.fetches > 8000 * 0.5 && j.pager.evictions > 0, `fetches ${j.pager.fetches}, evictions ${j.pager.evictions}`);
  t.is(j.pager.evictMode, 'splice', 'private memory on the embedded store: scattered victims are vmspliced from inside the workload and dropped by injection');
});

test.serial('--repeats: every run is listed, the figures are its medians, each pager run paired with the kernel run after it', async (t) => {
  const r = await cli(t, ['bench', 'pager', '--workload', 'random', '--size', '16M', '--local', '4M', '--store', 'memory:', '--baseline', 'kernel-swap', '--touches', '4000', '--floor-repeats', '1', '--pin', '0', '--repeats', '3', '--json'], 180_000);
  t.is(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  t.is(j.repeats, 3);
  t.is(j.runs.length, 3);
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[1];
  const runs = j.runs as { usPerTouch: number; kernelSwapUsPerTouch: number; ratioVsKernelSwap: number; integrity: string; hitRate: number }[];
  t.true(runs.every((x) => x.integrity === 'ok' && x.usPerTouch > 0 && x.kernelSwapUsPerTouch > 0));
  for (const x of runs) t.true(Math.abs(x.ratioVsKernelSwap - x.usPerTouch / x.kernelSwapUsPerTouch) < 0.01, 'each ratio pairs a run with its own kernel run');
  t.is(j.usPerTouch, median(runs.map((x) => x.usPerTouch)));
  t.is(j.kernelSwapUsPerTouch, median(runs.map((x) => x.kernelSwapUsPerTouch)));
  t.is(j.ratioVsKernelSwap, median(runs.map((x) => x.ratioVsKernelSwap)));
  t.is(j.kernelSwap.usPerTouch, j.kernelSwapUsPerTouch, 'the kernel detail is the median run');
  t.is(j.hitRate, runs.find((x) => x.usPerTouch === j.usPerTouch)!.hitRate, 'the pager detail is the median run');
  t.is(j.integrity, 'ok');
  t.deepEqual(benchCgroups(), []);
});

test.serial('--policy: on zipf the refault-rate policy keeps more of the hot set than FluidMem\'s / umap\'s FIFO (hit rate, same run length)', async (t) => {
  // 8192 pages, cap 4096: measured 87.8% against 84.8% (policy-sim: 88.0% against 85.6%)
  const run = async (policy: string) => {
    const r = await cli(t, ['bench', 'pager', '--workload', 'zipf', '--size', '32M', '--local', '16M', '--store', 'memory:', '--touches', '200000', '--floor-repeats', '1', '--pin', '0', '--policy', policy, '--json']);
    t.is(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    t.is(j.policy, policy);
    t.is(j.integrity, 'ok');
    return j as { hitRate: number; pager: { evictions: number; fetches: number } };
  };
  const fifo = await run('fifo');
  const refault = await run('refault');
  t.log(JSON.stringify({ fifo: { hitRate: fifo.hitRate, evictions: fifo.pager.evictions }, refault: { hitRate: refault.hitRate, evictions: refault.pager.evictions } }));
  t.true(refault.hitRate > fifo.hitRate + 0.015, `hit rate refault ${refault.hitRate} vs fifo ${fifo.hitRate}`);
  t.true(refault.pager.fetches < fifo.pager.fetches, `fetches refault ${refault.pager.fetches} vs fifo ${fifo.pager.fetches}`);
});

test.serial('bad input is refused with exit 2 and a message naming the problem', async (t) => {
  const base = ['bench', 'pager', '--size', '32M', '--local', '8M', '--store', 'memory:'];
  const cases: [string[], RegExp][] = [
    [['--workload', 'loop'], /unknown workload 'loop'.*seq, random or zipf/],
    [['--workload', 'seq', '--local', '32M'], /--local \(32M\) must be smaller than --size \(32M\)/],
    [['--workload', 'seq', '--size', 'lots'], /--size: 'lots' is not a size/],
    [['--workload', 'seq', '--store', 'tape://x'], /unknown scheme 'tape:'/],
    [['--workload', 'seq', '--baseline', 'swapfile'], /only baseline is kernel-swap/],
    [['--workload', 'seq', '--pin', '4096'], /--pin 4096 is not a CPU this process may use/],
    [['--workload', 'seq', '--policy', 'slru'], /policy 'slru' was replaced by 'refault'/],
    [['--workload', 'seq', '--repeats', '0'], /--repeats must be from 1 to 20/],
    [['--workload', 'seq', '--repeats', 'many'], /--repeats must be a whole number/],
    [['--workload', 'seq', '--memory', 'huge'], /unknown --memory 'huge'.*shared.*private/],
  ];
  // Each case's options replace the base's (an option given twice is itself refused).
  const withBase = (extra: string[]) => {
    const args = [...base];
    for (let i = 0; i < extra.length; i += 2) {
      const at = args.indexOf(extra[i]!);
      if (at >= 0) args.splice(at, 2);
    }
    return [...args, ...extra];
  };
  for (const [extra, re] of cases) {
    const r = await cli(t, withBase(extra), 30_000);
    t.is(r.code, 2, `${extra.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, re);
    t.is(r.stdout, '');
  }
});

test.serial('a kernel-swap set-up left by a killed run (dead owner) is undone by the next one', async (t) => {
  const { setupKernelSwap, sweepStaleKernelSwap } = await import('../backend/bench/kernel-swap.ts');
  const env = await setupKernelSwap({ limitBytes: 8 * 2 ** 20, swapBytes: 16 * 2 ** 20 });
  t.teardown(() => env.cleanup().catch(() => {}));
  t.true(fs.existsSync(env.cgroupDir));
  t.true(swaps().includes(env.zramDevice), 'the zram device is swapped on');
  // Re-own the state entry by a pid that is certainly dead, as a SIGKILLed bench leaves it.
  const dead = spawn('true');
  await new Promise((r) => dead.on('close', r));
  const dir = '/run/elasticmem/bench-kernel-swap';
  const mine = JSON.parse(fs.readFileSync(`${dir}/${process.pid}.json`, 'utf8')) as { owner: number };
  t.is(mine.owner, process.pid, 'the set-up is recorded for its owner');
  mine.owner = dead.pid!;
  fs.writeFileSync(`${dir}/${dead.pid}.json`, JSON.stringify(mine));
  fs.rmSync(`${dir}/${process.pid}.json`);
  await sweepStaleKernelSwap();
  t.false(fs.existsSync(env.cgroupDir), 'cgroup removed');
  t.false(swaps().includes(env.zramDevice), 'swap device off');
  t.false(fs.existsSync(`/sys/block/${path.basename(env.zramDevice)}`) && fs.readFileSync(`/sys/block/${path.basename(env.zramDevice)}/disksize`, 'utf8').trim() !== '0', 'zram device reset or removed');
  t.false(fs.existsSync(`${dir}/${dead.pid}.json`), 'its record is gone');
});

test.serial('latency histogram deltas and percentiles', async (t) => {
  const { histogramDelta, percentilesOf } = await import('../backend/bench/pager-bench.ts');
  const d = histogramDelta({ boundsUs: [1, 2, 4], counts: [5, 1, 0] }, { boundsUs: [1, 2, 4, 8, 16], counts: [5, 11, 0, 89, 0] });
  t.deepEqual(d, { boundsUs: [1, 2, 4, 8], counts: [0, 10, 0, 89] });
  const p = percentilesOf(d);
  t.is(p.count, 99);
  t.is(p.p50, 8);
  t.is(percentilesOf({ boundsUs: [1, 2], counts: [60, 40] }).p50, 1);
  t.is(percentilesOf({ boundsUs: [1, 2], counts: [60, 40] }).p99, 2);
  t.deepEqual(percentilesOf({ boundsUs: [], counts: [] }), { p50: 0, p90: 0, p99: 0, max: 0, count: 0 });
});

test.serial('TLB shootdowns are summed over every CPU of the /proc/interrupts row; absent row: null', async (t) => {
  const { tlbShootdowns, countedBetween } = await import('../backend/bench/interrupts.ts');
  const text = [
    '           CPU0       CPU1       ',
    '  NMI:          0          0   Non-maskable interrupts',
    '  TLB:   58631760   27534310   TLB shootdowns',
    '  TRM:          0          0   Thermal event interrupts',
  ].join('\n');
  t.is(tlbShootdowns(text), 58631760 + 27534310);
  t.is(tlbShootdowns('  NMI: 0 0 Non-maskable interrupts\n'), null);
  t.true(Number.isInteger(tlbShootdowns()), 'this x86 kernel counts them');
  t.is(countedBetween(10, 25), 15);
  t.is(countedBetween(null, 25), null);
});
