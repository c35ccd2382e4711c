/**
 * Invariant 4 at the level of one injected system call: a monitor killed with SIGKILL
 * at any point of a syscall injection leaves the borrowed thread resuming exactly
 * where it was (native/inject_internal.h, "Crash-safe injection: the trampoline").
 *
 * The monitor here is test/fixtures/inject-check.cc (native/inject*.cc without N-API)
 * in its own process, so it can be killed: by the test at random moments, or by
 * itself at a named point of an injection (ELASTICMEM_TEST_INJECT_CRASH_AT, a
 * test-only switch of inject.cc). The target is test/fixtures/target.c (its churn
 * threads check every page they read while the main thread is borrowed) and a real
 * QEMU with its seccomp sandbox on.
 */
import test from 'ava';
import fs from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { startTarget, parseReply, buildFixture, type TeardownContext } from './helpers/target.ts';
import { buildInjectCheck, qmp, startSandboxedQemu } from './helpers/inject.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * /proc/PID/task/TID/syscall once the thread sits in a system call: right after a
 * monitor detaches, the thread may not have run yet to get back into its call (the file
 * then says "running"); give it up to 2 s.
 */
async function settledSyscall(pid: number, tid: number): Promise<string[]> {
  const read = () => fs.readFileSync(`/proc/${pid}/task/${tid}/syscall`, 'utf8').trim().split(' ');
  for (const until = Date.now() + 2000; read()[0] === 'running' && Date.now() < until;) await sleep(5);
  return read();
}

interface Monitor {
  proc: ChildProcess;
  lines: string[];
  /** Resolves with the first line matching re (rejects if the monitor exits first). */
  line(re: RegExp, timeoutMs?: number): Promise<string>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Start inject-check (the monitor) as our child; SIGKILLed at teardown if still running. */
function startMonitor(t: TeardownContext, bin: string, args: string[], env: Record<string, string> = {}): Monitor {
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const lines: string[] = [];
  let waiters: Array<() => void> = [];
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr += d));
  createInterface({ input: proc.stdout! }).on('line', (l) => {
    lines.push(l);
    for (const w of waiters.splice(0)) w();
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once('close', (code, signal) => {
      for (const w of waiters.splice(0)) w();
      resolve({ code, signal });
    }),
  );
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await exit;
    }
  });
  const line = (re: RegExp, timeoutMs = 10_000) =>
    new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`monitor: no line matching ${re} within ${timeoutMs} ms; got ${JSON.stringify(lines)} ${stderr}`)), timeoutMs);
      const check = () => {
        const hit = lines.find((l) => re.test(l));
        if (hit) {
          clearTimeout(timer);
          resolve(hit);
        } else if (proc.exitCode !== null || proc.signalCode !== null) {
          clearTimeout(timer);
          reject(new Error(`monitor exited (${proc.exitCode ?? proc.signalCode}) before a line matching ${re}; got ${JSON.stringify(lines)} ${stderr}`));
        } else waiters.push(check);
      };
      check();
    });
  return { proc, lines, line, exit };
}

async function killMonitor(m: Monitor): Promise<void> {
  m.proc.kill('SIGKILL');
  const e = await m.exit;
  if (e.signal !== 'SIGKILL') throw new Error(`monitor ended with ${JSON.stringify(e)} before it could be killed: ${m.lines.join(' | ')}`);
}

interface Trampoline {
  code: bigint;
  /** Slots whose armed word is set: a thread may still run their tail. */
  armed: number;
  /** Slots ever used (owner tid set). */
  used: number;
  /** Code page mapped r-x (not writable). */
  sealed: boolean;
  /** Permissions of the slots' pages (after the code page): never executable once sealed. */
  dataPerm: string;
}

