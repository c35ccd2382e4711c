/**
 * The daemon's parsers, on their own: sizes, config, peer credentials (SO_PEERCRED),
 * QEMU's ramblock and memory-tree listings, QMP sockets on a QEMU command line.
 * Inputs are verbatim samples of what the real tools print on this host.
 */
import test from 'ava';
import { parseSize, formatSize } from '../backend/size.ts';
import type { ElasticmemError } from '../native/errors.ts';
import { parseConfig } from '../backend/daemon/config.ts';
import { peerCred } from '../backend/daemon/peercred.ts';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseRamblocks, parseMtreeRam } from '../backend/targets/ramblocks.ts';
import { qmpSocketFromCmdline } from '../backend/targets/qemu.ts';
import { backingOf, parseMaps } from '../backend/targets/procmaps.ts';

test('parseSize: binary suffixes, page-aligned bytes, errors that name the value', (t) => {
  t.is(parseSize('512M'), 512 * 2 ** 20);
  t.is(parseSize('2G'), 2 ** 31);
  t.is(parseSize('64K'), 65536);
  t.is(parseSize('1.5G'), 1.5 * 2 ** 30);
  t.is(parseSize('8192'), 8192);
  t.is(parseSize('256MiB'), 256 * 2 ** 20);
  for (const bad of ['', 'M', '12Q', '-1M', '0', '0M', '1000', '1.5', '3K', 'lots']) {
    const e = t.throws<ElasticmemError>(() => parseSize(bad, "--local"), undefined, bad)!;
    t.is(e.code, 'BAD_SIZE', bad);
    t.true(e.message.startsWith('--local:'), e.message);
  }
  t.regex((t.throws(() => parseSize('1000')) as Error).message, /not a multiple of the 4 KiB page size/);
  t.is(formatSize(384 * 2 ** 20), '384M');
  t.is(formatSize(1.5 * 2 ** 30), '1.5G');
});

test('parseConfig: defaults, overrides, limits', (t) => {
  const c = parseConfig('store: "redis://127.0.0.1:6379"\nlimits:\n  maxVms: 3\n  minLocal: 32M\nvms:\n  web1:\n    local: 512M\n    store: "memory:"\n', 'x.yaml');
  t.is(c.store, 'redis://127.0.0.1:6379');
  t.deepEqual(c.limits, { maxVms: 3, minLocal: 32 * 2 ** 20 });
  t.deepEqual(c.vms.web1, { local: 512 * 2 ** 20, store: 'memory:' });
  t.is(parseConfig('', 'empty.yaml').store, 'memory:');
  const k = parseConfig('storeKeyFile: /etc/em/default.key\nvms:\n  db:\n    store: "file:///var/lib/em"\n    storeKeyFile: /etc/em/db.key\n', 'k.yaml');
  t.is(k.storeKeyFile, '/etc/em/default.key');
  t.deepEqual(k.vms.db, { store: 'file:///var/lib/em', storeKeyFile: '/etc/em/db.key' });
  const rel = t.throws<ElasticmemError>(() => parseConfig('vms:\n  db:\n    storeKeyFile: keys/db.key\n', 'r.yaml'))!;
  t.regex(rel.message, /^config r\.yaml: vms\.db\.storeKeyFile: must be the absolute path of a key file/);
  const e = t.throws<ElasticmemError>(() => parseConfig('vms:\n  db:\n    store: ftp://x\n', 'y.yaml'))!;
  t.is(e.code, 'BAD_CONFIG');
  t.regex(e.message, /^config y\.yaml: vms\.db\.store: /);
});

test('parseConfig: pager thread CPUs are checked against the CPUs this machine has', (t) => {
  t.deepEqual(parseConfig('', 'd.yaml').pager, {});
  t.deepEqual(parseConfig('pager:\n  faultCpus: [0]\n  evictCpus: [0]\n', 'p.yaml').pager, { faultCpus: [0], evictCpus: [0] });
  const bad = t.throws<ElasticmemError>(() => parseConfig('pager:\n  faultCpus: [4096]\n', 'b.yaml'))!;
  t.is(bad.code, 'BAD_CONFIG');
  t.regex(bad.message, /^config b\.yaml: pager\.faultCpus: must be a list of CPU numbers this machine has/);
  t.regex(t.throws<ElasticmemError>(() => parseConfig('pager:\n  faultCpu: [0]\n', 'u.yaml'))!.message, /pager\.faultCpu: unknown key/);
  t.regex(t.throws<ElasticmemError>(() => parseConfig('pager:\n  evictCpus: 1\n', 'n.yaml'))!.message, /pager\.evictCpus: must be a list/);
  t.deepEqual(parseConfig('pager:\n  followFaults: false\n', 'f.yaml').pager, { followFaults: false });
  t.regex(t.throws<ElasticmemError>(() => parseConfig('pager:\n  followFaults: "no"\n', 'g.yaml'))!.message, /pager\.followFaults: must be true or false/);
  t.regex(t.throws<ElasticmemError>(() => parseConfig('pager:\n  faultCpus: [0]\n  followFaults: true\n', 'h.yaml'))!.message, /pager\.followFaults: cannot be true with faultCpus/);
});

