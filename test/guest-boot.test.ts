/**
 * The test guest under real libvirtd and plain QEMU: the workload verifies every page
 * with corrupt=0, guest RAM is (or is not) a shared memfd as the templates promise,
 * virtio-mem hot-add reaches the guest, and the workload's checker really catches a
 * page damaged from outside (so corrupt=0 elsewhere means something).
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bootDomain, ensureLibvirtd, fillTemplate, setVirtioMemRequested, virsh } from './helpers/libvirt.ts';
import { shareKvmWithKvmGroup } from '../backend/vm/libvirt.ts';
import { bootQemu, qmpCommand } from './helpers/qemu.ts';
import { ConsoleReader, guestCmdline, workloadPage, type WorkloadPass } from './helpers/guest.ts';

const MiB = 1024 * 1024;

interface Mapping {
  start: bigint;
  end: bigint;
  perms: string;
  path: string;
}

function mappings(pid: number): Mapping[] {
  return fs
    .readFileSync(`/proc/${pid}/maps`, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [range, perms, , , , ...rest] = line.split(/\s+/);
      const [lo, hi] = range.split('-');
      return { start: BigInt('0x' + lo), end: BigInt('0x' + hi), perms, path: rest.join(' ') };
    });
}

function sizeOf(m: Mapping): number {
  return Number(m.end - m.start);
}

function assertClean(t: import('ava').ExecutionContext, passes: WorkloadPass[], pages: number): void {
  for (const p of passes) {
    t.is(p.corrupt, 0, `pass ${p.pass} reported corrupt=${p.corrupt}`);
    t.is(p.pages, pages);
    t.is(p.verified, pages);
  }
}

test.before(async () => {
  await ensureLibvirtd();
});

test.serial('libvirt memfd domain: workload verifies every page with corrupt=0 over 5 passes', async (t) => {
  const started = Date.now();
  const dom = await bootDomain(t, {
    memMiB: 256,
    template: 'memfd',
    workload: { sizeMiB: 64, pattern: 'seq', write: 0.5, seed: 7, passes: 5 },
  });
  const start = await dom.console.waitFor(/ELASTICMEM-WORKLOAD-START size=64 pages=16384 pattern=seq .*uptime_ms=(\d+)/, 60_000);
  t.log(`guest up after ${start[1]} ms guest time, ${Date.now() - started} ms wall (define+start+boot)`);
  const done = await dom.console.waitFor(/ELASTICMEM-WORKLOAD-DONE corrupt=(\d+)/, 120_000);
  t.is(done[1], '0');
  t.is(dom.console.passes.length, 5);
  assertClean(t, dom.console.passes, 16384);
  t.deepEqual(dom.console.passes.map((p) => p.pass), [1, 2, 3, 4, 5]);
  t.log(`pass ms: ${dom.console.passes.map((p) => p.ms).join(' ')}`);
  t.true((dom.console.memTotalKb ?? 0) > 150 * 1024, `MemTotal ${dom.console.memTotalKb} kB`);
});

test.serial('libvirt private-memory domain: workload verifies every page with corrupt=0 (random pattern)', async (t) => {
  const dom = await bootDomain(t, {
    memMiB: 256,
    template: 'private',
    workload: { sizeMiB: 64, pattern: 'random', write: 0.3, seed: 11, passes: 5 },
  });
  const done = await dom.console.waitFor(/ELASTICMEM-WORKLOAD-DONE corrupt=(\d+)/, 120_000);
  t.is(done[1], '0');
  t.is(dom.console.passes.length, 5);
  assertClean(t, dom.console.passes, 16384);
});

test.serial('QEMU of the memfd domain maps guest RAM from a shared memfd; the private one does not', async (t) => {
  const workload = { sizeMiB: 32, pattern: 'zipf' as const, write: 0.2, seed: 3, passes: 2 };
  const shared = await bootDomain(t, { memMiB: 256, template: 'memfd', workload });
  const priv = await bootDomain(t, { memMiB: 256, template: 'private', workload });
  await shared.console.waitFor(/ELASTICMEM-WORKLOAD-DONE corrupt=0/, 120_000);
  await priv.console.waitFor(/ELASTICMEM-WORKLOAD-DONE corrupt=0/, 120_000);

  const ramSize = 256 * MiB;
  const sharedMaps = mappings(shared.pid);
  const sharedRam = sharedMaps.filter((m) => m.path.startsWith('/memfd:') && m.perms.includes('s') && sizeOf(m) === ramSize);
  t.is(sharedRam.length, 1, `memfd domain: expected one shared 256 MiB memfd mapping, got:\n${sharedMaps.filter((m) => m.path.startsWith('/memfd:')).map((m) => `${m.perms} ${sizeOf(m)} ${m.path}`).join('\n')}`);
  // The virtio-mem region is a shared memfd too (mapped from the start, size = max - mem).
  t.true(sharedMaps.some((m) => m.path.startsWith('/memfd:') && m.perms.includes('s') && sizeOf(m) === shared.virtioMemMiB * MiB));

  const privMaps = mappings(priv.pid);
  t.false(privMaps.some((m) => m.path.startsWith('/memfd:') && sizeOf(m) >= ramSize), 'private domain must not map RAM from a memfd');
  t.true(privMaps.some((m) => m.path === '' && m.perms.startsWith('rw-p') && sizeOf(m) >= ramSize), 'private domain maps RAM as private anonymous memory');
});

test.serial('virtio-mem hot-add through libvirt (virsh update-memory-device) raises the guest MemTotal', async (t) => {
  const dom = await bootDomain(t, {
    memMiB: 256,
    maxMemMiB: 1280,
    template: 'memfd',
    workload: { sizeMiB: 32, pattern: 'seq', write: 0.25, seed: 5, passes: 0, pauseMs: 200 },
  });
  await dom.console.waitForPasses(2, 60_000);
  const before = dom.console.memTotalKb;
  t.truthy(before);
  const t0 = Date.now();
  await setVirtioMemRequested(dom.name, 256);
  const after = await dom.console.waitForMemTotal(before! + 256 * 1024, 30_000);
  t.log(`MemTotal ${before} -> ${after} kB in ${Date.now() - t0} ms`);
  t.is(after - before!, 256 * 1024);
  // The workload keeps running cleanly on the grown guest.
  const n = dom.console.passes.length;
  await dom.console.waitForPasses(n + 2, 30_000);
  assertClean(t, dom.console.passes, 8192);
});

test.serial('the workload catches a guest page damaged from the host (its corrupt=0 is meaningful)', async (t) => {
  const seed = 4242;
  const dom = await bootDomain(t, {
    memMiB: 256,
    template: 'memfd',
    // write=0: page 7 stays at generation 0, so the host knows its exact content.
    workload: { sizeMiB: 16, pattern: 'seq', write: 0, seed, passes: 0, pauseMs: 300 },
  });
  await dom.console.waitForPasses(1, 60_000);
  const ram = mappings(dom.pid).find((m) => m.path.startsWith('/memfd:') && sizeOf(m) === 256 * MiB);
  if (!ram) return t.fail('no 256 MiB memfd mapping in QEMU');
  // Open QEMU's RAM file and look for workload page 7 at page-aligned offsets.
  const want = workloadPage(seed, 7, 0);
  const fd = fs.openSync(`/proc/${dom.pid}/map_files/${ram.start.toString(16)}-${ram.end.toString(16)}`, 'r+');
  t.teardown(() => fs.closeSync(fd));
  const chunk = Buffer.alloc(4 * MiB);
  let found = -1;
  for (let off = 0; off < sizeOf(ram) && found < 0; off += chunk.length) {
    const n = fs.readSync(fd, chunk, 0, chunk.length, off);
    for (let p = 0; p + 4096 <= n; p += 4096) {
      if (chunk.readBigUInt64LE(p) === want.readBigUInt64LE(0) && chunk.subarray(p, p + 4096).equals(want)) {
        found = off + p;
        break;
      }
    }
  }
  t.true(found >= 0, 'workload page 7 found in guest RAM');
  const from = dom.console.mark();
  fs.writeSync(fd, Buffer.from('DAMAGED!'), 0, 8, found + 3 * 8);
  const hit = await dom.console.waitFor(/ELASTICMEM-CORRUPT pass=(\d+) page=7 word=3 /, 30_000, { from });
  const bad = await dom.console.waitFor(new RegExp(`ELASTICMEM-WORKLOAD pass=${hit[1]} pages=4096 verified=4096 corrupt=1 `), 10_000, { from });
  t.truthy(bad);
  // The workload repaired the page: the next pass is clean again.
  await dom.console.waitFor(new RegExp(`ELASTICMEM-WORKLOAD pass=${+hit[1] + 1} pages=4096 verified=4096 corrupt=0 `), 10_000, { from });
});

test.serial('plain QEMU from vm-configs/qemu-cmdline.sh: workload clean, QMP virtio-mem hot-add reaches the guest', async (t) => {
  const vm = await bootQemu(t, {
    memMiB: 256,
    maxMemMiB: 1280,
    memory: 'memfd',
    workload: { sizeMiB: 32, pattern: 'zipf', write: 0.25, seed: 9, passes: 0, pauseMs: 200 },
  });
  await vm.console.waitForPasses(3, 60_000);
  assertClean(t, vm.console.passes, 8192);
  t.true(mappings(vm.pid).some((m) => m.path.startsWith('/memfd:') && sizeOf(m) === 256 * MiB), 'boot RAM on a memfd');
  const before = vm.console.memTotalKb!;
  await qmpCommand(vm.qmpPath, 'qom-set', { path: `/machine/peripheral/${vm.virtioMemId}`, property: 'requested-size', value: 128 * MiB });
  const after = await vm.console.waitForMemTotal(before + 128 * 1024, 30_000);
  t.is(after - before, 128 * 1024);
});

test.serial('console reader: parses CRLF lines, partial lines and MemTotal updates incrementally', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'emconsole-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'console.log');
  const reader = new ConsoleReader(file);
  t.teardown(() => reader.close());
  reader.poll(); // file does not exist yet: no error
  fs.writeFileSync(file, '[    1.0] boot\r\nELASTICMEM-MEMTOTAL kb=210752\r\nELASTICMEM-WORKLOAD pass=1 pages=8192 verified=8192 corrupt=0 ms=17\r\nELASTICMEM-WORKLOAD pass=2 pages=8192 ver');
  const waiting = reader.waitFor(/ELASTICMEM-WORKLOAD-DONE corrupt=(\d+)/, 5_000);
  await new Promise((r) => setTimeout(r, 200));
  t.is(reader.passes.length, 1, 'a partial line is not parsed yet');
  fs.appendFileSync(file, 'ified=8192 corrupt=3 ms=18\r\nELASTICMEM-MEMTOTAL kb=472896\r\nELASTICMEM-WORKLOAD-DONE corrupt=3\r\n');
  t.is((await waiting)[1], '3');
  t.deepEqual(reader.passes, [
    { pass: 1, pages: 8192, verified: 8192, corrupt: 0, ms: 17 },
    { pass: 2, pages: 8192, verified: 8192, corrupt: 3, ms: 18 },
  ]);
  t.is(reader.memTotalKb, 472896);
  t.is(reader.doneCorrupt, 3);
  const from = reader.mark();
  await t.throwsAsync(reader.waitFor(/ELASTICMEM-WORKLOAD pass=1 /, 300, { from }), { message: /no match .* within 300 ms; last lines/s });
});

test.serial('bad boot options are refused with the reason, before any domain is defined', async (t) => {
  const before = (await virsh(['list', '--all', '--name'])).split('\n').filter((n) => n.startsWith(`emtest-${process.pid}-`));
  const w = { sizeMiB: 32, pattern: 'seq' as const, write: 0.1, seed: 1, passes: 1 };
  await t.throwsAsync(bootDomain(t, { memMiB: 64, template: 'memfd', workload: w }), { message: /memMiB must be an integer >= 128/ });
  await t.throwsAsync(bootDomain(t, { memMiB: 256, maxMemMiB: 300, template: 'memfd', workload: w }), { message: /must exceed memMiB .* by at least 128 MiB/ });
  await t.throwsAsync(bootDomain(t, { memMiB: 256, template: 'memfd', workload: { ...w, sizeMiB: 200 } }), { message: /does not fit in 256 MiB/ });
  await t.throwsAsync(bootDomain(t, { memMiB: 256, template: 'shared' as 'memfd', workload: w }), { message: /template must be 'memfd' or 'private'/ });
  t.throws(() => guestCmdline({ ...w, pattern: 'lru' as 'seq' }), { message: /pattern must be seq\|random\|zipf, got lru/ });
  t.throws(() => guestCmdline({ ...w, write: 1.5 }), { message: /within 0\.\.1, got 1\.5/ });
  t.throws(() => fillTemplate('<name>@NAME@</name><uuid>@UUID@</uuid>', { NAME: 'x' }), { message: /unfilled: @UUID@/ });
  await t.throwsAsync(bootQemu(t, { memMiB: 256, maxMemMiB: 256, workload: w }), { message: /qemu-cmdline\.sh refused the options: .*--maxmem \(256\) must exceed --mem \(256\)/ });
  const after = (await virsh(['list', '--all', '--name'])).split('\n').filter((n) => n.startsWith(`emtest-${process.pid}-`));
  t.deepEqual(after, before);
});

test.serial('libvirt keeps its QEMU capabilities between calls: no re-probe before every define (/dev/kvm as udev would set it)', async (t) => {
  // A /dev/kvm its QEMU user cannot open made libvirt re-probe QEMU at every lookup
  // (seconds idle, over a minute under load). ensureLibvirtd (test.before) fixes that.
  const dir = '/var/cache/libvirt/qemu/capabilities';
  const stamps = () => fs.readdirSync(dir).map((f) => `${f} ${fs.statSync(path.join(dir, f)).mtimeMs}`).sort();
  await virsh(['domcapabilities', '--virttype', 'qemu']);
  const first = stamps();
  t.true(first.length > 0, 'libvirt caches its probe');
  const started = Date.now();
  await virsh(['domcapabilities', '--virttype', 'qemu']);
  t.deepEqual(stamps(), first, 'the second lookup re-probed QEMU (its cache file was rewritten)');
  t.log(`second lookup ${Date.now() - started} ms`);
  if (fs.existsSync('/dev/kvm')) {
    const st = fs.statSync('/dev/kvm');
    t.is(st.mode & 0o060, 0o060, 'group kvm may open /dev/kvm');
  }
});

test.serial('shareKvmWithKvmGroup: root:kvm 0660 on a device node left root-only, idempotent, nothing without one', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'emkvm-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const dev = path.join(dir, 'kvm'); // (a regular file stands in for the device node: same owner and mode bits)
  fs.writeFileSync(dev, '');
  fs.chmodSync(dev, 0o600);
  const kvmGid = Number(fs.readFileSync('/etc/group', 'utf8').split('\n').find((l) => l.startsWith('kvm:'))!.split(':')[2]);
  shareKvmWithKvmGroup(dev);
  let st = fs.statSync(dev);
  t.is(st.gid, kvmGid);
  t.is(st.mode & 0o777, 0o660);
  const ctime = st.ctimeMs;
  shareKvmWithKvmGroup(dev);
  st = fs.statSync(dev);
  t.is(st.ctimeMs, ctime, 'already right: left alone');
  t.notThrows(() => shareKvmWithKvmGroup(path.join(dir, 'absent')));
});