/** Trampolines in `pid` (anonymous r-x mappings starting with inject_code.cc's signature), read through /proc/PID/mem. */
function trampolines(pid: number): Trampoline[] {
  const out: Trampoline[] = [];
  const fd = fs.openSync(`/proc/${pid}/mem`, 'r');
  const maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n');
  const permAt = (addr: bigint) => {
    for (const l of maps) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+)/.exec(l);
      if (m && BigInt('0x' + m[1]) <= addr && addr < BigInt('0x' + m[2])) return m[3]!;
    }
    return '';
  };
  try {
    for (const l of maps) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) (r-xp|rwxp) 00000000 00:00 0\s*$/.exec(l);
      if (!m) continue;
      const code = BigInt('0x' + m[1]);
      const head = Buffer.alloc(24);
      fs.readSync(fd, head, 0, 24, code);
      if (!head.toString('latin1').startsWith('elasticmem-inject v1\0')) continue;
      const data = Buffer.alloc(64 * 256);
      fs.readSync(fd, data, 0, data.length, code + 4096n);
      let armed = 0;
      let used = 0;
      for (let i = 0; i < 64; i++) {
        if (data.readUInt32LE(i * 256) !== 0) used++;
        if (data.readUInt32LE(i * 256 + 4) !== 0) armed++;
      }
      out.push({ code, armed, used, sealed: m[3] === 'r-xp', dataPerm: permAt(code + 4096n) });
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

/** Signals spammer: SIGUSR1 to pid in bursts until stopped (the target counts them with an SA_RESTART handler). */
function spamSignals(t: TeardownContext, pid: number): () => Promise<void> {
  const p = spawn('bash', ['-c', `while kill -s USR1 ${pid} 2>/dev/null; do for i in 1 2 3 4 5; do kill -s USR1 ${pid}; done; sleep 0.002; done`], { stdio: 'ignore' });
  const gone = new Promise((r) => p.once('close', r));
  const stop = async () => {
    p.kill('SIGKILL');
    await gone;
  };
  t.teardown(stop);
  return stop;
}

test.serial('a monitor killed during a 3 s injected nanosleep: the target thread finishes it and resumes its own context', async (t) => {
  const bin = buildInjectCheck();
  const tg = await startTarget(t, { memfdMiB: 8, anonMiB: 1 });
  await tg.cmd('fill memfd 3');
  // Busy target: the main thread waits in pthread_join (futex) while 3 threads churn.
  const churn = tg.cmd('churn memfd 4000 3 0.3');
  await sleep(100);
  // 3 s: the checks below, and a second monitor's whole injection, must fit in what is
  // left of it after the kill (1.5 s was seen too short once, right after QEMU tests).
  const m = startMonitor(t, bin, [String(tg.pid), 'sleep', '3000']);
  const tid = Number((await m.line(/^calling /)).split(' ')[1]);
  t.is(tid, tg.pid, 'the main thread was borrowed');
  await sleep(300);
  await killMonitor(m);
  // The borrowed thread is still inside the injected nanosleep, on the trampoline.
  const sys = fs.readFileSync(`/proc/${tg.pid}/task/${tid}/syscall`, 'utf8').split(' ');
  t.is(Number(sys[0]), 35, `thread is in nanosleep (${sys.join(' ')})`);
  const [tr] = trampolines(tg.pid);
  t.truthy(tr, 'the trampoline is mapped');
  t.is(BigInt(sys.at(-1)!.trim()), tr.code + 64n + 2n, 'it returns to the trampoline, after its syscall instruction');
  t.is(tr.armed, 1, 'its save slot is armed');
  t.regex(fs.readFileSync(`/proc/${tg.pid}/status`, 'utf8'), /^TracerPid:\s+0$/m, 'the dead monitor no longer traces it');
  // A new monitor borrows the same thread while it is still inside the dead monitor's
  // call: it must leave that slot alone (another one is armed) and restart the call.
  // (getpid: an injected nanosleep would reset the thread's restart block, so the
  // interrupted nanosleep could not resume; no call the monitor uses does that.)
  const m3 = startMonitor(t, bin, [String(tg.pid), 'getpid']);
  t.is(await m3.line(/^returned /), `returned ${tg.pid}`);
  await m3.exit;
  const nested = trampolines(tg.pid)[0];
  t.deepEqual([nested.used, nested.armed], [2, 1], 'a second slot was used; the first stays armed for the pending tail');
  const after = await settledSyscall(tg.pid, tid);
  t.is(Number(after[0]), 219, `the interrupted nanosleep goes on (restart_syscall): ${after.join(' ')}`);
  const r = parseReply(await churn);
  t.is(r.corrupt, 0);
  t.true(r.writes > 100, JSON.stringify(r));
  t.is(await tg.cmd('ping'), 'ok', 'the main thread left pthread_join normally and serves commands');
  t.is(trampolines(tg.pid)[0].armed, 0, 'the tail ran and disarmed its slot');
  t.deepEqual(parseReply(await tg.cmd('verify memfd')).corrupt, 0);

  // Idle target: its main thread blocks in read(2) on stdin, which must restart.
  const m2 = startMonitor(t, bin, [String(tg.pid), 'sleep', '800']);
  await m2.line(/^calling /);
  await sleep(100);
  await killMonitor(m2);
  await sleep(900);
  t.is(await tg.cmd('ping'), 'ok', 'read(2) restarted after the tail restored the thread');
  t.is(trampolines(tg.pid).length, 1, 'one trampoline, reused by the second monitor');
  t.like(trampolines(tg.pid)[0], { sealed: true, dataPerm: 'rw-p' }, 'code r-x, slots rw-: nothing writable and executable');
});

