/**
 * Two VMs on one daemon, each with its own cap and store (memory: and file://, memfd and
 * private RAM), and what happens when they end: a guest that shuts down is detached and
 * its pages deleted; a QEMU that crashes keeps its pages until the operator detaches it.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bootDomain } from './helpers/libvirt.ts';
import { startDaemon, holdsUffd } from './helpers/daemon.ts';
import { openStore } from '../kvstore/index.ts';

test('two VMs, two stores: both verify; shutdown deletes pages, a crash keeps them until detach', async (t) => {
  const storeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'emfile-'));
  t.teardown(() => fs.rmSync(storeDir, { recursive: true, force: true }));
  const fileUri = `file://${storeDir}`;
  const [a, b, d] = await Promise.all([
    // A powers itself off after its passes: a normal shutdown.
    bootDomain(t, { memMiB: 256, maxMemMiB: 384, template: 'private', workload: { sizeMiB: 96, pattern: 'random', write: 0.25, seed: 21, passes: 14, pauseMs: 1000, after: 'poweroff' } }),
    bootDomain(t, { memMiB: 256, maxMemMiB: 384, template: 'memfd', workload: { sizeMiB: 96, pattern: 'zipf', write: 0.25, seed: 22, passes: 0, pauseMs: 100 } }),
    startDaemon(t),
  ]);
  await Promise.all([a.console.waitForPasses(1, 120_000), b.console.waitForPasses(1, 120_000)]);
  const ra = await d.cli('attach', a.name, '--local', '64M', '--store', 'memory:', '--json');
  t.is(ra.code, 0, ra.stderr);
  const rb = await d.cli('attach', b.name, '--local', '80M', '--store', fileUri, '--json');
  t.is(rb.code, 0, rb.stderr);
  t.is(JSON.parse(ra.stdout).backing, 'anon', 'the private template is paged as anonymous memory');
  t.is(JSON.parse(rb.stdout).backing, 'memfd');

  const list = JSON.parse((await d.cli('list', '--json')).stdout).vms as Record<string, unknown>[];
  t.deepEqual(list.map((v) => [v.name, v.store, v.localBytes]).sort(), [[a.name, 'memory:', 64 << 20], [b.name, fileUri, 80 << 20]].sort());

  const table = (await d.cli('list')).stdout.split('\n');
  t.regex(table[0]!, /^NAME\s+STATE\s+LOCAL\s+RESIDENT\s+REMOTE\s+GUEST RAM\s+STORE$/);
  t.truthy(table.find((l) => l.startsWith(a.name) && /attached\s+64M\s+.*256M\s+memory:$/.test(l)), table.join('\n'));
  t.truthy(table.find((l) => l.startsWith(b.name) && /attached\s+80M\s+.*256M\s+file:\/\//.test(l)), table.join('\n'));

  // B runs squeezed while A finishes its passes and powers off.
  await b.console.waitForPasses(b.console.passes.length + 3, 120_000);
  const sb = JSON.parse((await d.cli('stats', b.name, '--json')).stdout);
  t.true(sb.remotePages > 0 && sb.storeWrites > 0, 'B has pages in the file store');
  // A: libvirt's QEMU (unprivileged, seccomp sandbox) with private RAM on the embedded
  // store: its pages leave by vmsplice and MADV_DONTNEED injected into QEMU.
  const sa = JSON.parse((await d.cli('stats', a.name, '--json')).stdout);
  t.is(sa.evictMode, 'splice');
  t.true(sa.evictions > 0, `A evicts (${sa.evictions})`);
  t.false(/eviction copy-out failed|pager error/.test(d.log()), d.log());
  await a.console.waitFor(/ELASTICMEM-WORKLOAD-DONE corrupt=0/, 120_000);
  await d.waitLog(new RegExp(`\\[${a.name}\\] domain shut down: reason shutdown; detached and its stored pages deleted`), 30_000);

  // B's QEMU crashes (kill -9): it stays listed as crashed, its pages are kept.
  const store = await openStore(fileUri);
  t.teardown(() => store.close());
  process.kill(b.pid, 'SIGKILL');
  await d.waitLog(new RegExp(`\\[${b.name}\\] QEMU crashed: QEMU pid ${b.pid} ended \\((failed|crashed|unknown)\\); stored pages kept in ${fileUri.replace(/[/.]/g, '\\$&')}`), 30_000);
  const after = JSON.parse((await d.cli('list', '--json')).stdout).vms as Record<string, unknown>[];
  t.is(after.length, 1);
  t.like(after[0], { name: b.name, state: 'crashed' });
  t.true((await store.list(b.uuid)).length > 0, 'the crashed VM\'s pages are still in the store');
  // Both QEMUs are gone: so are the daemon's records of their RAM blocks (a shutdown
  // detaches; a crash leaves the record of a process that ended, swept).
  t.deepEqual(fs.readdirSync(path.join(path.dirname(d.state), 'memory')), []);
  const st = await d.cli('stats', b.name);
  t.is(st.code, 1);
  t.regex(st.stderr, /is not running any more \(crashed\); its stored pages are kept until: elasticmem detach/);

  // The operator deletes them.
  const det = await d.cli('detach', b.name);
  t.is(det.code, 0, det.stderr);
  t.regex(det.stdout, /QEMU was gone, its stored pages were deleted/);
  t.deepEqual(await store.list(b.uuid), []);
  t.deepEqual(JSON.parse((await d.cli('list', '--json')).stdout), { vms: [] });

  for (const c of [a.console, b.console]) {
    t.true(c.passes.length >= 4);
    t.deepEqual(c.passes.filter((p) => p.corrupt !== 0), []);
  }
  // The daemon kept no userfaultfd of the ended QEMUs (one taken with pidfd_getfd lives
  // in the daemon until the session closes it).
  t.false(holdsUffd(d.proc.pid!), 'the daemon closed both VMs\' userfaultfds');
});
