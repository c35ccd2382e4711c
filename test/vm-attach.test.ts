/**
 * The operator's path on a real libvirt guest (TCG), black-box through bin/elasticmem.js:
 * attach at 25% local memory, run, resize down and up, grow by virtio-mem, detach.
 * The guest's own workload verifies its 96 MiB on every pass: corrupt=0 throughout,
 * and it sees the added memory.
 */
import test from 'ava';
import { bootDomain } from './helpers/libvirt.ts';
import { startDaemon, holdsUffd } from './helpers/daemon.ts';

const WORKLOAD = { sizeMiB: 96, pattern: 'random' as const, write: 0.25, seed: 11, passes: 0, pauseMs: 200 };

test('attach at 25%, squeeze, resize down and up, grow, detach: corrupt=0 throughout, guest sees the memory', async (t) => {
  const [dom, d] = await Promise.all([
    bootDomain(t, { memMiB: 256, maxMemMiB: 512, template: 'memfd', workload: WORKLOAD }),
    startDaemon(t),
  ]);
  const con = dom.console;
  await con.waitForPasses(1, 120_000);

  const a = await d.cli('attach', dom.name, '--local', '64M', '--json');
  t.is(a.code, 0, a.stderr);
  const att = JSON.parse(a.stdout);
  t.is(att.vm, dom.uuid);
  t.is(att.localBytes, 64 << 20);
  t.is(att.guestRamBytes, 256 << 20);
  t.is(att.backing, 'memfd');
  // Boot RAM and the virtio-mem backend, both under the pager from the start.
  t.is(att.regions.length, 2);
  t.true(holdsUffd(dom.pid), 'QEMU holds its userfaultfd (crash safety)');
  await d.waitLog(new RegExp(`\\[${dom.name}\\] attached: pid ${dom.pid}`));

  // Squeezed: 96 MiB of workload in 64 MiB, the rest in the store.
  let mark = con.passes.length;
  await con.waitForPasses(mark + 3, 120_000);
  let s = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
  for (const k of ['faults', 'zeroFills', 'fetches', 'evictions', 'cleanDrops', 'storeWrites', 'prefetched', 'residentPages', 'localCapPages', 'remotePages']) {
    t.is(typeof s[k], 'number', k);
  }
  t.is(typeof s.faultLatencyUs.p50, 'number');
  t.is(typeof s.faultLatencyUs.p99, 'number');
  t.is(s.storeState, 'ok');
  t.is(s.localCapPages, 16384);
  t.true(s.residentPages <= 16384 + 1024, `resident ${s.residentPages} near the cap`);
  t.true(s.remotePages > 8000, `remote ${s.remotePages}: the workload does not fit`);
  t.true(s.fetches > 0 && s.evictions > 0);
  t.is(s.evictMode, 'splice', "libvirt's memfd RAM with the embedded store is evicted by splice, without write-protect");

  // Resize down: the cap is obeyed at once.
  const r1 = await d.cli('resize', dom.name, '--local', '40M');
  t.is(r1.code, 0, r1.stderr);
  t.regex(r1.stdout, /local 64M -> 40M$/m, 'resize answered once resident pages were down at the new cap');
  s = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
  t.true(s.residentPages <= 10240 + 1024, `resident ${s.residentPages} right after resize down`);
  mark = con.passes.length;
  await con.waitForPasses(mark + 2, 120_000);
  s = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
  t.is(s.localCapPages, 10240);
  t.true(s.residentPages <= 10240 + 1024, `resident ${s.residentPages} after resize down`);

  // Resize up: room for the whole workload; faults stop once it is resident.
  t.is((await d.cli('resize', dom.name, '--local', '200M')).code, 0);
  mark = con.passes.length;
  await con.waitForPasses(mark + 3, 120_000);

  // Grow by 64M without waiting, then by 64M more: the guest plugs both and reports
  // the bigger MemTotal; the second grow counts the first's blocks the guest plugged
  // after it returned.
  const before = con.memTotalKb!;
  const g0 = await d.cli('grow', dom.name, '64M', '--no-wait', '--json');
  t.is(g0.code, 0, g0.stderr);
  t.is(JSON.parse(g0.stdout).requestedBytes, 64 << 20);
  await con.waitForMemTotal(before + 56 * 1024, 60_000);
  const g = await d.cli('grow', dom.name, '64M', '--json');
  t.is(g.code, 0, g.stderr);
  const grown = JSON.parse(g.stdout);
  t.is(grown.requestedBytes, 128 << 20);
  t.true(grown.complete);
  t.is(grown.guestRamBytes, 384 << 20);
  const after = await con.waitForMemTotal(before + 120 * 1024, 60_000);
  t.true(after >= before + 120 * 1024, `MemTotal ${before} -> ${after} kB`);
  await d.waitLog(new RegExp(`\\[${dom.name}\\] grown: guest plugged 128M of 128M`));
  t.is(JSON.parse((await d.cli('list', '--json')).stdout).vms[0].guestRamBytes, 384 << 20, 'list agrees');

  // Squeeze again below the grown size: the hot-added memory is paged like the rest.
  t.is((await d.cli('resize', dom.name, '--local', '64M')).code, 0);
  mark = con.passes.length;
  await con.waitForPasses(mark + 2, 120_000);

  // Detach: progress on stderr, every page back, nothing left in QEMU.
  const det = await d.cli('detach', dom.name);
  t.is(det.code, 0, det.stderr);
  t.regex(det.stderr, /drain 100% (\d+)\/\1 pages/);
  t.regex(det.stdout, /every page is back/);
  t.false(holdsUffd(dom.pid), 'no userfaultfd left in QEMU');
  t.deepEqual(JSON.parse((await d.cli('list', '--json')).stdout), { vms: [] });
  mark = con.passes.length;
  await con.waitForPasses(mark + 2, 120_000);

  // The guest's verdict over every pass, before, during and after.
  t.true(con.passes.length >= 12);
  t.deepEqual(con.passes.filter((p) => p.corrupt !== 0), []);
  t.true(con.passes.every((p) => p.verified === p.pages));
  for (const ev of ['attached', 'resized: local 64M -> 40M', 'resized: local 40M -> 200M', 'detached']) {
    t.true(d.log().includes(`[${dom.name}] ${ev}`), ev);
  }
});
