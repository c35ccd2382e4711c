/**
 * The pager against a real process (test/fixtures/target.c) and the real kernel:
 * content integrity under churn for both RAM kinds, the lost-write race, zero and
 * clean pages, resize, detach, and bad input. Crash recovery is in pager-crash.test.ts.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import { execFileSync, spawn } from 'node:child_process';
import { startTarget, parseReply, type Target } from './helpers/target.ts';
import { mappedPages, threadsWaitOnUffd } from './helpers/proc.ts';
import { startTimeOf } from '../native/proc-start.ts';
import { Pager, type PagerEvent } from '../native/pager.ts';
import { openStore } from '../kvstore/index.ts';
import type { PageStore } from '../kvstore/types.ts';
import type { RegionSpec } from '../native/index.ts';

const PAGE = 4096;
const MiB = 2 ** 20;

async function memoryStore(t: { teardown(fn: () => unknown): void }): Promise<PageStore> {
  const s = await openStore('memory:');
  t.teardown(() => s.close());
  return s;
}

function region(target: Target, kind: 'memfd' | 'anon'): RegionSpec {
  return target.regionSpecs().find((r) => r.kind === kind)!;
}

/**
 * A store reached through the TypeScript bridge (not native) that passes every call to
 * `inner` except those given in `own`: the tests' stand-ins for a store that misbehaves.
 */
function bridgeStore(inner: PageStore, uri: string, own: Partial<Pick<PageStore, 'get' | 'put' | 'delete'>>): PageStore {
  return {
    uri,
    capabilities: { persistent: false, maxBatch: 256, native: false },
    get: own.get ?? ((vm, pages, versions) => inner.get(vm, pages, versions)),
    put: own.put ?? ((vm, pages, data, versions) => inner.put(vm, pages, data, versions)),
    delete: own.delete ?? ((vm, pages) => inner.delete(vm, pages)),
    dropVm: (vm) => inner.dropVm(vm),
    list: (vm) => inner.list(vm),
    usage: (vm) => inner.usage(vm),
    close: async () => {},
  };
}

async function attach(t: { teardown(fn: () => unknown): void }, target: Target, regions: RegionSpec[], capPages: number, store: PageStore, extra: Partial<Parameters<typeof Pager.attach>[0]> = {}) {
  const pager = await Pager.attach({ pid: target.pid, vmId: `test-${target.pid}`, regions, capPages, store, ...extra });
  t.teardown(() => pager.abandon());
  return pager;
}

async function waitFor(cond: () => boolean, ms = 20000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

function uffdCount(pid: number): number {
  let n = 0;
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === 'anon_inode:[userfaultfd]') n++;
    } catch { /* closed meanwhile */ }
  }
  return n;
}

// memfd with the embedded store evicts by splice; the write-protect path (every other
// store, private RAM) is forced for memfd too, so both paths of memfd take the churn.
for (const [kind, mode] of [['memfd', 'splice'], ['memfd', 'write-protect'], ['anon', 'splice'], ['anon', 'write-protect']] as const) {
  test(`${kind} (${mode}): 4 writer threads over 128 MiB with the cap at 10% keep every page intact`, async (t) => {
    const target = await startTarget(t, { memfdMiB: kind === 'memfd' ? 128 : 1, anonMiB: kind === 'anon' ? 128 : 1 });
    await target.cmd(`fill ${kind} 7`);
    const store = await memoryStore(t);
    const r = region(target, kind);
    const cap = Math.floor(r.length / PAGE / 10);
    const pager = await attach(t, target, [r], cap, store, { _testNoSplice: mode === 'write-protect' });
    t.is(pager.stats().evictMode, mode);
    await waitFor(() => pager.stats().residentPages <= cap);
    const churn = parseReply(await target.cmd(`churn ${kind} 6000 4 0.5`));
    t.is(churn.corrupt, 0, 'no corruption seen by the writers');
    t.true(churn.writes > 1000, `writes happened (${churn.writes})`);
    const v = parseReply(await target.cmd(`verify ${kind}`));
    t.is(v.corrupt, 0, `verify: first bad page ${v.firstbad}`);
    // The evictor may lag behind a burst of faults (bounded back-pressure); it must
    // bring residency back under the cap once the burst ends.
    await waitFor(() => pager.stats().residentPages <= cap, 30000);
    const s = pager.stats();
    t.true(s.evictions > 1000, `evictions ${s.evictions}`);
    t.true(s.fetches > 1000, `fetches ${s.fetches}`);
    t.true(s.metadataBytes <= (r.length / 2 ** 30) * 4 * MiB + 4096, 'metadata within 4 MiB per GiB');
    t.log(kind, JSON.stringify({ churn, faults: s.faults, fetches: s.fetches, evictions: s.evictions, wp: s.wpFaults, aborts: s.evictAborts, p50: s.faultLatencyUs.p50, p99: s.faultLatencyUs.p99 }));
  });
}

// A drop that fails part-way (a punch or an injected DONTNEED that stops at some range)
// leaves some pages gone and some still in memory. The gone ones must become remote; if
// they were taken for still resident, their next fault would read as a discard by QEMU:
// zeros, and the stored copy deleted. The test hook makes every drop remove half of its
// runs and then fail.
for (const kind of ['memfd', 'anon'] as const) {
  test(`${kind}: drops that fail part-way lose no page`, async (t) => {
    const target = await startTarget(t, { memfdMiB: kind === 'memfd' ? 16 : 1, anonMiB: kind === 'anon' ? 16 : 1 });
    await target.cmd(`fill ${kind} 11`);
    const store = await memoryStore(t);
    const r = region(target, kind);
    const cap = Math.floor(r.length / PAGE / 8);
    const pager = await attach(t, target, [r], cap, store, { evictBatch: 64, _testFailDrops: true });
    const failures: string[] = [];
    const errnos = new Set<number | undefined>();
    pager.on('error', (e: PagerEvent) => { if (/partial drop/.test(e.message)) { failures.push(e.message); errnos.add(e.errno); } });
    await waitFor(() => pager.stats().residentPages <= cap, 60000);
    const churn = parseReply(await target.cmd(`churn ${kind} 2000 2 0.5`));
    t.is(churn.corrupt, 0, 'no corruption seen by the writers');
    const v = parseReply(await target.cmd(`verify ${kind}`));
    t.is(v.corrupt, 0, `verify: first bad page ${v.firstbad}`);
    const s = pager.stats();
    t.true(failures.length > 0, 'drops failed part-way');
    t.deepEqual([...errnos], [5], 'each error event carries the errno of the failure (EIO, as the test failure says)');
    t.true(s.evictions > 1000, `evictions ${s.evictions}`);
    t.true(s.fetches > 500, `fetches ${s.fetches}`);
    t.is(s.discards, 0, 'no page was taken for discarded');
    t.log(kind, JSON.stringify({ failedDrops: failures.length, evictions: s.evictions, fetches: s.fetches, discards: s.discards }));
  });
}

// The race window is the time between copy-out and drop; a store that takes a moment
// to acknowledge (file:, LMDB with synchronous commits) widens it, as a network store would.
async function raceStore(t: { teardown(fn: () => unknown): void }): Promise<PageStore> {
  const dir = fs.mkdtempSync('/tmp/em-race-');
  const s = await openStore(`file://${dir}/pages`);
  t.teardown(async () => { await s.close(); fs.rmSync(dir, { recursive: true, force: true }); });
  return s;
}

/**
 * Writes racing eviction: `cmd` writes pages (and checks each before rewriting it) while
 * the cap keeps evicting them; then every page is verified. Up to `rounds` rounds for
 * the unsafe twins (stopping at the first lost write: on a loaded machine the race may
 * take a few), 5 for the safe runs. Returns what the target saw.
 */
async function writesRacingEviction(t: Parameters<typeof startTarget>[0], o: { kind?: 'memfd' | 'anon'; mib: number; cap: number; store: PageStore; cmd: string; rounds: number; unsafe: boolean; raceWindowMs?: number; prep?: string; perRound?: string; skipCowProtect?: boolean }) {
  const kind = o.kind ?? 'memfd';
  const target = await startTarget(t, { memfdMiB: kind === 'memfd' ? o.mib : 1, anonMiB: kind === 'anon' ? o.mib : 1 });
  await target.cmd(`fill ${kind} 3`);
  if (o.prep) await target.cmd(o.prep);
  const pager = await attach(t, target, [region(target, kind)], o.cap, o.store, {
    evictBatch: 16, prefetchMax: 0, _testUnsafeSkipWriteProtect: o.unsafe, ...(o.raceWindowMs ? { _testRaceWindowMs: o.raceWindowMs } : {}),
    ...(o.skipCowProtect ? { _testUnsafeSkipCowProtect: true } : {}),
  });
  let corrupt = 0, writes = 0, rounds = 0;
  for (; rounds < (o.unsafe || o.skipCowProtect ? o.rounds : 5) && corrupt === 0; rounds++) {
    if (o.perRound) await target.cmd(o.perRound);
    const c = parseReply(await target.cmd(o.cmd));
    writes += c.writes;
    corrupt += c.corrupt + parseReply(await target.cmd(`verify ${kind}`)).corrupt;
  }
  return { corrupt, writes, rounds, stats: pager.stats() };
}

