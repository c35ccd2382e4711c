/**
 * The attach half of the data plane against the real kernel and a real target
 * (test/fixtures/target.c): a userfaultfd created inside the target by syscall
 * injection, by both routes; the target keeps its copy; injections leave the target
 * running correctly; an existing uffd is found again; remote MADV_DONTNEED; bad input.
 * Serial: injections are synchronous calls that block the event loop, and several
 * tests measure time.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { createInterface } from 'node:readline';
import { loadNative, ElasticmemError } from '../native/index.ts';
import { startTarget, parseReply, buildFixture, type TeardownContext } from './helpers/target.ts';
import { buildInjectCheck, qmp, startSandboxedQemu } from './helpers/inject.ts';
import { mainThreadWaitsOnUffd } from './helpers/proc.ts';

const native = loadNative();
/** Test-only export of native/attach.cc: remote_madvise_dontneed of one page every stridePages (default 1) in [start, start+length). */
const testOnly = native as unknown as { _testMadviseDontneed(pid: number, start: string, length: number, stridePages?: number, ownPidfd?: boolean): void };

const PAGE = 4096;
const UFFD_LINK = 'anon_inode:[userfaultfd]';

function uffdsOf(pid: number): number[] {
  const dir = `/proc/${pid}/fd`;
  return fs
    .readdirSync(dir)
    .filter((f) => {
      try {
        return fs.readlinkSync(`${dir}/${f}`) === UFFD_LINK;
      } catch {
        return false;
      }
    })
    .map(Number)
    .sort((a, b) => a - b);
}

function isOwnUffd(fd: number): boolean {
  return fs.readlinkSync(`/proc/self/fd/${fd}`) === UFFD_LINK;
}

/** Close the monitor's copy at teardown unless the test already did. */
function closeLater(t: TeardownContext, fd: number): { close(): void } {
  let open = true;
  const close = () => {
    if (open) native.closeFd(fd);
    open = false;
  };
  t.teardown(close);
  return { close };
}

/** Expected "read" sum of a page that uffd-serve filled: 512 words each equal to the page address. */
function servedSum(addr: bigint): string {
  return ((addr * 512n) & ((1n << 64n) - 1n)).toString();
}

interface Server {
  proc: ChildProcess;
  /** Resolves with the next line matching `re` (lines seen earlier count too). */
  waitFor(re: RegExp, timeoutMs?: number): Promise<string>;
  lines: string[];
  release(): void;
}

