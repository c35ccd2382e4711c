/**
 * Soak and fault injection (not part of `npm test`; run with `npm run soak`).
 * For SOAK_MINUTES (default 10), per RAM kind: 4 writer threads churn 128 MiB with the
 * cap at 10% on a real redis-server with an append-only file, while faults are injected
 * at random: the redis-server is paused (SIGSTOP) or killed and restarted, and the
 * monitor (a child process) is killed with SIGKILL and replaced by a take-over. Every
 * churn round must report corrupt=0, and at the end every page verifies.
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import path from 'node:path';
import { startTarget, parseReply } from '../helpers/target.ts';
import { startRedis, sleep } from '../helpers/servers.ts';

const MINUTES = Number(process.env.SOAK_MINUTES ?? 10);
const CHILD = path.join(import.meta.dirname, '..', 'fixtures', 'monitor-child.ts');

function monitor(args: string[]): { proc: ChildProcess; attached: Promise<void>; log: () => string } {
  const proc = spawn(process.execPath, ['--import=tsx', CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stderr!.on('data', (d) => { log += d; });
  const attached = new Promise<void>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).on('line', (l) => { if (JSON.parse(l).attached) resolve(); });
    proc.on('exit', (code) => reject(new Error(`monitor exited (${code}): ${log}`)));
  });
  attached.catch(() => {});
  return { proc, attached, log: () => log };
}

for (const kind of ['memfd', 'anon'] as const) {
  test(`soak ${MINUTES} min, ${kind}: churn with store pauses, store restarts and monitor kills`, async (t) => {
    t.timeout((MINUTES + 5) * 60_000);
    const redis = await startRedis(t, { persistence: true, appendfsync: 'always' });
    const target = await startTarget(t, { memfdMiB: kind === 'memfd' ? 128 : 1, anonMiB: kind === 'anon' ? 128 : 1 });
    await target.cmd(`fill ${kind} 77`);
    const regions = JSON.stringify(target.regionSpecs().filter((r) => r.kind === kind));
    const args = (mode: string) => [String(target.pid), regions, '3276', redis.uri, `soak-${kind}-${target.pid}`, mode];
    let mon = monitor(args('attach'));
    t.teardown(() => { try { mon.proc.kill('SIGKILL'); } catch { /* gone */ } });
    await mon.attached;
    const counts = { rounds: 0, pauses: 0, restarts: 0, monitorKills: 0, writes: 0 };
    const end = Date.now() + MINUTES * 60_000;
    while (Date.now() < end) {
      const churn = target.cmd(`churn ${kind} 8000 4 0.5`, { timeoutMs: 300_000 });
      await sleep(2000 + Math.random() * 3000);
      const fault = Math.floor(Math.random() * 3);
      if (fault === 0) {
        redis.pause(); await sleep(1000 + Math.random() * 3000); redis.resume(); counts.pauses++;
      } else if (fault === 1) {
        await redis.kill('SIGKILL'); await sleep(500); await redis.restart(); counts.restarts++;
      } else {
        mon.proc.kill('SIGKILL');
        await new Promise((r) => mon.proc.once('exit', r));
        await sleep(500);
        mon = monitor(args('reattach'));
        await mon.attached;
        counts.monitorKills++;
      }
      const r = parseReply(await churn);
      t.is(r.corrupt, 0, `round ${counts.rounds}: churn saw corruption; monitor log: ${mon.log()}`);
      counts.rounds++;
      counts.writes += r.writes;
    }
    const v = parseReply(await target.cmd(`verify ${kind}`, { timeoutMs: 300_000 }));
    t.is(v.corrupt, 0, `first bad page ${v.firstbad}`);
    t.log(JSON.stringify(counts));
  });
}
