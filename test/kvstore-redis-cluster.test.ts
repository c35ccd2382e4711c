import test from 'ava';
import { openStore } from '../kvstore/index.ts';
import { pageKey, GROUP } from '../kvstore/redis.ts';
import { keySlot } from '../kvstore/redis-cluster.ts';
import { startRedisCluster } from './helpers/servers.ts';
import { runConformance, sharedServer, pageOf, vmId, serverFixture } from './kvstore-conformance.ts';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const shared = sharedServer(test, (ctx) => startRedisCluster(ctx));

runConformance(test, 'redis-cluster', async (t, { fresh }) => {
  const cluster = fresh ? await startRedisCluster(t, { persistence: true, appendfsync: 'always' }) : await shared();
  return serverFixture(t, cluster, cluster.uri, true);
}, { server: true, envelope: true });

test.serial('redis-cluster: pages spread over all three masters, 64-page groups share a slot', async (t) => {
  const cluster = await shared();
  const s = await openStore(cluster.uri);
  t.teardown(() => s.close());
  const vm = vmId('spread');
  const pages = Array.from({ length: 64 * 40 }, (_, i) => i);
  await s.put(vm, pages, pages.map((p) => pageOf(1, p, false)));
  const run = promisify(execFile);
  const counts = await Promise.all(cluster.ports.map(async (p) => Number((await run('redis-cli', ['-p', String(p), 'DBSIZE'])).stdout.trim())));
  t.true(counts.every((c) => c > 0), `every master holds pages: ${counts.join(', ')}`);
  const slot = async (key: string) => Number((await run('redis-cli', ['-p', String(cluster.ports[0]), 'CLUSTER', 'KEYSLOT', key])).stdout.trim());
  const tagged = vm.replace(/[^A-Za-z0-9_.-]/g, '');
  t.is(await slot(pageKey(tagged, 0)), await slot(pageKey(tagged, GROUP - 1)), 'pages 0 and 63: one slot');
  await s.dropVm(vm);
});

test.serial('redis-cluster: keySlot matches CLUSTER KEYSLOT of the server, hash-tag rules included', async (t) => {
  const cluster = await shared();
  const run = promisify(execFile);
  const keys = ['', 'a', 'foo', '123456789', 'em:{vm1:0}:5', 'em:{vm1:1}:64', '{user1000}.following', '{user1000}.followers',
    'foo{}{bar}', 'foo{{bar}}zap', 'foo{bar}{zap}', '{}foo', '{', '}{', 'a{b', 'a}b{c}', 'ключ', 'k{é}x', 'é{ab}ü', pageKey('abc', 12345)];
  for (const k of keys) {
    const want = Number((await run('redis-cli', ['-p', String(cluster.ports[0]), 'CLUSTER', 'KEYSLOT', k])).stdout.trim());
    t.is(keySlot(k), want, `slot of '${k}'`);
  }
  t.is(keySlot('123456789'), 12739, 'CRC16/XMODEM check value 0x31C3 mod 16384');
});

test.serial('redis-cluster: a slot moved to another master is followed (MOVED), reads and writes land on the new owner', async (t) => {
  const cluster = await startRedisCluster(t);
  const s = await openStore(cluster.uri);
  t.teardown(() => s.close());
  const vm = vmId('moved');
  const tagged = vm.replace(/[^A-Za-z0-9_.-]/g, '');
  const pages = Array.from({ length: GROUP }, (_, i) => i);
  await s.put(vm, pages, pages.map((p) => pageOf(2, p, false)));
  const run = promisify(execFile);
  const cli = async (port: number, ...args: string[]) => (await run('redis-cli', ['-p', String(port), ...args])).stdout.trim();
  const slot = keySlot(pageKey(tagged, 0));
  const ids = await Promise.all(cluster.ports.map((p) => cli(p, 'CLUSTER', 'MYID')));
  const owner = Number(await cli(cluster.ports[0]!, 'CLUSTER', 'COUNTKEYSINSLOT', String(slot))) > 0 ? 0
    : Number(await cli(cluster.ports[1]!, 'CLUSTER', 'COUNTKEYSINSLOT', String(slot))) > 0 ? 1 : 2;
  const dest = (owner + 1) % 3;
  const [src, dst] = [cluster.ports[owner]!, cluster.ports[dest]!];
  // Reshard the slot by hand, as redis-cli --cluster reshard does.
  await cli(dst, 'CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', ids[owner]!);
  await cli(src, 'CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', ids[dest]!);
  const keys = (await cli(src, 'CLUSTER', 'GETKEYSINSLOT', String(slot), '1000')).split('\n').filter(Boolean);
  t.is(keys.length, GROUP, 'the group is on the old owner before the move');
  await cli(src, 'MIGRATE', '127.0.0.1', String(dst), '', '0', '5000', 'KEYS', ...keys);
  for (const p of cluster.ports) await cli(p, 'CLUSTER', 'SETSLOT', String(slot), 'NODE', ids[dest]!);
  t.is(Number(await cli(dst, 'CLUSTER', 'COUNTKEYSINSLOT', String(slot))), GROUP, 'the group is on the new owner');
  // The store still maps the slot to the old owner: it gets MOVED and must follow it.
  const got = await s.get(vm, pages);
  t.deepEqual(got, pages.map((p) => pageOf(2, p, false)));
  await s.put(vm, [1], [pageOf(3, 1, false)]);
  t.deepEqual(await s.get(vm, [1]), [pageOf(3, 1, false)]);
  t.is(await cli(src, 'DBSIZE'), '0', 'nothing written to the old owner');
  t.is(Number(await cli(dst, 'EXISTS', pageKey(tagged, 1))), 1, 'the write landed on the new owner');
});

