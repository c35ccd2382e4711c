/**
 * Invariant 4 end to end: kill -9 of the daemon in the middle of the guest's workload.
 * QEMU keeps its userfaultfd, the guest waits; a restarted daemon takes the VM over
 * (from its state file, and, with the state file gone, by an explicit attach) and the
 * guest continues and verifies. The pages live in a persistent store (file://).
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { bootDomain } from './helpers/libvirt.ts';
import { startDaemon, holdsUffd, type DaemonHandle } from './helpers/daemon.ts';
import { qemuMonitorStuckOnUffd, childrenMatching, stillAlive } from './helpers/proc.ts';
import { sleep } from './helpers/servers.ts';
import type { ConsoleReader } from './helpers/guest.ts';

const execFileP = promisify(execFile);

/** Wait for guest passes; on timeout, say what the daemon saw (stats and log). */
async function progresses(con: ConsoleReader, d: DaemonHandle, vm: string, n: number): Promise<void> {
  try {
    await con.waitForPasses(con.passes.length + n, 120_000);
  } catch (e) {
    const st = await d.cli('stats', vm, '--json');
    throw new Error(`${(e as Error).message.split('\n')[0]}\nstats: ${st.stdout}${st.stderr}\ndaemon log:\n${d.log()}`);
  }
}

