/**
 * Invariant 5 end to end: the store stops answering (SIGSTOP on redis-server) while the
 * guest runs squeezed. Faults wait (the guest stalls), `stats` says why, nothing is
 * zero-filled; after SIGCONT the guest resumes and its verification finds nothing wrong.
 */
import test from 'ava';
import { bootDomain } from './helpers/libvirt.ts';
import { startDaemon } from './helpers/daemon.ts';
import { startRedis, sleep } from './helpers/servers.ts';

test('SIGSTOP on redis-server stalls the guest; SIGCONT resumes it with corrupt=0', async (t) => {
  const [dom, d, redis] = await Promise.all([
    bootDomain(t, { memMiB: 256, maxMemMiB: 384, template: 'memfd', workload: { sizeMiB: 96, pattern: 'random', write: 0.25, seed: 41, passes: 0, pauseMs: 100 } }),
    startDaemon(t),
    startRedis(t),
  ]);
  const con = dom.console;
  await con.waitForPasses(1, 120_000);
  const a = await d.cli('attach', dom.name, '--local', '48M', '--store', redis.uri);
  t.is(a.code, 0, a.stderr);
  await con.waitForPasses(con.passes.length + 2, 120_000);
  const before = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
  t.true(before.remotePages > 0);

  redis.pause();
  let resumed = false;
  t.teardown(() => { if (!resumed) redis.resume(); });
  await sleep(2000);
  const stalledAt = con.passes.length;
  // The store is reported as down, with the reason, while faults wait.
  let s: Record<string, any> = {};
  for (let i = 0; i < 40; i++) {
    s = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
    if (s.storeState !== 'ok') break;
    await sleep(250);
  }
  t.is(s.storeState, 'retrying', JSON.stringify(s));
  t.true(s.storeError.length > 0);
  await d.waitLog(new RegExp(`\\[${dom.name}\\] store down: `), 20_000);
  const list = JSON.parse((await d.cli('list', '--json')).stdout).vms;
  t.is(list[0].storeState, 'retrying');
  await sleep(4000);
  t.true(con.passes.length <= stalledAt + 1, `guest stalled while the store was stopped (${stalledAt} -> ${con.passes.length})`);

  redis.resume();
  resumed = true;
  await d.waitLog(new RegExp(`\\[${dom.name}\\] store up`), 60_000);
  await con.waitForPasses(con.passes.length + 3, 120_000);
  s = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
  t.is(s.storeState, 'ok');
  t.is(s.lostPages, 0);
  t.deepEqual(con.passes.filter((p) => p.corrupt !== 0), []);
  // The store refuses the deletion of the obsolete copies after the drain (UNLINK
  // denied): the detach stands, and says what was left behind.
  await redis.cli('ACL', 'SETUSER', 'default', '-unlink');
  const det = await d.cli('detach', dom.name, '--json');
  t.is(det.code, 0, det.stderr);
  const j = JSON.parse(det.stdout);
  t.true(j.drained);
  t.regex(j.storedPagesLeft, /NOPERM|permission/i);
  t.true(Number(await redis.cli('DBSIZE')) > 0, 'the obsolete copies are still in the store');
  const plain = await d.cli('attach', dom.name, '--local', '48M', '--store', redis.uri);
  t.not(plain.code, 0, 'a fresh attach cannot delete the old copies either: refused, VM untouched');
  t.regex(plain.stderr, /NOPERM/, 'with the store\'s reason');
  await redis.cli('ACL', 'SETUSER', 'default', '+unlink');
  const again = await d.cli('attach', dom.name, '--local', '48M', '--store', redis.uri);
  t.is(again.code, 0, again.stderr);
  await con.waitForPasses(con.passes.length + 1, 120_000);
  // A detach that waits on a stopped store: the VM's other requests fail at once
  // instead of queueing silently behind it.
  redis.pause();
  resumed = false;
  const draining = d.cli('detach', dom.name);
  for (let i = 0; i < 100 && JSON.parse((await d.cli('list', '--json')).stdout).vms[0]?.state !== 'detaching'; i++) await sleep(100);
  const t0 = Date.now();
  const busy = await d.cli('resize', dom.name, '--local', '64M');
  t.is(busy.code, 1);
  t.regex(busy.stderr, /is being detached.*\[VM_BUSY\]/s);
  const twice = await d.cli('detach', dom.name);
  t.regex(twice.stderr, /is being detached.*\[VM_BUSY\]/s);
  t.true(Date.now() - t0 < 10_000, 'refused at once');
  redis.resume();
  resumed = true;
  const det2 = await draining;
  t.is(det2.code, 0, det2.stderr);
  t.notRegex(det2.stderr, /warning/);
  t.is((await redis.cli('DBSIZE')).trim(), '0', 'the next attach and detach deleted them');

  // The store loses the pages (emptied behind the daemon's back): the daemon says so,
  // loudly, and the VM waits on them (the guest, which checks every page, sees nothing
  // wrong: nothing was zero-filled in their place).
  const lossy = await d.cli('attach', dom.name, '--local', '48M', '--store', redis.uri);
  t.is(lossy.code, 0, lossy.stderr);
  // Until the workload's own pages are in the store (the first evictions take memory
  // the guest does not read again, whose loss nobody would see; 6000 pages is half the
  // workload's share beyond the cap): every pass reads every workload page, so the next
  // one meets the lost ones.
  let stored = 0;
  for (const end = Date.now() + 120_000; Date.now() < end && stored < 6000; await sleep(500)) stored = Number(await redis.cli('DBSIZE'));
  t.true(stored >= 6000, `${stored} pages stored`);
  t.regex(await redis.cli('FLUSHALL'), /OK/);
  await d.waitLog(new RegExp(`\\[${dom.name}\\] PAGES LOST: .*; the vCPUs that touch them wait \\(asked for again every 2 s\\), nothing was zero-filled`), 60_000);
  const lost = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
  t.is(lost.storeState, 'lost');
  t.true(lost.lostPages > 0, `lostPages ${lost.lostPages}`);
  t.deepEqual(con.passes.filter((p) => p.corrupt !== 0), [], 'and the guest saw nothing wrong');
});
