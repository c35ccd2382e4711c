/**
 * A QEMU not managed by libvirt, named by `pid:<PID>` or `qmp:<socket path>`. We talk to
 * it through its QMP socket (our own client). For pid: the socket is found on QEMU's
 * command line (-qmp unix:PATH, or -chardev socket,path=PATH with -mon mode=control);
 * for qmp: the pid is found from the socket's peer credentials.
 *
 * Stable VM id (the store's key prefix): QEMU's `-uuid` (query-uuid) when it has one;
 * otherwise `qemu-<pid>-<start time>`, which names this QEMU process uniquely for its
 * whole life on this host (a guest's RAM lives exactly as long as its process).
 */
import net from 'node:net';
import fs from 'node:fs';
import { ElasticmemError } from '../../native/errors.ts';
import { peerCred } from '../daemon/peercred.ts';
import { QmpClient, notQmp } from './qmp.ts';
import { discoverGuestMemory, type Monitor } from './ramblocks.ts';
import { cmdlineOf, isQemu, startTimeOf } from './proc.ts';
import type { Target, TargetKind } from './target.ts';

/** QMP socket path from a QEMU command line, or null. */
export function qmpSocketFromCmdline(argv: string[]): string | null {
  const chardevs = new Map<string, string>();
  const monitors: string[] = [];
  for (let i = 0; i < argv.length - 1; i++) {
    const a = argv[i]!.replace(/^--/, '-');
    const v = argv[i + 1]!;
    if (a === '-qmp') {
      const m = /^unix:([^,]+)/.exec(v);
      if (m) return m[1]!;
    }
    if (a === '-chardev' && v.startsWith('socket')) {
      const id = /(?:^|,)id=([^,]+)/.exec(v)?.[1];
      const p = /(?:^|,)path=([^,]+)/.exec(v)?.[1];
      if (id && p) chardevs.set(id, p);
    }
    if (a === '-mon' && /mode=control/.test(v)) {
      const c = /(?:^|,)chardev=([^,]+)/.exec(v)?.[1];
      if (c) monitors.push(c);
    }
  }
  for (const c of monitors) if (chardevs.has(c)) return chardevs.get(c)!;
  return null;
}

function socketMonitor(client: QmpClient): Monitor & { close(): void } {
  return {
    qmp: (cmd, args) => client.execute(cmd, args),
    hmp: (line) => client.execute<string>('human-monitor-command', { 'command-line': line }),
    close: () => client.close(),
  };
}

/** Why a QMP socket did not connect, and what to give instead. */
function qmpConnectProblem(path: string, e: NodeJS.ErrnoException): string {
  const hint = "give the path of QEMU's -qmp unix:PATH,server=on socket";
  if (e.code === 'ENOENT') return `no such socket; ${hint}`;
  let isSocket = true;
  try {
    isSocket = fs.statSync(path).isSocket();
  } catch {
    // (gone meanwhile: the refusal below says enough)
  }
  if (!isSocket) return `it is not a socket; ${hint}`;
  if (e.code === 'ECONNREFUSED') return 'nobody listens (QEMU exited?)';
  return e.message;
}

async function pidOfQmpSocket(path: string): Promise<number> {
  const sock = net.connect(path);
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', () => resolve());
    sock.once('error', (e: NodeJS.ErrnoException) => reject(new ElasticmemError(`cannot connect to QMP socket ${path}: ${qmpConnectProblem(path, e)}`, e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? 'VM_NOT_FOUND' : 'QMP_UNREACHABLE')));
  });
  try {
    // Until QEMU accept()s, our peer sits in the listen queue, held by no process: wait
    // for the QMP greeting, which QEMU sends once the connection is its own.
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new ElasticmemError(`QMP socket ${path} sent no greeting within 10 s (is another client connected to it?)`, 'QMP_TIMEOUT')), 10_000);
      sock.once('data', (d: Buffer) => {
        clearTimeout(t);
        // (a QMP greeting is one JSON object: {"QMP": ...})
        const text = d.toString('utf8').trimStart();
        if (text.startsWith('{')) resolve(); else reject(notQmp(path, text.split(/\r?\n/)[0] ?? ''));
      });
      sock.once('close', () => { clearTimeout(t); reject(new ElasticmemError(`QMP socket ${path} closed the connection`, 'QMP_UNREACHABLE')); });
    });
    const cred = await peerCred(sock);
    const qemu = cred.pids.find((p) => isQemu(p));
    if (!qemu) throw new ElasticmemError(`the process behind ${path} (pid ${cred.pids.join(',')}) is not QEMU`, 'NOT_QEMU');
    return qemu;
  } finally {
    sock.destroy();
  }
}

/**
 * The VM id of a QEMU whose monitor does not answer, when the caller knows it otherwise
 * (the daemon's record of a QEMU it is taking over: with no monitor serving the uffd,
 * QEMU's main thread, which executes QMP commands, may be waiting on a page).
 */
export type SilentVmId = (pid: number, startTime: number) => string | null;

