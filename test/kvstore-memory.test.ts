import test from 'ava';
import { openStore } from '../kvstore/index.ts';
import { MemoryStore } from '../kvstore/memory.ts';
import { loadNative } from '../native/index.ts';
import { runConformance, pageOf, vmId, expectCode } from './kvstore-conformance.ts';

runConformance(test, 'memory', async (t) => {
  const open = async () => {
    const s = await openStore('memory:');
    t.teardown(() => s.close());
    return s;
  };
  return { store: await open(), reopen: open, survivesRestart: false };
}, { server: false, envelope: false });

test.serial('memory: is the native store, with a handle for the pager', async (t) => {
  const s = await openStore('memory:');
  t.teardown(() => s.close());
  t.true(s instanceof MemoryStore);
  t.true(s.capabilities.native);
  t.false(s.capabilities.persistent);
  const h = (s as MemoryStore).nativeHandle();
  // The handle is the native store itself: a page put through JS is visible through the raw addon.
  const vm = vmId('native');
  await s.put(vm, [3], [pageOf(1, 3)]);
  const raw = loadNative().memStoreGet(h, vm, [3]);
  t.true(raw[0]!.equals((await s.get(vm, [3]))[0]!));
  t.throws(() => loadNative().memStoreGet({}, vm, [3]), { code: 'EM_BAD_ARG' } as never);
});

test.serial('memory: lz4 compression stores compressible pages smaller, random pages raw', async (t) => {
  const plain = await openStore('memory:');
  const lz = await openStore('memory:', { compress: true });
  t.teardown(() => Promise.all([plain.close(), lz.close()]));
  const vm = vmId('lz4');
  const zero = Buffer.alloc(4096);
  const text = Buffer.alloc(4096, 'elastic memory pages ');
  const rnd = pageOf(9, 2);
  for (const s of [plain, lz]) await s.put(vm, [0, 1, 2], [zero, text, rnd]);
  const back = await lz.get(vm, [0, 1, 2]);
  t.true(back[0]!.equals(zero) && back[1]!.equals(text) && back[2]!.equals(rnd));
  const up = await plain.usage(vm);
  const uz = await lz.usage(vm);
  t.is(up.bytes, 3 * 4096);
  t.true(uz.bytes < 4096 + 400, `compressed usage ${uz.bytes} bytes (raw page + two small blocks)`);
  t.true(uz.bytes >= 4096, 'an incompressible page is kept whole');
});

test.serial('memory: a closed store fails typed; the pager keeps its own reference', async (t) => {
  const s = (await openStore('memory:')) as MemoryStore;
  const h = s.nativeHandle();
  const vm = vmId('ref');
  await s.put(vm, [1], [pageOf(2, 1)]);
  await s.close();
  await expectCode(t, () => s.get(vm, [1]), 'STORE_CLOSED');
  // Whoever holds the handle (the pager) still reaches the pages.
  t.not(loadNative().memStoreGet(h, vm, [1])[0], null);
});

// The store's open-addressing tables (native/memstore.cc): thousands of random puts,
// overwrites and deletes over keys shaped like the pager's (region << 32 | page), checked
// against a Map after every phase. Deletes shift later probe-run members back; a wrong
// shift loses or hides pages, which get/list/usage below would show.
test.serial('memory: the native tables agree with a reference map under random put/overwrite/delete', (t) => {
  const n = loadNative();
  for (const compress of [false, true]) {
    const h = n.memStoreCreate({ compress });
    const vms = [vmId('tab-a'), vmId('tab-b')];
    const ref = new Map<string, Map<number, number>>(vms.map((v) => [v, new Map()]));
    let seed = 12345;
    const rnd = (m: number) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % m; };
    const page = (tag: number) => { const b = Buffer.alloc(4096, tag & 0xff); b.writeUInt32LE(tag, 0); if (tag % 2) for (let i = 8; i < 4096; i += 4) b.writeUInt32LE((tag * 2654435761 + i) >>> 0, i); return b; };
    for (let round = 0; round < 6; round++) {
      for (let op = 0; op < 3000; op++) {
        const vm = vms[rnd(2)]!;
        const key = rnd(3) * 2 ** 32 + rnd(2000);
        const m = ref.get(vm)!;
        if (rnd(3) === 0) { n.memStoreDelete(h, vm, [key]); m.delete(key); }
        else { const tag = rnd(1e9); n.memStorePut(h, vm, [key], [page(tag)]); m.set(key, tag); }
      }
      for (const vm of vms) {
        const m = ref.get(vm)!;
        t.deepEqual([...n.memStoreList(h, vm)].sort((a, b) => a - b), [...m.keys()].sort((a, b) => a - b), `round ${round} list`);
        t.is(n.memStoreUsage(h, vm).pages, m.size);
        const keys = [...m.keys()];
        const got = n.memStoreGet(h, vm, keys);
        t.true(keys.every((k, i) => got[i] !== null && got[i]!.equals(page(m.get(k)!))), `round ${round} contents`);
        const absent = [7 * 2 ** 32 + 1, 2001];
        t.deepEqual(n.memStoreGet(h, vm, absent), [null, null]);
      }
    }
    n.memStoreDropVm(h, vms[0]!);
    t.deepEqual(n.memStoreList(h, vms[0]!), []);
    t.is(n.memStoreUsage(h).pages, ref.get(vms[1]!)!.size);
  }
});