/** test/fixtures/regs-spin.c as a grandchild (like every target): its main thread spins checking all its registers. */
async function startSpinner(t: TeardownContext): Promise<{ pid: number; ping(): Promise<string>; output(): string }> {
  const bin = buildFixture('regs-spin');
  const sh = spawn('sh', ['-c', 'exec 3<&0; "$1" <&3 3<&- & exec 3<&-; wait $!', 'em-spin-launcher', bin], { stdio: ['pipe', 'pipe', 'ignore'] });
  sh.stdin!.on('error', () => {});
  const lines: string[] = [];
  let wake: (() => void) | undefined;
  createInterface({ input: sh.stdout! }).on('line', (l) => {
    lines.push(l);
    wake?.();
  });
  const closed = new Promise((r) => sh.once('close', r));
  let pid = 0;
  t.teardown(async () => {
    if (pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    if (sh.exitCode === null) await closed;
  });
  const next = (timeoutMs: number) =>
    new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`regs-spin: no reply within ${timeoutMs} ms (${lines.join(' | ')})`)), timeoutMs);
      const check = () => {
        const l = lines.shift();
        if (l !== undefined) {
          clearTimeout(timer);
          wake = undefined;
          resolve(l);
        } else if (sh.exitCode !== null) {
          clearTimeout(timer);
          reject(new Error('regs-spin exited'));
        } else wake = check;
      };
      check();
    });
  const first = await next(5000);
  pid = Number(first.split(' ')[1]);
  let seen = '';
  return {
    pid,
    ping: async () => {
      sh.stdin!.write('ping\n');
      const l = await next(3000);
      seen += l + '\n';
      return l;
    },
    output: () => seen,
  };
}