/** Hammer 64 pages while a 32-page cap evicts them again and again (write-protect path: file store). */
async function hammerUnderEviction(t: Parameters<typeof startTarget>[0], kind: 'memfd' | 'anon', unsafe: boolean) {
  return writesRacingEviction(t, { kind, mib: 16, cap: 32, store: await raceStore(t), cmd: `hammer ${kind} 100 64 2000`, rounds: 40, unsafe });
}

for (const kind of ['memfd', 'anon'] as const) {
  test(`${kind}: writes racing eviction are never lost (write-protect before copy-out)`, async (t) => {
    const { corrupt, writes, stats: s } = await hammerUnderEviction(t, kind, false);
    t.is(s.evictMode, 'write-protect', 'a bridge store evicts through write-protect');
    t.true(writes > 100);
    t.is(corrupt, 0, 'every page read back exactly as last written');
    t.true(s.evictions > 500, `evictions ${s.evictions}`);
    t.true(s.evictAborts > 0, 'writes hit pages being evicted (their evictions were aborted)');
    t.log(JSON.stringify({ writes, evictions: s.evictions, wpFaults: s.wpFaults, evictAborts: s.evictAborts }));
  });

  // The twin runs until its first lost write (at most 40 rounds); the round it took is
  // logged: the safe test's 5 rounds must stay well above it.
  test(`the ${kind} race test can fail: without write-protect before copy-out, racing writes are lost`, async (t) => {
    const { corrupt, writes, rounds, stats: s } = await hammerUnderEviction(t, kind, true);
    t.log(JSON.stringify({ corrupt, writes, rounds, evictions: s.evictions }));
    t.true(corrupt > 0, 'lost writes are detected when the protection is removed');
  });
}

// With the embedded store and memfd RAM the evictor does not write-protect: it splices
// each dirty page into a pipe (a reference to the page, not a copy), punches it out of
// the guest, and only then reads the pipe (Pager::evict_by_splice). Writes racing the
// eviction land in the page the pipe holds. The unsafe twin reads the pipe before the
// punch, as a copy-out without protection would.
//
// Four writer threads over 256 pages with half of them resident: while one waits on a
// fault, the others write pages that are resident, some of them in the batch being
// evicted, inside the 5 ms the test widens the window to. (A single thread hammering a
// loop of pages, as the write-protect test does, spends that window waiting for room at
// the cap: the unsafe twin then saw a lost write only now and then.)
//
// Private memory takes the same path: the pages are vmspliced into a pipe from inside
// the target and dropped with an injected MADV_DONTNEED. A write lands in a private page
// in place only if the page is exclusively the mapping's own; the zero page (mapped by
// UFFDIO_ZEROPAGE, or by a read of a never-written page) is copied on write instead, so
// such pages are write-protected first. The zero-page variant starts from pages the
// target zeroes before each round: zero pages are dropped without a store write, a read then maps the zero page, and a write copies it.
async function churnUnderSpliceEviction(t: Parameters<typeof startTarget>[0], kind: 'memfd' | 'anon', unsafe: boolean, o: { perRound?: string; skipCowProtect?: boolean; rounds?: number } = {}) {
  return writesRacingEviction(t, { kind, mib: 1, cap: 128, store: await memoryStore(t), cmd: `churn ${kind} 1000 4 0.5`, rounds: 10, unsafe, raceWindowMs: 5, ...o });
}

for (const kind of ['memfd', 'anon'] as const) {
  const how = kind === 'memfd' ? 'splice, punch' : 'vmsplice inside the target, MADV_DONTNEED';
  test(`${kind} + memory: writes racing eviction are never lost (${how}, then read)`, async (t) => {
    const { corrupt, writes, stats: s } = await churnUnderSpliceEviction(t, kind, false);
    t.true(writes > 100);
    t.is(corrupt, 0, 'every page read back exactly as last written');
    t.true(s.evictions > 500, `evictions ${s.evictions}`);
    t.is(s.evictMode, 'splice', `the embedded store and ${kind} RAM evict by splice`);
    t.log(JSON.stringify({ writes, evictions: s.evictions }));
  });

  test(`the ${kind} splice race test can fail: reading the pipe before the drop loses racing writes`, async (t) => {
    const { corrupt, writes, rounds, stats: s } = await churnUnderSpliceEviction(t, kind, true);
    t.log(JSON.stringify({ corrupt, writes, rounds, evictions: s.evictions }));
    t.true(corrupt > 0, 'lost writes are detected when the pipe is read before the drop');
  });
}

// Each private batch stops a thread of the target for its injected MADV_DONTNEED (about
// half a millisecond here): while the victims come in long runs (a scan) the evictor
// takes 1024 pages a batch, its watermarks widening to match; scattered victims go back
// to pipe-sized batches (256 pages at the default 1 MiB pipe-max-size).
test('anon + memory: a scan evicts in run batches of up to 1024 pages, scattered victims in pipe-sized ones; every page verifies', async (t) => {
  const target = await startTarget(t, { memfdMiB: 1, anonMiB: 128 });
  await target.cmd('fill anon 3');
  const r = region(target, 'anon');
  const cap = r.length / PAGE / 2;  // 16384 pages: cap/16 leaves room for 1024-page batches
  const pager = await attach(t, target, [r], cap, await memoryStore(t));
  await waitFor(() => pager.stats().residentPages <= cap);
  const perBatch = async (cmd: string) => {
    const s0 = pager.stats();
    const reply = await target.cmd(cmd);
    t.regex(reply, /^ok/, `${cmd}: ${reply}`);
    const s1 = pager.stats();
    t.true(s1.evictBatches > s0.evictBatches, `${cmd}: evicted`);
    return (s1.evictions - s0.evictions) / (s1.evictBatches - s0.evictBatches);
  };
  await target.cmd('fill anon 4');  // a first scan: from then on the oldest resident pages are in order
  const scan = await perBatch('fill anon 5');  // every page written in order
  // Uniform random writes. The scan left its pages resident in order, and the first
  // evictions take them, in runs still: measure once they have all gone.
  const afterScan = pager.stats().evictions;
  for (let i = 0; i < 60 && pager.stats().evictions - afterScan < 2 * cap; i++) await target.cmd('churn anon 1000 4 1');
  t.true(pager.stats().evictions - afterScan >= 2 * cap, 'the scan\'s pages were evicted');
  const scattered = await perBatch('churn anon 3000 4 1');
  t.log(JSON.stringify({ pagesPerBatch: { scan: Math.round(scan), scattered: Math.round(scattered) } }));
  t.true(scan > 512, `a scan's batches averaged ${scan.toFixed(0)} pages`);
  t.true(scattered <= 300, `scattered batches averaged ${scattered.toFixed(0)} pages`);
  t.is(pager.stats().evictMode, 'splice');
  const v = parseReply(await target.cmd('verify anon'));
  t.is(v.corrupt, 0, `verify: first bad page ${v.firstbad}`);
});

test('anon + memory: writes to pages mapped to the zero page racing their eviction are never lost', async (t) => {
  const { corrupt, writes, stats: s } = await churnUnderSpliceEviction(t, 'anon', false, { perRound: 'zero anon 0 256' });
  t.true(writes > 100);
  t.is(corrupt, 0, 'every page read back exactly as last written');
  t.true(s.zeroFills > 100, `reads mapped the zero page (${s.zeroFills} zero fills)`);
  t.log(JSON.stringify({ writes, evictions: s.evictions, zeroFills: s.zeroFills }));
});

test('the zero-page race test can fail: without write-protecting pages a write would copy, racing writes are lost', async (t) => {
  const { corrupt, writes, rounds, stats: s } = await churnUnderSpliceEviction(t, 'anon', false, { perRound: 'zero anon 0 256', skipCowProtect: true, rounds: 40 });
  t.log(JSON.stringify({ corrupt, writes, rounds, evictions: s.evictions }));
  t.true(corrupt > 0, 'lost writes are detected when zero-page-mapped pages are not write-protected');
});

