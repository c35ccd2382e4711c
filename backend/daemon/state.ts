/**
 * The daemon's state file (default /run/elasticmem/state.json): which VMs are attached,
 * to which QEMU process, store and cap. After the daemon dies (kill -9, crash) the next
 * daemon reads it at start and takes over every VM whose QEMU still runs and still holds
 * the userfaultfd, without an operator re-typing attach. Written atomically (rename).
 */
import fs from 'node:fs';
import path from 'node:path';

export interface StateEntry {
  spec: string;
  name: string;
  kind: string;
  vmId: string;
  pid: number;
  startTime: number;
  store: string;
  capBytes: number;
  /** 'attached', or 'crashed' (QEMU died; stored pages kept until `detach`). */
  status: 'attached' | 'crashed';
}

export function readState(file: string): StateEntry[] {
  let text: string;
  try { text = fs.readFileSync(file, 'utf8'); } catch { return []; }
  try {
    const doc = JSON.parse(text) as { v?: number; vms?: StateEntry[] };
    return Array.isArray(doc.vms) ? doc.vms.filter((e) => typeof e?.vmId === 'string' && typeof e.pid === 'number') : [];
  } catch {
    return [];
  }
}

export function writeState(file: string, entries: StateEntry[]): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify({ v: 1, vms: entries }, null, 1) + '\n', { mode: 0o600 });
  fs.renameSync(tmp, file);
}
