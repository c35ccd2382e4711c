/**
 * The daemon's parsers, on their own: sizes, config, peer credentials (SO_PEERCRED),
 * QEMU's ramblock and memory-tree listings, QMP sockets on a QEMU command line.
 * Inputs are verbatim samples of what the real tools print on this host.
 */
import test from 'ava';
import { parseSize, formatSize, exactSize } from '../backend/size.ts';
import { syscallNote, type ElasticmemError } from '../native/errors.ts';
import { parseConfig, stateFileFor, DEFAULT_STATE } from '../backend/daemon/config.ts';
import { resolveStoreSetup, takeOverArgs, type StoreArgs } from '../backend/daemon/store-setup.ts';
import { StorePool } from '../backend/daemon/stores.ts';
import { isNormalEnd } from '../backend/daemon/daemon.ts';
import { peerCred } from '../backend/daemon/peercred.ts';
import crypto from 'node:crypto';
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
  t.is(formatSize(1280 * 2 ** 20), '1.3G', 'display: one decimal');
  // Exact where a message suggests a size to type: never a rounded "1.3G".
  for (const [bytes, text] of [[1280 * 2 ** 20, '1.25G'], [2047 * 2 ** 20, '2047M'], [102404 * 1024, '102404K'], [12345 * 4096, '49380K'], [256 * 2 ** 20, '256M']] as const) {
    t.is(exactSize(bytes), text);
    t.is(parseSize(text), bytes, text);
  }
  t.regex((t.throws(() => parseSize('1.5K', '--local')) as Error).message, /not a multiple of the 4 KiB page size; the nearest is 4K/);
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

test('parseConfig: compress and tlsCaFile, by default and per VM; bad values name the key', (t) => {
  const c = parseConfig('compress: true\ntlsCaFile: /etc/em/ca.pem\nvms:\n  db:\n    compress: false\n    tlsCaFile: /etc/em/db-ca.pem\n', 'o.yaml');
  t.true(c.compress);
  t.is(c.tlsCaFile, '/etc/em/ca.pem');
  t.deepEqual(c.vms.db, { compress: false, tlsCaFile: '/etc/em/db-ca.pem' });
  t.is(parseConfig('', 'e.yaml').compress, undefined);
  const bad: [string, RegExp][] = [
    ['compress: yes please\n', /^config b\.yaml: compress: must be true or false, got "yes please"/],
    ['vms:\n  db:\n    compress: 1\n', /^config b\.yaml: vms\.db\.compress: must be true or false, got 1/],
    ['tlsCaFile: ca.pem\n', /^config b\.yaml: tlsCaFile: must be the absolute path of a PEM file of CA certificates/],
    ['vms:\n  db:\n    tlsCa: /x\n', /^config b\.yaml: vms\.db\.tlsCa: unknown key; allowed here: store, local, storeKeyFile, compress, tlsCaFile/],
    // an entry naming its store and an option that store cannot use
    ['vms:\n  db:\n    store: redis://:pw@h:6379\n    tlsCaFile: /etc/ca.pem\n', /^config b\.yaml: vms\.db\.tlsCaFile: is for stores reached over TLS \(rediss:\/\/\), and vms\.db\.store is redis:\/\/:\*\*\*@h:6379: drop one of the two/],
    ['vms:\n  db:\n    store: "memory:"\n    storeKeyFile: /etc/k\n', /^config b\.yaml: vms\.db\.storeKeyFile: has nothing to encrypt: vms\.db\.store is memory:/],
  ];
  for (const [text, re] of bad) {
    const e = t.throws<ElasticmemError>(() => parseConfig(text, 'b.yaml'), undefined, text)!;
    t.is(e.code, 'BAD_CONFIG', text);
    t.regex(e.message, re, text);
  }
});