test.serial('the interrupted user-mode context comes back exactly: every register, flags, rsp and red zone (monitor alive and killed)', async (t) => {
  const bin = buildInjectCheck();
  const sp = await startSpinner(t);
  let last = 0;
  // The thread may still be in an injected nanosleep (up to 20 ms) of the killed monitor.
  const progressed = async (what: string) => {
    let r = '';
    let n = 0;
    for (let i = 0; i < 20 && n <= last; i++) {
      if (i) await sleep(10);
      r = await sp.ping();
      t.regex(r, /^ok rounds=\d+$/, `${what}: ${r}`);
      n = Number(r.split('=')[1]);
    }
    t.true(n > last, `${what}: the spinning thread made progress (${n})`);
    last = n;
  };
  await progressed('start');
  // Undisturbed sessions first (the registers restored by ptrace), which also create the trampoline.
  for (let i = 0; i < 3; i++) {
    const m = startMonitor(t, bin, [String(sp.pid), 'loop', String(i)]);
    await m.line(/^ready$/);
    await sleep(30);
    await killMonitor(m);
    await progressed(`random kill ${i}`);
  }
  // Killed where the thread holds injected registers: the tail restores it.
  for (const point of ['regs-set:1', 'regs-set:3', 'entry-stop:1', 'entry-stop:4', 'exit-stop:1', 'exit-stop:6', 'armed:2', 'restored:1', 'restored:3']) {
    const m = startMonitor(t, bin, [String(sp.pid), 'loop', '7'], { ELASTICMEM_TEST_INJECT_CRASH_AT: point });
    t.is((await m.exit).signal, 'SIGKILL', point);
    await sleep(20);
    await progressed(point);
  }
  for (let i = 0; i < 20; i++) {
    const m = startMonitor(t, bin, [String(sp.pid), 'loop', String(100 + i)]);
    await m.line(/^ready$/);
    await sleep(Math.random() * 40);
    await killMonitor(m);
    await progressed(`random kill ${i}`);
  }
  const ok = startMonitor(t, bin, [String(sp.pid), 'sleep', '10']);
  await ok.exit;
  t.deepEqual(ok.lines, [`calling ${sp.pid}`, 'returned 0']);
  await progressed('after an undisturbed session');
  t.is(trampolines(sp.pid).length, 1);
});

test.serial('control: without the trampoline (classic `syscall; ret` gadget) the same kill breaks the target', async (t) => {
  // Proves the test above can fail: the thread returns from the injected call into
  // libc's `ret` with the injected registers.
  const bin = buildInjectCheck();
  const tg = await startTarget(t, { memfdMiB: 1, anonMiB: 1 });
  const m = startMonitor(t, bin, [String(tg.pid), 'sleep', '500'], { ELASTICMEM_TEST_INJECT_NO_TRAMPOLINE: '1' });
  await m.line(/^calling /);
  await sleep(100);
  await killMonitor(m);
  await sleep(700);
  const outcome = await tg.cmd('ping', { timeoutMs: 2000 }).then(
    (r) => `answered ${r}`,
    (e: Error) => `broken: ${e.message}`,
  );
  t.regex(outcome, /^broken/, 'the target is broken without the trampoline');
});

// Each named window of an injection (inject.cc's crash points), killed at its n-th occurrence.
const POINTS: Array<{ point: string; nth: number[]; signals?: boolean }> = [
  { point: 'trampoline-created', nth: [1] },
  { point: 'seized', nth: [1, 3] },
  { point: 'armed', nth: [1, 4] },
  { point: 'regs-set', nth: [1, 2, 7] },
  { point: 'entry-stop', nth: [1, 2, 9] },
  { point: 'exit-stop', nth: [1, 3, 8] },
  { point: 'restored', nth: [1, 5] },
  { point: 'signal-stop', nth: [1, 3], signals: true },
  { point: 'redelivered', nth: [1, 2], signals: true },
];

