/**
 * The test/demo guest under real libvirt: starts virtlogd/libvirtd when they are not
 * running (no systemd on our hosts), fills a domain template of vm-configs/libvirt,
 * boots the guest and destroys it again. Shared by `elasticmem demo`, `bench vm` and the
 * tests (test/helpers/libvirt.ts, which ties the cleanup to t.teardown).
 *
 * Domains are named emtest-<pid of the owning process>-<random>; a domain whose process
 * no longer exists is a leftover of a killed run and is removed by ensureLibvirtd(),
 * without touching domains of runs still alive.
 */
import { execFile, spawn } from 'node:child_process';
import { randomUUID, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { ConsoleReader, guestCmdline, guestImage, REPO_ROOT, type WorkloadParams, DEFAULT_WORKLOAD } from './guest.ts';
import { pidAlive } from '../proc/alive.ts';

const run = promisify(execFile);

export const LIBVIRT_URI = 'qemu:///system';
export const TEMPLATE_DIR = path.join(REPO_ROOT, 'vm-configs', 'libvirt');
/** Alias of the virtio-mem device in both templates (virsh update-memory-device --alias). */
export const VIRTIO_MEM_ALIAS = 'ua-vmem0';
const NAME_PREFIX = 'emtest-';

/** Runs virsh against qemu:///system; rejects with virsh's own message. */
export async function virsh(args: string[], timeoutMs = 60_000): Promise<string> {
  try {
    const { stdout } = await run('virsh', ['-c', LIBVIRT_URI, ...args], { timeout: timeoutMs });
    return stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`virsh ${args.join(' ')}: ${(err.stderr || err.message).trim()}`);
  }
}

async function libvirtReady(): Promise<boolean> {
  try {
    await run('virsh', ['-c', LIBVIRT_URI, 'version'], { timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs the start script under flock with stdio on /dev/null: a daemon that kept our
 * pipes open would make us wait for it forever. -o: the lock's descriptor is not passed
 * on to the script, so the daemons it starts do not hold the lock for their lifetime
 * (a later start, after a libvirtd crash, would wait on it for ever).
 */
function startDaemons(script: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('flock', ['-o', '/tmp/em-libvirtd.lock', 'sh', '-c', script], { stdio: 'ignore' });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error('starting virtlogd/libvirtd took more than 30 s'));
    }, 30_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot start virtlogd/libvirtd: ${e.message}`));
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`starting virtlogd/libvirtd failed (exit ${code}); see /var/log/libvirt/libvirtd.log`));
    });
  });
}

/**
 * Gives /dev/kvm the owner and mode Debian's udev rules give it (root:kvm, 0660), where
 * no udev runs to do it (our hosts: no systemd). A /dev/kvm that exists but that
 * libvirt's QEMU user (group kvm) cannot open makes libvirt 9 throw its QEMU
 * capabilities away at every lookup ("KVM was enabled when probing, but it is not
 * available now": its probe opens /dev/kvm as root, its validity check as that user),
 * so every define and start re-probes QEMU first: seconds when idle, over a minute
 * while guests run (a test's `virsh define` timed out on it). Without /dev/kvm, or
 * without a kvm group, nothing is done; the guests run under TCG either way.
 */
export function shareKvmWithKvmGroup(dev = '/dev/kvm'): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(dev);
  } catch {
    return;
  }
  const line = fs.readFileSync('/etc/group', 'utf8').split('\n').find((l) => l.startsWith('kvm:'));
  if (!line) return;
  const gid = Number(line.split(':')[2]);
  if (st.gid === gid && (st.mode & 0o060) === 0o060) return;
  fs.chownSync(dev, st.uid, gid);
  fs.chmodSync(dev, (st.mode & 0o7777) | 0o060);
}

let ensured: Promise<void> | null = null;

/**
 * Makes sure virtlogd and libvirtd run and answer. Idempotent and safe to call from
 * every test file (and from several processes: the start is serialised by flock).
 */
export function ensureLibvirtd(): Promise<void> {
  ensured ??= (async () => {
    if (process.getuid?.() !== 0) throw new Error('booting the guest under libvirt needs root (qemu:///system)');
    shareKvmWithKvmGroup();
    if (!(await libvirtReady())) {
      // pgrep -x: exact process names, so nothing else matches.
      const script = 'pgrep -x virtlogd >/dev/null || virtlogd -d; pgrep -x libvirtd >/dev/null || libvirtd -d';
      await startDaemons(script);
      const deadline = Date.now() + 30_000;
      while (!(await libvirtReady())) {
        if (Date.now() > deadline) throw new Error('libvirtd did not answer `virsh -c qemu:///system version` within 30 s (see /var/log/libvirt/libvirtd.log)');
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    await removeStaleDomains();
  })();
  // A failed start may succeed on a later call (e.g. after a crash of libvirtd).
  ensured.catch(() => {
    ensured = null;
  });
  return ensured;
}


/** Removes emtest-<pid>-* domains, and their /tmp folders, whose test process is gone. */
async function removeStaleDomains(): Promise<void> {
  const names = (await virsh(['list', '--all', '--name'])).split('\n').map((s) => s.trim()).filter(Boolean);
  for (const name of names) {
    const m = /^emtest-(\d+)-[0-9a-f]+$/.exec(name);
    if (!m || pidAlive(+m[1])) continue;
    await destroyDomain(name);
  }
  for (const entry of fs.readdirSync(os.tmpdir())) {
    const m = /^emtest-(\d+)-[0-9a-f]+-/.exec(entry);
    if (m && !pidAlive(+m[1])) fs.rmSync(path.join(os.tmpdir(), entry), { recursive: true, force: true });
  }
}