test('peerCred: SO_PEERCRED of both ends of a real Unix socket connection', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'empc-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 's.sock');
  const accepted = new Promise<net.Socket>((resolve) => {
    const server = net.createServer((s) => resolve(s));
    server.listen(file);
    t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  });
  await new Promise((r) => setTimeout(r, 50));
  const client = net.connect(file);
  t.teardown(() => client.destroy());
  await new Promise<void>((r) => client.once('connect', () => r()));
  const server = await accepted;
  t.teardown(() => server.destroy());
  for (const end of [server, client]) {
    const c = await peerCred(end);
    t.is(c.pid, process.pid);
    t.is(c.uid, process.getuid!());
    t.is(c.gid, process.getgid!());
    t.deepEqual(c.pids, [process.pid]);
  }
  // A socket that is no longer open: an error that names the problem, not a crash.
  server.destroy();
  await t.throwsAsync(peerCred(server), { code: 'PEERCRED_FAILED' } as never);
});

test('parseRamblocks and parseMtreeRam: QEMU 7.2 output', (t) => {
  const rb = parseRamblocks(`              Block Name    PSize              Offset               Used              Total
 0000:00:03.0:00.0/vmem0    4 KiB  0x0000000010000000 0x0000000020000000 0x0000000020000000
                    mem0    4 KiB  0x0000000000000000 0x0000000010000000 0x0000000010000000
    /rom@etc/acpi/tables    4 KiB  0x0000000031100000 0x0000000000020000 0x0000000000200000
`);
  t.deepEqual(rb.map((b) => [b.name, b.pageSize, b.used]), [['0000:00:03.0:00.0/vmem0', 4096, 2 ** 29], ['mem0', 4096, 2 ** 28], ['/rom@etc/acpi/tables', 4096, 0x20000]]);
  const mt = parseMtreeRam(`FlatView #0
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
FlatView #1
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-000000000009ffff (prio 0, ram): mem0
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  0000000000100000-000000000fffffff (prio 0, ram): mem0 @0000000000100000
  0000000100000000-000000011fffffff (prio 0, ram): vmem0
`);
  t.deepEqual(mt.get('mem0'), { gpa: 0n, offset: 0n });
  t.deepEqual(mt.get('vmem0'), { gpa: 0x100000000n, offset: 0n });
  t.false(mt.has('pc.rom'));
});

test('qmpSocketFromCmdline and the backing of a mapping', (t) => {
  t.is(qmpSocketFromCmdline(['qemu', '-qmp', 'unix:/tmp/q.sock,server=on,wait=off']), '/tmp/q.sock');
  t.is(qmpSocketFromCmdline(['qemu', '-chardev', 'socket,id=mon0,path=/run/m.sock,server=on', '-mon', 'chardev=mon0,mode=control']), '/run/m.sock');
  t.is(qmpSocketFromCmdline(['qemu', '-m', '1G']), null);
  const maps = parseMaps(`7f476bffe000-7f478bffe000 rw-s 00000000 00:01 2051 /memfd:memory-backend-memfd (deleted)
7f476b7fe000-7f476bffe000 rw-p 00000000 00:00 0 
7f0000000000-7f0000200000 rw-s 00000000 00:2f 77 /dev/hugepages/qemu_back_mem.x (deleted)
7f1000000000-7f1000200000 rw-s 00000000 08:01 12 /var/lib/vm/ram
`);
  t.deepEqual(maps.map(backingOf), ['memfd', 'anon', 'hugetlb', 'file']);
  t.is(maps[0]!.range, '7f476bffe000-7f478bffe000');
});
