/**
 * Growing a running libvirt guest by DIMMs (black-box through bin/elasticmem.js): one
 * added behind the daemon's back (virsh attach-device), one by `grow --dimm`. Each DIMM's
 * RAM block joins the VM's pager while the guest runs and is paged under the same cap;
 * the guest onlines them (its MemTotal grows), its workload verifies throughout, detach
 * drains them with the rest.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { bootDomain, virsh } from './helpers/libvirt.ts';
import { startDaemon, holdsUffd } from './helpers/daemon.ts';

const WORKLOAD = { sizeMiB: 96, pattern: 'random' as const, write: 0.25, seed: 13, passes: 0, pauseMs: 200 };

test('grow by a DIMM: its RAM block goes under the pager, same cap, guest sees it, corrupt=0, bad sizes refused', async (t) => {
  const [dom, d] = await Promise.all([
    bootDomain(t, { memMiB: 256, maxMemMiB: 384, dimmMiB: 256, template: 'memfd', workload: WORKLOAD }),
    startDaemon(t),
  ]);
  const con = dom.console;
  await con.waitForPasses(1, 120_000);
  const a = await d.cli('attach', dom.name, '--local', '64M', '--json');
  t.is(a.code, 0, a.stderr);
  t.is(JSON.parse(a.stdout).regions.length, 2, 'boot RAM and the virtio-mem backend');
  let s = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
  const pagesBefore = s.totalPages;

  // Bad size for a DIMM: refused (by the CLI, before the daemon: exit 2), nothing added.
  const bad = await d.cli('grow', dom.name, '100M', '--dimm');
  t.is(bad.code, 2);
  t.regex(bad.stderr, /multiples of 128M.*\[BAD_SIZE\]/);
  t.is(JSON.parse((await d.cli('stats', dom.name, '--json')).stdout).totalPages, pagesBefore);

  // A DIMM added behind the daemon's back: libvirt's device-added event brings it under the pager.
  const before = con.memTotalKb!;
  const xml = path.join(dom.dir, 'dimm.xml');
  fs.writeFileSync(xml, "<memory model='dimm'><target><size unit='MiB'>128</size><node>0</node></target></memory>\n");
  await virsh(['attach-device', dom.name, xml, '--live']);
  await d.waitLog(new RegExp(`\\[${dom.name}\\] memory added: \\S*dimm\\d: `), 30_000);
  s = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
  t.is(s.totalPages, pagesBefore + 32768, 'the DIMM added with virsh is under the pager');
  const mid = await con.waitForMemTotal(before + 120 * 1024, 60_000);
  t.true(mid >= before + 120 * 1024, `the guest onlined it: MemTotal ${before} -> ${mid} kB`);

  const g = await d.cli('grow', dom.name, '128M', '--dimm', '--json');
  t.is(g.code, 0, g.stderr);
  const grown = JSON.parse(g.stdout);
  t.is(grown.kind, 'dimm');
  t.is(grown.guestRamBytes, 512 << 20);
  await d.waitLog(new RegExp(`\\[${dom.name}\\] grown: DIMM added`));
  s = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
  t.is(s.totalPages, pagesBefore + 2 * 32768, 'the DIMM grow added is under the pager');
  const after = await con.waitForMemTotal(mid + 120 * 1024, 60_000);
  t.true(after >= mid + 120 * 1024, `the guest onlined the second DIMM: MemTotal ${mid} -> ${after} kB`);

  // Still squeezed at the same cap, and the workload verifies.
  const mark = con.passes.length;
  await con.waitForPasses(mark + 2, 120_000);
  s = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
  t.is(s.localCapPages, 16384);
  t.true(s.residentPages <= 16384 + 1024, `resident ${s.residentPages} near the cap`);

  // No room left for another DIMM: a clear error, nothing changed.
  const full = await d.cli('grow', dom.name, '128M', '--dimm');
  t.is(full.code, 1);
  t.regex(full.stderr, /\[GROW_FAILED\]/);
  t.regex(full.stderr, /maxMemory/);
  t.is(JSON.parse((await d.cli('stats', dom.name, '--json')).stdout).totalPages, pagesBefore + 2 * 32768);

  const det = await d.cli('detach', dom.name);
  t.is(det.code, 0, det.stderr);
  t.false(holdsUffd(dom.pid), 'no userfaultfd left in QEMU');
  const m2 = con.passes.length;
  await con.waitForPasses(m2 + 1, 120_000);
  t.deepEqual(con.passes.filter((p) => p.corrupt !== 0), []);
});
