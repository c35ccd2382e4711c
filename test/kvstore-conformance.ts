/**
 * The one conformance suite every page store runs (keyv-style): each adapter's test
 * file calls runConformance(test, name, factory) with a factory that starts its real
 * server and opens the store. Tests run serially (servers are heavy on 2 cores); every
 * test writes under its own VM ids, so a shared server does not couple tests.
 */
import type { TestFn, ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import type { PageStore } from '../kvstore/types.ts';
import { PAGE_SIZE } from '../kvstore/types.ts';
import { EnvelopeStore } from '../kvstore/envelope.ts';
import { openStore } from '../kvstore/index.ts';
import type { OpenStoreOptions } from '../kvstore/index.ts';

export interface Fixture {
  store: PageStore;
  /** Open another store on the same backend (closed at teardown by the factory). */
  reopen(options?: OpenStoreOptions): Promise<PageStore>;
  /** Pages survive restart() (a server with persistence, or an embedded persistent store). */
  survivesRestart: boolean;
  /** Restart the server (or, for embedded stores, nothing: reopen covers the monitor restart). */
  restart?(): Promise<void>;
  /** Take the server down until teardown. */
  stop?(): Promise<void>;
  /** Freeze the server (SIGSTOP) and thaw it. */
  pause?(): void;
  resume?(): void;
}

export interface FixtureOptions {
  /** The test restarts, stops or pauses the server: give it a server of its own. */
  fresh: boolean;
}

export type Factory = (t: ExecutionContext, opts: FixtureOptions) => Promise<Fixture>;

/** A server a test started and controls (test/helpers/servers.ts, the Aerospike mock). */
export interface ControlledServer {
  restart(): Promise<void>;
  stop(): Promise<void>;
  pause(): void;
  resume(): void;
}

/** The fixture of the store at `uri` on `server`; every store it opens is closed at teardown. */
export async function serverFixture(t: ExecutionContext, server: ControlledServer, uri: string, survivesRestart: boolean): Promise<Fixture> {
  const open = async (o: OpenStoreOptions = {}) => {
    const s = await openStore(uri, o);
    t.teardown(() => s.close());
    return s;
  };
  return {
    store: await open(),
    reopen: open,
    survivesRestart,
    restart: () => server.restart(),
    stop: () => server.stop(),
    pause: () => server.pause(),
    resume: () => server.resume(),
  };
}

let vmCounter = 0;
/** A VM id unique to this run and test. */
export function vmId(label: string): string {
  return `${label}-${process.pid}-${++vmCounter}-${crypto.randomBytes(3).toString('hex')}`;
}

/** A 4 KiB page whose content depends on (seed, page): stamps every 512 bytes plus random noise. */
export function pageOf(seed: number, page: number, noise = true): Buffer {
  const b = noise ? crypto.randomBytes(PAGE_SIZE) : Buffer.alloc(PAGE_SIZE);
  for (let o = 0; o < PAGE_SIZE; o += 512) {
    b.writeUInt32LE(seed >>> 0, o);
    b.writeDoubleLE(page, o + 4);
  }
  return b;
}

/** Check a page made by pageOf without keeping the original (for 100,000 pages). */
function stampOk(b: Buffer | null, seed: number, page: number): boolean {
  if (!b || b.length !== PAGE_SIZE) return false;
  for (let o = 0; o < PAGE_SIZE; o += 512) if (b.readUInt32LE(o) !== seed >>> 0 || b.readDoubleLE(o + 4) !== page) return false;
  return true;
}

export async function expectCode(t: ExecutionContext, p: Promise<unknown> | (() => unknown), code: string, what = ''): Promise<Error> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    t.is((e as { code?: string }).code, code, `${what}: expected ${code}, got ${(e as Error).message}`);
    return e as Error;
  }
  t.fail(`${what}: expected ${code}, but the call succeeded`);
  return new Error('no error');
}

/** Retry `fn` until it succeeds; every failure meanwhile must be STORE_UNAVAILABLE. */
async function eventually<T>(t: ExecutionContext, fn: () => Promise<T>, ms = 15_000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code !== 'STORE_UNAVAILABLE') t.fail(`while the server comes back: expected STORE_UNAVAILABLE, got ${code}: ${(e as Error).message}`);
      if (Date.now() > until) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/**
 * A server shared by the non-destructive tests of one file: started on first use,
 * stopped after the file's last test (registered now, at module level, as ava requires).
 */