/** Destroys (if running) and undefines a domain; missing domains are fine. */
export async function destroyDomain(name: string): Promise<void> {
  await virsh(['destroy', name]).catch(() => undefined);
  await virsh(['undefine', name]).catch((e: Error) => {
    if (!/failed to get domain|Domain not found/i.test(e.message)) throw e;
  });
}

export interface BootOptions {
  /** Boot RAM in MiB (one NUMA cell). */
  memMiB: number;
  /** Hot-add ceiling in MiB; default memMiB + 1024. The virtio-mem region is (max - mem) rounded down to 128 MiB. */
  maxMemMiB?: number;
  /** Room for DIMMs (MiB, a multiple of 128) above that, in <maxMemory>; default 0. */
  dimmMiB?: number;
  template: 'memfd' | 'private';
  workload?: WorkloadParams;
}

export interface BootedDomain {
  name: string;
  uuid: string;
  /** QEMU's pid (from /run/libvirt/qemu/<name>.pid). */
  pid: number;
  console: ConsoleReader;
  /** Size of the virtio-mem device region (MiB). */
  virtioMemMiB: number;
  /** Folder with the domain XML and console log; removed at teardown. */
  dir: string;
}

/** Fills a template; every @PLACEHOLDER@ must be given and used. */
export function fillTemplate(template: string, values: Record<string, string | number>): string {
  let out = template;
  for (const [k, v] of Object.entries(values)) out = out.split(`@${k}@`).join(String(v));
  const left = out.match(/@[A-Z_]+@/g);
  if (left) throw new Error(`template placeholders left unfilled: ${[...new Set(left)].join(', ')}`);
  return out;
}

function checkBoot(o: BootOptions): { mem: number; max: number; vmem: number } {
  if (!Number.isInteger(o.memMiB) || o.memMiB < 128) throw new Error(`memMiB must be an integer >= 128 (the guest kernel needs ~100 MiB), got ${o.memMiB}`);
  const max = o.maxMemMiB ?? o.memMiB + 1024;
  if (!Number.isInteger(max)) throw new Error(`maxMemMiB must be an integer, got ${max}`);
  const vmem = Math.floor((max - o.memMiB) / 128) * 128;
  if (vmem < 128) throw new Error(`maxMemMiB (${max}) must exceed memMiB (${o.memMiB}) by at least 128 MiB (virtio-mem region)`);
  if (o.template !== 'memfd' && o.template !== 'private') throw new Error(`template must be 'memfd' or 'private', got ${String(o.template)}`);
  const w = o.workload ?? DEFAULT_WORKLOAD;
  if (w.sizeMiB > o.memMiB - 96) throw new Error(`workload sizeMiB ${w.sizeMiB} does not fit in ${o.memMiB} MiB of guest RAM (keep ~96 MiB for the kernel)`);
  const dimm = o.dimmMiB ?? 0;
  if (!Number.isInteger(dimm) || dimm < 0 || dimm % 128 !== 0) throw new Error(`dimmMiB must be a non-negative multiple of 128, got ${dimm}`);
  return { mem: o.memMiB, max: o.memMiB + vmem + dimm, vmem };
}

/** Registers a cleanup with whoever owns the domain (t.teardown in tests, a cleanup list in the demo and bench). */
export type RegisterCleanup = (fn: () => unknown) => void;

/**
 * Defines and starts a domain running the test guest. The cleanup that destroys and
 * undefines it and deletes its files is handed to `registerCleanup` before anything
 * can fail, so the caller removes the domain whether booting succeeded or not.
 */
export async function bootDomain(opts: BootOptions, registerCleanup: RegisterCleanup): Promise<BootedDomain> {
  const { mem, max, vmem } = checkBoot(opts);
  const image = guestImage();
  await ensureLibvirtd();

  const name = `${NAME_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`;
  const uuid = randomUUID();
  // Under /tmp, world-traversable: QEMU runs as libvirt-qemu (libvirt opens the console
  // file itself and hands QEMU the fd, but keep the folder readable for debugging).
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${name}-`));
  const consolePath = path.join(dir, 'console.log');
  const reader = new ConsoleReader(consolePath);
  // Registered before anything else can fail, so the folder never outlives its owner.
  registerCleanup(async () => {
    reader.close();
    await destroyDomain(name);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  fs.chmodSync(dir, 0o755);
  const xml = fillTemplate(fs.readFileSync(path.join(TEMPLATE_DIR, `${opts.template}.xml`), 'utf8'), {
    NAME: name,
    UUID: uuid,
    MEM_MIB: mem,
    MAXMEM_MIB: max,
    VMEM_MIB: vmem,
    KERNEL: image.kernel,
    INITRD: image.initrd,
    CMDLINE: guestCmdline(opts.workload ?? DEFAULT_WORKLOAD),
    CONSOLE_LOG: consolePath,
  });
  const xmlPath = path.join(dir, 'domain.xml');
  fs.writeFileSync(xmlPath, xml);

  await virsh(['define', xmlPath]);
  await virsh(['start', name]);
  const pidFile = `/run/libvirt/qemu/${name}.pid`;
  const pid = parseInt(fs.readFileSync(pidFile, 'utf8'), 10);
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`no QEMU pid in ${pidFile}`);
  return { name, uuid, pid, console: reader, virtioMemMiB: vmem, dir };
}

/** Sets the virtio-mem device's requested size (hot-add / unplug) through libvirt. */
export async function setVirtioMemRequested(name: string, mib: number): Promise<void> {
  if (!Number.isInteger(mib) || mib < 0 || mib % 2 !== 0) throw new Error(`requested size must be a non-negative even number of MiB (2 MiB blocks), got ${mib}`);
  await virsh(['update-memory-device', name, '--alias', VIRTIO_MEM_ALIAS, '--requested-size', `${mib}MiB`]);
}
