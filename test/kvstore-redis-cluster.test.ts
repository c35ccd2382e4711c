import test from 'ava';
import { openStore } from '../kvstore/index.ts';
import { pageKey, GROUP } from '../kvstore/redis.ts';
import { startRedisCluster } from './helpers/servers.ts';
import { runConformance, sharedServer, pageOf, vmId } from './kvstore-conformance.ts';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const shared = sharedServer(test, (ctx) => startRedisCluster(ctx));

runConformance(test, 'redis-cluster', async (t, { fresh }) => {
  const cluster = fresh ? await startRedisCluster(t, { persistence: true, appendfsync: 'always' }) : await shared();
  const open = async (o = {}) => {
    const s = await openStore(cluster.uri, o);
    t.teardown(() => s.close());
    return s;
  };
  return {
    store: await open(),
    reopen: open,
    survivesRestart: true,
    restart: () => cluster.restart(),
    stop: () => cluster.stop(),
    pause: () => cluster.pause(),
    resume: () => cluster.resume(),
  };
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