// The splice path stores a page after it left the guest; when the store fails there, the
// page must go back into the guest (UFFDIO_COPY), not be lost or read as zeros.
for (const kind of ['memfd', 'anon'] as const) {
  test(`${kind} + memory: a store that fails after the ${kind === 'memfd' ? 'punch' : 'drop'} loses no page (pages go back into the guest)`, async (t) => {
    const target = await startTarget(t, { memfdMiB: kind === 'memfd' ? 32 : 1, anonMiB: kind === 'anon' ? 32 : 1 });
    await target.cmd(`fill ${kind} 29`);
    const store = await memoryStore(t);
    const r = region(target, kind);
    const cap = Math.floor(r.length / PAGE / 10);
    const pager = await attach(t, target, [r], cap, store, { _testFailPuts: true });
    await waitFor(() => pager.stats().residentPages <= cap);
    const churn = parseReply(await target.cmd(`churn ${kind} 2000 2 0.5`));
    t.is(churn.corrupt, 0, 'no corruption seen by the writers');
    t.is(parseReply(await target.cmd(`verify ${kind}`)).corrupt, 0, 'every page verifies');
    const s = pager.stats();
    t.is(s.evictMode, 'splice');
    t.is(s.lostPages, 0, 'no page reported lost');
    t.true(s.evictions > 1000 && s.fetches > 500, `the pager still evicts and fetches (${s.evictions} / ${s.fetches})`);
  });
}

// Bytes an earlier splice batch left in the eviction pipe (a read that failed part-way,
// an injected vmsplice cut off at its time-out) would be read as the next batch's pages.
async function churnWithStrayPipePages(t: ExecutionContext, mode: true | 'unsafe-keep') {
  const target = await startTarget(t, { memfdMiB: 32, anonMiB: 1 });
  await target.cmd('fill memfd 31');
  const store = await memoryStore(t);
  const r = region(target, 'memfd');
  const cap = Math.floor(r.length / PAGE / 10);
  const pager = await attach(t, target, [r], cap, store, { _testStalePipe: mode });
  const errors: string[] = [];
  pager.on('error', (e: { message: string }) => errors.push(e.message));
  await waitFor(() => pager.stats().residentPages <= cap);
  const churn = parseReply(await target.cmd('churn memfd 2000 2 0.5'));
  const verify = parseReply(await target.cmd('verify memfd'));
  return { corrupt: churn.corrupt + verify.corrupt, errors, stats: pager.stats() };
}

test('memfd + memory: a page left in the eviction pipe by an earlier batch is discarded, never stored as another page', async (t) => {
  const { corrupt, errors, stats: s } = await churnWithStrayPipePages(t, true);
  t.is(s.evictMode, 'splice');
  t.is(corrupt, 0, 'every page verifies');
  t.true(errors.some((m) => /the eviction pipe held 4096 bytes of an earlier batch; discarded/.test(m)), `reported: ${errors.slice(0, 3).join(' | ')}`);
  t.true(s.evictions > 1000, `it kept evicting (${s.evictions})`);
});

test('the stray-page test can fail: kept, such a page is stored as the next page and the guest reads wrong data', async (t) => {
  const { corrupt } = await churnWithStrayPipePages(t, 'unsafe-keep');
  t.true(corrupt > 0, 'wrong contents are detected when the pipe is not emptied first');
});

test('zero pages are never stored and clean pages are not rewritten', async (t) => {
  const target = await startTarget(t, { memfdMiB: 32, anonMiB: 1 });
  const pages = (32 * MiB) / PAGE;
  await target.cmd('fill memfd 5');
  await target.cmd(`zero memfd 0 ${pages / 2}`); // first half all zeros, second half data
  const store = await memoryStore(t);
  const r = region(target, 'memfd');
  const cap = 256;
  const pager = await attach(t, target, [r], cap, store);
  await waitFor(() => pager.stats().residentPages <= cap);
  let s = pager.stats();
  t.true(s.storeWrites <= pages / 2, `storeWrites ${s.storeWrites} must not include the ${pages / 2} zero pages`);
  t.true(s.storeWrites >= pages / 2 - cap, `data pages were stored (${s.storeWrites})`);
  const usage = await store.usage(`test-${target.pid}`);
  t.true(usage.pages <= pages / 2, `store holds ${usage.pages} pages, only data pages`);
  // Read everything (no writes): pages come back clean; evicting them again costs no store write.
  const writesBefore = s.storeWrites;
  const v = parseReply(await target.cmd('verify memfd'));
  t.is(v.corrupt, 0);
  await waitFor(() => pager.stats().residentPages <= cap);
  s = pager.stats();
  t.true(s.cleanDrops > pages / 4, `clean drops ${s.cleanDrops}`);
  // Each data page is stored at most once: pages read back are clean and are dropped
  // without a store write (the few still resident before the pass are stored once now).
  t.true(s.storeWrites <= pages / 2, `storeWrites ${s.storeWrites} (was ${writesBefore}) must not exceed the ${pages / 2} data pages`);
});

for (const kind of ['memfd', 'anon'] as const) {
  test(`${kind}: resize down and up under load, then detach restores every page and leaves no registration nor descriptor`, async (t) => {
    const target = await startTarget(t, { memfdMiB: kind === 'memfd' ? 64 : 1, anonMiB: kind === 'anon' ? 64 : 1 });
    await target.cmd(`fill ${kind} 9`);
    const fdsBefore = fs.readdirSync(`/proc/${target.pid}/fd`).map((fd) => { try { return fs.readlinkSync(`/proc/${target.pid}/fd/${fd}`); } catch { return ''; } }).sort();
    const store = await memoryStore(t);
    const r = region(target, kind);
    const total = r.length / PAGE;
    const pager = await attach(t, target, [r], total / 2, store);
    const churn = target.cmd(`churn ${kind} 5000 2 0.3`);
    await new Promise((res) => setTimeout(res, 1000));
    pager.setCap(total / 16);
    await waitFor(() => pager.stats().residentPages <= total / 16 + 64);
    pager.setCap(total / 4);
    t.is(parseReply(await churn).corrupt, 0);
    t.is(pager.stats().localCapPages, total / 4);
    t.is(pager.stats().evictMode, 'splice');
    const progress: number[] = [];
    pager.on('progress', (e: { done?: number }) => progress.push(e.done ?? 0));
    t.true(uffdCount(target.pid) >= 1, 'the target holds its own uffd while attached');
    await pager.detach();
    t.true(progress.length > 0, 'detach reported progress');
    t.is(uffdCount(target.pid), 0, 'no userfaultfd left in the target');
    // (private memory: the eviction pipe's end inside the target is closed too)
    const fdsAfter = fs.readdirSync(`/proc/${target.pid}/fd`).map((fd) => { try { return fs.readlinkSync(`/proc/${target.pid}/fd/${fd}`); } catch { return ''; } }).sort();
    t.deepEqual(fdsAfter.map((l) => l.replace(/\[\d+\]/, '')), fdsBefore.map((l) => l.replace(/\[\d+\]/, '')), 'the target has the descriptors it had before the attach');
    const v = parseReply(await target.cmd(`verify ${kind}`));
    t.is(v.corrupt, 0);
  });
}

test('an unprivileged target (nobody) is attached through /dev/userfaultfd', async (t) => {
  const target = await startTarget(t, { memfdMiB: 16, anonMiB: 1, user: 'nobody' });
  await target.cmd('fill memfd 11');
  const store = await memoryStore(t);
  const pager = await attach(t, target, [region(target, 'memfd')], 256, store);
  t.is(pager.uffd.route, 'dev-userfaultfd');
  t.is(parseReply(await target.cmd('churn memfd 2000 2 0.5')).corrupt, 0);
  t.is(parseReply(await target.cmd('verify memfd')).corrupt, 0);
  t.true(pager.stats().evictions > 0);
});