/** Run test/fixtures/uffd-serve.c on the monitor's uffd (passed as its fd 3) over one region of the target. */
async function serve(t: TeardownContext, fd: number, start: string, length: number, shmem: boolean, stall = false): Promise<Server> {
  const bin = buildFixture('uffd-serve');
  const args = [start, String(length), shmem ? '1' : '0', ...(stall ? ['stall'] : [])];
  const proc = spawn(bin, args, { stdio: ['pipe', 'pipe', 'inherit', fd] });
  proc.stdin!.on('error', () => {});
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      const gone = new Promise((r) => proc.once('close', r));
      proc.kill('SIGKILL');
      await gone;
    }
  });
  const lines: string[] = [];
  const waiters: Array<() => void> = [];
  createInterface({ input: proc.stdout! }).on('line', (l) => {
    lines.push(l);
    for (const w of waiters.splice(0)) w();
  });
  const waitFor = (re: RegExp, timeoutMs = 10_000) =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        const hit = lines.find((l) => re.test(l));
        if (hit) {
          clearTimeout(timer);
          resolve(hit);
          return true;
        }
        const err = lines.find((l) => l.startsWith('error'));
        if (err) {
          clearTimeout(timer);
          reject(new Error(`uffd-serve: ${err}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => reject(new Error(`uffd-serve: no line matching ${re} within ${timeoutMs} ms; got ${JSON.stringify(lines)}`)), timeoutMs);
      if (!check()) {
        const again = () => {
          if (!check()) waiters.push(again);
        };
        waiters.push(again);
      }
    });
  await waitFor(/^ready$/);
  return { proc, waitFor, lines, release: () => proc.stdin!.write('serve\n') };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test.serial('acquireUffd on a root target creates the uffd with the userfaultfd syscall; the target keeps it', async (t) => {
  const tg = await startTarget(t, { memfdMiB: 4, anonMiB: 4 });
  const before = uffdsOf(tg.pid);
  t.deepEqual(before, []);
  const a = native.acquireUffd(tg.pid);
  const copy = closeLater(t, a.fd);
  t.is(a.route, 'syscall');
  t.true(isOwnUffd(a.fd), 'the monitor holds a userfaultfd');
  t.deepEqual(uffdsOf(tg.pid), [a.targetFd], 'the target holds exactly the new uffd, no helper fds');
  // The monitor's copy going away must not take the target's reference with it.
  copy.close();
  t.deepEqual(uffdsOf(tg.pid), [a.targetFd]);
  t.is(await tg.cmd('ping'), 'ok');
});

test.serial('acquireUffd on a target running as nobody takes the /dev/userfaultfd route', async (t) => {
  const unprivileged = fs.readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim();
  const tg = await startTarget(t, { memfdMiB: 4, anonMiB: 4, user: 'nobody' });
  t.regex(fs.readFileSync(`/proc/${tg.pid}/status`, 'utf8'), /^Uid:\s+65534\s/m, 'target runs as nobody');
  const a = native.acquireUffd(tg.pid);
  closeLater(t, a.fd);
  // With vm.unprivileged_userfaultfd=0 the injected userfaultfd() fails with EPERM for
  // nobody, so only the /dev/userfaultfd route can have produced it.
  t.is(a.route, unprivileged === '0' ? 'dev-userfaultfd' : 'syscall');
  t.true(isOwnUffd(a.fd));
  t.deepEqual(uffdsOf(tg.pid), [a.targetFd], 'socket pair and /dev/userfaultfd copies were closed in the target');
  t.is(await tg.cmd('ping'), 'ok');
});

for (const user of [undefined, 'nobody'] as const) {
  test.serial(`the acquired uffd serves the target's faults, user- and kernel-mode (${user ?? 'root'} target)`, async (t) => {
    const tg = await startTarget(t, { memfdMiB: 4, anonMiB: 4, user });
    const a = native.acquireUffd(tg.pid);
    closeLater(t, a.fd);
    const srv = await serve(t, a.fd, tg.memfd.start, tg.memfd.length, true);
    const base = BigInt(tg.memfd.start);

    // A user-mode fault on a never-written page of the memfd.
    const p7 = base + 7n * BigInt(PAGE);
    const reply7 = await tg.cmd('read memfd 7');
    t.is(reply7.split('sum=')[1], servedSum(p7), 'page content came from uffd-serve');
    await srv.waitFor(new RegExp(`^served 0x${p7.toString(16)}$`));

    // A kernel-mode fault: read(2) from /dev/zero into a missing page. A user-mode-only
    // uffd would not see it (the kernel would just allocate the page).
    const p9 = base + 9n * BigInt(PAGE);
    t.is(await tg.cmd('kzero memfd 9'), 'ok');
    await srv.waitFor(new RegExp(`^fault 0x${p9.toString(16)}$`));
    t.is(await tg.cmd('read memfd 9'), 'ok sum=0');
  });
}

