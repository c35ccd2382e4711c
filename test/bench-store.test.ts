/**
 * `elasticmem bench store` end to end against a real redis-server: the JSON fields of
 * DESIGN.md (per batch size put/get percentiles and throughput, overheadVsRaw against
 * redis-benchmark measured in the same run), and that it removes what it wrote.
 */
import test from 'ava';
import { runCli } from './helpers/daemon.ts';
import { startRedis } from './helpers/servers.ts';

test('bench store on a real Redis: percentiles and throughput per batch size, the raw baseline beside them, nothing left behind', async (t) => {
  const redis = await startRedis(t);
  const r = await runCli(['bench', 'store', '--store', redis.uri, '--seconds', '0.02', '--json'], { timeoutMs: 120_000 });
  t.is(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  t.is(j.store, redis.uri);
  for (const batch of ['1', '16', '256']) {
    const b = j.batches[batch];
    t.truthy(b, `batch ${batch} measured`);
    for (const f of ['putP50Us', 'putP99Us', 'getP50Us', 'getP99Us', 'putPagesPerSec', 'getPagesPerSec']) t.true(b[f] > 0, `batch ${batch} ${f}: ${b[f]}`);
    t.true(b.putP99Us >= b.putP50Us && b.getP99Us >= b.getP50Us, `batch ${batch}: p99 not below p50`);
  }
  t.truthy(j.raw, 'redis-benchmark measured in the same run');
  t.true(j.overheadVsRaw > 0, `overheadVsRaw ${j.overheadVsRaw}`);
  t.is((await redis.cli('DBSIZE')).trim(), '0', 'the benchmark removed its pages');
});
