/**
 * The <vm> argument, checked for its form before the daemon is asked (the daemon
 * resolves what it names): a mistyped pid: or qmp: is a command-line mistake (exit 2),
 * not "no daemon running" or a lookup failure.
 */
import os from 'node:os';
import path from 'node:path';
import { UsageError } from './command.ts';

export function vmArg(spec: string): string {
  if (spec.startsWith('pid:')) {
    const pid = spec.slice(4);
    if (!/^\d+$/.test(pid) || Number(pid) <= 0) throw new UsageError(`'${spec}' does not name a process: pid: takes a process id, e.g. pid:12345`, 'BAD_VM');
    // (Linux pids stop at 2^22, PID_MAX_LIMIT; a longer number would also lose digits)
    if (Number(pid) > 4194304) throw new UsageError(`'${spec}' does not name a process: Linux process ids are at most 4194304`, 'BAD_VM');
    return `pid:${Number(pid)}`;
  }
  if (spec.startsWith('qmp:')) {
    const sock = spec.slice(4);
    if (sock === '') throw new UsageError("'qmp:' names no socket: give the path of the VM's QMP socket, e.g. qmp:/run/vm1/qmp.sock", 'BAD_VM');
    // The daemon has its own working directory: it gets the path this shell meant (and
    // the shell does not expand a ~ that follows 'qmp:').
    const expanded = sock === '~' || sock.startsWith('~/') ? path.join(os.homedir(), sock.slice(1)) : sock;
    return `qmp:${path.resolve(expanded)}`;
  }
  if (spec.trim() === '') throw new UsageError('the VM name is empty: give a libvirt domain name or UUID, pid:<PID> or qmp:<socket path>', 'BAD_VM');
  return spec;
}