test.serial('200 injections while 2 threads churn leave the target correct (registers and interrupted syscalls restored)', async (t) => {
  const tg = await startTarget(t, { memfdMiB: 16, anonMiB: 1 });
  const [memfd] = tg.regionSpecs();
  t.is((await tg.cmd('fill memfd 42')).trim(), `ok pages=${memfd.length / PAGE}`);

  // The main thread sits in pthread_join (futex) while its 2 threads churn: every
  // injection interrupts that futex wait and must restart it. MADV_DONTNEED on a
  // shared mapping only unmaps pages (the memfd keeps them), so content must stay intact.
  const churnMs = 10_000;
  const churnStart = Date.now();
  const churn = tg.cmd(`churn memfd ${churnMs} 2 0.3`);
  const took: number[] = [];
  const acquired: number[] = [];
  for (let i = 0; i < 200; i++) {
    const t0 = performance.now();
    testOnly._testMadviseDontneed(tg.pid, memfd.start, memfd.length, i % 2 ? 1 : 2);
    took.push(performance.now() - t0);
    if (i % 40 === 0) {
      const a = native.acquireUffd(tg.pid);
      native.closeFd(a.fd);
      acquired.push(a.targetFd);
    }
    await sleep(2);
  }
  const injectedWithin = Date.now() - churnStart;
  const res = parseReply(await churn);
  took.sort((a, b) => a - b);
  t.log(`remote MADV_DONTNEED of 16 MiB (alternately 1 range and 2048 ranges) during churn: p50 ${took[100].toFixed(2)} ms, p99 ${took[198].toFixed(2)} ms`);
  t.true(injectedWithin < churnMs, `all injections happened during the churn (${injectedWithin} ms)`);
  t.is(res.corrupt, 0, 'no page read back wrong during churn');
  t.true(res.writes > 1000 && res.reads > 1000, `churn made progress: ${JSON.stringify(res)}`);
  t.deepEqual(parseReply(await tg.cmd('verify memfd')), { pages: memfd.length / PAGE, corrupt: 0, firstbad: -1 });
  t.deepEqual(uffdsOf(tg.pid), acquired.sort((a, b) => a - b), 'each acquire left exactly its uffd in the target');

  // Idle target: the main thread is blocked in read(2) on stdin; each injection interrupts it.
  for (let i = 0; i < 50; i++) {
    testOnly._testMadviseDontneed(tg.pid, memfd.start, PAGE * 16);
    if (i % 10 === 9) t.is(await tg.cmd('ping'), 'ok');
  }
  t.deepEqual(parseReply(await tg.cmd('verify memfd')), { pages: memfd.length / PAGE, corrupt: 0, firstbad: -1 });
});

test.serial('findTargetUffd finds the uffd the target kept after the monitor closed its copy', async (t) => {
  const tg = await startTarget(t, { memfdMiB: 2, anonMiB: 2 });
  t.is(native.findTargetUffd(tg.pid), null, 'a target without a uffd has none to take over');
  const a = native.acquireUffd(tg.pid);
  native.closeFd(a.fd); // the monitor "dies"
  const found = native.findTargetUffd(tg.pid);
  t.truthy(found);
  closeLater(t, found!.fd);
  t.is(found!.route, 'existing');
  t.is(found!.targetFd, a.targetFd);
  t.true(isOwnUffd(found!.fd));
  // It is the same uffd: serving faults through the found copy works.
  const srv = await serve(t, found!.fd, tg.anon.start, tg.anon.length, false);
  const p3 = BigInt(tg.anon.start) + 3n * BigInt(PAGE);
  t.is((await tg.cmd('read anon 3')).split('sum=')[1], servedSum(p3));
  // uffd-serve prints its line independently of the target's reply: wait for it.
  await srv.waitFor(new RegExp(`^served 0x${p3.toString(16)}$`));
});

