/**
 * SIGTERM after the attached QEMU was destroyed: the daemon must exit within seconds,
 * on its own (not by its exit watchdog). It once took more than 25 s. Checked with the
 * signal right after `virsh destroy` (before the daemon may have noticed) on a store
 * that dies with the daemon (memory:, which SIGTERM would drain) and on a persistent
 * one (file://), and after the daemon has handled the destroy; a stats stream is open
 * each time.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bootDomain, virsh } from './helpers/libvirt.ts';
import { startDaemon, holdsUffd, type DaemonHandle } from './helpers/daemon.ts';
import { startMemcached } from './helpers/servers.ts';

const WORKLOAD = { sizeMiB: 64, pattern: 'random' as const, write: 0.25, seed: 51, passes: 0, pauseMs: 100 };

/** SIGTERM the daemon; it must exit 0 on its own within `withinMs` (not by its watchdog). */
async function stopWithin(t: ExecutionContext, d: DaemonHandle, withinMs: number): Promise<void> {
  const t0 = Date.now();
  const code = await d.stop();
  const ms = Date.now() - t0;
  t.log(`exit code ${code} after ${ms} ms`);
  t.is(code, 0, d.log());
  t.true(ms < withinMs, `exited in ${ms} ms:\n${d.log()}`);
  t.regex(d.log(), /daemon stopped/);
  t.notRegex(d.log(), /exit forced/, 'nothing was left holding the process');
}

for (const [store, when] of [['memory:', 'at once'], ['file', 'at once'], ['memory:', 'after the daemon noticed']] as const) {
  test.serial(`store ${store}: attach, virsh destroy, SIGTERM ${when}: the daemon exits within a few seconds`, async (t) => {
    let uri: string = store;
    if (store === 'file') {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'emsig-'));
      t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
      uri = `file://${dir}`;
    }
    const [dom, d] = await Promise.all([
      bootDomain(t, { memMiB: 192, maxMemMiB: 320, template: 'memfd', workload: WORKLOAD }),
      startDaemon(t),
    ]);
    await dom.console.waitForPasses(1, 120_000);
    const a = await d.cli('attach', dom.name, '--local', '32M', '--store', uri);
    t.is(a.code, 0, a.stderr);
    await dom.console.waitForPasses(dom.console.passes.length + 1, 120_000);
    const s = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
    t.true(s.remotePages > 0, 'pages were evicted: a drain would have work to do');
    const watch = d.cli('stats', dom.name, '--watch', '--json');

    await virsh(['destroy', dom.name]);
    if (when === 'after the daemon noticed') await d.waitLog(new RegExp(`\\[${dom.name}\\] domain shut down: reason destroyed`), 30_000);
    await stopWithin(t, d, 5000);
    t.notRegex(d.log(), /draining before daemon exit/, 'no drain of a dead QEMU');
    await watch;
  });
}

// A store that does not outlive the daemon is drained back at SIGTERM; when that store
// does not answer (a paused memcached), the drain would wait on it for ever. The daemon
// gives it up once no page came back for its stall limit (60 s; 3 s here), and says that
// the VM is stranded: QEMU keeps its userfaultfd, and no daemon can take it over from a
// store that does not keep pages across daemons.
test.serial('store memcached paused (SIGSTOP): SIGTERM gives up the drain after the stall limit and exits, saying the VM is stranded', async (t) => {
  const mc = await startMemcached(t, { count: 1, memoryMb: 256 });
  const [dom, d] = await Promise.all([
    bootDomain(t, { memMiB: 192, maxMemMiB: 320, template: 'memfd', workload: WORKLOAD }),
    startDaemon(t, { env: { EM_STOP_DRAIN_STALL_MS: '3000' } }),
  ]);
  await dom.console.waitForPasses(1, 120_000);
  const a = await d.cli('attach', dom.name, '--local', '32M', '--store', mc.uri);
  t.is(a.code, 0, a.stderr);
  await dom.console.waitForPasses(dom.console.passes.length + 1, 120_000);
  const s = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
  t.true(s.remotePages > 0, 'pages were evicted: the drain has work to do');
  mc.pause();
  t.teardown(() => mc.resume());
  await stopWithin(t, d, 20_000);
  t.regex(d.log(), /draining before daemon exit/);
  t.regex(d.log(), /DRAIN GIVEN UP: the drain brought no page back for 3 s \(is its store down\?\).*memcached:\/\/.* does not keep pages across daemons, so no daemon can take this VM over/);
  t.true(holdsUffd(dom.pid), 'QEMU kept its userfaultfd');
  const state = JSON.parse(fs.readFileSync(d.state, 'utf8'));
  t.true(JSON.stringify(state).includes(dom.name) || JSON.stringify(state).includes(s.vm), `the state file keeps the VM for the next daemon: ${JSON.stringify(state).slice(0, 300)}`);
});

// A detach in progress at SIGTERM on a store that dies with the daemon (memcached here is
// not persistent) goes on past the limit for operations in flight (60 s; 1 s here) while
// it brings pages back: given up, the VM would wait on its userfaultfd for pages gone
// with the daemon's last word.
test.serial('a detach in progress at SIGTERM on a non-persistent store finishes before the daemon exits', async (t) => {
  const mc = await startMemcached(t, { count: 1, memoryMb: 256 });
  const [dom, d] = await Promise.all([
    bootDomain(t, { memMiB: 192, maxMemMiB: 320, template: 'memfd', workload: WORKLOAD }),
    startDaemon(t, { env: { EM_STOP_INFLIGHT_MS: '1000', EM_STOP_DRAIN_STALL_MS: '20000' } }),
  ]);
  await dom.console.waitForPasses(1, 120_000);
  const a = await d.cli('attach', dom.name, '--local', '32M', '--store', mc.uri);
  t.is(a.code, 0, a.stderr);
  await dom.console.waitForPasses(dom.console.passes.length + 1, 120_000);
  t.true(JSON.parse((await d.cli('stats', dom.name, '--json')).stdout).remotePages > 0, 'the drain has work to do');
  mc.pause();
  t.teardown(() => mc.resume());
  const detaching = d.cli('detach', dom.name);
  for (let i = 0; i < 100 && JSON.parse((await d.cli('list', '--json')).stdout).vms[0]?.state !== 'detaching'; i++) await new Promise((r) => setTimeout(r, 100));
  const stopped = stopWithin(t, d, 60_000);
  await new Promise((r) => setTimeout(r, 3000));  // past the 1 s limit
  mc.resume();
  await stopped;
  await detaching.catch(() => undefined);  // (its client saw the daemon go)
  t.regex(d.log(), /finishing its detach before daemon exit/);
  t.regex(d.log(), new RegExp(`\\[${dom.name}\\] detached: all pages drained back`));
  t.false(holdsUffd(dom.pid), 'QEMU holds no userfaultfd: the VM is whole');
  await dom.console.waitForPasses(dom.console.passes.length + 1, 60_000);
  t.deepEqual(dom.console.passes.filter((p) => p.corrupt !== 0), []);
});
