/**
 * `elasticmem demo` (npm run demo): the whole product in under three minutes, for real:
 * a daemon, the test guest under libvirt, attach at 25% local memory on the embedded
 * store, live stats while the guest's workload runs, resize down and up, grow by
 * virtio-mem, detach, and the guest's own verdict (corrupt=0). Every step runs the real
 * `elasticmem` binary, as an operator would. Exits non-zero if any step fails.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, type Command } from '../command.ts';
import { ElasticmemError } from '../../../native/errors.ts';
import { bootDomain, ensureLibvirtd } from '../../vm/libvirt.ts';
import { guestImage } from '../../vm/guest.ts';

const usage = `usage: elasticmem demo [--keep]

Runs the end-to-end demonstration on this host (root, libvirt, QEMU; no KVM needed):
  1. starts an elasticmem daemon on a private socket
  2. boots the test guest (256 MiB, TCG) under libvirt; its workload fills 96 MiB
     with a verifiable pattern and re-verifies it in a loop
  3. attach with 25% local memory (64M) on the embedded store memory:
  4. live stats while the workload runs
  5. resize down to 48M, then up to 128M
  6. grow the guest by 128M (virtio-mem) and show it sees the memory
  7. detach (every page drained back) and the guest's own verdict: corrupt=0
Takes 1-3 minutes. Everything it starts is removed at the end, even on failure.

  --keep   leave the guest running at the end (prints how to remove it)

examples:
  npm run demo
  elasticmem demo
`;

const BIN = fileURLToPath(new URL('../../../bin/elasticmem.js', import.meta.url));

/** ANSI style `code` around `text` on a terminal only (NO_COLOR honoured): a log file gets plain text. */
function styled(code: string, text: string): string {
  return process.stdout.isTTY && !process.env.NO_COLOR ? `\x1b[${code}m${text}\x1b[0m` : text;
}
function say(msg: string): void { process.stdout.write(`\n${styled('1', `== ${msg}`)}\n`); }

/** Run the real CLI, echo the command and its output. */
function em(args: string[], socket: string, timeoutMs = 90_000): Promise<{ code: number; out: string }> {
  process.stdout.write(`$ elasticmem ${args.join(' ')}\n`);
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args, '--socket', socket], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => { out += d; process.stdout.write(d); });
    child.stderr!.on('data', (d: Buffer) => { out += d; process.stderr.write(d); });
    const timer = setTimeout(() => { process.stderr.write(`(no answer within ${timeoutMs / 1000} s; stopping)\n`); child.kill('SIGKILL'); }, timeoutMs);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code: code ?? 1, out }); });
  });
}