// Two routes to name the target inside itself: PIDFD_SELF_THREAD_GROUP (Linux 6.14 on,
// this kernel) and, as on older kernels, a pidfd it opens and closes of itself.
for (const route of ['PIDFD_SELF', 'own pidfd'] as const) {
  test.serial(`remote MADV_DONTNEED drops private anonymous pages: the target reads zeros (${route})`, async (t) => {
    const tg = await startTarget(t, { memfdMiB: 1, anonMiB: 10 });
    const drop = (start: string, length: number, stride?: number) =>
      testOnly._testMadviseDontneed(tg.pid, start, length, stride, route === 'own pidfd');
    const pages = tg.anon.length / PAGE;
    await tg.cmd('fill anon 7');
    const before = parseReply(await tg.cmd('read anon 5')).sum;
    t.not(before, 0);
    // Every other page of the first 2200: 1100 separate ranges, more than one
    // process_madvise batch of 1024.
    drop(tg.anon.start, 2200 * PAGE, 2);
    t.is(await tg.cmd('read anon 4'), 'ok sum=0');
    t.not(await tg.cmd('read anon 5'), 'ok sum=0');
    t.is(await tg.cmd('read anon 2198'), 'ok sum=0');
    t.deepEqual(parseReply(await tg.cmd('verify anon 0 2200')), { pages: 2200, corrupt: 1100, firstbad: 0 });
    for (const p of [1, 3, 999, 2049, 2199]) t.deepEqual(parseReply(await tg.cmd(`verify anon ${p} 1`)).corrupt, 0, `odd page ${p} kept`);
    // A contiguous run (merged into one range).
    drop((BigInt(tg.anon.start) + 2200n * BigInt(PAGE)).toString(), 100 * PAGE);
    t.deepEqual(parseReply(await tg.cmd('verify anon 2200 100')), { pages: 100, corrupt: 100, firstbad: 2200 });
    t.deepEqual(parseReply(await tg.cmd(`verify anon 2300 ${pages - 2300}`)), { pages: pages - 2300, corrupt: 0, firstbad: -1 });

    // The last page plus one past the end of the mapping: the kernel drops the ranges
    // before the failing one, then reports ENOMEM, which arrives with its errno.
    const end = (BigInt(tg.anon.start) + BigInt(tg.anon.length) - BigInt(PAGE)).toString();
    const e = t.throws(() => drop(end, 2 * PAGE), { instanceOf: ElasticmemError });
    t.is(e?.code, 'EM_INJECT');
    t.is(e?.errno, os.constants.errno.ENOMEM);
    t.is(e?.syscall, 'process_madvise');
    const odd = t.throws(() => drop((BigInt(tg.anon.start) + 8n).toString(), PAGE), { instanceOf: ElasticmemError });
    t.is(odd?.code, 'EM_BAD_ARG');
    t.deepEqual(parseReply(await tg.cmd(`verify anon 2300 ${pages - 2300}`)), { pages: pages - 2300, corrupt: 1, firstbad: pages - 1 });
    t.is(uffdsOf(tg.pid).length, 0);
    t.deepEqual(fs.readdirSync(`/proc/${tg.pid}/fd`).filter((f) => Number(f) > 2 && Number(f) < 200), [], 'no pidfd left in the target');

    // Which route ran: with no descriptor free in the target only a pidfd of its own fails.
    const open = new Set(fs.readdirSync(`/proc/${tg.pid}/fd`).map(Number));
    let free = 0;
    while (open.has(free)) free++;
    await promisify(execFile)('prlimit', ['--pid', String(tg.pid), `--nofile=${free}:`]);
    if (route === 'own pidfd') {
      const full = t.throws(() => drop(tg.anon.start, PAGE), { instanceOf: ElasticmemError });
      t.is(full?.syscall, 'pidfd_open');
      t.is(full?.errno, os.constants.errno.EMFILE);
    } else {
      t.notThrows(() => drop(tg.anon.start, PAGE), 'PIDFD_SELF needs no descriptor in the target');
    }
  });
}

