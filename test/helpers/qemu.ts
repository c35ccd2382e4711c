/**
 * Plain QEMU (no libvirt) for tests of the pid: and qmp: targets. The command line
 * comes from vm-configs/qemu-cmdline.sh, so tests run exactly what the docs show.
 * QEMU runs as a child of the test process, as root; t.teardown stops it (SIGTERM,
 * then SIGKILL) and removes its socket and console file, failed tests included.
 * Each QEMU lives in /tmp/emqemu-<test pid>-XXXXXX with a pidfile, so a QEMU left
 * behind by a killed test run is found and stopped by the next bootQemu().
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { ExecutionContext } from 'ava';
import { ConsoleReader, DEFAULT_WORKLOAD, guestCmdline, guestImage, REPO_ROOT, type WorkloadParams } from './guest.ts';
import { pidAlive } from '../../backend/proc/alive.ts';

const run = promisify(execFile);
const CMDLINE_SCRIPT = path.join(REPO_ROOT, 'vm-configs', 'qemu-cmdline.sh');

export interface QemuOptions {
  /** Boot RAM in MiB (default 256). */
  memMiB?: number;
  /** Hot-add ceiling in MiB (default memMiB + 1024). */
  maxMemMiB?: number;
  /** Room for DIMMs above it (MiB, multiple of 128; default 0). */
  dimmMiB?: number;
  /** 'memfd' (memory-backend-memfd,share=on, default) or 'private' (memory-backend-ram). */
  memory?: 'memfd' | 'private';
  workload?: WorkloadParams;
  /** A second QMP socket (qmp2Path) for the test's own commands. */
  secondQmp?: boolean;
}

export interface BootedQemu {
  pid: number;
  /** QMP Unix socket (the qmp:<path> target). */
  qmpPath: string;
  /** The second QMP socket, with secondQmp (QEMU's first -qmp is what the daemon uses). */
  qmp2Path?: string;
  console: ConsoleReader;
  child: ChildProcess;
  dir: string;
  /** The virtio-mem device id (QOM path /machine/peripheral/<id>). */
  virtioMemId: string;
}

/** The argv qemu-system-x86_64 gets (one line per argument from qemu-cmdline.sh). */
export async function qemuArgs(o: { memMiB: number; maxMemMiB: number; dimmMiB?: number; memory: 'memfd' | 'private'; qmpPath: string; serialPath: string; workload: WorkloadParams; name: string }): Promise<string[]> {
  const args = [
    '--mem', String(o.memMiB), '--maxmem', String(o.maxMemMiB), '--dimm-room', String(o.dimmMiB ?? 0),
    '--qmp', o.qmpPath, '--serial', o.serialPath, '--name', o.name,
    // The same guest command line libvirt domains get.
    '--cmdline', guestCmdline(o.workload),
  ];
  if (o.memory === 'private') args.push('--private');
  const { stdout } = await run('bash', [CMDLINE_SCRIPT, ...args]);
  return stdout.split('\n').filter((l) => l.length > 0);
}


/** Stops QEMUs (and removes folders) of test processes that no longer exist. */
export function removeStaleQemus(): void {
  const tmp = os.tmpdir();
  for (const entry of fs.readdirSync(tmp)) {
    const m = /^emqemu-(\d+)-/.exec(entry);
    if (!m || pidAlive(+m[1])) continue;
    const dir = path.join(tmp, entry);
    try {
      const qpid = parseInt(fs.readFileSync(path.join(dir, 'qemu.pid'), 'utf8'), 10);
      // Only a process whose command line names this folder is ours to kill.
      if (qpid > 0 && fs.readFileSync(`/proc/${qpid}/cmdline`, 'utf8').includes(dir)) process.kill(qpid, 'SIGKILL');
    } catch {
      // no pidfile or process already gone
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export async function bootQemu(t: ExecutionContext, opts: QemuOptions = {}): Promise<BootedQemu> {
  const memMiB = opts.memMiB ?? 256;
  const maxMemMiB = opts.maxMemMiB ?? memMiB + 1024;
  const workload = opts.workload ?? DEFAULT_WORKLOAD;
  if (workload.sizeMiB > memMiB - 96) throw new Error(`workload sizeMiB ${workload.sizeMiB} does not fit in ${memMiB} MiB of guest RAM (keep ~96 MiB for the kernel)`);
  guestImage();
  removeStaleQemus();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `emqemu-${process.pid}-`));
  const qmpPath = path.join(dir, 'qmp.sock');
  const serialPath = path.join(dir, 'console.log');
  let args: string[];
  try {
    args = await qemuArgs({
      memMiB, maxMemMiB, dimmMiB: opts.dimmMiB, memory: opts.memory ?? 'memfd', qmpPath, serialPath, workload,
      name: path.basename(dir),
    });
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    const err = e as { stderr?: string; message: string };
    throw new Error(`vm-configs/qemu-cmdline.sh refused the options: ${(err.stderr || err.message).trim()}`);
  }
  args.push('-pidfile', path.join(dir, 'qemu.pid'));
  const qmp2Path = opts.secondQmp ? path.join(dir, 'qmp2.sock') : undefined;
  if (qmp2Path) args.push('-qmp', `unix:${qmp2Path},server,nowait`);

  let stderr = '';
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  child.on('error', (e) => {
    stderr += `spawn qemu-system-x86_64: ${e.message}`;
  });
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  const reader = new ConsoleReader(serialPath);
  t.teardown(async () => {
    reader.close();
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(killer);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  // QEMU creates the QMP socket before the guest runs; wait for it (or for an early exit).
  const deadline = Date.now() + 15_000;
  while (!fs.existsSync(qmpPath)) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`qemu exited early (${child.exitCode ?? child.signalCode}): ${stderr.trim()}`);
    if (Date.now() > deadline) throw new Error(`qemu did not create ${qmpPath} within 15 s: ${stderr.trim()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  if (child.pid === undefined) throw new Error(`qemu did not start: ${stderr.trim()}`);
  return { pid: child.pid, qmpPath, qmp2Path, console: reader, child, dir, virtioMemId: 'vm0' };
}

/**
 * One QMP command over a fresh connection (negotiates capabilities first). For test
 * set-up only (e.g. qom-set requested-size); the product has its own QMP client.
 */
export async function qmpCommand(socketPath: string, execute: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(socketPath);
    let buf = '';
    let step = 0; // 0: greeting, 1: capabilities reply, 2: command reply
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`QMP ${execute} on ${socketPath}: no reply within ${timeoutMs} ms`));
    }, timeoutMs);
    const finish = (err: Error | null, value?: unknown) => {
      clearTimeout(timer);
      sock.end();
      if (err) reject(err);
      else resolve(value);
    };
    sock.on('error', (e) => finish(new Error(`QMP ${socketPath}: ${e.message}`)));
    sock.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as { QMP?: unknown; event?: string; return?: unknown; error?: { class: string; desc: string } };
        if (msg.event) continue;
        if (step === 0 && msg.QMP) {
          step = 1;
          sock.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n');
        } else if (step === 1) {
          if (msg.error) return finish(new Error(`QMP qmp_capabilities: ${msg.error.desc}`));
          step = 2;
          sock.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + '\n');
        } else if (step === 2) {
          if (msg.error) return finish(new Error(`QMP ${execute}: ${msg.error.class}: ${msg.error.desc}`));
          return finish(null, msg.return);
        }
      }
    });
  });
}
