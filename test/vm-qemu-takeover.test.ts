/**
 * Invariant 4 for a plain QEMU (`pid:` target, private RAM, no libvirt): kill -9 of the
 * daemon, and while no monitor serves the userfaultfd QEMU's main thread reads guest RAM
 * (pmemsave) and stops on a page only a monitor can bring back. From then on QEMU
 * executes no monitor command, so the next daemon must find the VM (its id) and its RAM
 * blocks without QMP: from the state file and its record of the RAM blocks.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bootQemu, qmpCommand } from './helpers/qemu.ts';
import { startDaemon, holdsUffd } from './helpers/daemon.ts';
import { qemuMonitorStuckOnUffd } from './helpers/proc.ts';

test('pid: target, private RAM: the daemon dies, QEMU\'s main thread waits on a page, the next daemon takes over without QMP, corrupt=0', async (t) => {
  const storeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'emfile-'));
  t.teardown(() => fs.rmSync(storeDir, { recursive: true, force: true }));
  const [q, d1] = await Promise.all([
    bootQemu(t, { memMiB: 256, memory: 'private', secondQmp: true, workload: { sizeMiB: 96, pattern: 'random', write: 0.25, seed: 61, passes: 0, pauseMs: 100 } }),
    startDaemon(t),
  ]);
  const con = q.console;
  await con.waitForPasses(1, 120_000);
  const a = await d1.cli('attach', `pid:${q.pid}`, '--local', '48M', '--store', `file://${storeDir}`, '--json');
  t.is(a.code, 0, a.stderr);
  const vmId = JSON.parse(a.stdout).vm;
  await con.waitForPasses(con.passes.length + 2, 120_000);

  await d1.kill9();
  t.true(holdsUffd(q.pid), 'QEMU kept its userfaultfd');
  const dump = qmpCommand(q.qmp2Path!, 'pmemsave', { val: 0, size: 256 << 20, filename: '/dev/null' }, 300_000);
  dump.catch(() => undefined);
  const stuck = await qemuMonitorStuckOnUffd(q.pid);
  t.true(stuck.stuck, `QEMU's monitor waits on a page: ${stuck.detail}`);
  t.log(stuck.detail);

  const d2 = await d1.restart();
  await d2.waitLog(new RegExp(`\\[pid:${q.pid}\\] attached \\(took over the userfaultfd left by a previous daemon\\)`), 90_000);
  t.regex(d2.log(), /RAM blocks as recorded by the previous daemon/);
  await dump;  // the main thread got its pages: QEMU executes monitor commands again
  const listed = JSON.parse((await d2.cli('list', '--json')).stdout).vms;
  t.deepEqual(listed.map((v: { vm: string; state: string }) => [v.vm, v.state]), [[vmId, 'attached']], 'the same VM id (pid + start time), from the record');
  await con.waitForPasses(con.passes.length + 3, 120_000);

  // 2. A QEMU that is not running any more (its RAM migrated away: status postmigrate)
  // but holds a userfaultfd left by a monitor that died waits for a monitor all the
  // same: it is taken over whatever its run state (a fresh attach would be refused).
  await qmpCommand(q.qmp2Path!, 'stop');
  await qmpCommand(q.qmp2Path!, 'migrate-set-parameters', { 'max-bandwidth': 4 * 2 ** 30 });
  await qmpCommand(q.qmp2Path!, 'migrate', { uri: 'exec:cat > /dev/null' });
  for (const end = Date.now() + 120_000; ;) {
    const m = await qmpCommand(q.qmp2Path!, 'query-migrate') as { status?: string };
    if (m.status === 'completed') break;
    if (m.status === 'failed' || Date.now() > end) return t.fail(`migration: ${JSON.stringify(m)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  t.is((await qmpCommand(q.qmp2Path!, 'query-status') as { status: string }).status, 'postmigrate');
  await d2.kill9();
  const d3 = await d2.restart();
  await d3.waitLog(new RegExp(`\\[pid:${q.pid}\\] attached \\(took over the userfaultfd left by a previous daemon\\)`), 90_000);
  await qmpCommand(q.qmp2Path!, 'cont');
  await con.waitForPasses(con.passes.length + 3, 120_000);

  const det = await d3.cli('detach', `pid:${q.pid}`);
  t.is(det.code, 0, det.stderr);
  t.false(holdsUffd(q.pid));
  await con.waitForPasses(con.passes.length + 2, 60_000);
  t.deepEqual(con.passes.filter((p) => p.corrupt !== 0), []);
  t.true(con.passes.every((p) => p.verified === p.pages));
});