test('kill -9 of the daemon mid-workload: the guest waits, a new daemon takes over, corrupt=0', async (t) => {
  const storeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'emfile-'));
  t.teardown(() => fs.rmSync(storeDir, { recursive: true, force: true }));
  const fileUri = `file://${storeDir}`;
  const [dom, other, d1] = await Promise.all([
    bootDomain(t, { memMiB: 256, maxMemMiB: 384, template: 'memfd', workload: { sizeMiB: 96, pattern: 'random', write: 0.25, seed: 31, passes: 0, pauseMs: 100 } }),
    // (a second VM, attached in step 3 while the first one's take-over is in progress)
    bootDomain(t, { memMiB: 160, template: 'private', workload: { sizeMiB: 32, pattern: 'seq', write: 0, seed: 1, passes: 0, pauseMs: 1000 } }),
    startDaemon(t),
  ]);
  const con = dom.console;
  await con.waitForPasses(1, 120_000);
  const a = await d1.cli('attach', dom.name, '--local', '48M', '--store', fileUri);
  t.is(a.code, 0, a.stderr);
  await con.waitForPasses(con.passes.length + 2, 120_000);

  // 1. kill -9 in the middle of a pass: the guest stalls on its faults. The daemon's
  // `virsh event` watchers die with it (a device-added watcher would otherwise live on
  // until the next DIMM is added anywhere, one more after every daemon crash).
  const watchers = childrenMatching(d1.proc.pid!, ['virsh', 'event', '--loop']);
  t.is(watchers.length, 2, 'the daemon watches lifecycle and device-added events');
  await d1.kill9();
  t.deepEqual(await stillAlive(watchers, 5000), [], 'no virsh event watcher outlives the killed daemon');
  t.true(holdsUffd(dom.pid), 'QEMU kept its userfaultfd');
  await sleep(1500);
  const stalled = con.passes.length;
  await sleep(4000);
  t.true(con.passes.length <= stalled + 1, `guest stalled without a monitor (${stalled} -> ${con.passes.length} passes)`);

  // The next daemon reads the state file and takes the VM over by itself.
  const d2 = await d1.restart();
  await d2.waitLog(new RegExp(`\\[${dom.name}\\] attached \\(took over the userfaultfd left by a previous daemon\\)`), 30_000);
  await d2.waitLog(new RegExp(`\\[${dom.name}\\] re-attached after daemon restart: tookOver=true`));
  await progresses(con, d2, dom.name, 3);
  const s = JSON.parse((await d2.cli('stats', dom.name, '--json')).stdout);
  t.is(s.localCapPages, 12288, 'the cap came back from the state file');
  t.is(s.store, fileUri);

  // 2. Again, and this time the state file is lost too: an explicit attach takes over.
  await d2.kill9();
  fs.rmSync(d2.state, { force: true });
  // QEMU's main thread reads all of guest RAM (pmemsave) and stops on the first page only
  // a monitor can bring back: from now on QEMU's monitor answers nobody (libvirt's calls
  // queue behind this one), so neither the refusal nor the take-over may need it.
  const dump = execFileP('virsh', ['-c', 'qemu:///system', 'qemu-monitor-command', dom.name,
    JSON.stringify({ execute: 'pmemsave', arguments: { val: 0, size: 256 << 20, filename: '/dev/null' } })], { timeout: 300_000 });
  dump.catch(() => undefined);
  const stuck = await qemuMonitorStuckOnUffd(dom.pid);
  t.true(stuck.stuck, `QEMU's monitor waits on a page: ${stuck.detail}`);
  t.log(stuck.detail);
  const d3 = await d2.restart();
  t.deepEqual(JSON.parse((await d3.cli('list', '--json')).stdout), { vms: [] });
  // Taking over with an empty, non-persistent store would turn evicted pages into zeros.
  const wrong = await d3.cli('attach', dom.name, '--local', '64M', '--store', 'memory:');
  t.is(wrong.code, 1);
  t.regex(wrong.stderr, /still holds a userfaultfd from a monitor that died.*\[NEEDS_PREVIOUS_STORE\]/s);
  // So would another persistent store that holds none of its pages: the record of its
  // RAM says which store the previous daemon used.
  const emptyDir = fs.mkdtempSync(path.join(os.tmpdir(), 'emfile-empty-'));
  t.teardown(() => fs.rmSync(emptyDir, { recursive: true, force: true }));
  const other1 = await d3.cli('attach', dom.name, '--local', '64M', '--store', `file://${emptyDir}`);
  t.is(other1.code, 1);
  t.regex(other1.stderr, new RegExp(`kept the evicted pages of '${dom.name}' in ${fileUri}.*\\[WRONG_STORE\\]`, 's'));
  t.true(holdsUffd(dom.pid), 'refused: QEMU still waits on its userfaultfd');
  const r = await d3.cli('attach', dom.name, '--local', '64M', '--store', fileUri, '--json');
  t.is(r.code, 0, r.stderr);
  t.true(JSON.parse(r.stdout).tookOver);
  t.regex(d3.log(), /RAM blocks as recorded by the previous daemon/);
  await dump;  // the main thread got its pages: the monitor answers again
  await progresses(con, d3, dom.name, 3);

  // 3. Again, and the take-over fails (its store cannot be opened): the VM is listed as
  // waiting, kept in the state file, its pages are not deleted by a detach, and an
  // attach without options retries the take-over with the saved store. Each take-over
  // is held for a while (a TEST-ONLY setting) to look at the state file meanwhile.
  await d3.kill9();
  const aside = `${storeDir}.aside`;
  fs.renameSync(storeDir, aside);
  fs.writeFileSync(storeDir, 'not a store');
  const d4 = await d3.restart({ EM_TEST_TAKEOVER_PAUSE_MS: '6000' });
  await d4.waitLog(new RegExp(`\\[${dom.name}\\] re-attach failed: `), 30_000);
  const listed = JSON.parse((await d4.cli('list', '--json')).stdout).vms;
  t.is(listed.length, 1);
  t.is(listed[0].state, 'waiting');
  t.regex(JSON.stringify(JSON.parse(fs.readFileSync(d4.state, 'utf8'))), new RegExp(dom.uuid), 'the state file keeps the VM');
  const refused = await d4.cli('detach', dom.name);
  t.is(refused.code, 1);
  t.regex(refused.stderr, /\[VM_NOT_TAKEN_OVER\]/);
  t.true(holdsUffd(dom.pid), 'still waiting on its userfaultfd');
  fs.rmSync(storeDir);
  fs.renameSync(aside, storeDir);
  // The state file's entry names the store too: another one holding none of the pages is refused.
  const other2 = await d4.cli('attach', dom.name, '--store', `file://${emptyDir}`);
  t.is(other2.code, 1);
  t.regex(other2.stderr, /\[WRONG_STORE\]/);
  t.is(JSON.parse((await d4.cli('list', '--json')).stdout).vms[0].state, 'waiting', 'still waiting for its take-over');
  let retryDone = false;
  const retrying = d4.cli('attach', dom.name, '--json').finally(() => { retryDone = true; });
  await d4.waitLog(new RegExp(`take-over held[^]*\\[${dom.name}\\] take-over held`));
  // Another VM's attach writes the state file while the take-over is in progress: the
  // VM being taken over stays in it (a daemon killed now leaves it to the next one).
  const b = await d4.cli('attach', other.name, '--local', '64M');
  t.is(b.code, 0, b.stderr);
  t.false(retryDone, 'the second attach finished while the take-over was held');
  const during = fs.readFileSync(d4.state, 'utf8');
  t.regex(during, new RegExp(other.uuid), 'the state file was written by the second attach');
  t.regex(during, new RegExp(dom.uuid), 'the VM being taken over stays in the state file');
  const retry = await retrying;
  t.is(retry.code, 0, retry.stderr);
  t.true(JSON.parse(retry.stdout).tookOver);
  t.is(JSON.parse(retry.stdout).localBytes, 64 << 20, 'the saved cap');
  await progresses(con, d4, dom.name, 3);

  // Detach leaves the VM whole.
  t.is((await d4.cli('detach', other.name)).code, 0);
  const det = await d4.cli('detach', dom.name);
  t.is(det.code, 0, det.stderr);
  t.false(holdsUffd(dom.pid));
  t.deepEqual(fs.readdirSync(path.join(path.dirname(d4.state), 'memory')), [], 'its record of RAM blocks went with the detach');

  // A state file that still lists both VMs after their detach had finished (a daemon
  // killed while it deleted the stored copies): the next daemon leaves them alone.
  await d4.kill9();
  fs.writeFileSync(d4.state, during, { mode: 0o600 });
  const d5 = await d4.restart();
  for (const n of [dom.name, other.name]) await d5.waitLog(new RegExp(`\\[${n}\\] not taken over: its detach had finished`), 30_000);
  t.deepEqual(JSON.parse((await d5.cli('list', '--json')).stdout), { vms: [] });
  t.false(holdsUffd(dom.pid), 'not attached again');
  t.false(holdsUffd(other.pid));

  // A VM on memory: whose daemon dies lost its evicted pages with it: the next daemon
  // says so and leaves it alone (listed orphaned), it does not take it over.
  const mem = await d5.cli('attach', other.name, '--local', '64M', '--store', 'memory:');
  t.is(mem.code, 0, mem.stderr);
  for (let i = 0; i < 100 && JSON.parse((await d5.cli('stats', other.name, '--json')).stdout).remotePages === 0; i++) await sleep(100);
  await d5.kill9();
  const d6 = await d5.restart();
  await d6.waitLog(new RegExp(`\\[${other.name}\\] CANNOT RE-ATTACH: the previous daemon kept this VM's evicted pages in its own memory`), 30_000);
  const orphan = JSON.parse((await d6.cli('list', '--json')).stdout).vms;
  t.deepEqual(orphan.map((v: { name: string; state: string }) => [v.name, v.state]), [[other.name, 'orphaned']]);
  t.true(holdsUffd(other.pid), 'left alone: its userfaultfd is still the dead daemon\'s');
  await con.waitForPasses(con.passes.length + 2, 60_000);
  t.deepEqual(con.passes.filter((p) => p.corrupt !== 0), []);
  t.true(con.passes.every((p) => p.verified === p.pages));
});

