/**
 * memfd guest RAM that transparent huge pages can back is refused: a 4 KiB hole
 * punched in a huge shmem page that cannot be split reads back as zeros without a
 * fault (native/shmem-thp.ts). The host's real setting is never switched here (every
 * other memfd user on the machine would get huge pages meanwhile): the decision is
 * tested over stand-in settings (EM_TEST_THP_SYSFS, a folder shaped like
 * /sys/kernel/mm/transparent_hugepage), with a real target and a real attach.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseReply, startTarget } from './helpers/target.ts';
import { holdsUffd } from './helpers/daemon.ts';
import { Pager } from '../native/pager.ts';
import { openStore } from '../kvstore/index.ts';
import { riskOf, shmemThpPolicy, type Vma } from '../native/shmem-thp.ts';

const choices = (all: string[], pick: string) => all.map((c) => (c === pick ? `[${c}]` : c)).join(' ') + '\n';
const GLOBAL = ['always', 'within_size', 'advise', 'never', 'deny', 'force'];
const SIZE = ['always', 'inherit', 'within_size', 'advise', 'never'];

function fakeSysfs(t: { teardown(fn: () => unknown): void }, global: string, sizes: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'em-thp-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'shmem_enabled'), choices(GLOBAL, global));
  for (const [size, v] of Object.entries(sizes)) {
    fs.mkdirSync(path.join(dir, `hugepages-${size}`));
    fs.writeFileSync(path.join(dir, `hugepages-${size}`, 'shmem_enabled'), choices(SIZE, v));
  }
  return dir;
}

const vma = (o: Partial<Vma> = {}): Vma => ({ lo: 0x1000n, hi: 0x2000n, thpEligible: false, pmdMappedKb: 0, hg: false, ...o });

test("the decision: Debian's defaults pass; always, within_size, force, advise where QEMU asked, inherit of those, and mapped huge pages are refused", (t) => {
  const p = (global: string, sizes: Record<string, string>) => ({ global, sizes });
  const defaults = p('never', { '2048kB': 'inherit', '64kB': 'never' });
  t.is(riskOf([vma({ hg: true })], defaults), null);
  t.is(riskOf([vma()], p('advise', { '2048kB': 'inherit' })), null, 'advise without MADV_HUGEPAGE');
  t.regex(riskOf([vma({ hg: true })], p('advise', { '2048kB': 'inherit' }))!, /hugepages-2048kB\/shmem_enabled is inherit \(shmem_enabled advise\) and QEMU asked for huge pages/);
  t.regex(riskOf([vma()], p('always', { '2048kB': 'inherit' }))!, /inherit \(shmem_enabled always\)/);
  t.is(riskOf([vma()], p('always', { '2048kB': 'never' })), null, 'always, but no size may use it');
  t.regex(riskOf([vma()], p('never', { '64kB': 'within_size' }))!, /hugepages-64kB\/shmem_enabled is within_size/);
  t.regex(riskOf([vma()], p('force', {}))!, /shmem_enabled is force/);
  t.regex(riskOf([vma({ pmdMappedKb: 4096 })], defaults)!, /4096 KiB of it are mapped as huge pages already/);
  t.regex(riskOf([vma({ thpEligible: true })], defaults)!, /THPeligible/);
  t.is(riskOf([vma()], p('never', {})), null, 'a kernel without per-size settings');
});

test.serial('attach refuses memfd RAM that huge pages can back, before touching the target; anonymous RAM and safe settings attach', async (t) => {
  const target = await startTarget(t, { memfdMiB: 8, anonMiB: 8 });
  await target.cmd('fill memfd 3');
  const store = await openStore('memory:');
  t.teardown(() => store.close());
  const memfd = target.regionSpecs().find((r) => r.kind === 'memfd')!;
  const anon = target.regionSpecs().find((r) => r.kind === 'anon')!;
  const saved = process.env.EM_TEST_THP_SYSFS;
  t.teardown(() => { if (saved === undefined) delete process.env.EM_TEST_THP_SYSFS; else process.env.EM_TEST_THP_SYSFS = saved; });

  process.env.EM_TEST_THP_SYSFS = fakeSysfs(t, 'always', { '2048kB': 'inherit', '64kB': 'never' });
  t.regex(JSON.stringify(shmemThpPolicy()), /"global":"always"/);
  const e = await t.throwsAsync(Pager.attach({ pid: target.pid, vmId: `thp-${target.pid}`, regions: [memfd], capPages: 512, store }));
  t.is((e as { code?: string }).code, 'EM_SHMEM_THP');
  t.regex(e!.message, /guest RAM '.*' is a memfd that can hold transparent huge pages \(hugepages-2048kB\/shmem_enabled is inherit \(shmem_enabled always\)\).*echo never > \/sys\/kernel\/mm\/transparent_hugepage\/shmem_enabled.*restart the VM/);
  t.false(holdsUffd(target.pid), 'the target was not touched');

  // Private anonymous RAM is not affected (a DONTNEED of 4 KiB in a huge page zeroes nothing).
  const a = await Pager.attach({ pid: target.pid, vmId: `thp-${target.pid}`, regions: [anon], capPages: 1024, store });
  // ... but a memfd region hot-added later is checked too.
  t.throws(() => a.addRegions([memfd]), { code: 'EM_SHMEM_THP' } as never);
  await a.detach();

  process.env.EM_TEST_THP_SYSFS = fakeSysfs(t, 'never', { '2048kB': 'inherit', '64kB': 'never' });
  const ok = await Pager.attach({ pid: target.pid, vmId: `thp-${target.pid}`, regions: [memfd], capPages: 512, store });
  t.is(parseReply(await target.cmd('verify memfd')).corrupt, 0);
  await ok.detach();
});
