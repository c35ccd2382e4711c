/**
 * `elasticmem bench vm` end to end through the real binary: a small guest under libvirt,
 * one store, few passes. The JSON carries every phase, the guest verified every page
 * of every pass (corrupt=0), the squeezed phases really paged, and nothing the bench
 * started is left behind.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import { spawn } from 'node:child_process';
import { runCli, BIN } from './helpers/daemon.ts';
import { ensureLibvirtd, virsh } from './helpers/libvirt.ts';
import { pidAlive } from '../backend/proc/alive.ts';


/** emtest domains whose owning process is gone: what a bench that did not clean up leaves. */
async function orphanDomains(): Promise<string[]> {
  const names = (await virsh(['list', '--all', '--name'])).split('\n').map((s) => s.trim()).filter(Boolean);
  return names.filter((n) => { const m = /^emtest-(\d+)-/.exec(n); return !!m && !pidAlive(+m[1]!); });
}
/** Work folders of bench runs whose process is gone (elasticmem-bench-vm-<pid>-XXXXXX): leftovers. */
const benchDirs = () => fs.readdirSync(os.tmpdir()).filter((d) => { const m = /^elasticmem-bench-vm-(\d+)-/.exec(d); return !!m && !pidAlive(+m[1]!); });

test.serial('bench vm --json: baseline and 100/50/25% for one store, guest corrupt=0, the squeeze pages, nothing left behind', async (t) => {
  await ensureLibvirtd();
  const orphansBefore = await orphanDomains();
  const dirsBefore = benchDirs();
  const r = await runCli(['bench', 'vm', '--stores', 'memory:', '--size-mib', '48', '--guest-mib', '160', '--passes', '2', '--warmup', '1', '--json'], { timeoutMs: 170_000 });
  t.is(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);

  t.is(j.bench, 'vm');
  t.is(j.corrupt, 0, 'the guest verified every page of every pass');
  t.true(j.guestPasses >= 2 + 2 + 3 * 3, `${j.guestPasses} passes ran`);
  t.is(j.guest.memMiB, 160);
  t.is(j.guest.workload.sizeMiB, 48);
  t.is(j.host.accel, 'tcg');
  t.deepEqual(j.method.fractions, [1, 0.5, 0.25]);
  // A paired baseline (2 passes) before each of the 3 phases, and 2 at the end.
  t.is(j.baseline.passesMs.length, 8);
  t.true(j.baseline.medianMs > 0);

  t.is(j.stores.length, 1);
  const s = j.stores[0];
  t.is(s.store, 'memory:');
  t.is(s.error, undefined);
  t.true(s.footprintPages > (48 << 20) / 4096, `footprint ${s.footprintPages} pages holds the 48 MiB workload`);
  t.deepEqual(s.phases.map((p: { fraction: number }) => p.fraction), [1, 0.5, 0.25]);
  for (const p of s.phases) {
    for (const k of ['medianMs', 'minMs', 'maxMs', 'slowdown', 'attachMs', 'settleMs', 'detachMs', 'faultsPerPass', 'fetchesPerPass', 'evictionsPerPass']) t.is(typeof p[k], 'number', k);
    t.is(p.passesMs.length, 2);
    t.is(p.baselineMs.length, 2);
    t.is(p.slowdown, +(p.medianMs / p.baselineMedianMs).toFixed(3), 'slowdown against the paired baseline');
    t.true(p.passesMs.every((ms: number) => ms > 0));
    t.is(p.corrupt, 0);
    t.is(p.stats.storeState, 'ok');
    t.true(p.stats.residentPages <= p.stats.localCapPages + 1024, `phase ${p.fraction}: resident ${p.stats.residentPages} near cap ${p.stats.localCapPages}`);
    for (const k of ['p50', 'p99']) t.is(typeof p.stats.faultLatencyUs[k], 'number');
  }
  const [full, half, quarter] = s.phases;
  t.is(full.localBytes, 160 << 20, '100%: the cap is the whole guest RAM');
  t.is(full.stats.evictions, 0, 'nothing evicted at 100%');
  t.is(quarter.localBytes, Math.round(0.25 * s.footprintPages) * 4096, '25% of the footprint');
  t.true(half.localBytes > quarter.localBytes);
  // The workload (48 MiB) does not fit in 25% of the footprint: the guest faults every pass.
  t.true(quarter.stats.localCapPages < (48 << 20) / 4096);
  t.true(quarter.faultsPerPass > 500, `25%: ${quarter.faultsPerPass} faults per pass`);
  t.true(quarter.stats.fetches > 0 && quarter.stats.evictions > 0);

  // The summary table goes to stderr with --json, the progress bar too.
  t.regex(r.stderr, /store\s+local\s+cap\s+pass ms\s+base ms\s+slowdown/);
  t.regex(r.stderr, /memory:\s+100%/);
  t.regex(r.stderr, /guest verdict: \d+ passes, corrupt=0/);
  t.regex(r.stderr, /\[#+\.*\]\s+\d+%/);

  // Nothing left: no domain of a dead process that was not there before, no work folder.
  const orphansAfter = (await orphanDomains()).filter((n) => !orphansBefore.includes(n));
  t.deepEqual(orphansAfter, []);
  t.deepEqual(benchDirs().filter((d) => !dirsBefore.includes(d)), []);
});

test.serial('bench vm: bad options are refused before anything starts', async (t) => {
  const dirsBefore = benchDirs();
  for (const [args, re] of [
    [['--stores', 'nosuch://x'], /--stores: .*unknown scheme 'nosuch:'.*Or name a store the bench starts itself/],
    [['--stores', 'memory:,memory'], /'memory:' is listed twice/],
    [['--fractions', '0.5,1'], /--fractions must start with 1 and decrease/],
    [['--size-mib', '200', '--guest-mib', '256'], /--size-mib 200 does not fit a 256 MiB guest.*--guest-mib to at least 296/],
    [['--passes', 'x'], /--passes must be an integer/],
    [['--pattern', 'zigzag'], /--pattern must be seq, random or zipf/],
  ] as [string[], RegExp][]) {
    const r = await runCli(['bench', 'vm', ...args]);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, re);
  }
  t.deepEqual(benchDirs().filter((d) => !dirsBefore.includes(d)), [], 'nothing was started');
});

/** Processes whose command line mentions `needle` (e.g. the bench's work folder). */
function processesWith(needle: string): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try { if (fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(needle)) out.push(+p); } catch { /* gone */ }
  }
  return out;
}