async function must(p: Promise<{ code: number; out: string }>, what: string): Promise<string> {
  const r = await p;
  if (r.code !== 0) throw new ElasticmemError(`demo step failed: ${what}`, 'DEMO_FAILED');
  return r.out;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const cmd: Command = {
  name: 'demo',
  summary: 'boot the test guest and show attach, stats, resize, grow, detach',
  usage,
  async run(args) {
    const { values, help } = parse('demo', args, { keep: { type: 'boolean' } }, { min: 0, max: 0, names: '' });
    if (help) { process.stdout.write(usage); return 0; }
    if (process.getuid?.() !== 0) throw new ElasticmemError('the demo needs root (libvirt qemu:///system, ptrace, userfaultfd); run it with sudo', 'NOT_ROOT');
    const t0 = Date.now();
    const cleanups: (() => unknown)[] = [];
    let daemon: ChildProcess | undefined;
    try {
      // The guest boot and console reader are shared with bench vm and the tests (backend/vm).
      try { guestImage(); } catch (e) { throw new ElasticmemError(`${(e as Error).message}`, 'DEMO_SETUP'); }

      say('1. starting the elasticmem daemon');
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'elasticmem-demo-'));
      cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
      const socket = path.join(dir, 'run', 'em.sock');
      daemon = spawn(process.execPath, [BIN, 'daemon', '--socket', socket, '--state', path.join(dir, 'state.json')], { stdio: ['ignore', 'inherit', 'pipe'] });
      daemon.stderr!.on('data', (d: Buffer) => { for (const l of d.toString().split('\n')) if (l) process.stdout.write(`  ${styled('2', `daemon | ${l}`)}\n`); });
      const dexit = new Promise<void>((r) => daemon!.once('exit', () => r()));
      cleanups.push(async () => { if (daemon!.exitCode === null) { daemon!.kill('SIGTERM'); await Promise.race([dexit, sleep(30_000)]); daemon!.kill('SIGKILL'); } });
      for (let i = 0; !fs.existsSync(socket); i++) {
        if (i > 200 || daemon.exitCode !== null) throw new ElasticmemError('the daemon did not start (see its log above)', 'DEMO_FAILED');
        await sleep(100);
      }

      say('2. booting the test guest under libvirt (256 MiB RAM, TCG; workload: 96 MiB, random access, 25% writes)');
      await ensureLibvirtd();
      const dom = await bootDomain({ memMiB: 256, maxMemMiB: 512, template: 'memfd', workload: { sizeMiB: 96, pattern: 'random', write: 0.25, seed: 42, passes: 0, pauseMs: 300 } }, (fn) => { cleanups.push(fn); });
      if (values.keep) cleanups.splice(cleanups.length - 1, 1);
      process.stdout.write(`domain ${dom.name} (QEMU pid ${dom.pid}), console ${dom.console.path}\n`);
      const con = dom.console;
      let shown = 0;
      const showPasses = () => {
        con.poll();
        for (; shown < con.passes.length; shown++) {
          const p = con.passes[shown]!;
          process.stdout.write(`  ${styled('36', `guest | pass ${p.pass}: ${p.verified}/${p.pages} pages verified, corrupt=${p.corrupt}, ${p.ms} ms`)}\n`);
        }
      };
      const ticker = setInterval(showPasses, 250);
      cleanups.push(() => clearInterval(ticker));
      await con.waitForPasses(1, 120_000);
      showPasses();

      say('3. attaching it with 25% local memory (64M of 256M) on the embedded store');
      await must(em(['attach', dom.name, '--local', '64M', '--store', 'memory:'], socket), 'attach');

      say('4. live stats while the workload runs (elasticmem stats --watch, 8 s)');
      const watch = spawn(process.execPath, [BIN, 'stats', dom.name, '--watch', '--socket', socket], { stdio: ['ignore', 'pipe', 'inherit'] });
      watch.stdout!.on('data', (d: Buffer) => process.stdout.write(`  ${d.toString().trimEnd().split('\n').join('\n  ')}\n`));
      await sleep(8000);
      watch.kill('SIGINT');
      await must(em(['stats', dom.name], socket), 'stats');

      say('5. resizing: down to 48M, a few passes, then up to 128M');
      await must(em(['resize', dom.name, '--local', '48M'], socket), 'resize down');
      await con.waitForPasses(con.passes.length + 2, 120_000);
      showPasses();
      await must(em(['resize', dom.name, '--local', '128M'], socket), 'resize up');
      await con.waitForPasses(con.passes.length + 2, 120_000);
      showPasses();

      say('6. growing the guest by 128M (virtio-mem)');
      const before = con.memTotalKb ?? 0;
      await must(em(['grow', dom.name, '128M'], socket), 'grow');
      const after = await con.waitForMemTotal(before + 120 * 1024, 60_000);
      process.stdout.write(`guest MemTotal: ${Math.round(before / 1024)} MiB -> ${Math.round(after / 1024)} MiB (the guest sees the added memory)\n`);

      say('7. detaching: every page comes back, the VM runs on whole');
      await must(em(['detach', dom.name], socket, 120_000), 'detach');
      await con.waitForPasses(con.passes.length + 2, 120_000);
      showPasses();
      await must(em(['list'], socket), 'list');

      const passes = con.passes;
      const corrupt = passes.reduce((s, p) => s + p.corrupt, 0);
      const secs = ((Date.now() - t0) / 1000).toFixed(0);
      say(`guest verdict: ${passes.length} passes over 96 MiB, corrupt=${corrupt}   (${secs} s)`);
      if (corrupt !== 0) throw new ElasticmemError(`the guest found ${corrupt} corrupt pages`, 'DEMO_FAILED');
      if (values.keep) process.stdout.write(`domain ${dom.name} left running; remove it with: virsh destroy ${dom.name}; virsh undefine ${dom.name}\n`);
      return 0;
    } finally {
      for (const f of cleanups.reverse()) {
        try { await f(); } catch (e) { process.stderr.write(`cleanup: ${(e as Error).message}\n`); }
      }
    }
  },
};
export default cmd;