test('a VM waiting for its take-over whose QEMU is destroyed keeps its pages (listed as crashed); the other VM on the same store is taken over and untouched', async (t) => {
  const storeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'emfile-'));
  t.teardown(() => fs.rmSync(storeDir, { recursive: true, force: true }));
  const fileUri = `file://${storeDir}`;
  const wl = (seed: number) => ({ sizeMiB: 48, pattern: 'random' as const, write: 0.25, seed, passes: 0, pauseMs: 100 });
  const [a, b, d1] = await Promise.all([
    bootDomain(t, { memMiB: 160, template: 'memfd', workload: wl(71) }),
    bootDomain(t, { memMiB: 160, template: 'memfd', workload: wl(72) }),
    startDaemon(t),
  ]);
  await Promise.all([a.console.waitForPasses(1, 120_000), b.console.waitForPasses(1, 120_000)]);
  for (const dom of [a, b]) {
    const r = await d1.cli('attach', dom.name, '--local', '24M', '--store', fileUri);
    t.is(r.code, 0, r.stderr);
  }
  await Promise.all([a, b].map((dom) => dom.console.waitForPasses(dom.console.passes.length + 1, 120_000)));
  await d1.kill9();
  // The next daemon takes them over one at a time, each held a while (TEST-ONLY): A's
  // QEMU is destroyed while A waits.
  const d2 = await d1.restart({ EM_TEST_TAKEOVER_PAUSE_MS: '5000' });
  await d2.waitLog(new RegExp(`\\[${a.name}\\] take-over held`), 30_000);
  await execFileP('virsh', ['-c', 'qemu:///system', 'destroy', a.name]);
  await d2.waitLog(new RegExp(`\\[${a.name}\\] QEMU ended while waiting for a take-over`), 30_000);
  await d2.waitLog(new RegExp(`\\[${b.name}\\] re-attached after daemon restart: tookOver=true`), 60_000);
  const listed = JSON.parse((await d2.cli('list', '--json')).stdout).vms as { name: string; state: string }[];
  t.deepEqual(listed.map((v) => [v.name, v.state]).sort(), [[a.name, 'crashed'], [b.name, 'attached']].sort(), 'A kept (its pages are in the store), B taken over');
  await progresses(b.console, d2, b.name, 3);
  const da = await d2.cli('detach', a.name, '--json');
  t.is(da.code, 0, da.stderr);
  t.true(JSON.parse(da.stdout).deletedStoredPages);
  const db = await d2.cli('detach', b.name);
  t.is(db.code, 0, db.stderr);
  await b.console.waitForPasses(b.console.passes.length + 1, 60_000);
  t.deepEqual(b.console.passes.filter((p) => p.corrupt !== 0), []);
});