test.serial('a monitor killed at every window of an injection (seized, armed, registers set, syscall entry/exit, signal stops, restore) leaves the target correct', async (t) => {
  const bin = buildInjectCheck();
  const tg = await startTarget(t, { memfdMiB: 8, anonMiB: 1 });
  await tg.cmd('fill memfd 11');
  const [memfd] = tg.regionSpecs();
  let kills = 0;
  let seed = 1;
  for (const { point, nth, signals } of POINTS) {
    for (const n of nth) {
      // Half the runs with 2 churn threads (main thread in a futex wait), half idle (in read(2)).
      const busy = (seed & 1) === 0;
      t.log(`kill at ${point}:${n} (${busy ? 'churning' : 'idle'}${signals ? ', signals' : ''})`);
      const churn = busy ? tg.cmd('churn memfd 1500 2 0.3') : undefined;
      const stopSignals = signals ? spamSignals(t, tg.pid) : undefined;
      if (signals) await sleep(20);
      const m = startMonitor(t, bin, [String(tg.pid), 'loop', String(seed++), memfd.start, String(memfd.length)], {
        ELASTICMEM_TEST_INJECT_CRASH_AT: `${point}:${n}`,
      });
      const e = await Promise.race([m.exit, sleep(20_000).then(() => ({ code: null, signal: 'timeout' as const }))]);
      await stopSignals?.();
      t.is(e.signal, 'SIGKILL', `${point}:${n}: the monitor killed itself there (${m.lines.join(' | ')})`);
      kills++;
      if (churn) t.is(parseReply(await churn).corrupt, 0, `${point}:${n}: churn`);
      t.is(await tg.cmd('ping', { timeoutMs: 5000 }), 'ok', `${point}:${n}: the main thread serves commands`);
      t.regex(fs.readFileSync(`/proc/${tg.pid}/status`, 'utf8'), /^TracerPid:\s+0$/m);
    }
  }
  t.deepEqual(parseReply(await tg.cmd('verify memfd')), { pages: memfd.length / 4096, corrupt: 0, firstbad: -1 });
  const trs = trampolines(tg.pid);
  t.is(trs.length, 1, 'one trampoline for the whole life of the target, found again by every new monitor');
  t.true(trs[0].sealed, 'a trampoline left writable by a monitor killed right after creating it was sealed r-x by the next');
  t.is(trs[0].dataPerm, 'rw-p', 'its slots are not executable');
  t.log(`${kills} monitors killed at named points; trampoline slots used ${trs[0].used}, still armed ${trs[0].armed}`);
  // A monitor killed while the thread has its own registers but the slot is armed
  // (after arming, or after restoring, before disarming) leaves that slot armed: it is
  // reclaimed later, never reused while a tail may need it. The tail disarms every other.
  const leftArmed = POINTS.filter((p) => p.point === 'armed' || p.point === 'restored').reduce((n, p) => n + p.nth.length, 0);
  t.true(trs[0].armed <= leftArmed, `${trs[0].armed} armed`);
  // After all that, an undisturbed monitor still works normally.
  const ok = startMonitor(t, bin, [String(tg.pid)]);
  await ok.exit;
  t.is(ok.lines.at(-1), 'done failures=0', ok.lines.join('\n'));
  t.is(await tg.cmd('ping'), 'ok');
});

test.serial('50 monitors killed at random moments of continuous injection sessions: target intact, no trampoline leak', async (t) => {
  const bin = buildInjectCheck();
  const tg = await startTarget(t, { memfdMiB: 16, anonMiB: 1 });
  await tg.cmd('fill memfd 17');
  const [memfd] = tg.regionSpecs();
  const stopSignals = spamSignals(t, tg.pid);
  let kills = 0;
  for (let i = 0; i < 50; i++) {
    // First half: the target churns while its main thread is borrowed (from a futex
    // wait); second half: idle, and it must answer a ping after each kill.
    const churn = i < 25 && i % 5 === 0 ? tg.cmd('churn memfd 2500 3 0.3') : undefined;
    const m = startMonitor(t, bin, [String(tg.pid), 'loop', String(1000 + i), memfd.start, String(memfd.length)]);
    await m.line(/^ready$/);
    await sleep(Math.random() * 120);
    await killMonitor(m);
    kills++;
    if (churn) t.is(parseReply(await churn).corrupt, 0, `kill ${i}: churn`);
    if (i >= 25) t.is(await tg.cmd('ping', { timeoutMs: 5000 }), 'ok', `kill ${i}`);
  }
  await stopSignals();
  t.is(await tg.cmd('ping'), 'ok');
  t.deepEqual(parseReply(await tg.cmd('verify memfd')), { pages: memfd.length / 4096, corrupt: 0, firstbad: -1 });
  t.true(parseReply(await tg.cmd('sigcount')).usr1 > 0, 'signals arrived throughout');
  const trs = trampolines(tg.pid);
  t.is(trs.length, 1);
  t.log(`${kills} random kills; slots used ${trs[0].used}, armed ${trs[0].armed}`);
  t.true(trs[0].armed <= 3, 'slots are disarmed by the tail or the monitor (only a kill right between restore and disarm leaves one armed)');
});