/** leftUffd: as for resolveLibvirt (a QEMU to take over is taken over in any run state). */
async function build(kind: TargetKind, pid: number, qmpPath: string, silentVmId?: SilentVmId, leftUffd?: (pid: number) => boolean): Promise<Target> {
  const startTime = startTimeOf(pid);
  if (startTime === null) throw new ElasticmemError(`process ${pid} is not running`, 'VM_NOT_RUNNING');
  const open = async () => socketMonitor(await QmpClient.connect(qmpPath));
  let vmId: string;
  try {
    const mon = await open();
    let uuid: string;
    try {
      const status = await mon.qmp<{ status: string }>('query-status');
      const runs = ['running', 'paused', 'prelaunch', 'suspended'].includes(status.status);
      if (!runs && !leftUffd?.(pid)) {
        throw new ElasticmemError(`QEMU pid ${pid} is not running (status: ${status.status})`, 'VM_NOT_RUNNING');
      }
      uuid = (await mon.qmp<{ UUID: string }>('query-uuid')).UUID;
    } finally {
      mon.close();
    }
    vmId = uuid && !/^0{8}-0{4}-0{4}-0{4}-0{12}$/.test(uuid) ? uuid : `qemu-${pid}-${startTime}`;
  } catch (e) {
    const known = (e as ElasticmemError).code === 'QMP_TIMEOUT' ? silentVmId?.(pid, startTime) : null;
    if (!known) throw e;
    vmId = known;
  }
  const spec = kind === 'pid' ? `pid:${pid}` : `qmp:${qmpPath}`;
  return {
    kind,
    spec,
    name: spec,
    vmId,
    pid,
    startTime,
    aliases: [`pid:${pid}`, `qmp:${qmpPath}`, vmId],
    openMonitor: open,
    async setRequestedSize(device, bytes) {
      const m = await open();
      try {
        await m.qmp('qom-set', { path: `/machine/peripheral/${device}`, property: 'requested-size', value: bytes });
      } finally { m.close(); }
    },
    async addDimm(bytes, backing) {
      const m = await open();
      try {
        const devs = await m.qmp<{ type: string; data: { id?: string } }[]>('query-memory-devices');
        let n = 0;
        while (devs.some((d) => d.data.id === `em-dimm${n}`)) n++;
        const id = `em-dimm${n}`;
        const backend = backing === 'memfd'
          ? { 'qom-type': 'memory-backend-memfd', id: `${id}-mem`, size: bytes, share: true }
          : { 'qom-type': 'memory-backend-ram', id: `${id}-mem`, size: bytes };
        await m.qmp('object-add', backend);
        try {
          await m.qmp('device_add', { driver: 'pc-dimm', id, memdev: `${id}-mem` });
        } catch (e) {
          await m.qmp('object-del', { id: `${id}-mem` }).catch(() => undefined);
          throw e;
        }
      } catch (e) {
        throw new ElasticmemError(`adding a ${bytes / 2 ** 20} MiB DIMM to QEMU pid ${pid} failed: ${(e as Error).message}. QEMU takes DIMMs when started with -m SIZE,slots=N,maxmem=MAX and room left below MAX`, 'GROW_FAILED');
      } finally {
        m.close();
      }
    },
    async discover() {
      const m = await open();
      try { return await discoverGuestMemory(pid, m); } finally { m.close(); }
    },
  };
}

export async function resolvePid(pidText: string, silentVmId?: SilentVmId, leftUffd?: (pid: number) => boolean): Promise<Target> {
  if (!/^\d+$/.test(pidText) || Number(pidText) <= 0) throw new ElasticmemError(`pid:${pidText}: not a process id; e.g. pid:12345`, 'VM_NOT_FOUND');
  const pid = Number(pidText);
  if (!fs.existsSync(`/proc/${pid}`)) throw new ElasticmemError(`pid:${pid}: no such process; give the pid of the running QEMU (pgrep -a qemu-system)`, 'VM_NOT_FOUND');
  if (!isQemu(pid)) throw new ElasticmemError(`pid:${pid} is not a QEMU process (${cmdlineOf(pid)[0] ?? 'unknown'})`, 'NOT_QEMU');
  const path = qmpSocketFromCmdline(cmdlineOf(pid));
  if (!path) throw new ElasticmemError(`pid:${pid} has no QMP Unix socket on its command line; start QEMU with -qmp unix:/path/qmp.sock,server=on,wait=off and attach qmp:/path/qmp.sock`, 'NO_QMP');
  return build('pid', pid, path, silentVmId, leftUffd);
}

export async function resolveQmp(path: string, silentVmId?: SilentVmId, leftUffd?: (pid: number) => boolean): Promise<Target> {
  if (!path.startsWith('/')) throw new ElasticmemError(`qmp:${path}: give the absolute path of the QMP socket, e.g. qmp:/run/vm1/qmp.sock`, 'VM_NOT_FOUND');
  return build('qmp', await pidOfQmpSocket(path), path, silentVmId, leftUffd);
}
