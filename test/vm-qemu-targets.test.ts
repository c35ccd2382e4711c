/**
 * QEMUs not managed by libvirt: `pid:<PID>` (QMP socket found on the command line) and
 * `qmp:<socket>` (pid found from the socket's peer). Private and memfd RAM, grow through
 * QMP qom-set, the live stats stream, detach; the guest verifies throughout.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { bootQemu, qmpCommand } from './helpers/qemu.ts';
import { startDaemon, holdsUffd, BIN } from './helpers/daemon.ts';
import { QmpClient } from '../backend/targets/qmp.ts';

/** Collect `n` JSON lines of `stats --watch --json`, then stop it as Ctrl-C would. */
function watchSamples(socket: string, vm: string, n: number): Promise<Record<string, any>[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, 'stats', vm, '--watch', '--json', '--socket', socket], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Record<string, any>[] = [];
    let buf = '';
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.stderr!.on('data', (d) => { err += d; });
    child.stdout!.on('data', (d) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        out.push(JSON.parse(buf.slice(0, nl)));
        buf = buf.slice(nl + 1);
        if (out.length === n) child.kill('SIGINT');
      }
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (out.length >= n && code === 0) resolve(out); else reject(new Error(`watch exited ${code} after ${out.length} samples: ${err}`));
    });
  });
}