test('bad input: dead pid, missing region, cap too large, second attach', async (t) => {
  const store = await memoryStore(t);
  const target = await startTarget(t, { memfdMiB: 8, anonMiB: 1 });
  const r = region(target, 'memfd');
  const dead = await Pager.attach({ pid: 999999, vmId: 'x', regions: [r], capPages: 10, store }).catch((e) => e);
  t.is(dead.code, 'EM_NO_PROCESS');
  t.regex(dead.message, /999999/);
  const { findMemfdRegions } = await import('../native/regions.ts');
  const missing = (() => { try { findMemfdRegions(target.pid, 'no-such-memfd'); } catch (e) { return e as { code: string }; } })();
  t.is(missing?.code, 'EM_ATTACH_NO_REGION');
  // The pid names another process than the one found (found at another start time: the
  // VM ended, its pid was reused): refused, untouched.
  const reused = await Pager.attach({ pid: target.pid, startTime: startTimeOf(target.pid)! - 1, vmId: 'x', regions: [r], capPages: 128, store }).catch((e) => e);
  t.is(reused.code, 'EM_NO_PROCESS');
  t.regex(reused.message, /not the one that was found .*pid was reused/);
  const big = await Pager.attach({ pid: target.pid, vmId: 'x', regions: [r], capPages: r.length / PAGE + 1, store }).catch((e) => e);
  t.is(big.code, 'EM_BAD_CAP');
  t.is(uffdCount(target.pid), 0, 'a refused attach leaves the target untouched');
  const takeover = await Pager.attach({ pid: target.pid, vmId: 'x', regions: [r], capPages: 128, store, reattach: true }).catch((e) => e);
  t.is(takeover.code, 'EM_REATTACH_NEEDS_PERSISTENT_STORE', 'a take-over with memory: would zero-fill what the dead monitor held');
  // A lock file left by a process that has ended is removed at the next attach.
  const stale = '/run/elasticmem/locks/999999-12345.lock';
  fs.mkdirSync('/run/elasticmem/locks', { recursive: true });
  fs.writeFileSync(stale, '');
  const first = await attach(t, target, [r], 128, store);
  t.false(fs.existsSync(stale), 'the stale lock file was removed');
  const second = await Pager.attach({ pid: target.pid, vmId: 'x', regions: [r], capPages: 128, store }).catch((e) => e);
  t.is(second.code, 'EM_ALREADY_ATTACHED');
  t.is(uffdCount(target.pid), 1);
  t.is(parseReply(await target.cmd('verify memfd')).corrupt, 0);
  t.true(first.stats().totalPages > 0);
});

for (const kind of ['memfd', 'anon'] as const) {
  test(`${kind}: memory hot-added while attached is paged under the same cap, stays intact and is drained on detach; bad additions change nothing`, async (t) => {
    const target = await startTarget(t, { memfdMiB: kind === 'memfd' ? 16 : 1, anonMiB: kind === 'anon' ? 16 : 1 });
    await target.cmd(`fill ${kind} 43`);
    const store = await memoryStore(t);
    const r = region(target, kind);
    const cap = 512;
    const pager = await attach(t, target, [r], cap, store);
    await waitFor(() => pager.stats().residentPages <= cap);
    const pages0 = pager.stats().totalPages;
    const extra = await target.addRegion(kind, 16);
    // Bad additions: refused with a reason, the pager unchanged.
    const refused = (regions: RegionSpec[]) => { try { pager.addRegions(regions); return null; } catch (e) { return e as { code: string; message: string }; } };
    const overlap = refused([{ ...extra, start: r.start }]);
    t.is(overlap?.code, 'EM_BAD_REGION');
    t.regex(overlap!.message, /overlaps/);
    if (kind === 'memfd') {
      const priv = refused([region(target, 'anon')]);
      t.is(priv?.code, 'EM_BAD_REGION', 'private memory cannot join a memfd VM');
      t.regex(priv!.message, /memfd/);
    }
    t.is(refused([{ ...extra, length: 1000 }])?.code, 'EM_BAD_REGION', 'unaligned');
    t.is(pager.stats().totalPages, pages0, 'a refused addition changes nothing');
    pager.addRegions([extra]);
    t.is(pager.stats().totalPages, pages0 + extra.length / PAGE);
    // The new memory is written, paged within the same cap, and verifies.
    await target.cmd('fill extra 47');
    await waitFor(() => pager.stats().residentPages <= cap);
    const keys = await store.list(`test-${target.pid}`);
    t.true(keys.some((k) => k >= 2 ** 32), 'pages of the added region were evicted to the store (key part 1)');
    t.is(parseReply(await target.cmd('churn extra 500 2 0.5')).corrupt, 0);
    t.is(parseReply(await target.cmd(`churn ${kind} 500 2 0.5`)).corrupt, 0);
    t.is(parseReply(await target.cmd('verify extra')).corrupt, 0);
    t.is(parseReply(await target.cmd(`verify ${kind}`)).corrupt, 0);
    t.true(pager.stats().residentPages <= cap + 256, `resident ${pager.stats().residentPages} within the cap`);
    await pager.detach();
    t.is(uffdCount(target.pid), 0);
    t.is(parseReply(await target.cmd('verify extra')).corrupt, 0, 'detach drained the added region too');
    t.throws(() => pager.addRegions([extra]), { code: 'EM_PAGER_STOPPED' } as never);
  });
}

for (const [kind, path] of [['memfd', 'splice'], ['memfd', 'write-protect'], ['anon', 'splice']] as const) {
  test(`${kind}, ${path}: a RAM block unmapped while attached (a DIMM unplugged): eviction goes on without it, detach passes over it, says so, and brings every other page back`, async (t) => {
    const target = await startTarget(t, { memfdMiB: kind === 'memfd' ? 8 : 1, anonMiB: kind === 'anon' ? 8 : 1 });
    await target.cmd(`fill ${kind} 73`);
    const store = path === 'splice' ? await memoryStore(t) : await raceStore(t);
    const pager = await attach(t, target, [region(target, kind)], 256, store);
    const extra = await target.addRegion(kind, 8);
    pager.addRegions([extra]);
    await target.cmd('fill extra 74');
    await waitFor(() => pager.stats().residentPages <= 256);
    t.is(pager.stats().evictMode, path);
    t.true(pager.stats().remotePages > 2048, 'pages of both regions went out');
    const errors: string[] = [];
    pager.on('error', (ev: PagerEvent) => errors.push(ev.message));
    t.regex(await target.cmd('delmem'), /^ok/);
    // The pages of the block still in the lists do not hold eviction up.
    const churn = parseReply(await target.cmd(`churn ${kind} 1500 2 0.5`, { timeoutMs: 60_000 }));
    t.is(churn.corrupt, 0);
    t.true(pager.stats().residentPages <= 256 + 64, `resident ${pager.stats().residentPages} near the cap`);
    await pager.detach();
    // (the event and the detach's end reach JavaScript through separate channels: either may come first)
    const said = (m: string) => /RAM block '.*' is no longer mapped in the target \(unplugged while attached\): its \d+ evicted pages .* dropped/.test(m);
    await waitFor(() => errors.some(said), 5000).catch(() => undefined);
    t.true(errors.some(said), `events: ${errors.join(' | ') || 'none'}`);
    t.is(uffdCount(target.pid), 0);
    t.is(parseReply(await target.cmd(`verify ${kind}`)).corrupt, 0, 'the block still mapped came back whole');
  });
}

test('after a hot-add, a take-over that lists the regions in another order finds every page (store keys follow keyId, not position)', async (t) => {
  const target = await startTarget(t, { memfdMiB: 16, anonMiB: 1 });
  await target.cmd('fill memfd 51');
  const store = await raceStore(t);  // file://: outlives the monitor
  const vmId = `takeover-${target.pid}`;
  const boot: RegionSpec = { ...region(target, 'memfd'), keyId: 3 };
  const first = await Pager.attach({ pid: target.pid, vmId, regions: [boot], capPages: 512, store });
  await waitFor(() => first.stats().residentPages <= 512);
  const extra: RegionSpec = { ...(await target.addRegion('memfd', 16)), keyId: 7 };
  first.addRegions([extra]);
  await target.cmd('fill extra 53');
  await waitFor(() => first.stats().residentPages <= 512);
  const keys = await store.list(vmId);
  t.true(keys.some((k) => Math.floor(k / 2 ** 32) === 3) && keys.some((k) => Math.floor(k / 2 ** 32) === 7), 'both regions have pages in the store');
  first.abandon();  // as a monitor that died: the target keeps its uffd and waits
  // The new monitor discovers the regions in another order.
  const second = await Pager.attach({ pid: target.pid, vmId, regions: [extra, boot], capPages: 512, store, reattach: true });
  t.teardown(() => second.abandon());
  t.is(parseReply(await target.cmd('verify memfd')).corrupt, 0);
  t.is(parseReply(await target.cmd('verify extra')).corrupt, 0);
});

