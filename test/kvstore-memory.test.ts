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
