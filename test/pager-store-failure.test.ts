/**
 * Invariant 5 with a real redis-server: a store outage loses nothing. Faults wait and
 * retry, evictions pause, the state is visible in stats; a store that lost pages we
 * stored gets them reported, and they are never zero-filled.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTarget, parseReply, type Target } from './helpers/target.ts';
import { startRedis, sleep } from './helpers/servers.ts';
import { Pager } from '../native/pager.ts';
import { openStore } from '../kvstore/index.ts';
import type { PageStore } from '../kvstore/types.ts';

async function setup(t: Parameters<typeof startRedis>[0] & { teardown(fn: () => unknown): void }, redisOpts: Parameters<typeof startRedis>[1]) {
  const redis = await startRedis(t, redisOpts);
  const store: PageStore = await openStore(redis.uri, { opTimeoutMs: 1000 });
  t.teardown(() => store.close());
  const target: Target = await startTarget(t, { memfdMiB: 32, anonMiB: 1 });
  await target.cmd('fill memfd 31');
  const region = target.regionSpecs().find((r) => r.kind === 'memfd')!;
  const pager = await Pager.attach({ pid: target.pid, vmId: `redis-${target.pid}`, regions: [region], capPages: 1024, store });
  t.teardown(() => pager.abandon());
  const events: string[] = [];
  for (const ev of ['store-down', 'store-up', 'page-lost']) pager.on(ev, () => events.push(ev));
  const end = Date.now() + 60000;
  while (pager.stats().residentPages > 1024 && Date.now() < end) await sleep(50);
  return { redis, store, target, pager, events };
}

test('redis-server paused (SIGSTOP) mid-churn: the guest stalls, resumes intact; stats say why', async (t) => {
  const { redis, target, pager, events } = await setup(t, {});
  const churn = target.cmd('churn memfd 8000 4 0.5', { timeoutMs: 120000 });
  await sleep(1000);
  redis.pause();
  let sawRetrying = false;
  for (let i = 0; i < 60 && !sawRetrying; i++) {
    await sleep(100);
    const s = pager.stats();
    if (s.storeState === 'retrying') {
      sawRetrying = true;
      t.regex(s.storeError, /./, 'the reason is shown');
    }
  }
  t.true(sawRetrying, 'stats showed the store retrying while it was stopped');
  const paused = pager.stats();
  await sleep(1000);
  const later = pager.stats();
  t.is(later.fetches, paused.fetches, 'no fetch completes while the store is stopped');
  // Invariant 3: no page leaves host memory while the store cannot acknowledge it.
  t.is(later.evictions, paused.evictions, 'no eviction completes while the store is stopped');
  redis.resume();
  t.is(parseReply(await churn).corrupt, 0);
  t.is(parseReply(await target.cmd('verify memfd')).corrupt, 0);
  const s = pager.stats();
  t.is(s.storeState, 'ok');
  t.is(s.lostPages, 0);
  t.true(events.includes('store-down') && events.includes('store-up'), `events: ${events}`);
});

test('redis-server killed and restarted with appendfsync always: no page is lost', async (t) => {
  const { redis, target, pager } = await setup(t, { persistence: true, appendfsync: 'always' });
  await target.cmd('churn memfd 2000 2 0.5');
  await redis.kill('SIGKILL');
  const churn = target.cmd('churn memfd 4000 2 0.5', { timeoutMs: 120000 });
  await sleep(1500);
  await redis.restart();
  t.is(parseReply(await churn).corrupt, 0);
  t.is(parseReply(await target.cmd('verify memfd')).corrupt, 0);
  t.is(pager.stats().lostPages, 0);
});

test('redis-server restarted without persistence: the lost pages are reported, none is zero-filled', async (t) => {
  const { redis, target, pager, events } = await setup(t, { persistence: false });
  const before = pager.stats();
  t.true(before.remotePages > 1000, 'pages are in the store');
  await redis.kill('SIGKILL');
  await redis.restart(); // empty now
  // The verify touches remote pages: they must not come back as zeros. The verifying
  // thread waits on the first lost page instead (the VM would be paused).
  const verify = target.cmd('verify memfd', { timeoutMs: 4000 }).then(
    (r) => `finished: ${r}`,
    () => 'waiting',
  );
  t.is(await verify, 'waiting', 'the target waits on a lost page instead of reading zeros');
  const s = pager.stats();
  t.true(s.lostPages > 0, 'lost pages are counted');
  t.is(s.storeState, 'lost');
  t.is(s.zeroFills, before.zeroFills, 'no lost page was zero-filled');
  t.true(events.includes('page-lost'));
});

test("redis restarted empty, then its data restored: the held pages come back by themselves, none zero-filled; a detach refused meanwhile leaves the pager paging", async (t) => {
  const { redis, target, pager } = await setup(t, { persistence: false });
  // A snapshot of the stored pages, as a backup holds them; the live server then loses them.
  // (taken once the evictor's last batches, down to its low watermark, are stored: a page
  // stored after the snapshot would be lost for good, and the verify below wait forever)
  let writes = -1;
  for (const settle = Date.now() + 20000; pager.stats().storeWrites !== writes && Date.now() < settle;) {
    writes = pager.stats().storeWrites;
    await sleep(500);
  }
  const backup = fs.mkdtempSync(path.join(os.tmpdir(), 'em-redis-backup-'));
  t.teardown(() => fs.rmSync(backup, { recursive: true, force: true }));
  await redis.cli('SAVE');
  fs.renameSync(path.join(redis.dir, 'dump.rdb'), path.join(backup, 'dump.rdb'));
  await redis.kill('SIGKILL');
  await redis.restart(); // empty now
  const zeroFills = pager.stats().zeroFills;
  const verify = target.cmd('verify memfd', { timeoutMs: 180000 });
  const until = Date.now() + 30000;
  while (pager.stats().lostPages === 0 && Date.now() < until) await sleep(100);
  t.true(pager.stats().lostPages > 0, 'the target faulted on a page the store lost');

  // Detach cannot bring lost pages back: refused, and the VM stays attached for real:
  // the evictor works again (the drain brought every other page in, far above the cap).
  const refused = await t.throwsAsync(pager.detach());
  t.is((refused as { code?: string }).code, 'EM_PAGES_LOST');
  t.false(pager.stats().draining, 'no longer draining');
  const capBack = Date.now() + 60000;
  while (pager.stats().residentPages > 1024 && Date.now() < capBack) await sleep(100);
  t.true(pager.stats().residentPages <= 1024, `back under the cap: ${pager.stats().residentPages} resident`);
  t.regex(refused!.message, /Restore the store's data \(they are asked for again every few seconds\) and detach again/);

  // Restore: a second server on the backup copies back the keys the live one lacks.
  const side = await startRedis(t, { dir: backup });
  const live = new Set((await redis.cli('--scan')).split('\n').filter(Boolean));
  const missing = (await side.cli('--scan')).split('\n').filter((k) => k && !live.has(k));
  t.true(missing.length > 0, 'the backup holds the lost pages');
  for (let i = 0; i < missing.length; i += 200) {
    t.regex(await side.cli('MIGRATE', '127.0.0.1', String(redis.port), '', '0', '10000', 'COPY', 'KEYS', ...missing.slice(i, i + 200)), /OK/);
  }
  // Nobody is told: the pager asks for the lost pages again by itself and the verify runs on.
  t.is(parseReply(await verify).corrupt, 0);
  const s = pager.stats();
  t.is(s.lostPages, 0, 'no page held as lost any more');
  t.is(s.storeState, 'ok');
  t.is(s.zeroFills, zeroFills, 'no page was zero-filled on the way');
  await pager.detach();
  t.is(parseReply(await target.cmd('verify memfd')).corrupt, 0);
});

test('abandon while a detach waits on a stalled evictor (QEMU gone mid-drain): no crash, the target keeps its uffd, the next pager takes over', async (t) => {
  const { redis, store, target, pager } = await setup(t, { persistence: true, appendfsync: 'always' });
  const region = target.regionSpecs().find((r) => r.kind === 'memfd')!;
  // The evictor stuck retrying a stopped store: a detach first joins it, and an abandon
  // (the daemon's answer to QEMU's exit) stops it at the same moment.
  const churn = target.cmd('churn memfd 4000 2 0.5', { timeoutMs: 120000 });
  await sleep(500);
  redis.pause();
  const paused = Date.now() + 10000;
  while (pager.stats().storeState !== 'retrying' && Date.now() < paused) await sleep(50);
  t.is(pager.stats().storeState, 'retrying');
  const detaching = pager.detach().then(() => 'detached', (e: { code?: string }) => e.code ?? 'error');
  await sleep(300);
  t.notThrows(() => pager.abandon());
  t.is(await detaching, 'EM_DETACH_ABORTED');
  // The target waits on its uffd for a new monitor, which takes over once the store is back.
  redis.resume();
  const next = await Pager.attach({ pid: target.pid, vmId: `redis-${target.pid}`, regions: [region], capPages: 1024, store, reattach: true });
  t.teardown(() => next.abandon());
  t.is(parseReply(await churn).corrupt, 0);
  t.is(parseReply(await target.cmd('verify memfd')).corrupt, 0);
  await next.detach();
});
