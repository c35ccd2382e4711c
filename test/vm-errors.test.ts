/**
 * Bad input against a real running guest: every case gets a clear error and a non-zero
 * exit, and the VM is untouched (no userfaultfd in QEMU, nothing attached, the guest's
 * workload keeps verifying with corrupt=0).
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { bootDomain, virsh } from './helpers/libvirt.ts';
import { startDaemon, holdsUffd, rawExchange } from './helpers/daemon.ts';
import { freePort } from './helpers/servers.ts';

const WORKLOAD = { sizeMiB: 32, pattern: 'seq' as const, write: 0.25, seed: 3, passes: 0, pauseMs: 200 };

test('bad input at attach, resize and grow: clear errors, VM untouched; a stopped domain is detached and refused', async (t) => {
  const [dom, bare] = await Promise.all([
    bootDomain(t, { memMiB: 256, maxMemMiB: 512, template: 'memfd', workload: WORKLOAD }),
    bareQemu(t, 'memory-backend-memfd,id=ram0,size=128M,share=on'),
  ]);
  // One VM at most, and a per-VM default cap for this domain.
  const d = await startDaemon(t, { config: `limits:\n  minLocal: 32M\n  maxVms: 1\nvms:\n  ${dom.name}:\n    local: 72M\n` });
  await dom.console.waitForPasses(1, 120_000);
  const deadPort = await freePort();

  const untouched = async (what: string) => {
    t.false(holdsUffd(dom.pid), `${what}: no userfaultfd in QEMU`);
    t.deepEqual(JSON.parse((await d.cli('list', '--json')).stdout), { vms: [] }, `${what}: nothing attached`);
  };

  const cases: [string[], string, RegExp][] = [
    [['attach', 'no-such-domain', '--local', '64M'], 'VM_NOT_FOUND', /no libvirt domain 'no-such-domain'/],
    [['attach', 'pid:4194000', '--local', '64M'], 'VM_NOT_FOUND', /pid:4194000: no such process/],
    [['attach', `pid:${process.pid}`, '--local', '64M'], 'NOT_QEMU', /is not a QEMU process/],
    [['attach', 'qmp:/nonexistent/qmp.sock', '--local', '64M'], 'VM_NOT_FOUND', /no such socket/],
    [['attach', dom.name, '--local', '12Q'], 'BAD_SIZE', /'12Q' is not a size/],
    [['attach', dom.name, '--local', '1G'], 'CAP_TOO_LARGE', /--local 1G is more than the 256M of RAM VM '.*' has; choose at most 256M/],
    [['attach', dom.name, '--local', '16M'], 'CAP_TOO_SMALL', /below the minimum of 32M \(limits\.minLocal\)/],
    [['attach', dom.name, '--local', '64M', '--store', 'mongo://x'], 'BAD_STORE_URI', /unknown scheme 'mongo:'/],
    [['attach', dom.name, '--local', '64M', '--store', `redis://127.0.0.1:${deadPort}`], 'STORE_UNREACHABLE', new RegExp(`store redis://127\\.0\\.0\\.1:${deadPort} is not reachable.*nothing was attached`)],
    [['attach', `pid:${bare.pid}`], 'BAD_REQUEST', /attach pid:\d+: --local SIZE is required \(the config has no vms\.pid:\d+\.local\); e\.g\. --local 512M/],
    [['resize', dom.name, '--local', '64M'], 'NOT_ATTACHED', /is not attached; see: elasticmem list/],
    [['detach', dom.name], 'NOT_ATTACHED', /is not attached/],
  ];
  // (a size or store URI that cannot be right is refused by the CLI itself: exit 2)
  const byCli = new Set(['BAD_SIZE', 'BAD_STORE_URI']);
  for (const [args, code, re] of cases) {
    const t0 = Date.now();
    const r = await d.cli(...args);
    t.is(r.code, byCli.has(code) ? 2 : 1, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
    t.true(r.stderr.includes(`[${code}]`), `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, re, args.join(' '));
    t.true(Date.now() - t0 < 15_000, `${args.join(' ')} failed fast`);
    await untouched(args.join(' '));
  }

  // A good attach (without --local: the config's vms.<name>.local applies)...
  const good = await d.cli('attach', dom.name, '--json');
  t.is(good.code, 0, good.stderr);
  t.is(JSON.parse(good.stdout).localBytes, 72 << 20);
  t.is((await d.cli('resize', dom.name, '--local', '64M')).code, 0);
  // ... the limit of one VM ...
  const over = await d.cli('attach', `qmp:${bare.qmp}`, '--local', '64M');
  t.is(over.code, 1);
  t.regex(over.stderr, /1 VMs are attached, the limit is 1 \(limits\.maxVms in the config\) \[TOO_MANY_VMS\]/);
  t.false(holdsUffd(bare.pid));
  // ... then everything that must not change the attached VM.
  for (const name of [dom.name, dom.uuid, `pid:${dom.pid}`]) {
    const r = await d.cli('attach', name, '--local', '128M');
    t.is(r.code, 1, name);
    t.regex(r.stderr, /is already attached \(.*local 64M\); use resize to change the cap, or detach first|is already attached/, name);
    t.true(r.stderr.includes('[ALREADY_ATTACHED]'), r.stderr);
  }
  const bad: [string[], string][] = [
    [['resize', dom.name, '--local', '300M'], 'CAP_TOO_LARGE'],
    [['resize', dom.name, '--local', '8M'], 'CAP_TOO_SMALL'],
    [['grow', dom.name, '1G'], 'GROW_TOO_LARGE'],
    [['grow', dom.name, '3M'], 'BAD_SIZE'],
  ];
  for (const [args, code] of bad) {
    const r = await d.cli(...args);
    t.is(r.code, 1, args.join(' '));
    t.true(r.stderr.includes(`[${code}]`), `${args.join(' ')}: ${r.stderr}`);
  }
  // Requests no CLI would send, straight on the socket: each refused, naming the problem.
  const listed = JSON.parse((await d.cli('list', '--json')).stdout).vms[0];
  const req = (id: string, op: string, args: Record<string, unknown>) => JSON.stringify({ v: 1, id, op, args }) + '\n';
  const answers = await rawExchange(d.socket, [
    req('r1', 'resize', { vm: dom.name, local: 12 }),
    req('r2', 'resize', { vm: dom.name, local: '-1M' }),
    req('r3', 'grow', { vm: dom.name, size: '1T' }),
    req('r4', 'grow', { vm: dom.name }),
    req('r5', 'attach', { vm: dom.name, local: '64M', store: 'nosuch://x' }),
    req('r6', 'frobnicate', { vm: dom.name }),
  ].join(''), 6);
  t.is(answers.length, 6, JSON.stringify(answers));
  for (const a of answers) t.truthy(a.error?.code && a.error?.message, JSON.stringify(a));
  const s = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
  t.is(s.localCapPages, 16384, 'cap unchanged by the refused requests');
  const after = JSON.parse((await d.cli('list', '--json')).stdout).vms[0];
  t.is(after.guestRamBytes, listed.guestRamBytes, 'guest RAM unchanged by the refused grows');
  t.is(after.store, listed.store, 'store unchanged');
  const mark = dom.console.passes.length;
  await dom.console.waitForPasses(mark + 2, 60_000);
  t.deepEqual(dom.console.passes.filter((p) => p.corrupt !== 0), []);

  // The domain is stopped by its operator: the daemon notices, detaches and deletes
  // its pages; attaching it now is refused as not running.
  await virsh(['destroy', dom.name]);
  await d.waitLog(new RegExp(`\\[${dom.name}\\] domain shut down: reason destroyed; detached and its stored pages deleted`), 60_000);
  t.deepEqual(JSON.parse((await d.cli('list', '--json')).stdout), { vms: [] });
  const r = await d.cli('attach', dom.name, '--local', '64M');
  t.is(r.code, 1);
  t.regex(r.stderr, /domain '.*' is not running \(state: shut off, destroyed\); start it with: virsh start/);
  t.true(r.stderr.includes('[VM_NOT_RUNNING]'));
});

/**
 * A QEMU with no guest (the firmware idles) and RAM from the given backend, reachable
 * on a QMP socket: enough for what attach checks before touching anything.
 */
