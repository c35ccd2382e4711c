/**
 * The store options of attach besides the key: `--compress` (pages deflated in the
 * store) and `--tls-ca FILE` (a rediss:// store whose certificate a private CA signed).
 * Checked against a real TLS Redis (its own throwaway CA) paging a running guest: without
 * the CA the store is refused and the VM untouched; bad option combinations are refused
 * by the CLI; with both options the stored values are deflated envelopes; a daemon killed
 * with -9 is replaced by one that re-opens the store the same way (state file) and the
 * guest's pages stay intact through it all.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { bootDomain } from './helpers/libvirt.ts';
import { startDaemon, holdsUffd } from './helpers/daemon.ts';
import { REPO_ROOT } from './helpers/guest.ts';
import { makeTlsCerts, startRedis } from './helpers/servers.ts';
import { openRaw, parseStoreUri } from '../kvstore/index.ts';
import { DEFAULT_TIMEOUTS } from '../kvstore/raw.ts';

const WORKLOAD = { sizeMiB: 64, pattern: 'random' as const, write: 0.25, seed: 73, passes: 0, pauseMs: 100 };
const F_DEFLATE = 1;  // kvstore/envelope.ts: flags byte (offset 3) of a page envelope

/** The flags byte and length of up to `n` of the VM's stored values, read past the envelope. */
async function storedValues(uri: string, ca: string, vm: string, n = 256): Promise<{ flags: number; length: number }[]> {
  const spec = parseStoreUri(uri) as Extract<ReturnType<typeof parseStoreUri>, { kind: 'redis' }>;
  const raw = await openRaw(spec, uri, DEFAULT_TIMEOUTS, { ca: fs.readFileSync(ca) });
  try {
    const pages = (await raw.list(vm)).slice(0, n);
    const values = await raw.getRaw(vm, pages);
    return values.filter((v): v is Buffer => !!v).map((v) => ({ flags: v[3]!, length: v.length }));
  } finally { await raw.close(); }
}

test('attach --compress --tls-ca: a rediss:// store with a private CA, pages deflated; refused without the CA or with options that do not fit, VM untouched; a restarted daemon re-opens the store the same way', async (t) => {
  const certs = await makeTlsCerts(t);
  // appendonly: a store that outlives the daemon, so a killed daemon's VM is taken over.
  const redis = await startRedis(t, { tls: certs, persistence: true });
  const dom = await bootDomain(t, { memMiB: 192, template: 'memfd', workload: WORKLOAD });
  const d = await startDaemon(t);
  await dom.console.waitForPasses(1, 120_000);

  const untouched = async (what: string) => {
    t.false(holdsUffd(dom.pid), `${what}: no userfaultfd in QEMU`);
    t.deepEqual(JSON.parse((await d.cli('list', '--json')).stdout), { vms: [] }, `${what}: nothing attached`);
  };
  const fileUri = `file://${path.join(certs.dir, 'pages')}`;
  const cases: [string[], number, string, RegExp][] = [
    // The system does not trust the throwaway CA: the store cannot be reached, and the error says how to fix it.
    [['--store', redis.uri], 1, 'STORE_UNREACHABLE', /not reachable: .*certificate.*give its certificate with --tls-ca FILE/],
    [['--store', redis.uri, '--tls-ca', path.join(certs.dir, 'missing.pem')], 2, 'BAD_TLS_CA', /--tls-ca .*missing\.pem: cannot read it/],
    [['--store', redis.uri, '--tls-ca', certs.key], 2, 'BAD_TLS_CA', /holds no PEM certificate/],
    [['--store', fileUri, '--tls-ca', certs.ca], 2, 'USAGE', /--tls-ca is for stores reached over TLS/],
    [['--store', redis.uri, '--tls-ca', certs.ca, '--compress', '--no-compress'], 2, 'USAGE', /--compress and --no-compress contradict each other/],
  ];
  for (const [args, exit, code, re] of cases) {
    const r = await d.cli('attach', dom.name, '--local', '32M', ...args);
    t.is(r.code, exit, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
    // (a usage error points to --help instead of printing a code)
    t.true(code === 'USAGE' ? r.stderr.includes('see: elasticmem attach --help') : r.stderr.includes(`[${code}]`), `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, re, args.join(' '));
    await untouched(args.join(' '));
  }
  t.false(fs.existsSync(path.join(certs.dir, 'pages')), 'a refused attach did not even create a store');

  // A relative --tls-ca is the caller's: the daemon gets its absolute path.
  const a = await d.cli('attach', dom.name, '--local', '32M', '--store', redis.uri, '--tls-ca', path.relative(REPO_ROOT, certs.ca), '--compress', '--json');
  t.is(a.code, 0, a.stderr);
  const att = JSON.parse(a.stdout);
  t.true(att.compressed);
  t.is(att.tlsCaFile, certs.ca);
  const entry = JSON.parse(fs.readFileSync(d.state, 'utf8')).vms[0];
  t.like(entry, { compress: true, tlsCaFile: certs.ca }, 'the state file records how to re-open the store');
  await dom.console.waitForPasses(dom.console.passes.length + 2, 120_000);
  const st = JSON.parse((await d.cli('stats', dom.name, '--json')).stdout);
  t.true(st.remotePages > 0 && st.storeWrites > 0, 'pages went to the TLS store');

  // Guest pages are kernel text, page tables, the workload's pages: many deflate well.
  const vals = await storedValues(redis.uri, certs.ca, dom.uuid);
  const deflated = vals.filter((v) => v.flags & F_DEFLATE);
  t.true(vals.length > 0, 'values stored for the VM');
  t.true(deflated.length > 0, `some stored values are deflated (${deflated.length} of ${vals.length})`);
  t.true(deflated.every((v) => v.length < 4096), 'a deflated value is smaller than the page');
  t.log(`${deflated.length} of ${vals.length} sampled values deflated, mean ${Math.round(deflated.reduce((s, v) => s + v.length, 0) / Math.max(1, deflated.length))} bytes`);

  // kill -9: the next daemon takes the VM over with the same CA and compression.
  await d.kill9();
  const d2 = await d.restart();
  await d2.waitLog(new RegExp(`\\[${dom.name}\\] re-attached after daemon restart`), 60_000);
  t.regex(d2.log(), /attached \(took over.*\(pages compressed; TLS CA .*ca\.pem\)/);
  await dom.console.waitForPasses(dom.console.passes.length + 2, 120_000);
  const after = JSON.parse((await d2.cli('stats', dom.name, '--json')).stdout);
  t.is(after.storeState, 'ok');
  t.is(after.lostPages, 0);
  t.like(JSON.parse((await d2.cli('list', '--json')).stdout).vms[0], { compressed: true, tlsCaFile: certs.ca });

  const r = await d2.cli('detach', dom.name);
  t.is(r.code, 0, r.stderr);
  t.false(holdsUffd(dom.pid));
  await dom.console.waitForPasses(dom.console.passes.length + 2, 120_000);
  t.deepEqual(dom.console.passes.filter((p) => p.corrupt !== 0), []);
  t.regex(d.log(), /attached: .*store rediss:\/\/127\.0\.0\.1:\d+ \(pages compressed; TLS CA .*ca\.pem\)/);
});
