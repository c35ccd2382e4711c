import test from 'ava';
import { openStore, EnvelopeStore } from '../kvstore/index.ts';
import type { RawStore } from '../kvstore/raw.ts';
import { startRedis, makeTlsCerts } from './helpers/servers.ts';
import { runConformance, sharedServer, pageOf, vmId, expectCode, serverFixture } from './kvstore-conformance.ts';

const shared = sharedServer(test, (ctx) => startRedis(ctx));

runConformance(test, 'redis', async (t, { fresh }) => {
  // Fresh servers (restart / down / freeze tests) run with the AOF, fsync always.
  const server = fresh ? await startRedis(t, { persistence: true, appendfsync: 'always' }) : await shared();
  return serverFixture(t, server, `${server.uri}/0`, true);
}, { server: true, envelope: true, inOrder: true });

test.serial('redis: killed (SIGKILL) and restarted with appendfsync always: no acknowledged page lost', async (t) => {
  t.timeout(60_000);
  const server = await startRedis(t, { persistence: true, appendfsync: 'always' });
  const s = await openStore(server.uri);
  t.teardown(() => s.close());
  t.true(s.capabilities.persistent, 'AOF on: the store declares itself persistent');
  const vm = vmId('kill');
  const pages = Array.from({ length: 3000 }, (_, i) => i);
  for (let i = 0; i < pages.length; i += 256) await s.put(vm, pages.slice(i, i + 256), pages.slice(i, i + 256).map((p) => pageOf(3, p, false)));
  await server.kill('SIGKILL');
  await server.restart();
  let got: (Buffer | null)[] = [];
  for (let i = 0; ; i++) {
    try { got = await s.get(vm, pages); break; } catch (e) {
      if ((e as { code?: string }).code !== 'STORE_UNAVAILABLE' || i > 100) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  t.true(got.every((g, p) => g !== null && g.readDoubleLE(4) === p), 'every acknowledged page is back');
});

test.serial('redis: restarted without persistence: pages are missing (null), never invented', async (t) => {
  t.timeout(60_000);
  const server = await startRedis(t, { persistence: false });
  const s = await openStore(server.uri);
  t.teardown(() => s.close());
  t.false(s.capabilities.persistent, 'no AOF: the store does not claim persistence');
  const vm = vmId('volatile');
  await s.put(vm, [1, 2], [pageOf(1, 1), pageOf(1, 2)]);
  await server.restart();
  let got: (Buffer | null)[] = [];
  for (let i = 0; ; i++) {
    try { got = await s.get(vm, [1, 2]); break; } catch (e) {
      if ((e as { code?: string }).code !== 'STORE_UNAVAILABLE' || i > 100) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  t.deepEqual(got, [null, null]);
});

test.serial('redis: database number and password from the URI', async (t) => {
  const server = await startRedis(t, { args: ['--requirepass', 's3cr%t'] });
  const uri = `redis://:${encodeURIComponent('s3cr%t')}@127.0.0.1:${server.port}/3`;
  const s = await openStore(uri);
  t.teardown(() => s.close());
  t.false(s.uri.includes('s3cr'), `password removed from store.uri (${s.uri})`);
  const vm = vmId('auth');
  await s.put(vm, [1], [pageOf(1, 1)]);
  t.is((await server.cli('-a', 's3cr%t', '--no-auth-warning', '-n', '3', 'DBSIZE')).trim(), '1', 'the page went to database 3');
  t.is((await server.cli('-a', 's3cr%t', '--no-auth-warning', '-n', '0', 'DBSIZE')).trim(), '0');
  await expectCode(t, openStore(`redis://:wrong@127.0.0.1:${server.port}`), 'STORE_UNAVAILABLE', 'wrong password');
  await expectCode(t, openStore(`redis://127.0.0.1:${server.port}`), 'STORE_UNAVAILABLE', 'no password');
});

test.serial('redis: a full server (maxmemory, noeviction) reports STORE_FULL', async (t) => {
  const server = await startRedis(t, { args: ['--maxmemory', '4mb', '--maxmemory-policy', 'noeviction'] });
  const s = await openStore(server.uri);
  t.teardown(() => s.close());
  const vm = vmId('full');
  const pages = Array.from({ length: 256 }, (_, i) => i);
  let err: unknown;
  try {
    for (let i = 0; i < 20; i++) await s.put(vm, pages.map((p) => p + i * 256), pages.map((p) => pageOf(1, p)));
  } catch (e) { err = e; }
  t.is((err as { code?: string })?.code, 'STORE_FULL', String(err));
});

test.serial('redis: rediss:// (TLS) with a private CA; an untrusted certificate is refused', async (t) => {
  t.timeout(60_000);
  const certs = await makeTlsCerts(t);
  const server = await startRedis(t, { tls: certs, args: ['--requirepass', 'tls-secret'] });
  const uri = `rediss://:tls-secret@127.0.0.1:${server.port}/1`;
  for (const redisClient of ['resp', 'node-redis'] as const) {
    const s = await openStore(uri, { tlsCaFile: certs.ca, redisClient });
    t.teardown(() => s.close());
    const vm = vmId('tls');
    await s.put(vm, [1, 2], [pageOf(1, 1), pageOf(1, 2)]);
    const got = await s.get(vm, [1, 2]);
    t.true(got[0]!.readDoubleLE(4) === 1 && got[1]!.readDoubleLE(4) === 2, `round trip over TLS (${redisClient})`);
    t.is((await s.list(vm)).length, 2);
  }
  // Without the CA the server's certificate is not trusted: typed, fast.
  const t0 = Date.now();
  const e = await expectCode(t, openStore(uri), 'STORE_UNAVAILABLE', 'untrusted certificate');
  t.regex(e.message, /certificate|self.signed|verify/i);
  t.true(Date.now() - t0 < 4000);
  await expectCode(t, openStore(`redis://:tls-secret@127.0.0.1:${server.port}`, { opTimeoutMs: 1000, connectTimeoutMs: 1000 }), 'STORE_UNAVAILABLE', 'plain text to a TLS port');
});

test.serial('redis: envelopes written in place into the MSET frame are byte-identical to buffered ones', async (t) => {
  const server = await shared();
  const s = await openStore(server.uri);
  t.teardown(() => s.close());
  if (!(s instanceof EnvelopeStore)) return t.fail('openStore must wrap redis in the page envelope');
  const raw = s.raw;
  t.is(typeof raw.putRawInto, 'function', 'the RESP path offers putRawInto');
  // The same raw store seen without putRawInto: the envelope falls back to its own buffer.
  const buffered = new EnvelopeStore({
    uri: raw.uri, capabilities: raw.capabilities,
    getRaw: (v, p) => raw.getRaw(v, p), putRaw: (v, p, x) => raw.putRaw(v, p, x), delete: (v, p) => raw.delete(v, p),
    dropVm: (v) => raw.dropVm(v), list: (v) => raw.list(v), usage: (v) => raw.usage(v), close: async () => {},
  } satisfies RawStore);
  const vm = vmId('inplace');
  const pages = [0, 1, 63, 64, 2 ** 40 + 5];
  const data = pages.map((p) => pageOf(9, p));
  const versions = [1, 2, 3, 2 ** 33, 2 ** 53];
  await s.put(vm, pages, data, versions);
  const inPlace = await raw.getRaw(vm, pages);
  await buffered.put(vm, pages, data, versions);
  const copied = await raw.getRaw(vm, pages);
  for (let i = 0; i < pages.length; i++) t.true(inPlace[i]!.equals(copied[i]!), `page ${pages[i]}: same bytes`);
  const back = await s.get(vm, pages, versions);
  t.true(back.every((b, i) => b!.equals(data[i]!)), 'read back and verified');
  // A bad page fails the whole put before anything is sent: no page of it is stored.
  const vm2 = vmId('inplace-bad');
  await expectCode(t, s.put(vm2, [1, 2], [pageOf(1, 1), Buffer.alloc(10)]), 'EM_BAD_ARG', 'a short page');
  t.deepEqual(await s.list(vm2), []);
  await s.dropVm(vm);
});
