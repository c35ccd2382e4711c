/** A libvirt domain (by name or UUID) as an attach target. QMP/HMP go through libvirt. */
import fs from 'node:fs';
import { ElasticmemError } from '../../native/errors.ts';
import { discoverGuestMemory, type Monitor } from './ramblocks.ts';
import { startTimeOf } from './proc.ts';
import { virsh } from './virsh.ts';
import type { Target } from './target.ts';

export const LIBVIRT_RUN_DIR = '/run/libvirt/qemu';

export type DomState = { state: string; reason: string };

export async function domState(dom: string): Promise<DomState> {
  const out = (await virsh(['domstate', '--reason', dom])).trim();
  const m = /^(.*?)\s*\((.*)\)$/.exec(out);
  return m ? { state: m[1]!, reason: m[2]! } : { state: out, reason: '' };
}

function libvirtMonitor(dom: string): Monitor & { close(): void } {
  return {
    async qmp<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
      const out = await virsh(['qemu-monitor-command', dom, JSON.stringify(args ? { execute: cmd, arguments: args } : { execute: cmd })]);
      const msg = JSON.parse(out) as { return?: T; error?: { desc?: string } };
      if (msg.error) throw new ElasticmemError(`QMP ${cmd} (via libvirt): ${msg.error.desc}`, 'QMP_ERROR');
      return msg.return as T;
    },
    async hmp(line: string): Promise<string> {
      return virsh(['qemu-monitor-command', dom, '--hmp', line]);
    },
    close() { /* virsh connects per command */ },
  };
}

/** Map a pid to the libvirt domain that runs it, through libvirt's pid files. */
export function libvirtDomainOfPid(pid: number): string | null {
  let names: string[];
  try { names = fs.readdirSync(LIBVIRT_RUN_DIR).filter((f) => f.endsWith('.pid')); } catch { return null; }
  for (const f of names) {
    try {
      if (Number(fs.readFileSync(`${LIBVIRT_RUN_DIR}/${f}`, 'utf8').trim()) === pid) return f.slice(0, -4);
    } catch { /* raced with a shutdown */ }
  }
  return null;
}

/**
 * leftUffd: does this QEMU hold a userfaultfd a monitor that died left it (a take-over)?
 * Such a QEMU waits for a monitor whatever its run state ('in shutdown', 'crashed' with
 * on_crash=preserve...): only that it is alive matters.
 */
export async function resolveLibvirt(spec: string, leftUffd?: (pid: number) => boolean): Promise<Target> {
  if (!/^[A-Za-z0-9_.:+-]{1,200}$/.test(spec)) {
    throw new ElasticmemError(`'${spec}' is not a VM: name a libvirt domain (name or UUID), pid:<PID> or qmp:<socket path>`, 'VM_NOT_FOUND');
  }
  const uuid = (await virsh(['domuuid', spec])).trim();
  const name = (await virsh(['domname', uuid])).trim();
  const st = await domState(name);
  // (pmsuspended: the guest sleeps in RAM, which is there to page)
  const runs = st.state === 'running' || st.state === 'paused' || st.state === 'pmsuspended';
  const notRunning = () => new ElasticmemError(`domain '${name}' is not running (state: ${st.state}${st.reason ? `, ${st.reason}` : ''}); start it with: virsh start ${name}`, 'VM_NOT_RUNNING');
  let pid: number;
  try {
    pid = Number(fs.readFileSync(`${LIBVIRT_RUN_DIR}/${name}.pid`, 'utf8').trim());
  } catch (e) {
    if (!runs) throw notRunning();
    throw new ElasticmemError(`domain '${name}' is running but its QEMU pid file ${LIBVIRT_RUN_DIR}/${name}.pid cannot be read (${(e as Error).message}); is it a QEMU domain on qemu:///system?`, 'VM_NOT_RUNNING');
  }
  const startTime = pid > 0 ? startTimeOf(pid) : null;
  if (!runs && !(startTime !== null && leftUffd?.(pid))) throw notRunning();
  if (!pid || startTime === null) throw new ElasticmemError(`domain '${name}': QEMU pid ${pid} is not alive`, 'VM_NOT_RUNNING');
  return {
    kind: 'libvirt',
    spec: name,
    name,
    vmId: uuid,
    pid,
    startTime,
    aliases: [name, uuid, `pid:${pid}`],
    openMonitor: async () => libvirtMonitor(name),
    async setRequestedSize(device, bytes) {
      // libvirt's alias of the device is QEMU's device id; sizes in KiB.
      await virsh(['update-memory-device', name, '--alias', device, '--requested-size', String(bytes / 1024), '--live']);
    },
    async addDimm(bytes) {
      // libvirt picks the backend from the domain's <memoryBacking> (memfd + shared: a
      // shared memfd, as the boot RAM) and names the device dimmN; node 0 exists in
      // every domain that allows hot-add (a NUMA cell is required for <maxMemory>).
      const dir = fs.mkdtempSync('/tmp/elasticmem-dimm-');
      try {
        const file = `${dir}/dimm.xml`;
        fs.writeFileSync(file, `<memory model='dimm'>\n  <target>\n    <size unit='KiB'>${bytes / 1024}</size>\n    <node>0</node>\n  </target>\n</memory>\n`);
        await virsh(['attach-device', name, file, '--live']);
      } catch (e) {
        throw new ElasticmemError(`adding a ${bytes / 2 ** 20} MiB DIMM to '${name}' failed: ${(e as Error).message.trim()}. A domain takes DIMMs when it has <maxMemory slots='N'> with room above its memory and a <numa> cell`, 'GROW_FAILED');
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
    async discover() {
      return discoverGuestMemory(pid, libvirtMonitor(name));
    },
  };
}