test('a page that fails its integrity check in a fetched batch is the only one held: its neighbours in the batch are mapped', async (t) => {
  const target = await startTarget(t, { memfdMiB: 8, anonMiB: 1 });
  await target.cmd('fill memfd 59');
  const inner = await memoryStore(t);
  const bad = 1000;
  const failed: number[][] = [];
  // A store (through the TypeScript bridge) whose copy of one page fails its check:
  // every batch holding that page fails as a whole, as a real store answers.
  const store = bridgeStore(inner, 'test:one-corrupt-page', {
    get: async (vm, pages, versions) => {
      if (pages.includes(bad)) {
        failed.push([...pages]);
        throw Object.assign(new Error(`page ${bad} failed its check`), { code: 'STORE_INTEGRITY' });
      }
      return inner.get(vm, pages, versions);
    },
  });
  const pager = await attach(t, target, [region(target, 'memfd')], 256, store);
  const lost: number[] = [];
  pager.on('page-lost', (ev: { pages?: number[] }) => lost.push(...(ev.pages ?? [])));
  await waitFor(() => pager.stats().residentPages <= 256);
  // A sequential read brings pages in prefetch runs: one of them holds the bad page.
  t.is(parseReply(await target.cmd(`verify memfd 0 ${bad}`)).corrupt, 0);
  t.is(parseReply(await target.cmd(`verify memfd ${bad + 1} ${2048 - bad - 1}`)).corrupt, 0);
  t.true(failed.some((b) => b.length > 1), `a multi-page batch held the bad page (${failed.map((b) => b.length).join(',')})`);
  t.deepEqual(lost, [bad], 'only the bad page is held as lost');
  t.is(pager.stats().lostPages, 1);
});

test('invariant 2: a store that kept an older copy of a page (a put acknowledged, then lost) is caught by its version: the fault waits, nothing stale or zero is mapped, and the page comes back once the store holds its newest copy', async (t) => {
  const target = await startTarget(t, { memfdMiB: 8, anonMiB: 1 });
  await target.cmd('fill memfd 61');
  const inner = await raceStore(t);  // file://: its envelope records each page's version
  const bad = 1000;
  let vmOf = '';
  let putsOfBad = 0;
  let swallowed: { data: Buffer; version: number } | null = null;
  // A store (through the TypeScript bridge) that acknowledges the second put of one page
  // without keeping it: its older copy stays, as after a timed-out put that landed late.
  const store = bridgeStore(inner, 'test:loses-one-put', {
    put: async (vm, pages, data, versions) => {
      vmOf = vm;
      const i = pages.indexOf(bad);
      if (i < 0 || putsOfBad++ === 0 || swallowed) return inner.put(vm, pages, data, versions);
      swallowed = { data: Buffer.from(data[i]!), version: versions![i]! };
      const keep = pages.map((_, j) => j).filter((j) => j !== i);
      return inner.put(vm, keep.map((j) => pages[j]!), keep.map((j) => data[j]!), keep.map((j) => versions![j]!));
    },
  });
  const pager = await attach(t, target, [region(target, 'memfd')], 256, store);
  const lost: number[] = [];
  pager.on('page-lost', (ev: { pages?: number[] }) => lost.push(...(ev.pages ?? [])));
  await waitFor(() => pager.stats().residentPages <= 256 && putsOfBad === 1);
  // A new version of the page, then writes of other pages in random order (a scan would
  // not do: its pages are evicted before one written at random) until it is evicted again.
  await target.cmd(`write memfd ${bad} 1`);
  for (let i = 0; i < 8192 && !swallowed; i++) {
    const other = (bad + 1 + Math.floor(Math.random() * 2047)) % 2048;
    await target.cmd(`write memfd ${other} 1`);
  }
  t.truthy(swallowed, 'the page was evicted again and its put was lost');
  t.is(parseReply(await target.cmd('verify memfd 0 1000')).corrupt, 0);
  t.is(parseReply(await target.cmd('verify memfd 1001 1047')).corrupt, 0);
  const zeroFills = pager.stats().zeroFills;
  const reading = target.cmd(`verify memfd ${bad} 1`, { timeoutMs: 60_000 });
  await waitFor(() => lost.includes(bad));
  t.deepEqual(lost, [bad], 'the stale copy was refused: the page is held as lost');
  t.true(await threadsWaitOnUffd(target.pid, 1), 'the read of the page waits in its fault');
  t.is(pager.stats().zeroFills, zeroFills, 'nothing was zero-filled in its place');
  // The store gets the newest copy after all: the next retry maps it, the read completes.
  await inner.put(vmOf, [bad], [swallowed!.data], [swallowed!.version]);
  t.is(parseReply(await reading).corrupt, 0, 'the page read back is its newest version');
  t.is(pager.stats().lostPages, 0);
});

for (const kind of ['memfd', 'anon'] as const) {
  test(`invariant 3, ${kind}: no page leaves the target while the store has not acknowledged its put; once it has, they do`, async (t) => {
    const target = await startTarget(t, { memfdMiB: kind === 'memfd' ? 16 : 1, anonMiB: kind === 'anon' ? 16 : 1 });
    await target.cmd(`fill ${kind} 67`);
    const inner = await memoryStore(t);
    let release!: () => void;
    const released = new Promise<void>((r) => { release = r; });
    let heldPuts = 0;
    // A store (through the TypeScript bridge) that answers no put until released.
    const store = bridgeStore(inner, 'test:held-puts', {
      put: async (vm, pages, data, versions) => { heldPuts++; await released; return inner.put(vm, pages, data, versions); },
    });
    t.teardown(() => release());
    const r = region(target, kind);
    const pages = r.length / PAGE;
    t.is(mappedPages(target.pid, r.start), pages, 'filled: every page in the target');
    const pager = await attach(t, target, [r], 256, store);
    await waitFor(() => heldPuts > 0, 10000);
    let least = pages;
    for (const end = Date.now() + 1500; Date.now() < end; await new Promise((res) => setTimeout(res, 20)))
      least = Math.min(least, mappedPages(target.pid, r.start));
    t.is(least, pages, 'every page stayed in the target while its put was unanswered');
    release();
    await waitFor(() => pager.stats().residentPages <= 256, 30000);
    t.true(mappedPages(target.pid, r.start) <= 256, 'acknowledged: the pages left the target');
    t.is(parseReply(await target.cmd(`verify ${kind}`)).corrupt, 0);
  });
}

test('invariant 5: a store that fails every request at once is retried with backoff, not in a loop; the churn resumes intact when it answers', async (t) => {
  const target = await startTarget(t, { memfdMiB: 8, anonMiB: 1 });
  await target.cmd('fill memfd 71');
  const inner = await memoryStore(t);
  let down = false;
  const refuse = () => { throw Object.assign(new Error('connection refused (test store is down)'), { code: 'STORE_ERROR' }); };
  // A store (through the TypeScript bridge) that, while down, fails at once, as a
  // server refusing connections does.
  const store = bridgeStore(inner, 'test:refusing', {
    get: async (vm, pages, versions) => (down ? refuse() : inner.get(vm, pages, versions)),
    put: async (vm, pages, data, versions) => (down ? refuse() : inner.put(vm, pages, data, versions)),
    delete: async (vm, pages) => (down ? refuse() : inner.delete(vm, pages)),
  });
  const pager = await attach(t, target, [region(target, 'memfd')], 256, store);
  await waitFor(() => pager.stats().residentPages <= 256);
  down = true;
  const churn = target.cmd('churn memfd 3000 2 0.5', { timeoutMs: 60_000 });
  await waitFor(() => pager.stats().storeState === 'retrying', 10_000);
  const before = pager.stats().storeRetries;
  await new Promise((r) => setTimeout(r, 2000));
  const retries = pager.stats().storeRetries - before;
  // Backoff from 50 ms, doubling: at most 6 tries in 2 s for each waiting thread (the
  // fault thread, the evictor). Without it each would retry thousands of times a second.
  t.log({ retriesIn2s: retries });
  t.true(retries > 0 && retries <= 20, `${retries} retries in 2 s`);
  down = false;
  t.is(parseReply(await churn).corrupt, 0);
  t.is(parseReply(await target.cmd('verify memfd')).corrupt, 0);
  t.is(pager.stats().storeState, 'ok');
  t.is(pager.stats().lostPages, 0);
});

test('an attach that fails after registering one region leaves the target as it was: nothing registered, its uffd closed', async (t) => {
  const store = await memoryStore(t);
  const target = await startTarget(t, { memfdMiB: 8, anonMiB: 1 });
  const r = region(target, 'memfd');
  await target.cmd('discard memfd 0 64');  // pages that are not there: a fault on them needs a reader
  // The second region cannot be registered (the kernel's vsyscall page, above every
  // mapping): the memfd region, registered first, must be unregistered again.
  const bad: RegionSpec = { start: '0xffffffffff600000', length: PAGE, kind: 'anon', name: 'vsyscall' };
  const e = await Pager.attach({ pid: target.pid, vmId: `test-${target.pid}`, regions: [r, bad], capPages: 128, store }).catch((x) => x);
  t.truthy(e.code, `attach failed with a code: ${e.message}`);
  t.is(uffdCount(target.pid), 0, 'the uffd was closed inside the target');
  // Nothing is registered: the target reads its discarded pages (zeros) without a monitor.
  const v = parseReply(await target.cmd('verify memfd 0 64'));
  t.is(v.corrupt, 0, 'the target read its discarded pages as zeros without a monitor: nothing registered');
  // And a new attach is a fresh attach, not a take-over of a leftover uffd.
  const pager = await attach(t, target, [r], 128, store);
  await target.cmd('fill memfd 5');
  t.is(parseReply(await target.cmd('verify memfd')).corrupt, 0);
  t.true(pager.stats().evictions > 0);
});