async function bareQemu(t: ExecutionContext, backend: string, extra: string[] = []): Promise<{ pid: number; qmp: string; dir: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'embare-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const qmp = path.join(dir, 'qmp.sock');
  const q = spawn('qemu-system-x86_64', ['-machine', 'q35,accel=tcg', '-m', '128M', '-nodefaults', '-display', 'none',
    '-object', backend.replace('@DIR@', dir), '-numa', 'node,memdev=ram0',
    '-qmp', `unix:${qmp},server=on,wait=off`, ...extra.map((a) => a.replace('@DIR@', dir))], { stdio: 'ignore' });
  const exited = new Promise((r) => q.once('exit', r));
  t.teardown(async () => { q.kill('SIGKILL'); await exited; });
  for (let i = 0; i < 100 && !fs.existsSync(qmp); i++) await new Promise((r) => setTimeout(r, 100));
  await new Promise<void>((resolve) => { const c = net.connect(qmp, () => { c.destroy(); resolve(); }); c.on('error', () => resolve()); });
  return { pid: q.pid!, qmp, dir };
}

test('a QEMU whose RAM is file-backed is refused with an explanation (qmp: target)', async (t) => {
  const q = await bareQemu(t, 'memory-backend-file,id=ram0,size=128M,mem-path=@DIR@/ram,share=on');
  const d = await startDaemon(t);
  const r = await d.cli('attach', `qmp:${q.qmp}`, '--local', '64M');
  t.is(r.code, 1);
  t.regex(r.stderr, /RAM block 'ram0' is backed by a file \(.*\/ram.*memory-backend-file\); elasticmem supports a shared memfd/);
  t.true(r.stderr.includes('[UNSUPPORTED_MEMORY]'));
  t.false(holdsUffd(q.pid!));
});