/** A QEMU (TCG, 64 MiB private RAM, seccomp sandbox on) as a grandchild, as attach.test.ts starts it. */
async function startQemu(t: TeardownContext, user?: 'nobody'): Promise<{ pid: number; qmpPath: string; alive(): boolean }> {
  const q = await startSandboxedQemu(t, { dirPrefix: 'em-inject-crash-qemu-', user });
  if (!fs.existsSync(q.qmpPath)) throw new Error(`QEMU did not start: ${q.stderr()}`);
  return q;
}

for (const user of [undefined, 'nobody'] as const) {
  test.serial(`a real QEMU (TCG, seccomp sandbox on${user ? ', as nobody' : ''}) survives monitors killed mid-injection`, async (t) => {
    const bin = buildInjectCheck();
    const q = await startQemu(t, user);
    const running = { status: 'running', singlestep: false, running: true };
    t.deepEqual(await qmp(q.qmpPath, 'query-status'), running);
    t.regex(fs.readFileSync(`/proc/${q.pid}/status`, 'utf8'), /^Seccomp:\s+2$/m, 'seccomp filter active');

    // The main loop thread (ppoll) is borrowed and killed in the middle of a 1 s nanosleep.
    // QEMU's own signals can cut that sleep short (it returns -4, EINTR, and the monitor
    // ends before the kill): then borrow it again, a few times at most.
    for (let attempt = 1; ; attempt++) {
      const m = startMonitor(t, bin, [String(q.pid), 'sleep', '1000']);
      await m.line(/^calling /);
      await sleep(200);
      if (m.proc.exitCode === null && m.proc.signalCode === null) {
        await killMonitor(m);
        break;
      }
      await m.exit;
      if (attempt >= 5 || !m.lines.includes('returned -4')) throw new Error(`monitor ended before it could be killed: ${m.lines.join(' | ')}`);
      t.log(`attempt ${attempt}: the injected nanosleep was interrupted (${m.lines.join(' | ')}); again`);
    }
    const trs = trampolines(q.pid);
    t.is(trs.length, 1, 'the sandboxed QEMU accepted the executable trampoline mapping');
    t.true(trs[0].sealed, 'code page r-x');
    t.deepEqual(await qmp(q.qmpPath, 'query-status'), running, 'QMP answers once the nanosleep is over');
    t.is(trampolines(q.pid)[0].armed, 0, 'the thread restored itself through the tail');

    // Random kills of continuous sessions, and one at each syscall stop.
    for (let i = 0; i < 15; i++) {
      const mm = startMonitor(t, bin, [String(q.pid), 'loop', String(i)]);
      await mm.line(/^ready$/);
      await sleep(Math.random() * 80);
      await killMonitor(mm);
    }
    for (const point of ['regs-set:2', 'entry-stop:2', 'exit-stop:3', 'restored:2']) {
      const mm = startMonitor(t, bin, [String(q.pid), 'loop', '99'], { ELASTICMEM_TEST_INJECT_CRASH_AT: point });
      t.is((await mm.exit).signal, 'SIGKILL', point);
    }
    t.deepEqual(await qmp(q.qmpPath, 'query-status'), running, 'QEMU main loop still serves QMP');
    t.true(q.alive());
    t.is(trampolines(q.pid).length, 1, 'still one trampoline');
  });
}