for (const kind of ['memfd', 'anon'] as const) {
  test(`${kind}: pages the target discards itself (as QEMU's balloon does) read back as zeros, and their stored copies are deleted`, async (t) => {
    const target = await startTarget(t, { memfdMiB: kind === 'memfd' ? 16 : 1, anonMiB: kind === 'anon' ? 16 : 1 });
    await target.cmd(`fill ${kind} 13`);
    const store = await memoryStore(t);
    const r = region(target, kind);
    const pager = await attach(t, target, [r], 512, store);
    await waitFor(() => pager.stats().residentPages <= 512);
    // Bring pages 0..63 back (clean, with a stored copy), then discard them while resident.
    t.is(parseReply(await target.cmd(`verify ${kind} 0 64`)).corrupt, 0);
    const vm = `test-${target.pid}`;
    t.is((await store.get(vm, [0]))[0] !== null, true, 'page 0 has a stored copy before the discard');
    await target.cmd(`discard ${kind} 0 64`);
    const v = parseReply(await target.cmd(`verify ${kind}`));
    t.is(v.corrupt, 0, `first bad page ${v.firstbad}`);
    const s = pager.stats();
    t.true(s.discards >= 64, `discards ${s.discards}`);
    t.is((await store.get(vm, [0]))[0], null, 'the stale stored copy was deleted');
    // The kernel-mode fault path too: read(2) into an evicted page.
    await target.cmd(`kzero ${kind} 2000`);
    t.is(parseReply(await target.cmd(`verify ${kind}`)).corrupt, 0);
  });

  // Private memory does not subscribe to REMOVE events (docs/architecture.md, known limits).
  if (kind === 'memfd') test(`${kind}: pages discarded while they are in the store (UFFD_EVENT_REMOVE) read back as zeros, not their stored content`, async (t) => {
    const target = await startTarget(t, { memfdMiB: 16, anonMiB: 1 });
    await target.cmd(`fill ${kind} 17`);
    const store = await memoryStore(t);
    const r = region(target, kind);
    const pager = await attach(t, target, [r], 512, store);
    await waitFor(() => pager.stats().residentPages <= 512);
    const vm = `test-${target.pid}`;
    // A run of evicted pages: no fault happens when they are discarded (they are not
    // mapped), so only the REMOVE event tells the pager their stored copies are void.
    const stored = new Set(await store.list(vm));
    const first = [...stored].sort((a, b) => a - b).find((p) => [...Array(64).keys()].every((i) => stored.has(p + i)))!;
    t.truthy(first !== undefined, 'a run of 64 remote pages');
    const before = pager.stats();
    await target.cmd(`discard ${kind} ${first} 64`);
    const v = parseReply(await target.cmd(`verify ${kind}`));
    t.is(v.corrupt, 0, `first bad page ${v.firstbad} (a stale stored copy came back instead of zeros)`);
    const s = pager.stats();
    t.true(s.discards - before.discards >= 64, `discards ${s.discards - before.discards}`);
    t.is((await store.get(vm, [first]))[0], null, 'the stored copy of a discarded page is deleted');
  });
}

// The pager resolves its VM's table in the embedded store once (native MemStore::vm);
// dropping the VM by name while the pager runs must empty that same table, so what the
// pager stores afterwards is still found by name (a take-over reads the store by name).
test('memory: pages the pager stores after a dropVm of its VM are found by name', async (t) => {
  const store = await memoryStore(t);
  const target = await startTarget(t, { memfdMiB: 8, anonMiB: 1 });
  await target.cmd('fill memfd 23');
  const pager = await attach(t, target, [region(target, 'memfd')], 1024, store);
  await waitFor(() => pager.stats().residentPages <= 1024);
  const vm = `test-${target.pid}`;
  t.true((await store.list(vm)).length > 500, 'evicted pages are stored');
  await store.dropVm(vm);
  t.is((await store.list(vm)).length, 0, 'the drop emptied it');
  pager.setCap(256);
  await waitFor(() => pager.stats().residentPages <= 256);
  const after = await store.list(vm);
  t.true(after.length >= 600, `pages evicted after the drop are listed by name (${after.length})`);
  t.is((await store.usage(vm)).pages, after.length);
});

test('memory: a page deleted from the embedded store behind the pager is reported lost and its fault held, never zero-filled', async (t) => {
  // The embedded store maps a single faulted page straight from its block (no copy):
  // this is that path's "store has no such page" branch.
  const store = await memoryStore(t);
  const target = await startTarget(t, { memfdMiB: 8, anonMiB: 1 });
  await target.cmd('fill memfd 5');
  const r = region(target, 'memfd');
  const lost: number[][] = [];
  const pager = await attach(t, target, [r], 256, store);
  pager.on('page-lost', (ev: { pages: number[] }) => lost.push(ev.pages));
  await waitFor(() => pager.stats().residentPages <= 256);
  const vm = `test-${target.pid}`;
  const stored = (await store.list(vm)).sort((a, b) => a - b);
  // Nothing touched the target since the eviction: every stored page is remote. Its
  // neighbour reads back intact (the same single-page path), then the victim is deleted.
  const victim = stored[Math.floor(stored.length / 2)]!;
  const neighbour = stored[Math.floor(stored.length / 2) + 2]!;
  t.is(parseReply(await target.cmd(`verify memfd ${neighbour} 1`)).corrupt, 0);
  const [saved] = await store.get(vm, [victim]);
  await store.delete(vm, [victim]);
  const before = pager.stats();
  const verify = target.cmd(`verify memfd ${victim} 1`, { timeoutMs: 3000 }).then((r) => `finished: ${r}`, () => 'waiting');
  t.is(await verify, 'waiting', 'the reader waits on the lost page instead of reading zeros');
  const s = pager.stats();
  t.is(s.lostPages, before.lostPages + 1);
  t.is(s.zeroFills, before.zeroFills, 'the lost page was not zero-filled');
  t.deepEqual(lost.flat(), [victim]);
  // Its content comes back into the store (an operator restoring the data): the pager
  // asks for lost pages again every few seconds, maps it (the reader goes on), and a
  // detach then finishes.
  await store.put(vm, [victim], [saved!]);
  await waitFor(() => pager.stats().lostPages === before.lostPages, 15000);
  t.is(pager.stats().storeState, 'ok');
  await pager.detach();
});

test('memory: a lost page that QEMU then discards is no longer lost: it reads as zeros and detach finishes', async (t) => {
  const store = await memoryStore(t);
  const target = await startTarget(t, { memfdMiB: 8, anonMiB: 1 });
  await target.cmd('fill memfd 7');
  const pager = await attach(t, target, [region(target, 'memfd')], 256, store);
  await waitFor(() => pager.stats().residentPages <= 256);
  const vm = `test-${target.pid}`;
  const stored = (await store.list(vm)).sort((a, b) => a - b);
  const victim = stored[Math.floor(stored.length / 3)]!;
  await store.delete(vm, [victim]);
  // The drain finds it missing: refused, held as lost (nobody waits on it).
  const refused = await t.throwsAsync(pager.detach());
  t.is((refused as { code?: string }).code, 'EM_PAGES_LOST');
  t.is(pager.stats().lostPages, 1);
  // QEMU discards it (a balloon inflate of a free page): its content no longer matters.
  await target.cmd(`discard memfd ${victim} 1`);
  await waitFor(() => pager.stats().lostPages === 0, 10000);
  t.is(pager.stats().storeState, 'ok');
  await pager.detach();
  t.is(parseReply(await target.cmd('verify memfd')).corrupt, 0);
});

