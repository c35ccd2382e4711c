/**
 * The daemon's per-QEMU records of paged RAM blocks (backend/daemon/memory-records.ts),
 * which let a take-over find the RAM without asking QEMU, and their check against the
 * live process (memoryFromRecord): a block must still be mapped the same way and
 * registered with a userfaultfd (smaps `um`) over its whole range. Against a real
 * process (test/fixtures/target.c) under a real pager.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTarget } from './helpers/target.ts';
import { Pager } from '../native/pager.ts';
import { openStore } from '../kvstore/index.ts';
import { MemoryRecords } from '../backend/daemon/memory-records.ts';
import { memoryFromRecord, regionKeyId, type GuestMemoryRecord } from '../backend/targets/ramblocks.ts';
import { readUffdRegistered } from '../backend/targets/procmaps.ts';
import { startTimeOf } from '../native/proc-start.ts';
import type { ElasticmemError } from '../native/errors.ts';

const MiB = 2 ** 20;

/** Records in a fresh folder, one record to write, and this process's start time. */
function freshRecords(t: { teardown(fn: () => void): void }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'em-records-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const recs = new MemoryRecords(path.join(dir, 'memory'));
  const rec: GuestMemoryRecord = { regions: [{ name: 'pc.ram', start: '0x7f0000000000', length: 256 * MiB, kind: 'memfd' }], guestRamBytes: 256 * MiB, memoryDevices: [] };
  return { dir, recs, rec, me: startTimeOf(process.pid)! };
}

test('records: written and read per process and VM, records of ended processes swept', (t) => {
  const { dir, recs, rec, me } = freshRecords(t);
  t.is(recs.read(process.pid, me, 'vm-a'), null, 'none yet');
  recs.write(process.pid, me, 'vm-a', rec, 'file:///var/lib/em');
  t.deepEqual(recs.read(process.pid, me, 'vm-a'), rec);
  t.is(recs.storeOf(process.pid, me, 'vm-a'), 'file:///var/lib/em', 'and the store its pages go to');
  t.is(recs.storeOf(process.pid, me, 'vm-b'), null);
  t.is(fs.statSync(path.join(dir, 'memory', `${process.pid}-${me}.json`)).mode & 0o777, 0o600);
  t.is(recs.read(process.pid, me, 'vm-b'), null, 'another VM id: not this record');
  t.is(recs.read(process.pid, me + 1, 'vm-a'), null, 'another process with the same pid: not this record');
  // A record of a process that ended (pid 999999 with a start time nobody has) goes.
  recs.write(999999, 12345, 'vm-c', rec, 'memory:');
  recs.sweep();
  t.false(fs.existsSync(path.join(dir, 'memory', '999999-12345.json')));
  t.deepEqual(recs.read(process.pid, me, 'vm-a'), rec, 'a live process keeps its record');
  recs.remove(process.pid, me);
  t.is(recs.read(process.pid, me, 'vm-a'), null);
});

test('records in a folder another user could write are not believed (a take-over then asks QEMU)', (t) => {
  const { dir, recs, rec, me } = freshRecords(t);
  recs.write(process.pid, me, 'vm-a', rec, 'file:///var/lib/em');
  t.deepEqual(recs.read(process.pid, me, 'vm-a'), rec);
  fs.chmodSync(path.join(dir, 'memory'), 0o777);
  t.is(recs.read(process.pid, me, 'vm-a'), null, 'world-writable folder: not believed');
  t.is(recs.vmIdOf(process.pid, me), null);
  fs.chmodSync(path.join(dir, 'memory'), 0o700);
  t.deepEqual(recs.read(process.pid, me, 'vm-a'), rec, 'its own 0700 folder: believed again');
  fs.renameSync(path.join(dir, 'memory'), path.join(dir, 'real'));
  fs.symlinkSync(path.join(dir, 'real'), path.join(dir, 'memory'));
  t.is(recs.read(process.pid, me, 'vm-a'), null, 'a link in its place: not believed');
});

test('memoryFromRecord: accepts exactly the RAM a pager registered, with fresh memfd paths; refuses moved or unregistered blocks', async (t) => {
  const target = await startTarget(t, { memfdMiB: 16, anonMiB: 8 });
  const store = await openStore('memory:');
  t.teardown(() => store.close());
  const regions = target.regionSpecs();
  const pager = await Pager.attach({ pid: target.pid, vmId: `rec-${target.pid}`, regions, capPages: 1024, store });
  t.teardown(() => { if (!pager.isClosed) pager.abandon(); });
  const rec: GuestMemoryRecord = {
    regions: regions.map((r) => ({ name: r.name, start: r.start, length: r.length, kind: r.kind })),
    guestRamBytes: 24 * MiB, memoryDevices: [],
  };
  const m = memoryFromRecord(target.pid, rec);
  t.deepEqual(m.regions.map((r) => [r.name, r.kind, r.start, r.length, r.keyId]), regions.map((r) => [r.name, r.kind, r.start, r.length, regionKeyId(r.name)]));
  t.regex(m.regions.find((r) => r.kind === 'memfd')!.filePath!, new RegExp(`^/proc/${target.pid}/map_files/[0-9a-f]+-[0-9a-f]+$`));
  t.is(m.managedBytes, 24 * MiB);
  t.is(m.backing, 'mixed');

  // A block recorded one page further on is not what was registered (its end is not mapped).
  const memfd = rec.regions.find((r) => r.kind === 'memfd')!;
  const moved = { ...rec, regions: [{ ...memfd, start: '0x' + (BigInt(memfd.start) + 4096n).toString(16) }] };
  t.throws(() => memoryFromRecord(target.pid, moved), { message: /not fully mapped|not registered|more than one backing/ });
  // Recorded as the other kind.
  const wrongKind = { ...rec, regions: [{ ...memfd, kind: 'anon' }] };
  t.is(t.throws<ElasticmemError>(() => memoryFromRecord(target.pid, wrongKind))!.code, 'RAM_CHANGED');

  // Detached: nothing is registered any more, so the record describes no monitor's RAM.
  await pager.detach();
  t.deepEqual(readUffdRegistered(target.pid), []);
  const e = t.throws<ElasticmemError>(() => memoryFromRecord(target.pid, rec))!;
  t.is(e.code, 'RAM_CHANGED');
  t.regex(e.message, /not registered with a userfaultfd/);
});