test('pid: and qmp: targets: attach, watch, grow through QMP, detach, corrupt=0', async (t) => {
  const [p, q, d] = await Promise.all([
    bootQemu(t, { memMiB: 256, maxMemMiB: 512, dimmMiB: 128, memory: 'private', workload: { sizeMiB: 96, pattern: 'random', write: 0.25, seed: 51, passes: 0, pauseMs: 100 } }),
    bootQemu(t, { memMiB: 256, maxMemMiB: 512, dimmMiB: 256, memory: 'memfd', workload: { sizeMiB: 96, pattern: 'seq', write: 0.25, seed: 52, passes: 0, pauseMs: 100 } }),
    startDaemon(t),
  ]);
  await Promise.all([p.console.waitForPasses(1, 120_000), q.console.waitForPasses(1, 120_000)]);

  const ap = await d.cli('attach', `pid:${p.pid}`, '--local', '64M', '--json');
  t.is(ap.code, 0, ap.stderr);
  const jp = JSON.parse(ap.stdout);
  // Boot RAM private (memory-backend-ram), the virtio-mem backend a memfd: both paged.
  t.is(jp.backing, 'mixed');
  t.deepEqual(jp.regions.map((r: { name: string; kind: string }) => [r.name.replace(/^.*\//, ''), r.kind]).sort(), [['ram0', 'anon'], ['vmem0', 'memfd']]);
  t.regex(jp.vm, /^qemu-\d+-\d+$/, 'no -uuid: the id is pid + start time');
  const aq = await d.cli('attach', `qmp:${q.qmpPath}`, '--local', '64M', '--json');
  t.is(aq.code, 0, aq.stderr);
  const jq = JSON.parse(aq.stdout);
  t.is(jq.backing, 'memfd');
  t.is(jq.pid, q.pid, 'the pid behind the QMP socket was found');
  // The same QEMU under its other name is the same VM.
  const dup = await d.cli('attach', `pid:${q.pid}`, '--local', '64M');
  t.true(dup.stderr.includes('[ALREADY_ATTACHED]'), dup.stderr);

  // The live view: samples each second, rates computed against the previous one.
  const samples = await watchSamples(d.socket, `pid:${p.pid}`, 3);
  t.is(samples.length, 3);
  t.true(samples[2]!.t - samples[1]!.t >= 900 && samples[2]!.t - samples[1]!.t <= 3000, "one sample a second");
  t.is(samples[2]!.stats.localCapPages, 16384);
  t.true(samples[2]!.rates.faults > 0, 'the squeezed guest faults every second');
  t.true(samples[2]!.stats.faults >= samples[1]!.stats.faults);

  // Grow through QMP qom-set on the plain QEMU.
  const before = p.console.memTotalKb!;
  const g = await d.cli('grow', `pid:${p.pid}`, '64M', '--json');
  t.is(g.code, 0, g.stderr);
  t.true(JSON.parse(g.stdout).complete);
  await p.console.waitForMemTotal(before + 60 * 1024, 60_000);
  // And by a DIMM through QMP (object-add + device_add): private like the boot RAM, its
  // RAM block joins the pager.
  const pagesBefore = JSON.parse((await d.cli('stats', `pid:${p.pid}`, '--json')).stdout).totalPages;
  const withVmem = p.console.memTotalKb!;
  const gd = await d.cli('grow', `pid:${p.pid}`, '128M', '--dimm', '--json');
  t.is(gd.code, 0, gd.stderr);
  t.is(JSON.parse(gd.stdout).kind, 'dimm');
  t.is(JSON.parse((await d.cli('stats', `pid:${p.pid}`, '--json')).stdout).totalPages, pagesBefore + 32768);
  await p.console.waitForMemTotal(withVmem + 120 * 1024, 60_000);

  // A DIMM added behind the daemon's back, straight on QEMU's QMP socket (no libvirt
  // event exists for it): the daemon sees the new mapping and pages its RAM block. The
  // client that adds it keeps QEMU's one QMP connection a while: the daemon's first
  // try to learn the new RAM block times out, and it tries again by itself.
  const qTotal = async (): Promise<number> => JSON.parse((await d.cli('stats', `qmp:${q.qmpPath}`, '--json')).stdout).totalPages;
  /** The qmp: VM's paged pages once they differ from `was` (or `was` after the time-out). */
  const pagesOnceChanged = async (was: number, timeoutMs: number): Promise<number> => {
    let now = was;
    for (const end = Date.now() + timeoutMs; now === was && Date.now() < end;) {
      await new Promise((r) => setTimeout(r, 250));
      now = await qTotal();
    }
    return now;
  };
  const qPages = await qTotal();
  const qMem = q.console.memTotalKb!;
  const side = await QmpClient.connect(q.qmpPath);
  try {
    await side.execute('object-add', { 'qom-type': 'memory-backend-memfd', id: 'side-mem', size: 128 * 2 ** 20, share: true });
    await side.execute('device_add', { driver: 'pc-dimm', id: 'side', memdev: 'side-mem' });
    await d.waitLog(/\] error: after QEMU mapped new memory: .*no greeting.*; trying again in 2 s/, 30_000);
  } finally {
    side.close();
  }
  t.is(await qTotal(), qPages, 'not paged while QMP was taken');
  const qNow = await pagesOnceChanged(qPages, 20_000);
  t.is(qNow, qPages + 32768, 'the side-added DIMM is under the pager');
  t.regex(d.log(), /memory added.*QEMU mapped new memory.*side-mem/);
  await q.console.waitForMemTotal(qMem + 120 * 1024, 60_000);

  // A backend added first and used by a device only later (object-add, some seconds,
  // device_add): its mapping appears at object-add and does not change at device_add,
  // so the daemon keeps looking until a device uses it.
  await qmpCommand(q.qmpPath, 'object-add', { 'qom-type': 'memory-backend-memfd', id: 'late-mem', size: 128 * 2 ** 20, share: true });
  await d.waitLog(/memory pending: QEMU has memory backend late-mem that no guest address uses yet/, 20_000);
  await new Promise((r) => setTimeout(r, 3000));
  await qmpCommand(q.qmpPath, 'device_add', { driver: 'pc-dimm', id: 'late', memdev: 'late-mem' });
  const qLate = await pagesOnceChanged(qNow, 40_000);
  t.is(qLate, qNow + 32768, 'the DIMM whose device came after its backend is under the pager');
  t.regex(d.log(), /memory added.*QEMU mapped new memory.*late-mem/);

  await p.console.waitForPasses(p.console.passes.length + 2, 120_000);
  // A watch running while the VM is detached elsewhere ends with why, not as a Ctrl-C.
  const watch = spawn(process.execPath, [BIN, 'stats', `pid:${p.pid}`, '--watch', '--json', '--socket', d.socket], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { if (watch.exitCode === null) watch.kill('SIGKILL'); });
  let wout = '';
  let werr = '';
  watch.stderr!.on('data', (x) => { werr += x; });
  const firstSample = new Promise<void>((resolve) => watch.stdout!.on('data', (x) => { wout += x; if (wout.includes('\n')) resolve(); }));
  const watchEnd = new Promise<number | null>((resolve) => watch.on('close', resolve));
  await firstSample;
  t.true(JSON.parse(wout.slice(0, wout.indexOf('\n'))).stats.faults >= 0, 'a sample came before the detach');
  const det = await d.cli('detach', `pid:${p.pid}`);
  t.is(det.code, 0, det.stderr);
  t.false(holdsUffd(p.pid));
  t.is(await watchEnd, 1, werr);
  t.regex(werr, new RegExp(`VM 'pid:${p.pid}' is no longer paged: it was detached`));
  // Stopping the daemon (SIGTERM) with a VM on memory: drains it back first: its pages
  // would die with the daemon.
  await q.console.waitForPasses(q.console.passes.length + 2, 120_000);
  t.is(await d.stop(), 0);
  t.regex(d.log(), new RegExp(`\\[qmp:${q.qmpPath.replace(/[/.]/g, '\\$&')}\\] draining before daemon exit`));
  t.regex(d.log(), /daemon stopped/);
  t.false(holdsUffd(q.pid));
  for (const c of [p.console, q.console]) {
    await c.waitForPasses(c.passes.length + 1, 60_000);
    t.deepEqual(c.passes.filter((x) => x.corrupt !== 0), []);
  }
});
