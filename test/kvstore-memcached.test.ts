import test from 'ava';
import { openStore } from '../kvstore/index.ts';
import { HashRing } from '../kvstore/ketama.ts';
import { MemcachedStore } from '../kvstore/memcached.ts';
import { startMemcached } from './helpers/servers.ts';
import { runConformance, sharedServer, pageOf, vmId, expectCode, serverFixture } from './kvstore-conformance.ts';
import net from 'node:net';

const shared = sharedServer(test, (ctx) => startMemcached(ctx));

runConformance(test, 'memcached', async (t, { fresh }) => {
  const servers = fresh ? await startMemcached(t, { memoryMb: 64 }) : await shared();
  return serverFixture(t, servers, servers.uri, false); // memcached keeps nothing across a restart
}, { server: true, envelope: true, inOrder: true });

/** Items on one memcached server (stats curr_items). */
async function items(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => s.write('stats\r\n'));
    let buf = '';
    s.on('data', (d) => {
      buf += d;
      if (buf.includes('END\r\n')) { s.destroy(); resolve(Number(/STAT curr_items (\d+)/.exec(buf)![1])); }
    });
    s.on('error', reject);
  });
}

test.serial('memcached: consistent hashing spreads pages over both servers', async (t) => {
  const servers = await shared();
  const s = await openStore(servers.uri);
  t.teardown(() => s.close());
  const vm = vmId('ring');
  const before = await Promise.all(servers.ports.map(items));
  const pages = Array.from({ length: 2000 }, (_, i) => i);
  await s.put(vm, pages, pages.map((p) => pageOf(1, p, false)));
  const after = await Promise.all(servers.ports.map(items));
  const added = after.map((a, i) => a - before[i]!);
  t.is(added[0]! + added[1]!, 2000);
  t.true(added.every((n) => n > 600), `both servers hold a fair share: ${added.join(' / ')}`);
  await s.dropVm(vm);
});

test('ketama ring: adding a server moves only about 1/N of the keys', (t) => {
  const mk = (n: number) => new HashRing(Array.from({ length: n }, (_, i) => ({ id: `10.0.0.${i}:11211`, server: i })));
  const three = mk(3);
  const four = mk(4);
  let moved = 0;
  const N = 20000;
  const share = [0, 0, 0];
  for (let i = 0; i < N; i++) {
    const k = `em:vm:${i}`;
    const a = three.get(k);
    share[a]!++;
    if (a !== four.get(k)) moved++;
  }
  t.true(moved / N > 0.15 && moved / N < 0.35, `moved ${(100 * moved / N).toFixed(1)}% (ideal 25%)`);
  t.true(share.every((c) => c > N / 3 * 0.7), `balanced: ${share.join(' / ')}`);
});

test.serial('memcached: one server of two down → STORE_UNAVAILABLE, never a silent miss', async (t) => {
  t.timeout(30_000);
  const servers = await startMemcached(t);
  const s = await openStore(servers.uri, { opTimeoutMs: 1000 });
  t.teardown(() => s.close());
  const vm = vmId('half');
  const pages = Array.from({ length: 200 }, (_, i) => i);
  await s.put(vm, pages, pages.map((p) => pageOf(1, p, false)));
  // Kill only the second server: pages it held must not read as missing.
  await servers.killOne(1);
  await expectCode(t, () => s.get(vm, pages), 'STORE_UNAVAILABLE', 'batch touching the dead server');
});

test.serial('memcached putRawInto: values byte-identical to putRaw; a throwing fill sends nothing to any server', async (t) => {
  const servers = await shared();
  const raw = await MemcachedStore.open(servers.uri, servers.ports.map((port) => ({ host: '127.0.0.1', port })));
  t.teardown(() => raw.close());
  const vm = vmId('inplace');
  const pages = Array.from({ length: 64 }, (_, i) => i);
  const values = pages.map((p) => pageOf(7, p));
  await raw.putRawInto(vm, pages, values[0]!.length, (i, dst) => { values[i]!.copy(dst); });
  const got = await raw.getRaw(vm, pages);
  t.true(got.every((v, i) => v !== null && v.equals(values[i]!)), 'every value read back as written');
  // Fill throws on the last page: no page of the batch may reach either server.
  const other = Array.from({ length: 64 }, (_, i) => 1000 + i);
  await t.throwsAsync(raw.putRawInto(vm, other, 16, (i, dst) => {
    if (i === other.length - 1) throw new Error('fill failed');
    dst.fill(1);
  }), { message: 'fill failed' });
  t.true((await raw.getRaw(vm, other)).every((v) => v === null), 'nothing of the failed batch was stored');
  await raw.putRaw(vm, [1], [Buffer.from('after')]);
  t.deepEqual((await raw.getRaw(vm, [1]))[0], Buffer.from('after'), 'the connection still works');
  await raw.dropVm(vm);
});

test.serial('memcached: a 1024-page batch (replies spanning many reads and read arenas) reads back intact', async (t) => {
  const servers = await shared();
  const s = await openStore(servers.uri);
  t.teardown(() => s.close());
  const vm = vmId('big');
  const pages = Array.from({ length: 1024 }, (_, i) => i * 7);
  const data = pages.map((p) => pageOf(3, p));
  for (let r = 0; r < 3; r++) {
    await s.put(vm, pages, data);
    const got = await s.get(vm, pages);
    t.true(got.every((v, i) => v !== null && v.equals(data[i]!)), `round ${r}: every page intact`);
  }
  await s.dropVm(vm);
});
