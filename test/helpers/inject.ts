/**
 * What the injection tests (attach.test.ts, inject-crash.test.ts) share: the
 * inject-check monitor binary, a real QEMU with its seccomp sandbox on started as a
 * grandchild, and one-shot QMP commands through the project's own client
 * (backend/targets/qmp.ts).
 */
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { QmpClient } from '../../backend/targets/qmp.ts';
import { cachePath } from '../../backend/vm/guest.ts';
import type { TeardownContext } from './target.ts';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Build test/fixtures/inject-check.cc against native/inject.cc (no N-API) when a source is newer. */
export function buildInjectCheck(): string {
  const srcs = ['test/fixtures/inject-check.cc', 'native/inject.cc', 'native/inject_code.cc', 'native/inject_threads.cc', 'native/procfs.cc', 'native/error.cc', 'native/wake_signal.cc'].map((f) => path.join(root, f));
  const deps = [...srcs, ...['inject.h', 'inject_internal.h', 'procfs.h', 'error.h', 'wake_signal.h'].map((h) => path.join(root, 'native', h))];
  const bin = cachePath('bin', 'inject-check');
  const built = fs.existsSync(bin) ? fs.statSync(bin).mtimeMs : 0;
  if (deps.some((d) => fs.statSync(d).mtimeMs > built)) {
    fs.mkdirSync(path.dirname(bin), { recursive: true });
    const tmp = `${bin}.${process.pid}.tmp`;
    execFileSync('g++', ['-std=c++17', '-O2', '-pthread', '-Wall', `-I${path.join(root, 'native')}`, '-o', tmp, ...srcs], { stdio: 'pipe' });
    fs.renameSync(tmp, bin);
  }
  return bin;
}

/** Connect, run one QMP command, close (QEMU serves one QMP client at a time); resolves with its "return". */
export async function qmp(socketPath: string, command: string): Promise<unknown> {
  const c = await QmpClient.connect(socketPath);
  try {
    return await c.execute(command);
  } finally {
    c.close();
  }
}

export interface SandboxedQemuOptions {
  /** Prefix of the temporary folder holding the QMP socket. */
  dirPrefix: string;
  /** Run QEMU as nobody (like libvirt's QEMU). */
  user?: 'nobody';
  /** Guest RAM as a shared memfd (memory-backend-memfd,share=on) instead of private anonymous memory. */
  memfd?: boolean;
}

export interface SandboxedQemu {
  pid: number;
  qmpPath: string;
  /** False once QEMU (and so its launcher) has exited. */
  alive(): boolean;
  /** Everything QEMU wrote to stderr so far. */
  stderr(): string;
}

/**
 * A QEMU (TCG, 64 MiB RAM, no devices, seccomp sandbox on) as a grandchild under sh,
 * never our own child (libuv's waitpid would eat ptrace stops). Resolves once the QMP
 * socket exists or after 6 s without it: the caller checks `fs.existsSync(qmpPath)`.
 * SIGKILLed and its folder removed at teardown.
 */
export async function startSandboxedQemu(t: TeardownContext, o: SandboxedQemuOptions): Promise<SandboxedQemu> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), o.dirPrefix));
  fs.chmodSync(dir, 0o777);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const qmpPath = path.join(dir, 'qmp.sock');
  const qemu = [
    'qemu-system-x86_64', '-machine', 'q35,accel=tcg', '-m', '64M',
    ...(o.memfd ? ['-object', 'memory-backend-memfd,id=ram,size=64M,share=on', '-machine', 'memory-backend=ram'] : []),
    '-nodefaults', '-display', 'none', '-serial', 'none',
    '-qmp', `unix:${qmpPath},server=on,wait=off`,
    '-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
  ];
  const argv = o.user ? ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups', ...qemu] : qemu;
  const sh = spawn('sh', ['-c', '"$@" & echo $!; wait $!', 'em-qemu-launcher', ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  sh.stderr!.on('data', (d) => (stderr += d));
  const pid: number = await new Promise((resolve) => sh.stdout!.once('data', (d) => resolve(Number(String(d).trim()))));
  t.teardown(async () => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    if (sh.exitCode === null) await new Promise((r) => sh.once('close', r));
  });
  for (let i = 0; i < 300 && !fs.existsSync(qmpPath); i++) await sleep(20);
  return { pid, qmpPath, alive: () => sh.exitCode === null, stderr: () => stderr };
}
