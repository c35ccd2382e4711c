/**
 * Invariant 4: a dead monitor loses nothing. A monitor process is killed with SIGKILL
 * in the middle of churn: the target's faulting threads wait (the target keeps its own
 * uffd), a new monitor re-attaches, and every page verifies.
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTarget, parseReply } from './helpers/target.ts';
import { threadsWaitOnUffd } from './helpers/proc.ts';

const CHILD = path.join(import.meta.dirname, 'fixtures', 'monitor-child.ts');

interface Monitor { proc: ChildProcess; last: () => Record<string, number>; attached: Promise<void>; stderr: () => string }

function startMonitor(t: { teardown(fn: () => unknown): void }, args: string[]): Monitor {
  const proc = spawn(process.execPath, ['--import=tsx', CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { try { proc.kill('SIGKILL'); } catch { /* gone */ } });
  let last: Record<string, number> = {};
  let err = '';
  proc.stderr!.on('data', (d) => { err += d; });
  const attached = new Promise<void>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).on('line', (l) => {
      const j = JSON.parse(l);
      if (j.attached) resolve(); else last = j;
    });
    proc.on('exit', (code) => reject(new Error(`monitor exited (${code}): ${err}`)));
  });
  return { proc, last: () => last, attached, stderr: () => err };
}

async function until(cond: () => boolean, ms: number, what: string) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

for (const kind of ['memfd', 'anon'] as const) {
  test(`${kind}: kill -9 of the monitor mid-churn; the target waits, a new monitor takes over, every page verifies`, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'em-crash-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const uri = `file://${dir}/pages`;
    const target = await startTarget(t, { memfdMiB: kind === 'memfd' ? 64 : 1, anonMiB: kind === 'anon' ? 64 : 1 });
    await target.cmd(`fill ${kind} 21`);
    const regions = JSON.stringify(target.regionSpecs().filter((r) => r.kind === kind));
    const cap = 2048; // 8 MiB of 64 MiB
    const vmId = `crash-${kind}-${target.pid}`;
    const m1 = startMonitor(t, [String(target.pid), regions, String(cap), uri, vmId, 'attach']);
    await m1.attached;
    await until(() => (m1.last().resident ?? Infinity) <= cap, 60000, 'eviction to the cap');
    const churn = target.cmd(`churn ${kind} 6000 4 0.5`, { timeoutMs: 120000 });
    await until(() => (m1.last().fetches ?? 0) > 500, 30000, 'faults under churn');
    m1.proc.kill('SIGKILL');
    await new Promise((r) => m1.proc.once('exit', r));
    // With no monitor the faulting threads wait: all four churn threads come to sleep in
    // a userfaultfd fault and stay there (had the target lost its uffd with the
    // monitor, their faults would be served by the kernel and they would keep running).
    t.true(await threadsWaitOnUffd(target.pid, 4), 'the four churn threads wait in faults while no monitor serves them');
    const m2 = startMonitor(t, [String(target.pid), regions, String(cap), uri, vmId, 'reattach']);
    await m2.attached;
    const r = parseReply(await churn);
    t.is(r.corrupt, 0, 'the churn threads saw no corruption');
    const v = parseReply(await target.cmd(`verify ${kind}`, { timeoutMs: 120000 }));
    t.is(v.corrupt, 0, `verify: first bad page ${v.firstbad}; monitor stderr: ${m2.stderr()}`);
    t.is(m2.last().lost ?? 0, 0);
  });
}
