import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { openStore } from '../kvstore/index.ts';
import { runConformance, pageOf, vmId, expectCode } from './kvstore-conformance.ts';

function tmpStoreDir(t: { teardown(fn: () => unknown): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'em-filestore-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, 'pages');
}

runConformance(test, 'file', async (t) => {
  const dir = tmpStoreDir(t);
  const open = async () => {
    const s = await openStore(`file://${dir}`);
    t.teardown(() => s.close());
    return s;
  };
  return { store: await open(), reopen: open, survivesRestart: true };
}, { server: false, envelope: true });

test.serial('file: acknowledged pages survive a monitor crash (writer killed with SIGKILL)', async (t) => {
  t.timeout(60_000);
  const dir = tmpStoreDir(t);
  const vm = vmId('crash');
  // A child process stores 2,000 pages, reports "stored" once put() resolved, then hangs
  // until we SIGKILL it: no close(), no clean shutdown.
  const script = `
    import { openStore } from ${JSON.stringify(path.resolve('kvstore/index.ts'))};
    const s = await openStore(${JSON.stringify('file://' + dir)});
    const pages = Array.from({ length: 2000 }, (_, i) => i);
    const data = pages.map((p) => { const b = Buffer.alloc(4096, p & 255); b.writeUInt32LE(p, 0); return b; });
    await s.put(${JSON.stringify(vm)}, pages, data);
    process.stdout.write('stored\\n');
    setInterval(() => {}, 1000);
  `;
  const child = spawn(process.execPath, ['--import=tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => { if (String(d).includes('stored')) resolve(); });
    child.once('exit', (c) => reject(new Error(`writer exited early (${c})`)));
  });
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
  const s = await openStore(`file://${dir}`);
  t.teardown(() => s.close());
  const pages = Array.from({ length: 2000 }, (_, i) => i);
  const got = await s.get(vm, pages);
  t.true(got.every((g, p) => g !== null && g.readUInt32LE(0) === p && g[4] === (p & 255)), 'all 2,000 pages intact after the crash');
  t.is((await s.list(vm)).length, 2000);
});

test.serial('file: two stores on one path share one environment and see each other', async (t) => {
  const dir = tmpStoreDir(t);
  const a = await openStore(`file://${dir}`);
  const b = await openStore(`file://${dir}`);
  t.teardown(async () => { await a.close(); await b.close(); });
  const vm = vmId('shared');
  await a.put(vm, [1], [pageOf(1, 1)]);
  t.not((await b.get(vm, [1]))[0], null);
  await a.close();
  t.not((await b.get(vm, [1]))[0], null, 'closing one store leaves the other working');
});

test.serial('file: an unusable path fails typed', async (t) => {
  const dir = tmpStoreDir(t);
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  fs.writeFileSync(dir, 'not a directory');
  await expectCode(t, openStore(`file://${dir}`), 'STORE_UNAVAILABLE');
});