// Without faultCpus the fault thread follows the faulting thread's CPU (two local
// context switches a fault instead of two idle-vCPU wake-ups), and the evictor moves off it.
test('without faultCpus the fault thread moves to the CPU its target faults on, the evictor off it', async (t) => {
  const { allowedCpus } = await import('../native/pager.ts');
  const cpus = allowedCpus();
  if (cpus.length < 2) return t.pass('one CPU: nothing to follow');
  const store = await memoryStore(t);
  const threadsOf = (name: string) =>
    fs.readdirSync('/proc/self/task').flatMap((tid) => {
      try {
        const st = fs.readFileSync(`/proc/self/task/${tid}/status`, 'utf8');
        return /^Name:\s*(.*)$/m.exec(st)![1] === name ? [/^Cpus_allowed_list:\s*(.*)$/m.exec(st)![1]] : [];
      } catch { return []; }
    });
  for (const cpu of [cpus[cpus.length - 1]!, cpus[0]!]) {
    const target = await startTarget(t, { memfdMiB: 16, anonMiB: 1 });
    await target.cmd('fill memfd 19');
    execFileSync('taskset', ['-a', '-cp', String(cpu), String(target.pid)], { stdio: 'ignore' });
    const pager = await attach(t, target, [region(target, 'memfd')], 256, store);
    await waitFor(() => pager.stats().residentPages <= 256);
    t.is(parseReply(await target.cmd('churn memfd 1500 1 0.5')).corrupt, 0);
    t.is(pager.stats().faultCpu, cpu, `the fault thread followed the target to CPU ${cpu}`);
    t.true(threadsOf('em-fault').includes(String(cpu)), 'a fault thread is pinned to that CPU');
    if (cpus.length === 2) {
      const other = String(cpus.find((c) => c !== cpu));
      await waitFor(() => threadsOf('em-evict').includes(other), 5000);
      t.pass(`an evictor runs on CPU ${other} only`);
    }
    await pager.detach();
  }
  const target = await startTarget(t, { memfdMiB: 16, anonMiB: 1 });
  await target.cmd('fill memfd 19');
  const both = await Pager.attach({ pid: target.pid, vmId: 'x', regions: [region(target, 'memfd')], capPages: 256, store, faultCpus: [cpus[0]!], followFaults: true }).catch((e) => e);
  t.is(both.code, 'EM_BAD_ARG', 'followFaults with faultCpus is refused');
  t.is(uffdCount(target.pid), 0, 'a refused attach leaves the target untouched');
  const still = await attach(t, target, [region(target, 'memfd')], 256, store, { followFaults: false });
  await waitFor(() => still.stats().residentPages <= 256);
  t.is(parseReply(await target.cmd('churn memfd 500 1 0.5')).corrupt, 0);
  t.is(still.stats().faultCpu, -1, 'followFaults: false leaves the fault thread to the scheduler');
});

test('fault and eviction threads run on the CPUs asked for; CPUs this machine lacks are refused before attaching', async (t) => {
  const { allowedCpus } = await import('../native/pager.ts');
  const cpus = allowedCpus();
  const store = await memoryStore(t);
  const target = await startTarget(t, { memfdMiB: 8, anonMiB: 1 });
  const r = region(target, 'memfd');
  const bad = await Pager.attach({ pid: target.pid, vmId: 'x', regions: [r], capPages: 128, store, faultCpus: [cpus.length + 64] }).catch((e) => e);
  t.is(bad.code, 'EM_BAD_ARG');
  t.regex(bad.message, /not CPUs this machine lets the monitor use/);
  t.is(uffdCount(target.pid), 0, 'a refused attach leaves the target untouched');
  const fault = cpus[cpus.length - 1]!;
  const evict = cpus[0]!;
  const pager = await attach(t, target, [r], 128, store, { faultCpus: [fault], evictCpus: [evict] });
  const threads = () =>
    fs.readdirSync('/proc/self/task').flatMap((tid) => {
      let status: string;
      try {
        status = fs.readFileSync(`/proc/self/task/${tid}/status`, 'utf8');
      } catch {
        return []; // the thread ended meanwhile (other tests' pagers come and go)
      }
      return [{ name: /^Name:\s*(.*)$/m.exec(status)![1], cpus: /^Cpus_allowed_list:\s*(.*)$/m.exec(status)![1] }];
    });
  // each thread pins itself as it starts: wait for both
  await waitFor(() => threads().some((th) => th.name === 'em-fault' && th.cpus === String(fault)), 5000);
  await waitFor(() => threads().some((th) => th.name === 'em-evict' && th.cpus === String(evict)), 5000);
  t.is(parseReply(await target.cmd('verify memfd')).corrupt, 0);
  t.true(pager.stats().totalPages > 0);
});

// Every stop of a thread the injector traces raises a SIGCHLD for the whole monitor
// process (thousands a second while private memory is evicted); a fault thread that took
// them ran libuv's handler on the guest's CPU. The pager's threads leave them (and every
// other process-wide signal) to the JavaScript thread.
test("the pager's threads block SIGCHLD and other process-wide signals; the JavaScript thread does not", async (t) => {
  const store = await memoryStore(t);
  const target = await startTarget(t, { memfdMiB: 1, anonMiB: 8 });
  await attach(t, target, [region(target, 'anon')], 512, store);
  const sigBlk = (tid: string) => {
    try {
      const status = fs.readFileSync(`/proc/self/task/${tid}/status`, 'utf8');
      return { tid, name: /^Name:\s*(.*)$/m.exec(status)![1]!, blocked: BigInt('0x' + /^SigBlk:\s*(\S+)$/m.exec(status)![1]) };
    } catch {
      return null; // the thread ended meanwhile
    }
  };
  const bit = (sig: number) => 1n << BigInt(sig - 1);
  const SIGCHLD = 17, SIGTERM = 15, SIGSEGV = 11;
  await waitFor(() => fs.readdirSync('/proc/self/task').some((tid) => sigBlk(tid)?.name === 'em-evict'), 5000);
  const ours = fs.readdirSync('/proc/self/task').map(sigBlk).filter((x) => x && /^em-(fault|evict|exit-watch)$/.test(x.name));
  t.true(ours.length >= 2, ours.map((x) => x!.name).join(','));  // (em-exit-watch only with blocking reads)
  for (const th of ours) {
    t.true((th!.blocked & bit(SIGCHLD)) !== 0n && (th!.blocked & bit(SIGTERM)) !== 0n, `${th!.name} blocks SIGCHLD and SIGTERM`);
    // (glibc blocks every signal of a thread for the moment it creates another one, as the
    // evictor does for each tracer: a look in that moment sees SIGSEGV blocked; so look again)
    let segv = th!.blocked & bit(SIGSEGV);
    for (let i = 0; i < 50 && segv !== 0n; i++) {
      await new Promise((r) => setTimeout(r, 2));
      segv = (sigBlk(th!.tid)?.blocked ?? 0n) & bit(SIGSEGV);
    }
    t.is(segv, 0n, `${th!.name} leaves SIGSEGV (a fault of its own) unblocked`);
  }
  t.is(sigBlk(String(process.pid))!.blocked & bit(SIGCHLD), 0n, 'the JavaScript thread takes SIGCHLD');
  // Evicting private memory traces a QEMU-like thread: it works as before.
  await target.cmd('fill anon 7');
  t.is(parseReply(await target.cmd('verify anon')).corrupt, 0);
});

// The fault thread sleeps in a blocking read() of the uffd between faults (cheaper per
// fault than read + EAGAIN + ppoll); such a read watches neither the stop eventfd nor
// the target's pidfd, so stopping and the target's exit must interrupt it (a signal, and
// a watcher thread on the pidfd). Serial: it tells its fault thread from others' by the
// em-fault threads that appear while it attaches.
test('faults waiting for a retry (after EAGAIN) are served while nothing else arrives, in both read modes', async (t) => {
  for (const nonBlocking of [false, true]) {
    const target = await startTarget(t, { memfdMiB: 8, anonMiB: 1 });
    await target.cmd('fill memfd 41');
    const store = await memoryStore(t);
    const pager = await attach(t, target, [region(target, 'memfd')], 256, store, { _testDeferFaults: true, _testNonBlockingReads: nonBlocking });
    await waitFor(() => pager.stats().residentPages <= 256);
    // One thread faults on one page at a time: no other message comes to wake the fault
    // thread, so each fault is served only if the retry timer works.
    const v = parseReply(await target.cmd('verify memfd', { timeoutMs: 30000 }));
    t.is(v.corrupt, 0, nonBlocking ? 'non-blocking reads' : 'blocking reads');
    const s = pager.stats();
    t.true(s.fetches + s.prefetched > 1000, `every evicted page came back through the retry path (${s.fetches} + ${s.prefetched})`);
    pager.abandon();
  }
});

