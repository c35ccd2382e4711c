/**
 * native/proc-start.ts: a process counts as ended only when /proc says so. A /proc read
 * that fails for another reason (here EMFILE, every descriptor taken) must not read as
 * "gone": the pager's lock and the daemon's records of a live QEMU would be deleted.
 */
import test from 'ava';
import { spawnSync, spawn } from 'node:child_process';
import path from 'node:path';
import { startTimeOf, processEnded } from '../native/proc-start.ts';

const MODULE = path.resolve(import.meta.dirname, '../native/proc-start.ts');

test('ended: not there, or another process under the pid; alive: this process', async (t) => {
  const me = startTimeOf(process.pid)!;
  t.true(me > 0);
  t.false(processEnded(process.pid, me));
  t.true(processEnded(process.pid, me + 1), 'another start time: another process');
  const child = spawn('true');
  const pid = child.pid!;
  await new Promise((r) => child.once('exit', r));
  t.true(processEnded(pid, 1), 'a reaped process');
  t.is(startTimeOf(pid), null);
});

test('with every file descriptor taken (EMFILE) a live process is not taken for ended; startTimeOf says why', (t) => {
  const script = `
    import fs from 'node:fs';
    import { startTimeOf, processEnded } from ${JSON.stringify(MODULE)};
    const me = startTimeOf(process.pid);
    const fds = [];
    try { for (;;) fds.push(fs.openSync('/dev/null', 'r')); } catch (e) { if (e.code !== 'EMFILE') throw e; }
    let err = null;
    try { startTimeOf(process.pid); } catch (e) { err = { code: e.code, errno: e.errno, message: e.message }; }
    const ended = processEnded(process.pid, me);
    for (const fd of fds) fs.closeSync(fd);
    console.log(JSON.stringify({ ended, err }));`;
  const r = spawnSync('prlimit', ['--nofile=64:64', process.execPath, '--import=tsx', '--input-type=module', '-e', script], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.false(out.ended, 'a live process, whatever /proc could not answer');
  t.is(out.err?.code, 'EM_SYSCALL');
  t.is(out.err?.errno, 24, 'EMFILE');
  t.regex(out.err?.message ?? '', /cannot read \/proc\/\d+\/stat: EMFILE/);
});