test.serial('redis-cluster: a slot being migrated is followed for moved keys (ASK), without losing the rest', async (t) => {
  const cluster = await startRedisCluster(t);
  const s = await openStore(cluster.uri);
  t.teardown(() => s.close());
  const vm = vmId('ask');
  const tagged = vm.replace(/[^A-Za-z0-9_.-]/g, '');
  const pages = Array.from({ length: GROUP }, (_, i) => i);
  await s.put(vm, pages, pages.map((p) => pageOf(4, p, false)));
  const run = promisify(execFile);
  const cli = async (port: number, ...args: string[]) => (await run('redis-cli', ['-p', String(port), ...args])).stdout.trim();
  const slot = keySlot(pageKey(tagged, 0));
  const ids = await Promise.all(cluster.ports.map((p) => cli(p, 'CLUSTER', 'MYID')));
  const counts = await Promise.all(cluster.ports.map(async (p) => Number(await cli(p, 'CLUSTER', 'COUNTKEYSINSLOT', String(slot)))));
  const owner = counts.findIndex((c) => c > 0);
  const dest = (owner + 1) % 3;
  const [src, dst] = [cluster.ports[owner]!, cluster.ports[dest]!];
  await cli(dst, 'CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', ids[owner]!);
  await cli(src, 'CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', ids[dest]!);
  // Only page 0 has moved: the old owner answers ASK for it and serves the others.
  await cli(src, 'MIGRATE', '127.0.0.1', String(dst), pageKey(tagged, 0), '0', '5000');
  // (EXISTS on either node would itself be redirected: count keys instead; the cluster is fresh.)
  t.is(await cli(dst, 'DBSIZE'), '1', 'page 0 is on the importing node');
  t.is(await cli(src, 'DBSIZE'), String(GROUP - 1), 'the rest on the old owner');
  t.deepEqual(await s.get(vm, [0]), [pageOf(4, 0, false)], 'page 0 read via ASK');
  t.deepEqual(await s.get(vm, [5]), [pageOf(4, 5, false)], 'page 5 still read from the old owner');
  await s.put(vm, [0], [pageOf(5, 0, false)]);
  t.deepEqual(await s.get(vm, [0]), [pageOf(5, 0, false)], 'page 0 rewritten on the importing node via ASK');
  t.is(await cli(src, 'DBSIZE'), String(GROUP - 1), 'not recreated on the old owner');
  t.is(await cli(dst, 'DBSIZE'), '1', 'still one key on the importing node');
});

test.serial('redis-cluster: persistent only when every master keeps an append-only file (pages spread over all of them)', async (t) => {
  const cluster = await shared();
  const run = promisify(execFile);
  const aof = (port: number, on: boolean) => run('redis-cli', ['-p', String(port), 'CONFIG', 'SET', 'appendonly', on ? 'yes' : 'no']);
  const persistent = async () => {
    const s = await openStore(cluster.uri);
    try { return s.capabilities.persistent; } finally { await s.close(); }
  };
  t.teardown(async () => { for (const p of cluster.ports) await aof(p, false); });
  for (const p of cluster.ports) await aof(p, false);
  t.false(await persistent(), 'no master keeps an AOF');
  for (const p of cluster.ports) await aof(p, true);
  t.true(await persistent(), 'every master keeps an AOF');
  for (const p of cluster.ports) {
    await aof(p, false);
    t.false(await persistent(), `master :${p} without an AOF: its pages would not survive its restart`);
    await aof(p, true);
  }
});