test.serial('injection works while the target thread waits in a userfaultfd fault', async (t) => {
  const tg = await startTarget(t, { memfdMiB: 2, anonMiB: 2 });
  const a = native.acquireUffd(tg.pid);
  closeLater(t, a.fd);
  const srv = await serve(t, a.fd, tg.anon.start, tg.anon.length, false, true);
  const p3 = BigInt(tg.anon.start) + 3n * BigInt(PAGE);
  const pending = tg.cmd('read anon 3');
  await srv.waitFor(/^fault /);
  t.true(await mainThreadWaitsOnUffd(tg.pid, 5000), 'main thread is blocked in the fault');
  // The only thread is in a user-mode fault: PTRACE_INTERRUPT takes it out of the wait,
  // the injection runs, and on detach the thread faults again.
  const t0 = performance.now();
  testOnly._testMadviseDontneed(tg.pid, tg.memfd.start, tg.memfd.length);
  t.log(`injection during a pending fault took ${(performance.now() - t0).toFixed(2)} ms`);
  srv.release();
  t.is((await pending).split('sum=')[1], servedSum(p3));
  t.is(await tg.cmd('ping'), 'ok');
});

test.serial("injections while the main thread waits in a fault and other threads come and go: a thread that exits before it is borrowed is passed over, not taken for the process gone", async (t) => {
  const tg = await startTarget(t, { memfdMiB: 2, anonMiB: 2 });
  const a = native.acquireUffd(tg.pid);
  closeLater(t, a.fd);
  const srv = await serve(t, a.fd, tg.anon.start, tg.anon.length, false, true);
  // Threads living 200 us each, 4 at a time, for 6 s (QEMU's pool workers come and go
  // too); the main thread waits in a fault, so a short-lived thread is borrowed.
  t.is(await tg.cmd('threads 6000 200'), 'ok');
  const pending = tg.cmd('read anon 3', { timeoutMs: 30_000 });
  await srv.waitFor(/^fault /);
  let n = 0;
  for (const end = Date.now() + 4000; Date.now() < end; n++) {
    testOnly._testMadviseDontneed(tg.pid, tg.memfd.start, PAGE * 16);
    await sleep(1);
  }
  t.log(`${n} injections into short-lived threads`);
  t.true(n > 100);
  srv.release();
  t.is((await pending).split('sum=')[1], servedSum(BigInt(tg.anon.start) + 3n * BigInt(PAGE)));
  t.is(await tg.cmd('ping'), 'ok');
});

test.serial('bad input: dead, kernel, own and malformed pids, threads, foreign fds', async (t) => {
  const tg = await startTarget(t, { memfdMiB: 1, anonMiB: 1 });
  const pid = tg.pid;
  await tg.kill();
  for (const call of [() => native.acquireUffd(pid), () => native.findTargetUffd(pid), () => testOnly._testMadviseDontneed(pid, '0x10000', PAGE)]) {
    const e = t.throws(call, { instanceOf: ElasticmemError });
    t.is(e?.code, 'EM_NO_PROCESS');
    t.is(e?.errno, os.constants.errno.ESRCH);
    t.true(e?.message.includes(String(pid)), e?.message);
  }

  const kthread = t.throws(() => native.acquireUffd(2), { instanceOf: ElasticmemError });
  t.is(kthread?.code, 'EM_PTRACE');
  t.is(kthread?.errno, os.constants.errno.EPERM);
  t.regex(kthread!.message, /kernel thread/);

  const self = t.throws(() => native.acquireUffd(process.pid), { instanceOf: ElasticmemError });
  t.is(self?.code, 'EM_PTRACE');
  t.regex(self!.message, /monitor itself/);

  for (const bad of [0, -5, 1.5, 'abc', undefined]) {
    const e = t.throws(() => (native.acquireUffd as (p: unknown) => unknown)(bad), { instanceOf: ElasticmemError });
    t.is(e?.code, 'EM_BAD_ARG', `pid ${String(bad)}`);
  }

  // A thread id is not a process id.
  const live = await startTarget(t, { memfdMiB: 1, anonMiB: 1 });
  const churn = live.cmd('churn memfd 1500 2 0.1');
  await sleep(200);
  const tid = fs.readdirSync(`/proc/${live.pid}/task`).map(Number).find((x) => x !== live.pid)!;
  t.truthy(tid, 'the churn threads are running');
  const thr = t.throws(() => native.acquireUffd(tid), { instanceOf: ElasticmemError });
  t.is(thr?.code, 'EM_BAD_ARG');
  t.regex(thr!.message, /is a thread/);
  t.is(parseReply(await churn).corrupt, 0);
  t.deepEqual(uffdsOf(live.pid), []);

  const low = t.throws(() => native.closeFd(2), { instanceOf: ElasticmemError });
  t.is(low?.code, 'EM_BAD_ARG');
  const ebadf = t.throws(() => native.closeFd(987654), { instanceOf: ElasticmemError });
  t.is(ebadf?.errno, os.constants.errno.EBADF);
});