export function sharedServer<T>(test: TestFn, start: (ctx: { teardown(fn: () => unknown): void }) => Promise<T>): () => Promise<T> {
  const cleanups: (() => unknown)[] = [];
  let started: Promise<T> | undefined;
  test.after.always(async () => {
    for (const fn of cleanups.reverse()) await fn();
  });
  return () => (started ??= start({ teardown: (fn) => cleanups.push(fn) }));
}

export interface Traits {
  /** A network server stands behind the store (restart / down / frozen tests apply). */
  server: boolean;
  /** The store is wrapped in the page envelope (integrity tests apply). */
  envelope: boolean;
  /**
   * One connection per server, answered in order (RESP, memcached): behind a request
   * that timed out unanswered, new ones are refused at once, unsent (kvstore/errors.ts wedged()).
   */
  inOrder?: boolean;
}

export function runConformance(test: TestFn, name: string, factory: Factory, traits: Traits): void {
  const serial = test.serial;

  serial(`${name}: round trip of 4 KiB pages (keys 0 .. 2^53, region-relative keys)`, async (t) => {
    const { store } = await factory(t, { fresh: false });
    const vm = vmId('rt');
    const pages = [0, 1, 2, 4095, 2 ** 32, 2 ** 32 + 7, 3 * 2 ** 32 + 123456, 2 ** 53 - 1, 2 ** 53];
    const data = pages.map((p) => pageOf(1, p));
    await store.put(vm, pages, data);
    const got = await store.get(vm, pages);
    t.is(got.length, pages.length);
    for (let i = 0; i < pages.length; i++) t.true(got[i]!.equals(data[i]!), `page ${pages[i]} round trip`);
    t.deepEqual((await store.list(vm)).sort((a, b) => a - b), [...pages].sort((a, b) => a - b));
    const u = await store.usage(vm);
    t.is(u.pages, pages.length);
    t.true(u.bytes > 0);
    // An overwrite replaces the page.
    const newer = pageOf(2, 4095);
    await store.put(vm, [4095], [newer]);
    t.true((await store.get(vm, [4095]))[0]!.equals(newer));
    t.is((await store.usage(vm)).pages, pages.length);
    await store.dropVm(vm);
  });

  serial(`${name}: batches of 1 to 1024 pages`, async (t) => {
    const { store } = await factory(t, { fresh: false });
    const vm = vmId('batch');
    let base = 0;
    for (const n of [1, 2, 3, 16, 17, 255, 256, 1000, 1024]) {
      // Scattered keys (stride 37): exercises per-slot / per-server splitting.
      const pages = Array.from({ length: n }, (_, i) => base + i * 37);
      base += n * 37 + 1;
      const data = pages.map((p) => pageOf(n, p));
      await store.put(vm, pages, data);
      const got = await store.get(vm, pages);
      t.is(got.length, n);
      t.true(got.every((g, i) => g !== null && g.equals(data[i]!)), `batch of ${n}`);
    }
    t.deepEqual(await store.get(vm, []), []);
    await store.put(vm, [], []);
    await store.delete(vm, []);
    await store.dropVm(vm);
  });

  serial(`${name}: missing pages are null`, async (t) => {
    const { store } = await factory(t, { fresh: false });
    const vm = vmId('miss');
    t.deepEqual(await store.get(vm, [0, 1, 2 ** 40]), [null, null, null]);
    await store.put(vm, [5], [pageOf(3, 5)]);
    const got = await store.get(vm, [4, 5, 6]);
    t.is(got[0], null);
    t.true(stampOk(got[1]!, 3, 5));
    t.is(got[2], null);
    t.deepEqual(await store.list(vmId('never')), []);
    t.deepEqual(await store.usage(vmId('never')), { pages: 0, bytes: 0 });
    await store.dropVm(vm);
  });

  serial(`${name}: deletes`, async (t) => {
    const { store } = await factory(t, { fresh: false });
    const vm = vmId('del');
    const pages = Array.from({ length: 100 }, (_, i) => i);
    await store.put(vm, pages, pages.map((p) => pageOf(4, p)));
    const gone = pages.filter((p) => p % 3 === 0);
    await store.delete(vm, gone);
    await store.delete(vm, [5000, 5001]); // missing: not an error
    const got = await store.get(vm, pages);
    for (const p of pages) {
      if (p % 3 === 0) t.is(got[p], null, `deleted page ${p}`);
      else t.true(stampOk(got[p]!, 4, p), `kept page ${p}`);
    }
    t.deepEqual((await store.list(vm)).sort((a, b) => a - b), pages.filter((p) => p % 3 !== 0));
    t.is((await store.usage(vm)).pages, pages.length - gone.length);
    await store.dropVm(vm);
    t.deepEqual(await store.list(vm), []);
  });

  serial(`${name}: isolation between VMs (get, list, usage, dropVm)`, async (t) => {
    const { store } = await factory(t, { fresh: false });
    // Names that prefix or resemble each other, and characters that are special in keys and patterns.
    const base = vmId('iso');
    const vms = [base, `${base}0`, `${base}:x`, `${base} *?[]{}%`, `${base}\u00e9`];
    const pages = [0, 1, 2, 63, 64, 2 ** 33];
    for (let v = 0; v < vms.length; v++) await store.put(vms[v]!, pages, pages.map((p) => pageOf(100 + v, p)));
    await store.put(vms[1]!, [999], [pageOf(101, 999)]);
    for (let v = 0; v < vms.length; v++) {
      const got = await store.get(vms[v]!, pages);
      t.true(got.every((g, i) => stampOk(g, 100 + v, pages[i]!)), `vm #${v} reads its own pages`);
      t.is((await store.get(vms[v]!, [999]))[0] === null, v !== 1, `page 999 only in vm #1 (vm #${v})`);
      const want = v === 1 ? [...pages, 999] : pages;
      t.deepEqual((await store.list(vms[v]!)).sort((a, b) => a - b), [...want].sort((a, b) => a - b), `list of vm #${v}`);
      t.is((await store.usage(vms[v]!)).pages, want.length, `usage of vm #${v}`);
    }
    await store.dropVm(vms[0]!);
    t.deepEqual(await store.list(vms[0]!), []);
    t.deepEqual(await store.get(vms[0]!, pages), pages.map(() => null));
    for (let v = 1; v < vms.length; v++) {
      t.true((await store.get(vms[v]!, pages)).every((g, i) => stampOk(g, 100 + v, pages[i]!)), `vm #${v} intact after dropping vm #0`);
      t.is((await store.usage(vms[v]!)).pages, v === 1 ? pages.length + 1 : pages.length);
    }
    const total = await store.usage();
    t.true(total.pages >= 4 * pages.length + 1, 'usage() counts every VM');
    for (const vm of vms) await store.dropVm(vm);
  });

  serial(`${name}: 100,000 pages`, async (t) => {
    t.timeout(120_000);
    const { store } = await factory(t, { fresh: false });
    const vm = vmId('big');
    const N = 100_000;
    const B = 1024;
    const seed = 77;
    // Pages are stamped (no random noise) to keep generation cheap; the stamp holds the page number.
    for (let i = 0; i < N; i += B) {
      const pages = Array.from({ length: Math.min(B, N - i) }, (_, j) => i + j);
      await store.put(vm, pages, pages.map((p) => pageOf(seed, p, false)));
    }
    t.is((await store.usage(vm)).pages, N);
    const listed = await store.list(vm);
    t.is(listed.length, N);
    t.is(new Set(listed).size, N);
    let bad = 0;
    for (let i = 0; i < N; i += B) {
      const pages = Array.from({ length: Math.min(B, N - i) }, (_, j) => i + j);
      const got = await store.get(vm, pages);
      for (let j = 0; j < pages.length; j++) if (!stampOk(got[j]!, seed, pages[j]!)) bad++;
    }
    t.is(bad, 0, 'every one of 100,000 pages reads back intact');
    await store.dropVm(vm);
    t.is((await store.usage(vm)).pages, 0);
  });

  serial(`${name}: concurrent batches`, async (t) => {
    const { store } = await factory(t, { fresh: false });
    const vm = vmId('conc');
    const other = vmId('conc-other');
    const K = 16;
    const per = 64;
    const seeds = Array.from({ length: K }, (_, k) => k + 1);
    // 16 puts in flight at once, two VMs, overlapping page numbers.
    await Promise.all(seeds.map((s, k) => {
      const pages = Array.from({ length: per }, (_, j) => k * per + j);
      return store.put(k % 2 ? other : vm, pages, pages.map((p) => pageOf(s, p)));
    }));
    // Mixed gets and puts in flight at once.
    const results = await Promise.all(seeds.map(async (s, k) => {
      const pages = Array.from({ length: per }, (_, j) => k * per + j);
      const got = await store.get(k % 2 ? other : vm, pages);
      if (k % 4 === 0) await store.put(vm, [100_000 + k], [pageOf(s, 100_000 + k)]);
      return got.every((g, j) => stampOk(g, s, pages[j]!));
    }));
    t.deepEqual(results, seeds.map(() => true));
    t.is((await store.usage(vm)).pages, (K / 2) * per + K / 4);
    t.is((await store.usage(other)).pages, (K / 2) * per);
    await store.dropVm(vm);
    await store.dropVm(other);
  });

  serial(`${name}: bad arguments are rejected and change nothing`, async (t) => {
    const { store } = await factory(t, { fresh: false });
    const vm = vmId('bad');
    await expectCode(t, () => store.put(vm, [1], [Buffer.alloc(100)]), 'EM_BAD_ARG', 'short page');
    await expectCode(t, () => store.put(vm, [1, 2], [pageOf(1, 1)]), 'EM_BAD_ARG', 'length mismatch');
    await expectCode(t, () => store.put(vm, [1, 1.5], [pageOf(1, 1), pageOf(1, 2)]), 'EM_BAD_ARG', 'fractional page');
    await expectCode(t, () => store.get(vm, [-1]), 'EM_BAD_ARG', 'negative page');
    await expectCode(t, () => store.get(vm, [2 ** 53 + 2]), 'EM_BAD_ARG', 'page beyond 2^53');
    await expectCode(t, () => store.get('', [1]), 'EM_BAD_ARG', 'empty vm');
    t.deepEqual(await store.list(vm), [], 'nothing was stored');
  });

  serial(`${name}: capabilities are declared`, async (t) => {
    const { store } = await factory(t, { fresh: false });
    t.is(typeof store.capabilities.persistent, 'boolean');
    t.true(store.capabilities.maxBatch >= 1024);
    t.is(typeof store.capabilities.native, 'boolean');
    t.false(/:[^:@/]+@/.test(store.uri.replace('***@', '')), 'no password in store.uri');
  });

  serial(traits.server ? `${name}: reconnect after the server restarts` : `${name}: close and reopen (a monitor restart)`, async (t) => {
    t.timeout(60_000);
    const fx = await factory(t, { fresh: true });
    const { store } = fx;
    const vm = vmId('restart');
    const pages = Array.from({ length: 50 }, (_, i) => i);
    await store.put(vm, pages, pages.map((p) => pageOf(9, p)));
    if (!traits.server) {
      // Embedded store: "restart" is the monitor's: close and open again.
      await store.close();
      const again = await fx.reopen();
      const got = await again.get(vm, pages);
      if (fx.survivesRestart) t.true(got.every((g, i) => stampOk(g, 9, pages[i]!)), 'pages survive closing and reopening');
      else t.true(got.every((g) => g === null), 'a new non-persistent store starts empty');
      await again.dropVm(vm);
      return;
    }
    if (!fx.restart) return t.fail('a server fixture must provide restart()');
    await fx.restart();
    // The first operations may fail while the client reconnects, always as STORE_UNAVAILABLE.
    const got = await eventually(t, () => store.get(vm, pages));
    if (fx.survivesRestart) t.true(got.every((g, i) => stampOk(g, 9, pages[i]!)), 'pages survive a server restart');
    else t.true(got.every((g) => g === null), 'a server without persistence comes back empty (reported, not invented)');
    await store.put(vm, [7], [pageOf(10, 7)]);
    t.true(stampOk((await store.get(vm, [7]))[0]!, 10, 7), 'writes work again after the restart');
    await store.dropVm(vm);
  });

  serial(traits.server ? `${name}: typed errors when the server is down` : `${name}: typed errors once closed`, async (t) => {
    t.timeout(60_000);
    const fx = await factory(t, { fresh: true });
    if (!traits.server || !fx.stop) {
      if (traits.server) return t.fail('a server fixture must provide stop()');
      // Embedded store: there is no server; a closed store fails typed instead.
      await fx.store.close();
      await expectCode(t, () => fx.store.get(vmId('down'), [1]), 'STORE_CLOSED', 'get on a closed store');
      await expectCode(t, () => fx.store.put(vmId('down'), [1], [pageOf(1, 1)]), 'STORE_CLOSED', 'put on a closed store');
      return;
    }
    const store = await fx.reopen({ opTimeoutMs: 1500 });
    const vm = vmId('down');
    await store.put(vm, [1], [pageOf(1, 1)]);
    await fx.stop();
    for (const [what, op] of [
      ['get', () => store.get(vm, [1, 2])],
      ['put', () => store.put(vm, [3], [pageOf(1, 3)])],
      ['delete', () => store.delete(vm, [1])],
      ['list', () => store.list(vm)],
    ] as const) {
      const t0 = Date.now();
      await expectCode(t, op, 'STORE_UNAVAILABLE', what);
      t.true(Date.now() - t0 < 6000, `${what} failed within 6 s (took ${Date.now() - t0} ms)`);
    }
    const t0 = Date.now();
    await expectCode(t, () => fx.reopen(), 'STORE_UNAVAILABLE', 'openStore on a down server');
    t.true(Date.now() - t0 < 4000, `openStore failed within 4 s (took ${Date.now() - t0} ms)`);
  });

  if (traits.server) serial(`${name}: a frozen server (SIGSTOP) times out typed, then recovers`, async (t) => {
    t.timeout(60_000);
    const fx = await factory(t, { fresh: true });
    if (!fx.pause || !fx.resume) return t.fail('a server fixture must provide pause() and resume()');
    const store = await fx.reopen({ opTimeoutMs: 1000 });
    const vm = vmId('frozen');
    await store.put(vm, [1, 2], [pageOf(5, 1), pageOf(5, 2)]);
    fx.pause();
    let resumed = false;
    t.teardown(() => { if (!resumed) fx.resume!(); });
    const t0 = Date.now();
    await expectCode(t, () => store.get(vm, [1, 2]), 'STORE_UNAVAILABLE', 'get while frozen');
    const took = Date.now() - t0;
    t.true(took >= 900 && took < 4000, `timed out after the op timeout (took ${took} ms)`);
    if (traits.inOrder) {
      // Retries against a frozen server are held back, unsent, behind the unanswered
      // request (queued on the socket they would grow its buffer without bound), and
      // fail at their own time-out: this write never reaches the server (the pages read
      // back below are still the first write's). (The get went to each server holding
      // one of its pages; the first part's time-out failed it: let the others' pass too.)
      await new Promise((r) => setTimeout(r, 200));
      const e = await store.put(vm, [1, 2], [pageOf(9, 1), pageOf(9, 2)]).then(() => null, (x: Error & { code?: string }) => x);
      t.is(e?.code, 'STORE_UNAVAILABLE', e?.message);
      t.regex(e?.message ?? '', /this one was not sent/);
      // A request made while held is sent as soon as the server answers again.
      const waiting = store.get(vm, [1, 2]);
      await new Promise((r) => setTimeout(r, 200));
      fx.resume();
      resumed = true;
      const back = await waiting;
      t.true(stampOk(back[0]!, 5, 1) && stampOk(back[1]!, 5, 2), 'the held get was sent once the server answered; the held put never was');
    }
    if (!resumed) fx.resume();
    resumed = true;
    const got = await eventually(t, () => store.get(vm, [1, 2]));
    t.true(stampOk(got[0]!, 5, 1) && stampOk(got[1]!, 5, 2), 'pages intact after the freeze');
    // A write that timed out while frozen must never land after a later write of the same page.
    fx.pause();
    resumed = false;
    await expectCode(t, () => store.put(vm, [1], [pageOf(6, 1)], [6]), 'STORE_UNAVAILABLE', 'put while frozen');
    fx.resume();
    resumed = true;
    await eventually(t, () => store.put(vm, [1], [pageOf(7, 1)], [7]));
    await new Promise((r) => setTimeout(r, 300)); // let any straggler land
    const latest = (await store.get(vm, [1], [7]))[0]; // version 7 expected: a stale 6 would be STORE_INTEGRITY
    t.true(stampOk(latest!, 7, 1), 'the later write wins');
    await store.dropVm(vm);
  });

  // ------------------------------------------------------------ envelope-wrapped stores
  if (traits.envelope) serial(`${name}: integrity — flipped bit, page under another key, wrong key: detected, never returned`, async (t) => {
    const fx = await factory(t, { fresh: false });
    if (!(fx.store instanceof EnvelopeStore)) return t.fail('openStore must wrap this adapter in the page envelope');
    const raw = fx.store.raw;
    const vm = vmId('integ');
    const pages = [10, 11, 12];
    const data = pages.map((p) => pageOf(42, p));
    await fx.store.put(vm, pages, data, [1, 1, 1]);
    const [v10, v11] = (await raw.getRaw(vm, [10, 11])) as Buffer[];

    // 1. One flipped bit anywhere (payload, header, check) is detected.
    for (const at of [20, 2000, v10!.length - 1, 5, 13]) {
      const bad = Buffer.from(v10!);
      bad[at]! ^= 0x10;
      await raw.putRaw(vm, [10], [bad]);
      await expectCode(t, () => fx.store.get(vm, [10, 11]), 'STORE_INTEGRITY', `bit flipped at byte ${at}`);
    }
    // 2. A page stored under another page's key (and under another VM) is detected.
    await raw.putRaw(vm, [10], [v11!]);
    await expectCode(t, () => fx.store.get(vm, [10]), 'STORE_INTEGRITY', "page 11's value under key 10");
    const vm2 = vmId('integ-other');
    await raw.putRaw(vm2, [11], [v11!]);
    await expectCode(t, () => fx.store.get(vm2, [11]), 'STORE_INTEGRITY', "another VM's page");
    // 3. A stale version is detected when the caller says which version it expects.
    await raw.putRaw(vm, [10], [v10!]);
    t.true((await fx.store.get(vm, [10], [1]))[0]!.equals(data[0]!), 'the restored value passes');
    await expectCode(t, () => fx.store.get(vm, [10], [2]), 'STORE_INTEGRITY', 'version 1 when 2 was expected');
    // 4. Truncated or foreign values.
    await raw.putRaw(vm, [12], [v10!.subarray(0, 100)]);
    await expectCode(t, () => fx.store.get(vm, [12]), 'STORE_INTEGRITY', 'truncated value');
    await raw.putRaw(vm, [12], [Buffer.alloc(4096, 0xab)]);
    await expectCode(t, () => fx.store.get(vm, [12]), 'STORE_INTEGRITY', 'raw page without envelope');
    // 5. Encryption: a wrong key, a missing key, a plaintext page where a key is required.
    const key1 = crypto.randomBytes(32);
    const enc = new EnvelopeStore(raw, { key: key1 });
    const wrong = new EnvelopeStore(raw, { key: crypto.randomBytes(32) });
    const plain = new EnvelopeStore(raw, {});
    await enc.put(vm, [20, 21], [data[0]!, data[1]!]);
    t.true((await enc.get(vm, [20]))[0]!.equals(data[0]!), 'encrypted round trip');
    const stored = (await raw.getRaw(vm, [20]))[0]!;
    t.false(stored.includes(data[0]!.subarray(100, 200)), 'the stored value does not contain the plaintext');
    await expectCode(t, () => wrong.get(vm, [20]), 'STORE_INTEGRITY', 'wrong key');
    await expectCode(t, () => plain.get(vm, [20]), 'STORE_INTEGRITY', 'encrypted page read without a key');
    await expectCode(t, () => enc.get(vm, [11]), 'STORE_INTEGRITY', 'plaintext page where encryption is required');
    const [c20, c21] = (await raw.getRaw(vm, [20, 21])) as Buffer[];
    await raw.putRaw(vm, [20], [c21!]);
    await expectCode(t, () => enc.get(vm, [20]), 'STORE_INTEGRITY', 'encrypted page under another key');
    const flipped = Buffer.from(c20!);
    flipped[flipped.length - 1]! ^= 1;
    await raw.putRaw(vm, [20], [flipped]);
    await expectCode(t, () => enc.get(vm, [20]), 'STORE_INTEGRITY', 'flipped bit in ciphertext');
    // 6. Compression: compressible pages shrink and round trip; incompressible ones stay raw.
    const z = new EnvelopeStore(raw, { compress: true, key: key1 });
    const zeros = Buffer.alloc(PAGE_SIZE, 0);
    await z.put(vm, [30, 31], [zeros, data[2]!]);
    const [s30, s31] = (await raw.getRaw(vm, [30, 31])) as Buffer[];
    t.true(s30!.length < 200, `a zero page compresses (${s30!.length} bytes stored)`);
    t.true(s31!.length >= PAGE_SIZE, 'a random page is stored uncompressed');
    const back = await z.get(vm, [30, 31]);
    t.true(back[0]!.equals(zeros) && back[1]!.equals(data[2]!), 'compressed + encrypted round trip');
    await fx.store.dropVm(vm);
    await fx.store.dropVm(vm2);
  });
}