test.serial('bench vm: Ctrl-C mid-run removes the guest, the daemon and the work folder', async (t) => {
  await ensureLibvirtd();
  const child = spawn(process.execPath, [BIN, 'bench', 'vm', '--stores', 'memory:', '--size-mib', '48', '--guest-mib', '160', '--passes', '3'], { stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  const pid = child.pid!;
  // Interrupt once the guest runs and the daemon is attached.
  for (let i = 0; !/at 50% local: (evicting|warm-up)/.test(err); i++) {
    if (i > 900 || child.exitCode !== null) return t.fail(`the bench did not reach the 50% phase:\n${err}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const domains = (await virsh(['list', '--name'])).split('\n').filter((n) => n.startsWith(`emtest-${pid}-`));
  t.is(domains.length, 1, 'the bench guest runs');
  t.true(processesWith(`elasticmem-bench-vm-${pid}-`).length > 0, 'its daemon runs');
  child.kill('SIGINT');
  t.is(await exited, 130, err);
  t.regex(err, /SIGINT, cleaning up/);
  const left = (await virsh(['list', '--all', '--name'])).split('\n').filter((n) => n.startsWith(`emtest-${pid}-`));
  t.deepEqual(left, [], 'no domain left');
  t.deepEqual(processesWith(`elasticmem-bench-vm-${pid}-`), [], 'no daemon left');
  t.deepEqual(fs.readdirSync(os.tmpdir()).filter((d) => d.startsWith(`elasticmem-bench-vm-${pid}-`)), [], 'no work folder left');
});