test.serial('a target already traced by someone else gets a clear error and is left untouched', async (t) => {
  const tg = await startTarget(t, { memfdMiB: 1, anonMiB: 1 });
  const strace = spawn('strace', ['-o', '/dev/null', '-p', String(tg.pid)], { stdio: 'ignore' });
  t.teardown(async () => {
    if (strace.exitCode === null && strace.signalCode === null) {
      const gone = new Promise((r) => strace.once('close', r));
      strace.kill('SIGKILL');
      await gone;
    }
  });
  const tracerOf = () => Number(/^TracerPid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${tg.pid}/status`, 'utf8'))![1]);
  for (let i = 0; i < 200 && tracerOf() === 0; i++) await sleep(10);
  t.is(tracerOf(), strace.pid!);

  const e = t.throws(() => native.acquireUffd(tg.pid), { instanceOf: ElasticmemError });
  t.is(e?.code, 'EM_PTRACE');
  t.is(e?.errno, os.constants.errno.EPERM);
  t.regex(e!.message, new RegExp(`already traced by process ${strace.pid} \\(strace\\)`));
  t.deepEqual(uffdsOf(tg.pid), [], 'nothing was created in the target');
  t.is(await tg.cmd('ping'), 'ok');

  // Once the other tracer is gone, the same target attaches normally.
  const gone = new Promise((r) => strace.once('close', r));
  strace.kill('SIGKILL');
  await gone;
  for (let i = 0; i < 200 && tracerOf() !== 0; i++) await sleep(10);
  const a = native.acquireUffd(tg.pid);
  closeLater(t, a.fd);
  t.is(a.route, 'syscall');
});

test.serial('an injection into a nanosleep resumes it with its remaining time (restart_syscall)', async (t) => {
  const tg = await startTarget(t, { memfdMiB: 1, anonMiB: 1 });
  const slept = tg.cmd('sleep 1500');
  await sleep(50);
  for (let i = 0; i < 20; i++) {
    testOnly._testMadviseDontneed(tg.pid, tg.memfd.start, PAGE);
    await sleep(25);
  }
  const r = parseReply(await slept);
  t.is(r.early, 0, 'nanosleep was not cut short by the injections');
  t.true(r.ms >= 1500 && r.ms < 2500, `slept ${r.ms} ms for 1500 (not restarted from scratch either)`);
});

test.serial('a target stopped with SIGSTOP stays stopped through an injection and continues on SIGCONT', async (t) => {
  const tg = await startTarget(t, { memfdMiB: 1, anonMiB: 1 });
  const state = () => fs.readFileSync(`/proc/${tg.pid}/stat`, 'utf8').split(') ')[1][0];
  process.kill(tg.pid, 'SIGSTOP');
  for (let i = 0; i < 100 && state() !== 'T'; i++) await sleep(10);
  t.is(state(), 'T');
  testOnly._testMadviseDontneed(tg.pid, tg.memfd.start, PAGE);
  await sleep(50);
  t.is(state(), 'T', 'job-control stop survives the injection');
  process.kill(tg.pid, 'SIGCONT');
  t.is(await tg.cmd('ping'), 'ok');
});

test.serial('signals arriving during injections are delivered to the target afterwards, none lost', async (t) => {
  const tg = await startTarget(t, { memfdMiB: 2, anonMiB: 1 });
  await tg.cmd('fill memfd 5');
  // For 2 s a separate process sends real-time signals (they queue, so every one sent
  // must be handled exactly once) and SIGUSR1 while we inject continuously: many
  // arrive while the borrowed thread is stopped and must be re-delivered, not
  // swallowed, and our own single-step SIGTRAP must never reach the target.
  const script = `n=0; end=$((SECONDS+2)); while [ $SECONDS -lt $end ]; do
    kill -s RTMIN+1 ${tg.pid} 2>/dev/null && n=$((n+1)); kill -s USR1 ${tg.pid} || exit 1; done; echo $n`;
  const spammer = spawn('bash', ['-c', script], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  spammer.stdout!.on('data', (d) => (out += d));
  const done = new Promise<number | null>((r) => spammer.once('close', r));
  t.teardown(() => {
    spammer.kill('SIGKILL');
  });
  let injections = 0;
  while (spammer.exitCode === null) {
    testOnly._testMadviseDontneed(tg.pid, tg.memfd.start, 8 * PAGE, 2);
    injections++;
    if (injections % 10 === 0) await new Promise((r) => setImmediate(r));
  }
  t.is(await done, 0, 'the target stayed alive throughout');
  const sent = Number(out.trim());
  const counts = parseReply(await tg.cmd('sigcount'));
  t.true(sent > 100, `${sent} real-time signals sent`);
  t.true(injections >= 10, `${injections} injections overlapped the signals`);
  t.is(counts.rt, sent, 'every queued real-time signal was handled exactly once');
  t.true(counts.usr1 > 0);
  t.log(`${injections} injections while ${sent} SIGRTMIN+1 were sent; all handled`);
  t.deepEqual(parseReply(await tg.cmd('verify memfd')).corrupt, 0);
});

test.serial('a thread waiting in a kernel-mode userfaultfd fault cannot be borrowed: clear timeout, target unharmed', async (t) => {
  const tg = await startTarget(t, { memfdMiB: 2, anonMiB: 1 });
  const a = native.acquireUffd(tg.pid);
  closeLater(t, a.fd);
  const srv = await serve(t, a.fd, tg.memfd.start, tg.memfd.length, true, true);
  // read(2) into a missing page: the kernel itself waits for the fault, and only
  // serving it ends the wait. The target's only thread is stuck there.
  const pending = tg.cmd('kzero memfd 9');
  await srv.waitFor(/^fault /);
  t.true(await mainThreadWaitsOnUffd(tg.pid, 1000), 'the only thread waits in the fault');
  const t0 = performance.now();
  const e = t.throws(() => testOnly._testMadviseDontneed(tg.pid, tg.memfd.start, PAGE), { instanceOf: ElasticmemError });
  const took = performance.now() - t0;
  t.is(e?.code, 'EM_PTRACE');
  t.is(e?.errno, os.constants.errno.ETIMEDOUT);
  t.regex(e!.message, /did not stop within/);
  t.true(took < 10_000, `gave up after ${took.toFixed(0)} ms`);
  // The abandoned attempt left nothing behind: no tracer, and the thread finishes once served.
  t.regex(fs.readFileSync(`/proc/${tg.pid}/status`, 'utf8'), /^TracerPid:\s+0$/m);
  srv.release();
  t.is(await pending, 'ok');
  t.is(await tg.cmd('read memfd 9'), 'ok sum=0');
  testOnly._testMadviseDontneed(tg.pid, tg.memfd.start, PAGE);
  t.is(await tg.cmd('ping'), 'ok');
});

test.serial('RemoteTask: raw syscalls, scratch memory, a hung injected syscall timed out and undone, sessions serialised', async (t) => {
  const bin = buildInjectCheck();
  const tg = await startTarget(t, { memfdMiB: 2, anonMiB: 1 });
  await tg.cmd('fill memfd 9');
  const { stdout } = await promisify(execFile)(bin, [String(tg.pid)]).catch((e: { stdout?: string; message: string }) => {
    throw new Error(`inject-check failed: ${e.stdout ?? ''} ${e.message}`);
  });
  const lines = stdout.trim().split('\n');
  t.log(lines.join('\n'));
  for (const name of ['getpid', 'raw-errno', 'check-throws', 'scratch', 'scratch-big', 'timeout', 'broken-refuses', 'serialised'])
    t.true(lines.some((l) => l.startsWith(`ok ${name}`)), `check ${name}`);
  t.is(lines.at(-1), 'done failures=0');
  // An injected pause() that never returned was interrupted and the thread restored:
  // no stray SIGTRAP killed the target, its read(2) on stdin resumed, memory intact.
  t.is(await tg.cmd('ping'), 'ok');
  t.deepEqual(parseReply(await tg.cmd('verify memfd')).corrupt, 0);
  t.regex(fs.readFileSync(`/proc/${tg.pid}/status`, 'utf8'), /^TracerPid:\s+0$/m);

  // A target killed while we hold its thread: a clear EM_NO_PROCESS, no hang.
  const doomed = await startTarget(t, { memfdMiB: 1, anonMiB: 1 });
  const killed = await promisify(execFile)(bin, [String(doomed.pid), 'kill']);
  t.regex(killed.stdout, /^ok killed .*does not exist|^ok killed .*was killed/m);
  t.regex(killed.stdout, /done failures=0/);
  const gone = await doomed.exited;
  t.is(gone.code, 137);
});

for (const user of [undefined, 'nobody'] as const) {
  test.serial(`a real QEMU (TCG, seccomp sandbox on${user ? ', as nobody' : ''}) gets its uffd and keeps running`, async (t) => {
    // As with the target: a grandchild under sh, never our own child (libuv's waitpid).
    const q = await startSandboxedQemu(t, { dirPrefix: 'em-attach-qemu-', user, memfd: true });
    const { pid, qmpPath } = q;
    t.true(fs.existsSync(qmpPath), `QEMU started (stderr: ${q.stderr()})`);
    t.deepEqual(await qmp(qmpPath, 'query-status'), { status: 'running', singlestep: false, running: true });
    t.regex(fs.readFileSync(`/proc/${pid}/status`, 'utf8'), /^Seccomp:\s+2$/m, 'seccomp filter active');

    const a = native.acquireUffd(pid);
    closeLater(t, a.fd);
    t.is(a.route, user ? 'dev-userfaultfd' : 'syscall');
    t.deepEqual(uffdsOf(pid), [a.targetFd]);
    // Guest RAM is the 64 MiB memfd mapping; DONTNEED there only unmaps (the memfd keeps the pages).
    const ram = fs
      .readFileSync(`/proc/${pid}/maps`, 'utf8')
      .split('\n')
      .map((l) => /^([0-9a-f]+)-([0-9a-f]+) rw-s .*memfd:/.exec(l))
      .find((m) => m && BigInt('0x' + m[2]) - BigInt('0x' + m[1]) === 64n << 20n);
    t.truthy(ram, 'guest RAM mapping found');
    for (let i = 0; i < 20; i++) testOnly._testMadviseDontneed(pid, '0x' + ram![1], 256 * PAGE);
    t.deepEqual(await qmp(qmpPath, 'query-status'), { status: 'running', singlestep: false, running: true }, 'QEMU main loop still serves QMP');
    const found = native.findTargetUffd(pid);
    closeLater(t, found!.fd);
    t.is(found!.targetFd, a.targetFd);
  });
}