test('resolveStoreSetup: each option from the request, else the VM\'s config, else the default; checked before anything opens', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'em-setup-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const f = (n: string) => path.join(dir, n);
  fs.writeFileSync(f('key'), crypto.randomBytes(32));
  fs.writeFileSync(f('vm.key'), crypto.randomBytes(32));
  fs.writeFileSync(f('ca.pem'), '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
  fs.writeFileSync(f('vm-ca.pem'), '-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n');
  fs.writeFileSync(f('ca.key'), '-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n');
  const cfg = parseConfig(`store: "rediss://127.0.0.1:6380"\nstoreKeyFile: ${f('key')}\ncompress: true\ntlsCaFile: ${f('ca.pem')}\nvms:\n  db:\n    compress: false\n    storeKeyFile: ${f('vm.key')}\n    tlsCaFile: ${f('vm-ca.pem')}\n`, 's.yaml');
  // Config defaults; the VM's own entry over them; the request over both; null: none.
  t.deepEqual(await resolveStoreSetup({}, undefined, cfg, 'web'), { uri: 'rediss://127.0.0.1:6380', keyFile: f('key'), compress: true, tlsCaFile: f('ca.pem') });
  t.deepEqual(await resolveStoreSetup({}, cfg.vms.db, cfg, 'db'), { uri: 'rediss://127.0.0.1:6380', keyFile: f('vm.key'), tlsCaFile: f('vm-ca.pem') });
  t.deepEqual(await resolveStoreSetup({ compress: true, keyFile: null, tlsCaFile: f('ca.pem') }, cfg.vms.db, cfg, 'db'), { uri: 'rediss://127.0.0.1:6380', compress: true, tlsCaFile: f('ca.pem') });
  // The config's key and CA apply only where they can: no key to memory:, no CA without TLS.
  t.deepEqual(await resolveStoreSetup({ uri: 'memory:' }, undefined, cfg, 'web'), { uri: 'memory:', compress: true });
  t.deepEqual(await resolveStoreSetup({ uri: 'redis://127.0.0.1:6379', compress: false }, undefined, cfg, 'web'), { uri: 'redis://127.0.0.1:6379', keyFile: f('key') });
  // Refused, naming the problem and the fix.
  const refused: [StoreArgs, string, RegExp][] = [
    [{ uri: 'memory:', keyFile: f('key') }, 'BAD_REQUEST', /--store-key has nothing to encrypt with --store memory:/],
    [{ uri: 'redis://127.0.0.1:6379', tlsCaFile: f('ca.pem') }, 'BAD_REQUEST', /--tls-ca is for stores reached over TLS .*, not --store redis:\/\/127\.0\.0\.1:6379: drop --tls-ca or use a rediss:\/\/ store/],
    [{ uri: 'memory:', tlsCaFile: f('ca.pem') }, 'BAD_REQUEST', /--tls-ca is for stores reached over TLS .*, not --store memory:/],
    [{ tlsCaFile: f('missing.pem') }, 'BAD_TLS_CA', /the TLS CA file .*missing\.pem: cannot read it \(ENOENT\)/],
    [{ tlsCaFile: f('ca.key') }, 'BAD_TLS_CA', /holds no PEM certificate .*give the CA certificate, not its key/],
    [{ keyFile: f('ca.pem') }, 'BAD_STORE_KEY', /must hold a 32-byte key/],
  ];
  for (const [args, code, re] of refused) {
    const e = await t.throwsAsync<ElasticmemError>(resolveStoreSetup(args, undefined, cfg, 'web'), undefined, JSON.stringify(args));
    t.is(e!.code, code, JSON.stringify(args));
    t.regex(e!.message, re, JSON.stringify(args));
  }
  // A CA given for the config's store, which has no TLS: the message names it, password masked.
  const plain = parseConfig('store: "redis://:pw@h:6379"\n', 'p.yaml');
  const mis = await t.throwsAsync<ElasticmemError>(resolveStoreSetup({ tlsCaFile: f('ca.pem') }, undefined, plain, 'web'));
  t.is(mis!.code, 'BAD_REQUEST');
  t.regex(mis!.message, /^--tls-ca is for stores reached over TLS .*, not the config's store for VM 'web', redis:\/\/:\*\*\*@h:6379: drop --tls-ca/);
  // A config CA file that went missing is named as the config's.
  const gone = parseConfig(`store: "rediss://127.0.0.1:6380"\ntlsCaFile: ${f('gone.pem')}\n`, 'g.yaml');
  t.regex((await t.throwsAsync<ElasticmemError>(resolveStoreSetup({}, undefined, gone, 'web')))!.message, /^tlsCaFile .*gone\.pem: cannot read it/);
  // A top-level CA with a store without TLS is for the VMs that use rediss://: accepted, not applied.
  t.deepEqual(await resolveStoreSetup({ uri: 'file:///var/lib/em' }, undefined, gone, 'web'), { uri: 'file:///var/lib/em' });
});

test('takeOverArgs: a take-over keeps what the previous daemon used unless told otherwise, where it applies to the store chosen now', (t) => {
  const was = { uri: 'rediss://r:6380', keyFile: '/k', compress: true, tlsCaFile: '/ca.pem' };
  t.deepEqual(takeOverArgs(was, {}), { uri: 'rediss://r:6380', keyFile: '/k', compress: true, tlsCaFile: '/ca.pem' });
  t.deepEqual(takeOverArgs({ uri: 'file:///x' }, {}), { uri: 'file:///x', keyFile: null, compress: false, tlsCaFile: null }, 'none then: none now, whatever the config says');
  t.deepEqual(takeOverArgs(was, { compress: false, tlsCaFile: '/other.pem' }), { uri: 'rediss://r:6380', keyFile: '/k', compress: false, tlsCaFile: '/other.pem' });
  // Another store: the saved CA is dropped when it has no TLS, the key when it is memory:.
  t.deepEqual(takeOverArgs(was, { uri: 'redis://r:6379' }), { uri: 'redis://r:6379', keyFile: '/k', compress: true, tlsCaFile: null });
  t.deepEqual(takeOverArgs(was, { uri: 'memory:' }), { uri: 'memory:', keyFile: null, compress: true, tlsCaFile: null });
});

test('StorePool: VMs share a store only when they open it alike; memory: with compress stores pages LZ4-compressed', async (t) => {
  const pool = new StorePool();
  t.teardown(() => pool.closeAll());
  const plain = await pool.acquire({ uri: 'memory:' });
  const packed = await pool.acquire({ uri: 'memory:', compress: true });
  t.not(plain, packed, 'another option, another store');
  t.is(await pool.acquire({ uri: 'memory:', compress: true }), packed, 'the same options share one');
  // Text-like pages: LZ4 shrinks them a lot; the raw store keeps 4 KiB each.
  const pages = Array.from({ length: 64 }, (_, i) => i);
  const data = pages.map((i) => Buffer.alloc(4096, `page ${i} `));
  await plain.put('vm', pages, data);
  await packed.put('vm', pages, data);
  const [u0, u1] = [await plain.usage('vm'), await packed.usage('vm')];
  t.is(u0.pages, 64);
  t.is(u1.pages, 64);
  t.true(u1.bytes * 4 < u0.bytes, `compressed ${u1.bytes} bytes against ${u0.bytes} raw`);
  t.deepEqual(await packed.get('vm', [5]), [data[5]]);
  await pool.release({ uri: 'memory:', compress: true });
  await pool.release({ uri: 'memory:', compress: true });
  await pool.release({ uri: 'memory:' });
});

test('stateFileFor: --state, else the config\'s state: (even when it names the default path), else the default, beside a socket of its own', (t) => {
  const socket = '/run/elasticmem/elasticmem.sock';
  const none = parseConfig('', 'n.yaml');
  t.is(stateFileFor(none, undefined, socket, socket), DEFAULT_STATE);
  t.is(stateFileFor(none, undefined, '/tmp/em/em.sock', socket), '/tmp/em/state.json', 'a daemon on its own socket keeps its own state');
  t.is(stateFileFor(none, '/tmp/s.json', '/tmp/em/em.sock', socket), '/tmp/s.json');
  // A config that names the default path on purpose keeps it, also with another socket.
  const given = parseConfig(`state: ${DEFAULT_STATE}\n`, 'g.yaml');
  t.is(stateFileFor(given, undefined, '/tmp/em/em.sock', socket), DEFAULT_STATE);
  const other = parseConfig('state: /var/lib/em/state.json\n', 'o.yaml');
  t.is(stateFileFor(other, undefined, '/tmp/em/em.sock', socket), '/var/lib/em/state.json');
  t.is(stateFileFor(other, '/tmp/s.json', socket, socket), '/tmp/s.json', '--state wins over the config');
});

test('isNormalEnd: shut down, destroyed, migrated away and saved end a VM; a crash or an unknown reason keeps its pages', (t) => {
  for (const r of ['shutdown', 'destroyed', 'shutdown finished', 'migrated', 'saved']) t.true(isNormalEnd(r), r);
  for (const r of ['crashed', 'failed', 'unknown', 'from snapshot']) t.false(isNormalEnd(r), r);
});

test('syscallNote: the errno by name and the failing call, for the daemon log', (t) => {
  t.is(syscallNote({ errno: 28, syscall: 'fallocate' }), ' (ENOSPC from fallocate)');
  t.is(syscallNote({ errno: 5 }), ' (EIO)');
  t.is(syscallNote({ syscall: 'splice' }), ' (splice)');
  t.is(syscallNote({}), '');
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