test.serial('an evictor that cannot evict backs off instead of spinning, and loses nothing', async (t) => {
  const evictThreads = () =>
    fs.readdirSync('/proc/self/task').filter((tid) => {
      try { return fs.readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim() === 'em-evict'; } catch { return false; }
    });
  // utime + stime of a thread, in clock ticks (100 a second)
  const cpuTicks = (tid: string) => {
    const f = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return Number(f[11]) + Number(f[12]);
  };
  const before = new Set(evictThreads());
  const target = await startTarget(t, { memfdMiB: 16, anonMiB: 1 });
  await target.cmd('fill memfd 37');
  const store = await memoryStore(t);
  // Every store of an evicted batch fails: each round puts its pages back and evicts nothing.
  const pager = await attach(t, target, [region(target, 'memfd')], 256, store, { _testFailPuts: 'always' });
  await waitFor(() => evictThreads().some((x) => !before.has(x)), 5000);
  const tid = evictThreads().find((x) => !before.has(x))!;
  await new Promise((r) => setTimeout(r, 1500));  // past the first, short back-offs
  const c0 = cpuTicks(tid), w0 = Date.now();
  await new Promise((r) => setTimeout(r, 3000));
  const busy = (cpuTicks(tid) - c0) / ((Date.now() - w0) / 10);
  t.log(`evictor CPU while it cannot evict: ${(busy * 100).toFixed(1)}%; evictions ${pager.stats().evictions}`);
  t.true(busy < 0.25, `the evictor used ${(busy * 100).toFixed(0)}% of a CPU evicting nothing`);
  const s = pager.stats();
  t.true(s.residentPages > 256, 'nothing could be evicted');
  t.is(s.lostPages, 0);
  t.is(parseReply(await target.cmd('verify memfd')).corrupt, 0, 'every page put back intact');
});

test.serial('between faults the fault thread sleeps in read() on the uffd (ppoll in the fallback); detach, abandon and the target exiting all end it', async (t) => {
  const faultThreads = () =>
    fs.readdirSync('/proc/self/task').filter((tid) => {
      try { return fs.readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim() === 'em-fault'; } catch { return false; }
    });
  // The system call a thread sleeps in: 0 is read, 271 ppoll (x86-64); 'running' if none.
  const syscallOf = (tid: string) => { try { return fs.readFileSync(`/proc/self/task/${tid}/syscall`, 'utf8').split(' ')[0]!; } catch { return 'gone'; } };
  const store = await memoryStore(t);
  // 0 is read (x86-64); 271 is ppoll, where the fallback without a free wake signal sleeps.
  const serveThenSleep = async (sleepsIn = '0', extra: Partial<Parameters<typeof Pager.attach>[0]> = {}) => {
    const before = new Set(faultThreads());
    const target = await startTarget(t, { memfdMiB: 16, anonMiB: 1 });
    await target.cmd('fill memfd 23');
    const pager = await attach(t, target, [region(target, 'memfd')], 256, store, extra);
    await waitFor(() => faultThreads().some((x) => !before.has(x)), 5000).catch(() => {});  // it names itself once running
    const tid = faultThreads().find((x) => !before.has(x))!;
    t.truthy(tid, 'the pager started a fault thread');
    await waitFor(() => pager.stats().residentPages <= 256);
    t.is(parseReply(await target.cmd('churn memfd 300 1 0.5')).corrupt, 0, 'faults are served');
    await waitFor(() => syscallOf(tid) === sleepsIn, 5000).catch(() => {});
    t.is(syscallOf(tid), sleepsIn, `idle, the fault thread sleeps in system call ${sleepsIn}`);
    return { target, pager, tid };
  };
  const gone = (tid: string) => waitFor(() => syscallOf(tid) === 'gone', 5000).then(() => true, () => false);

  const a = await serveThenSleep();
  const t0 = Date.now();
  await a.pager.detach();
  t.true(await gone(a.tid), `detach ended the sleeping fault thread (${Date.now() - t0} ms)`);
  t.is(parseReply(await a.target.cmd('verify memfd')).corrupt, 0);

  const b = await serveThenSleep();
  b.pager.abandon();
  t.true(await gone(b.tid), 'abandon ended the sleeping fault thread');

  // Kill the target: is 'target-exited' reported within 5 s?
  const killReportsExit = async (h: Awaited<ReturnType<typeof serveThenSleep>>) => {
    const exited = new Promise<boolean>((resolve) => {
      h.pager.on('target-exited', () => resolve(true));
      setTimeout(() => resolve(false), 5000);
    });
    await h.target.kill();
    return exited;
  };
  const c = await serveThenSleep();
  t.true(await killReportsExit(c), 'the target exiting while the fault thread sleeps is reported (target-exited)');
  t.true(await gone(c.tid), 'and the fault thread ends');

  // The fallback (no free signal): the fault thread polls the uffd, the stop eventfd and
  // the pidfd itself, with no watcher thread.
  const d = await serveThenSleep('271', { _testNonBlockingReads: true });
  t.true(await killReportsExit(d), 'fallback: the target exiting is reported');
  t.true(await gone(d.tid), 'fallback: and the fault thread ends');
  const e = await serveThenSleep('271', { _testNonBlockingReads: true });
  await e.pager.detach();
  t.true(await gone(e.tid), 'fallback: detach ends the fault thread');
});

test.serial('the cap holds while a busy host leaves the evictor little CPU: faults wait for it while it runs', async (t) => {
  const { allowedCpus } = await import('../native/pager.ts');
  const cpus = allowedCpus();
  if (cpus.length < 2) return t.pass('one CPU: nothing to pin apart');
  const [faultCpu, evictCpu] = [cpus[0]!, cpus[cpus.length - 1]!];
  const target = await startTarget(t, { memfdMiB: 64, anonMiB: 1 });
  await target.cmd('fill memfd 13');
  const store = await memoryStore(t);
  const cap = 2048;
  const pager = await attach(t, target, [region(target, 'memfd')], cap, store, { faultCpus: [faultCpu], evictCpus: [evictCpu] });
  await waitFor(() => pager.stats().residentPages <= cap, 60000);
  // A busy loop at nice -20 on the evictor's CPU: the evictor (nice 10) gets a sliver of it.
  const hog = spawn('taskset', ['-c', String(evictCpu), 'nice', '-n', '-20', process.execPath, '-e', 'for (;;) {}'], { stdio: 'ignore' });
  t.teardown(() => { hog.kill('SIGKILL'); });
  await new Promise((r) => setTimeout(r, 200));
  const before = pager.stats();
  let most = 0;
  let done = false;
  const churn = target.cmd('churn memfd 6000 4 0.5', { timeoutMs: 180000 }).finally(() => { done = true; });
  while (!done) {
    most = Math.max(most, pager.stats().residentPages);
    await new Promise((r) => setTimeout(r, 5));
  }
  hog.kill('SIGKILL');
  t.is(parseReply(await churn).corrupt, 0);
  const after = pager.stats();
  t.log({ cap, mostResident: most, capWaits: after.capWaits - before.capWaits, capWaitMs: Math.round((after.capWaitUs - before.capWaitUs) / 1000) });
  // A fault round may map its own pages past the cap (a few, plus prefetch runs) before it waits.
  t.true(most <= cap + 128, `at most ${most} pages resident against a cap of ${cap}`);
  t.true(after.capWaits > before.capWaits, 'faults did wait for the evictor');
});

test.serial("anon: a discarded page written again is not evicted while its old stored copy's delete is in flight (the late delete would remove the new copy: a lost page)", async (t) => {
  const target = await startTarget(t, { memfdMiB: 1, anonMiB: 16 });
  await target.cmd('fill anon 23');
  const inner = await memoryStore(t);
  // A store (through the TypeScript bridge) whose deletes wait until the test lets them go.
  let holdDeletes = false;
  let release: () => void = () => {};
  const released = new Promise<void>((r) => { release = r; });
  let heldDeletes = 0;
  const store = bridgeStore(inner, 'test:held-deletes', {
    delete: async (vm, pages) => {
      if (holdDeletes) { heldDeletes++; await released; }
      return inner.delete(vm, pages);
    },
  });
  const pager = await attach(t, target, [region(target, 'anon')], 512, store);
  await waitFor(() => pager.stats().residentPages <= 512);
  // Page 0 resident with a stored copy; the target discards it (private RAM: no event,
  // the pager learns at the next fault) and writes it again.
  t.is(parseReply(await target.cmd('verify anon 0 1')).corrupt, 0);
  holdDeletes = true;
  await target.cmd('discard anon 0 1');
  await target.cmd('write anon 0 1');  // zero-filled, woken, written; the delete of its old copy now waits
  await waitFor(() => heldDeletes > 0, 10000);
  // Every page the evictor may take goes now.
  pager.setCap(1);
  await new Promise((r) => setTimeout(r, 1500));
  holdDeletes = false;
  release();
  pager.setCap(512);
  const v = await target.cmd('verify anon', { timeoutMs: 20000 }).then((r) => parseReply(r), () => null);
  t.truthy(v, 'the verify finished (no page held as lost)');
  t.is(v?.corrupt, 0);
  t.is(pager.stats().lostPages, 0);
});