test("qmp: naming QEMU's human monitor (-monitor) instead of its QMP socket: refused at once, saying which socket to give", async (t) => {
  const q = await bareQemu(t, 'memory-backend-memfd,id=ram0,size=128M,share=on', ['-monitor', 'unix:@DIR@/hmp.sock,server=on,wait=off']);
  const d = await startDaemon(t);
  const t0 = Date.now();
  const r = await d.cli('attach', `qmp:${q.dir}/hmp.sock`, '--local', '64M');
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /hmp\.sock is not a QMP socket \(QEMU's human monitor, -monitor\): it greeted with "QEMU .*monitor.*"; give the socket of QEMU's -qmp/);
  t.true(r.stderr.includes('[NOT_QMP]'));
  t.true(Date.now() - t0 < 8000, 'not left waiting for a greeting');
  t.false(holdsUffd(q.pid));
  // The daemon is not left holding the name: the right socket attaches.
  const ok = await d.cli('attach', `qmp:${q.qmp}`, '--local', '64M');
  t.is(ok.code, 0, ok.stderr);
});

test('persistent memory (nvdimm, virtio-pmem) and a backend no device uses yet are left unpaged; the RAM is attached', async (t) => {
  const q = await bareQemu(t, 'memory-backend-memfd,id=ram0,size=128M,share=on', [
    '-m', '128M,slots=2,maxmem=1G', '-machine', 'nvdimm=on',
    '-object', 'memory-backend-file,id=pmem0,share=on,mem-path=@DIR@/pmem,size=128M', '-device', 'virtio-pmem-pci,memdev=pmem0,id=vpmem0',
    '-object', 'memory-backend-memfd,id=nvm,size=128M,share=on', '-device', 'nvdimm,memdev=nvm,id=nv0',
    '-object', 'memory-backend-memfd,id=orphan,size=128M,share=on',
  ]);
  const d = await startDaemon(t);
  const r = await d.cli('attach', `qmp:${q.qmp}`, '--local', '64M', '--json');
  t.is(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  t.deepEqual(j.regions.map((x: { name: string }) => x.name.replace(/^.*\//, '')), ['ram0'], 'only the RAM is paged');
  t.is(j.guestRamBytes, 128 * 2 ** 20, 'persistent memory is not guest RAM');
  // The backend no device uses: the daemon says it waits for one (pid:/qmp: VMs have no device events).
  await d.waitLog(/memory pending: QEMU has memory backend orphan that no guest address uses yet/, 15_000);
  t.is((await d.cli('detach', `qmp:${q.qmp}`)).code, 0);
  t.false(holdsUffd(q.pid));
});
